-- The link a swap is about to put in an original's place, recorded with the placement, before
-- the exchange: if a user moves that fresh link and evac is stopped before it records the
-- relocation, the next run's recovery finds the link by its inode and file handle and puts an
-- original that was written to meanwhile where the user's path now leads.
ALTER TABLE files ADD COLUMN swap_link_ino INTEGER;
ALTER TABLE files ADD COLUMN swap_link_handle BLOB;
