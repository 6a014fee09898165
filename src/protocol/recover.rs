//! Recovery of one file a previous run left in flight: put a swapped-out original back where
//! its path leads, or complete a relocation whose copy stands; remove evac's own temporaries.

use super::place::to_trash;
use super::swap::{put_back_name, Exchanged, PutBack};
use super::*;
use crate::error::{Error, IoContext, Result};
use crate::journal::{FileState, Journal};
use crate::sys::fsx::{self, Stat};
use crate::sys::steps::{self, Step};
use crate::util::escape::quoted;
use rustix::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// Recovery of one file a previous run left in flight (or whose temporary the walk found):
/// put a displaced original back, or remove it when the journal shows it was relocated and it
/// is unchanged since; remove our temporaries. Returns the state the file should now have.
pub fn recover(ctx: &Ctx, j: &Journal, id: i64, path: &[u8]) -> Result<RecoverResult> {
    let Some((state, dest_ino, linked_ino)) = j.file_state(id)? else {
        return Ok(RecoverResult::Unknown);
    };
    let (pdir, fname) = fsx::split_parent(path);
    let mut result = if state == FileState::Relocated {
        RecoverResult::Relocated
    } else {
        RecoverResult::Pending
    };
    if let Ok(dir) = fsx::resolve_dir(ctx.src_root.as_fd(), pdir) {
        let dir = dir.as_fd();
        let lnk = ctx.tmp_name(id, "lnk");
        let attic = ctx.tmp_name(id, "attic");
        for (held, is_attic) in [(lnk, false), (attic, true)] {
            let Ok(s) = fsx::stat_at(dir, &held) else {
                continue;
            };
            match fsx::file_type(&s) {
                rustix::fs::FileType::Symlink => {
                    steps::at(Step::RecoverUnlinkLink, path);
                    fsx::unlink_if_exists(dir, &held).ctx("remove leftover link for", path)?;
                }
                rustix::fs::FileType::RegularFile => {
                    result =
                        restore_original(ctx, j, id, path, dir, &held, fname, &s, state, is_attic)?;
                }
                _ => {}
            }
        }
    }
    let (dpdir, dname) = fsx::split_parent(path);
    if let Ok(ddir) = fsx::resolve_dir(ctx.dst_root.as_fd(), dpdir) {
        let tmp = ctx.tmp_name(id, "tmp");
        if let Ok(s) = fsx::stat_at(ddir.as_fd(), &tmp) {
            if fsx::file_type(&s) == rustix::fs::FileType::RegularFile {
                steps::at(Step::RecoverUnlinkTemp, path);
                fsx::unlink_if_exists(ddir.as_fd(), &tmp)
                    .ctx("remove leftover DEST temporary for", path)?;
            }
        }
        // An interrupted placement: our copy under its final name that no link points to. It
        // goes, so that later attempts never meet a copy the journal no longer names (the next
        // placement records a new inode before it renames).
        if state.in_flight()
            && matches!(result, RecoverResult::Pending)
            && dest_ino.is_some()
            && dest_ino != linked_ino
        {
            let (spdir, sname) = fsx::split_parent(path);
            let linked_now = fsx::resolve_dir(ctx.src_root.as_fd(), spdir)
                .and_then(|d| fsx::readlink_at(d.as_fd(), sname))
                .is_ok_and(|t| t == ctx.link_target(path));
            let ours_at_dest = fsx::stat_at(ddir.as_fd(), dname).is_ok_and(|s| {
                Some(s.st_ino) == dest_ino
                    && fsx::file_type(&s) == rustix::fs::FileType::RegularFile
            });
            if linked_now && ours_at_dest && state == FileState::Placed {
                // Swapped and the original already removed (an earlier recovery completed it
                // but was stopped before recording that): it is relocated.
                result = RecoverResult::Relocated;
            } else if !linked_now && ours_at_dest {
                if swap_link_names_copy(ctx, j, id, path)? {
                    // The fresh link, renamed by a user after the exchange, still names it.
                    result = RecoverResult::KeepCopy(dest_ino.unwrap_or(0));
                } else {
                    steps::at(Step::RecoverUnlinkCopy, path);
                    fsx::unlink_at(ddir.as_fd(), dname)
                        .ctx("remove an unlinked copy at DEST of", path)?;
                }
            }
        }
    }
    Ok(result)
}

fn dest_inos(j: &Journal, id: i64) -> Result<(Option<u64>, Option<u64>)> {
    Ok(j.file_state(id)?
        .map(|(_, d, l)| (d, l))
        .unwrap_or((None, None)))
}

/// Whether the link made for `id`'s swap still exists and names its DEST copy (a user renamed
/// it away from its path after the exchange), as far as its file handle can tell.
fn swap_link_names_copy(ctx: &Ctx, j: &Journal, id: i64, path: &[u8]) -> Result<bool> {
    let Some((ino, Some(h))) = j.swap_link(id)? else {
        return Ok(false);
    };
    Ok(matches!(fsx::probe_handle(ctx.src_root.as_fd(), &h),
        Ok(Some(p)) if p.ino == ino && p.target.as_deref() == Some(ctx.link_target(path).as_slice())))
}

pub enum RecoverResult {
    Pending,
    /// Pending, and the copy stays at DEST for a link that names it (resync gives it to it).
    KeepCopy(u64),
    Relocated,
    /// Relocated once the journal says so: then `drop_held` removes the original.
    Completed {
        held: Vec<u8>,
        ino: u64,
    },
    Unknown,
}

#[allow(clippy::too_many_arguments)]
fn restore_original(
    ctx: &Ctx,
    j: &Journal,
    id: i64,
    path: &[u8],
    dir: BorrowedFd<'_>,
    held: &[u8],
    fname: &[u8],
    s: &Stat,
    state: FileState,
    is_attic: bool,
) -> Result<RecoverResult> {
    let at_name = fsx::stat_at(dir, fname).ok();
    let name_is_our_link = at_name
        .as_ref()
        .is_some_and(|n| fsx::file_type(n) == rustix::fs::FileType::Symlink)
        && fsx::readlink_at(dir, fname).ok().as_deref() == Some(ctx.link_target(path).as_slice());
    let attic_only = is_attic && at_name.as_ref().is_some_and(|n| n.st_ino == s.st_ino);
    // What the journal says the file was when copied, against the original we hold; and whether
    // the copy stands under its final name at DEST (after a power loss that link may be gone).
    let copied_as = j.copied_as(id)?;
    let unchanged = copied_as
        .is_some_and(|(size, mtime)| size == s.st_size as u64 && mtime == fsx::mtime_ns(s));
    let (dest_ino, linked_ino) = dest_inos(j, id)?;
    let (pd, n) = fsx::split_parent(path);
    let ddir = fsx::resolve_dir(ctx.dst_root.as_fd(), pd).ok();
    let dest_st = ddir.as_ref().and_then(|d| fsx::stat_at(d.as_fd(), n).ok());
    let dest_ok = dest_st
        .as_ref()
        .is_some_and(|st| Some(st.st_ino) == dest_ino);
    // The row may since describe a new file the walk found at the path (state pending, its
    // stat). The recorded copy (linked, still at DEST under the path) then says whether it
    // supersedes this original: it carries the original's mtime and size, and writes made
    // through the link since only add to them. An original written after its copy was made
    // would be newer or longer than the copy.
    let recorded_copy_holds_it = dest_ino.is_some()
        && dest_ino == linked_ino
        && dest_st.as_ref().is_some_and(|d| {
            Some(d.st_ino) == linked_ino
                && d.st_size >= s.st_size
                && fsx::mtime_ns(d) >= fsx::mtime_ns(s)
        });
    let in_flight_or_relocated = state.in_flight() || state == FileState::Relocated;
    // Relocated (checked and recorded; only the unlink was lost), or placed and swapped but not
    // recorded (single-name files): the relocation is completed rather than undone when the original is unchanged
    // and its copy stands, whatever the path holds now -- users may since have written through
    // the link, deleted it, or put a new file there, and none of that may be undone by bringing
    // back the old original.
    // A hard-linked file's names are swapped together and recorded together; an unrecorded
    // swap of one of them is undone, not completed, or its group would be split at DEST.
    // The user may also have renamed our link since the swap (it then names this copy from
    // elsewhere): completing keeps the copy for it, where undoing would strand it.
    let single = j.nlink_of(id)? <= 1;
    if state == FileState::Relocated && !attic_only && unchanged && dest_ok {
        steps::at(Step::RecoverUnlinkOriginal, path);
        fsx::unlink_at(dir, held).ctx("remove the relocated original of", path)?;
        return Ok(RecoverResult::Relocated);
    }
    if !in_flight_or_relocated && !attic_only && recorded_copy_holds_it {
        // Relocated and recorded, then replaced by a new file the walk has already taken in:
        // the recorded copy holds this original.
        steps::at(Step::RecoverUnlinkOriginal, path);
        fsx::unlink_at(dir, held).ctx("remove the relocated original of", path)?;
        return Ok(RecoverResult::Pending);
    }
    // A group whose every name was exchanged before the crash (each is our link now) was
    // swapped whole: completing it splits nothing, and undoing it would take away, from every
    // name, what users have written through the links since.
    let whole_group = !single
        && state == FileState::Placed
        && j.nlink_of(id)? as usize == {
            let names = j.placed_group_paths(id)?;
            let ours = names.iter().filter(|p| our_link_at(ctx, p)).count();
            if ours == names.len() {
                ours
            } else {
                0
            }
        };
    if state == FileState::Placed && (single || whole_group) && !attic_only && unchanged && dest_ok
    {
        // The journal must say relocated (durably) before the original goes: a later recovery
        // that found neither the original nor our link at its name would take the copy for an
        // unlinked one and remove it.
        return Ok(RecoverResult::Completed {
            held: held.to_vec(),
            ino: s.st_ino,
        });
    }
    if attic_only {
        // The attic link was made but the name was never replaced.
        steps::at(Step::RecoverUnlinkOriginal, path);
        fsx::unlink_at(dir, held).ctx("remove attic link of", path)?;
        return Ok(RecoverResult::Pending);
    }
    // Written on both sides (a late write to the original, and through the link to the copy):
    // the original goes back, the copy is kept in the trash, nothing is destroyed. The copy
    // moves only once the original is back: until then our link at the path reads through it,
    // and a user opening the path in between would find nothing.
    let copy_written = state == FileState::Placed
        && name_is_our_link
        && dest_ok
        && dest_st
            .as_ref()
            .zip(copied_as)
            .is_some_and(|(st, (_, m))| m != fsx::mtime_ns(st));
    let trash_written_copy = || -> Result<()> {
        if !copy_written || swap_link_names_copy(ctx, j, id, path)? {
            return Ok(());
        }
        if let Some(d) = ddir.as_ref() {
            if fsx::stat_at(d.as_fd(), n).is_ok_and(|st| Some(st.st_ino) == dest_ino) {
                steps::at(Step::PlaceTrash, path);
                let _ = to_trash(ctx, d.as_fd(), n, path);
            }
        }
        Ok(())
    };
    // The original goes back where the user's path now leads: in place of our link at its name,
    // or wherever the user moved that link (found by the inode and file handle recorded with the
    // placement), never over anything else; with no link left, it is saved beside its name. A
    // link we cannot identify is recognised by its target, at its own name only.
    let (link_ino, link_handle) = match j.swap_link(id)? {
        Some(l) => l,
        None if name_is_our_link => (at_name.as_ref().map_or(0, |n| n.st_ino), None),
        None => (0, None),
    };
    let e = Exchanged {
        rel: path.to_vec(),
        dir: Arc::new(
            fsx::resolve_dir(ctx.src_root.as_fd(), fsx::split_parent(path).0)
                .ctx("open the SOURCE directory of", path)?,
        ),
        fname: fname.to_vec(),
        held: held.to_vec(),
        link_ino,
        link_handle,
        attic: is_attic,
    };
    steps::at(Step::RecoverRestore, path);
    let put = put_back_name(ctx, &e);
    if !matches!(put, PutBack::Stuck(_)) {
        trash_written_copy()?;
    }
    match put {
        PutBack::Restored | PutBack::Dropped => Ok(RecoverResult::Pending),
        PutBack::Followed(to) => {
            j.log(
                None,
                "warn",
                &format!(
                    "{}: its link had been renamed to {} by a user after the swap; the original, written to since, took the link's place there",
                    quoted(path),
                    quoted(&to)
                ),
            )?;
            Ok(RecoverResult::Pending)
        }
        PutBack::Saved { as_rel, .. } => {
            j.log(
                None,
                "warn",
                &format!(
                    "{}: its link had been removed or replaced by a user and no copy at DEST matches the original; the original was saved as {} (relocated as a file of its own)",
                    quoted(path),
                    quoted(&as_rel)
                ),
            )?;
            Ok(RecoverResult::Pending)
        }
        PutBack::Stuck(why) => Err(Error::Setup(format!(
            "put back the original of {}: {why}",
            quoted(path)
        ))),
    }
}

/// Whether SOURCE `rel` is our link to its own DEST name.
fn our_link_at(ctx: &Ctx, rel: &[u8]) -> bool {
    let (pd, name) = fsx::split_parent(rel);
    fsx::resolve_dir(ctx.src_root.as_fd(), pd).is_ok_and(|d| {
        fsx::readlink_at(d.as_fd(), name).ok().as_deref() == Some(ctx.link_target(rel).as_slice())
    })
}

/// After the journal durably records a completed relocation, remove the original that recovery
/// found held at its temporary name (if it is still that inode).
pub fn drop_held(ctx: &Ctx, path: &[u8], held: &[u8], ino: u64) -> Result<()> {
    let dir = fsx::resolve_dir(ctx.src_root.as_fd(), fsx::split_parent(path).0)
        .ctx("open the SOURCE directory of", path)?;
    if fsx::stat_at(dir.as_fd(), held).is_ok_and(|s| s.st_ino == ino) {
        steps::at(Step::RecoverUnlinkOriginal, path);
        fsx::unlink_at(dir.as_fd(), held).ctx("remove the relocated original of", path)?;
    }
    Ok(())
}
