//! The journal's phase 3 tables (`migrations/0006_fingerprint.sql`): the leftovers to
//! fingerprint, the cache of candidates' hashes, and each run's leftovers and matches, which
//! `evac recover` reads back.

use super::{now, Journal};
use crate::error::Result;
use rusqlite::{params, OptionalExtension};

/// A leftover as the journal knows it: a `files` row in a leftover state, or an HSM listing
/// entry the HSM lost or phase 2 gave up on, with what the listing says of it.
#[derive(Debug, Clone)]
pub struct LeftoverRow {
    pub file_id: Option<i64>,
    /// Relative to SOURCE.
    pub path: Vec<u8>,
    pub state: Option<super::FileState>,
    pub reason: Option<String>,
    pub size: Option<i64>,
    pub mode: Option<i64>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub hsm_state: Option<String>,
    pub hsm_volume: Option<String>,
    pub hsm_checksum: Option<String>,
    pub hsm_stage_state: Option<String>,
}

/// A candidate's cached hashes (`fp_cache`), valid while size, mtime and ctime are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedFp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub path: Vec<u8>,
    pub partial: Option<Vec<u8>>,
    pub blake3: Option<Vec<u8>>,
    pub md5: Option<Vec<u8>>,
    pub sha1: Option<Vec<u8>>,
    pub sha256: Option<Vec<u8>>,
}

/// A leftover's fingerprint as the last complete `evac fingerprint` recorded it.
#[derive(Debug, Clone, Default)]
pub struct FpLeftover {
    /// Relative to SOURCE.
    pub path: Vec<u8>,
    pub file_id: Option<i64>,
    pub state: Option<String>,
    pub reason: Option<String>,
    pub size: u64,
    pub mtime_ns: Option<i64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub dev: Option<u64>,
    pub ino: Option<u64>,
    pub hsm_state: Option<String>,
    pub hsm_volume: Option<String>,
    /// `ALGORITHM:HEX` as the HSM listing gave it.
    pub hsm_checksum: Option<String>,
    /// `hashed`, `stub`, `unreadable` or `gone`: why `blake3` is or is not known.
    pub content: String,
    pub content_note: Option<String>,
    pub partial: Option<Vec<u8>>,
    pub blake3: Option<Vec<u8>>,
    /// The best candidate's confidence: `exact`, `probable`, `weak` or `none`.
    pub confidence: String,
    pub candidates: i64,
}

/// One candidate of a leftover (`fp_matches`), with what was known of it.
#[derive(Debug, Clone, Default)]
pub struct FpMatch {
    /// The leftover, relative to SOURCE.
    pub leftover: Vec<u8>,
    /// 1 for the best candidate.
    pub rank: i64,
    /// Absolute path, raw bytes.
    pub candidate: Vec<u8>,
    /// `exact`, `probable` or `weak`.
    pub confidence: String,
    /// `blake3`, `md5`, `sha1`, `sha256`, `empty`, `name+mtime` or `name`.
    pub matched_by: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub blake3: Option<Vec<u8>>,
    pub md5: Option<Vec<u8>>,
    pub sha1: Option<Vec<u8>>,
    pub sha256: Option<Vec<u8>>,
}

/// The totals of one `evac fingerprint`.
#[derive(Debug, Clone, Default)]
pub struct FpRun {
    pub id: i64,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub leftovers: i64,
    pub exact: i64,
    pub probable: i64,
    pub weak: i64,
    pub none: i64,
    pub files_indexed: i64,
    pub files_read: i64,
    pub bytes_read: i64,
    pub from_cache: i64,
    pub report: Option<Vec<u8>>,
}

const LEFTOVER_COLS: &str = "path, file_id, state, reason, size, mtime_ns, mode, uid, gid, dev, ino, hsm_state, hsm_volume, hsm_checksum, content, content_note, partial, blake3, confidence, candidates";

fn leftover_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<FpLeftover> {
    Ok(FpLeftover {
        path: r.get(0)?,
        file_id: r.get(1)?,
        state: r.get(2)?,
        reason: r.get(3)?,
        size: r.get::<_, i64>(4)?.max(0) as u64,
        mtime_ns: r.get(5)?,
        mode: r.get::<_, Option<i64>>(6)?.map(|v| v as u32),
        uid: r.get::<_, Option<i64>>(7)?.map(|v| v as u32),
        gid: r.get::<_, Option<i64>>(8)?.map(|v| v as u32),
        dev: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        ino: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        hsm_state: r.get(11)?,
        hsm_volume: r.get(12)?,
        hsm_checksum: r.get(13)?,
        content: r.get(14)?,
        content_note: r.get(15)?,
        partial: r.get(16)?,
        blake3: r.get(17)?,
        confidence: r.get(18)?,
        candidates: r.get(19)?,
    })
}

const MATCH_COLS: &str = "leftover, rank, candidate, confidence, matched_by, dev, ino, size, mtime_ns, mode, uid, gid, blake3, md5, sha1, sha256";

/// The match columns (`MATCH_COLS`) from column `first` on.
fn match_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<FpMatch> {
    let n = first;
    Ok(FpMatch {
        leftover: r.get(n)?,
        rank: r.get(n + 1)?,
        candidate: r.get(n + 2)?,
        confidence: r.get(n + 3)?,
        matched_by: r.get(n + 4)?,
        dev: r.get::<_, i64>(n + 5)? as u64,
        ino: r.get::<_, i64>(n + 6)? as u64,
        size: r.get::<_, i64>(n + 7)?.max(0) as u64,
        mtime_ns: r.get(n + 8)?,
        mode: r.get::<_, i64>(n + 9)? as u32,
        uid: r.get::<_, i64>(n + 10)? as u32,
        gid: r.get::<_, i64>(n + 11)? as u32,
        blake3: r.get(n + 12)?,
        md5: r.get(n + 13)?,
        sha1: r.get(n + 14)?,
        sha256: r.get(n + 15)?,
    })
}

impl Journal {
    /// The leftovers to fingerprint: regular files in `states`, and the HSM listing's files
    /// that it lost or that phase 2 gave up on and that the inventory does not have, path
    /// order.
    pub fn fp_leftover_rows(&self, states: &[super::FileState]) -> Result<Vec<LeftoverRow>> {
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT f.id, f.path, f.state, f.reason, f.size, f.mode, f.uid, f.gid, f.mtime_ns,
                    h.state, h.volume, h.checksum, h.stage_state
             FROM files f LEFT JOIN hsm_files h ON h.path = f.path
             WHERE f.kind = 'file' AND f.state IN ({list})
             UNION ALL
             SELECT NULL, h.path, NULL, h.stage_error, h.size, NULL, NULL, NULL, NULL,
                    h.state, h.volume, h.checksum, h.stage_state
             FROM hsm_files h
             WHERE (h.state = 'lost' OR (h.state = 'staged_out' AND h.stage_state = 'given_up'))
               AND NOT EXISTS (SELECT 1 FROM files f WHERE f.path = h.path)
             ORDER BY 2"
        );
        let mut st = self.conn.prepare(&sql).map_err(self.e("list leftovers"))?;
        let rows = st
            .query_map([], |r| {
                Ok(LeftoverRow {
                    file_id: r.get(0)?,
                    path: r.get(1)?,
                    state: r.get(2)?,
                    reason: r.get(3)?,
                    size: r.get(4)?,
                    mode: r.get(5)?,
                    uid: r.get(6)?,
                    gid: r.get(7)?,
                    mtime_ns: r.get(8)?,
                    hsm_state: r.get(9)?,
                    hsm_volume: r.get(10)?,
                    hsm_checksum: r.get(11)?,
                    hsm_stage_state: r.get(12)?,
                })
            })
            .map_err(self.e("list leftovers"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list leftovers"))
    }

    /// The cached hashes of inode (dev, ino), whatever its size and times were then.
    pub fn fp_cached(&self, dev: u64, ino: u64) -> Result<Option<CachedFp>> {
        self.conn
            .prepare_cached(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, path, partial, blake3, md5, sha1, sha256
                 FROM fp_cache WHERE dev = ?1 AND ino = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![dev as i64, ino as i64], |r| {
                    Ok(CachedFp {
                        dev: r.get::<_, i64>(0)? as u64,
                        ino: r.get::<_, i64>(1)? as u64,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        mtime_ns: r.get(3)?,
                        ctime_ns: r.get(4)?,
                        path: r.get(5)?,
                        partial: r.get(6)?,
                        blake3: r.get(7)?,
                        md5: r.get(8)?,
                        sha1: r.get(9)?,
                        sha256: r.get(10)?,
                    })
                })
                .optional()
            })
            .map_err(self.e("read fingerprint cache"))
    }

    /// Record a candidate's hashes (replacing what the inode had).
    pub fn fp_cache_put(&self, c: &CachedFp) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO fp_cache
                    (dev, ino, size, mtime_ns, ctime_ns, path, partial, blake3, md5, sha1, sha256, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    c.dev as i64,
                    c.ino as i64,
                    c.size as i64,
                    c.mtime_ns,
                    c.ctime_ns,
                    c.path,
                    c.partial,
                    c.blake3,
                    c.md5,
                    c.sha1,
                    c.sha256,
                    now()
                ])
            })
            .map_err(self.e("write fingerprint cache"))?;
        Ok(())
    }

    /// Begin an `evac fingerprint` run; its id.
    pub fn fp_start_run(&self, search: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO fp_runs (started_at, search) VALUES (?1, ?2)",
                params![now(), search],
            )
            .map_err(self.e("record fingerprint run"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Replace the last run's leftovers and matches by these (inside the caller's transaction)
    /// and record the run's totals.
    pub fn fp_store_results(
        &self,
        run: &FpRun,
        leftovers: &[FpLeftover],
        matches: &[FpMatch],
    ) -> Result<()> {
        let e = self.e("record fingerprints");
        self.conn
            .execute_batch("DELETE FROM fp_matches; DELETE FROM fp_leftovers;")
            .map_err(&e)?;
        {
            let mut st = self
                .conn
                .prepare_cached(&format!(
                    "INSERT INTO fp_leftovers (run_id, {LEFTOVER_COLS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
                ))
                .map_err(&e)?;
            for l in leftovers {
                st.execute(params![
                    run.id,
                    l.path,
                    l.file_id,
                    l.state,
                    l.reason,
                    l.size as i64,
                    l.mtime_ns,
                    l.mode.map(i64::from),
                    l.uid.map(i64::from),
                    l.gid.map(i64::from),
                    l.dev.map(|v| v as i64),
                    l.ino.map(|v| v as i64),
                    l.hsm_state,
                    l.hsm_volume,
                    l.hsm_checksum,
                    l.content,
                    l.content_note,
                    l.partial,
                    l.blake3,
                    l.confidence,
                    l.candidates
                ])
                .map_err(&e)?;
            }
            let mut st = self
                .conn
                .prepare_cached(&format!(
                    "INSERT INTO fp_matches ({MATCH_COLS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ))
                .map_err(&e)?;
            for m in matches {
                st.execute(params![
                    m.leftover,
                    m.rank,
                    m.candidate,
                    m.confidence,
                    m.matched_by,
                    m.dev as i64,
                    m.ino as i64,
                    m.size as i64,
                    m.mtime_ns,
                    i64::from(m.mode),
                    i64::from(m.uid),
                    i64::from(m.gid),
                    m.blake3,
                    m.md5,
                    m.sha1,
                    m.sha256
                ])
                .map_err(&e)?;
            }
        }
        self.conn
            .execute(
                "UPDATE fp_runs SET finished_at = ?2, leftovers = ?3, exact = ?4, probable = ?5,
                    weak = ?6, none = ?7, files_indexed = ?8, files_read = ?9, bytes_read = ?10,
                    from_cache = ?11, report = ?12
                 WHERE id = ?1",
                params![
                    run.id,
                    now(),
                    run.leftovers,
                    run.exact,
                    run.probable,
                    run.weak,
                    run.none,
                    run.files_indexed,
                    run.files_read,
                    run.bytes_read,
                    run.from_cache,
                    run.report
                ],
            )
            .map_err(&e)?;
        Ok(())
    }

    /// The last complete `evac fingerprint` run, if any.
    pub fn fp_last_run(&self) -> Result<Option<FpRun>> {
        self.conn
            .query_row(
                "SELECT id, started_at, finished_at, leftovers, exact, probable, weak, none,
                        files_indexed, files_read, bytes_read, from_cache, report
                 FROM fp_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(FpRun {
                        id: r.get(0)?,
                        started_at: r.get(1)?,
                        finished_at: r.get(2)?,
                        leftovers: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                        exact: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                        probable: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                        weak: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                        none: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
                        files_indexed: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
                        files_read: r.get::<_, Option<i64>>(9)?.unwrap_or(0),
                        bytes_read: r.get::<_, Option<i64>>(10)?.unwrap_or(0),
                        from_cache: r.get::<_, Option<i64>>(11)?.unwrap_or(0),
                        report: r.get(12)?,
                    })
                },
            )
            .optional()
            .map_err(self.e("read fingerprint runs"))
    }

    #[cfg(test)]
    /// Every leftover of the last complete run, path order.
    pub fn fp_leftovers(&self) -> Result<Vec<FpLeftover>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {LEFTOVER_COLS} FROM fp_leftovers ORDER BY path"
            ))
            .map_err(self.e("read fingerprints"))?;
        let rows = st
            .query_map([], leftover_of)
            .map_err(self.e("read fingerprints"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read fingerprints"))
    }

    /// One leftover's fingerprint (path relative to SOURCE), if the last run had it.
    pub fn fp_leftover(&self, path: &[u8]) -> Result<Option<FpLeftover>> {
        self.conn
            .query_row(
                &format!("SELECT {LEFTOVER_COLS} FROM fp_leftovers WHERE path = ?1"),
                [path],
                leftover_of,
            )
            .optional()
            .map_err(self.e("read fingerprints"))
    }

    #[cfg(test)]
    /// A leftover's candidates, best first.
    pub fn fp_matches(&self, leftover: &[u8]) -> Result<Vec<FpMatch>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {MATCH_COLS} FROM fp_matches WHERE leftover = ?1 ORDER BY rank"
            ))
            .map_err(self.e("read fingerprint matches"))?;
        let rows = st
            .query_map([leftover], |r| match_at(r, 0))
            .map_err(self.e("read fingerprint matches"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read fingerprint matches"))
    }

    /// Every leftover whose best candidate is exact, with that candidate, path order (what
    /// `evac recover --all-exact` works through).
    pub fn fp_exact(&self) -> Result<Vec<(FpLeftover, FpMatch)>> {
        let cols = LEFTOVER_COLS
            .split(", ")
            .map(|c| format!("l.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mcols = MATCH_COLS
            .split(", ")
            .map(|c| format!("m.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let n = LEFTOVER_COLS.split(", ").count();
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {cols}, {mcols} FROM fp_leftovers l JOIN fp_matches m
                   ON m.leftover = l.path AND m.rank = 1
                 WHERE m.confidence = 'exact' ORDER BY l.path"
            ))
            .map_err(self.e("read fingerprint matches"))?;
        let rows = st
            .query_map([], |r| {
                // The match's columns follow the leftover's.
                Ok((leftover_of(r)?, match_at(r, n)?))
            })
            .map_err(self.e("read fingerprint matches"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read fingerprint matches"))
    }
}
