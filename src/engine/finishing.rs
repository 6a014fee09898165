//! After the walk: namespace resync, hashes of links found already in place, and directory
//! metadata at DEST (deepest first, after their contents).

use super::*;

impl Runner {
    /// Make DEST's namespace follow what users renamed, deleted and replaced in SOURCE.
    pub(super) fn phase_resync(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let mut notes = Vec::new();
        let st = resync::resync(&self.ctx, &self.j, self.run_id, &mut |m| notes.push(m))?;
        for m in notes {
            self.say(m);
        }
        if st.renamed + st.trashed + st.dirs_removed + st.dirs_kept + st.problems > 0 {
            self.j.log(
                Some(self.run_id),
                "info",
                &format!(
                    "namespace resync: {} renamed links took their copies along ({} from the trash), {} copies without a link moved to DEST/.evac-trash, {} DEST directories removed, {} kept (not empty), {} problems, in {:.1}s",
                    st.renamed,
                    st.restored,
                    st.trashed,
                    st.dirs_removed,
                    st.dirs_kept,
                    st.problems,
                    t0.elapsed().as_secs_f64()
                ),
            )?;
        }
        Ok(())
    }

    /// Links found already in place with no hash on record: hash their copies (I5).
    pub(super) fn adopt_unhashed(&mut self) -> Result<()> {
        let mut after = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let rows = self.j.unhashed_relocated(after, 256)?;
            let Some(l) = rows.last() else { break };
            after = l.0;
            let j = self.j.clone();
            let tx = j.tx()?;
            for (id, path) in rows {
                let (pd, name) = fsx::split_parent(&path);
                let fd = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd)
                    .and_then(|d| fsx::open_read(d.as_fd(), name));
                let Ok(fd) = fd else { continue };
                let Ok(st) = fsx::fstat(fd.as_fd()) else {
                    continue;
                };
                if fsx::file_type(&st) != rustix::fs::FileType::RegularFile {
                    continue;
                }
                if let Ok((h, _)) = fsx::hash_fd(fd.as_fd(), &mut buf) {
                    self.j.adopt_link(id, h.as_bytes(), st.st_ino, &st)?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Directories at DEST get their source's owner, xattrs, mode and times, deepest first,
    /// after their contents (creating them, so empty directories are mirrored too).
    pub(super) fn apply_dir_meta(&mut self) -> Result<()> {
        let mut after = None;
        // Directories this pass created (with their ancestors): ours to set, touched or not.
        let mut created: HashSet<Vec<u8>> = HashSet::new();
        loop {
            let rows = self.j.dirs_deepest_first(after.clone(), 512)?;
            let Some((d, last)) = rows.last() else { break };
            after = Some((*d, last.path.clone()));
            for (_, dr) in rows {
                if let Err(e) = self.apply_one_dir(&dr, &mut created) {
                    self.say(format!("evac: {e}"));
                    self.j.log(Some(self.run_id), "error", &e.to_string())?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn apply_one_dir(
        &self,
        dr: &journal::DirRec,
        created: &mut HashSet<Vec<u8>>,
    ) -> Result<()> {
        let src = match fsx::resolve_dir(self.ctx.src_root.as_fd(), &dr.path) {
            Ok(fd) => fd,
            Err(_) => return Ok(()),
        };
        let dst = match fsx::resolve_dir(self.ctx.dst_root.as_fd(), &dr.path) {
            // A DEST directory this journal put nothing into is not ours to change.
            Ok(_) if !dr.touched && !created.contains(&dr.path) => return Ok(()),
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                steps::at(Step::DirMeta, &dr.path);
                let fd = fsx::ensure_dir(self.ctx.dst_root.as_fd(), &dr.path)
                    .ctx("create DEST directory", &dr.path)?;
                let mut p: &[u8] = &dr.path;
                while !p.is_empty() && created.insert(p.to_vec()) {
                    p = fsx::split_parent(p).0;
                }
                fd
            }
            Err(e) => return Err(Error::io("open DEST directory", &dr.path, e)),
        };
        let xattrs = fsx::read_xattrs(src.as_fd()).ctx("read xattrs of directory", &dr.path)?;
        let mut st = fsx::fstat(src.as_fd()).ctx("stat directory", &dr.path)?;
        st.st_mode = dr.mode;
        st.st_uid = dr.uid;
        st.st_gid = dr.gid;
        st.st_atime = dr.atime_ns.div_euclid(1_000_000_000) as _;
        st.st_atime_nsec = dr.atime_ns.rem_euclid(1_000_000_000) as _;
        st.st_mtime = dr.mtime_ns.div_euclid(1_000_000_000) as _;
        st.st_mtime_nsec = dr.mtime_ns.rem_euclid(1_000_000_000) as _;
        // Already right (a rerun): leave it, so not even its ctime changes.
        let now = fsx::fstat(dst.as_fd()).ctx("stat DEST directory", &dr.path)?;
        let same = now.st_mode & 0o7777 == dr.mode & 0o7777
            && (!fsx::is_root() || (now.st_uid == dr.uid && now.st_gid == dr.gid))
            && fsx::mtime_ns(&now) == dr.mtime_ns
            && fsx::read_xattrs(dst.as_fd()).ok().map(sorted) == Some(sorted(xattrs.clone()));
        if !same {
            steps::at(Step::DirMeta, &dr.path);
            fsx::apply_meta(dst.as_fd(), &st, &xattrs)
                .ctx("set metadata of DEST directory", &dr.path)?;
        }
        Ok(())
    }
}

pub(super) fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}
