//! The read-only index of the `--search` directories: a parallel walk (one rayon task per
//! directory) through directory fds opened one component at a time without following symlinks,
//! staying on each search directory's filesystem and out of DEST (unless DEST is itself a
//! search directory). It stats every entry and keeps only regular files of a size some leftover
//! has; nothing is opened but directories.

use super::stats::Stats;
use crate::hsm::detect as hsm;
use crate::sys::fsx;
use crate::util::escape::quoted;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Dir, FileType};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A regular file under a search directory whose size some leftover has.
#[derive(Debug, Clone)]
pub struct Found {
    /// Index of its search directory.
    pub root: usize,
    /// Relative to its search directory.
    pub rel: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Why it must not be opened, if it is an HSM stub itself (I4 holds for candidates too).
    pub stub: Option<String>,
}

pub struct IndexOpts<'a> {
    /// Absolute, symlink-free paths of the search directories.
    pub roots: &'a [Vec<u8>],
    pub sizes: &'a HashSet<u64>,
    /// Directories not to enter (DEST), by (dev, ino).
    pub skip: &'a [(u64, u64)],
    pub hsm: &'a hsm::Mode,
    pub stats: &'a Stats,
    pub stop: &'a AtomicBool,
    pub say: &'a (dyn Fn(String) + Sync),
}

struct Walk<'a> {
    o: &'a IndexOpts<'a>,
    found: Mutex<Vec<Found>>,
    /// Directories on another filesystem, not entered.
    mounts: Mutex<Vec<Vec<u8>>>,
}

/// Walk every search directory; the files of interest, in no particular order, and the mount
/// points that were not entered.
pub fn index(o: &IndexOpts<'_>) -> (Vec<Found>, Vec<Vec<u8>>) {
    let w = Walk {
        o,
        found: Mutex::new(Vec::new()),
        mounts: Mutex::new(Vec::new()),
    };
    rayon::scope(|s| {
        for (i, root) in o.roots.iter().enumerate() {
            let path = std::path::Path::new(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(root),
            );
            let fd = match fsx::open_root(path) {
                Ok(fd) => fd,
                Err(e) => {
                    (o.say)(format!(
                        "fingerprint: open search directory {}: {e}",
                        quoted(root)
                    ));
                    continue;
                }
            };
            let st = match fsx::fstat(fd.as_fd()) {
                Ok(st) => st,
                Err(e) => {
                    (o.say)(format!(
                        "fingerprint: stat search directory {}: {e}",
                        quoted(root)
                    ));
                    continue;
                }
            };
            let w = &w;
            s.spawn(move |s| w.dir(s, i, st.st_dev, fd, Vec::new()));
        }
    });
    let mut found = w.found.into_inner().unwrap_or_else(|e| e.into_inner());
    found.sort_by(|a, b| (a.root, &a.rel).cmp(&(b.root, &b.rel)));
    let mut mounts = w.mounts.into_inner().unwrap_or_else(|e| e.into_inner());
    mounts.sort();
    (found, mounts)
}

impl<'a> Walk<'a> {
    fn abs(&self, root: usize, rel: &[u8]) -> Vec<u8> {
        if rel.is_empty() {
            self.o.roots[root].clone()
        } else {
            fsx::join(&self.o.roots[root], rel)
        }
    }

    fn error(&self, op: &str, root: usize, rel: &[u8], e: std::io::Error) {
        Stats::add(&self.o.stats.errors, 1);
        (self.o.say)(format!(
            "fingerprint: {op} {}: {e} (skipped)",
            quoted(&self.abs(root, rel))
        ));
    }

    /// A subdirectory `name` of `parent`, opened when its task runs (so that a wide tree keeps
    /// one fd per directory being read, not one per directory waiting).
    fn subdir<'s>(
        &'s self,
        s: &rayon::Scope<'s>,
        root: usize,
        dev: u64,
        parent: Arc<OwnedFd>,
        name: Vec<u8>,
        rel: Vec<u8>,
    ) {
        s.spawn(move |s| {
            if self.o.stop.load(Ordering::Relaxed) {
                return;
            }
            let fd = match fsx::open_dir_at(parent.as_fd(), &name) {
                Ok(fd) => fd,
                // Gone, or swapped for a symlink or a file since it was listed.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
                    ) =>
                {
                    return
                }
                Err(e) => return self.error("open directory", root, &rel, e),
            };
            drop(parent);
            let st = match fsx::fstat(fd.as_fd()) {
                Ok(st) => st,
                Err(e) => return self.error("stat directory", root, &rel, e),
            };
            if st.st_dev != dev {
                if let Ok(mut m) = self.mounts.lock() {
                    m.push(self.abs(root, &rel));
                }
                return;
            }
            if self.o.skip.contains(&(st.st_dev, st.st_ino)) {
                return;
            }
            self.dir(s, root, dev, fd, rel);
        });
    }

    fn dir<'s>(&'s self, s: &rayon::Scope<'s>, root: usize, dev: u64, fd: OwnedFd, rel: Vec<u8>) {
        Stats::add(&self.o.stats.dirs, 1);
        let fd = Arc::new(fd);
        let mut dir = match Dir::read_from(fd.as_fd()) {
            Ok(d) => d,
            Err(e) => return self.error("read directory", root, &rel, e.into()),
        };
        let mut local = Vec::new();
        while let Some(ent) = dir.read() {
            if self.o.stop.load(Ordering::Relaxed) {
                break;
            }
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    self.error("read directory", root, &rel, e.into());
                    break;
                }
            };
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let child = fsx::join(&rel, name);
            let kind = ent.file_type();
            if kind == FileType::Directory {
                self.subdir(s, root, dev, fd.clone(), name.to_vec(), child);
                continue;
            }
            if kind != FileType::RegularFile && kind != FileType::Unknown {
                continue;
            }
            let st = match fsx::stat_at(fd.as_fd(), name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    self.error("stat", root, &child, e);
                    continue;
                }
            };
            match fsx::file_type(&st) {
                FileType::RegularFile => {}
                FileType::Directory => {
                    self.subdir(s, root, dev, fd.clone(), name.to_vec(), child);
                    continue;
                }
                _ => continue,
            }
            let size = st.st_size as u64;
            Stats::add(&self.o.stats.files, 1);
            Stats::add(&self.o.stats.bytes, size);
            if !self.o.sizes.contains(&size) {
                continue;
            }
            // An HSM stub among the candidates is not opened either; its state comes from
            // metadata, as for SOURCE.
            let stub = match hsm::classify(self.o.hsm, fd.as_fd(), name, &st) {
                Ok(c) if c.openable() => None,
                Ok(c) => Some(c.why),
                Err(e) => Some(hsm::Classified::unknown(&e.to_string()).why),
            };
            Stats::add(&self.o.stats.candidates, 1);
            local.push(Found {
                root,
                rel: child,
                dev: st.st_dev,
                ino: st.st_ino,
                size,
                mtime_ns: fsx::mtime_ns(&st),
                ctime_ns: fsx::ctime_ns(&st),
                mode: st.st_mode,
                uid: st.st_uid,
                gid: st.st_gid,
                stub,
            });
        }
        if !local.is_empty() {
            if let Ok(mut f) = self.found.lock() {
                f.extend(local);
            }
        }
    }
}
