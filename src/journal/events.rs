//! The journal's log: the run log (START, FINISH, governor decisions, stage batches, warnings,
//! errors) and each file's events (relocated, deferred, failed, unlinked, resync moves), which
//! `evac events`, `evac run --log-json` and the operators read back as one stream.
//!
//! The stream is two tables merged by time: `events` (per file, written in the batch
//! transactions that change a file's state) and `log` (per run). A reader keeps one cursor per
//! table (the last id it has seen of each), so following a journal is two indexed range reads.

use super::*;

/// Which table an event comes from: a file's history or the run log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventTable {
    /// `events`: something that happened to one file.
    File,
    /// `log`: something about a run (START, FINISH, the governor, a stage batch, a warning).
    Run,
}

impl EventTable {
    /// The table's name, as the stream's sequence numbers carry it.
    pub fn name(self) -> &'static str {
        match self {
            EventTable::File => "events",
            EventTable::Run => "log",
        }
    }
}

/// One event of the journal, as it was recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub table: EventTable,
    pub id: i64,
    /// Seconds since the epoch.
    pub at: f64,
    pub run: Option<i64>,
    /// relocated, deferred, failed, unlinked, renamed, reappeared, recovered; START, FINISH,
    /// governor, stage_batch; `log` for a plain line of the run log.
    pub event: String,
    /// The run log's level (info, warn, error); None for a file's event.
    pub level: Option<String>,
    /// The file's path relative to SOURCE (raw bytes), for a file's event.
    pub path: Option<Vec<u8>>,
    pub cause: Option<String>,
    /// The event's text: a reason, a hash, a former path, a run log message.
    pub detail: Option<String>,
    /// A JSON object of the event's own fields (run log events that have them).
    pub fields: Option<String>,
}

/// Where a reader of the stream is: the last id it has seen in each table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub file: i64,
    pub log: i64,
}

/// `--since` finds its start in `events` by bisecting ids on their times, which assumes times
/// grow with ids: they do but for a clock stepped back, so the search starts this much earlier
/// and the rows before `since` are then skipped.
const SINCE_SLACK: f64 = 600.0;

impl Journal {
    /// A plain line of the run log.
    pub fn log(&self, run: Option<i64>, level: &str, message: &str) -> Result<()> {
        self.log_event(run, now(), level, None, message, None)
    }

    /// A line of the run log that is an event of its own (`event`: START, FINISH, governor,
    /// stage_batch), with its fields as a JSON object, at time `at`.
    pub fn log_event(
        &self,
        run: Option<i64>,
        at: f64,
        level: &str,
        event: Option<&str>,
        message: &str,
        fields: Option<&str>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO log (run_id, at, level, message, event, fields) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| st.execute(params![run, at, level, message, event, fields]))
            .map_err(self.e("write log"))?;
        Ok(())
    }

    /// An event of file `id` (its path as it is now is recorded with it).
    pub fn event(&self, id: i64, run: Option<i64>, event: &str, detail: &str) -> Result<()> {
        self.file_event(id, run, event, detail, None)
    }

    /// An event of file `id` with the cause of a deferral or failure.
    pub fn file_event(
        &self,
        id: i64,
        run: Option<i64>,
        event: &str,
        detail: &str,
        cause: Option<Cause>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO events (file_id, run_id, at, event, detail, cause, path)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT path FROM files WHERE id = ?1))",
            )
            .and_then(|mut st| st.execute(params![id, run, now(), event, detail, cause]))
            .map_err(self.e("record event"))?;
        Ok(())
    }

    /// The cursor after the last event recorded so far.
    pub fn events_end(&self) -> Result<EventCursor> {
        self.conn
            .query_row(
                "SELECT (SELECT coalesce(max(id), 0) FROM events), (SELECT coalesce(max(id), 0) FROM log)",
                [],
                |r| {
                    Ok(EventCursor {
                        file: r.get(0)?,
                        log: r.get(1)?,
                    })
                },
            )
            .map_err(self.e("read events"))
    }

    /// A cursor before the first event at or after `t` (give the same `t` to `events_page` as
    /// `since` to skip the ones before it). Bisects the file events' ids: O(log n) on any size
    /// of journal. The run log is read from its start: it is small (a few lines a run, and the
    /// governor's changes), and a governor decision is written with the time it was made, which
    /// may be long before its row when no batch committed for a while (a pause).
    pub fn events_cursor_at(&self, t: f64) -> Result<EventCursor> {
        Ok(EventCursor {
            file: self.first_at(EventTable::File, t - SINCE_SLACK)? - 1,
            log: 0,
        })
    }

    /// The smallest id whose row (or the next existing one) is at or after `t`; past the last
    /// id when none is.
    fn first_at(&self, table: EventTable, t: f64) -> Result<i64> {
        let name = table.name();
        let (min, max): (Option<i64>, Option<i64>) = self
            .conn
            .query_row(&format!("SELECT min(id), max(id) FROM {name}"), [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(self.e("read events"))?;
        let (Some(mut lo), Some(max)) = (min, max) else {
            return Ok(1);
        };
        let mut probe = self
            .conn
            .prepare(&format!(
                "SELECT id, at FROM {name} WHERE id >= ?1 ORDER BY id LIMIT 1"
            ))
            .map_err(self.e("read events"))?;
        let mut at_or_after = |id: i64| -> Result<(i64, f64)> {
            probe
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.e("read events"))
        };
        if at_or_after(max)?.1 < t {
            return Ok(max + 1);
        }
        let mut hi = max;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (id, at) = at_or_after(mid)?;
            if at >= t {
                hi = mid;
            } else {
                lo = id + 1;
            }
        }
        Ok(lo)
    }

    /// The events after `from`, oldest first, up to about `limit` of each table, and the cursor
    /// after them. Events before `since` are passed over (the cursor moves past them). Empty
    /// when there is nothing new.
    pub fn events_page(
        &self,
        from: EventCursor,
        since: Option<f64>,
        limit: usize,
    ) -> Result<(Vec<EventRow>, EventCursor)> {
        let limit = limit.max(1);
        let files: Vec<EventRow> = self
            .conn
            .prepare_cached(
                "SELECT e.id, e.at, e.run_id, e.event, coalesce(e.path, f.path), e.cause, e.detail
                   FROM events e LEFT JOIN files f ON e.path IS NULL AND f.id = e.file_id
                  WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
            )
            .and_then(|mut st| {
                st.query_map(params![from.file, limit as i64], |r| {
                    Ok(EventRow {
                        table: EventTable::File,
                        id: r.get(0)?,
                        at: r.get(1)?,
                        run: r.get(2)?,
                        event: r.get(3)?,
                        level: None,
                        path: r.get(4)?,
                        cause: r.get(5)?,
                        detail: r.get(6)?,
                        fields: None,
                    })
                })?
                .collect()
            })
            .map_err(self.e("read events"))?;
        let runs: Vec<EventRow> = self
            .conn
            .prepare_cached(
                "SELECT id, at, run_id, coalesce(event, 'log'), level, message, fields
                   FROM log WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .and_then(|mut st| {
                st.query_map(params![from.log, limit as i64], |r| {
                    Ok(EventRow {
                        table: EventTable::Run,
                        id: r.get(0)?,
                        at: r.get(1)?,
                        run: r.get(2)?,
                        event: r.get(3)?,
                        level: r.get(4)?,
                        path: None,
                        cause: None,
                        detail: r.get(5)?,
                        fields: r.get(6)?,
                    })
                })?
                .collect()
            })
            .map_err(self.e("read events"))?;
        // A full page may have more after it: take each table only up to the earlier of the two
        // full pages' last times, so that the merge stays in time order across pages.
        let last = |v: &[EventRow]| {
            if v.len() == limit {
                v.last().map_or(f64::INFINITY, |e| e.at)
            } else {
                f64::INFINITY
            }
        };
        let bound = last(&files).min(last(&runs));
        let upto = |v: &[EventRow]| v.iter().take_while(|e| e.at <= bound).count();
        let (mut nf, mut nr) = (upto(&files), upto(&runs));
        if nf == 0 && nr == 0 {
            // Times out of order at a page's edge: take both pages whole rather than stall.
            (nf, nr) = (files.len(), runs.len());
        }
        let mut next = from;
        if nf > 0 {
            next.file = files[nf - 1].id;
        }
        if nr > 0 {
            next.log = runs[nr - 1].id;
        }
        let mut out: Vec<EventRow> = files
            .into_iter()
            .take(nf)
            .chain(runs.into_iter().take(nr))
            // To the microsecond, as times are shown: `--since` given an event's own time
            // (rounded) must not lose that event to the digits it was not shown with.
            .filter(|e| since.map_or(true, |s| micros(e.at) >= micros(s)))
            .collect();
        out.sort_by(|a, b| {
            a.at.total_cmp(&b.at)
                .then((a.table, a.id).cmp(&(b.table, b.id)))
        });
        Ok((out, next))
    }
}

fn micros(t: f64) -> i64 {
    (t * 1e6).round() as i64
}

/// The cursor after the last event of the journal at `path`, read without the schema check of
/// `Journal::open_read` (a run about to upgrade the journal, or create it, starts from here): a
/// journal that does not exist yet, or has no tables yet, has no events.
pub fn events_end_of(path: &Path) -> Result<EventCursor> {
    if !path.exists() {
        return Ok(EventCursor::default());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(jerr(path, "open"))?;
    let j = Journal::with(conn, path)?;
    let tables: i64 = j
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('events', 'log')",
            [],
            |r| r.get(0),
        )
        .map_err(j.e("read events"))?;
    if tables < 2 {
        return Ok(EventCursor::default());
    }
    j.events_end()
}
