//! Namespace resync, after a complete walk: DEST must mirror SOURCE's namespace at cutover, so a
//! renamed link takes its copy along (the DEST entry is renamed and the link rewritten), a copy
//! whose link was deleted or replaced goes to DEST's dated trash (never destroyed), and a DEST
//! directory whose SOURCE directory is gone is removed once empty.
//!
//! A rename keeps a symlink's inode, so the inode of each link evac made says which copy a link
//! belongs to, even after the copy went to the trash.
//!
//! # The DEST name rule
//!
//! A link reads its copy through a DEST name, and users move links at any moment, so a DEST
//! name is removed or given to another copy only when no link may still read through it:
//!
//! 1. A copy gets a new name (a hard link at DEST, recorded as a claim first) and that name is
//!    made durable before any link is rewritten to it.
//! 2. The take-over is journaled before the link's exchange; the exchange is checked after it
//!    (what came out must be the link the walk saw) and undone, with the claim, if not.
//! 3. The old name is let go in the journal (a row of `releases`, with the file handle of the
//!    link that named it) only after every link that named it was rewritten and those rewrites
//!    are durable; a name in the trash or on a staging name is released the same way once the
//!    link that took it back was rewritten.
//! 4. A release is carried out only while the name is still that copy and not its last name,
//!    and while neither the link recorded with it (probed by its file handle) nor, after a crash,
//!    a link the new walk saw names it. Pending releases survive crashes in the journal.
//! 5. A displaced copy goes to the trash only when no link names it: not one this walk saw, not
//!    one waiting in this batch (links naming it are rewritten first, cycles through a staging
//!    name), not the link recorded for it (probed by handle: kept while it lives in SOURCE, for
//!    three complete walks out of it), and never before two complete walks have missed it. A
//!    copy that lives on under another recorded name loses the old name instead.
//! 6. A new file at a path whose old copy is still recorded there waits for the run after the
//!    one that let that copy go (the dispatch skips rows with a linked copy), so placement never
//!    has to displace a copy a link may read.
//!
//! The enumeration suites (`tests/it/enumerate.rs`) stop evac at every step of this on renamed,
//! replaced, cycled and reused names, and make users rename and replace at every step, and
//! check that no path ever reads another file's copy or nothing.

use crate::error::{IoContext, Result};
use crate::journal::{Cause, CopyMeta, ElsewhereLink, FileState, Journal, PathRow, Why};
use crate::protocol::{names, Ctx};
use crate::sys::fsx;
use crate::sys::steps::{self, Step};
use crate::util::escape::quoted;
use rustix::fd::AsFd;
use std::collections::HashSet;
use std::io;

mod cleanup;
mod follow;
mod links;

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Links that took their copy to their new name.
    pub renamed: u64,
    /// Copies moved to the trash because no link names them any more.
    pub trashed: u64,
    /// Copies a renamed link took back from the trash.
    pub restored: u64,
    /// Empty DEST directories removed because SOURCE no longer has them.
    pub dirs_removed: u64,
    /// DEST directories left because something is still in them.
    pub dirs_kept: u64,
    /// Renames that could not be mirrored (conflict, error, or the user changed the link).
    pub problems: u64,
}

/// Where the copy a renamed link claims stands now.
#[derive(Clone)]
enum Origin {
    /// At DEST under the path of the row it was relocated as.
    Row { id: i64, path: Vec<u8> },
    /// In the trash.
    Trash { id: i64, rel: Vec<u8> },
}

impl Origin {
    fn dest_rel(&self) -> &[u8] {
        match self {
            Origin::Row { path, .. } => path,
            Origin::Trash { rel, .. } => rel,
        }
    }
}

/// A copy and where it is: what a renamed link takes over.
#[derive(Clone)]
struct Claimable {
    origin: Origin,
    dest_ino: u64,
    copy: CopyMeta,
    version: i64,
}

/// A rename whose new DEST name exists, waiting for the batch's syncs and link rewrite.
struct Move {
    link: ElsewhereLink,
    from: Claimable,
}

/// A fresh link made beside the one it will replace, and the directory both are in (held, so
/// that a directory a user renames in between is still the one exchanged in and cleaned up).
struct Prepared {
    ino: u64,
    handle: Option<Vec<u8>>,
    dir: rustix::fd::OwnedFd,
}

/// The links naming one path, and the copy standing there that they share.
struct Group {
    target: Vec<u8>,
    from: Option<Claimable>,
    all_moved: bool,
    any_moved: bool,
}

struct Resync<'a> {
    ctx: &'a Ctx,
    j: &'a Journal,
    run: i64,
    say: &'a mut dyn FnMut(String),
    moves: Vec<Move>,
    /// Old DEST names to release after the batch (a group whose links all moved).
    release: Vec<Claimable>,
    /// DEST paths that unflushed moves still depend on: not to be touched before a flush.
    needed: HashSet<Vec<u8>>,
    /// Copies one of whose links could not be rewritten: their old name stays.
    failed: HashSet<u64>,
    /// Links given up on this run: they keep naming what they name.
    stuck: HashSet<i64>,
    /// Links whose DEST name holds a copy that links not yet moved still name: they wait, so
    /// that no link ever shows another file's copy.
    postponed: Vec<(ElsewhereLink, Claimable)>,
    stats: Stats,
}

/// Who still names a DEST path whose copy a claim would displace.
enum Namers {
    /// Nobody (or only links in the batch about to be flushed).
    Clear,
    /// Links not handled yet this run.
    Pending,
    /// A link that will keep naming it this run.
    Stuck,
}

const BATCH: usize = 512;

/// Run by `rewrite` once the fresh link exists (its inode and file handle), before it replaces
/// the old one.
type BeforeExchange<'a> = dyn FnMut(u64, Option<&[u8]>) -> std::result::Result<(), String> + 'a;

/// Complete walks in a row that must miss a link still alive (found by its file handle) before
/// it is taken to live outside SOURCE.
const OUT_OF_VIEW_WALKS: i64 = 3;

pub fn resync(ctx: &Ctx, j: &Journal, run: i64, say: &mut dyn FnMut(String)) -> Result<Stats> {
    let mut r = Resync {
        ctx,
        j,
        run,
        say,
        moves: Vec::new(),
        release: Vec::new(),
        needed: HashSet::new(),
        failed: HashSet::new(),
        stuck: HashSet::new(),
        postponed: Vec::new(),
        stats: Stats::default(),
    };
    r.finish_releases(true)?;
    r.renamed_links()?;
    r.flush()?;
    r.postponed_links()?;
    r.superseded_names()?;
    r.unlinked_copies()?;
    r.stray_staged()?;
    r.cut_short_claims()?;
    r.j.note_waiting_new_versions()?;
    r.vanished_dirs()?;
    Ok(r.stats)
}

/// Whether the link evac last made for `row`'s path, opened by its file handle, still exists
/// and names DEST `row.path` without this run's walk having seen it: a user moved it, out of
/// the walk's view (renamed from a part of the tree not yet walked to one already walked). Its
/// copy must then stay where it is. Unknown (no handle, or no CAP_DAC_READ_SEARCH) counts as no.
///
/// A link alive but unseen by `OUT_OF_VIEW_WALKS` complete walks in a row lives outside
/// SOURCE (moved out of the tree on the same filesystem): it no longer holds its copy in place,
/// and takes it back from the trash by its inode if it returns.
pub fn unseen_link_names(ctx: &Ctx, j: &Journal, run: i64, row: &PathRow) -> Result<bool> {
    let Some(h) = &row.copy.link_handle else {
        return Ok(false);
    };
    let rel = &row.path;
    let p = match fsx::probe_handle(ctx.src_root.as_fd(), h) {
        Ok(Some(p)) if p.target.as_deref() == Some(ctx.link_target(rel).as_slice()) => p,
        _ => return Ok(false),
    };
    if j.link_seen_naming(run, p.ino, rel)? {
        // Seen by this walk (renamed within view): the renamed-link pass deals with it.
        return Ok(false);
    }
    // Where the kernel says it is: inside SOURCE, it holds its copy however long walks miss it.
    let in_source = match (&p.path, ctx.src_path()) {
        (Some(at), Some(src)) => at.starts_with(&src) && at != &src,
        _ => false,
    };
    if !in_source {
        if let Some(since) = j.resynced_back(run, OUT_OF_VIEW_WALKS)? {
            if row.link_seen_run.map_or(true, |s| s < since) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The regular file at DEST `rel`, if any.
fn dest_stat(ctx: &Ctx, rel: &[u8]) -> Option<fsx::Stat> {
    let (pd, name) = fsx::split_parent(rel);
    let dir = fsx::resolve_dir(ctx.dst_root.as_fd(), pd).ok()?;
    let st = fsx::stat_at(dir.as_fd(), name).ok()?;
    (fsx::file_type(&st) == rustix::fs::FileType::RegularFile).then_some(st)
}

/// The journal's record of a copy with the metadata the copy itself carries: the row may since
/// describe whatever now stands at its SOURCE path, and users may have written to the copy
/// through its link (then the recorded hash is not the copy's: it is hashed again when it
/// takes its new name).
fn copy_meta(known: &CopyMeta, st: &fsx::Stat) -> CopyMeta {
    let same = known.size == Some(st.st_size) && known.mtime_ns == Some(fsx::mtime_ns(st));
    CopyMeta {
        link_ino: known.link_ino,
        blake3: known.blake3.clone().filter(|_| same),
        size: Some(st.st_size),
        mode: Some(i64::from(st.st_mode)),
        uid: Some(i64::from(st.st_uid)),
        gid: Some(i64::from(st.st_gid)),
        mtime_ns: Some(fsx::mtime_ns(st)),
        link_handle: known.link_handle.clone(),
    }
}

impl Resync<'_> {
    pub(super) fn note(&mut self, msg: String) -> Result<()> {
        self.j.log(Some(self.run), "warn", &msg)?;
        (self.say)(format!("evac: {msg}"));
        Ok(())
    }

    /// Whether a row's copy is free to be claimed: it has one, its own link is not in place
    /// (seen this run), and it still stands at its DEST path.
    pub(super) fn row_claimable(&self, q: &PathRow) -> Option<Claimable> {
        let own_linked =
            q.kind == "file" && q.state == FileState::Relocated && q.seen_run == Some(self.run);
        let ino = q.linked_ino?;
        let st = dest_stat(self.ctx, &q.path).filter(|s| s.st_ino == ino)?;
        if own_linked {
            return None;
        }
        Some(Claimable {
            origin: Origin::Row {
                id: q.id,
                path: q.path.clone(),
            },
            dest_ino: ino,
            copy: copy_meta(&q.copy, &st),
            version: q.version,
        })
    }

    pub(super) fn trash_claimable(
        &self,
        target: &[u8],
        link_ino: u64,
    ) -> Result<Option<Claimable>> {
        let Some(t) = self.j.trash_for_link(target, link_ino)? else {
            return Ok(None);
        };
        // The same number on a link made since the recorded one was deleted is not that link.
        if let Some(h) = &t.copy.link_handle {
            match fsx::probe_handle(self.ctx.src_root.as_fd(), h) {
                Ok(None) => return Ok(None),
                Ok(Some(p)) if p.ino != link_ino => return Ok(None),
                _ => {}
            }
        }
        for rel in [&t.trash_rel, &t.path] {
            if let Some(st) = dest_stat(self.ctx, rel).filter(|s| s.st_ino == t.dest_ino) {
                return Ok(Some(Claimable {
                    origin: Origin::Trash {
                        id: t.id,
                        rel: rel.clone(),
                    },
                    dest_ino: t.dest_ino,
                    copy: copy_meta(&t.copy, &st),
                    version: t.version,
                }));
            }
        }
        Ok(None)
    }
}
