//! What `status` and `verify` read: counts by state, reasons, lists, cutover readiness.

use super::*;
use std::collections::BTreeMap;

pub struct Counts {
    pub by_state: Vec<(FileState, i64)>,
    /// Bytes of regular files, by state.
    pub bytes_by_state: Vec<(FileState, i64)>,
    pub bytes_total: i64,
    pub bytes_relocated: i64,
}

impl Counts {
    /// Files in state `s`.
    pub fn of(&self, s: FileState) -> i64 {
        self.by_state
            .iter()
            .filter(|(k, _)| *k == s)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Files some run still has to do (pending, or in flight when a run stopped).
    pub fn unfinished(&self) -> i64 {
        self.by_state
            .iter()
            .filter(|(k, _)| k.unfinished())
            .map(|(_, n)| *n)
            .sum()
    }
}

/// One row of the counters: files (and their bytes) of one state and kind, linked to a copy or
/// not, last seen by one run (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRow {
    pub state: String,
    pub kind: String,
    pub linked: bool,
    pub seen_run: i64,
    pub files: i64,
    pub bytes: i64,
}

/// A counter that differs from a full count: (files, bytes) as kept and as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterMismatch {
    pub what: String,
    pub kept: (i64, i64),
    pub counted: (i64, i64),
}

/// (state, cause, reason without the holders it names, files).
pub type ReasonCount = (FileState, Option<Cause>, String, i64);

/// How far DEST is from mirroring SOURCE.
#[derive(Debug, Default)]
pub struct Cutover {
    /// (run, when) of the last run that walked all of SOURCE and resynced DEST.
    pub as_of: Option<(i64, f64)>,
    /// What still differs, by kind, with counts.
    pub differences: Vec<(String, i64)>,
    /// Entries evac leaves in SOURCE (symlinks of users, FIFOs, sockets, devices, mount points).
    pub not_carried: Vec<(String, i64)>,
    /// Entries `--exclude` (or the version-control rule) left in SOURCE (an excluded directory
    /// counts once): they block
    /// nothing evac does, but their data is on SOURCE only.
    pub excluded: i64,
}

impl Cutover {
    pub fn ready(&self) -> bool {
        self.as_of.is_some() && self.differences.is_empty()
    }
}

/// Receives (path, reason) rows for listings.
pub type PathSink<'a> = &'a mut dyn FnMut(&[u8], Option<&str>) -> std::io::Result<()>;

impl Journal {
    /// How far DEST is from mirroring SOURCE, as of the last run that walked all of SOURCE.
    /// Summed from the counters (what `CUTOVER_SQL` lists, counted without reading the files
    /// table), but for renamed links not followed, found through the state index among the few
    /// deferred and failed rows.
    pub fn cutover(&self) -> Result<Cutover> {
        let last: Option<(i64, f64)> = self
            .conn
            .query_row(
                "SELECT id, resynced_at FROM runs WHERE resynced_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.e("read runs"))?;
        let run = last.map(|l| l.0).unwrap_or(-1);
        let mut differences: BTreeMap<String, i64> = BTreeMap::new();
        let mut not_carried: BTreeMap<String, i64> = BTreeMap::new();
        let add = |m: &mut BTreeMap<String, i64>, what: &str, n: i64| {
            if n != 0 {
                *m.entry(what.to_string()).or_insert(0) += n;
            }
        };
        for r in self.count_rows()? {
            let st = r.state.as_str();
            if r.kind == "file"
                && matches!(
                    st,
                    "pending"
                        | "copying"
                        | "placed"
                        | "deferred"
                        | "failed"
                        | "staged_out"
                        | "skipped"
                )
            {
                add(&mut differences, "files not relocated", r.files);
            }
            let not_seen = r.seen_run == 0 || r.seen_run != run;
            if r.linked
                && (not_seen || st != "relocated" || r.kind != "file")
                && !matches!(st, "copying" | "placed")
            {
                add(
                    &mut differences,
                    "copies at DEST whose link is gone",
                    r.files,
                );
            }
            if st == "skipped" && r.kind != "file" && r.kind != "reserved" {
                add(&mut not_carried, &r.kind, r.files);
            }
        }
        let renamed: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM files WHERE state IN ('failed', 'deferred')
                  AND kind = 'symlink' AND target IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .map_err(self.e("compare namespaces"))?;
        add(
            &mut differences,
            "renamed links not followed at DEST",
            renamed,
        );
        let dirs: i64 = self
            .conn
            .query_row(
                "SELECT coalesce(sum(dirs), 0) FROM dir_counts WHERE seen_run = 0 OR seen_run != ?1",
                [run],
                |r| r.get(0),
            )
            .map_err(self.e("compare namespaces"))?;
        add(&mut differences, "DEST directories gone from SOURCE", dirs);
        Ok(Cutover {
            as_of: last,
            differences: differences.into_iter().collect(),
            not_carried: not_carried.into_iter().collect(),
            excluded: self.excluded_count()?,
        })
    }

    /// Every path that keeps DEST from mirroring SOURCE, with what and why.
    pub fn for_each_cutover_difference(&self, f: PathSink<'_>) -> Result<()> {
        let run = self.cutover()?.as_of.map(|l| l.0).unwrap_or(-1);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT path, what, reason FROM ({}) ORDER BY path",
                Self::CUTOVER_SQL
            ))
            .map_err(self.e("compare namespaces"))?;
        let mut rows = st.query([run]).map_err(self.e("compare namespaces"))?;
        while let Some(r) = rows.next().map_err(self.e("compare namespaces"))? {
            let p: Vec<u8> = r.get(0).map_err(self.e("compare namespaces"))?;
            let what: String = r.get(1).map_err(self.e("compare namespaces"))?;
            let reason: Option<String> = r.get(2).map_err(self.e("compare namespaces"))?;
            let what = what
                .strip_prefix("left:")
                .map_or(what.clone(), |k| format!("{k} not carried over"));
            let line = match reason {
                // Its reason says it all.
                Some(r) if what == "excluded not carried over" => r,
                Some(r) => format!("{what}: {r}"),
                None => what,
            };
            f(&p, Some(&line)).map_err(|e| Error::Setup(format!("write output: {e}")))?;
        }
        Ok(())
    }

    /// Files and bytes by state, from the counters the triggers of `migrations/0011_counts.sql`
    /// keep: a read of a few rows, whatever the number of files.
    pub fn counts(&self) -> Result<Counts> {
        let mut by_state: BTreeMap<FileState, i64> = BTreeMap::new();
        let mut bytes_by_state: BTreeMap<FileState, i64> = BTreeMap::new();
        let (mut total, mut done) = (0, 0);
        for r in self.count_rows()? {
            let Some(s) = FileState::parse(&r.state) else {
                continue;
            };
            *by_state.entry(s).or_insert(0) += r.files;
            if r.kind == "file" {
                *bytes_by_state.entry(s).or_insert(0) += r.bytes;
            }
            if r.kind == "file" && !matches!(s, FileState::Gone | FileState::Skipped) {
                total += r.bytes;
                if s == FileState::Relocated {
                    done += r.bytes;
                }
            }
        }
        Ok(Counts {
            by_state: by_state.into_iter().filter(|(_, n)| *n != 0).collect(),
            bytes_by_state: bytes_by_state
                .into_iter()
                .filter(|(_, n)| *n != 0)
                .collect(),
            bytes_total: total,
            bytes_relocated: done,
        })
    }

    /// The counters' rows that count something.
    pub fn count_rows(&self) -> Result<Vec<CountRow>> {
        self.count_query(
            "SELECT state, kind, linked, seen_run, files, bytes FROM counts
              WHERE files != 0 OR bytes != 0",
        )
    }

    fn count_query(&self, sql: &str) -> Result<Vec<CountRow>> {
        let mut st = self.conn.prepare(sql).map_err(self.e("count files"))?;
        let rows = st
            .query_map([], |r| {
                Ok(CountRow {
                    state: r.get(0)?,
                    kind: r.get(1)?,
                    linked: r.get(2)?,
                    seen_run: r.get(3)?,
                    files: r.get(4)?,
                    bytes: r.get(5)?,
                })
            })
            .map_err(self.e("count files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("count files"))
    }

    /// `verify`: the counters against a full count of the files and directories, in one
    /// snapshot (a run may be committing meanwhile). Each difference, as (what, kept, counted).
    pub fn check_counters(&self) -> Result<Vec<CounterMismatch>> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.e("check counters"))?;
        let kept = self.count_rows()?;
        let counted = self.count_query(
            "SELECT state, kind, linked_ino IS NOT NULL, coalesce(seen_run, 0), count(*),
                    coalesce(sum(size), 0)
               FROM files GROUP BY 1, 2, 3, 4",
        )?;
        let dirs = |sql: &str| -> Result<BTreeMap<i64, i64>> {
            let mut st = self
                .conn
                .prepare(sql)
                .map_err(self.e("count directories"))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.e("count directories"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(self.e("count directories"))
        };
        let dirs_kept = dirs("SELECT seen_run, dirs FROM dir_counts WHERE dirs != 0")?;
        let dirs_counted = dirs("SELECT coalesce(seen_run, 0), count(*) FROM dirs GROUP BY 1")?;
        let reasons_kept = self.reason_groups(false)?;
        let reasons_counted = self.reason_groups(true)?;
        drop(tx);
        type Key = (String, String, bool, i64);
        let index = |rows: Vec<CountRow>| -> BTreeMap<Key, (i64, i64)> {
            rows.into_iter()
                .map(|r| ((r.state, r.kind, r.linked, r.seen_run), (r.files, r.bytes)))
                .collect()
        };
        let (kept, counted) = (index(kept), index(counted));
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<&Key> = kept.keys().chain(counted.keys()).collect();
        for k in keys {
            let a = kept.get(k).copied().unwrap_or((0, 0));
            let b = counted.get(k).copied().unwrap_or((0, 0));
            if a != b {
                out.push(CounterMismatch {
                    what: format!(
                        "{} {}s{}{}",
                        k.0,
                        k.1,
                        if k.2 { ", linked to a copy" } else { "" },
                        if k.3 == 0 {
                            ", never seen by a walk".to_string()
                        } else {
                            format!(", last seen by run {}", k.3)
                        }
                    ),
                    kept: a,
                    counted: b,
                });
            }
        }
        let runs: std::collections::BTreeSet<&i64> =
            dirs_kept.keys().chain(dirs_counted.keys()).collect();
        for r in runs {
            let a = dirs_kept.get(r).copied().unwrap_or(0);
            let b = dirs_counted.get(r).copied().unwrap_or(0);
            if a != b {
                out.push(CounterMismatch {
                    what: if *r == 0 {
                        "directories never seen by a walk".to_string()
                    } else {
                        format!("directories last seen by run {r}")
                    },
                    kept: (a, 0),
                    counted: (b, 0),
                });
            }
        }
        let reasons: std::collections::BTreeSet<&(String, String, String)> =
            reasons_kept.keys().chain(reasons_counted.keys()).collect();
        for k in reasons {
            let a = reasons_kept.get(k).copied().unwrap_or(0);
            let b = reasons_counted.get(k).copied().unwrap_or(0);
            if a != b {
                out.push(CounterMismatch {
                    what: format!(
                        "{} files{}, reason {}",
                        k.0,
                        if k.1.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", k.1)
                        },
                        crate::util::escape::quoted(k.2.as_bytes())
                    ),
                    kept: (a, 0),
                    counted: (b, 0),
                });
            }
        }
        Ok(out)
    }

    /// Counts by state, cause and reason; a busy file's reason is grouped without the holders it
    /// names (they differ from file to file, the cause does not). From the counters.
    pub fn top_reasons(&self, limit: i64) -> Result<Vec<ReasonCount>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT state, cause, why, files FROM reason_counts WHERE files != 0
                  ORDER BY files DESC, state, cause, why LIMIT ?1",
            )
            .map_err(self.e("summarise reasons"))?;
        let rows = st
            .query_map([limit], |r| {
                let cause: String = r.get(1)?;
                Ok((r.get(0)?, Cause::parse(&cause), r.get(2)?, r.get(3)?))
            })
            .map_err(self.e("summarise reasons"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("summarise reasons"))
    }

    /// Files in `state` by cause (None: no cause recorded), from the counters.
    pub fn by_cause(&self, state: FileState) -> Result<Vec<(Option<Cause>, i64)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT cause, sum(files) FROM reason_counts WHERE state = ?1
                  GROUP BY cause HAVING sum(files) != 0 ORDER BY cause",
            )
            .map_err(self.e("count files by cause"))?;
        let rows = st
            .query_map([state.as_str()], |r| {
                let cause: String = r.get(0)?;
                Ok((Cause::parse(&cause), r.get(1)?))
            })
            .map_err(self.e("count files by cause"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("count files by cause"))
    }

    /// (files, bytes) relocated by all runs together: only ever grows, unlike the files now
    /// relocated (a relocated file can go). A finished run's own totals, else what its last
    /// heartbeat recorded (which a run writes before its last batch is counted).
    pub fn relocated_by_runs(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(coalesce(json_extract(totals, '$.files_relocated_this_run'), files_relocated)), 0),
                        coalesce(sum(coalesce(json_extract(totals, '$.bytes_relocated_this_run'), bytes_relocated)), 0)
                   FROM runs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.e("read runs"))
    }

    /// Files left behind by (state, cause, reason), as kept and as counted in full.
    fn reason_groups(&self, full: bool) -> Result<BTreeMap<(String, String, String), i64>> {
        // The full count cuts a busy file's reason at the mark the code writes, the counters at
        // the one their triggers were written with: a difference between the two shows here.
        let (sql, mark) = if full {
            (
                "SELECT state, coalesce(cause, ''),
                    CASE WHEN cause = 'busy' AND instr(reason, ?1) > 0
                         THEN substr(reason, 1, instr(reason, ?1) - 1) ELSE coalesce(reason, '') END,
                    count(*)
               FROM files WHERE state IN ('deferred', 'failed', 'skipped', 'staged_out')
              GROUP BY 1, 2, 3",
                vec![crate::sys::busy::HOLDERS_MARK],
            )
        } else {
            (
                "SELECT state, cause, why, files FROM reason_counts WHERE files != 0",
                vec![],
            )
        };
        let mut st = self.conn.prepare(sql).map_err(self.e("count reasons"))?;
        let rows = st
            .query_map(rusqlite::params_from_iter(mark), |r| {
                Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))
            })
            .map_err(self.e("count reasons"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("count reasons"))
    }

    /// Paths (and reasons) in the given states, streamed to `f`.
    pub fn for_each_in_states(&self, states: &[FileState], f: PathSink<'_>) -> Result<()> {
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT path, reason FROM files WHERE state IN ({list}) ORDER BY path"
            ))
            .map_err(self.e("list files"))?;
        let mut rows = st.query([]).map_err(self.e("list files"))?;
        while let Some(r) = rows.next().map_err(self.e("list files"))? {
            let p: Vec<u8> = r.get(0).map_err(self.e("list files"))?;
            let reason: Option<String> = r.get(1).map_err(self.e("list files"))?;
            f(&p, reason.as_deref()).map_err(|e| Error::Setup(format!("write output: {e}")))?;
        }
        Ok(())
    }

    /// Every link evac made that the journal knows of (the relocated names), streamed to `f`.
    pub fn for_each_link(&self, f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> Result<()> {
        let mut st = self
            .conn
            .prepare(
                "SELECT path FROM files WHERE state = 'relocated' AND kind = 'file' ORDER BY path",
            )
            .map_err(self.e("list links"))?;
        let mut rows = st.query([]).map_err(self.e("list links"))?;
        while let Some(r) = rows.next().map_err(self.e("list links"))? {
            let p: Vec<u8> = r.get(0).map_err(self.e("list links"))?;
            f(&p).map_err(|e| Error::Setup(format!("write output: {e}")))?;
        }
        Ok(())
    }

    /// Files in `state` whose reason starts with `prefix`.
    pub fn count_reason_prefix(&self, state: &str, prefix: &str) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM files WHERE state = ?1 AND substr(reason, 1, length(?2)) = ?2",
                params![state, prefix],
                |r| r.get(0),
            )
            .map_err(self.e("count files"))
    }
}
