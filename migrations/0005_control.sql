-- Commands for a running evac from another terminal (`evac pause`, `resume`, `throttle`): the
-- run polls this table and applies what it finds; it also tells `status` the caps in force.
CREATE TABLE control (
    key   TEXT PRIMARY KEY,    -- paused ("1"/"0"), bwlimit (a rate or timetable), files_per_sec
    value TEXT NOT NULL,
    at    REAL NOT NULL
);
