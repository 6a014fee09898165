//! The per-file protocol: copy under a lease into a 0600 temporary at DEST, hashing as the bytes
//! pass; then, a batch at a time, make the copies durable, make each name's link beside its
//! original and record both (state `placed`), place the copies with no-replace links, and swap
//! each original for its link with RENAME_EXCHANGE, checking the swapped-out original before it
//! is unlinked. Also the recovery of anything a crash left half done.
//!
//! From the first exchange until the original is removed, a swap's state is shared with the
//! lease-break handler (`SwapShared`): a writer who opened the original just before the exchange
//! breaks the lease, and the handler puts the original back where the user's path now leads (in
//! place of the link, wherever the user moved it, found by the link's file handle) before it lets
//! the lease go, so the kernel returns the writer's `open()` only then.

pub mod faults;
pub mod names;

use crate::error::{Error, IoContext, Result};
use crate::journal::{FileRec, Journal};
use crate::sys::busy::Mapped;
use crate::sys::fsx::{self, Stat};
use crate::sys::signals::{lease_signal, Lease, Leases, OnBreak};
use crate::sys::steps::{self, Step};
use crate::util::escape::quoted;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Everything the protocol needs that stays the same for a run.
pub struct Ctx {
    pub src_root: OwnedFd,
    pub dst_root: OwnedFd,
    pub src_dev: u64,
    pub jid: String,
    pub link_prefix: Vec<u8>,
    pub leases: Arc<Leases>,
    pub mapped: Arc<Mapped>,
    pub relocate_mapped: bool,
    /// How HSM stubs are told apart (I4: never opened).
    pub hsm: crate::hsm::detect::Mode,
    /// --bwlimit and --files-per-sec, shared by the copy workers.
    pub limiter: Arc<crate::pace::throttle::Limiter>,
    pub stop: Arc<AtomicBool>,
    /// Set once a file's filesystem refused a lease; the run log says so once.
    pub no_lease_seen: AtomicBool,
    /// Set once RENAME_EXCHANGE was refused; swaps then use the attic fallback.
    pub no_exchange_seen: AtomicBool,
    /// Files to relocate with another copy's data (`evac recover`), by file id.
    pub recoveries: std::collections::HashMap<i64, crate::journal::RecoveryRow>,
}

impl Ctx {
    pub fn tmp_name(&self, id: i64, suffix: &str) -> Vec<u8> {
        format!(".evac-{}-{}.{}", self.jid, id, suffix).into_bytes()
    }

    /// SOURCE's path as the kernel names its root fd now.
    pub fn src_path(&self) -> Option<std::path::PathBuf> {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", self.src_root.as_raw_fd())).ok()
    }

    pub fn reserved_prefix(&self) -> Vec<u8> {
        format!(".evac-{}-", self.jid).into_bytes()
    }

    /// The file id a reserved name carries, if it is one of ours.
    pub fn parse_tmp(&self, name: &[u8]) -> Option<(i64, String)> {
        let rest = name.strip_prefix(self.reserved_prefix().as_slice())?;
        let rest = std::str::from_utf8(rest).ok()?;
        let (id, suffix) = rest.split_once('.')?;
        Some((id.parse().ok()?, suffix.to_string()))
    }

    pub fn link_target(&self, rel: &[u8]) -> Vec<u8> {
        let mut t = self.link_prefix.clone();
        if !t.ends_with(b"/") {
            t.push(b'/');
        }
        t.extend_from_slice(rel);
        t
    }
}

/// An open source file, possibly under a read lease, that unregisters before it closes.
pub struct Held {
    pub fd: OwnedFd,
    pub lease: Arc<Lease>,
    pub leased: bool,
    leases: Arc<Leases>,
}

impl Held {
    /// True while nobody has tried to open the file for writing since we took the lease (a
    /// break the kernel has started shows in F_GETLEASE before its signal is handled).
    pub fn intact(&self) -> bool {
        if self.lease.broken() {
            return false;
        }
        !self.leased || fsx::get_lease(self.fd.as_fd()).ok() == Some(fsx::LEASE_RDLCK)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leases.unregister(self.fd.as_raw_fd());
        if self.leased {
            let _ = fsx::set_lease(self.fd.as_fd(), fsx::LEASE_UNLCK, 0);
        }
    }
}

/// One inode to relocate with every name it has in SOURCE (one name unless hard-linked).
#[derive(Debug)]
pub struct Job {
    pub names: Vec<FileRec>,
}

/// One name of a copied inode, with its directories open.
pub struct Name {
    pub rec: FileRec,
    pub src_dir: Arc<OwnedFd>,
    pub dst_dir: OwnedFd,
    pub dst_tmp: Vec<u8>,
    /// The inode of the SOURCE link once swapped in (a later rename of the link keeps it).
    pub link_ino: u64,
    /// Its file handle, where the filesystem gives one.
    pub link_handle: Option<Vec<u8>>,
}

impl Name {
    /// A name not swapped yet.
    fn new(rec: FileRec, src_dir: OwnedFd, dst_dir: OwnedFd, dst_tmp: Vec<u8>) -> Name {
        Name {
            rec,
            src_dir: Arc::new(src_dir),
            dst_dir,
            dst_tmp,
            link_ino: 0,
            link_handle: None,
        }
    }
}

pub struct Copied {
    pub names: Vec<Name>,
    pub src: Held,
    /// The source as it was when the copy began.
    pub st: Stat,
    /// The copy, to notice writes made through the link if a swap has to be undone.
    pub dst: OwnedFd,
    pub dst_st: Stat,
    pub hash: [u8; 32],
    pub bytes: u64,
    /// The swap, once begun: shared with the lease-break handler.
    pub swap: Option<Arc<SwapShared>>,
}

impl Copied {
    fn new(names: Vec<Name>, src: Held, st: Stat, dst: OwnedFd, dst_st: Stat) -> Copied {
        Copied {
            names,
            src,
            st,
            dst,
            dst_st,
            hash: [0; 32],
            bytes: 0,
            swap: None,
        }
    }

    /// What became of the originals if the swap was put back (by a check, or a lease break).
    pub fn put_back(&self) -> Vec<PutBack> {
        self.swap
            .as_ref()
            .map(|s| s.lock().put_back.clone())
            .unwrap_or_default()
    }

    /// Whether the copy was written through its link since it was made.
    pub fn written_through_link(&self) -> bool {
        fsx::fstat(self.dst.as_fd()).is_ok_and(|now| {
            fsx::mtime_ns(&now) != fsx::mtime_ns(&self.dst_st) || now.st_size != self.dst_st.st_size
        })
    }
}

pub enum Outcome {
    Copied(Box<Copied>),
    Deferred(Job, String),
    Failed(Job, String),
    /// An HSM stub found at copy time (released since the walk, or during the copy).
    StagedOut(Job, String),
    /// The path is no longer a regular file in SOURCE.
    Gone(Job),
    /// Stopped before it finished; back to pending.
    Aborted(Job),
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// Why `name` (stat'ed as `st`) must not be opened, if the HSM has moved it away (metadata
/// modes only: an --hsm cmd:PROGRAM is asked during the walk).
fn stub_reason(ctx: &Ctx, dir: BorrowedFd<'_>, name: &[u8], st: &Stat) -> Option<String> {
    match crate::hsm::detect::classify(&ctx.hsm, dir, name, st) {
        Ok(c) if c.openable() => None,
        Ok(c) => Some(c.why),
        Err(e) => Some(crate::hsm::detect::Classified::unknown(&e.to_string()).why),
    }
}

fn same_content_identity(a: &Stat, b: &Stat) -> bool {
    a.st_ino == b.st_ino
        && a.st_dev == b.st_dev
        && a.st_size == b.st_size
        && fsx::mtime_ns(a) == fsx::mtime_ns(b)
}

/// The same inode, unchanged in content, mode and owner since it was copied. (Its ctime is no
/// witness once it has been exchanged: the exchange itself changes it.)
fn unchanged_since_copy(a: &Stat, b: &Stat) -> bool {
    same_content_identity(a, b)
        && a.st_mode == b.st_mode
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
}

/// Worker side: copy one inode to temporaries at DEST (one per name).
pub fn copy_job(ctx: &Ctx, job: Job, buf: &mut [u8]) -> Outcome {
    const ATTEMPTS: u32 = 3;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        match copy_once(ctx, &job, buf) {
            Ok(Attempt::Done(c)) => return Outcome::Copied(c),
            Ok(Attempt::Retry(why)) => last = why,
            Ok(Attempt::Defer(why)) => return Outcome::Deferred(job, why),
            Ok(Attempt::StagedOut(why)) => return Outcome::StagedOut(job, why),
            Ok(Attempt::Gone) => return Outcome::Gone(job),
            Ok(Attempt::Aborted) => return Outcome::Aborted(job),
            Ok(Attempt::Fail(why)) => return Outcome::Failed(job, why),
            Err(e) => return crate::protocol::faults::copy_failed(job, &e),
        }
    }
    Outcome::Deferred(job, last)
}

enum Attempt {
    Done(Box<Copied>),
    Retry(String),
    Defer(String),
    /// An HSM stub (or its state unknown): never opened (I4).
    StagedOut(String),
    Gone,
    Aborted,
    /// Not to be tried again as it stands (a recovery whose candidate does not hold).
    Fail(String),
}

/// The kernel stores at most PATH_MAX - 1 bytes in a symlink.
const MAX_LINK_TARGET: usize = 4095;

fn copy_once(ctx: &Ctx, job: &Job, buf: &mut [u8]) -> Result<Attempt> {
    let first = &job.names[0];
    if let Some(r) = job
        .names
        .iter()
        .find(|r| ctx.link_target(&r.path).len() > MAX_LINK_TARGET)
    {
        return Err(Error::Setup(format!(
            "its link target would be {} bytes, over the kernel's symlink limit of {MAX_LINK_TARGET}; a shorter --link-prefix may fit",
            ctx.link_target(&r.path).len()
        )));
    }
    let (pdir, name) = fsx::split_parent(&first.path);
    let src_dir = match fsx::resolve_dir(ctx.src_root.as_fd(), pdir) {
        Ok(d) => d,
        Err(e) if is_gone(&e) => return Ok(Attempt::Gone),
        Err(e) => return Err(Error::io("open source directory of", &first.path, e)),
    };
    let st = match fsx::stat_at(src_dir.as_fd(), name) {
        Ok(st) => st,
        Err(e) if is_gone(&e) => return Ok(Attempt::Gone),
        Err(e) => return Err(Error::io("stat", &first.path, e)),
    };
    if fsx::file_type(&st) != rustix::fs::FileType::RegularFile {
        return Ok(Attempt::Gone);
    }
    if job.names.len() > 1 && (st.st_ino != first.ino || st.st_nlink != job.names.len() as u64) {
        return Ok(Attempt::Defer(format!(
            "hard links changed during the run ({} names found, link count now {})",
            job.names.len(),
            st.st_nlink
        )));
    }
    if job.names.len() == 1 && st.st_nlink > 1 {
        return Ok(Attempt::Defer(
            "gained a hard link during the run; relocated with its links next time".into(),
        ));
    }
    if let Some(r) = ctx.recoveries.get(&first.id) {
        return recover_copy(ctx, job, buf, r, src_dir, &st);
    }
    if !ctx.relocate_mapped && ctx.mapped.contains(st.st_dev, st.st_ino) {
        return Ok(Attempt::Defer(
            "a process is running or has mapped it (use --relocate-mapped to force)".into(),
        ));
    }
    // I4: the HSM state from metadata, again here, right before the open.
    if let Some(why) = stub_reason(ctx, src_dir.as_fd(), name, &st) {
        return Ok(Attempt::StagedOut(why));
    }
    // Held to the end of this copy: the governor counts it as an active worker.
    let Some(_turn) = ctx.limiter.file(&mut || !ctx.stop.load(Ordering::Relaxed)) else {
        return Ok(Attempt::Aborted);
    };
    let fd = match fsx::open_read(src_dir.as_fd(), name) {
        Ok(fd) => fd,
        Err(e) if is_gone(&e) => return Ok(Attempt::Gone),
        // O_NONBLOCK open refused because another program holds a write lease (a file server's
        // oplock, say): it is in use, not broken.
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            let why = "leased for writing by another program";
            return Ok(Attempt::Defer(ctx.mapped.busy_reason(why, &st, false)));
        }
        Err(e) => return Err(Error::io("open", &first.path, e)),
    };
    let fst = fsx::fstat(fd.as_fd()).ctx("stat", &first.path)?;
    if fst.st_ino != st.st_ino || fst.st_dev != st.st_dev {
        return Ok(Attempt::Retry("replaced while being opened".into()));
    }
    if st.st_size as u64 >= 1 << 20 {
        // Large files are read once, front to back: ask for aggressive readahead.
        // Except while governed: then the disks must stay responsive to others, and a readahead
        // window of megabytes queues requests that a user's small read waits behind.
        let advice = if ctx.limiter.streaming() {
            rustix::fs::Advice::Random
        } else {
            rustix::fs::Advice::Sequential
        };
        let _ = rustix::fs::fadvise(&fd, 0, None, advice);
    }
    let src = take_lease(ctx, fd, &first.path)?;
    let src = match src {
        Some(h) => h,
        None => {
            let why = "open for writing by another process";
            return Ok(Attempt::Defer(ctx.mapped.busy_reason(why, &fst, true)));
        }
    };
    let st = fst;
    if let Some(why) = crate::protocol::faults::source_refuses(src.fd.as_fd(), src_dir.as_fd()) {
        return Err(Error::Setup(why));
    }

    // DEST side: the first name's temporary receives the data. Dropped, it takes itself away.
    let (t, dst) = dest_temporary(ctx, first)?;

    let mut hasher = blake3::Hasher::new();
    let chunk = ctx.limiter.chunk(buf.len());
    let mut stopped_by_user = false;
    let outcome = {
        let mut keep_going = |n: u64| {
            let mut go_on = || {
                if ctx.stop.load(Ordering::Relaxed) {
                    stopped_by_user = true;
                    return false;
                }
                !src.lease.broken()
            };
            ctx.limiter.bytes(n, &mut go_on) && go_on()
        };
        steps::at(Step::CopyData, &first.path);
        fsx::copy_sparse(
            src.fd.as_fd(),
            dst.as_fd(),
            st.st_size as u64,
            &mut hasher,
            &mut buf[..chunk],
            &mut keep_going,
            ctx.limiter.streaming(),
        )
    };
    match outcome.map_err(|e| crate::protocol::faults::copy_error(&first.path, e))? {
        fsx::CopyOutcome::Done { .. } => {}
        fsx::CopyOutcome::Aborted if stopped_by_user => return Ok(Attempt::Aborted),
        fsx::CopyOutcome::Aborted => {
            return Ok(Attempt::Defer("opened for writing during the copy".into()))
        }
        fsx::CopyOutcome::Shrunk => return Ok(Attempt::Retry("changed during the copy".into())),
    }
    let after = fsx::fstat(src.fd.as_fd()).ctx("stat", &first.path)?;
    if !same_content_identity(&st, &after) || fsx::ctime_ns(&st) != fsx::ctime_ns(&after) {
        // Deleted, or renamed away, while being read: the next attempt looks at the name again.
        let still_here = fsx::stat_at(src_dir.as_fd(), name)
            .is_ok_and(|s| s.st_ino == after.st_ino && s.st_dev == after.st_dev);
        if after.st_nlink == 0 || !still_here {
            return Ok(Attempt::Retry("changed during the copy".into()));
        }
        // Released by the HSM while being read (its blocks freed): what was read may be the
        // stub's zeros; it is a stub now, never to be copied as data.
        if let Some(why) = stub_reason(ctx, src_dir.as_fd(), name, &after) {
            return Ok(Attempt::StagedOut(format!(
                "{why}; released while being copied"
            )));
        }
        return Ok(Attempt::Retry("changed during the copy".into()));
    }
    let xattrs = fsx::read_xattrs(src.fd.as_fd()).ctx("read xattrs of", &first.path);
    let dst_st = give_metadata(&dst, &st, xattrs, &first.path)?;

    // Further hard-link names: placement links each from the copy's fd.
    let mut more = Vec::new();
    for rec in &job.names[1..] {
        match link_name(ctx, rec, &st)? {
            Some(n) => more.push(n),
            None => return Ok(Attempt::Defer("hard links changed during the run".into())),
        }
    }
    let (dst_dir, tmp) = t.keep();
    let mut names = vec![Name::new(first.clone(), src_dir, dst_dir, tmp)];
    names.extend(more);
    let mut c = Copied::new(names, src, st, dst, dst_st);
    c.hash = *hasher.finalize().as_bytes();
    c.bytes = after.st_size as u64;
    Ok(Attempt::Done(Box::new(c)))
}

/// `evac recover`: copy another file's data (the candidate, checked against the leftover's
/// fingerprint when it was requested) to DEST with the leftover's metadata, without opening the
/// leftover (it may be a stub: O_PATH only, I4). The swap that follows is the normal one: it
/// checks that the name still holds the leftover, unchanged.
fn recover_copy(
    ctx: &Ctx,
    job: &Job,
    buf: &mut [u8],
    r: &crate::journal::RecoveryRow,
    src_dir: OwnedFd,
    st: &Stat,
) -> Result<Attempt> {
    let first = &job.names[0];
    if job.names.len() > 1 {
        return Ok(Attempt::Fail(
            "has hard links: recover each name's data by hand".into(),
        ));
    }
    let (_, name) = fsx::split_parent(&first.path);
    let Some(_turn) = ctx.limiter.file(&mut || !ctx.stop.load(Ordering::Relaxed)) else {
        return Ok(Attempt::Aborted);
    };
    let fd = match fsx::open_path(src_dir.as_fd(), name) {
        Ok(fd) => fd,
        Err(e) if is_gone(&e) => return Ok(Attempt::Gone),
        Err(e) => return Err(Error::io("open (O_PATH)", &first.path, e)),
    };
    let fst = fsx::fstat(fd.as_fd()).ctx("stat", &first.path)?;
    if !same_content_identity(st, &fst) {
        return Ok(Attempt::Retry("replaced while being opened".into()));
    }
    let src = Held {
        lease: ctx.leases.register(fd.as_raw_fd()),
        fd,
        leased: false,
        leases: ctx.leases.clone(),
    };
    // Resolved from / without following a symlink: nobody can redirect the read.
    let (cand, cst) = match crate::sys::fsx::open_absolute(&r.candidate) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Attempt::Fail(format!(
                "recover: open the candidate {}: {e}",
                crate::util::escape::quoted(&r.candidate)
            )))
        }
    };
    if fsx::file_type(&cst) != rustix::fs::FileType::RegularFile
        || cst.st_size as u64 != r.size
        || fst.st_size as u64 != r.size
    {
        return Ok(Attempt::Fail(format!(
            "recover: the candidate {} ({} bytes) or the leftover ({} bytes) is no longer the size checked ({})",
            crate::util::escape::quoted(&r.candidate),
            cst.st_size,
            fst.st_size,
            r.size
        )));
    }
    let (t, dst) = dest_temporary(ctx, first)?;
    let mut hasher = blake3::Hasher::new();
    let chunk = ctx.limiter.chunk(buf.len());
    steps::at(Step::CopyData, &first.path);
    let outcome = fsx::copy_sparse(
        cand.as_fd(),
        dst.as_fd(),
        r.size,
        &mut hasher,
        &mut buf[..chunk],
        &mut |n| {
            let mut go_on = || !ctx.stop.load(Ordering::Relaxed);
            ctx.limiter.bytes(n, &mut go_on) && go_on()
        },
        ctx.limiter.streaming(),
    );
    let hash = *hasher.finalize().as_bytes();
    match outcome {
        Ok(fsx::CopyOutcome::Done { .. }) if hash == r.blake3 => {}
        Ok(fsx::CopyOutcome::Done { .. }) | Ok(fsx::CopyOutcome::Shrunk) => {
            return Ok(Attempt::Fail(format!(
                "recover: the candidate {} changed since it was checked",
                crate::util::escape::quoted(&r.candidate)
            )))
        }
        Ok(fsx::CopyOutcome::Aborted) => return Ok(Attempt::Aborted),
        Err(e) => {
            return Ok(Attempt::Fail(format!(
                "recover: read the candidate {}: {e}",
                crate::util::escape::quoted(&r.candidate)
            )))
        }
    }
    // The leftover's own metadata, and its attributes but the HSM's bookkeeping.
    let xattrs = fsx::read_xattrs_opath(src.fd.as_fd())
        .ctx("read xattrs of", &first.path)
        .map(|v| {
            v.into_iter()
                .filter(|(n, _)| !crate::hsm::detect::is_hsm_attribute(&ctx.hsm, n))
                .collect::<Vec<_>>()
        });
    let dst_st = give_metadata(&dst, st, xattrs, &first.path)?;
    let (dst_dir, tmp) = t.keep();
    let names = vec![Name::new(first.clone(), src_dir, dst_dir, tmp)];
    let mut c = Copied::new(names, src, *st, dst, dst_st);
    c.hash = hash;
    c.bytes = r.size;
    Ok(Attempt::Done(Box::new(c)))
}

/// Give the copy the source's owner, mode, times and `xattrs`; its stat after.
fn give_metadata(
    dst: &OwnedFd,
    st: &Stat,
    xattrs: Result<Vec<(Vec<u8>, Vec<u8>)>>,
    path: &[u8],
) -> Result<Stat> {
    steps::at(Step::CopyMeta, path);
    xattrs
        .and_then(|x| fsx::apply_meta(dst.as_fd(), st, &x).ctx("set metadata on the copy of", path))
        .and_then(|_| fsx::fstat(dst.as_fd()).ctx("stat the copy of", path))
}

/// A copy's DEST temporary name while the copy is being made: dropped before `keep`, it removes
/// itself, so that no early return leaves one behind.
struct DestTemp {
    dir: Option<OwnedFd>,
    name: Vec<u8>,
    path: Vec<u8>,
}

impl DestTemp {
    /// The copy is complete: its directory and temporary name, for placement.
    fn keep(mut self) -> (OwnedFd, Vec<u8>) {
        let dir = self.dir.take().expect("kept once");
        (dir, std::mem::take(&mut self.name))
    }
}

impl Drop for DestTemp {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            steps::at(Step::CopyDiscard, &self.path);
            let _ = fsx::unlink_if_exists(dir.as_fd(), &self.name);
        }
    }
}

/// The DEST directory of `first` (created if missing) and a new temporary in it for the copy.
fn dest_temporary(ctx: &Ctx, first: &FileRec) -> Result<(DestTemp, OwnedFd)> {
    let (dpdir, _) = fsx::split_parent(&first.path);
    let dst_dir = match fsx::resolve_dir(ctx.dst_root.as_fd(), dpdir) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            steps::at(Step::DestMkdir, &first.path);
            fsx::ensure_dir(ctx.dst_root.as_fd(), dpdir)
                .ctx("create DEST directory for", &first.path)?
        }
        Err(e) => return Err(Error::io("open DEST directory for", &first.path, e)),
    };
    if let Some(why) = crate::protocol::faults::dest_dir_refuses(dst_dir.as_fd()) {
        return Err(Error::Setup(why));
    }
    let tmp = ctx.tmp_name(first.id, "tmp");
    steps::at(Step::CopyCreate, &first.path);
    let dst = match fsx::create_excl(dst_dir.as_fd(), &tmp) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Left by an interrupted attempt: the name carries our journal id and this file's id.
            fsx::unlink_if_exists(dst_dir.as_fd(), &tmp)
                .ctx("remove stale temporary for", &first.path)?;
            fsx::create_excl(dst_dir.as_fd(), &tmp).ctx("create DEST temporary for", &first.path)?
        }
        Err(e) => return Err(Error::io("create DEST temporary for", &first.path, e)),
    };
    let t = DestTemp {
        dir: Some(dst_dir),
        name: tmp,
        path: first.path.clone(),
    };
    Ok((t, dst))
}

fn link_name(ctx: &Ctx, rec: &FileRec, st: &Stat) -> Result<Option<Name>> {
    let (pdir, name) = fsx::split_parent(&rec.path);
    let src_dir = match fsx::resolve_dir(ctx.src_root.as_fd(), pdir) {
        Ok(d) => d,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(Error::io("open source directory of", &rec.path, e)),
    };
    match fsx::stat_at(src_dir.as_fd(), name) {
        Ok(s) if s.st_ino == st.st_ino && s.st_dev == st.st_dev => {}
        Ok(_) => return Ok(None),
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(Error::io("stat", &rec.path, e)),
    }
    if let Some(flag) = crate::protocol::faults::refusing_flag(src_dir.as_fd()) {
        return Err(Error::Setup(format!(
            "the SOURCE directory of its name {} is {flag}: the kernel refuses to replace names in it; clear the flag to relocate it",
            crate::util::escape::quoted(&rec.path)
        )));
    }
    steps::at(Step::DestMkdir, &rec.path);
    let dst_dir =
        fsx::ensure_dir(ctx.dst_root.as_fd(), pdir).ctx("create DEST directory for", &rec.path)?;
    // Placement links each name straight from the copy's fd, so further names need no
    // temporary of their own; the name is kept only for recovery's cleanup.
    let tmp = ctx.tmp_name(rec.id, "tmp");
    Ok(Some(Name::new(rec.clone(), src_dir, dst_dir, tmp)))
}

/// Take a read lease; `None` means someone has the file open for writing. Where the filesystem
/// (or our privileges) do not allow leases, the /proc scan before the swap stands in for it.
fn take_lease(ctx: &Ctx, fd: OwnedFd, path: &[u8]) -> Result<Option<Held>> {
    let lease = ctx.leases.register(fd.as_raw_fd());
    let mut held = Held {
        fd,
        lease,
        leased: false,
        leases: ctx.leases.clone(),
    };
    let r = if leases_disabled() {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        fsx::set_lease(held.fd.as_fd(), fsx::LEASE_RDLCK, lease_signal())
    };
    match r {
        Ok(()) => {
            held.leased = true;
            Ok(Some(held))
        }
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::EACCES) | Some(libc::ENOLCK) | Some(libc::EPERM)
            ) =>
        {
            ctx.no_lease_seen.store(true, Ordering::Relaxed);
            Ok(Some(held))
        }
        Err(e) => Err(Error::io("take a read lease on", path, e)),
    }
}

/// Lets tests drive the no-lease fallback (the /proc scan) on filesystems that have leases.
fn leases_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("EVAC_TEST_NO_LEASE").is_some())
}

/// What became of one copied inode at commit time.
pub enum Swap {
    /// Every name is now our link; originals wait at their temporary names for `finish`.
    Swapped(Box<Copied>),
    Deferred(Box<Copied>, String),
    Failed(Box<Copied>, String),
}

/// Put every DEST temporary of a batch under its final name. Called after the batch's data is
/// durable and after the journal has recorded each copy's DEST inode (state `placed`).
pub fn place(ctx: &Ctx, c: &Copied) -> std::result::Result<(), String> {
    for (i, n) in c.names.iter().enumerate() {
        let (_, fname) = fsx::split_parent(&n.rec.path);
        match place_one(ctx, n, fname, c) {
            Ok(()) => {}
            Err(msg) => {
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
                if msg != CONFLICT {
                    for m in &c.names {
                        steps::at(Step::CopyDiscard, &m.rec.path);
                        let _ = fsx::unlink_if_exists(m.dst_dir.as_fd(), &m.dst_tmp);
                    }
                }
                return Err(msg);
            }
        }
    }
    Ok(())
}

fn place_one(ctx: &Ctx, n: &Name, fname: &[u8], c: &Copied) -> std::result::Result<(), String> {
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
        Err(e) => return Err(format!("place the copy at DEST: {e}")),
    }
    let existing =
        fsx::stat_at(dir, fname).map_err(|e| format!("stat the file in the way at DEST: {e}"))?;
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
        fsx::unlink_at(dir, fname).map_err(|e| format!("remove an earlier attempt's copy: {e}"))?;
    } else if ours_linked {
        // Our earlier version of this path: keep it in the trash rather than overwrite it.
        steps::at(Step::PlaceTrash, &n.rec.path);
        to_trash(ctx, dir, fname, &n.rec.path)
            .map_err(|e| format!("move the previous copy to the trash: {e}"))?;
    } else {
        return Err(CONFLICT.into());
    }
    place().map_err(|e| format!("place the copy at DEST: {e}"))?;
    cleanup();
    Ok(())
}

/// Why a placement was refused when DEST holds a file evac does not know at that path.
pub const CONFLICT: &str =
    "DEST already has a file at this path that evac did not write; left both as they are (conflict)";

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
fn to_trash(ctx: &Ctx, dir: BorrowedFd<'_>, fname: &[u8], rel: &[u8]) -> io::Result<()> {
    let trel = names::trash_name(ctx, rel)?;
    let (tpd, tname) = fsx::split_parent(&trel);
    let tdir = fsx::resolve_dir(ctx.dst_root.as_fd(), tpd)?;
    fsx::rename_noreplace(dir, fname, tdir.as_fd(), tname)
}

/// One name exchanged for its link: where the original now sits, and the link standing in for
/// it (whose inode a user's rename keeps).
#[derive(Clone)]
struct Exchanged {
    rel: Vec<u8>,
    dir: Arc<OwnedFd>,
    fname: Vec<u8>,
    /// The reserved name that now holds what stood at `fname`.
    held: Vec<u8>,
    link_ino: u64,
    link_handle: Option<Vec<u8>>,
    /// Swapped by rename with the original kept under an attic name (no RENAME_EXCHANGE).
    attic: bool,
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
fn drop_links(ctx: &Ctx, c: &Copied) {
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
            return Swap::Deferred(c, why);
        }
    }
    if !ctx.relocate_mapped && ctx.mapped.contains(c.st.st_dev, c.st.st_ino) {
        return Swap::Deferred(
            c,
            "a process is running or has mapped it (use --relocate-mapped to force)".into(),
        );
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
                    SwapErr::Changed(s) => Swap::Deferred(c, s),
                    SwapErr::Error(s) => Swap::Failed(c, s),
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
fn put_back_name(ctx: &Ctx, e: &Exchanged) -> PutBack {
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

/// The reason recorded for a file whose swap was put back: `why`, and where each original went
/// when not simply back under its name.
pub fn put_back_reason(why: &str, c: &Copied) -> String {
    let mut out = why.to_string();
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
    out
}

/// Recovery of one file a previous run left in flight (or whose temporary the walk found):
/// put a displaced original back, or remove it when the journal shows it was relocated and it
/// is unchanged since; remove our temporaries. Returns the state the file should now have.
pub fn recover(ctx: &Ctx, j: &Journal, id: i64, path: &[u8]) -> Result<RecoverResult> {
    let Some((state, dest_ino, linked_ino)) = j.file_state(id)? else {
        return Ok(RecoverResult::Unknown);
    };
    let (pdir, fname) = fsx::split_parent(path);
    let mut result = if state == "relocated" {
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
                    result = restore_original(
                        ctx, j, id, path, dir, &held, fname, &s, &state, is_attic,
                    )?;
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
        let in_flight = matches!(state.as_str(), "copying" | "placed");
        if in_flight
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
            if linked_now && ours_at_dest && state == "placed" {
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
    state: &str,
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
    let in_flight_or_relocated = matches!(state, "placed" | "copying" | "relocated");
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
    if state == "relocated" && !attic_only && unchanged && dest_ok {
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
    if state == "placed" && single && !attic_only && unchanged && dest_ok {
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
    // the original goes back, the copy is kept in the trash, nothing is destroyed.
    let copy_written = state == "placed"
        && name_is_our_link
        && dest_ok
        && dest_st
            .as_ref()
            .zip(copied_as)
            .is_some_and(|(st, (_, m))| m != fsx::mtime_ns(st));
    if copy_written {
        if let Some(d) = ddir.as_ref() {
            steps::at(Step::PlaceTrash, path);
            let _ = to_trash(ctx, d.as_fd(), n, path);
        }
    }
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
    match put_back_name(ctx, &e) {
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
