//! Resync's first half: links users renamed take their copies along (claimed under the link's
//! new name, or parked on a staging name while a cycle of renames is untangled); links that
//! cannot be followed yet wait, with their reason.

use super::*;

impl Resync<'_> {
    /// Links naming another path, a group (one named path) at a time: every link of a group
    /// gets the group's copy (two links to one copy become two hard links to it, which is what
    /// they shared), and the old name goes once all of them have moved.
    pub(super) fn renamed_links(&mut self) -> Result<()> {
        let mut after: (Vec<u8>, i64) = (Vec::new(), 0);
        let mut group: Option<Group> = None;
        loop {
            let links = self.j.links_elsewhere(self.run, (&after.0, after.1), 256)?;
            let Some(last) = links.last() else { break };
            after = (last.target.clone(), last.id);
            for l in links {
                if group.as_ref().map_or(true, |g| g.target != l.target) {
                    if let Some(g) = group.take() {
                        self.end_group(g)?;
                    }
                    let from = match self.j.path_row(&l.target)? {
                        Some(q) => self.row_claimable(&q),
                        None => None,
                    };
                    group = Some(Group {
                        target: l.target.clone(),
                        from,
                        all_moved: true,
                        any_moved: false,
                    });
                }
                let g = group.as_ref().expect("set above");
                // A link whose own copy went to the trash gets that one; the others share the
                // copy that still stands at the named path. Inode numbers are reused once a
                // link is deleted: the path's newest link (the row's) wins over older trash
                // records with the same number.
                let newest = g
                    .from
                    .as_ref()
                    .filter(|f| f.copy.link_ino == Some(l.link_ino))
                    .cloned();
                let from = match newest {
                    Some(f) => Some(f),
                    None => match self.trash_claimable(&l.target, l.link_ino)? {
                        Some(t) => Some(t),
                        None => g.from.clone(),
                    },
                };
                let Some(from) = from else {
                    let why = if self
                        .j
                        .path_row(&l.target)?
                        .is_some_and(|q| q.kind == "file" && q.state == FileState::Relocated)
                    {
                        "a link to another file's copy at DEST (left as it is)"
                    } else {
                        "a link into DEST that names no copy evac knows (left as it is)"
                    };
                    self.j.set_state(
                        l.id,
                        FileState::Skipped,
                        Some(&Why::new(Cause::ForeignLink, why)),
                    )?;
                    self.stuck.insert(l.id);
                    continue;
                };
                let shared = matches!(from.origin, Origin::Row { .. });
                let moved = self.claim(l, from)?;
                let g = group.as_mut().expect("set above");
                if shared {
                    // A link left naming the old path keeps the copy there.
                    g.all_moved &= moved;
                    g.any_moved |= moved;
                }
            }
        }
        if let Some(g) = group.take() {
            self.end_group(g)?;
        }
        Ok(())
    }

    pub(super) fn end_group(&mut self, g: Group) -> Result<()> {
        if let Some(f) = g.from {
            if g.all_moved && g.any_moved {
                self.release.push(f);
            }
        }
        if self.moves.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Give the copy its new DEST name. Returns whether the move is under way.
    pub(super) fn claim(&mut self, l: ElsewhereLink, from: Claimable) -> Result<bool> {
        let (pd, name) = fsx::split_parent(&l.path);
        steps::at(Step::DestMkdir, &l.path);
        let dir = match fsx::ensure_dir(self.ctx.dst_root.as_fd(), pd) {
            Ok(d) => d,
            Err(e) => return self.problem(&l, "create DEST directory", &e.to_string()),
        };
        match fsx::stat_at(dir.as_fd(), name) {
            Ok(st) if st.st_ino == from.dest_ino => {} // named already (an interrupted resync)
            Ok(st) => {
                // The path's own earlier copy, whose link the rename replaced: to the trash.
                let own = self.j.path_row(&l.path)?;
                let ours = own.as_ref().filter(|p| {
                    p.linked_ino == Some(st.st_ino)
                        && fsx::file_type(&st) == rustix::fs::FileType::RegularFile
                });
                match ours.cloned() {
                    None => {
                        // An old name of a copy recorded elsewhere, left by a crash between the
                        // journal letting it go and its removal: it goes. Anything else stays.
                        let stale = st.st_nlink > 1
                            && fsx::file_type(&st) == rustix::fs::FileType::RegularFile
                            && self.j.copy_known_elsewhere(st.st_ino, &l.path)?
                            && !own
                                .as_ref()
                                .map_or(Ok(false), |r| self.link_still_names(r))?;
                        if !stale
                            || crate::protocol::remove_dest_name(self.ctx, &l.path, st.st_ino)
                                .is_err()
                        {
                            return self.problem(
                                &l,
                                "rename at DEST",
                                "DEST already has another file at the new name (conflict; left as it is)",
                            );
                        }
                    }
                    Some(own) => {
                        // Moves still waiting for their flush may depend on this name: flush them
                        // first, then judge (a link whose rewrite fails keeps naming it).
                        if self.needed.contains(&l.path) {
                            self.flush()?;
                        }
                        if self.link_still_names(&own)? {
                            return self.moved_again(
                                &l,
                                "the link of its new name's old copy was moved out of this walk's view",
                            );
                        }
                        match self.namers(&l.path)? {
                            Namers::Clear => {}
                            Namers::Pending => {
                                self.postponed.push((l, from));
                                return Ok(false);
                            }
                            Namers::Stuck => {
                                return self.moved_again(
                                    &l,
                                    "its new name's old copy is still named by a link that was not moved",
                                )
                            }
                        }
                        if !self.trash_copy(
                            &own,
                            st.st_ino,
                            "its link was replaced by a renamed link",
                        )? {
                            return self.problem(
                                &l,
                                "move the replaced copy to the trash",
                                "failed",
                            );
                        }
                    }
                }
                if let Err(e) = self.link_copy(&l, &from, &dir, name) {
                    return self.problem(&l, "rename at DEST", &e.to_string());
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if let Err(e) = self.link_copy(&l, &from, &dir, name) {
                    return self.problem(&l, "rename at DEST", &e.to_string());
                }
            }
            Err(e) => return self.problem(&l, "stat at DEST", &e.to_string()),
        }
        let mut p: &[u8] = pd;
        while !p.is_empty() {
            self.j.touch_dir(p)?;
            p = fsx::split_parent(p).0;
        }
        self.needed.insert(from.origin.dest_rel().to_vec());
        self.moves.push(Move { link: l, from });
        Ok(true)
    }

    /// Give the copy `from` the name `name` in DEST `dir`, for the link `l` (recorded first, so
    /// that a crash before the rename's flush leaves a name the next run can account for).
    pub(super) fn link_copy(
        &self,
        l: &ElsewhereLink,
        from: &Claimable,
        dir: &rustix::fd::OwnedFd,
        name: &[u8],
    ) -> io::Result<()> {
        self.j
            .note_claim(l.id, Some(from.dest_ino))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let (fpd, fname) = fsx::split_parent(from.origin.dest_rel());
        let fdir = fsx::resolve_dir(self.ctx.dst_root.as_fd(), fpd)?;
        match fsx::stat_at(fdir.as_fd(), fname) {
            Ok(st) if st.st_ino == from.dest_ino => {}
            _ => {
                return Err(io::Error::other(
                    "the copy is no longer where the journal says",
                ))
            }
        }
        steps::at(Step::ResyncClaim, &l.path);
        fsx::link_at(fdir.as_fd(), fname, dir.as_fd(), name)
    }

    /// Whether the copy at DEST `path` may be displaced now: not while a link elsewhere that
    /// has not been rewritten still names it (that link would show the newcomer).
    pub(super) fn namers(&self, path: &[u8]) -> Result<Namers> {
        let mut pending = false;
        for id in self.j.links_naming(self.run, path)? {
            if self.stuck.contains(&id) {
                return Ok(Namers::Stuck);
            }
            // Claimed and waiting for the flush that trash_copy makes first: not a blocker.
            if !self.moves.iter().any(|m| m.link.id == id) {
                pending = true;
            }
        }
        Ok(if pending {
            Namers::Pending
        } else {
            Namers::Clear
        })
    }

    /// Links that waited for the links naming their new DEST name's old copy: in rounds, each
    /// ending with a flush. A round in which none can go is a cycle of renames (A and B
    /// swapped): one link of it is parked on a staging name at DEST, which frees the name it
    /// held.
    pub(super) fn postponed_links(&mut self) -> Result<()> {
        let mut stalled_rounds = 0;
        while !self.postponed.is_empty() {
            let round = std::mem::take(&mut self.postponed);
            let before: Vec<i64> = round.iter().map(|(l, _)| l.id).collect();
            for (l, from) in round {
                let origin = from.clone();
                if self.claim(l, from)? {
                    self.release_if_unnamed(origin)?;
                }
            }
            self.flush()?;
            let after: Vec<i64> = self.postponed.iter().map(|(l, _)| l.id).collect();
            if after == before {
                stalled_rounds += 1;
                if stalled_rounds > before.len() + 1 {
                    // Cannot happen (each parking frees a name); never loop forever.
                    for (l, _) in std::mem::take(&mut self.postponed) {
                        self.moved_again(&l, "a cycle of renames that could not be untangled")?;
                    }
                    break;
                }
                let (l, from) = self.postponed.remove(0);
                self.park(l, from)?;
            } else {
                stalled_rounds = 0;
            }
        }
        Ok(())
    }

    /// A copy at its row's DEST path whose links have all been claimed: its old name goes with
    /// the next flush.
    pub(super) fn release_if_unnamed(&mut self, from: Claimable) -> Result<()> {
        let Origin::Row { path, .. } = &from.origin else {
            return Ok(());
        };
        let in_batch = |id: &i64| self.moves.iter().any(|m| m.link.id == *id);
        let named = self.j.links_naming(self.run, path)?;
        if named.iter().all(in_batch)
            && !self
                .release
                .iter()
                .any(|r| r.origin.dest_rel() == path.as_slice())
        {
            self.release.push(from);
        }
        Ok(())
    }

    /// Break a cycle: give the link its copy under a staging name in its own DEST directory
    /// (recorded like a trash entry, so a crash leaves a link the next run can follow), point
    /// the link there, and queue it again to take its own name once that is free.
    pub(super) fn park(&mut self, l: ElsewhereLink, from: Claimable) -> Result<()> {
        let (pd, _) = fsx::split_parent(&l.path);
        let stage_name = self.ctx.tmp_name(l.id, "mv");
        let stage_rel = fsx::join(pd, &stage_name);
        steps::at(Step::DestMkdir, &l.path);
        let dir = match fsx::ensure_dir(self.ctx.dst_root.as_fd(), pd) {
            Ok(d) => d,
            Err(e) => {
                self.problem(&l, "create DEST directory", &e.to_string())?;
                return Ok(());
            }
        };
        if fsx::stat_at(dir.as_fd(), &stage_name).is_ok_and(|s| s.st_ino != from.dest_ino) {
            steps::at(Step::ResyncUnlinkStale, &stage_rel);
            let _ = fsx::unlink_at(dir.as_fd(), &stage_name);
        }
        // The staging name is let go of before it exists, and kept (the release cancelled) in
        // the transaction that records the link's rewrite to it: killed in between, the next
        // run's resync removes it, as an extra name of the copy that no link names.
        self.j.note_release(&stage_rel, from.dest_ino, None)?;
        let staged = match fsx::stat_at(dir.as_fd(), &stage_name) {
            Ok(_) => Ok(()),
            Err(_) => self.link_copy(&l, &from, &dir, &stage_name),
        };
        if let Err(e) = staged {
            self.problem(&l, "stage the copy at DEST", &e.to_string())?;
            return Ok(());
        }
        steps::at(Step::ResyncPark, &l.path);
        fsx::syncfs(self.ctx.dst_root.as_fd()).ctx("make DEST durable (syncfs)", b".")?;
        let j = self.j;
        let mut tid = 0;
        let mut copy = from.copy.clone();
        let rewritten = self.rewrite(&l, &stage_rel, &mut |fresh, handle| {
            copy.link_ino = Some(fresh);
            copy.link_handle = handle.map(<[u8]>::to_vec);
            let row = PathRow {
                id: l.id,
                path: stage_rel.clone(),
                state: FileState::Relocated,
                kind: String::new(),
                seen_run: None,
                version: from.version,
                linked_ino: Some(from.dest_ino),
                copy: copy.clone(),
                link_seen_run: None,
            };
            let r = (|| {
                let tx = j.tx()?;
                tid = j.add_trash(
                    &row,
                    from.dest_ino,
                    &stage_rel,
                    "staged for a renamed link while a cycle of renames is untangled",
                )?;
                j.trash_moved(tid)?;
                j.cancel_release(&stage_rel, from.dest_ino)?;
                tx.commit()?;
                Ok::<(), crate::error::Error>(())
            })();
            r.map_err(|e| e.to_string())
        });
        let fresh = match rewritten {
            Ok((f, _)) => f,
            Err(why) => {
                if tid != 0 {
                    let _ = self.j.trash_restored(tid);
                }
                steps::at(Step::ResyncUndoClaim, &stage_rel);
                let _ = fsx::unlink_at(dir.as_fd(), &stage_name);
                self.moved_again(&l, &why)?;
                return Ok(());
            }
        };
        steps::at(Step::ResyncSyncSource, &l.path);
        fsx::syncfs(self.ctx.src_root.as_fd()).ctx("make SOURCE durable (syncfs)", b".")?;
        self.j.set_link(l.id, &stage_rel, fresh)?;
        let old = from.clone();
        let parked = ElsewhereLink {
            id: l.id,
            path: l.path.clone(),
            link_ino: fresh,
            target: stage_rel.clone(),
        };
        self.postponed.push((
            parked,
            Claimable {
                origin: Origin::Trash {
                    id: tid,
                    rel: stage_rel,
                },
                dest_ino: from.dest_ino,
                copy,
                version: from.version,
            },
        ));
        self.release_if_unnamed(old)?;
        self.flush()
    }

    pub(super) fn link_still_names(&self, row: &PathRow) -> Result<bool> {
        unseen_link_names(self.ctx, self.j, self.run, row)
    }

    pub(super) fn problem(&mut self, l: &ElsewhereLink, op: &str, why: &str) -> Result<bool> {
        self.stuck.insert(l.id);
        self.stats.problems += 1;
        let reason = format!("renamed link: {op}: {why}");
        self.j.set_state(
            l.id,
            FileState::Failed,
            Some(&Why::new(Cause::Renamed, reason)),
        )?;
        self.note(format!("{op} {}: {why}", quoted(&l.path)))?;
        Ok(false)
    }

    /// The user moved the link again since the walk: the next run follows it.
    pub(super) fn moved_again(&mut self, l: &ElsewhereLink, why: &str) -> Result<bool> {
        self.stuck.insert(l.id);
        let reason =
            format!("renamed link changed since the walk ({why}); the next run follows it");
        self.j.set_state(
            l.id,
            FileState::Deferred,
            Some(&Why::new(Cause::Renamed, reason)),
        )?;
        Ok(false)
    }
}
