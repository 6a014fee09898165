-- The HSM's own database of the files it manages, imported from its listings (`evac hsm
-- import`): where each staged-out file's data is (tier, volume, position), for phase 2 to recall
-- in tape order, and its checksum when the HSM keeps one, for phase 3's fingerprints.
CREATE TABLE hsm_files (
    path       BLOB    PRIMARY KEY,     -- relative to SOURCE
    state      TEXT    NOT NULL,        -- resident | premigrated | staged_out | lost
    tier       INTEGER,
    volume     TEXT,
    position   INTEGER,
    size       INTEGER,
    checksum   TEXT,                    -- ALGORITHM:HEX as the listing gave it
    import_id  INTEGER NOT NULL,
    -- Phase 2 (`evac stage`): NULL (not tried), staging (a recall was started), staged
    -- (resident again, not yet relocated), done (relocated), given_up (a leftover).
    stage_state TEXT,
    stage_tries INTEGER NOT NULL DEFAULT 0,
    stage_after REAL,                   -- not before this time (backoff after a failure)
    stage_error TEXT,
    staged_at   REAL
);
CREATE INDEX hsm_files_order ON hsm_files(tier, volume, position) WHERE state = 'staged_out';

CREATE TABLE hsm_imports (
    id         INTEGER PRIMARY KEY,
    at         REAL    NOT NULL,
    format     TEXT    NOT NULL,
    listing    BLOB    NOT NULL,
    records    INTEGER NOT NULL,        -- imported (new or updated)
    malformed  INTEGER NOT NULL,
    outside    INTEGER NOT NULL,        -- not under SOURCE
    missing    INTEGER NOT NULL,        -- not in SOURCE now
    relocated  INTEGER NOT NULL         -- already relocated by evac: nothing to stage
);
