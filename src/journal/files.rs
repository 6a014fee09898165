//! Every file's state: what the walk saw, the per-file protocol's records (copying, placed with
//! its link, relocated), and outcomes with their causes and reasons.

use super::*;

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
    /// The word the journal stores for it.
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
    /// The DEST inode of evac's latest copy of this path (it may replace it).
    pub dest_ino: Option<u64>,
    /// The DEST inode the source link last pointed to (kept in the trash, never overwritten).
    pub linked_ino: Option<u64>,
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

/// (state, dest_ino, linked_ino): what recovery needs to know about a file.
pub type StateInos = (FileState, Option<u64>, Option<u64>);

impl Journal {
    /// Record what the walker saw at a path and decide what to do with it.
    pub fn observe(&self, s: &Seen, run: i64, link_target: &[u8]) -> Result<()> {
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
            return Ok(());
        }
        // id, state, version, ino, ctime_ns
        type Prior = (i64, FileState, i64, Option<i64>, Option<i64>);
        let prior: Option<Prior> = self
            .conn
            .prepare_cached("SELECT id, state, version, ino, ctime_ns FROM files WHERE path = ?1")
            .and_then(|mut st| {
                st.query_row([&s.path], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
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
        let (kind, state, reason): (&str, FileState, Option<&str>) = match s.kind {
            Kind::File => match &s.hsm {
                // I4: a stub is recorded, never dispatched.
                Some(c) => ("file", FileState::StagedOut, Some(c.why.as_str())),
                None => ("file", FileState::Pending, None),
            },
            Kind::Symlink if already_linked => ("file", FileState::Relocated, None),
            Kind::Symlink if into_dest.is_some() => (
                "symlink",
                FileState::Skipped,
                Some("a link into DEST under another name (resolved after the walk)"),
            ),
            Kind::Symlink => (
                "symlink",
                FileState::Skipped,
                Some("symlink (left as it is)"),
            ),
            Kind::Fifo => ("fifo", FileState::Skipped, Some("FIFO (never opened)")),
            Kind::Socket => ("socket", FileState::Skipped, Some("socket (never opened)")),
            Kind::CharDev => (
                "chardev",
                FileState::Skipped,
                Some("character device (never opened)"),
            ),
            Kind::BlockDev => (
                "blockdev",
                FileState::Skipped,
                Some("block device (never opened)"),
            ),
            Kind::MountPoint => (
                "mountpoint",
                FileState::Skipped,
                Some("another filesystem is mounted here (not crossed)"),
            ),
            Kind::Reserved => (
                "reserved",
                FileState::Skipped,
                Some("name is reserved for this journal's temporary files"),
            ),
            Kind::Dir => unreachable!("handled above"),
        };
        let cause = match (s.kind, state) {
            (_, FileState::StagedOut) => Some(Cause::Hsm),
            (Kind::Symlink, FileState::Skipped) if into_dest.is_some() => Some(Cause::Renamed),
            (_, FileState::Skipped) => Some(Cause::NotAFile),
            _ => None,
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
                        "INSERT INTO files (path, kind, state, reason, dev, ino, nlink, size, mode, uid, gid, mtime_ns, ctime_ns, seen_run, updated_at, target, link_ino, link_seen_run, cause)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, CASE WHEN ?17 IS NULL THEN NULL ELSE ?14 END, ?18)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            s.path, kind, state, reason, s.dev as i64, s.ino as i64, s.nlink as i64,
                            s.size as i64, s.mode, s.uid, s.gid, s.mtime_ns, s.ctime_ns, run, t,
                            into_dest, already_linked.then_some(s.ino as i64), cause
                        ])
                    })
                    .map_err(self.e("record file"))?;
                Ok(())
            }
            Some((id, pstate, version, pino, pctime)) => {
                // The walk's stat may be older than what the copy workers did since: a file in
                // flight is theirs to settle, and a regular file that is the very inode evac
                // relocated (unchanged since) is that stale stat, not a new file.
                let stale = s.kind == Kind::File
                    && pstate == FileState::Relocated
                    && pino == Some(s.ino as i64)
                    && pctime.is_some_and(|c| s.ctime_ns <= c);
                if stale || pstate.in_flight() || (already_linked && pstate == FileState::Relocated)
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
                    return Ok(());
                }
                // A regular file where our link was: the user replaced it; a new version.
                let reappeared = s.kind == Kind::File && pstate == FileState::Relocated;
                let version = if reappeared { version + 1 } else { version };
                let reason = if already_linked {
                    Some("already a link to its copy")
                } else {
                    reason
                };
                self.conn
                    .prepare_cached(
                        "UPDATE files SET kind = ?2, state = ?3, reason = ?4, cause = ?19, dev = ?5, ino = ?6, nlink = ?7, size = ?8, mode = ?9,
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
                            s.mode, s.uid, s.gid, s.mtime_ns, s.ctime_ns, run, t, version, into_dest, already_linked,
                            cause
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
                Ok(())
            }
        }
    }

    /// After a complete walk: files that were waiting but are no longer there.
    pub fn mark_unseen_gone(&self, run: i64) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE files SET state = 'gone', cause = NULL, updated_at = ?2,
                    reason = CASE state WHEN 'relocated' THEN 'its link was removed from SOURCE; the copy stays at DEST'
                                        ELSE 'no longer in SOURCE' END
                 WHERE (seen_run IS NULL OR seen_run != ?1)
                   AND state IN ('pending', 'deferred', 'failed', 'skipped', 'relocated', 'staged_out')",
                params![run, now()],
            )
            .map_err(self.e("mark vanished files"))
    }

    pub(super) fn rec_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRec> {
        Ok(FileRec {
            id: r.get(0)?,
            path: r.get(1)?,
            dev: r.get::<_, i64>(2)? as u64,
            ino: r.get::<_, i64>(3)? as u64,
            nlink: r.get::<_, i64>(4)? as u64,
            dest_ino: r.get::<_, Option<i64>>(5)?.map(|d| d as u64),
            linked_ino: r.get::<_, Option<i64>>(6)?.map(|d| d as u64),
        })
    }

    pub(super) const REC_COLS: &'static str = "id, path, dev, ino, nlink, dest_ino, linked_ino";

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
    pub fn files_in_state(&self, state: FileState, after: i64, limit: i64) -> Result<Vec<FileRec>> {
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

    /// A file's new state, with why it was left behind (none for pending and the like).
    pub fn set_state(&self, id: i64, state: FileState, why: Option<&Why>) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = ?2, reason = ?3, cause = ?5, updated_at = ?4 WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    id,
                    state,
                    why.map(|w| w.text.as_str()),
                    now(),
                    why.map(|w| w.cause)
                ])
            })
            .map_err(self.e("record state"))?;
        Ok(())
    }

    pub fn mark_copying(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE files SET state = 'copying', reason = NULL, cause = NULL, attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
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

    /// (state, dest_ino, linked_ino) of a file.
    pub fn file_state(&self, id: i64) -> Result<Option<StateInos>> {
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
                "UPDATE files SET state = 'relocated', reason = NULL, cause = NULL, linked_ino = dest_ino, updated_at = ?2 WHERE id = ?1",
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

    /// The paths of every row of `id`'s hard-link group (the same SOURCE inode) placed with it,
    /// `id`'s own included: those not yet recorded relocated, and those a recovery has just
    /// completed (one name at a time).
    pub fn placed_group_paths(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT g.path FROM files f JOIN files g ON g.dev = f.dev AND g.ino = f.ino AND g.nlink > 1
                 WHERE f.id = ?1 AND g.kind = 'file' AND g.state IN ('placed', 'relocated') ORDER BY g.id",
            )
            .map_err(self.e("list hard links"))?;
        let rows = st
            .query_map([id], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.e("list hard links"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list hard links"))
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
    pub fn state_and_reason(&self, id: i64) -> Result<Option<(FileState, Option<String>)>> {
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
                "UPDATE files SET state = 'pending', cause = NULL WHERE state = 'deferred' AND kind = 'file' AND linked_ino IS NULL",
                [],
            )
            .map_err(self.e("requeue deferred files"))
    }

    /// Deferred files of the given cause, id > `after`: (id, path).
    pub fn deferred_for(
        &self,
        cause: Cause,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, path FROM files WHERE state = 'deferred' AND kind = 'file'
                   AND cause = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(self.e("list deferred files"))?;
        let rows = st
            .query_map(params![cause, after, limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e("list deferred files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.e("list deferred files"))
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
                "UPDATE files SET state = 'relocated', reason = NULL, cause = NULL, blake3 = ?2, dest_ino = ?3, linked_ino = ?3, size = ?4, mode = ?5, uid = ?6, gid = ?7,
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
