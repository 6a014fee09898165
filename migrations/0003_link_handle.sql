-- The file handle (name_to_handle_at) of the SOURCE symlink evac made for a path. Unlike its
-- inode number, a handle is never reused: opened by handle, it says whether that very link
-- still exists and what it names, wherever a user has moved it, even out of a walk's view.
ALTER TABLE files ADD COLUMN link_handle BLOB;
ALTER TABLE trash ADD COLUMN link_handle BLOB;
