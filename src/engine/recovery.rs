//! Before a run walks: finishing or undoing what a previous run left in flight, and what the walk
//! finds under this journal's temporary names.

use super::*;

impl Runner {
    /// Files a previous run left between dispatch and relocation.
    pub(super) fn recover_in_flight(&mut self) -> Result<()> {
        let mut n = 0;
        for state in [FileState::Copying, FileState::Placed] {
            loop {
                let recs = self.j.files_in_state(state, 0, 1000)?;
                if recs.is_empty() {
                    break;
                }
                let j = self.j.clone();
                let tx = j.tx()?;
                for r in &recs {
                    self.recover_one(r.id, &r.path)?;
                    n += 1;
                }
                self.commit_recovered(tx)?;
            }
        }
        if n > 0 {
            self.j.log(
                Some(self.run_id),
                "info",
                &format!("recovered {n} files left in flight by an earlier run"),
            )?;
        }
        Ok(())
    }

    /// A placement refused because DEST already has a file at the path: if that file is an
    /// extra name of a copy the journal records under another path (a name a crash kept from
    /// being released after its link was renamed), remove it and say so.
    pub(super) fn release_stale_name(&mut self, c: &Copied) -> Result<bool> {
        let mut any = false;
        for n in &c.names {
            let Some(ino) = protocol::extra_name_at_dest(&self.ctx, &n.rec.path) else {
                continue;
            };
            if !self.j.copy_known_elsewhere(ino, &n.rec.path)? {
                continue;
            }
            // Not while the path's last link, moved out of the walk's view, still names it.
            let unseen = match self.j.path_row(&n.rec.path)? {
                Some(r) => resync::unseen_link_names(&self.ctx, &self.j, self.run_id, &r)?,
                None => false,
            };
            if unseen {
                continue;
            }
            if protocol::remove_dest_name(&self.ctx, &n.rec.path, ino).is_ok() {
                self.j.log(
                    Some(self.run_id),
                    "info",
                    &format!(
                        "removed {} at DEST: an old name of a copy now recorded under another path",
                        quoted(&n.rec.path)
                    ),
                )?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Commit what recovery decided. Relocations it completed are made durable on both sides
    /// before the journal says so, and their originals removed only after that.
    pub(super) fn commit_recovered(&mut self, tx: journal::Tx<'_>) -> Result<()> {
        let held = std::mem::take(&mut self.to_record.held_originals);
        if !held.is_empty() {
            steps::at(Step::RecoverSync, b"");
            fsx::syncfs(self.ctx.dst_root.as_fd()).ctx("make DEST durable (syncfs)", b".")?;
            fsx::syncfs(self.ctx.src_root.as_fd()).ctx("make SOURCE durable (syncfs)", b".")?;
        }
        tx.commit()?;
        for (path, name, ino) in held {
            if let Err(e) = protocol::drop_held(&self.ctx, &path, &name, ino) {
                // The next walk finds it under its temporary name and recovery tries again.
                self.say(format!("evac: recover: {e}"));
            }
        }
        Ok(())
    }

    /// Mark every directory above `path` as one this journal put something under at DEST
    /// (`seen` skips those already marked in this batch).
    pub(super) fn touch_ancestors<'p>(
        &self,
        path: &'p [u8],
        seen: &mut HashSet<&'p [u8]>,
    ) -> Result<()> {
        let mut p = fsx::split_parent(path).0;
        while !p.is_empty() && seen.insert(p) {
            self.j.touch_dir(p)?;
            p = fsx::split_parent(p).0;
        }
        Ok(())
    }

    pub(super) fn recover_one(&mut self, id: i64, path: &[u8]) -> Result<()> {
        match protocol::recover(&self.ctx, &self.j, id, path) {
            Ok(RecoverResult::Pending) => self.j.set_state(id, FileState::Pending, None),
            Ok(RecoverResult::KeepCopy(ino)) => {
                self.j.set_state(id, FileState::Pending, None)?;
                self.j.keep_copy(id, ino)
            }
            Ok(RecoverResult::Relocated) => {
                self.touch_ancestors(path, &mut HashSet::new())?;
                self.j.mark_recovered_relocated(id)
            }
            Ok(RecoverResult::Completed { held, ino }) => {
                self.touch_ancestors(path, &mut HashSet::new())?;
                self.to_record
                    .held_originals
                    .push((path.to_vec(), held, ino));
                self.j.mark_recovered_relocated(id)
            }
            Ok(RecoverResult::Unknown) => Ok(()),
            Err(e) => {
                self.say(format!("evac: recover: {e}"));
                self.j.set_state(
                    id,
                    FileState::Failed,
                    Some(&Why::new(Cause::Error, e.to_string())),
                )
            }
        }
    }

    /// Temporary names the walk came across: finish or undo what a crash left there.
    pub(super) fn handle_reserved(&mut self) -> Result<()> {
        let items: Vec<_> = std::mem::take(&mut self.reserved_seen);
        for (id, path) in items {
            if self.flight.inflight_ids.contains(&id) {
                continue;
            }
            let Some(rec_path) = self.j.file_state(id)?.and(self.path_of(id)?) else {
                continue;
            };
            // The temporary must sit in the directory of the file it belongs to.
            if fsx::split_parent(&rec_path).0 != fsx::split_parent(&path).0 {
                continue;
            }
            let j = self.j.clone();
            let tx = j.tx()?;
            self.recover_one(id, &rec_path)?;
            self.commit_recovered(tx)?;
        }
        Ok(())
    }

    pub(super) fn path_of(&self, id: i64) -> Result<Option<Vec<u8>>> {
        self.j.files_in_state_any(id)
    }
}
