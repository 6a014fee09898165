//! The control table: what `evac pause`, `resume` and `throttle` set for a running evac (and the
//! next), read by the run every second.

use super::*;

impl Journal {
    /// Set a control value for a running evac (`evac pause`, `resume`, `throttle`).
    pub fn set_control(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO control (key, value, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, at = excluded.at",
                params![key, value, now()],
            )
            .map_err(self.e("record control"))?;
        Ok(())
    }

    /// The control values, by key.
    pub fn controls(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, value FROM control")
            .map_err(self.e("read control"))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e("read control"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read control"))
    }
}
