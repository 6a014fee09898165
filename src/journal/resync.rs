//! Namespace resync's records: links naming other paths, copies taken over, the trash and its
//! staging names, claims, and the old DEST names to release.

use super::*;

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
    pub state: FileState,
    pub kind: String,
    pub seen_run: Option<i64>,
    pub version: i64,
    pub linked_ino: Option<u64>,
    pub copy: CopyMeta,
    /// The last run whose walk saw this path's own link.
    pub link_seen_run: Option<i64>,
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

impl Journal {
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

    pub(super) const COPY_COLS: &'static str =
        "id, path, state, kind, seen_run, version, dest_ino, linked_ino, link_ino, blake3, size, mode, uid, gid, mtime_ns, link_handle, link_seen_run";

    pub(super) fn copy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PathRow> {
        Ok(PathRow {
            id: r.get(0)?,
            path: r.get(1)?,
            state: r.get(2)?,
            kind: r.get(3)?,
            seen_run: r.get(4)?,
            version: r.get(5)?,
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
                   AND state NOT IN ('copying', 'placed')
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
                    reason = CASE WHEN state = 'relocated' AND kind = 'file' THEN ?2 ELSE reason END,
                    cause = CASE WHEN state = 'relocated' AND kind = 'file' THEN NULL ELSE cause END
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
                   AND f.state NOT IN ('copying', 'placed')
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
                "UPDATE files SET kind = 'file', state = 'relocated', reason = NULL, cause = NULL, target = path,
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
                "UPDATE files SET state = 'deferred', cause = 'renamed', reason = 'a new file replaced its link: relocated by the next run, once a second walk has shown that no renamed link still names the old copy'
                 WHERE state IN ('pending', 'deferred') AND kind = 'file' AND linked_ino IS NOT NULL",
                [],
            )
            .map_err(self.e("record state"))
    }
}
