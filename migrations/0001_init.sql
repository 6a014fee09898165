-- The plan, every file's state and history, and every run.
-- Paths are raw bytes (BLOB), relative to SOURCE, never NUL-free strings.

CREATE TABLE plan (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    journal_id  TEXT    NOT NULL,          -- 16 hex digits; carried by every temporary name
    source      BLOB    NOT NULL,
    dest        BLOB    NOT NULL,
    link_prefix BLOB    NOT NULL,
    source_dev  INTEGER NOT NULL,
    source_ino  INTEGER NOT NULL,
    dest_dev    INTEGER NOT NULL,
    dest_ino    INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    options     TEXT    NOT NULL DEFAULT '{}'
);

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    pid             INTEGER NOT NULL,
    args            TEXT    NOT NULL,
    started_at      REAL    NOT NULL,
    heartbeat_at    REAL    NOT NULL,
    finished_at     REAL,
    exit_code       INTEGER,
    files_relocated INTEGER NOT NULL DEFAULT 0,
    bytes_relocated INTEGER NOT NULL DEFAULT 0,
    rate_bps        REAL    NOT NULL DEFAULT 0,
    throttle        TEXT    NOT NULL DEFAULT 'none',
    totals          TEXT
);

-- state: pending | copying | placed | swapped | relocated | deferred | failed
--        | skipped | gone | staged_out
-- copying: dispatched; temporaries may exist.  placed: DEST copy in place (dest_ino
-- known), source swap may be under way.  swapped: source name is our link; the
-- original may still sit at the source temporary name.
CREATE TABLE files (
    id          INTEGER PRIMARY KEY,
    path        BLOB    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    reason      TEXT,
    dev         INTEGER,
    ino         INTEGER,
    nlink       INTEGER,
    size        INTEGER,
    mode        INTEGER,
    uid         INTEGER,
    gid         INTEGER,
    mtime_ns    INTEGER,
    ctime_ns    INTEGER,
    blake3      BLOB,
    dest_ino    INTEGER,                    -- the DEST inode of evac's latest copy
    linked_ino  INTEGER,                    -- the DEST inode a source link last pointed to
    version     INTEGER NOT NULL DEFAULT 1,
    attempts    INTEGER NOT NULL DEFAULT 0,
    seen_run    INTEGER,
    updated_at  REAL
);
CREATE INDEX files_state ON files(state);
CREATE INDEX files_inode ON files(dev, ino) WHERE nlink > 1;

-- Directory metadata to apply at DEST after contents, deepest first.
CREATE TABLE dirs (
    path     BLOB    PRIMARY KEY,
    depth    INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    seen_run INTEGER,
    -- 1 once this journal has put something under it at DEST: only such directories (and
    -- ones it creates) get their metadata applied, so a DEST evac did not fill is left alone.
    touched  INTEGER NOT NULL DEFAULT 0
);

-- Per-file history: relocations (with hash), deferrals, failures, trash moves.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL,
    run_id  INTEGER,
    at      REAL    NOT NULL,
    event   TEXT    NOT NULL,
    detail  TEXT
);
CREATE INDEX events_file ON events(file_id);

-- Run log: START/FINISH lines, mode changes, setup notes.
CREATE TABLE log (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER,
    at      REAL    NOT NULL,
    level   TEXT    NOT NULL,
    message TEXT    NOT NULL
);
