//! Swapping each name of a placed copy for its link (RENAME_EXCHANGE, checked after), putting
//! originals back where users' paths lead when a check or a lease break says so, and removing
//! the originals once the relocation is recorded. The swap's state is shared with the
//! lease-break handler (`SwapShared`).

use super::*;
use crate::sys::fsx::{self};
use crate::sys::signals::OnBreak;
use crate::sys::steps::{self, Step};
use crate::util::escape::quoted;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What became of one copied inode at commit time.
pub enum Swap {
    /// Every name is now our link; originals wait at their temporary names for `finish`.
    Swapped(Box<Copied>),
    Deferred(Box<Copied>, Why),
    Failed(Box<Copied>, Why),
}

/// One name exchanged for its link: where the original now sits, and the link standing in for
/// it (whose inode a user's rename keeps).
#[derive(Clone)]
pub(super) struct Exchanged {
    pub(super) rel: Vec<u8>,
    pub(super) dir: Arc<OwnedFd>,
    pub(super) fname: Vec<u8>,
    /// The reserved name that now holds what stood at `fname`.
    pub(super) held: Vec<u8>,
    pub(super) link_ino: u64,
    pub(super) link_handle: Option<Vec<u8>>,
    /// Swapped by rename with the original kept under an attic name (no RENAME_EXCHANGE).
    pub(super) attic: bool,
}

/// Where one name's original went when its swap was put back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutBack {
    /// Back under its own name, in place of the link.
    Restored,
    /// The user had moved the link: the original took its place there (the path the user's
    /// file now has, relative to SOURCE).
    Followed(Vec<u8>),
    /// One of several names of a hard-linked original whose link the user removed: dropped,
    /// its other names keep the data.
    Dropped,
    /// The link was gone (deleted, replaced, or out of reach): the original was saved under
    /// this path beside its old name. `link_alive` when the link may still exist elsewhere
    /// (then its copy must stay at DEST for it).
    Saved { as_rel: Vec<u8>, link_alive: bool },
    /// It could not be moved (an error): it stays under evac's reserved name for the next run's
    /// recovery, and the copy stays too.
    Stuck(String),
}

impl PutBack {
    /// Whether a link may still name the copy, which must then stay at DEST.
    pub fn keeps_copy(&self) -> bool {
        matches!(
            self,
            PutBack::Saved {
                link_alive: true,
                ..
            } | PutBack::Stuck(_)
        )
    }
}

/// A swap from its first exchange until its originals are removed or put back, shared with
/// the lease-break handler. Its lock is held by whoever changes which name an original has (the
/// exchanges, putting them back, the final unlink) and by the handler, which puts the
/// originals back before the lease is let go: a writer whose `open()` of the original was
/// blocked by the lease gets it back only once the original is where the user's path leads.
pub struct SwapShared {
    ctx: Arc<Ctx>,
    inner: std::sync::Mutex<SwapInner>,
}

#[derive(Default)]
pub struct SwapInner {
    exchanged: Vec<Exchanged>,
    /// How the originals were put back, and why.
    pub put_back: Vec<PutBack>,
    pub why: Option<String>,
}

impl SwapShared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SwapInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put_back_locked(&self, g: &mut SwapInner, why: &str) {
        if g.exchanged.is_empty() {
            return;
        }
        for e in std::mem::take(&mut g.exchanged).iter().rev() {
            let r = put_back_name(&self.ctx, e);
            g.put_back.push(r);
        }
        g.why.get_or_insert_with(|| why.to_string());
    }
}

impl OnBreak for SwapShared {
    fn on_break(&self) {
        let mut g = self.lock();
        self.put_back_locked(
            &mut g,
            "opened for writing just after the swap; put back before the writer's open() returned",
        );
    }
}

/// Make each name's link under its temporary name beside the original, with the original's
/// owner and times. Its inode and file handle go into the journal with the placement, before
/// any exchange, so that recovery can follow a link a user moves before the relocation is
/// recorded.
pub fn make_links(ctx: &Ctx, c: &mut Copied) -> std::result::Result<(), String> {
    let st = c.st;
    for n in c.names.iter_mut() {
        let rel = &n.rec.path;
        let dir = n.src_dir.as_fd();
        let lnk = ctx.tmp_name(n.rec.id, "lnk");
        let target = ctx.link_target(rel);
        steps::at(Step::SwapSymlink, rel);
        let made = match fsx::symlink_at(&target, dir, &lnk) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A leftover of ours (the name carries this journal's id and the file's id).
                let _ = fsx::unlink_if_exists(dir, &lnk);
                fsx::symlink_at(&target, dir, &lnk)
            }
            r => r,
        };
        made.map_err(|e| format!("create the link: {e}"))?;
        let ino = fsx::stat_at(dir, &lnk)
            .map_err(|e| format!("stat the link: {e}"))?
            .st_ino;
        n.link_ino = ino;
        n.link_handle = fsx::handle_at(dir, &lnk).ok();
        steps::at(Step::SwapLinkMeta, rel);
        fsx::set_link_meta(
            dir,
            &lnk,
            st.st_uid,
            st.st_gid,
            fsx::atime_ns(&st),
            fsx::mtime_ns(&st),
        )
        .map_err(|e| format!("set owner and times of the link: {e}"))?;
    }
    Ok(())
}

/// Remove the links `make_links` made that are still under their temporary names.
pub(super) fn drop_links(ctx: &Ctx, c: &Copied) {
    for n in &c.names {
        let lnk = ctx.tmp_name(n.rec.id, "lnk");
        if n.link_ino != 0 && is_our_link(n.src_dir.as_fd(), &lnk, n.link_ino) {
            steps::at(Step::SwapUnlinkLink, &n.rec.path);
            let _ = fsx::unlink_at(n.src_dir.as_fd(), &lnk);
        }
    }
}

/// Swap every name of a placed copy for a link, all or nothing.
pub fn swap(
    ctx: &Arc<Ctx>,
    mut c: Box<Copied>,
    writers: Option<&std::collections::HashSet<(u64, u64)>>,
) -> Swap {
    if let Some(w) = writers {
        if w.contains(&(c.st.st_dev, c.st.st_ino)) {
            let why = "open for writing by another process";
            let why = ctx.mapped.busy_reason(why, &c.st, true);
            return Swap::Deferred(c, Why::new(Cause::Busy, why));
        }
    }
    if !ctx.relocate_mapped && ctx.mapped.contains(c.st.st_dev, c.st.st_ino) {
        return Swap::Deferred(c, Why::new(Cause::Busy, MAPPED));
    }
    let shared = Arc::new(SwapShared {
        ctx: ctx.clone(),
        inner: Default::default(),
    });
    c.swap = Some(shared.clone());
    c.src.lease.set_on_break(Some(shared.clone()));
    let mut g = shared.lock();
    for i in 0..c.names.len() {
        match swap_one(ctx, &c, &c.names[i], &mut g) {
            Ok(()) => {}
            Err(why) => {
                let text = match &why {
                    SwapErr::Changed(s) | SwapErr::Error(s) => s.clone(),
                };
                shared.put_back_locked(&mut g, &text);
                drop(g);
                return match why {
                    SwapErr::Changed(s) => Swap::Deferred(c, Why::new(Cause::Changed, s)),
                    SwapErr::Error(s) => Swap::Failed(c, Why::new(Cause::Error, s)),
                };
            }
        }
    }
    drop(g);
    Swap::Swapped(c)
}

enum SwapErr {
    Changed(String),
    Error(String),
}

/// Exchange one name for its link (made by `make_links`), under the swap's lock `g`, where the
/// exchanged name goes at once (so that a failed check after it puts it back); before the
/// exchange, a failure leaves the link under its temporary name for `discard`.
fn swap_one(
    ctx: &Ctx,
    c: &Copied,
    n: &Name,
    g: &mut SwapInner,
) -> std::result::Result<(), SwapErr> {
    let (_, fname) = fsx::split_parent(&n.rec.path);
    let rel = &n.rec.path;
    let dir = n.src_dir.as_fd();
    let lnk = ctx.tmp_name(n.rec.id, "lnk");
    let bail = |msg: SwapErr| msg;
    if n.link_ino == 0 || !is_our_link(dir, &lnk, n.link_ino) {
        return Err(bail(SwapErr::Error(
            "its link is no longer under its temporary name".into(),
        )));
    }
    let (link_ino, link_handle) = (n.link_ino, n.link_handle.clone());
    // Pre-check: the name still holds the inode we copied, unchanged, with our lease intact.
    match fsx::stat_at(dir, fname) {
        Ok(s)
            if same_content_identity(&s, &c.st) && fsx::ctime_ns(&s) == fsx::ctime_ns(&c.st)
                || (c.names.len() > 1 && same_content_identity(&s, &c.st)) => {}
        Ok(_) => return Err(bail(SwapErr::Changed("changed before the swap".into()))),
        Err(e) => {
            return Err(bail(SwapErr::Changed(format!(
                "vanished before the swap ({e})"
            ))))
        }
    }
    if !c.src.intact() {
        return Err(bail(SwapErr::Changed(
            "opened for writing before the swap".into(),
        )));
    }
    let mut e = Exchanged {
        rel: rel.clone(),
        dir: n.src_dir.clone(),
        fname: fname.to_vec(),
        held: lnk.clone(),
        link_ino,
        link_handle,
        attic: false,
    };
    steps::at(Step::SwapExchange, rel);
    match fsx::rename_exchange(dir, &lnk, dir, fname) {
        Ok(()) => {}
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
            ) =>
        {
            ctx.no_exchange_seen.store(true, Ordering::Relaxed);
            e.attic = true;
            e.held = ctx.tmp_name(n.rec.id, "attic");
            return swap_attic(c, e, &lnk, g);
        }
        // The user renamed or removed the name since the check: changed, tried again later.
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
            return Err(bail(SwapErr::Changed(format!(
                "vanished before the swap ({err})"
            ))))
        }
        Err(err) => {
            return Err(bail(SwapErr::Error(format!(
                "swap the file for its link: {err}"
            ))))
        }
    }
    g.exchanged.push(e);
    // Post-check: what we swapped out is the inode we copied, unchanged (a chmod between the
    // pre-check and the exchange shows here), and nobody opened it for writing.
    let ok = matches!(fsx::stat_at(dir, &lnk), Ok(s) if unchanged_since_copy(&s, &c.st))
        && c.src.intact();
    if !ok {
        return Err(SwapErr::Changed(
            "written to while being swapped; put back".into(),
        ));
    }
    Ok(())
}

/// Without RENAME_EXCHANGE: keep the original under an attic name, replace the name with the
/// link. On failure before the replace, the caller removes the link.
fn swap_attic(
    c: &Copied,
    e: Exchanged,
    lnk: &[u8],
    g: &mut SwapInner,
) -> std::result::Result<(), SwapErr> {
    let dir_fd = e.dir.clone();
    let dir = dir_fd.as_fd();
    let _ = fsx::unlink_if_exists(dir, &e.held);
    steps::at(Step::SwapAtticLink, &e.rel);
    fsx::link_at(dir, &e.fname, dir, &e.held)
        .map_err(|err| SwapErr::Error(format!("keep the original in the attic: {err}")))?;
    match fsx::stat_at(dir, &e.held) {
        Ok(s) if same_content_identity(&s, &c.st) => {}
        _ => {
            let _ = fsx::unlink_if_exists(dir, &e.held);
            return Err(SwapErr::Changed("changed before the swap".into()));
        }
    }
    steps::at(Step::SwapAtticReplace, &e.rel);
    if let Err(err) = fsx::rename_replace(dir, lnk, dir, &e.fname) {
        let _ = fsx::unlink_if_exists(dir, &e.held);
        return Err(SwapErr::Error(format!(
            "replace the file with its link: {err}"
        )));
    }
    let held = e.held.clone();
    g.exchanged.push(e);
    let ok = matches!(fsx::stat_at(dir, &held), Ok(s) if unchanged_since_copy(&s, &c.st))
        && c.src.intact();
    if !ok {
        return Err(SwapErr::Changed(
            "written to while being swapped; put back".into(),
        ));
    }
    Ok(())
}

/// Where the link `e` stands now, if a user moved it elsewhere in SOURCE: its directory, name
/// and path. Found by its file handle (root only), and checked to still be that link.
fn locate_link(ctx: &Ctx, e: &Exchanged) -> Option<(OwnedFd, Vec<u8>, Vec<u8>)> {
    let p = fsx::probe_handle(ctx.src_root.as_fd(), e.link_handle.as_deref()?).ok()??;
    if p.ino != e.link_ino || p.target.as_deref() != Some(ctx.link_target(&e.rel).as_slice()) {
        return None;
    }
    let at = p.path?;
    let rel = at.strip_prefix(ctx.src_path()?).ok()?;
    let rel = rel.as_os_str().as_encoded_bytes().to_vec();
    let (pd, name) = fsx::split_parent(&rel);
    if name.is_empty() {
        return None;
    }
    let dir = fsx::resolve_dir(ctx.src_root.as_fd(), pd).ok()?;
    let st = fsx::stat_at(dir.as_fd(), name).ok()?;
    (st.st_ino == e.link_ino).then(|| (dir, name.to_vec(), rel.clone()))
}

/// Whether the link `e` may still exist somewhere (unknown counts as yes).
fn link_may_live(ctx: &Ctx, e: &Exchanged) -> bool {
    let Some(h) = e.link_handle.as_deref() else {
        return true;
    };
    match fsx::probe_handle(ctx.src_root.as_fd(), h) {
        Ok(None) => false,
        Ok(Some(p)) => p.ino == e.link_ino,
        Err(_) => true,
    }
}

fn is_our_link(dir: BorrowedFd<'_>, name: &[u8], ino: u64) -> bool {
    fsx::stat_at(dir, name)
        .is_ok_and(|s| s.st_ino == ino && fsx::file_type(&s) == rustix::fs::FileType::Symlink)
}

/// Put what a swap moved aside (the original, or whatever a user had put at the name in the
/// instant before) back where the user's path now leads: in place of the link, wherever the
/// user moved it; never over anything else. What came out of each exchange is checked to be the
/// link (a user may act in between): if not, it goes back and the next way is tried.
pub(super) fn put_back_name(ctx: &Ctx, e: &Exchanged) -> PutBack {
    let dir = e.dir.as_fd();
    if e.attic {
        // No exchange here: the attic name goes back over the link if it is still at its name.
        if is_our_link(dir, &e.fname, e.link_ino) {
            steps::at(Step::SwapUndo, &e.rel);
            return match fsx::rename_replace(dir, &e.held, dir, &e.fname) {
                Ok(()) => PutBack::Restored,
                Err(err) => PutBack::Stuck(format!("put back the original: {err}")),
            };
        }
        return save_original(ctx, e);
    }
    for _ in 0..4 {
        steps::at(Step::SwapUndo, &e.rel);
        if is_our_link(dir, &e.fname, e.link_ino) {
            match fsx::rename_exchange(dir, &e.held, dir, &e.fname) {
                Ok(()) => {}
                // The user moved the link in that instant: look again.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => return PutBack::Stuck(format!("put back the original: {err}")),
            }
            if is_our_link(dir, &e.held, e.link_ino) {
                steps::at(Step::SwapUnlinkLink, &e.rel);
                let _ = fsx::unlink_at(dir, &e.held);
                return PutBack::Restored;
            }
            // The user replaced the link in that instant: theirs goes back to its name.
            let _ = fsx::rename_exchange(dir, &e.held, dir, &e.fname);
            continue;
        }
        if let Some((d2, n2, rel2)) = locate_link(ctx, e) {
            steps::at(Step::SwapFollowLink, &e.rel);
            match fsx::rename_exchange(dir, &e.held, d2.as_fd(), &n2) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => {
                    return PutBack::Stuck(format!(
                        "put back the original where its link went: {err}"
                    ))
                }
            }
            if is_our_link(dir, &e.held, e.link_ino) {
                steps::at(Step::SwapUnlinkLink, &e.rel);
                let _ = fsx::unlink_at(dir, &e.held);
                return PutBack::Followed(rel2);
            }
            let _ = fsx::rename_exchange(dir, &e.held, d2.as_fd(), &n2);
            continue;
        }
        break;
    }
    save_original(ctx, e)
}

/// The link is gone (a user deleted or replaced it, or moved it out of reach): nothing of the
/// user's is replaced. The original is kept beside its old name as `NAME.evac-saved` (an
/// ordinary file the next walk relocates like any other), unless it is one of several names of
/// a hard-linked file (its other names keep the data).
fn save_original(ctx: &Ctx, e: &Exchanged) -> PutBack {
    let dir = e.dir.as_fd();
    let link_alive = link_may_live(ctx, e);
    match fsx::stat_at(dir, &e.held) {
        Ok(s) if s.st_nlink > 1 => {
            steps::at(Step::SwapSaveOriginal, &e.rel);
            return match fsx::unlink_at(dir, &e.held) {
                Ok(()) => PutBack::Dropped,
                Err(err) => PutBack::Stuck(format!("remove a spare name of the original: {err}")),
            };
        }
        Ok(_) => {}
        Err(err) => return PutBack::Stuck(format!("find the original: {err}")),
    }
    steps::at(Step::SwapSaveOriginal, &e.rel);
    match save_beside(dir, &e.held, &e.fname) {
        Ok(name) => PutBack::Saved {
            as_rel: fsx::join(fsx::split_parent(&e.rel).0, &name),
            link_alive,
        },
        Err(err) => PutBack::Stuck(format!("save the original: {err}")),
    }
}

/// Rename `held` to a free `NAME.evac-saved[.K]` beside `fname`, never over anything.
fn save_beside(dir: BorrowedFd<'_>, held: &[u8], fname: &[u8]) -> io::Result<Vec<u8>> {
    for k in 0..1000u32 {
        let mut name = fname.to_vec();
        name.extend_from_slice(b".evac-saved");
        if k > 0 {
            name.extend_from_slice(format!(".{k}").as_bytes());
        }
        match fsx::rename_noreplace(dir, held, dir, &name) {
            Ok(()) => return Ok(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Put a swapped copy's originals back (the batch could not be made durable, say).
pub fn unswap(c: &Copied, why: &str) {
    if let Some(s) = &c.swap {
        let mut g = s.lock();
        s.put_back_locked(&mut g, why);
    }
}

/// After the journal has recorded the batch as relocated: unlink the originals, checking each
/// one last time under the swap's lock (a late write puts the originals back and the file is
/// retried; a lease break after this finds nothing left to put back).
pub fn finish(c: &Copied) -> std::result::Result<(), String> {
    let Some(s) = &c.swap else { return Ok(()) };
    let mut g = s.lock();
    if let Some(why) = &g.why {
        return Err(why.clone());
    }
    let unchanged = g.exchanged.iter().all(|e| {
        matches!(fsx::stat_at(e.dir.as_fd(), &e.held), Ok(st) if unchanged_since_copy(&st, &c.st))
    });
    if !unchanged || !c.src.intact() {
        let why = "written to just after the swap; put back";
        s.put_back_locked(&mut g, why);
        return Err(why.into());
    }
    while let Some(e) = g.exchanged.first() {
        steps::at(Step::FinishUnlink, &e.rel);
        fsx::unlink_at(e.dir.as_fd(), &e.held)
            .map_err(|err| format!("remove the swapped-out original: {err}"))?;
        g.exchanged.remove(0);
    }
    Ok(())
}

/// The reason recorded for a file whose swap was put back: `why`, and where each original went
/// when not simply back under its name.
pub fn put_back_reason(why: Why, c: &Copied) -> Why {
    let Why {
        cause,
        text: mut out,
    } = why;
    for (p, n) in c.put_back().iter().zip(c.names.iter().rev()) {
        let q = quoted(&n.rec.path);
        match p {
            PutBack::Restored | PutBack::Dropped => {}
            PutBack::Followed(to) => out.push_str(&format!(
                "; its link had been renamed to {} by a user, and the original took its place there",
                quoted(to)
            )),
            PutBack::Saved { as_rel, link_alive } => out.push_str(&format!(
                "; the link of {q} had been removed or replaced by a user{}: the original was saved as {}",
                if *link_alive { " (it may live on elsewhere: its copy stays at DEST)" } else { "" },
                quoted(as_rel)
            )),
            PutBack::Stuck(e) => out.push_str(&format!(
                "; the original of {q} could not be put back ({e}): it waits under its temporary name for the next run"
            )),
        }
    }
    if c.written_through_link() {
        out.push_str(
            "; the copy had been written to through its link meanwhile and is kept in DEST's trash",
        );
    }
    Why::new(cause, out)
}
