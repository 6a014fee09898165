//! The plan (SOURCE, DEST, link prefix, journal id) and the runs with their START, heartbeat,
//! FINISH and complete walks.

use super::*;

#[derive(Debug, Clone)]
pub struct Plan {
    pub journal_id: String,
    pub source: PathBuf,
    pub dest: PathBuf,
    pub link_prefix: PathBuf,
    pub source_dev: u64,
    pub source_ino: u64,
    pub dest_dev: u64,
    pub dest_ino: u64,
}

pub struct RunRow {
    pub id: i64,
    pub pid: i64,
    pub started_at: f64,
    pub heartbeat_at: f64,
    pub finished_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub bytes_relocated: i64,
    pub files_relocated: i64,
    pub rate_bps: f64,
    pub throttle: String,
}

impl Journal {
    pub fn plan(&self) -> Result<Option<Plan>> {
        self.conn
            .query_row(
                "SELECT journal_id, source, dest, link_prefix, source_dev, source_ino, dest_dev, dest_ino FROM plan WHERE id = 1",
                [],
                |r| {
                    Ok(Plan {
                        journal_id: r.get(0)?,
                        source: bytes_path(r.get(1)?),
                        dest: bytes_path(r.get(2)?),
                        link_prefix: bytes_path(r.get(3)?),
                        source_dev: r.get::<_, i64>(4)? as u64,
                        source_ino: r.get::<_, i64>(5)? as u64,
                        dest_dev: r.get::<_, i64>(6)? as u64,
                        dest_ino: r.get::<_, i64>(7)? as u64,
                    })
                },
            )
            .optional()
            .map_err(self.e("read plan"))
    }

    /// One of the plan's options (a JSON object of settings kept for later runs).
    pub fn plan_option(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT json_extract(options, '$.' || ?1) FROM plan WHERE id = 1",
                [key],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.e("read plan"))
    }

    pub fn set_plan_option(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE plan SET options = json_set(options, '$.' || ?1, ?2) WHERE id = 1",
                params![key, value],
            )
            .map_err(self.e("record plan"))?;
        Ok(())
    }

    pub fn create_plan(&self, p: &Plan, options: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO plan (id, journal_id, source, dest, link_prefix, source_dev, source_ino, dest_dev, dest_ino, created_at, options)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    p.journal_id,
                    path_bytes(&p.source),
                    path_bytes(&p.dest),
                    path_bytes(&p.link_prefix),
                    p.source_dev as i64,
                    p.source_ino as i64,
                    p.dest_dev as i64,
                    p.dest_ino as i64,
                    now(),
                    options
                ],
            )
            .map_err(self.e("write plan"))?;
        Ok(())
    }

    pub fn start_run(&self, pid: u32, args: &str) -> Result<i64> {
        let t = now();
        self.conn
            .execute(
                "INSERT INTO runs (pid, args, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?3)",
                params![pid, args, t],
            )
            .map_err(self.e("record run start"))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn heartbeat(
        &self,
        run: i64,
        files: u64,
        bytes: u64,
        rate: f64,
        throttle: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET heartbeat_at = ?2, files_relocated = ?3, bytes_relocated = ?4, rate_bps = ?5, throttle = ?6 WHERE id = ?1",
                params![run, now(), files as i64, bytes as i64, rate, throttle],
            )
            .map_err(self.e("record progress"))?;
        Ok(())
    }

    pub fn finish_run(&self, run: i64, exit_code: i32, totals: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, exit_code = ?3, totals = ?4 WHERE id = ?1",
                params![run, now(), exit_code, totals],
            )
            .map_err(self.e("record run finish"))?;
        Ok(())
    }

    /// This run's walk was complete and its resync done.
    pub fn mark_resynced(&self, run: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET resynced_at = ?2 WHERE id = ?1",
                params![run, now()],
            )
            .map_err(self.e("record run"))?;
        Ok(())
    }

    /// The complete walk before `run`, if any.
    pub fn prev_resynced(&self, run: i64) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT max(id) FROM runs WHERE resynced_at IS NOT NULL AND id < ?1",
                [run],
                |r| r.get(0),
            )
            .map_err(self.e("read runs"))
    }

    /// The `k`-th last run before `run` that walked all of SOURCE (k = 1: the previous one).
    pub fn resynced_back(&self, run: i64, k: i64) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT id FROM runs WHERE resynced_at IS NOT NULL AND id < ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                params![run, k - 1],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.e("read runs"))
    }

    pub fn last_run(&self) -> Result<Option<RunRow>> {
        self.conn
            .query_row(
                "SELECT id, pid, started_at, heartbeat_at, finished_at, exit_code, bytes_relocated, files_relocated, rate_bps, throttle
                 FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(RunRow {
                        id: r.get(0)?,
                        pid: r.get(1)?,
                        started_at: r.get(2)?,
                        heartbeat_at: r.get(3)?,
                        finished_at: r.get(4)?,
                        exit_code: r.get(5)?,
                        bytes_relocated: r.get(6)?,
                        files_relocated: r.get(7)?,
                        rate_bps: r.get(8)?,
                        throttle: r.get(9)?,
                    })
                },
            )
            .optional()
            .map_err(self.e("read runs"))
    }
}
