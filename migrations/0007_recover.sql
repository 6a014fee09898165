-- `evac recover`: leftovers to relocate with the data of a copy found elsewhere (a candidate of
-- `evac fingerprint`, or one the operator names), checked against what is known of their
-- content. A run relocates them by the normal protocol, reading the candidate instead of the
-- leftover (never opened: it may be a stub).
CREATE TABLE recoveries (
    file_id     INTEGER PRIMARY KEY REFERENCES files(id),
    candidate   BLOB    NOT NULL,   -- absolute, raw bytes
    size        INTEGER NOT NULL,
    blake3      BLOB    NOT NULL,   -- of the candidate's content when it was checked
    checked_by  TEXT    NOT NULL,   -- blake3 | md5 | sha1 | sha256 | forced (what matched)
    state       TEXT    NOT NULL,   -- requested | done | failed
    detail      TEXT,
    at          REAL    NOT NULL
);
