//! The journal's log: the run log (START, FINISH, warnings, errors) and each file's events
//! (deferred, failed, unlinked, resync moves), which status and the operators read back.

use super::*;

impl Journal {
    pub fn log(&self, run: Option<i64>, level: &str, message: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO log (run_id, at, level, message) VALUES (?1, ?2, ?3, ?4)",
                params![run, now(), level, message],
            )
            .map_err(self.e("write log"))?;
        Ok(())
    }

    pub fn log_lines(&self, limit: i64) -> Result<Vec<(f64, String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT at, level, message FROM (SELECT * FROM log ORDER BY id DESC LIMIT ?1) ORDER BY id")
            .map_err(self.e("read log"))?;
        let rows = st
            .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.e("read log"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read log"))
    }

    pub fn event(&self, id: i64, run: Option<i64>, event: &str, detail: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO events (file_id, run_id, at, event, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| st.execute(params![id, run, now(), event, detail]))
            .map_err(self.e("record event"))?;
        Ok(())
    }
}
