//! Resync's second half: copies no link names go to DEST's trash, old names are released once
//! nothing reads through them, claims and staging names a crash cut short are settled, and DEST
//! directories whose SOURCE directory is gone are removed.

use super::*;

impl Resync<'_> {
    /// Move the copy of `row` standing at DEST `row.path` (inode `ino`) to the trash, recorded
    /// first so that a link renamed elsewhere can claim it back later.
    pub(super) fn trash_copy(&mut self, row: &PathRow, ino: u64, why: &str) -> Result<bool> {
        if self.needed.contains(&row.path) {
            self.flush()?;
        }
        // The flush may have let go of this very name (its copy lives on under the names its
        // links took): then there is nothing left to keep.
        let Some(st) = dest_stat(self.ctx, &row.path).filter(|s| s.st_ino == ino) else {
            return Ok(true);
        };
        if st.st_nlink > 1
            && !self.j.in_transaction()
            && self.j.copy_known_elsewhere(ino, &row.path)?
        {
            // The copy lives on under another name the journal records (a renamed link took it,
            // it is parked for one, or it is a hard-linked file's other name): this name only
            // goes, nothing is trashed.
            let j = self.j;
            let tx = j.tx()?;
            self.j.let_go(
                row.id,
                self.run,
                &format!("{why}; its copy lives on under another name"),
            )?;
            self.j
                .note_release(&row.path, ino, row.copy.link_handle.as_deref())?;
            tx.commit()?;
            self.finish_releases(false)?;
            return Ok(true);
        }
        let mut row = row.clone();
        row.copy = copy_meta(&row.copy, &st);
        let row = &row;
        let rel = match names::trash_name(self.ctx, &row.path) {
            Ok(r) => r,
            Err(e) => {
                self.note(format!(
                    "choose a trash name for {}: {e}",
                    quoted(&row.path)
                ))?;
                return Ok(false);
            }
        };
        let j = self.j;
        let tx = j.tx()?;
        let tid = self.j.add_trash(row, ino, &rel, why)?;
        tx.commit()?;
        let (pd, name) = fsx::split_parent(&row.path);
        let (tpd, tname) = fsx::split_parent(&rel);
        steps::at(Step::ResyncTrash, &row.path);
        let moved = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd).and_then(|d| {
            let t = fsx::resolve_dir(self.ctx.dst_root.as_fd(), tpd)?;
            fsx::rename_noreplace(d.as_fd(), name, t.as_fd(), tname)
        });
        if let Err(e) = moved {
            self.note(format!("move {} to the trash: {e}", quoted(&row.path)))?;
            return Ok(false);
        }
        self.j.trash_moved(tid)?;
        self.j.let_go(
            row.id,
            self.run,
            &format!(
                "{why}; its copy is kept at DEST/{}",
                crate::util::escape::escape(&rel)
            ),
        )?;
        self.stats.trashed += 1;
        Ok(true)
    }

    /// Remove the old DEST names the journal has let go of (this flush's, or a crashed run's),
    /// each only while it is still that copy and not its last name, and no link names it: not
    /// the link recorded with it (probed by its file handle), nor, when `walked` (the start of
    /// resync), one this run's walk saw.
    pub(super) fn finish_releases(&mut self, walked: bool) -> Result<()> {
        for (id, rel, ino, handle) in self.j.releases()? {
            let (pd, name) = fsx::split_parent(&rel);
            let named_by_link = handle.as_deref().is_some_and(|h| {
                matches!(fsx::probe_handle(self.ctx.src_root.as_fd(), h),
                    Ok(Some(p)) if p.target.as_deref() == Some(self.ctx.link_target(&rel).as_slice()))
            });
            if named_by_link || (walked && !self.j.links_naming(self.run, &rel)?.is_empty()) {
                continue;
            }
            if let Ok(d) = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd) {
                match fsx::stat_at(d.as_fd(), name) {
                    Ok(s) if s.st_ino == ino && s.st_nlink > 1 => {
                        steps::at(Step::ResyncRelease, &rel);
                        fsx::unlink_at(d.as_fd(), name)
                            .ctx("remove an old DEST name of", &rel)?;
                    }
                    Ok(s) if s.st_ino == ino => self.note(format!(
                        "DEST {} was to go (its copy went along with a renamed link) but is the copy's last name: kept",
                        quoted(&rel)
                    ))?,
                    _ => {}
                }
            }
            self.j.release_done(id)?;
        }
        Ok(())
    }

    /// Old DEST names of copies that a renamed link, seen by this walk, has taken over, which a
    /// crash kept from being let go: they go now, as they would have then (no need to wait for
    /// walks to show that no link names them: the copy lives on under its new name).
    pub(super) fn superseded_names(&mut self) -> Result<()> {
        for row in self.j.superseded_names(self.run)? {
            let Some(ino) = row.linked_ino else { continue };
            let extra =
                dest_stat(self.ctx, &row.path).is_some_and(|s| s.st_ino == ino && s.st_nlink > 1);
            if !extra || self.link_still_names(&row)? {
                continue;
            }
            let j = self.j;
            let tx = j.tx()?;
            self.j
                .let_go(row.id, self.run, "renamed in SOURCE; its copy went along")?;
            self.j
                .note_release(&row.path, ino, row.copy.link_handle.as_deref())?;
            tx.commit()?;
            self.finish_releases(false)?;
        }
        Ok(())
    }

    /// Copies no link names any more (deleted, or replaced by a new file): to the trash.
    pub(super) fn unlinked_copies(&mut self) -> Result<()> {
        let prev = self.j.prev_resynced(self.run)?;
        let mut after = 0;
        loop {
            let rows = self.j.unlinked_copies(self.run, prev, after, 256)?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in rows {
                let Some(ino) = row.linked_ino else { continue };
                if self.link_still_names(&row)? {
                    // Renamed out of this walk's view: the next walk finds it.
                    continue;
                }
                let why = if row.seen_run == Some(self.run) {
                    "its link was replaced by a new file"
                } else {
                    "its link was removed from SOURCE"
                };
                if dest_stat(self.ctx, &row.path).is_some_and(|s| s.st_ino == ino) {
                    self.trash_copy(&row, ino, why)?;
                } else {
                    self.j.let_go(
                        row.id,
                        self.run,
                        &format!("{why}; its copy was no longer at DEST"),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Copies parked on a staging name whose link is gone (deleted by its user, or renamed out
    /// of SOURCE): into the trash proper, like any copy without a link.
    pub(super) fn stray_staged(&mut self) -> Result<()> {
        for (t, file_id) in self.j.staged_copies()? {
            if !self.j.links_naming(self.run, &t.trash_rel)?.is_empty() {
                continue;
            }
            if let Some(h) = &t.copy.link_handle {
                let alive = matches!(
                    fsx::probe_handle(self.ctx.src_root.as_fd(), h),
                    Ok(Some(p)) if p.target.as_deref() == Some(self.ctx.link_target(&t.trash_rel).as_slice())
                );
                if alive {
                    continue;
                }
            }
            if dest_stat(self.ctx, &t.trash_rel).map_or(true, |s| s.st_ino != t.dest_ino) {
                self.j.trash_restored(t.id)?;
                continue;
            }
            let path = self
                .j
                .files_in_state_any(file_id)?
                .unwrap_or_else(|| t.trash_rel.clone());
            let rel = match names::trash_name(self.ctx, &path) {
                Ok(r) => r,
                Err(e) => {
                    self.note(format!("choose a trash name for {}: {e}", quoted(&path)))?;
                    continue;
                }
            };
            let (pd, name) = fsx::split_parent(&t.trash_rel);
            let (tpd, tname) = fsx::split_parent(&rel);
            steps::at(Step::ResyncTrash, &t.trash_rel);
            let moved = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd).and_then(|d| {
                let td = fsx::resolve_dir(self.ctx.dst_root.as_fd(), tpd)?;
                fsx::rename_noreplace(d.as_fd(), name, td.as_fd(), tname)
            });
            match moved {
                Ok(()) => {
                    self.j.trash_moved_to(t.id, &rel)?;
                    self.stats.trashed += 1;
                }
                Err(e) => self.note(format!(
                    "move staged copy {} to the trash: {e}",
                    quoted(&t.trash_rel)
                ))?,
            }
        }
        Ok(())
    }

    /// Names a claim gave a copy at DEST and that no link of the row's was recorded for (the
    /// run stopped before the rename's flush): one extra name of a copy kept elsewhere, removed.
    pub(super) fn cut_short_claims(&mut self) -> Result<()> {
        let mut after = 0;
        loop {
            let rows = self.j.unlinked_claims(after, 256)?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            for (id, path, ino) in rows {
                // A single name is a placement's own copy, which recovery and placement handle.
                let extra =
                    dest_stat(self.ctx, &path).is_some_and(|s| s.st_ino == ino && s.st_nlink > 1);
                if !extra || !self.j.links_naming(self.run, &path)?.is_empty() {
                    continue;
                }
                if crate::protocol::remove_dest_name(self.ctx, &path, ino).is_ok() {
                    self.j.note_claim(id, None)?;
                }
            }
        }
        Ok(())
    }

    /// DEST directories whose SOURCE directory is gone: removed if empty, else reported.
    pub(super) fn vanished_dirs(&mut self) -> Result<()> {
        for (path, touched) in self.j.vanished_dirs(self.run)? {
            let (pd, name) = fsx::split_parent(&path);
            let r = if touched {
                steps::at(Step::ResyncRmdir, &path);
                fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd)
                    .and_then(|d| fsx::rmdir_at(d.as_fd(), name))
            } else {
                Ok(())
            };
            match r {
                Ok(()) => {
                    if touched {
                        self.stats.dirs_removed += 1;
                    }
                    self.j.forget_dir(&path)?;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.j.forget_dir(&path)?,
                Err(e) => {
                    self.stats.dirs_kept += 1;
                    self.note(format!(
                        "remove DEST directory {} (gone from SOURCE): {e}",
                        quoted(&path)
                    ))?;
                }
            }
        }
        Ok(())
    }
}
