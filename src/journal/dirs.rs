//! Directories: their metadata to apply at DEST after their contents, and which ones this
//! journal has put something under.

use super::*;

pub struct DirRec {
    pub touched: bool,
    pub path: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

impl Journal {
    /// Mark a directory (relative path) as holding something this journal relocated.
    pub fn touch_dir(&self, path: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE dirs SET touched = 1 WHERE path = ?1 AND touched = 0")
            .and_then(|mut st| st.execute([path]))
            .map_err(self.e("record directory"))?;
        Ok(())
    }

    pub fn dirs_deepest_first(
        &self,
        after: Option<(i64, Vec<u8>)>,
        limit: i64,
    ) -> Result<Vec<(i64, DirRec)>> {
        let (d, p) = after.unwrap_or((i64::MAX, Vec::new()));
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT depth, path, mode, uid, gid, atime_ns, mtime_ns, touched FROM dirs
                 WHERE (depth < ?1) OR (depth = ?1 AND path > ?2)
                 ORDER BY depth DESC, path LIMIT ?3",
            )
            .map_err(self.e("list directories"))?;
        let rows = st
            .query_map(params![d, p, limit], |r| {
                Ok((
                    r.get(0)?,
                    DirRec {
                        path: r.get(1)?,
                        mode: r.get(2)?,
                        uid: r.get(3)?,
                        gid: r.get(4)?,
                        atime_ns: r.get(5)?,
                        mtime_ns: r.get(6)?,
                        touched: r.get::<_, i64>(7)? != 0,
                    },
                ))
            })
            .map_err(self.e("list directories"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list directories"))
    }

    /// Directories gone from SOURCE by this complete walk, deepest first, and whether this
    /// journal put anything under them at DEST.
    pub fn vanished_dirs(&self, run: i64) -> Result<Vec<(Vec<u8>, bool)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path, touched FROM dirs WHERE seen_run IS NULL OR seen_run != ?1 ORDER BY depth DESC, path",
            )
            .map_err(self.e("list directories"))?;
        let rows = st
            .query_map([run], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))
            .map_err(self.e("list directories"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list directories"))
    }

    pub fn forget_dir(&self, path: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM dirs WHERE path = ?1")
            .and_then(|mut st| st.execute([path]))
            .map_err(self.e("record directory"))?;
        Ok(())
    }
}
