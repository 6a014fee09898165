//! Inventory: a depth-first walk of SOURCE through directory fds that never follows a symlink,
//! never leaves SOURCE's filesystem and never enters DEST or the journal's directory. It streams
//! what it sees (memory is bounded by depth, not by the number of files).

use crate::fsx;
use crate::journal::{Kind, Seen};
use crossbeam_channel::Sender;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Dir, FileType};
use std::sync::atomic::{AtomicBool, Ordering};

pub enum WalkMsg {
    Entry(Seen),
    /// A directory that could not be read; the walk goes on without it.
    Error {
        path: Vec<u8>,
        op: &'static str,
        err: std::io::Error,
    },
    /// The walk ended; `complete` is false if it was stopped or a directory was unreadable.
    Done {
        complete: bool,
    },
}

pub struct WalkOpts {
    pub root_dev: u64,
    /// (dev, ino) of directories never to enter: DEST and the journal's directory.
    pub prune: Vec<(u64, u64)>,
    /// Names beginning with this belong to this journal's temporaries.
    pub reserved_prefix: Vec<u8>,
}

fn kind_of(st: &fsx::Stat) -> Kind {
    match fsx::file_type(st) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::CharacterDevice => Kind::CharDev,
        FileType::BlockDevice => Kind::BlockDev,
        FileType::Unknown => Kind::Socket,
    }
}

pub fn seen_from_stat(path: Vec<u8>, st: &fsx::Stat, kind: Kind, target: Option<Vec<u8>>) -> Seen {
    Seen {
        path,
        kind,
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
        size: st.st_size as u64,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        atime_ns: fsx::atime_ns(st),
        mtime_ns: fsx::mtime_ns(st),
        ctime_ns: fsx::ctime_ns(st),
        target,
    }
}

/// Walk from `root`, sending every entry (directories before their contents).
pub fn walk(root: &OwnedFd, opts: &WalkOpts, tx: &Sender<WalkMsg>, stop: &AtomicBool) {
    let mut complete = true;
    let mut stack: Vec<(Dir, Vec<u8>)> = Vec::new();
    match fsx::resolve_dir(root.as_fd(), b"").and_then(|fd| Dir::new(fd).map_err(Into::into)) {
        Ok(d) => stack.push((d, Vec::new())),
        Err(err) => {
            let _ = tx.send(WalkMsg::Error {
                path: b".".to_vec(),
                op: "read directory",
                err,
            });
            let _ = tx.send(WalkMsg::Done { complete: false });
            return;
        }
    }
    while let Some((dir, rel)) = stack.last_mut() {
        if stop.load(Ordering::Relaxed) {
            complete = false;
            break;
        }
        let ent = match dir.read() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) => {
                let _ = tx.send(WalkMsg::Error {
                    path: rel.clone(),
                    op: "read directory",
                    err: e.into(),
                });
                complete = false;
                stack.pop();
                continue;
            }
            Some(Ok(ent)) => ent,
        };
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = name.to_vec();
        let path = fsx::join(rel, &name);
        let dfd = match dir.fd() {
            Ok(fd) => fd,
            Err(e) => {
                let _ = tx.send(WalkMsg::Error {
                    path,
                    op: "read directory",
                    err: e.into(),
                });
                complete = false;
                continue;
            }
        };
        let st = match fsx::stat_at(dfd, &name) {
            Ok(st) => st,
            // Deleted between readdir and stat: nothing to record.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(err) => {
                let _ = tx.send(WalkMsg::Error {
                    path,
                    op: "stat",
                    err,
                });
                complete = false;
                continue;
            }
        };
        let mut kind = kind_of(&st);
        if name.starts_with(&opts.reserved_prefix) {
            kind = Kind::Reserved;
        }
        match kind {
            Kind::Dir => {
                if opts.prune.contains(&(st.st_dev, st.st_ino)) {
                    continue;
                }
                if st.st_dev != opts.root_dev {
                    let _ = tx.send(WalkMsg::Entry(seen_from_stat(
                        path,
                        &st,
                        Kind::MountPoint,
                        None,
                    )));
                    continue;
                }
                match fsx::open_dir_at(dfd, &name).and_then(|fd| Dir::new(fd).map_err(Into::into)) {
                    Ok(sub) => {
                        if tx
                            .send(WalkMsg::Entry(seen_from_stat(
                                path.clone(),
                                &st,
                                Kind::Dir,
                                None,
                            )))
                            .is_err()
                        {
                            return;
                        }
                        stack.push((sub, path));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => {
                        let _ = tx.send(WalkMsg::Error {
                            path,
                            op: "open directory",
                            err,
                        });
                        complete = false;
                    }
                }
            }
            Kind::Symlink => {
                let target = fsx::readlink_at(dfd, &name).ok();
                if tx
                    .send(WalkMsg::Entry(seen_from_stat(path, &st, kind, target)))
                    .is_err()
                {
                    return;
                }
            }
            _ => {
                if tx
                    .send(WalkMsg::Entry(seen_from_stat(path, &st, kind, None)))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(WalkMsg::Done { complete });
}
