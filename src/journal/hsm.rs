//! The HSM's listing as imported, phase 2's stage records, and `evac recover`'s requests.

use super::*;

/// A staged-out file of the HSM listing, with what phase 1 and phase 2 know of it.
#[derive(Debug, Clone)]
pub struct StageRow {
    pub path: Vec<u8>,
    pub tier: Option<i64>,
    pub volume: Option<String>,
    pub size: u64,
    pub file_id: Option<i64>,
    pub file_state: Option<FileState>,
    pub tries: i64,
    pub after: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct StageProgress {
    pub volumes: i64,
    pub volumes_done: i64,
    pub staged: i64,
    pub relocated: i64,
    pub given_up: i64,
    pub bytes_waiting: i64,
    pub first: Option<f64>,
    pub last: Option<f64>,
}

/// A leftover to relocate with another copy's data (`evac recover`).
#[derive(Clone, Debug)]
pub struct RecoveryRow {
    pub file_id: i64,
    /// The candidate's absolute path, raw bytes.
    pub candidate: Vec<u8>,
    pub size: u64,
    pub blake3: [u8; 32],
}

impl Journal {
    /// Begin an `evac hsm import` (inside the caller's transaction); its id.
    pub fn start_hsm_import(&self, format: &str, listing: &[u8]) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO hsm_imports (at, format, listing, records, malformed, outside, missing, relocated)
                 VALUES (?1, ?2, ?3, 0, 0, 0, 0, 0)",
                params![now(), format, listing],
            )
            .map_err(self.e("record import"))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_hsm_import(
        &self,
        id: i64,
        records: usize,
        malformed: usize,
        (outside, missing, relocated): (usize, usize, usize),
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE hsm_imports SET records = ?2, malformed = ?3, outside = ?4, missing = ?5, relocated = ?6 WHERE id = ?1",
                params![id, records as i64, malformed as i64, outside as i64, missing as i64, relocated as i64],
            )
            .map_err(self.e("record import"))?;
        Ok(())
    }

    /// One record of the HSM's listing, replacing an earlier import's for the same path.
    pub fn upsert_hsm_file(
        &self,
        rel: &[u8],
        state: &str,
        r: &crate::hsm::detect::Record,
        import_id: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO hsm_files (path, state, tier, volume, position, size, checksum, import_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(path) DO UPDATE SET state = excluded.state, tier = excluded.tier,
                    volume = excluded.volume, position = excluded.position, size = excluded.size,
                    checksum = excluded.checksum, import_id = excluded.import_id",
            )
            .and_then(|mut st| {
                st.execute(params![
                    rel, state, r.tier, r.volume, r.position, r.size, r.checksum, import_id
                ])
            })
            .map_err(self.e("record HSM file"))?;
        Ok(())
    }

    /// Staged-out files of the imported HSM listing still to be recalled and relocated, in tape
    /// order (tier, volume, position).
    /// With `leftovers`, the files given up on by earlier runs too (their tries start again).
    pub fn stage_candidates(&self, leftovers: bool) -> Result<Vec<StageRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT h.path, h.tier, h.volume, h.position, h.size, f.id, f.state, h.stage_state,
                        CASE WHEN h.stage_state = 'given_up' THEN 0 ELSE h.stage_tries END,
                        CASE WHEN h.stage_state = 'given_up' THEN NULL ELSE h.stage_after END
                 FROM hsm_files h LEFT JOIN files f ON f.path = h.path
                 WHERE h.state = 'staged_out' AND coalesce(h.stage_state, '') != 'done'
                   AND (?1 OR coalesce(h.stage_state, '') != 'given_up')
                 ORDER BY h.tier, h.volume, h.position, h.path",
            )
            .map_err(self.e("list files to stage"))?;
        let rows = st
            .query_map([leftovers], |r| {
                Ok(StageRow {
                    path: r.get(0)?,
                    tier: r.get(1)?,
                    volume: r.get(2)?,
                    size: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                    file_id: r.get(5)?,
                    file_state: r.get(6)?,
                    tries: r.get(8)?,
                    after: r.get(9)?,
                })
            })
            .map_err(self.e("list files to stage"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list files to stage"))
    }

    /// Phase 2's record of one file: its stage state, and (on a failure) one more try, the
    /// error, and when it may be tried again.
    pub fn stage_mark(&self, path: &[u8], state: &str, failure: Option<(&str, f64)>) -> Result<()> {
        let t = now();
        self.conn
            .prepare_cached(
                "UPDATE hsm_files SET stage_state = ?2,
                    stage_tries = stage_tries + CASE WHEN ?3 IS NULL THEN 0 ELSE 1 END,
                    stage_error = coalesce(?3, stage_error), stage_after = ?4,
                    staged_at = CASE WHEN ?2 = 'staged' THEN ?5 ELSE staged_at END
                 WHERE path = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    path,
                    state,
                    failure.map(|f| f.0),
                    failure.map(|f| f.1),
                    t
                ])
            })
            .map_err(self.e("record staging"))?;
        Ok(())
    }

    /// Phase 2's progress: (volumes, volumes done, files staged, relocated, given up, bytes
    /// staged and waiting for relocation, first and last staging time).
    pub fn stage_progress(&self) -> Result<StageProgress> {
        self.conn
            .query_row(
                "SELECT
                    count(DISTINCT coalesce(volume, '')),
                    count(DISTINCT coalesce(volume, '')) - count(DISTINCT CASE WHEN coalesce(stage_state, '') NOT IN ('done', 'given_up') THEN coalesce(volume, '') END),
                    coalesce(sum(staged_at IS NOT NULL), 0),
                    coalesce(sum(stage_state = 'done'), 0),
                    coalesce(sum(stage_state = 'given_up'), 0),
                    coalesce(sum(CASE WHEN stage_state = 'staged' THEN size ELSE 0 END), 0),
                    min(staged_at), max(staged_at)
                 FROM hsm_files WHERE state = 'staged_out'",
                [],
                |r| {
                    Ok(StageProgress {
                        volumes: r.get(0)?,
                        volumes_done: r.get(1)?,
                        staged: r.get(2)?,
                        relocated: r.get(3)?,
                        given_up: r.get(4)?,
                        bytes_waiting: r.get(5)?,
                        first: r.get(6)?,
                        last: r.get(7)?,
                    })
                },
            )
            .map_err(self.e("read staging progress"))
    }

    /// (files, staged out, distinct volumes of the staged-out ones) in the imported HSM listing.
    pub fn hsm_db_counts(&self) -> Result<(i64, i64, i64)> {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(state = 'staged_out'), 0),
                        count(DISTINCT CASE WHEN state = 'staged_out' THEN coalesce(volume, '') END)
                 FROM hsm_files",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.e("count HSM files"))
    }

    /// `evac recover`: relocate file `file_id` from `candidate` (checked: its content hashes to
    /// `blake3`), and make it waiting again for the run that does it.
    pub fn request_recovery(&self, r: &RecoveryRow, checked_by: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO recoveries (file_id, candidate, size, blake3, checked_by, state, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'requested', ?6)
                 ON CONFLICT(file_id) DO UPDATE SET candidate = excluded.candidate,
                   size = excluded.size, blake3 = excluded.blake3,
                   checked_by = excluded.checked_by, state = 'requested', detail = NULL,
                   at = excluded.at",
                params![
                    r.file_id,
                    r.candidate,
                    r.size as i64,
                    &r.blake3[..],
                    checked_by,
                    now()
                ],
            )
            .map_err(self.e("record recovery"))?;
        self.conn
            .execute(
                "UPDATE files SET state = 'pending', cause = 'recovery', reason = 'to be recovered from another copy',
                   attempts = 0, updated_at = ?2 WHERE id = ?1",
                params![r.file_id, now()],
            )
            .map_err(self.e("record recovery"))?;
        Ok(())
    }

    /// The recoveries not yet done.
    pub fn recoveries_requested(&self) -> Result<Vec<RecoveryRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT file_id, candidate, size, blake3 FROM recoveries
                 WHERE state = 'requested' ORDER BY file_id",
            )
            .map_err(self.e("read recoveries"))?;
        let rows = st
            .query_map([], |r| {
                let h: Vec<u8> = r.get(3)?;
                let mut blake3 = [0u8; 32];
                if h.len() == 32 {
                    blake3.copy_from_slice(&h);
                }
                Ok(RecoveryRow {
                    file_id: r.get(0)?,
                    candidate: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    blake3,
                })
            })
            .map_err(self.e("read recoveries"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read recoveries"))
    }

    pub fn finish_recovery(&self, file_id: i64, state: &str, detail: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE recoveries SET state = ?2, detail = ?3, at = ?4 WHERE file_id = ?1",
                params![file_id, state, detail, now()],
            )
            .map_err(self.e("record recovery"))?;
        Ok(())
    }
}
