//! The SQLite journal: the only code that writes SQL. It records the plan, every file's state and
//! history, and every run, so that any stop (even kill -9) can be resumed without loss.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// Phase 3's tables (`evac fingerprint`, read by `evac recover`).
mod control;
mod dirs;
mod events;
mod excluded;
mod files;
pub mod fingerprint;
mod hsm;
mod report;
mod resync;
mod runs;
mod state;
mod status;

pub use dirs::*;
pub use events::*;
pub use files::*;
pub use hsm::*;
pub use report::*;
pub use resync::*;
pub use runs::*;
pub use state::*;

/// Migrations, embedded and applied in order; `user_version` holds how many have been applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_resync",
        include_str!("../../migrations/0002_resync.sql"),
    ),
    (
        "0003_link_handle",
        include_str!("../../migrations/0003_link_handle.sql"),
    ),
    (
        "0004_hsm_db",
        include_str!("../../migrations/0004_hsm_db.sql"),
    ),
    (
        "0005_control",
        include_str!("../../migrations/0005_control.sql"),
    ),
    (
        "0006_fingerprint",
        include_str!("../../migrations/0006_fingerprint.sql"),
    ),
    (
        "0007_recover",
        include_str!("../../migrations/0007_recover.sql"),
    ),
    (
        "0008_crash_records",
        include_str!("../../migrations/0008_crash_records.sql"),
    ),
    (
        "0009_cause",
        include_str!("../../migrations/0009_cause.sql"),
    ),
    (
        "0010_excluded",
        include_str!("../../migrations/0010_excluded.sql"),
    ),
    (
        "0011_counts",
        include_str!("../../migrations/0011_counts.sql"),
    ),
    (
        "0012_event_log",
        include_str!("../../migrations/0012_event_log.sql"),
    ),
];

use crate::util::time::now;

pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

fn jerr<'a>(path: &'a Path, op: &'static str) -> impl Fn(rusqlite::Error) -> Error + 'a {
    move |e| Error::Journal {
        path: path.to_path_buf(),
        op,
        msg: e.to_string(),
    }
}

impl Journal {
    /// Open (and create if `create`) a journal, applying pending migrations.
    pub fn open(path: &Path, create: bool) -> Result<Journal> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(jerr(path, "open"))?;
        let j = Journal::with(conn, path)?;
        // FULL: a commit must be on disk before the step it records takes effect (I3).
        j.conn
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )
            .map_err(jerr(path, "configure"))?;
        j.pass_commit_points();
        j.migrate()?;
        Ok(j)
    }

    /// Every commit passes the `journal.commit` step point (inert outside tests).
    fn pass_commit_points(&self) {
        if crate::sys::steps::enabled() {
            self.conn.commit_hook(Some(|| {
                crate::sys::steps::at(crate::sys::steps::Step::JournalCommit, b"");
                false
            }));
        }
    }

    /// Open an existing journal for reading while a run may be writing it. It changes nothing:
    /// no migration, no journal-mode switch (either would race a run that is creating it).
    pub fn open_read(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(Error::Setup(format!(
                "journal {}: no such file",
                crate::util::escape::quoted(path.as_os_str().as_encoded_bytes())
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(jerr(path, "open"))?;
        let j = Journal::with(conn, path)?;
        j.conn
            .execute_batch("PRAGMA query_only=ON;")
            .map_err(jerr(path, "configure"))?;
        let v = j.schema_version()?;
        if v as usize != MIGRATIONS.len() {
            return Err(Error::Setup(format!(
                "journal {}: schema version {v}, this evac uses {} ({})",
                crate::util::escape::quoted(path.as_os_str().as_encoded_bytes()),
                MIGRATIONS.len(),
                if v == 0 {
                    "it is being created, or is not an evac journal"
                } else if (v as usize) < MIGRATIONS.len() {
                    "the next run upgrades it"
                } else {
                    "use a newer evac"
                }
            )));
        }
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A journal on an open connection: waits up to 30 s for another process's write lock
    /// (a `status` reading while a run commits) rather than failing at once.
    fn with(conn: Connection, path: &Path) -> Result<Journal> {
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(jerr(path, "configure"))?;
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn e(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        jerr(&self.path, op)
    }

    pub fn migrate(&self) -> Result<()> {
        let have: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.e("read schema version"))?;
        if have as usize > MIGRATIONS.len() {
            return Err(Error::Setup(format!(
                "journal {}: schema version {have} is newer than this evac understands ({}); use a newer evac",
                self.path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, (_name, sql)) in MIGRATIONS.iter().enumerate().skip(have as usize) {
            let tx = self
                .conn
                .unchecked_transaction()
                .map_err(self.e("migrate"))?;
            tx.execute_batch(sql).map_err(self.e("migrate"))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(self.e("migrate"))?;
            tx.commit().map_err(self.e("migrate"))?;
        }
        Ok(())
    }

    /// Refuse a damaged journal before acting on it: a run trusts it to say what is in flight.
    pub fn check_integrity(&self) -> Result<()> {
        let mut st = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(self.e("check integrity"))?;
        let rows: Vec<String> = st
            .query_map([], |r| r.get(0))
            .and_then(|r| r.collect())
            .map_err(self.e("check integrity"))?;
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(());
        }
        Err(Error::Setup(format!(
            "journal {} is damaged ({}); refusing to use it: restore a copy, or start a new journal (links already made are recognised as relocated)",
            crate::util::escape::quoted(self.path.as_os_str().as_encoded_bytes()),
            rows.join("; ")
        )))
    }

    pub fn schema_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.e("read schema version"))
    }

    /// Begin a transaction (BEGIN IMMEDIATE: the write lock at once, so a commit never fails
    /// for a reader that upgraded first). Inside one already, the guard joins it: the outer one
    /// commits. A guard dropped without `commit` rolls back what it began (an error on the way),
    /// so a failed step never leaves a half-written record behind for a later commit to publish.
    pub fn tx(&self) -> Result<Tx<'_>> {
        let owner = self.conn.is_autocommit();
        if owner {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(self.e("begin transaction"))?;
        }
        Ok(Tx {
            j: self,
            owner,
            done: false,
        })
    }

    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// What keeps DEST from mirroring SOURCE ("left:KIND" rows are entries evac does not carry
    /// over and that block nothing); ?1 is the run judged against.
    const CUTOVER_SQL: &'static str = "
        SELECT path, 'files not relocated' AS what, reason FROM files
         WHERE kind = 'file' AND state IN ('pending', 'copying', 'placed', 'deferred', 'failed', 'staged_out', 'skipped')
        UNION ALL
        SELECT path, 'renamed links not followed at DEST', reason FROM files
         WHERE kind = 'symlink' AND target IS NOT NULL AND state IN ('failed', 'deferred')
        UNION ALL
        SELECT path, 'copies at DEST whose link is gone', coalesce(reason, 'its link was not seen by the last complete walk') FROM files
         WHERE linked_ino IS NOT NULL AND (seen_run IS NULL OR seen_run != ?1 OR state != 'relocated' OR kind != 'file')
           AND state NOT IN ('copying', 'placed')
        UNION ALL
        SELECT path, 'DEST directories gone from SOURCE', 'not empty at DEST' FROM dirs
         WHERE seen_run IS NULL OR seen_run != ?1
        UNION ALL
        SELECT path, 'left:' || kind, reason FROM files
         WHERE state = 'skipped' AND kind != 'file' AND kind != 'reserved'
        UNION ALL
        SELECT path, 'left:excluded',
               CASE WHEN rule LIKE 'unit: %' THEN 'left whole as a ' || substr(rule, 7)
                    ELSE 'excluded by --exclude ' || rule END || ': stays on SOURCE only'
          FROM excluded";
}

/// A journal transaction: committed by `commit`, rolled back when dropped without it.
#[must_use = "a transaction not committed is rolled back when dropped"]
pub struct Tx<'a> {
    j: &'a Journal,
    /// Began it (not joined an outer one).
    owner: bool,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        if self.owner {
            self.j
                .conn
                .execute_batch("COMMIT")
                .map_err(self.j.e("commit transaction"))?;
        }
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.owner && !self.done && !self.j.conn.is_autocommit() {
            let _ = self.j.conn.execute_batch("ROLLBACK");
        }
    }
}

pub fn blake3_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn path_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

pub fn bytes_path(b: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

#[cfg(test)]
mod tests;
