//! `--exclude`: the patterns a journal was started with, and the entries its walks left in SOURCE
//! because of them (an excluded directory once, not what is under it).

use super::status::PathSink;
use super::*;

impl Journal {
    /// The plan's exclude patterns, in the order given (none for a journal started without).
    pub fn excludes(&self) -> Result<Vec<Vec<u8>>> {
        let mut st = self
            .conn
            .prepare("SELECT pattern FROM excludes ORDER BY seq")
            .map_err(self.e("read exclude patterns"))?;
        let rows = st
            .query_map([], |r| r.get(0))
            .map_err(self.e("read exclude patterns"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("read exclude patterns"))
    }

    /// Whether the journal records any entry beneath directory `dir` (a tree evac has begun to
    /// relocate file by file: it goes on that way, whatever markers appear in it since).
    pub fn has_rows_under(&self, dir: &[u8]) -> Result<bool> {
        // Every path beneath `dir/` sorts between `dir/` and `dir0` ('0' follows '/').
        let (mut lo, mut hi) = (dir.to_vec(), dir.to_vec());
        lo.push(b'/');
        hi.push(b'0');
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM files WHERE path >= ?1 AND path < ?2)")
            .and_then(|mut st| st.query_row(params![lo, hi], |r| r.get(0)))
            .map_err(self.e("look for entries beneath a directory"))
    }

    /// Record the plan's exclude patterns (with the plan: they hold for the journal's life).
    pub fn set_excludes(&self, patterns: &[Vec<u8>]) -> Result<()> {
        let tx = self.tx()?;
        self.conn
            .execute("DELETE FROM excludes", [])
            .map_err(self.e("record exclude patterns"))?;
        for p in patterns {
            self.conn
                .execute("INSERT INTO excludes (pattern) VALUES (?1)", [p])
                .map_err(self.e("record exclude patterns"))?;
        }
        tx.commit()
    }

    /// The walk of `run` met an excluded entry (and did not enter it).
    // (The upsert names the values, not `excluded.col`: this table's own name hides SQLite's
    // name for the proposed row, so a resume kept the old run and then forgot the entry.)
    pub fn record_excluded(&self, path: &[u8], kind: Kind, rule: &str, run: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO excluded (path, kind, rule, seen_run) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(path) DO UPDATE SET kind = ?2, rule = ?3, seen_run = ?4",
            )
            .and_then(|mut st| st.execute(params![path, kind.as_str(), rule, run]))
            .map_err(self.e("record excluded path"))?;
        Ok(())
    }

    /// After a complete walk: forget excluded entries it did not meet (deleted or renamed by
    /// users). Returns how many.
    pub fn forget_unseen_excluded(&self, run: i64) -> Result<u64> {
        self.conn
            .execute("DELETE FROM excluded WHERE seen_run != ?1", [run])
            .map(|n| n as u64)
            .map_err(self.e("forget excluded paths"))
    }

    pub fn excluded_count(&self) -> Result<i64> {
        self.conn
            .query_row("SELECT count(*) FROM excluded", [], |r| r.get(0))
            .map_err(self.e("count excluded paths"))
    }

    /// Every excluded entry, with its kind and the pattern that excluded it.
    pub fn for_each_excluded(&self, f: PathSink<'_>) -> Result<()> {
        let mut st = self
            .conn
            .prepare("SELECT path, kind, rule FROM excluded ORDER BY path")
            .map_err(self.e("list excluded paths"))?;
        let mut rows = st.query([]).map_err(self.e("list excluded paths"))?;
        while let Some(r) = rows.next().map_err(self.e("list excluded paths"))? {
            let p: Vec<u8> = r.get(0).map_err(self.e("list excluded paths"))?;
            let kind: String = r.get(1).map_err(self.e("list excluded paths"))?;
            let rule: String = r.get(2).map_err(self.e("list excluded paths"))?;
            let what = if kind == "dir" {
                "directory (not entered)".to_string()
            } else {
                kind
            };
            // A unit's rule says what it is ("unit: git working tree …"); a pattern is quoted.
            let why = match rule.strip_prefix("unit: ") {
                Some(u) => format!("left whole as a {u}"),
                None => format!("excluded by --exclude {rule}"),
            };
            f(&p, Some(&format!("{what}, {why}")))
                .map_err(|e| Error::Setup(format!("write output: {e}")))?;
        }
        Ok(())
    }
}
