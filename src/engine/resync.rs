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
//! The enumeration suites (`tests/enumerate.rs`) stop evac at every step of this on renamed,
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
    fn note(&mut self, msg: String) -> Result<()> {
        self.j.log(Some(self.run), "warn", &msg)?;
        (self.say)(format!("evac: {msg}"));
        Ok(())
    }

    /// Whether a row's copy is free to be claimed: it has one, its own link is not in place
    /// (seen this run), and it still stands at its DEST path.
    fn row_claimable(&self, q: &PathRow) -> Option<Claimable> {
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

    fn trash_claimable(&self, target: &[u8], link_ino: u64) -> Result<Option<Claimable>> {
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

    /// Links naming another path, a group (one named path) at a time: every link of a group
    /// gets the group's copy (two links to one copy become two hard links to it, which is what
    /// they shared), and the old name goes once all of them have moved.
    fn renamed_links(&mut self) -> Result<()> {
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

    fn end_group(&mut self, g: Group) -> Result<()> {
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
    fn claim(&mut self, l: ElsewhereLink, from: Claimable) -> Result<bool> {
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
    fn link_copy(
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
    fn namers(&self, path: &[u8]) -> Result<Namers> {
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
    fn postponed_links(&mut self) -> Result<()> {
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
    fn release_if_unnamed(&mut self, from: Claimable) -> Result<()> {
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
    fn park(&mut self, l: ElsewhereLink, from: Claimable) -> Result<()> {
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
                dest_ino: Some(from.dest_ino),
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

    fn link_still_names(&self, row: &PathRow) -> Result<bool> {
        unseen_link_names(self.ctx, self.j, self.run, row)
    }

    fn problem(&mut self, l: &ElsewhereLink, op: &str, why: &str) -> Result<bool> {
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
    fn moved_again(&mut self, l: &ElsewhereLink, why: &str) -> Result<bool> {
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

    /// Move the copy of `row` standing at DEST `row.path` (inode `ino`) to the trash, recorded
    /// first so that a link renamed elsewhere can claim it back later.
    fn trash_copy(&mut self, row: &PathRow, ino: u64, why: &str) -> Result<bool> {
        if self.needed.contains(&row.path) {
            self.flush()?;
        }
        // The flush may have let go of this very name (its copy lives on under the names its
        // links took): then there is nothing left to keep.
        let Some(st) = dest_stat(self.ctx, &row.path).filter(|s| s.st_ino == ino) else {
            return Ok(true);
        };
        if st.st_nlink > 1
            && !self.j.in_transaction()
            && self.j.copy_known_elsewhere(ino, &row.path)?
        {
            // The copy lives on under another name the journal records (a renamed link took it,
            // it is parked for one, or it is a hard-linked file's other name): this name only
            // goes, nothing is trashed.
            let j = self.j;
            let tx = j.tx()?;
            self.j.let_go(
                row.id,
                self.run,
                &format!("{why}; its copy lives on under another name"),
            )?;
            self.j
                .note_release(&row.path, ino, row.copy.link_handle.as_deref())?;
            tx.commit()?;
            self.finish_releases(false)?;
            return Ok(true);
        }
        let mut row = row.clone();
        row.copy = copy_meta(&row.copy, &st);
        let row = &row;
        let rel = match names::trash_name(self.ctx, &row.path) {
            Ok(r) => r,
            Err(e) => {
                self.note(format!(
                    "choose a trash name for {}: {e}",
                    quoted(&row.path)
                ))?;
                return Ok(false);
            }
        };
        let j = self.j;
        let tx = j.tx()?;
        let tid = self.j.add_trash(row, ino, &rel, why)?;
        tx.commit()?;
        let (pd, name) = fsx::split_parent(&row.path);
        let (tpd, tname) = fsx::split_parent(&rel);
        steps::at(Step::ResyncTrash, &row.path);
        let moved = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd).and_then(|d| {
            let t = fsx::resolve_dir(self.ctx.dst_root.as_fd(), tpd)?;
            fsx::rename_noreplace(d.as_fd(), name, t.as_fd(), tname)
        });
        if let Err(e) = moved {
            self.note(format!("move {} to the trash: {e}", quoted(&row.path)))?;
            return Ok(false);
        }
        self.j.trash_moved(tid)?;
        self.j.let_go(
            row.id,
            self.run,
            &format!(
                "{why}; its copy is kept at DEST/{}",
                crate::util::escape::escape(&rel)
            ),
        )?;
        self.stats.trashed += 1;
        Ok(true)
    }

    /// Make the batch's new DEST names durable, rewrite each link to its own path, make the
    /// links durable, record it all, then let go of the old names.
    fn flush(&mut self) -> Result<()> {
        if self.moves.is_empty() && self.release.is_empty() {
            return Ok(());
        }
        let moves = std::mem::take(&mut self.moves);
        let release = std::mem::take(&mut self.release);
        self.needed.clear();
        steps::at(Step::ResyncSyncDest, b"");
        fsx::syncfs(self.ctx.dst_root.as_fd()).ctx("make DEST durable (syncfs)", b".")?;
        let mut prepared = Vec::new();
        for mut m in moves {
            match self.prepare_link(&m.link, &m.link.path) {
                Ok(p) => {
                    if m.from.copy.blake3.is_none() {
                        let mut buf = Vec::new();
                        m.from.copy.blake3 =
                            self.hash_at_dest(&m.link.path, m.from.dest_ino, &mut buf);
                    }
                    prepared.push((m, p));
                }
                Err(why) => {
                    self.failed.insert(m.from.dest_ino);
                    self.undo_claim(&m);
                    let _ = self.moved_again(&m.link, &why)?;
                }
            }
        }
        // The journal first: a crash after an exchange must find the link's new handle and its
        // copy recorded (else the copy could pass for an unlinked or stale name).
        let j = self.j;
        let tx = j.tx()?;
        for (m, p) in &prepared {
            let from = match &m.from.origin {
                Origin::Row { path, .. } => format!("from {}", crate::util::escape::escape(path)),
                Origin::Trash { rel, .. } => {
                    format!("from DEST/{} (the trash)", crate::util::escape::escape(rel))
                }
            };
            self.j.take_over(
                m.link.id,
                self.run,
                &m.from.copy,
                (m.from.version, m.from.dest_ino, p.ino),
                p.handle.as_deref(),
                &from,
            )?;
            if let Origin::Trash { id, ref rel } = m.from.origin {
                self.j.trash_restored(id)?;
                // Its name there goes once the link no longer names it.
                self.j
                    .note_release(rel, m.from.dest_ino, m.from.copy.link_handle.as_deref())?;
            }
        }
        tx.commit()?;
        let mut done = Vec::new();
        let mut undone = Vec::new();
        for (m, p) in prepared {
            match self.exchange_link(&m.link, &p) {
                Ok(()) => {
                    if matches!(m.from.origin, Origin::Trash { .. }) {
                        self.stats.restored += 1;
                    }
                    self.stats.renamed += 1;
                    done.push(m);
                }
                Err(why) => {
                    self.failed.insert(m.from.dest_ino);
                    self.undo_claim(&m);
                    undone.push((m, why));
                }
            }
        }
        steps::at(Step::ResyncSyncSource, b"");
        fsx::syncfs(self.ctx.src_root.as_fd()).ctx("make SOURCE durable (syncfs)", b".")?;
        let j = self.j;
        let tx = j.tx()?;
        for (m, why) in &undone {
            self.j
                .undo_take_over(m.link.id, &m.link.target, m.link.link_ino)?;
            if let Origin::Trash { id, ref rel } = m.from.origin {
                self.j.trash_unrestored(id)?;
                self.j.cancel_release(rel, m.from.dest_ino)?;
            }
            let _ = self.moved_again(&m.link, why)?;
        }
        let mut kept = HashSet::new();
        for f in &release {
            if let Origin::Row { path, .. } = &f.origin {
                let unseen = match self.j.path_row(path)? {
                    Some(r) => self.link_still_names(&r)?,
                    None => false,
                };
                if unseen {
                    // Another link, moved out of this walk's view, still names the old name.
                    kept.insert(f.dest_ino);
                }
            }
        }
        for f in &release {
            if self.failed.contains(&f.dest_ino) || kept.contains(&f.dest_ino) {
                continue;
            }
            if let Origin::Row { id, path } = &f.origin {
                self.j.let_go(
                    *id,
                    self.run,
                    &format!(
                        "renamed in SOURCE; its copy went along (was {})",
                        crate::util::escape::escape(path)
                    ),
                )?;
            }
        }
        // The old shared names of groups, recorded with the letting go and removed after (the
        // trash names links took back were recorded with the take-over).
        for f in &release {
            if !self.failed.contains(&f.dest_ino) && !kept.contains(&f.dest_ino) {
                self.j.note_release(
                    f.origin.dest_rel(),
                    f.dest_ino,
                    f.copy.link_handle.as_deref(),
                )?;
            }
        }
        tx.commit()?;
        self.finish_releases(false)
    }

    /// Remove the old DEST names the journal has let go of (this flush's, or a crashed run's),
    /// each only while it is still that copy and not its last name, and no link names it: not
    /// the link recorded with it (probed by its file handle), nor, when `walked` (the start of
    /// resync), one this run's walk saw.
    fn finish_releases(&mut self, walked: bool) -> Result<()> {
        for (id, rel, ino, handle) in self.j.releases()? {
            let (pd, name) = fsx::split_parent(&rel);
            let named_by_link = handle.as_deref().is_some_and(|h| {
                matches!(fsx::probe_handle(self.ctx.src_root.as_fd(), h),
                    Ok(Some(p)) if p.target.as_deref() == Some(self.ctx.link_target(&rel).as_slice()))
            });
            if named_by_link || (walked && !self.j.links_naming(self.run, &rel)?.is_empty()) {
                continue;
            }
            if let Ok(d) = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd) {
                match fsx::stat_at(d.as_fd(), name) {
                    Ok(s) if s.st_ino == ino && s.st_nlink > 1 => {
                        steps::at(Step::ResyncRelease, &rel);
                        fsx::unlink_at(d.as_fd(), name)
                            .ctx("remove an old DEST name of", &rel)?;
                    }
                    Ok(s) if s.st_ino == ino => self.note(format!(
                        "DEST {} was to go (its copy went along with a renamed link) but is the copy's last name: kept",
                        quoted(&rel)
                    ))?,
                    _ => {}
                }
            }
            self.j.release_done(id)?;
        }
        Ok(())
    }

    /// The blake3 of the copy (inode `ino`) at DEST `rel`, if it can be read.
    fn hash_at_dest(&self, rel: &[u8], ino: u64, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        if buf.is_empty() {
            buf.resize(1 << 20, 0);
        }
        let (pd, name) = fsx::split_parent(rel);
        let dir = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd).ok()?;
        let fd = fsx::open_read(dir.as_fd(), name).ok()?;
        if fsx::fstat(fd.as_fd()).ok()?.st_ino != ino {
            return None;
        }
        let (h, _) = fsx::hash_fd(fd.as_fd(), buf).ok()?;
        Some(h.as_bytes().to_vec())
    }

    /// Point the link at DEST `to` (its own path, or a staging name): `prepare_link`, then
    /// `before` with the fresh link's inode and handle, then `exchange_link`. Returns the new
    /// link's inode and handle.
    fn rewrite(
        &self,
        l: &ElsewhereLink,
        to: &[u8],
        before: &mut BeforeExchange<'_>,
    ) -> std::result::Result<(u64, Option<Vec<u8>>), String> {
        let p = self.prepare_link(l, to)?;
        if let Err(e) = before(p.ino, p.handle.as_deref()) {
            self.drop_prepared(l, &p);
            return Err(e);
        }
        self.exchange_link(l, &p)?;
        Ok((p.ino, p.handle))
    }

    /// The fresh link for `l`, naming DEST `to`, made beside it under a temporary name with the
    /// old link's owner and times, once the old link is checked to be the one the walk saw.
    fn prepare_link(&self, l: &ElsewhereLink, to: &[u8]) -> std::result::Result<Prepared, String> {
        let (pd, name) = fsx::split_parent(&l.path);
        let dir_fd = fsx::resolve_dir(self.ctx.src_root.as_fd(), pd)
            .map_err(|e| format!("open SOURCE directory: {e}"))?;
        let dir = dir_fd.as_fd();
        let old = fsx::stat_at(dir, name).map_err(|e| format!("stat: {e}"))?;
        let was = self.ctx.link_target(&l.target);
        if old.st_ino != l.link_ino || fsx::readlink_at(dir, name).ok() != Some(was.clone()) {
            return Err("changed since the walk".into());
        }
        let tmp = self.ctx.tmp_name(l.id, "lnk");
        let _ = fsx::unlink_if_exists(dir, &tmp);
        steps::at(Step::ResyncLinkCreate, &l.path);
        fsx::symlink_at(&self.ctx.link_target(to), dir, &tmp)
            .map_err(|e| format!("create the link: {e}"))?;
        let fresh = fsx::stat_at(dir, &tmp).map_err(|e| format!("stat the new link: {e}"));
        let meta = fsx::set_link_meta(
            dir,
            &tmp,
            old.st_uid,
            old.st_gid,
            fsx::atime_ns(&old),
            fsx::mtime_ns(&old),
        )
        .map_err(|e| format!("set owner and times of the link: {e}"));
        let fresh = match (fresh, meta) {
            (Ok(f), Ok(())) => f,
            (Err(e), _) | (_, Err(e)) => {
                let _ = fsx::unlink_if_exists(dir, &tmp);
                return Err(e);
            }
        };
        Ok(Prepared {
            ino: fresh.st_ino,
            handle: fsx::handle_at(dir, &tmp).ok(),
            dir: dir_fd,
        })
    }

    /// Remove a prepared link that will not be used.
    fn drop_prepared(&self, l: &ElsewhereLink, p: &Prepared) {
        steps::at(Step::ResyncLinkUnlink, &l.path);
        let _ = fsx::unlink_if_exists(p.dir.as_fd(), &self.ctx.tmp_name(l.id, "lnk"));
    }

    /// Exchange the prepared link with the old one, then check that what came out is the very
    /// link we decided on (else put it back).
    fn exchange_link(&self, l: &ElsewhereLink, p: &Prepared) -> std::result::Result<(), String> {
        let (_, name) = fsx::split_parent(&l.path);
        let dir = p.dir.as_fd();
        let tmp = self.ctx.tmp_name(l.id, "lnk");
        steps::at(Step::ResyncLinkExchange, &l.path);
        let swapped = match fsx::rename_exchange(dir, &tmp, dir, name) {
            Ok(()) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                // No exchange: the check before stands in for the one after it.
                let ok = fsx::stat_at(dir, name).is_ok_and(|s| s.st_ino == l.link_ino);
                if !ok {
                    let _ = fsx::unlink_if_exists(dir, &tmp);
                    return Err("changed since the walk".into());
                }
                fsx::rename_replace(dir, &tmp, dir, name).map_err(|e| {
                    let _ = fsx::unlink_if_exists(dir, &tmp);
                    format!("replace the link: {e}")
                })?;
                false
            }
            Err(e) => {
                let _ = fsx::unlink_if_exists(dir, &tmp);
                return Err(format!("exchange the link: {e}"));
            }
        };
        if swapped {
            let out_ok = fsx::stat_at(dir, &tmp).is_ok_and(|s| s.st_ino == l.link_ino);
            if !out_ok {
                // The user replaced it in between: theirs goes back, ours goes.
                steps::at(Step::ResyncLinkUndo, &l.path);
                let _ = fsx::rename_exchange(dir, &tmp, dir, name);
                let _ = fsx::unlink_if_exists(dir, &tmp);
                return Err("changed while being rewritten; put back".into());
            }
            steps::at(Step::ResyncLinkUnlink, &l.path);
            let _ = fsx::unlink_if_exists(dir, &tmp);
        }
        Ok(())
    }

    /// A move whose link could not be rewritten: drop the new DEST name (the link still names the
    /// old one, which stays).
    fn undo_claim(&self, m: &Move) {
        let (pd, name) = fsx::split_parent(&m.link.path);
        if let Ok(d) = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd) {
            if fsx::stat_at(d.as_fd(), name).is_ok_and(|s| s.st_ino == m.from.dest_ino) {
                steps::at(Step::ResyncUndoClaim, &m.link.path);
                let _ = fsx::unlink_at(d.as_fd(), name);
            }
        }
        let _ = self.j.note_claim(m.link.id, None);
    }

    /// Old DEST names of copies that a renamed link, seen by this walk, has taken over, which a
    /// crash kept from being let go: they go now, as they would have then (no need to wait for
    /// walks to show that no link names them: the copy lives on under its new name).
    fn superseded_names(&mut self) -> Result<()> {
        for row in self.j.superseded_names(self.run)? {
            let Some(ino) = row.linked_ino else { continue };
            let extra =
                dest_stat(self.ctx, &row.path).is_some_and(|s| s.st_ino == ino && s.st_nlink > 1);
            if !extra || self.link_still_names(&row)? {
                continue;
            }
            let j = self.j;
            let tx = j.tx()?;
            self.j
                .let_go(row.id, self.run, "renamed in SOURCE; its copy went along")?;
            self.j
                .note_release(&row.path, ino, row.copy.link_handle.as_deref())?;
            tx.commit()?;
            self.finish_releases(false)?;
        }
        Ok(())
    }

    /// Copies no link names any more (deleted, or replaced by a new file): to the trash.
    fn unlinked_copies(&mut self) -> Result<()> {
        let prev = self.j.prev_resynced(self.run)?;
        let mut after = 0;
        loop {
            let rows = self.j.unlinked_copies(self.run, prev, after, 256)?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in rows {
                let Some(ino) = row.linked_ino else { continue };
                if self.link_still_names(&row)? {
                    // Renamed out of this walk's view: the next walk finds it.
                    continue;
                }
                let why = if row.seen_run == Some(self.run) {
                    "its link was replaced by a new file"
                } else {
                    "its link was removed from SOURCE"
                };
                if dest_stat(self.ctx, &row.path).is_some_and(|s| s.st_ino == ino) {
                    self.trash_copy(&row, ino, why)?;
                } else {
                    self.j.let_go(
                        row.id,
                        self.run,
                        &format!("{why}; its copy was no longer at DEST"),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Copies parked on a staging name whose link is gone (deleted by its user, or renamed out
    /// of SOURCE): into the trash proper, like any copy without a link.
    fn stray_staged(&mut self) -> Result<()> {
        for (t, file_id) in self.j.staged_copies()? {
            if !self.j.links_naming(self.run, &t.trash_rel)?.is_empty() {
                continue;
            }
            if let Some(h) = &t.copy.link_handle {
                let alive = matches!(
                    fsx::probe_handle(self.ctx.src_root.as_fd(), h),
                    Ok(Some(p)) if p.target.as_deref() == Some(self.ctx.link_target(&t.trash_rel).as_slice())
                );
                if alive {
                    continue;
                }
            }
            if dest_stat(self.ctx, &t.trash_rel).map_or(true, |s| s.st_ino != t.dest_ino) {
                self.j.trash_restored(t.id)?;
                continue;
            }
            let path = self
                .j
                .files_in_state_any(file_id)?
                .unwrap_or_else(|| t.trash_rel.clone());
            let rel = match names::trash_name(self.ctx, &path) {
                Ok(r) => r,
                Err(e) => {
                    self.note(format!("choose a trash name for {}: {e}", quoted(&path)))?;
                    continue;
                }
            };
            let (pd, name) = fsx::split_parent(&t.trash_rel);
            let (tpd, tname) = fsx::split_parent(&rel);
            steps::at(Step::ResyncTrash, &t.trash_rel);
            let moved = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd).and_then(|d| {
                let td = fsx::resolve_dir(self.ctx.dst_root.as_fd(), tpd)?;
                fsx::rename_noreplace(d.as_fd(), name, td.as_fd(), tname)
            });
            match moved {
                Ok(()) => {
                    self.j.trash_moved_to(t.id, &rel)?;
                    self.stats.trashed += 1;
                }
                Err(e) => self.note(format!(
                    "move staged copy {} to the trash: {e}",
                    quoted(&t.trash_rel)
                ))?,
            }
        }
        Ok(())
    }

    /// Names a claim gave a copy at DEST and that no link of the row's was recorded for (the
    /// run stopped before the rename's flush): one extra name of a copy kept elsewhere, removed.
    fn cut_short_claims(&mut self) -> Result<()> {
        let mut after = 0;
        loop {
            let rows = self.j.unlinked_claims(after, 256)?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            for (id, path, ino) in rows {
                // A single name is a placement's own copy, which recovery and placement handle.
                let extra =
                    dest_stat(self.ctx, &path).is_some_and(|s| s.st_ino == ino && s.st_nlink > 1);
                if !extra || !self.j.links_naming(self.run, &path)?.is_empty() {
                    continue;
                }
                if crate::protocol::remove_dest_name(self.ctx, &path, ino).is_ok() {
                    self.j.note_claim(id, None)?;
                }
            }
        }
        Ok(())
    }

    /// DEST directories whose SOURCE directory is gone: removed if empty, else reported.
    fn vanished_dirs(&mut self) -> Result<()> {
        for (path, touched) in self.j.vanished_dirs(self.run)? {
            let (pd, name) = fsx::split_parent(&path);
            let r = if touched {
                steps::at(Step::ResyncRmdir, &path);
                fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd)
                    .and_then(|d| fsx::rmdir_at(d.as_fd(), name))
            } else {
                Ok(())
            };
            match r {
                Ok(()) => {
                    if touched {
                        self.stats.dirs_removed += 1;
                    }
                    self.j.forget_dir(&path)?;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.j.forget_dir(&path)?,
                Err(e) => {
                    self.stats.dirs_kept += 1;
                    self.note(format!(
                        "remove DEST directory {} (gone from SOURCE): {e}",
                        quoted(&path)
                    ))?;
                }
            }
        }
        Ok(())
    }
}
