//! Inventory: a depth-first walk of SOURCE through directory fds that never follows a symlink,
//! never leaves SOURCE's filesystem and never enters DEST or the journal's directory. It streams
//! what it sees (memory is bounded by depth, not by the number of files).

use crate::hsm::detect as hsm;
use crate::journal::{Kind, Seen};
use crate::sys::fsx;
use crossbeam_channel::Sender;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Dir, FileType};
use std::sync::atomic::{AtomicBool, Ordering};

pub enum WalkMsg {
    Entry(Seen),
    /// An entry an `--exclude` pattern (`rule`, as given) matched: not entered, not relocated.
    Excluded {
        seen: Seen,
        rule: Vec<u8>,
    },
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
    /// How HSM stubs are told apart (classified here, before anything could open them).
    pub hsm: hsm::Mode,
    pub hsm_timeout: std::time::Duration,
    /// SOURCE's absolute path, for the paths given to an --hsm cmd:PROGRAM.
    pub source_abs: std::path::PathBuf,
    pub root_dev: u64,
    /// (dev, ino) of directories never to enter: DEST and the journal's directory.
    pub prune: Vec<(u64, u64)>,
    /// Names beginning with this belong to this journal's temporaries.
    pub reserved_prefix: Vec<u8>,
    /// `--exclude`: entries left as they are and reported, directories not entered.
    pub filters: crate::util::filter::Filters,
    /// Version-control trees ("units") left whole, unless the journal (at this path, read by
    /// the walk's own connection) already records entries beneath one; None: no units.
    pub units: Option<Option<std::path::PathBuf>>,
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
        hsm: None,
    }
}

/// Regular files waiting for an --hsm cmd:PROGRAM answer, asked about in batches.
const CMD_BATCH: usize = 256;

/// Ask the operator's program about the batch and send it on; a program that fails or does
/// not answer in time leaves the batch's state unknown (never opened this run).
fn flush_cmd(opts: &WalkOpts, batch: &mut Vec<Seen>, tx: &Sender<WalkMsg>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let hsm::Mode::Cmd { program } = &opts.hsm else {
        return true;
    };
    let paths: Vec<Vec<u8>> = batch
        .iter()
        .map(|s| fsx::join(opts.source_abs.as_os_str().as_encoded_bytes(), &s.path))
        .collect();
    match hsm::ask_program(program, &paths, opts.hsm_timeout) {
        Ok(states) => {
            for (s, st) in batch.iter_mut().zip(states) {
                let c = hsm::program_reason(program, st);
                s.hsm = (!c.openable()).then_some(c);
            }
        }
        Err(e) => {
            for s in batch.iter_mut() {
                s.hsm = Some(hsm::Classified::unknown(&e.to_string()));
            }
        }
    }
    for s in batch.drain(..) {
        if tx.send(WalkMsg::Entry(s)).is_err() {
            return false;
        }
    }
    true
}

/// Whether the directory just opened at `path` is a unit the walk leaves whole: it carries a
/// version-control marker, and the journal records nothing beneath it yet (opened once, on the
/// first marker met: most trees have no unit at all).
fn unit_here(
    opts: &WalkOpts,
    journal: &mut Option<Option<crate::journal::Journal>>,
    dir: &Dir,
    path: &[u8],
) -> Option<super::units::UnitKind> {
    let at = opts.units.as_ref()?;
    let kind = super::units::unit_kind(dir.fd().ok()?)?;
    let Some(at) = at else {
        // No journal yet (a dry run before the first run): nothing is begun anywhere.
        return Some(kind);
    };
    let j = journal.get_or_insert_with(|| crate::journal::Journal::open_read(at).ok());
    // Begun file by file (by an earlier run, or before its marker appeared): go on so. When
    // the journal cannot say, the walk goes in, as it always did: a tree it stopped seeing
    // would, in time, lose the copies its links read.
    match j {
        Some(j) if matches!(j.has_rows_under(path), Ok(false)) => Some(kind),
        _ => None,
    }
}

/// Walk from `root`, sending every entry (directories before their contents).
pub fn walk(root: &OwnedFd, opts: &WalkOpts, tx: &Sender<WalkMsg>, stop: &AtomicBool) {
    let mut complete = true;
    let mut cmd_batch: Vec<Seen> = Vec::new();
    let mut stack: Vec<(Dir, Vec<u8>)> = Vec::new();
    let mut unit_journal = None;
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
        // Checked on the way down, so nothing under an excluded directory is ever looked at.
        // evac's own temporaries are never excluded (recovery must find them), nor is what the
        // walk prunes anyway.
        let pruned = kind == Kind::Dir && opts.prune.contains(&(st.st_dev, st.st_ino));
        if kind != Kind::Reserved && !pruned {
            if let Some(rule) = opts.filters.excluded(&path, kind == Kind::Dir) {
                let rule = rule.text().to_vec();
                let seen = seen_from_stat(path, &st, kind, None);
                if tx.send(WalkMsg::Excluded { seen, rule }).is_err() {
                    return;
                }
                continue;
            }
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
                        if let Some(kind) = unit_here(opts, &mut unit_journal, &sub, &path) {
                            let seen = seen_from_stat(path, &st, Kind::Dir, None);
                            let rule = format!(
                                "unit: {} (whole-directory relocation is not built yet; --no-default-units relocates its files one by one)",
                                kind.describe()
                            )
                            .into_bytes();
                            if tx.send(WalkMsg::Excluded { seen, rule }).is_err() {
                                return;
                            }
                            continue;
                        }
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
            Kind::File if opts.hsm != hsm::Mode::None => {
                let mut seen = seen_from_stat(path, &st, kind, None);
                if matches!(opts.hsm, hsm::Mode::Cmd { .. }) {
                    cmd_batch.push(seen);
                    if cmd_batch.len() >= CMD_BATCH && !flush_cmd(opts, &mut cmd_batch, tx) {
                        return;
                    }
                    continue;
                }
                seen.hsm = match hsm::classify(&opts.hsm, dfd, &name, &st) {
                    Ok(c) => (!c.openable()).then_some(c),
                    Err(e) => Some(hsm::Classified::unknown(&e.to_string())),
                };
                if tx.send(WalkMsg::Entry(seen)).is_err() {
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
    if !flush_cmd(opts, &mut cmd_batch, tx) {
        return;
    }
    let _ = tx.send(WalkMsg::Done { complete });
}
