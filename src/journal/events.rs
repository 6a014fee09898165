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
