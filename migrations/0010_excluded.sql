-- `--exclude`: the run's patterns, fixed with the plan, and what the walks left in SOURCE because
-- of them.
--
-- The patterns decide what is relocated, so a journal keeps one set for its whole life: a resume
-- that gives others is refused. Raw bytes, in the order given.
CREATE TABLE excludes (
    seq     INTEGER PRIMARY KEY,
    pattern BLOB    NOT NULL
);

-- One row per excluded entry the walk met: an excluded directory once, never what is under it
-- (the walk does not enter it), so a tree of a million files costs one row. `rule` is the pattern
-- that matched, escaped for people; rows a complete walk no longer met are removed.
CREATE TABLE excluded (
    path     BLOB    PRIMARY KEY,
    kind     TEXT    NOT NULL,
    rule     TEXT    NOT NULL,
    seen_run INTEGER NOT NULL
);
