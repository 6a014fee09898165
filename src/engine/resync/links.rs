//! Resync's batches: new DEST names made durable, each renamed link rewritten to its own path by
//! an exchange checked after the fact (and undone, with its claim, if the user moved it again),
//! all recorded before the old names are let go.

use super::*;

impl Resync<'_> {
    /// Make the batch's new DEST names durable, rewrite each link to its own path, make the
    /// links durable, record it all, then let go of the old names.
    pub(super) fn flush(&mut self) -> Result<()> {
        if self.moves.is_empty() && self.release.is_empty() {
            return Ok(());
        }
        let moves = std::mem::take(&mut self.moves);
        let release = std::mem::take(&mut self.release);
        self.needed.clear();
        steps::at(Step::ResyncSyncDest, b"");
        fsx::syncfs(self.ctx.dst_root.as_fd()).ctx("make DEST durable (syncfs)", b".")?;
        let mut prepared = Vec::new();
        for mut m in moves {
            match self.prepare_link(&m.link, &m.link.path) {
                Ok(p) => {
                    if m.from.copy.blake3.is_none() {
                        let mut buf = Vec::new();
                        m.from.copy.blake3 =
                            self.hash_at_dest(&m.link.path, m.from.dest_ino, &mut buf);
                    }
                    prepared.push((m, p));
                }
                Err(why) => {
                    self.failed.insert(m.from.dest_ino);
                    self.undo_claim(&m);
                    let _ = self.moved_again(&m.link, &why)?;
                }
            }
        }
        // The journal first: a crash after an exchange must find the link's new handle and its
        // copy recorded (else the copy could pass for an unlinked or stale name).
        let j = self.j;
        let tx = j.tx()?;
        for (m, p) in &prepared {
            let from = match &m.from.origin {
                Origin::Row { path, .. } => format!("from {}", crate::util::escape::escape(path)),
                Origin::Trash { rel, .. } => {
                    format!("from DEST/{} (the trash)", crate::util::escape::escape(rel))
                }
            };
            self.j.take_over(
                m.link.id,
                self.run,
                &m.from.copy,
                (m.from.version, m.from.dest_ino, p.ino),
                p.handle.as_deref(),
                &from,
            )?;
            if let Origin::Trash { id, ref rel } = m.from.origin {
                self.j.trash_restored(id)?;
                // Its name there goes once the link no longer names it.
                self.j
                    .note_release(rel, m.from.dest_ino, m.from.copy.link_handle.as_deref())?;
            }
        }
        tx.commit()?;
        let mut done = Vec::new();
        let mut undone = Vec::new();
        for (m, p) in prepared {
            match self.exchange_link(&m.link, &p) {
                Ok(()) => {
                    if matches!(m.from.origin, Origin::Trash { .. }) {
                        self.stats.restored += 1;
                    }
                    self.stats.renamed += 1;
                    done.push(m);
                }
                Err(why) => {
                    self.failed.insert(m.from.dest_ino);
                    self.undo_claim(&m);
                    undone.push((m, why));
                }
            }
        }
        steps::at(Step::ResyncSyncSource, b"");
        fsx::syncfs(self.ctx.src_root.as_fd()).ctx("make SOURCE durable (syncfs)", b".")?;
        let j = self.j;
        let tx = j.tx()?;
        for (m, why) in &undone {
            self.j
                .undo_take_over(m.link.id, &m.link.target, m.link.link_ino)?;
            if let Origin::Trash { id, ref rel } = m.from.origin {
                self.j.trash_unrestored(id)?;
                self.j.cancel_release(rel, m.from.dest_ino)?;
            }
            let _ = self.moved_again(&m.link, why)?;
        }
        let mut kept = HashSet::new();
        for f in &release {
            if let Origin::Row { path, .. } = &f.origin {
                let unseen = match self.j.path_row(path)? {
                    Some(r) => self.link_still_names(&r)?,
                    None => false,
                };
                if unseen {
                    // Another link, moved out of this walk's view, still names the old name.
                    kept.insert(f.dest_ino);
                }
            }
        }
        for f in &release {
            if self.failed.contains(&f.dest_ino) || kept.contains(&f.dest_ino) {
                continue;
            }
            if let Origin::Row { id, path } = &f.origin {
                self.j.let_go(
                    *id,
                    self.run,
                    &format!(
                        "renamed in SOURCE; its copy went along (was {})",
                        crate::util::escape::escape(path)
                    ),
                )?;
            }
        }
        // The old shared names of groups, recorded with the letting go and removed after (the
        // trash names links took back were recorded with the take-over).
        for f in &release {
            if !self.failed.contains(&f.dest_ino) && !kept.contains(&f.dest_ino) {
                self.j.note_release(
                    f.origin.dest_rel(),
                    f.dest_ino,
                    f.copy.link_handle.as_deref(),
                )?;
            }
        }
        tx.commit()?;
        self.finish_releases(false)
    }

    /// The blake3 of the copy (inode `ino`) at DEST `rel`, if it can be read.
    pub(super) fn hash_at_dest(&self, rel: &[u8], ino: u64, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        if buf.is_empty() {
            buf.resize(1 << 20, 0);
        }
        let (pd, name) = fsx::split_parent(rel);
        let dir = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd).ok()?;
        let fd = fsx::open_read(dir.as_fd(), name).ok()?;
        if fsx::fstat(fd.as_fd()).ok()?.st_ino != ino {
            return None;
        }
        let (h, _) = fsx::hash_fd(fd.as_fd(), buf).ok()?;
        Some(h.as_bytes().to_vec())
    }

    /// Point the link at DEST `to` (its own path, or a staging name): `prepare_link`, then
    /// `before` with the fresh link's inode and handle, then `exchange_link`. Returns the new
    /// link's inode and handle.
    pub(super) fn rewrite(
        &self,
        l: &ElsewhereLink,
        to: &[u8],
        before: &mut BeforeExchange<'_>,
    ) -> std::result::Result<(u64, Option<Vec<u8>>), String> {
        let p = self.prepare_link(l, to)?;
        if let Err(e) = before(p.ino, p.handle.as_deref()) {
            self.drop_prepared(l, &p);
            return Err(e);
        }
        self.exchange_link(l, &p)?;
        Ok((p.ino, p.handle))
    }

    /// The fresh link for `l`, naming DEST `to`, made beside it under a temporary name with the
    /// old link's owner and times, once the old link is checked to be the one the walk saw.
    pub(super) fn prepare_link(
        &self,
        l: &ElsewhereLink,
        to: &[u8],
    ) -> std::result::Result<Prepared, String> {
        let (pd, name) = fsx::split_parent(&l.path);
        let dir_fd = fsx::resolve_dir(self.ctx.src_root.as_fd(), pd)
            .map_err(|e| format!("open SOURCE directory: {e}"))?;
        let dir = dir_fd.as_fd();
        let old = fsx::stat_at(dir, name).map_err(|e| format!("stat: {e}"))?;
        let was = self.ctx.link_target(&l.target);
        if old.st_ino != l.link_ino || fsx::readlink_at(dir, name).ok() != Some(was.clone()) {
            return Err("changed since the walk".into());
        }
        let tmp = self.ctx.tmp_name(l.id, "lnk");
        let _ = fsx::unlink_if_exists(dir, &tmp);
        steps::at(Step::ResyncLinkCreate, &l.path);
        fsx::symlink_at(&self.ctx.link_target(to), dir, &tmp)
            .map_err(|e| format!("create the link: {e}"))?;
        let fresh = fsx::stat_at(dir, &tmp).map_err(|e| format!("stat the new link: {e}"));
        let meta = fsx::set_link_meta(
            dir,
            &tmp,
            old.st_uid,
            old.st_gid,
            fsx::atime_ns(&old),
            fsx::mtime_ns(&old),
        )
        .map_err(|e| format!("set owner and times of the link: {e}"));
        let fresh = match (fresh, meta) {
            (Ok(f), Ok(())) => f,
            (Err(e), _) | (_, Err(e)) => {
                let _ = fsx::unlink_if_exists(dir, &tmp);
                return Err(e);
            }
        };
        Ok(Prepared {
            ino: fresh.st_ino,
            handle: fsx::handle_at(dir, &tmp).ok(),
            dir: dir_fd,
        })
    }

    /// Remove a prepared link that will not be used.
    pub(super) fn drop_prepared(&self, l: &ElsewhereLink, p: &Prepared) {
        steps::at(Step::ResyncLinkUnlink, &l.path);
        let _ = fsx::unlink_if_exists(p.dir.as_fd(), &self.ctx.tmp_name(l.id, "lnk"));
    }

    /// Exchange the prepared link with the old one, then check that what came out is the very
    /// link we decided on (else put it back).
    pub(super) fn exchange_link(
        &self,
        l: &ElsewhereLink,
        p: &Prepared,
    ) -> std::result::Result<(), String> {
        let (_, name) = fsx::split_parent(&l.path);
        let dir = p.dir.as_fd();
        let tmp = self.ctx.tmp_name(l.id, "lnk");
        steps::at(Step::ResyncLinkExchange, &l.path);
        let swapped = match fsx::rename_exchange(dir, &tmp, dir, name) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                // No exchange: the check before stands in for the one after it.
                let ok = fsx::stat_at(dir, name).is_ok_and(|s| s.st_ino == l.link_ino);
                if !ok {
                    let _ = fsx::unlink_if_exists(dir, &tmp);
                    return Err("changed since the walk".into());
                }
                fsx::rename_replace(dir, &tmp, dir, name).map_err(|e| {
                    let _ = fsx::unlink_if_exists(dir, &tmp);
                    format!("replace the link: {e}")
                })?;
                false
            }
            Err(e) => {
                let _ = fsx::unlink_if_exists(dir, &tmp);
                return Err(format!("exchange the link: {e}"));
            }
        };
        if swapped {
            let out_ok = fsx::stat_at(dir, &tmp).is_ok_and(|s| s.st_ino == l.link_ino);
            if !out_ok {
                // The user replaced it in between: theirs goes back, ours goes.
                steps::at(Step::ResyncLinkUndo, &l.path);
                let _ = fsx::rename_exchange(dir, &tmp, dir, name);
                let _ = fsx::unlink_if_exists(dir, &tmp);
                return Err("changed while being rewritten; put back".into());
            }
            steps::at(Step::ResyncLinkUnlink, &l.path);
            let _ = fsx::unlink_if_exists(dir, &tmp);
        }
        Ok(())
    }

    /// A move whose link could not be rewritten: drop the new DEST name (the link still names the
    /// old one, which stays).
    pub(super) fn undo_claim(&self, m: &Move) {
        let (pd, name) = fsx::split_parent(&m.link.path);
        if let Ok(d) = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd) {
            if fsx::stat_at(d.as_fd(), name).is_ok_and(|s| s.st_ino == m.from.dest_ino) {
                steps::at(Step::ResyncUndoClaim, &m.link.path);
                let _ = fsx::unlink_at(d.as_fd(), name);
            }
        }
        let _ = self.j.note_claim(m.link.id, None);
    }
}
