-- The event log that `evac run --log-json` streams and `evac events` reads back: one stream made
-- of the two tables that already hold a run's history, each row complete in itself.
--
-- Per-file events stay in `events` (written in the batch transactions that change the file's
-- state) and run-level ones in `log`; a reader merges them by time. Only columns are added (no
-- table rebuild, which would rewrite a row per relocated file on a large journal).

-- The file's path when the event happened: a later rename, or a row gone, must not change what
-- the history says. NULL in rows from before this migration (their file row's path is shown).
ALTER TABLE events ADD COLUMN path BLOB;
-- Deferred and failed: the cause, as in files.cause (busy, changed, dest_full, ...).
ALTER TABLE events ADD COLUMN cause TEXT;

-- A run-level event's name (START, FINISH, governor, stage_batch, ...); NULL for a plain line of
-- the run log, which is shown under its level (info, warn, error).
ALTER TABLE log ADD COLUMN event TEXT;
-- The event's own fields, a JSON object (a FINISH's totals, a governor decision's figures).
ALTER TABLE log ADD COLUMN fields TEXT;

-- START and FINISH lines written before this migration, named by the words they begin with.
UPDATE log SET event = 'START' WHERE event IS NULL AND message LIKE 'START run %';
UPDATE log SET event = 'FINISH' WHERE event IS NULL AND message LIKE 'FINISH run %';
