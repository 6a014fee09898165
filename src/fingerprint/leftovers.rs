//! The leftovers' own fingerprints: what SOURCE's metadata, the journal and the HSM listing say
//! of each, and the blake3 of its content only where that content is on disk (I4: a file
//! classified as a stub, from metadata, is never opened; a file the journal or the HSM listing
//! recorded as staged out is opened only if metadata now shows its data back on disk).

use super::hashing::{self, Algo, EDGE};
use crate::hsm::detect as hsm;
use crate::hsm::detect::Mode;
use crate::journal::fingerprint::{FpLeftover, LeftoverRow};
use crate::journal::FileState;
use crate::sys::fsx;
use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

/// A leftover with what the matching needs.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub fp: FpLeftover,
    /// Its file name (the last component).
    pub name: Vec<u8>,
    /// Content hashes known without a recall: blake3 read from SOURCE, the HSM's checksum.
    pub known: Vec<(Algo, Vec<u8>)>,
    /// Its inode in SOURCE, which is never a candidate for anything.
    pub id: Option<(u64, u64)>,
}

/// Fingerprint every leftover (in the current rayon pool), in the rows' order.
pub fn build(rows: Vec<LeftoverRow>, src: &OwnedFd, mode: &Mode) -> Vec<Leftover> {
    rows.into_par_iter()
        .map_init(
            || vec![0u8; 1 << 20],
            |buf, row| one(row, src.as_fd(), mode, buf),
        )
        .collect()
}

/// Whether the journal or the HSM listing recorded this file as having no data on disk.
fn recorded_stub(row: &LeftoverRow) -> bool {
    row.state == Some(FileState::StagedOut)
        || (matches!(row.hsm_state.as_deref(), Some("staged_out") | Some("lost"))
            && row.hsm_stage_state.as_deref() != Some("done"))
}

/// Why the file must not be opened, if it is (or may be) a stub.
fn stub_reason(
    row: &LeftoverRow,
    mode: &Mode,
    dir: BorrowedFd<'_>,
    name: &[u8],
    st: &fsx::Stat,
) -> Option<String> {
    let recorded = recorded_stub(row);
    if recorded && matches!(mode, Mode::Cmd { .. }) {
        // The program said stub; metadata alone cannot say otherwise.
        return Some("staged out (as --hsm cmd: said): not opened".into());
    }
    // Without a metadata mode that can see stubs, the blocks rule guards a recorded stub, as
    // `evac stage` judges residency.
    let m = match mode {
        Mode::Cmd { .. } => Mode::Blocks,
        Mode::None if recorded => Mode::Blocks,
        m => m.clone(),
    };
    match hsm::classify(&m, dir, name, st) {
        Ok(c) if c.openable() => None,
        Ok(c) => Some(format!("{}: not opened", c.why)),
        Err(e) => Some(hsm::Classified::unknown(&e.to_string()).why),
    }
}

/// Read the content of `name` in `dir` (stat'ed as `st`), checking the fd is that inode,
/// unchanged: (partial, blake3).
fn hash_content(
    dir: BorrowedFd<'_>,
    name: &[u8],
    st: &fsx::Stat,
    buf: &mut [u8],
) -> Result<(Option<Vec<u8>>, Vec<u8>), String> {
    let fd = fsx::open_read(dir, name).map_err(|e| format!("open: {e}"))?;
    let now = fsx::fstat(fd.as_fd()).map_err(|e| format!("stat: {e}"))?;
    if (now.st_dev, now.st_ino, now.st_size, fsx::mtime_ns(&now))
        != (st.st_dev, st.st_ino, st.st_size, fsx::mtime_ns(st))
    {
        return Err("changed while being fingerprinted; run again".into());
    }
    let size = st.st_size as u64;
    let partial = if size > 2 * EDGE {
        Some(hashing::partial(fd.as_fd(), size, buf).map_err(|e| format!("read: {e}"))?)
    } else {
        None
    };
    let h = hashing::full(fd.as_fd(), size, &[Algo::Blake3], buf, &mut |_| {})
        .map_err(|e| format!("read: {e}"))?;
    Ok((partial, h.blake3.unwrap_or_default()))
}

fn kind_name(t: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType as T;
    match t {
        T::Symlink => "a symlink",
        T::Directory => "a directory",
        T::Fifo => "a FIFO",
        T::Socket => "a socket",
        T::CharacterDevice | T::BlockDevice => "a device",
        _ => "not a regular file",
    }
}

fn one(row: LeftoverRow, src: BorrowedFd<'_>, mode: &Mode, buf: &mut [u8]) -> Leftover {
    let (pd, name) = fsx::split_parent(&row.path);
    let name = name.to_vec();
    let mut fp = FpLeftover {
        path: row.path.clone(),
        file_id: row.file_id,
        state: row.state.map(|s| s.to_string()),
        reason: row.reason.clone(),
        size: row.size.unwrap_or(0).max(0) as u64,
        mtime_ns: row.mtime_ns,
        mode: row.mode.map(|v| v as u32),
        uid: row.uid.map(|v| v as u32),
        gid: row.gid.map(|v| v as u32),
        hsm_state: row.hsm_state.clone(),
        hsm_volume: row.hsm_volume.clone(),
        hsm_checksum: row.hsm_checksum.clone(),
        content: "gone".into(),
        confidence: "none".into(),
        ..FpLeftover::default()
    };
    let mut size_known = row.size.is_some();
    let mut id = None;
    let looked =
        fsx::resolve_dir(src, pd).and_then(|d| fsx::stat_at(d.as_fd(), &name).map(|st| (d, st)));
    match looked {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            fp.content_note = Some("not in SOURCE any more".into());
        }
        Err(e) => fp.content_note = Some(format!("stat: {e}")),
        Ok((_, st)) if fsx::file_type(&st) != rustix::fs::FileType::RegularFile => {
            fp.content_note = Some(format!(
                "no longer a regular file in SOURCE (now {})",
                kind_name(fsx::file_type(&st))
            ));
        }
        Ok((dir, st)) => {
            fp.size = st.st_size as u64;
            size_known = true;
            fp.mtime_ns = Some(fsx::mtime_ns(&st));
            fp.mode = Some(st.st_mode);
            fp.uid = Some(st.st_uid);
            fp.gid = Some(st.st_gid);
            fp.dev = Some(st.st_dev);
            fp.ino = Some(st.st_ino);
            id = Some((st.st_dev, st.st_ino));
            match stub_reason(&row, mode, dir.as_fd(), &name, &st) {
                Some(why) => {
                    fp.content = "stub".into();
                    fp.content_note = Some(why);
                }
                None if fp.size == 0 => {}
                None => match hash_content(dir.as_fd(), &name, &st, buf) {
                    Ok((partial, b3)) => {
                        fp.content = "hashed".into();
                        fp.partial = partial;
                        fp.blake3 = Some(b3);
                    }
                    Err(e) => {
                        fp.content = "unreadable".into();
                        fp.content_note = Some(e);
                    }
                },
            }
        }
    }
    if fp.size == 0 && size_known {
        // Nothing to recall: an empty file's content is known.
        fp.content = "hashed".into();
        fp.content_note = Some("empty".into());
        fp.blake3 = Some(blake3::hash(b"").as_bytes().to_vec());
    }
    if let Some(Err(e)) = fp.hsm_checksum.as_deref().map(hashing::parse_checksum) {
        let note = format!("HSM {e}; not compared");
        fp.content_note = Some(match fp.content_note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note,
        });
    }
    let known = hashing::known_hashes(&fp);
    Leftover {
        fp,
        name,
        known,
        id,
    }
}
