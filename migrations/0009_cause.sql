-- A file's state as a closed set of words, and the cause of a file left behind in its own
-- column, so that status, the retry rounds and the cutover readiness choose by cause and never by
-- the reason's prose.
--
-- 'swapped' was read but never written: a row in it (there should be none) is in flight, and
-- recovery treats it as 'placed'.
UPDATE files SET state = 'placed' WHERE state = 'swapped';

ALTER TABLE files ADD COLUMN cause TEXT;

-- Causes of rows written before this migration, from the reasons the engine wrote then.
UPDATE files SET cause = CASE
    WHEN kind != 'file' AND state = 'skipped' AND reason NOT LIKE 'a link%' THEN 'not_a_file'
    WHEN reason LIKE 'storage not answering: gave up%' THEN 'abandoned'
    WHEN reason LIKE 'storage not answering%' THEN 'stalled'
    WHEN reason LIKE 'DEST already has a file at this path%' THEN 'conflict'
    WHEN reason LIKE 'destination full (quota)%' THEN 'dest_quota'
    WHEN reason LIKE 'destination full%' THEN 'dest_full'
    WHEN reason LIKE '%open for writing%' OR reason LIKE '%leased for writing%'
      OR reason LIKE '%has mapped it%' THEN 'busy'
    WHEN reason LIKE '%immutable (chattr +i)%' OR reason LIKE '%append-only (chattr +a)%' THEN 'refused'
    WHEN state = 'staged_out' OR reason LIKE 'staged out%' OR reason LIKE 'HSM%' THEN 'hsm'
    WHEN reason LIKE 'hard-linked:%' THEN 'hard_links'
    WHEN reason LIKE 'a link%into DEST%' OR reason LIKE 'a link to another file''s copy%' THEN 'foreign_link'
    WHEN reason LIKE 'renamed link%' OR reason LIKE 'a new file replaced its link%' THEN 'renamed'
    WHEN reason LIKE '%recover%' THEN 'recovery'
    WHEN reason LIKE '%changed%' OR reason LIKE '%written%' OR reason LIKE '%during the copy%' THEN 'changed'
    ELSE 'error'
END
WHERE state IN ('deferred', 'failed', 'skipped', 'staged_out') AND reason IS NOT NULL;

-- SQLite cannot add a CHECK to an existing column without copying the table, which on a journal
-- of 100 M rows would take as long as a day's work of the run it is upgraded for: triggers refuse
-- any other word instead, at the same moment a CHECK would.
CREATE TRIGGER files_state_insert BEFORE INSERT ON files
WHEN NEW.state NOT IN ('pending', 'copying', 'placed', 'relocated', 'deferred', 'failed',
                       'skipped', 'gone', 'staged_out')
  OR (NEW.cause IS NOT NULL AND NEW.cause NOT IN ('busy', 'changed', 'dest_full', 'dest_quota',
      'refused', 'hsm', 'hard_links', 'foreign_link', 'renamed', 'error', 'recovery',
      'conflict', 'stalled', 'abandoned', 'not_a_file'))
BEGIN
    SELECT RAISE(ABORT, 'files: no such state or cause');
END;

CREATE TRIGGER files_state_update BEFORE UPDATE OF state, cause ON files
WHEN NEW.state NOT IN ('pending', 'copying', 'placed', 'relocated', 'deferred', 'failed',
                       'skipped', 'gone', 'staged_out')
  OR (NEW.cause IS NOT NULL AND NEW.cause NOT IN ('busy', 'changed', 'dest_full', 'dest_quota',
      'refused', 'hsm', 'hard_links', 'foreign_link', 'renamed', 'error', 'recovery',
      'conflict', 'stalled', 'abandoned', 'not_a_file'))
BEGIN
    SELECT RAISE(ABORT, 'files: no such state or cause');
END;
