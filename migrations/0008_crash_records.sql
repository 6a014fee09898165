-- What a crash may leave half done that the next run must find again.
--
-- The link a swap is about to put in an original's place, recorded with the placement, before
-- the exchange: if a user moves that fresh link and evac is stopped before it records the
-- relocation, the next run's recovery finds the link by its inode and file handle and puts an
-- original that was written to meanwhile where the user's path now leads.
ALTER TABLE files ADD COLUMN swap_link_ino INTEGER;
ALTER TABLE files ADD COLUMN swap_link_handle BLOB;

-- Old DEST names of copies that resync has let go of (a renamed link took the copy to its new
-- name, or back from a staging name): written in the transaction that lets go, removed once the
-- name is gone, so that a crash in between leaves nothing at DEST that SOURCE does not have. The
-- name goes only while no link names it: not the link recorded here (by its file handle), nor
-- any link the last walk saw.
CREATE TABLE releases (
    id          INTEGER PRIMARY KEY,
    path        BLOB    NOT NULL,
    dest_ino    INTEGER NOT NULL,
    link_handle BLOB
);
