//! Giving a durable copy its final DEST name (a link from its fd, never replacing anything that
//! evac did not write), and taking back what a copy left at DEST when it is not swapped.

use super::faults::PlaceFault;
use super::swap::drop_links;
use super::*;
use crate::sys::fsx::{self};
use crate::sys::steps::{self, Step};
use rustix::fd::{AsFd, BorrowedFd};
use std::io;

/// Put every DEST temporary of a batch under its final name. Called after the batch's data is
/// durable and after the journal has recorded each copy's DEST inode (state `placed`).
pub fn place(ctx: &Ctx, c: &Copied) -> std::result::Result<(), PlaceFault> {
    for (i, n) in c.names.iter().enumerate() {
        let (_, fname) = fsx::split_parent(&n.rec.path);
        match place_one(ctx, n, fname, c) {
            Ok(()) => {}
            Err(fault) => {
                // Undo this inode's names placed so far: they are ours and their sources stay.
                for m in &c.names[..i] {
                    let (_, f) = fsx::split_parent(&m.rec.path);
                    if let Ok(s) = fsx::stat_at(m.dst_dir.as_fd(), f) {
                        if s.st_ino == c.dst_st.st_ino {
                            steps::at(Step::DiscardPlaced, &m.rec.path);
                            let _ = fsx::unlink_at(m.dst_dir.as_fd(), f);
                        }
                    }
                }
                // On a conflict the coordinator may release a stale name and place again: the
                // temporaries stay (discard removes them otherwise).
                if !matches!(fault, PlaceFault::Conflict) {
                    for m in &c.names {
                        steps::at(Step::CopyDiscard, &m.rec.path);
                        let _ = fsx::unlink_if_exists(m.dst_dir.as_fd(), &m.dst_tmp);
                    }
                }
                return Err(fault);
            }
        }
    }
    Ok(())
}

fn place_one(ctx: &Ctx, n: &Name, fname: &[u8], c: &Copied) -> std::result::Result<(), PlaceFault> {
    let our_ino = c.dst_st.st_ino;
    let dir = n.dst_dir.as_fd();
    // The final name is made from the fd we wrote, never from the temporary's name: a user who
    // can write the DEST directory could have put something else under that name.
    let link_from_fd = || {
        steps::at(Step::PlaceLink, &n.rec.path);
        fsx::link_fd_at(c.dst.as_fd(), dir, fname)
    };
    let place = || match link_from_fd() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // No /proc: fall back to the temporary's name, checked to still be our inode.
            match fsx::stat_at(dir, &n.dst_tmp) {
                Ok(s) if s.st_ino == our_ino => fsx::rename_noreplace(dir, &n.dst_tmp, dir, fname),
                _ => Err(e),
            }
        }
        r => r,
    };
    // The temporary's name is in this journal's reserved namespace: our copy, or a symlink a
    // user planted there (removing a symlink never touches what it points to), goes.
    let cleanup = || {
        if fsx::stat_at(dir, &n.dst_tmp).is_ok_and(|s| {
            s.st_ino == our_ino || fsx::file_type(&s) == rustix::fs::FileType::Symlink
        }) {
            steps::at(Step::PlaceCleanup, &n.rec.path);
            let _ = fsx::unlink_if_exists(dir, &n.dst_tmp);
        }
    };
    match place() {
        Ok(()) => {
            cleanup();
            return Ok(());
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(PlaceFault::io("place the copy at DEST")(e)),
    }
    let existing =
        fsx::stat_at(dir, fname).map_err(PlaceFault::io("stat the file in the way at DEST"))?;
    if existing.st_ino == our_ino {
        // Our own copy from an interrupted attempt already carries this name.
        cleanup();
        return Ok(());
    }
    let regular = fsx::file_type(&existing) == rustix::fs::FileType::RegularFile;
    let ours_unlinked = regular
        && n.rec.dest_ino == Some(existing.st_ino)
        && n.rec.linked_ino != Some(existing.st_ino);
    let ours_linked = regular && n.rec.linked_ino == Some(existing.st_ino);
    if ours_unlinked {
        // Our own copy from an interrupted or undone attempt that no link ever pointed to.
        steps::at(Step::PlaceUnlinkStale, &n.rec.path);
        fsx::unlink_at(dir, fname).map_err(PlaceFault::io("remove an earlier attempt's copy"))?;
    } else if ours_linked {
        // Our earlier version of this path: keep it in the trash rather than overwrite it.
        steps::at(Step::PlaceTrash, &n.rec.path);
        to_trash(ctx, dir, fname, &n.rec.path)
            .map_err(PlaceFault::io("move the previous copy to the trash"))?;
    } else {
        return Err(PlaceFault::Conflict);
    }
    place().map_err(PlaceFault::io("place the copy at DEST"))?;
    cleanup();
    Ok(())
}

/// A regular file at DEST `rel` with more than one name: its inode, if so. A conflicting file
/// that is one of several names of a copy the journal records elsewhere is an old name a crash
/// kept from being released, not a stranger's file.
pub fn extra_name_at_dest(ctx: &Ctx, rel: &[u8]) -> Option<u64> {
    let (pd, name) = fsx::split_parent(rel);
    let dir = fsx::resolve_dir(ctx.dst_root.as_fd(), pd).ok()?;
    let st = fsx::stat_at(dir.as_fd(), name).ok()?;
    (fsx::file_type(&st) == rustix::fs::FileType::RegularFile && st.st_nlink > 1)
        .then_some(st.st_ino)
}

/// Remove DEST `rel` if it is still inode `ino`.
pub fn remove_dest_name(ctx: &Ctx, rel: &[u8], ino: u64) -> io::Result<()> {
    let (pd, name) = fsx::split_parent(rel);
    let dir = fsx::resolve_dir(ctx.dst_root.as_fd(), pd)?;
    if fsx::stat_at(dir.as_fd(), name)?.st_ino == ino {
        steps::at(Step::ResyncUnlinkStale, rel);
        fsx::unlink_at(dir.as_fd(), name)?;
    }
    Ok(())
}

/// Move DEST `dir`/`fname` (the copy of `rel`) into DEST's dated trash, where evac keeps copies
/// it will not overwrite or destroy.
pub(super) fn to_trash(ctx: &Ctx, dir: BorrowedFd<'_>, fname: &[u8], rel: &[u8]) -> io::Result<()> {
    let trel = names::trash_name(ctx, rel)?;
    let (tpd, tname) = fsx::split_parent(&trel);
    let tdir = fsx::resolve_dir(ctx.dst_root.as_fd(), tpd)?;
    fsx::rename_noreplace(dir, fname, tdir.as_fd(), tname)
}

/// Undo what a copy left behind when it is not swapped (deferred, failed, stopped). A copy that
/// a link may still name stays; one that users wrote to through its link before its swap was put
/// back goes to the trash with their bytes.
pub fn discard(ctx: &Ctx, c: &Copied, keep_placed: bool) {
    drop_links(ctx, c);
    let keep_placed = keep_placed || c.put_back().iter().any(PutBack::keeps_copy);
    let written = !keep_placed && c.swap.is_some() && c.written_through_link();
    for n in &c.names {
        if fsx::stat_at(n.dst_dir.as_fd(), &n.dst_tmp).is_ok() {
            steps::at(Step::CopyDiscard, &n.rec.path);
            let _ = fsx::unlink_if_exists(n.dst_dir.as_fd(), &n.dst_tmp);
        }
        if keep_placed {
            continue;
        }
        let (_, f) = fsx::split_parent(&n.rec.path);
        if let Ok(s) = fsx::stat_at(n.dst_dir.as_fd(), f) {
            if s.st_ino == c.dst_st.st_ino {
                if written {
                    steps::at(Step::PlaceTrash, &n.rec.path);
                    let _ = to_trash(ctx, n.dst_dir.as_fd(), f, &n.rec.path);
                } else {
                    steps::at(Step::DiscardPlaced, &n.rec.path);
                    let _ = fsx::unlink_at(n.dst_dir.as_fd(), f);
                }
            }
        }
    }
}
