//! What `evac report` reads: the run history aggregated in SQL into time buckets and groups, so
//! that a journal of millions of files gives a few hundred rows and is never held in memory.
//!
//! Every query here is one pass over a table (or over an index's range) with GROUP BY; the time
//! buckets are `floor((at - t0) / width)`, clamped into `0..n` so that a row stamped outside the
//! span the runs give (a clock stepped, a resync after the last run) lands in an edge bucket
//! instead of being lost from the totals.

use super::*;

/// The time buckets of a report: `n` buckets of `width` seconds from `t0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Buckets {
    pub t0: f64,
    pub width: f64,
    pub n: i64,
}

impl Buckets {
    /// `n` buckets covering `start..=end` (a span of zero still gets one second per bucket).
    pub fn over(start: f64, end: f64, n: i64) -> Buckets {
        let n = n.max(1);
        let width = ((end - start) / n as f64).max(1.0 / n as f64);
        Buckets {
            t0: start,
            width,
            n,
        }
    }
}

/// The SQL expression of an event time's bucket (parameters ?1 t0, ?2 width, ?3 n).
fn bucket_sql(at: &str) -> String {
    format!("min(?3 - 1, max(0, CAST((coalesce({at}, ?1) - ?1) / ?2 AS INTEGER)))")
}

/// Files and bytes in one time bucket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BucketCount {
    pub bucket: i64,
    pub files: i64,
    pub bytes: i64,
}

/// Deferral or failure events of one cause in one time bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct LeftEvents {
    pub bucket: i64,
    /// deferred or failed.
    pub event: String,
    /// The cause word ('' when none was recorded).
    pub cause: String,
    pub events: i64,
}

/// One run's own work (not the journal's totals at its end).
#[derive(Clone, Debug, PartialEq)]
pub struct RunWork {
    pub id: i64,
    pub started_at: f64,
    /// When it finished, or its last heartbeat (a run still going, or killed).
    pub ended_at: f64,
    pub finished: bool,
    pub exit_code: Option<i64>,
    pub files: i64,
    pub bytes: i64,
}

/// The governor's decisions in one time bucket with one limiting signal.
#[derive(Clone, Debug, PartialEq)]
pub struct GovernorBucket {
    pub bucket: i64,
    /// The signal over its target ('' when nothing limited: the governor recovering).
    pub signal: String,
    pub decisions: i64,
    /// The fewest workers it allowed in the bucket, and the most it could have.
    pub min_allowed: f64,
    pub max_workers: f64,
}

/// How long the governor held the workers down for one signal, over all runs.
#[derive(Clone, Debug, PartialEq)]
pub struct GovernorTime {
    /// The limiting signal ('' for decisions that nothing limited).
    pub signal: String,
    pub decisions: i64,
    /// From each decision to the next one of its run (or to the run's end).
    pub seconds: f64,
    /// Workers allowed on average over that time, as a share of the most allowed.
    pub share: f64,
}

/// Phase 2's finished stage batches of one volume.
#[derive(Clone, Debug, PartialEq)]
pub struct StageVolume {
    pub volume: String,
    pub batches: i64,
    pub files: i64,
    pub resident: i64,
    pub given_up: i64,
    pub bytes: i64,
    pub first: f64,
    pub last: f64,
}

/// Files not relocated under one directory (the first two levels below SOURCE).
#[derive(Clone, Debug, PartialEq)]
pub struct DirLeft {
    /// Relative to SOURCE, raw bytes ('' for SOURCE itself).
    pub dir: Vec<u8>,
    pub files: i64,
    pub bytes: i64,
    pub pending: i64,
    pub deferred: i64,
    pub failed: i64,
    pub staged_out: i64,
    pub skipped: i64,
}

/// The regular files that keep cutover from being ready as "files not relocated" (the states
/// `Journal::cutover` counts), so that the directories' sum is that figure.
const NOT_RELOCATED: &str =
    "'pending', 'copying', 'placed', 'deferred', 'failed', 'staged_out', 'skipped'";

impl Journal {
    /// The span of the run history: from the first run's start (or first event) to the last
    /// run's end or heartbeat (or last event). None for a journal without runs or events.
    pub fn report_span(&self) -> Result<Option<(f64, f64)>> {
        // The first and last rows by id: the tables' own order, read in O(log n).
        self.conn
            .query_row(
                "SELECT min(a), max(b) FROM (
                    SELECT min(started_at) a, max(max(heartbeat_at, coalesce(finished_at, 0))) b FROM runs
                    UNION ALL SELECT min(at), max(at) FROM log
                    UNION ALL SELECT (SELECT at FROM events ORDER BY id LIMIT 1),
                                     (SELECT at FROM events ORDER BY id DESC LIMIT 1))",
                [],
                |r| Ok((r.get::<_, Option<f64>>(0)?, r.get::<_, Option<f64>>(1)?)),
            )
            .map(|(a, b)| a.zip(b))
            .map_err(self.e("read the run history"))
    }

    /// The files relocated now (and the bytes of the regular ones), by the time they were last
    /// recorded (their relocation, or a later resync that moved their copy). The sums are the
    /// counters' (`status`): every row in state relocated is counted in some bucket.
    pub fn relocated_by_time(&self, b: Buckets) -> Result<Vec<BucketCount>> {
        // A plain scan: most rows of a large journal are relocated, and the state index would
        // add a lookup per row.
        let sql = format!(
            "SELECT {} AS b, count(*), coalesce(sum(CASE WHEN kind = 'file' THEN coalesce(size, 0) END), 0)
               FROM files NOT INDEXED WHERE state = 'relocated' GROUP BY b ORDER BY b",
            bucket_sql("updated_at")
        );
        let mut st = self.conn.prepare(&sql).map_err(self.e("sum relocations"))?;
        let rows = st
            .query_map(params![b.t0, b.width, b.n], |r| {
                Ok(BucketCount {
                    bucket: r.get(0)?,
                    files: r.get(1)?,
                    bytes: r.get(2)?,
                })
            })
            .map_err(self.e("sum relocations"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("sum relocations"))
    }

    /// Every deferral and failure recorded (a file deferred on three passes counts three times),
    /// by time bucket, event and cause.
    pub fn left_events_by_time(&self, b: Buckets) -> Result<Vec<LeftEvents>> {
        let sql = format!(
            "SELECT {} AS b, event, coalesce(cause, ''), count(*) FROM events
              WHERE event IN ('deferred', 'failed') GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            bucket_sql("at")
        );
        let mut st = self.conn.prepare(&sql).map_err(self.e("count deferrals"))?;
        let rows = st
            .query_map(params![b.t0, b.width, b.n], |r| {
                Ok(LeftEvents {
                    bucket: r.get(0)?,
                    event: r.get(1)?,
                    cause: r.get(2)?,
                    events: r.get(3)?,
                })
            })
            .map_err(self.e("count deferrals"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("count deferrals"))
    }

    /// Each run's own files and bytes (its FINISH totals, else its last heartbeat's), oldest
    /// first: the same figures `relocated_by_runs` sums.
    pub fn runs_work(&self) -> Result<Vec<RunWork>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, started_at, max(heartbeat_at, coalesce(finished_at, 0)),
                        finished_at IS NOT NULL, exit_code,
                        coalesce(json_extract(totals, '$.files_relocated_this_run'), files_relocated),
                        coalesce(json_extract(totals, '$.bytes_relocated_this_run'), bytes_relocated)
                   FROM runs ORDER BY id",
            )
            .map_err(self.e("read runs"))?;
        let rows = st
            .query_map([], |r| {
                Ok(RunWork {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    ended_at: r.get(2)?,
                    finished: r.get(3)?,
                    exit_code: r.get(4)?,
                    files: r.get(5)?,
                    bytes: r.get(6)?,
                })
            })
            .map_err(self.e("read runs"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read runs"))
    }

    /// The governor's decisions by time bucket and limiting signal.
    pub fn governor_by_time(&self, b: Buckets) -> Result<Vec<GovernorBucket>> {
        let sql = format!(
            "SELECT {} AS b, coalesce(json_extract(fields, '$.limiting.signal'), ''), count(*),
                    min(coalesce(json_extract(fields, '$.allowed'), 0)),
                    max(coalesce(json_extract(fields, '$.max'), 0))
               FROM log WHERE event = 'governor' GROUP BY 1, 2 ORDER BY 1, 2",
            bucket_sql("at")
        );
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(self.e("read governor decisions"))?;
        let rows = st
            .query_map(params![b.t0, b.width, b.n], |r| {
                Ok(GovernorBucket {
                    bucket: r.get(0)?,
                    signal: r.get(1)?,
                    decisions: r.get(2)?,
                    min_allowed: r.get(3)?,
                    max_workers: r.get(4)?,
                })
            })
            .map_err(self.e("read governor decisions"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read governor decisions"))
    }

    /// How long each limiting signal held the workers down: a decision lasts until the next one
    /// of its run, the last one until its run ended.
    pub fn governor_time(&self) -> Result<Vec<GovernorTime>> {
        let mut st = self
            .conn
            .prepare(
                "WITH d AS (
                    SELECT coalesce(json_extract(l.fields, '$.limiting.signal'), '') AS signal,
                           coalesce(json_extract(l.fields, '$.allowed'), 0)
                             * coalesce(json_extract(l.fields, '$.duty'), 1)
                             / max(coalesce(json_extract(l.fields, '$.max'), 1), 1) AS share,
                           max(0, coalesce(lead(l.at) OVER (PARTITION BY l.run_id ORDER BY l.at, l.id),
                                           max(r.heartbeat_at, coalesce(r.finished_at, 0)), l.at) - l.at) AS secs
                      FROM log l LEFT JOIN runs r ON r.id = l.run_id
                     WHERE l.event = 'governor')
                 SELECT signal, count(*), sum(secs),
                        CASE WHEN sum(secs) > 0 THEN sum(share * secs) / sum(secs) ELSE avg(share) END
                   FROM d GROUP BY signal ORDER BY sum(secs) DESC, signal",
            )
            .map_err(self.e("read governor decisions"))?;
        let rows = st
            .query_map([], |r| {
                Ok(GovernorTime {
                    signal: r.get(0)?,
                    decisions: r.get(1)?,
                    seconds: r.get(2)?,
                    share: r.get(3)?,
                })
            })
            .map_err(self.e("read governor decisions"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read governor decisions"))
    }

    /// Phase 2's finished stage batches by volume, in the order they were staged.
    pub fn stage_volumes(&self) -> Result<Vec<StageVolume>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT coalesce(json_extract(fields, '$.volume'), '?'), count(*),
                        sum(coalesce(json_extract(fields, '$.files'), 0)),
                        sum(coalesce(json_extract(fields, '$.resident'), 0)),
                        sum(coalesce(json_extract(fields, '$.given_up'), 0)),
                        sum(coalesce(json_extract(fields, '$.bytes'), 0)), min(at), max(at)
                   FROM log WHERE event = 'stage_batch' AND json_extract(fields, '$.outcome') = 'done'
                  GROUP BY 1 ORDER BY min(at)",
            )
            .map_err(self.e("read stage batches"))?;
        let rows = st
            .query_map([], |r| {
                Ok(StageVolume {
                    volume: r.get(0)?,
                    batches: r.get(1)?,
                    files: r.get(2)?,
                    resident: r.get(3)?,
                    given_up: r.get(4)?,
                    bytes: r.get(5)?,
                    first: r.get(6)?,
                    last: r.get(7)?,
                })
            })
            .map_err(self.e("read stage batches"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read stage batches"))
    }

    /// Files recalled and made resident by phase 2, by time bucket (`files` staged, `bytes` of
    /// them; from the finished stage batches).
    pub fn recalls_by_time(&self, b: Buckets) -> Result<Vec<BucketCount>> {
        let sql = format!(
            "SELECT {} AS b, sum(coalesce(json_extract(fields, '$.resident'), 0)),
                    sum(coalesce(json_extract(fields, '$.bytes'), 0))
               FROM log WHERE event = 'stage_batch' AND json_extract(fields, '$.outcome') = 'done'
              GROUP BY 1 ORDER BY 1",
            bucket_sql("at")
        );
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(self.e("read stage batches"))?;
        let rows = st
            .query_map(params![b.t0, b.width, b.n], |r| {
                Ok(BucketCount {
                    bucket: r.get(0)?,
                    files: r.get(1)?,
                    bytes: r.get(2)?,
                })
            })
            .map_err(self.e("read stage batches"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read stage batches"))
    }

    /// The regular files not relocated, grouped by their directory's first two levels below
    /// SOURCE, streamed to `f` (one row per directory; read through the state index, so only
    /// the files left are touched).
    pub fn for_each_dir_left(&self, f: &mut dyn FnMut(DirLeft)) -> Result<()> {
        // Byte positions in a BLOB path (instr and substr count bytes when both sides are
        // BLOBs; the cast keeps it so for a path a hand-made row stored as TEXT): p1 the first
        // '/', then the next one after it.
        let sql = format!(
            "WITH l AS (
                SELECT CAST(path AS BLOB) AS path, size, state, instr(CAST(path AS BLOB), x'2f') AS p1 FROM files
                 WHERE kind = 'file' AND state IN ({NOT_RELOCATED})),
             d AS (
                SELECT CASE WHEN p1 = 0 THEN x''
                            WHEN instr(substr(path, p1 + 1), x'2f') = 0 THEN substr(path, 1, p1 - 1)
                            ELSE substr(path, 1, p1 + instr(substr(path, p1 + 1), x'2f') - 1) END AS dir,
                       size, state FROM l)
             SELECT dir, count(*), coalesce(sum(size), 0),
                    sum(state IN ('pending', 'copying', 'placed')), sum(state = 'deferred'),
                    sum(state = 'failed'), sum(state = 'staged_out'), sum(state = 'skipped')
               FROM d GROUP BY dir"
        );
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(self.e("sum what is left"))?;
        let mut rows = st.query([]).map_err(self.e("sum what is left"))?;
        while let Some(r) = rows.next().map_err(self.e("sum what is left"))? {
            let get = |i| r.get::<_, i64>(i).map_err(self.e("sum what is left"));
            f(DirLeft {
                dir: r.get(0).map_err(self.e("sum what is left"))?,
                files: get(1)?,
                bytes: get(2)?,
                pending: get(3)?,
                deferred: get(4)?,
                failed: get(5)?,
                staged_out: get(6)?,
                skipped: get(7)?,
            });
        }
        Ok(())
    }
}
