-- Namespace resync: users rename, delete and replace relocated entries while a run goes on, and
-- DEST must end up mirroring SOURCE. A rename keeps the SOURCE symlink's inode, so the inode of
-- each link evac made tells which copy a renamed link belongs to.

-- The inode of the SOURCE symlink evac made (or found) for this path.
ALTER TABLE files ADD COLUMN link_ino INTEGER;
-- Symlink rows whose target lies under LINK_PREFIX: the relative path that target names.
ALTER TABLE files ADD COLUMN target BLOB;
CREATE INDEX files_target ON files(target) WHERE target IS NOT NULL;

-- Copies evac took out of DEST's namespace (their link was deleted or replaced). Kept under
-- DEST/.evac-trash, never destroyed; a renamed link found later claims its copy back.
-- The row is written before the move: until `moved` is set the copy may still be at `path`.
CREATE TABLE trash (
    id        INTEGER PRIMARY KEY,
    file_id   INTEGER NOT NULL,
    path      BLOB    NOT NULL,     -- where the copy stood, relative to DEST
    trash_rel BLOB    NOT NULL,     -- where it is kept, relative to DEST
    version   INTEGER NOT NULL,
    dest_ino  INTEGER NOT NULL,
    link_ino  INTEGER,
    blake3    BLOB,
    size      INTEGER,
    mode      INTEGER,
    uid       INTEGER,
    gid       INTEGER,
    mtime_ns  INTEGER,
    reason    TEXT    NOT NULL,
    at        REAL    NOT NULL,
    moved     INTEGER NOT NULL DEFAULT 0,
    restored  REAL                  -- when a renamed link claimed it back
);
CREATE INDEX trash_path ON trash(path);

-- Set when a run's walk saw all of SOURCE and its resync made DEST follow it: what "ready for
-- cutover" is judged against.
ALTER TABLE runs ADD COLUMN resynced_at REAL;

-- The last run whose walk saw evac's own link at this path. A copy goes to the trash only when
-- neither this walk nor the previous complete one saw a link naming it: a link renamed while a
-- walk is under way can be missed by that walk, and must not be left dangling.
ALTER TABLE files ADD COLUMN link_seen_run INTEGER;
