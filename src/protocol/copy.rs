//! Copying one inode under its lease into a 0600 temporary at DEST, hashed as the bytes pass,
//! with its metadata (owner, mode after chown, xattrs, times); `evac recover`'s copies from a
//! candidate. A temporary that will not be placed removes itself (`DestTemp`).

use super::*;
use crate::error::{Error, IoContext, Result};
use crate::journal::FileRec;
use crate::sys::fsx::{self, Stat};
use crate::sys::signals::lease_signal;
use crate::sys::steps::{self, Step};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use std::io;
use std::sync::atomic::Ordering;

/// Worker side: copy one inode to temporaries at DEST (one per name).
pub fn copy_job(ctx: &Ctx, job: Job, buf: &mut [u8]) -> Outcome {
    const ATTEMPTS: u32 = 3;
    let mut last = String::new();
    // Changed at every try: left for a later run, when it may have settled.
    for _ in 0..ATTEMPTS {
        match copy_once(ctx, &job, buf) {
            Ok(Attempt::Done(c)) => return Outcome::Copied(c),
            Ok(Attempt::Retry(why)) => last = why,
            Ok(Attempt::Defer(why)) => return Outcome::Deferred(why),
            Ok(Attempt::StagedOut(why)) => return Outcome::StagedOut(Why::new(Cause::Hsm, why)),
            // One name of a hard-link group gone is not the inode gone: its other names (and any
            // new one the user renamed it to) stay to be relocated, as the next walk finds them.
            Ok(Attempt::Gone) if job.names.len() > 1 => {
                return Outcome::Deferred(Why::new(
                    Cause::Changed,
                    "a name of its hard-link group was renamed or removed during the run",
                ))
            }
            Ok(Attempt::Gone) => return Outcome::Gone,
            Ok(Attempt::Aborted) => return Outcome::Aborted,
            Ok(Attempt::Fail(why)) => return Outcome::Failed(job, Why::new(Cause::Recovery, why)),
            Err(e) => return crate::protocol::faults::copy_failed(job, &e),
        }
    }
    Outcome::Deferred(Why::new(Cause::Changed, last))
}

enum Attempt {
    Done(Box<Copied>),
    Retry(String),
    Defer(Why),
    /// An HSM stub (or its state unknown): never opened (I4).
    StagedOut(String),
    Gone,
    Aborted,
    /// Not to be tried again as it stands (a recovery whose candidate does not hold): cause
    /// `Recovery`.
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
        return Ok(Attempt::Defer(Why::new(
            Cause::Changed,
            format!(
                "hard links changed during the run ({} names found, link count now {})",
                job.names.len(),
                st.st_nlink
            ),
        )));
    }
    if job.names.len() == 1 && st.st_nlink > 1 {
        return Ok(Attempt::Defer(Why::new(
            Cause::Changed,
            "gained a hard link during the run; relocated with its links next time",
        )));
    }
    if let Some(r) = ctx.recoveries.get(&first.id) {
        return recover_copy(ctx, job, buf, r, src_dir, &st);
    }
    if !ctx.relocate_mapped && ctx.mapped.contains(st.st_dev, st.st_ino) {
        return Ok(Attempt::Defer(Why::new(Cause::Busy, MAPPED)));
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
            return Ok(Attempt::Defer(Why::new(
                Cause::Busy,
                ctx.mapped.busy_reason(why, &st, false),
            )));
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
            return Ok(Attempt::Defer(Why::new(
                Cause::Busy,
                ctx.mapped.busy_reason(why, &fst, true),
            )));
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
            return Ok(Attempt::Defer(Why::new(
                Cause::Busy,
                "opened for writing during the copy",
            )))
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
            None => {
                return Ok(Attempt::Defer(Why::new(
                    Cause::Changed,
                    "hard links changed during the run",
                )))
            }
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
