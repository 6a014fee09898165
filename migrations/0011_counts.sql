-- Files and bytes by state, kept as counters in the transactions that change the files, so that
-- `status` and the metrics answer in the same time on a journal of ten million files as on one
-- of ten (a count over the files table takes seconds there).
--
-- Triggers keep them, not the code that changes files: every statement that inserts, updates or
-- deletes a row of files counts, including those a later version adds and those an operator
-- runs by hand. `evac verify` compares them with a full count.
--
-- The key holds what the cutover readiness asks of a row besides its state and kind: whether a
-- copy at DEST is linked to it (linked_ino), and which run last saw it (0 for none), so that the
-- readiness too is a sum over these few rows. A group left at zero stays (runs are few).
CREATE TABLE counts (
    state    TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    linked   INTEGER NOT NULL,
    seen_run INTEGER NOT NULL,
    files    INTEGER NOT NULL,
    bytes    INTEGER NOT NULL,
    PRIMARY KEY (state, kind, linked, seen_run)
) WITHOUT ROWID;

INSERT INTO counts (state, kind, linked, seen_run, files, bytes)
SELECT state, kind, linked_ino IS NOT NULL, coalesce(seen_run, 0), count(*), coalesce(sum(size), 0)
  FROM files GROUP BY 1, 2, 3, 4;

CREATE TRIGGER files_count_insert AFTER INSERT ON files
BEGIN
    INSERT INTO counts (state, kind, linked, seen_run, files, bytes)
    VALUES (NEW.state, NEW.kind, NEW.linked_ino IS NOT NULL, coalesce(NEW.seen_run, 0), 1,
            coalesce(NEW.size, 0))
    ON CONFLICT (state, kind, linked, seen_run)
    DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER files_count_delete AFTER DELETE ON files
BEGIN
    UPDATE counts SET files = files - 1, bytes = bytes - coalesce(OLD.size, 0)
     WHERE state = OLD.state AND kind = OLD.kind AND linked = (OLD.linked_ino IS NOT NULL)
       AND seen_run = coalesce(OLD.seen_run, 0);
END;

CREATE TRIGGER files_count_update AFTER UPDATE OF state, kind, size, linked_ino, seen_run ON files
WHEN OLD.state IS NOT NEW.state OR OLD.kind IS NOT NEW.kind OR OLD.size IS NOT NEW.size
  OR (OLD.linked_ino IS NULL) != (NEW.linked_ino IS NULL) OR OLD.seen_run IS NOT NEW.seen_run
BEGIN
    UPDATE counts SET files = files - 1, bytes = bytes - coalesce(OLD.size, 0)
     WHERE state = OLD.state AND kind = OLD.kind AND linked = (OLD.linked_ino IS NOT NULL)
       AND seen_run = coalesce(OLD.seen_run, 0);
    INSERT INTO counts (state, kind, linked, seen_run, files, bytes)
    VALUES (NEW.state, NEW.kind, NEW.linked_ino IS NOT NULL, coalesce(NEW.seen_run, 0), 1,
            coalesce(NEW.size, 0))
    ON CONFLICT (state, kind, linked, seen_run)
    DO UPDATE SET files = files + 1, bytes = bytes + excluded.bytes;
END;

-- Directories by the run that last saw them: the readiness counts those the last complete walk
-- did not see.
CREATE TABLE dir_counts (
    seen_run INTEGER PRIMARY KEY,
    dirs     INTEGER NOT NULL
);

INSERT INTO dir_counts (seen_run, dirs)
SELECT coalesce(seen_run, 0), count(*) FROM dirs GROUP BY 1;

CREATE TRIGGER dirs_count_insert AFTER INSERT ON dirs
BEGIN
    INSERT INTO dir_counts (seen_run, dirs) VALUES (coalesce(NEW.seen_run, 0), 1)
    ON CONFLICT (seen_run) DO UPDATE SET dirs = dirs + 1;
END;

CREATE TRIGGER dirs_count_delete AFTER DELETE ON dirs
BEGIN
    UPDATE dir_counts SET dirs = dirs - 1 WHERE seen_run = coalesce(OLD.seen_run, 0);
END;

CREATE TRIGGER dirs_count_update AFTER UPDATE OF seen_run ON dirs
WHEN OLD.seen_run IS NOT NEW.seen_run
BEGIN
    UPDATE dir_counts SET dirs = dirs - 1 WHERE seen_run = coalesce(OLD.seen_run, 0);
    INSERT INTO dir_counts (seen_run, dirs) VALUES (coalesce(NEW.seen_run, 0), 1)
    ON CONFLICT (seen_run) DO UPDATE SET dirs = dirs + 1;
END;

-- Files left behind (deferred, failed, skipped, staged out) by state, cause and reason: `status`
-- shows the commonest. A busy file's reason is counted without the holders it names (from
-- " (pid ", `sys::busy::HOLDERS_MARK`): they differ from file to file, the cause does not. No
-- cause is ''.
CREATE TABLE reason_counts (
    state TEXT    NOT NULL,
    cause TEXT    NOT NULL,
    why   TEXT    NOT NULL,
    files INTEGER NOT NULL,
    PRIMARY KEY (state, cause, why)
) WITHOUT ROWID;

INSERT INTO reason_counts (state, cause, why, files)
SELECT state, coalesce(cause, ''),
       CASE WHEN cause = 'busy' AND instr(reason, ' (pid ') > 0
            THEN substr(reason, 1, instr(reason, ' (pid ') - 1) ELSE coalesce(reason, '') END,
       count(*)
  FROM files WHERE state IN ('deferred', 'failed', 'skipped', 'staged_out') GROUP BY 1, 2, 3;

CREATE TRIGGER files_reason_insert AFTER INSERT ON files
WHEN NEW.state IN ('deferred', 'failed', 'skipped', 'staged_out')
BEGIN
    INSERT INTO reason_counts (state, cause, why, files)
    VALUES (NEW.state, coalesce(NEW.cause, ''),
            CASE WHEN NEW.cause = 'busy' AND instr(NEW.reason, ' (pid ') > 0
                 THEN substr(NEW.reason, 1, instr(NEW.reason, ' (pid ') - 1)
                 ELSE coalesce(NEW.reason, '') END, 1)
    ON CONFLICT (state, cause, why) DO UPDATE SET files = files + 1;
END;

CREATE TRIGGER files_reason_delete AFTER DELETE ON files
WHEN OLD.state IN ('deferred', 'failed', 'skipped', 'staged_out')
BEGIN
    UPDATE reason_counts SET files = files - 1
     WHERE state = OLD.state AND cause = coalesce(OLD.cause, '')
       AND why = CASE WHEN OLD.cause = 'busy' AND instr(OLD.reason, ' (pid ') > 0
                      THEN substr(OLD.reason, 1, instr(OLD.reason, ' (pid ') - 1)
                      ELSE coalesce(OLD.reason, '') END;
END;

CREATE TRIGGER files_reason_update AFTER UPDATE OF state, cause, reason ON files
WHEN (OLD.state IN ('deferred', 'failed', 'skipped', 'staged_out')
      OR NEW.state IN ('deferred', 'failed', 'skipped', 'staged_out'))
 AND (OLD.state IS NOT NEW.state OR OLD.cause IS NOT NEW.cause OR OLD.reason IS NOT NEW.reason)
BEGIN
    UPDATE reason_counts SET files = files - 1
     WHERE OLD.state IN ('deferred', 'failed', 'skipped', 'staged_out')
       AND state = OLD.state AND cause = coalesce(OLD.cause, '')
       AND why = CASE WHEN OLD.cause = 'busy' AND instr(OLD.reason, ' (pid ') > 0
                      THEN substr(OLD.reason, 1, instr(OLD.reason, ' (pid ') - 1)
                      ELSE coalesce(OLD.reason, '') END;
    INSERT INTO reason_counts (state, cause, why, files)
    SELECT NEW.state, coalesce(NEW.cause, ''),
           CASE WHEN NEW.cause = 'busy' AND instr(NEW.reason, ' (pid ') > 0
                THEN substr(NEW.reason, 1, instr(NEW.reason, ' (pid ') - 1)
                ELSE coalesce(NEW.reason, '') END, 1
     WHERE NEW.state IN ('deferred', 'failed', 'skipped', 'staged_out')
    ON CONFLICT (state, cause, why) DO UPDATE SET files = files + 1;
END;

-- Renamed links that resync could not follow yet: found among the few such rows, not by reading
-- every deferred or failed file.
CREATE INDEX files_renamed_links ON files(state)
 WHERE kind = 'symlink' AND target IS NOT NULL AND state IN ('failed', 'deferred');
