-- Phase 3, `evac fingerprint`: what can be known of each leftover without a recall, the
-- candidate copies found under --search directories with a confidence each (for recovery by
-- hand or by `evac recover`), and a cache of candidates' hashes so that a rerun over unchanged
-- trees reads no file.

-- Hashes of candidate files, by inode. A row holds while the file has the same size, mtime and
-- ctime; any other change (or another file reusing the inode) is a miss and rewrites the row.
CREATE TABLE fp_cache (
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    path     BLOB    NOT NULL,      -- absolute, raw bytes: where it was last seen
    partial  BLOB,                  -- blake3 of the first and last 16 KiB (files over 32 KiB)
    blake3   BLOB,                  -- of the whole content; NULL until needed
    md5      BLOB,
    sha1     BLOB,
    sha256   BLOB,
    at       REAL    NOT NULL,
    PRIMARY KEY (dev, ino)
);

-- One row per `evac fingerprint`; the counts are set when it completes.
CREATE TABLE fp_runs (
    id            INTEGER PRIMARY KEY,
    started_at    REAL    NOT NULL,
    finished_at   REAL,
    search        TEXT    NOT NULL,  -- the --search directories, escaped, one a line
    leftovers     INTEGER,
    exact         INTEGER,
    probable      INTEGER,
    weak          INTEGER,
    none          INTEGER,
    files_indexed INTEGER,
    files_read    INTEGER,           -- candidate files opened (cache misses)
    bytes_read    INTEGER,
    from_cache    INTEGER,           -- candidate files whose hashes came from fp_cache
    report        BLOB               -- the --report file, if one was written
);

-- The leftovers as the last complete run saw them (each run replaces them all).
CREATE TABLE fp_leftovers (
    path         BLOB    PRIMARY KEY,  -- relative to SOURCE
    run_id       INTEGER NOT NULL,
    file_id      INTEGER,              -- files.id, NULL if only the HSM listing knows it
    state        TEXT,                 -- files.state (NULL: only in the HSM listing)
    reason       TEXT,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER,
    mode         INTEGER,
    uid          INTEGER,
    gid          INTEGER,
    dev          INTEGER,              -- in SOURCE now, when it is there
    ino          INTEGER,
    hsm_state    TEXT,                 -- the imported HSM listing's: state, volume, checksum
    hsm_volume   TEXT,
    hsm_checksum TEXT,                 -- ALGORITHM:HEX as the listing gave it
    content      TEXT    NOT NULL,     -- hashed | stub | unreadable | gone: why blake3 is or is not known
    content_note TEXT,
    partial      BLOB,
    blake3       BLOB,                 -- of the content, when it was readable without a recall
    confidence   TEXT    NOT NULL,     -- the best candidate's: exact | probable | weak | none
    candidates   INTEGER NOT NULL
);

-- Each leftover's candidates, best first. A same-size file whose content hash differs from a
-- known hash of the leftover is not a candidate and has no row.
CREATE TABLE fp_matches (
    leftover   BLOB    NOT NULL REFERENCES fp_leftovers(path) ON DELETE CASCADE,
    rank       INTEGER NOT NULL,       -- 1 = the best
    candidate  BLOB    NOT NULL,       -- absolute, raw bytes
    confidence TEXT    NOT NULL,       -- exact | probable | weak
    matched_by TEXT    NOT NULL,       -- blake3 | md5 | sha1 | sha256 | empty | name+mtime | name
    dev        INTEGER NOT NULL,
    ino        INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    mode       INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    gid        INTEGER NOT NULL,
    blake3     BLOB,
    md5        BLOB,
    sha1       BLOB,
    sha256     BLOB,
    PRIMARY KEY (leftover, rank)
);
CREATE INDEX fp_matches_confidence ON fp_matches(confidence, rank);
