//! What `status` and `verify` read: counts by state, reasons, lists, cutover readiness.

use super::*;

pub struct Counts {
    pub by_state: Vec<(FileState, i64)>,
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
    /// Entries `--exclude` left in SOURCE (an excluded directory counts once): they block
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
        let mut c = Cutover {
            as_of: last,
            ..Default::default()
        };
        let run = last.map(|l| l.0).unwrap_or(-1);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT what, count(*) FROM ({}) GROUP BY what ORDER BY what",
                Self::CUTOVER_SQL
            ))
            .map_err(self.e("compare namespaces"))?;
        let rows = st
            .query_map([run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.e("compare namespaces"))?;
        for r in rows {
            let (what, n) = r.map_err(self.e("compare namespaces"))?;
            if what == "left:excluded" {
                c.excluded = n;
            } else if let Some(kind) = what.strip_prefix("left:") {
                c.not_carried.push((kind.to_string(), n));
            } else {
                c.differences.push((what, n));
            }
        }
        Ok(c)
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

    pub fn counts(&self) -> Result<Counts> {
        let mut st = self
            .conn
            .prepare("SELECT state, count(*) FROM files GROUP BY state")
            .map_err(self.e("count files"))?;
        let by_state = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e("count files"))?
            .collect::<rusqlite::Result<Vec<(FileState, i64)>>>()
            .map_err(self.e("count files"))?;
        let (total, done): (i64, i64) = self
            .conn
            .query_row(
                "SELECT coalesce(sum(size), 0), coalesce(sum(CASE WHEN state = 'relocated' THEN size ELSE 0 END), 0)
                 FROM files WHERE kind = 'file' AND state NOT IN ('gone', 'skipped')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.e("count bytes"))?;
        Ok(Counts {
            by_state,
            bytes_total: total,
            bytes_relocated: done,
        })
    }

    /// Counts by state, cause and reason; a busy file's reason is grouped without the holders it
    /// names (they differ from file to file, the cause does not).
    pub fn top_reasons(&self, limit: i64) -> Result<Vec<ReasonCount>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT state, cause, CASE WHEN cause = 'busy' AND instr(reason, ?2) > 0 THEN substr(reason, 1, instr(reason, ?2) - 1)
                 ELSE coalesce(reason, '') END AS why, count(*) AS n FROM files
                 WHERE state IN ('deferred', 'failed', 'skipped', 'staged_out') GROUP BY state, cause, why ORDER BY n DESC LIMIT ?1",
            )
            .map_err(self.e("summarise reasons"))?;
        let rows = st
            .query_map(params![limit, crate::sys::busy::HOLDERS_MARK], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(self.e("summarise reasons"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("summarise reasons"))
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
