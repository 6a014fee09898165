//! The SQLite journal: the only code that writes SQL. It records the plan, every file's state and
//! history, and every run, so that any stop (even kill -9) can be resumed without loss.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// Phase 3's tables (`evac fingerprint`, read by `evac recover`).
pub mod fingerprint;

/// Migrations, embedded and applied in order; `user_version` holds how many have been applied.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    ("0002_resync", include_str!("../migrations/0002_resync.sql")),
    (
        "0003_link_handle",
        include_str!("../migrations/0003_link_handle.sql"),
    ),
    ("0004_hsm_db", include_str!("../migrations/0004_hsm_db.sql")),
    (
        "0005_control",
        include_str!("../migrations/0005_control.sql"),
    ),
    (
        "0006_fingerprint",
        include_str!("../migrations/0006_fingerprint.sql"),
    ),
    (
        "0007_recover",
        include_str!("../migrations/0007_recover.sql"),
    ),
    (
        "0008_crash_records",
        include_str!("../migrations/0008_crash_records.sql"),
    ),
];

/// A leftover to relocate with another copy's data (`evac recover`).
#[derive(Clone, Debug)]
pub struct RecoveryRow {
    pub file_id: i64,
    /// The candidate's absolute path, raw bytes.
    pub candidate: Vec<u8>,
    pub size: u64,
    pub blake3: [u8; 32],
}

use crate::util::time::now;

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

/// What the walker saw at one path.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// For symlinks: the target.
    pub target: Option<Vec<u8>>,
    /// For regular files the HSM has moved away (or whose state is unknown): why evac must not
    /// open them.
    pub hsm: Option<crate::hsm::detect::Classified>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
    /// A directory on another filesystem: recorded, never entered.
    MountPoint,
    /// A name in evac's own temporary namespace for this journal.
    Reserved,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDev => "chardev",
            Kind::BlockDev => "blockdev",
            Kind::MountPoint => "mountpoint",
            Kind::Reserved => "reserved",
        }
    }
}

/// One regular file as the journal knows it, enough to relocate it.
#[derive(Debug, Clone)]
pub struct FileRec {
    pub id: i64,
    pub path: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub version: i64,
    /// The DEST inode of evac's latest copy of this path (it may replace it).
    pub dest_ino: Option<u64>,
    /// The DEST inode the source link last pointed to (kept in the trash, never overwritten).
    pub linked_ino: Option<u64>,
}

/// What the coordinator should do after recording an observation.
#[derive(Debug)]
pub enum Next {
    Nothing,
    Relocate(FileRec),
    /// A hard-linked file: relocated with all its names once the walk is complete.
    HardLinkLater,
}

pub struct Counts {
    pub by_state: Vec<(String, i64)>,
    pub bytes_total: i64,
    pub bytes_relocated: i64,
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

/// A relocated file as verify needs it.
pub struct Relocated {
    pub id: i64,
    pub path: Vec<u8>,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub blake3: Option<Vec<u8>>,
    pub dest_ino: Option<u64>,
}

pub struct DirRec {
    pub touched: bool,
    pub path: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

/// A link seen in SOURCE that names another path under LINK_PREFIX.
#[derive(Debug, Clone)]
pub struct ElsewhereLink {
    pub id: i64,
    pub path: Vec<u8>,
    pub link_ino: u64,
    pub target: Vec<u8>,
}

/// What the journal knows of a copy, carried along when it changes name.
#[derive(Debug, Clone)]
pub struct CopyMeta {
    pub link_ino: Option<u64>,
    pub blake3: Option<Vec<u8>>,
    pub size: Option<i64>,
    pub mode: Option<i64>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub mtime_ns: Option<i64>,
    /// The file handle of that link, when the filesystem gives one.
    pub link_handle: Option<Vec<u8>>,
}

impl CopyMeta {
    /// The eight columns link_ino, blake3, size, mode, uid, gid, mtime_ns, link_handle, from
    /// `first` on.
    fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<CopyMeta> {
        Ok(CopyMeta {
            link_ino: r.get::<_, Option<i64>>(first)?.map(|d| d as u64),
            blake3: r.get(first + 1)?,
            size: r.get(first + 2)?,
            mode: r.get(first + 3)?,
            uid: r.get(first + 4)?,
            gid: r.get(first + 5)?,
            mtime_ns: r.get(first + 6)?,
            link_handle: r.get(first + 7)?,
        })
    }
}

/// One path's row as resync sees it.
#[derive(Debug, Clone)]
pub struct PathRow {
    pub id: i64,
    pub path: Vec<u8>,
    pub state: String,
    pub kind: String,
    pub seen_run: Option<i64>,
    pub version: i64,
    pub dest_ino: Option<u64>,
    pub linked_ino: Option<u64>,
    pub copy: CopyMeta,
    /// The last run whose walk saw this path's own link.
    pub link_seen_run: Option<i64>,
}

/// A staged-out file of the HSM listing, with what phase 1 and phase 2 know of it.
#[derive(Debug, Clone)]
pub struct StageRow {
    pub path: Vec<u8>,
    pub tier: Option<i64>,
    pub volume: Option<String>,
    pub position: Option<i64>,
    pub size: u64,
    pub file_id: Option<i64>,
    pub file_state: Option<String>,
    pub stage_state: Option<String>,
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

/// A copy evac moved into DEST's trash.
#[derive(Debug, Clone)]
pub struct TrashRow {
    pub id: i64,
    pub path: Vec<u8>,
    pub trash_rel: Vec<u8>,
    pub version: i64,
    pub dest_ino: u64,
    pub copy: CopyMeta,
}

/// How far DEST is from mirroring SOURCE.
#[derive(Debug, Default)]
pub struct Cutover {
    /// (run, when) of the last run that walked all of SOURCE and resynced DEST.
    pub as_of: Option<(i64, f64)>,
    /// What still differs, by kind, with counts.
    pub differences: Vec<(String, i64)>,
    /// Entries evac leaves in SOURCE (symlinks of users, FIFOs, sockets, devices, mount points).
    pub not_carried: Vec<(String, i64)>,
}

impl Cutover {
    pub fn ready(&self) -> bool {
        self.as_of.is_some() && self.differences.is_empty()
    }
}

/// Receives (path, reason) rows for listings.
pub type PathSink<'a> = &'a mut dyn FnMut(&[u8], Option<&str>) -> std::io::Result<()>;

/// (state, dest_ino, linked_ino): what recovery needs to know about a file.
pub type FileState = (String, Option<u64>, Option<u64>);

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
        let j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        j.conn
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(jerr(path, "configure"))?;
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
        let j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        j.conn
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(jerr(path, "configure"))?;
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

    pub fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.e("begin transaction"))
    }

    pub fn commit(&self) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(self.e("commit transaction"))
    }

    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    // ---- plan and runs -------------------------------------------------------------------

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
                    position: r.get(3)?,
                    size: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                    file_id: r.get(5)?,
                    file_state: r.get(6)?,
                    stage_state: r.get(7)?,
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
                "UPDATE files SET state = 'pending', reason = 'to be recovered from another copy',
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
            if let Some(kind) = what.strip_prefix("left:") {
                c.not_carried.push((kind.to_string(), n));
            } else {
                c.differences.push((what, n));
            }
        }
        Ok(c)
    }

    /// What keeps DEST from mirroring SOURCE ("left:KIND" rows are entries evac does not carry
    /// over and that block nothing); ?1 is the run judged against.
    const CUTOVER_SQL: &'static str = "
        SELECT path, 'files not relocated' AS what, reason FROM files
         WHERE kind = 'file' AND state IN ('pending', 'copying', 'placed', 'swapped', 'deferred', 'failed', 'staged_out', 'skipped')
        UNION ALL
        SELECT path, 'renamed links not followed at DEST', reason FROM files
         WHERE kind = 'symlink' AND target IS NOT NULL AND state IN ('failed', 'deferred')
        UNION ALL
        SELECT path, 'copies at DEST whose link is gone', coalesce(reason, 'its link was not seen by the last complete walk') FROM files
         WHERE linked_ino IS NOT NULL AND (seen_run IS NULL OR seen_run != ?1 OR state != 'relocated' OR kind != 'file')
           AND state NOT IN ('copying', 'placed', 'swapped')
        UNION ALL
        SELECT path, 'DEST directories gone from SOURCE', 'not empty at DEST' FROM dirs
         WHERE seen_run IS NULL OR seen_run != ?1
        UNION ALL
        SELECT path, 'left:' || kind, reason FROM files
         WHERE state = 'skipped' AND kind != 'file' AND kind != 'reserved'";

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
                Some(r) => format!("{what}: {r}"),
                None => what,
            };
            f(&p, Some(&line)).map_err(|e| Error::Setup(format!("write output: {e}")))?;
        }
        Ok(())
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

    // ---- inventory ------------------------------------------------------------------------

    /// Record what the walker saw at a path and decide what to do with it.
    pub fn observe(&self, s: &Seen, run: i64, link_target: &[u8]) -> Result<Next> {
        if s.kind == Kind::Dir {
            self.conn
                .prepare_cached(
                    "INSERT INTO dirs (path, depth, mode, uid, gid, atime_ns, mtime_ns, seen_run)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(path) DO UPDATE SET mode = excluded.mode, uid = excluded.uid,
                        gid = excluded.gid, seen_run = excluded.seen_run",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        s.path,
                        s.path.iter().filter(|&&b| b == b'/').count() as i64,
                        s.mode,
                        s.uid,
                        s.gid,
                        s.atime_ns,
                        s.mtime_ns,
                        run
                    ])
                })
                .map_err(self.e("record directory"))?;
            return Ok(Next::Nothing);
        }
        type Prior = (
            i64,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let prior: Option<Prior> = self
            .conn
            .prepare_cached(
                "SELECT id, state, version, dest_ino, linked_ino, ino, ctime_ns FROM files WHERE path = ?1",
            )
            .and_then(|mut st| {
                st.query_row([&s.path], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                })
                .optional()
            })
            .map_err(self.e("look up file"))?;

        let already_linked = s.kind == Kind::Symlink && s.target.as_deref() == Some(link_target);
        // A link into DEST: the relative path it names (its own path for a link of ours; another
        // path for a link that was renamed, copied or made by hand).
        let into_dest: Option<&[u8]> = (s.kind == Kind::Symlink)
            .then(|| {
                let prefix = &link_target[..link_target.len().saturating_sub(s.path.len())];
                s.target.as_deref()?.strip_prefix(prefix)
            })
            .flatten()
            .filter(|rel| !rel.is_empty());
        let (kind, state, reason): (&str, &str, Option<&str>) = match s.kind {
            Kind::File => match &s.hsm {
                // I4: a stub is recorded, never dispatched.
                Some(c) => ("file", "staged_out", Some(c.why.as_str())),
                None => ("file", "pending", None),
            },
            Kind::Symlink if already_linked => ("file", "relocated", None),
            Kind::Symlink if into_dest.is_some() => (
                "symlink",
                "skipped",
                Some("a link into DEST under another name (resolved after the walk)"),
            ),
            Kind::Symlink => ("symlink", "skipped", Some("symlink (left as it is)")),
            Kind::Fifo => ("fifo", "skipped", Some("FIFO (never opened)")),
            Kind::Socket => ("socket", "skipped", Some("socket (never opened)")),
            Kind::CharDev => (
                "chardev",
                "skipped",
                Some("character device (never opened)"),
            ),
            Kind::BlockDev => ("blockdev", "skipped", Some("block device (never opened)")),
            Kind::MountPoint => (
                "mountpoint",
                "skipped",
                Some("another filesystem is mounted here (not crossed)"),
            ),
            Kind::Reserved => (
                "reserved",
                "skipped",
                Some("name is reserved for this journal's temporary files"),
            ),
            Kind::Dir => unreachable!("handled above"),
        };

        let t = now();
        match prior {
            None => {
                let reason = if already_linked {
                    Some("already a link to its copy when first seen")
                } else {
                    reason
                };
                self.conn
                    .prepare_cached(
                        "INSERT INTO files (path, kind, state, reason, dev, ino, nlink, size, mode, uid, gid, mtime_ns, ctime_ns, seen_run, updated_at, target, link_ino, link_seen_run)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, CASE WHEN ?17 IS NULL THEN NULL ELSE ?14 END)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            s.path, kind, state, reason, s.dev as i64, s.ino as i64, s.nlink as i64,
                            s.size as i64, s.mode, s.uid, s.gid, s.mtime_ns, s.ctime_ns, run, t,
                            into_dest, already_linked.then_some(s.ino as i64)
                        ])
                    })
                    .map_err(self.e("record file"))?;
                let id = self.conn.last_insert_rowid();
                Ok(self.next_for(s, id, 1, (None, None), state))
            }
            Some((id, pstate, version, dest_ino, linked_ino, pino, pctime)) => {
                // The walk's stat may be older than what the copy workers did since: a file in
                // flight is theirs to settle, and a regular file that is the very inode evac
                // relocated (unchanged since) is that stale stat, not a new file.
                let stale = s.kind == Kind::File
                    && pstate == "relocated"
                    && pino == Some(s.ino as i64)
                    && pctime.is_some_and(|c| s.ctime_ns <= c);
                let in_flight = matches!(pstate.as_str(), "copying" | "placed");
                if stale
                    || in_flight
                    || (already_linked && matches!(pstate.as_str(), "relocated" | "swapped"))
                {
                    // Our link's inode is what a later rename of it keeps.
                    self.conn
                        .prepare_cached(
                            "UPDATE files SET seen_run = ?2,
                                link_handle = CASE WHEN ?3 AND link_ino IS NOT ?4 THEN NULL ELSE link_handle END,
                                link_ino = CASE WHEN ?3 THEN ?4 ELSE link_ino END,
                                link_seen_run = CASE WHEN ?3 THEN ?2 ELSE link_seen_run END WHERE id = ?1",
                        )
                        .and_then(|mut st| {
                            st.execute(params![id, run, already_linked, s.ino as i64])
                        })
                        .map_err(self.e("record file"))?;
                    return Ok(Next::Nothing);
                }
                // A regular file where our link was: the user replaced it; a new version.
                let reappeared = s.kind == Kind::File && pstate == "relocated";
                let version = if reappeared { version + 1 } else { version };
                let reason = if already_linked {
                    Some("already a link to its copy")
                } else {
                    reason
                };
                self.conn
                    .prepare_cached(
                        "UPDATE files SET kind = ?2, state = ?3, reason = ?4, dev = ?5, ino = ?6, nlink = ?7, size = ?8, mode = ?9,
                            uid = ?10, gid = ?11, mtime_ns = ?12, ctime_ns = ?13, seen_run = ?14, updated_at = ?15, version = ?16,
                            target = ?17,
                            link_handle = CASE WHEN ?18 AND link_ino IS NOT ?6 THEN NULL ELSE link_handle END,
                            link_ino = CASE WHEN ?18 THEN ?6 ELSE link_ino END,
                            link_seen_run = CASE WHEN ?18 THEN ?14 ELSE link_seen_run END,
                            -- Our link found where the row was not relocated: the stat is the
                            -- link's, so the copy is hashed and described again (adopt_unhashed).
                            blake3 = CASE WHEN ?18 THEN NULL ELSE blake3 END
                         WHERE id = ?1",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            id, kind, state, reason, s.dev as i64, s.ino as i64, s.nlink as i64, s.size as i64,
                            s.mode, s.uid, s.gid, s.mtime_ns, s.ctime_ns, run, t, version, into_dest, already_linked
                        ])
                    })
                    .map_err(self.e("record file"))?;
                if reappeared {
                    self.event(
                        id,
                        Some(run),
                        "reappeared",
                        "a regular file replaced the link; relocating it as a new version",
                    )?;
                }
                Ok(self.next_for(
                    s,
                    id,
                    version,
                    (dest_ino.map(|d| d as u64), linked_ino.map(|d| d as u64)),
                    state,
                ))
            }
        }
    }

    fn next_for(
        &self,
        s: &Seen,
        id: i64,
        version: i64,
        (dest_ino, linked_ino): (Option<u64>, Option<u64>),
        state: &str,
    ) -> Next {
        if state != "pending" {
            return Next::Nothing;
        }
        if s.nlink > 1 {
            return Next::HardLinkLater;
        }
        Next::Relocate(FileRec {
            id,
            path: s.path.clone(),
            dev: s.dev,
            ino: s.ino,
            nlink: s.nlink,
            size: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
            version,
            dest_ino,
            linked_ino,
        })
    }

    /// After a complete walk: files that were waiting but are no longer there.
    pub fn mark_unseen_gone(&self, run: i64) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE files SET state = 'gone', updated_at = ?2,
                    reason = CASE state WHEN 'relocated' THEN 'its link was removed from SOURCE; the copy stays at DEST'
                                        ELSE 'no longer in SOURCE' END
                 WHERE (seen_run IS NULL OR seen_run != ?1)
                   AND state IN ('pending', 'deferred', 'failed', 'skipped', 'relocated', 'staged_out')",
                params![run, now()],
            )
            .map_err(self.e("mark vanished files"))
    }

    fn rec_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRec> {
        Ok(FileRec {
            id: r.get(0)?,
            path: r.get(1)?,
            dev: r.get::<_, i64>(2)? as u64,
            ino: r.get::<_, i64>(3)? as u64,
            nlink: r.get::<_, i64>(4)? as u64,
            size: r.get::<_, i64>(5)? as u64,
            mtime_ns: r.get(6)?,
            ctime_ns: r.get(7)?,
            version: r.get(8)?,
            dest_ino: r.get::<_, Option<i64>>(9)?.map(|d| d as u64),
            linked_ino: r.get::<_, Option<i64>>(10)?.map(|d| d as u64),
        })
    }

    const REC_COLS: &'static str =
        "id, path, dev, ino, nlink, size, mtime_ns, ctime_ns, version, dest_ino, linked_ino";

    /// Pending hard-linked files, grouped by inode (consecutive rows share dev/ino), after `after`.
    pub fn hardlink_pending(&self, after: (i64, i64), limit: i64) -> Result<Vec<FileRec>> {
        let sql = format!(
            "SELECT {} FROM files WHERE kind = 'file' AND state = 'pending' AND nlink > 1 AND (dev, ino) > (?1, ?2)
             ORDER BY dev, ino, id LIMIT ?3",
            Self::REC_COLS
        );
        let mut st = self
            .conn
            .prepare_cached(&sql)
            .map_err(self.e("list hard links"))?;
        let rows = st
            .query_map(params![after.0, after.1, limit], Self::rec_from_row)
            .map_err(self.e("list hard links"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list hard links"))
    }

    /// Files in `state` with id > `after`, for retry rounds and recovery.
    pub fn files_in_state(&self, state: &str, after: i64, limit: i64) -> Result<Vec<FileRec>> {
        let sql = format!(
            "SELECT {} FROM files WHERE state = ?1 AND kind = 'file' AND id > ?2 ORDER BY id LIMIT ?3",
            Self::REC_COLS
        );
        let mut st = self
            .conn
            .prepare_cached(&sql)
            .map_err(self.e("list files"))?;
        let rows = st
            .query_map(params![state, after, limit], Self::rec_from_row)
            .map_err(self.e("list files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list files"))
    }

    // ---- state changes (called inside begin/commit by the coordinator) ---------------------

    pub fn set_state(&self, id: i64, state: &str, reason: Option<&str>) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, state, reason, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    pub fn mark_copying(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = 'copying', reason = NULL, attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// The DEST copy is in place under its final name: from now on that name is ours.
    /// Also records the source as copied (size, mtime, inode), which recovery compares with an
    /// original it finds swapped out, and the link about to take the original's place (its
    /// inode and file handle), which recovery follows if a user moves it.
    pub fn mark_placed(
        &self,
        id: i64,
        blake3: &[u8],
        dest_ino: u64,
        src: &crate::sys::fsx::Stat,
        (link_ino, link_handle): (u64, Option<&[u8]>),
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = 'placed', blake3 = ?2, dest_ino = ?3, updated_at = ?4, size = ?5, mtime_ns = ?6, ino = ?7,
                    swap_link_ino = ?8, swap_link_handle = ?9 WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    id,
                    blake3,
                    dest_ino as i64,
                    now(),
                    src.st_size,
                    crate::sys::fsx::mtime_ns(src),
                    src.st_ino as i64,
                    link_ino as i64,
                    link_handle
                ])
            })
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// The link that stands (or stood) in for a swapped-out original of `id`: the one recorded
    /// with its placement, else the relocation's own.
    pub fn swap_link(&self, id: i64) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        self.conn
            .prepare_cached(
                "SELECT coalesce(swap_link_ino, link_ino),
                        CASE WHEN swap_link_ino IS NOT NULL THEN swap_link_handle ELSE link_handle END
                 FROM files WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.query_row([id], |r| {
                    Ok(r.get::<_, Option<i64>>(0)?
                        .map(|i| (i as u64, r.get::<_, Option<Vec<u8>>>(1).ok().flatten())))
                })
                .optional()
            })
            .map(Option::flatten)
            .map_err(self.e("read file"))
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

    /// (state, dest_ino, linked_ino) of a file.
    pub fn file_state(&self, id: i64) -> Result<Option<FileState>> {
        self.conn
            .prepare_cached("SELECT state, dest_ino, linked_ino FROM files WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<i64>>(1)?.map(|d| d as u64),
                        r.get::<_, Option<i64>>(2)?.map(|d| d as u64),
                    ))
                })
                .optional()
            })
            .map_err(self.e("read state"))
    }

    /// Recovery found a recorded or placed copy linked and its original gone: relocated.
    pub fn mark_recovered_relocated(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = 'relocated', reason = NULL, linked_ino = dest_ino, updated_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// A copy left at DEST under the row's path by an undone swap whose link a user moved: it
    /// is the path's linked copy from now on (resync decides where it goes).
    pub fn keep_copy(&self, id: i64, dest_ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET dest_ino = ?2, linked_ino = ?2, updated_at = ?3 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, dest_ino as i64, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// A recorded relocation undone (its original put back, its copy removed from DEST).
    pub fn drop_copy(&self, id: i64, dest_ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET linked_ino = NULL, link_ino = NULL, link_handle = NULL, updated_at = ?3 WHERE id = ?1 AND linked_ino = ?2",
            )
            .and_then(|mut st| st.execute(params![id, dest_ino as i64, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// The link count the walk saw (more than one: relocated with its other names, as a group).
    pub fn nlink_of(&self, id: i64) -> Result<u64> {
        self.conn
            .prepare_cached("SELECT coalesce(nlink, 1) FROM files WHERE id = ?1")
            .and_then(|mut st| st.query_row([id], |r| r.get::<_, i64>(0)).optional())
            .map(|n| n.unwrap_or(1) as u64)
            .map_err(self.e("read file"))
    }

    /// (size, mtime_ns) the journal holds for a file: as copied, once placed.
    pub fn copied_as(&self, id: i64) -> Result<Option<(u64, i64)>> {
        self.conn
            .prepare_cached("SELECT size, mtime_ns FROM files WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id], |r| {
                    Ok(
                        match (r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?) {
                            (Some(s), Some(m)) => Some((s as u64, m)),
                            _ => None,
                        },
                    )
                })
                .optional()
            })
            .map(Option::flatten)
            .map_err(self.e("read file"))
    }

    /// (state, reason) of a file.
    pub fn state_and_reason(&self, id: i64) -> Result<Option<(String, Option<String>)>> {
        self.conn
            .prepare_cached("SELECT state, reason FROM files WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(self.e("read state"))
    }

    /// The path of a file by id.
    pub fn files_in_state_any(&self, id: i64) -> Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached("SELECT path FROM files WHERE id = ?1")
            .and_then(|mut st| st.query_row([id], |r| r.get(0)).optional())
            .map_err(self.e("read file"))
    }

    /// Deferred files go back to pending for another try; returns how many.
    pub fn requeue_deferred(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE files SET state = 'pending' WHERE state = 'deferred' AND kind = 'file' AND linked_ino IS NULL",
                [],
            )
            .map_err(self.e("requeue deferred files"))
    }

    /// Deferred files whose reason starts with `prefix` (ASCII), id > `after`: (id, path).
    pub fn deferred_with_reason_prefix(
        &self,
        prefix: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path FROM files WHERE state = 'deferred' AND kind = 'file'
                   AND substr(reason, 1, ?1) = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
            )
            .map_err(self.e("list deferred files"))?;
        let rows = st
            .query_map(params![prefix.len() as i64, prefix, after, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(self.e("list deferred files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list deferred files"))
    }

    // ---- directories ---------------------------------------------------------------------

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

    // ---- namespace resync -----------------------------------------------------------------

    /// Links seen this run whose target names another path under LINK_PREFIX (renamed, copied
    /// or hand-made links), ordered by the path they name, so links naming one copy come together.
    pub fn links_elsewhere(
        &self,
        run: i64,
        after: (&[u8], i64),
        limit: i64,
    ) -> Result<Vec<ElsewhereLink>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path, ino, target FROM files
                 WHERE kind = 'symlink' AND seen_run = ?1 AND target IS NOT NULL AND target != path
                   AND (target, id) > (?2, ?3)
                 ORDER BY target, id LIMIT ?4",
            )
            .map_err(self.e("list renamed links"))?;
        let rows = st
            .query_map(params![run, after.0, after.1, limit], |r| {
                Ok(ElsewhereLink {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    link_ino: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    target: r.get(3)?,
                })
            })
            .map_err(self.e("list renamed links"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list renamed links"))
    }

    /// A link rewritten to name DEST `target` (a staging name), with its new inode.
    pub fn set_link(&self, id: i64, target: &[u8], link_ino: u64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE files SET target = ?2, ino = ?3, updated_at = ?4 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, target, link_ino as i64, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// Whether DEST inode `ino` is recorded as a copy under some other path than `path` (a row
    /// that took it over, or the trash): a name of it at `path` is then an old name that a
    /// crash kept from being released.
    pub fn copy_known_elsewhere(&self, ino: u64, path: &[u8]) -> Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM files WHERE dest_ino = ?1 AND path != ?2)
                     OR EXISTS (SELECT 1 FROM trash WHERE dest_ino = ?1 AND restored IS NULL)",
            )
            .and_then(|mut st| st.query_row(params![ino as i64, path], |r| r.get(0)))
            .map_err(self.e("look up copies"))
    }

    /// Whether this run's walk saw the link with inode `ino` naming `target` (from any path).
    pub fn link_seen_naming(&self, run: i64, ino: u64, target: &[u8]) -> Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM files WHERE target = ?2 AND seen_run = ?1 AND ino = ?3 AND kind IN ('symlink', 'file') LIMIT 1",
            )
            .and_then(|mut st| st.exists(params![run, target, ino as i64]))
            .map_err(self.e("look up links"))
    }

    /// Ids of the links seen this run that name `target` from another path (not yet rewritten).
    pub fn links_naming(&self, run: i64, target: &[u8]) -> Result<Vec<i64>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id FROM files WHERE kind = 'symlink' AND seen_run = ?1 AND target = ?2 AND path != target",
            )
            .map_err(self.e("list renamed links"))?;
        let rows = st
            .query_map(params![run, target], |r| r.get(0))
            .map_err(self.e("list renamed links"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list renamed links"))
    }

    const COPY_COLS: &'static str =
        "id, path, state, kind, seen_run, version, dest_ino, linked_ino, link_ino, blake3, size, mode, uid, gid, mtime_ns, link_handle, link_seen_run";

    fn copy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PathRow> {
        Ok(PathRow {
            id: r.get(0)?,
            path: r.get(1)?,
            state: r.get(2)?,
            kind: r.get(3)?,
            seen_run: r.get(4)?,
            version: r.get(5)?,
            dest_ino: r.get::<_, Option<i64>>(6)?.map(|d| d as u64),
            linked_ino: r.get::<_, Option<i64>>(7)?.map(|d| d as u64),
            copy: CopyMeta::from_row(r, 8)?,
            link_seen_run: r.get(16)?,
        })
    }

    /// Everything resync needs to know about the row of one path.
    pub fn path_row(&self, path: &[u8]) -> Result<Option<PathRow>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {} FROM files WHERE path = ?1",
                Self::COPY_COLS
            ))
            .and_then(|mut st| st.query_row([path], Self::copy_row).optional())
            .map_err(self.e("look up file"))
    }

    /// Copies whose link is gone this run (deleted, or replaced by a new file), in id order.
    /// `prev` is the previous complete walk: a copy whose own link it saw may still be named by
    /// that link, renamed during this walk, and waits for the next.
    pub fn unlinked_copies(
        &self,
        run: i64,
        prev: Option<i64>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PathRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM files
                 WHERE linked_ino IS NOT NULL AND id > ?2
                   AND (seen_run IS NULL OR seen_run != ?1 OR state != 'relocated' OR kind != 'file')
                   AND state NOT IN ('copying', 'placed', 'swapped')
                   AND NOT EXISTS (SELECT 1 FROM files l WHERE l.target = files.path AND l.kind = 'symlink' AND l.seen_run = ?1)
                   AND coalesce(link_seen_run, -1) < ?4
                 ORDER BY id LIMIT ?3",
                Self::COPY_COLS
            ))
            .map_err(self.e("list unlinked copies"))?;
        let rows = st
            .query_map(
                params![run, after, limit, prev.unwrap_or(-1)],
                Self::copy_row,
            )
            .map_err(self.e("list unlinked copies"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list unlinked copies"))
    }

    /// The newest trashed copy of `path` whose link had inode `link_ino` (a renamed link's),
    /// even one recorded as taken back: a crash between that record and the link's rewrite
    /// leaves the link naming it still, and the caller checks the link by its file handle.
    pub fn trash_for_link(&self, path: &[u8], link_ino: u64) -> Result<Option<TrashRow>> {
        self.conn
            .prepare_cached(
                "SELECT id, path, trash_rel, version, dest_ino, link_ino, blake3, size, mode, uid, gid, mtime_ns, link_handle
                 FROM trash WHERE path = ?1 AND link_ino = ?2 ORDER BY id DESC LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![path, link_ino as i64], |r| {
                    Ok(TrashRow {
                        id: r.get(0)?,
                        path: r.get(1)?,
                        trash_rel: r.get(2)?,
                        version: r.get(3)?,
                        dest_ino: r.get::<_, i64>(4)? as u64,
                        copy: CopyMeta::from_row(r, 5)?,
                    })
                })
                .optional()
            })
            .map_err(self.e("look up trash"))
    }

    /// Copies parked on staging names (trash records outside `.evac-trash`) no link has taken
    /// back yet, with the id of the file they were parked for.
    pub fn staged_copies(&self) -> Result<Vec<(TrashRow, i64)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path, trash_rel, version, dest_ino, link_ino, blake3, size, mode, uid, gid, mtime_ns, link_handle, file_id
                 FROM trash WHERE restored IS NULL AND moved = 1 AND substr(trash_rel, 1, 12) != CAST('.evac-trash/' AS BLOB)",
            )
            .map_err(self.e("list staged copies"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    TrashRow {
                        id: r.get(0)?,
                        path: r.get(1)?,
                        trash_rel: r.get(2)?,
                        version: r.get(3)?,
                        dest_ino: r.get::<_, i64>(4)? as u64,
                        copy: CopyMeta::from_row(r, 5)?,
                    },
                    r.get(13)?,
                ))
            })
            .map_err(self.e("list staged copies"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list staged copies"))
    }

    /// A trash record's copy now kept at `trash_rel`.
    pub fn trash_moved_to(&self, id: i64, trash_rel: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE trash SET trash_rel = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, trash_rel]))
            .map_err(self.e("record trash"))?;
        Ok(())
    }

    /// Rows whose `dest_ino` names a DEST entry no link of theirs was ever recorded for (a
    /// claim or placement cut short): (id, path, dest_ino).
    pub fn unlinked_claims(&self, after: i64, limit: i64) -> Result<Vec<(i64, Vec<u8>, u64)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path, dest_ino FROM files
                 WHERE dest_ino IS NOT NULL AND linked_ino IS NOT dest_ino AND id > ?1
                   AND state NOT IN ('copying', 'placed')
                 ORDER BY id LIMIT ?2",
            )
            .map_err(self.e("list claims"))?;
        let rows = st
            .query_map(params![after, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })
            .map_err(self.e("list claims"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list claims"))
    }

    /// The DEST inode a claim is about to give `id`'s path (before the hard link is made), or
    /// none (`None`: the claim was undone or its name removed).
    pub fn note_claim(&self, id: i64, dest_ino: Option<u64>) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE files SET dest_ino = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, dest_ino.map(|d| d as i64), now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// Record, before the move, that the copy of `row` at DEST is going to `trash_rel`.
    pub fn add_trash(
        &self,
        row: &PathRow,
        dest_ino: u64,
        trash_rel: &[u8],
        reason: &str,
    ) -> Result<i64> {
        let c = &row.copy;
        self.conn
            .prepare_cached(
                "INSERT INTO trash (file_id, path, trash_rel, version, dest_ino, link_ino, blake3, size, mode, uid, gid, mtime_ns, reason, at, link_handle)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row.id, row.path, trash_rel, row.version, dest_ino as i64,
                    c.link_ino.map(|d| d as i64), c.blake3, c.size, c.mode, c.uid, c.gid, c.mtime_ns,
                    reason, now(), c.link_handle
                ])
            })
            .map_err(self.e("record trash"))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn trash_moved(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE trash SET moved = 1 WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(self.e("record trash"))?;
        Ok(())
    }

    pub fn trash_unrestored(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE trash SET restored = NULL WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(self.e("record trash"))?;
        Ok(())
    }

    /// A take-over recorded before its link exchange, which then did not happen: the row is the
    /// renamed link naming `target` again, with no copy of its own at its path.
    pub fn undo_take_over(&self, id: i64, target: &[u8], link_ino: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET kind = 'symlink', target = ?2, ino = ?3, dest_ino = NULL, linked_ino = NULL,
                    link_ino = NULL, link_handle = NULL, updated_at = ?4 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, target, link_ino as i64, now()]))
            .map_err(self.e("record state"))?;
        Ok(())
    }

    pub fn trash_restored(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE trash SET restored = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, now()]))
            .map_err(self.e("record trash"))?;
        Ok(())
    }

    /// The row's copy is no longer at its DEST path. A relocated row whose link is gone is
    /// `gone` with `why`; a row with a new file to relocate keeps its state.
    pub fn let_go(&self, id: i64, run: i64, why: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET dest_ino = NULL, linked_ino = NULL, link_ino = NULL, updated_at = ?3,
                    state = CASE WHEN state = 'relocated' AND kind = 'file' THEN 'gone' ELSE state END,
                    reason = CASE WHEN state = 'relocated' AND kind = 'file' THEN ?2 ELSE reason END
                 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, why, now()]))
            .map_err(self.e("record state"))?;
        self.event(id, Some(run), "unlinked", why)
    }

    /// An old DEST name of a copy that resync lets go of: to be removed (in the same transaction
    /// as the letting go, so that a crash before the removal leaves a record of it), once the
    /// link that named it (`link_handle`) no longer does.
    pub fn note_release(
        &self,
        path: &[u8],
        dest_ino: u64,
        link_handle: Option<&[u8]>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO releases (path, dest_ino, link_handle) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(params![path, dest_ino as i64, link_handle]))
            .map_err(self.e("record a release"))?;
        Ok(())
    }

    /// A release recorded before a link's rewrite that did not take place.
    pub fn cancel_release(&self, path: &[u8], dest_ino: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM releases WHERE path = ?1 AND dest_ino = ?2")
            .and_then(|mut st| st.execute(params![path, dest_ino as i64]))
            .map_err(self.e("record a release"))?;
        Ok(())
    }

    /// Old DEST names still to be removed: (id, path, inode, handle of the link that named it).
    #[allow(clippy::type_complexity)]
    pub fn releases(&self) -> Result<Vec<(i64, Vec<u8>, u64, Option<Vec<u8>>)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, path, dest_ino, link_handle FROM releases ORDER BY id")
            .map_err(self.e("list releases"))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?))
            })
            .map_err(self.e("list releases"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list releases"))
    }

    pub fn release_done(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM releases WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(self.e("record a release"))?;
        Ok(())
    }

    /// Rows not seen as relocated by this run's walk whose linked copy is also the linked copy
    /// of a relocation this walk saw (a renamed link took it over).
    pub fn superseded_names(&self, run: i64) -> Result<Vec<PathRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM files f
                 WHERE f.linked_ino IS NOT NULL
                   AND (f.seen_run IS NULL OR f.seen_run != ?1 OR f.state != 'relocated' OR f.kind != 'file')
                   AND f.state NOT IN ('copying', 'placed', 'swapped')
                   AND EXISTS (SELECT 1 FROM files o WHERE o.linked_ino = f.linked_ino AND o.id != f.id
                               AND o.state = 'relocated' AND o.kind = 'file' AND o.seen_run = ?1)
                 ORDER BY f.id",
                Self::COPY_COLS
            ))
            .map_err(self.e("list superseded names"))?;
        let rows = st
            .query_map([run], Self::copy_row)
            .map_err(self.e("list superseded names"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list superseded names"))
    }

    /// A renamed link now names its own path and the copy it took over stands there at DEST.
    pub fn take_over(
        &self,
        id: i64,
        run: i64,
        copy: &CopyMeta,
        (version, dest_ino, link_ino): (i64, u64, u64),
        link_handle: Option<&[u8]>,
        from: &str,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET kind = 'file', state = 'relocated', reason = NULL, target = path,
                    blake3 = ?2, size = ?3, mode = ?4, uid = ?5, gid = ?6, mtime_ns = ?7, version = ?8,
                    dest_ino = ?9, linked_ino = ?9, link_ino = ?10, dev = NULL, ino = NULL, nlink = 1,
                    ctime_ns = NULL, seen_run = ?11, link_seen_run = ?11, updated_at = ?12, link_handle = ?13
                 WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    id, copy.blake3, copy.size, copy.mode, copy.uid, copy.gid, copy.mtime_ns, version,
                    dest_ino as i64, link_ino as i64, run, now(), link_handle
                ])
            })
            .map_err(self.e("record state"))?;
        self.event(id, Some(run), "renamed", from)
    }

    /// New files whose path's old copy is still at DEST wait for the next run; say so.
    pub fn note_waiting_new_versions(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE files SET state = 'deferred', reason = 'a new file replaced its link: relocated by the next run, once a second walk has shown that no renamed link still names the old copy'
                 WHERE state IN ('pending', 'deferred') AND kind = 'file' AND linked_ino IS NOT NULL",
                [],
            )
            .map_err(self.e("record state"))
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

    // ---- reporting -----------------------------------------------------------------------

    pub fn counts(&self) -> Result<Counts> {
        let mut st = self
            .conn
            .prepare("SELECT state, count(*) FROM files GROUP BY state")
            .map_err(self.e("count files"))?;
        let by_state = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e("count files"))?
            .collect::<rusqlite::Result<Vec<(String, i64)>>>()
            .map_err(self.e("count files"))?;
        let (total, done): (i64, i64) = self
            .conn
            .query_row(
                "SELECT coalesce(sum(size), 0), coalesce(sum(CASE WHEN state IN ('relocated', 'swapped') THEN size ELSE 0 END), 0)
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

    /// Counts by state and reason; a busy file's reason is grouped without the holders it names
    /// (they differ from file to file, the cause does not).
    pub fn top_reasons(&self, limit: i64) -> Result<Vec<(String, String, i64)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT state, CASE WHEN instr(reason, ?2) > 0 THEN substr(reason, 1, instr(reason, ?2) - 1)
                 ELSE coalesce(reason, '') END AS why, count(*) AS n FROM files
                 WHERE state IN ('deferred', 'failed', 'skipped', 'staged_out') GROUP BY state, why ORDER BY n DESC LIMIT ?1",
            )
            .map_err(self.e("summarise reasons"))?;
        let rows = st
            .query_map(params![limit, crate::sys::busy::HOLDERS_MARK], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(self.e("summarise reasons"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("summarise reasons"))
    }

    /// Paths (and reasons) in the given states, streamed to `f`.
    pub fn for_each_in_states(&self, states: &[&str], f: PathSink<'_>) -> Result<()> {
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.replace('\'', "")))
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

    pub fn relocated_batch(&self, after: i64, limit: i64) -> Result<Vec<Relocated>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path, size, mode, uid, gid, mtime_ns, blake3, dest_ino FROM files
                 WHERE state = 'relocated' AND kind = 'file' AND id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(self.e("list relocated files"))?;
        let rows = st
            .query_map(params![after, limit], |r| {
                Ok(Relocated {
                    id: r.get(0)?,
                    path: r.get(1)?,
                    size: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    mode: r.get::<_, Option<u32>>(3)?.unwrap_or(0),
                    uid: r.get::<_, Option<u32>>(4)?.unwrap_or(0),
                    gid: r.get::<_, Option<u32>>(5)?.unwrap_or(0),
                    mtime_ns: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                    blake3: r.get(7)?,
                    dest_ino: r.get::<_, Option<i64>>(8)?.map(|d| d as u64),
                })
            })
            .map_err(self.e("list relocated files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list relocated files"))
    }

    /// Record what the final swap needs: state, hash and the identity of the copy.
    pub fn mark_relocated(
        &self,
        id: i64,
        run: i64,
        blake3: &[u8],
        dest_ino: u64,
        (link_ino, link_handle): (u64, Option<&[u8]>),
        st: &crate::sys::fsx::Stat,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = 'relocated', reason = NULL, blake3 = ?2, dest_ino = ?3, linked_ino = ?3, size = ?4, mode = ?5, uid = ?6, gid = ?7,
                    mtime_ns = ?8, dev = ?9, ino = ?10, updated_at = ?11, ctime_ns = ?12, link_ino = ?13, target = path, link_seen_run = ?14,
                    link_handle = ?15 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id, blake3, dest_ino as i64, st.st_size, st.st_mode, st.st_uid, st.st_gid,
                    crate::sys::fsx::mtime_ns(st), st.st_dev as i64, st.st_ino as i64, now(),
                    crate::sys::fsx::ctime_ns(st), link_ino as i64, run, link_handle
                ])
            })
            .map_err(self.e("record state"))?;
        self.event(id, Some(run), "relocated", &blake3_hex(blake3))
    }

    /// Fill in what a link found in SOURCE tells about a file relocated without a record of it.
    pub fn adopt_link(
        &self,
        id: i64,
        blake3: &[u8],
        dest_ino: u64,
        st: &crate::sys::fsx::Stat,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET blake3 = ?2, dest_ino = ?3, linked_ino = ?3, size = ?4, mode = ?5, uid = ?6, gid = ?7, mtime_ns = ?8 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    blake3,
                    dest_ino as i64,
                    st.st_size,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    crate::sys::fsx::mtime_ns(st)
                ])
            })
            .map_err(self.e("record state"))?;
        Ok(())
    }

    /// Relocated files with no hash yet (adopted links): verify and a later run fill them in.
    pub fn unhashed_relocated(&self, after: i64, limit: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path FROM files WHERE state = 'relocated' AND kind = 'file' AND blake3 IS NULL AND id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(self.e("list files"))?;
        let rows = st
            .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e("list files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list files"))
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
