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
//!
//! # The file's states (`journal::FileState`)
//!
//! Each arrow names the journal record committed *before* the effect on SOURCE or DEST that it
//! announces (the step point that precedes the effect, in `sys::steps`, in brackets), so that a
//! crash between the two finds the record and the recovery (`recover`) completes or undoes it:
//!
//! ```text
//!            walk sees a regular file
//!                      |
//!                      v
//!   +----------->  pending  ---- HSM stub (I4) ------------------------> staged_out
//!   |                  |                                                    |
//!   |    `copying` committed with the batch of jobs it goes in              | stage: resident
//!   |                  |                                                    | again -> pending
//!   |                  v
//!   |               copying  -- [copy.create, copy.data, copy.meta]: a 0600 temporary at DEST
//!   |                  |        (busy, changed -> deferred; I/O error -> failed; no room at
//!   |                  |         DEST -> deferred, cause dest_full, no more copies tried)
//!   |   [sync.dest]: the batch's data durable; links made beside the originals
//!   |   [swap.symlink, swap.link-meta]; then `placed` committed with the copy's DEST inode and
//!   |   the link's inode and handle
//!   |                  v
//!   |                placed  -- [place.link]: the final DEST name (no-replace link from the fd);
//!   |                  |        [swap.exchange]: RENAME_EXCHANGE original <-> link, checked
//!   |                  |        after; a failed check or a lease break puts the original back
//!   |                  |        [swap.undo / swap.follow-link / swap.save-original] -> deferred
//!   |   [sync.source]: the swaps durable; then `relocated` committed
//!   |                  v
//!   |              relocated -- [finish.unlink]: the original removed after the next syncfs
//!   |                  |
//!   |   a user replaces the link by a file: a new version, pending again
//!   +------------------+
//!
//!   deferred, failed: retried by later runs (deferred at once in retry rounds); any state but
//!   in-flight ones -> gone when a complete walk no longer sees the path; skipped: not a regular
//!   file, or a hard-link group that crosses SOURCE's edge.
//! ```
//!
//! After a crash, `recover` looks at every file left `copying` or `placed`: an original under its
//! temporary name goes back (or, unchanged and with its copy placed and linked, is completed as
//! `relocated` after a syncfs of both sides [recover.sync]); temporaries and placed copies no
//! link names go [recover.unlink-temp, recover.unlink-copy].

mod copy;
pub mod faults;
pub mod names;
mod place;
mod recover;
mod swap;

pub use copy::copy_job;
pub use faults::PlaceFault;
pub use place::{discard, extra_name_at_dest, place, remove_dest_name};
pub use recover::{drop_held, recover, RecoverResult};
pub use swap::{finish, make_links, put_back_reason, swap, unswap, PutBack, Swap, SwapShared};

use crate::journal::{Cause, FileRec, Why};
use crate::sys::busy::Mapped;
use crate::sys::fsx::{self, Stat};
use crate::sys::signals::{Lease, Leases};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::io;
use std::sync::atomic::AtomicBool;
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

/// What became of one copy attempt (the engine knows the job's ids; only a failure hands the
/// job back, for its names in the message).
pub enum Outcome {
    /// Copied and durable-to-be: on to placement and the swap.
    Copied(Box<Copied>),
    /// Left for a later round or run, with the cause.
    Deferred(Why),
    /// Given up on, with the cause.
    Failed(Job, Why),
    /// An HSM stub found at copy time (released since the walk, or during the copy).
    StagedOut(Why),
    /// The path is no longer a regular file in SOURCE.
    Gone,
    /// Stopped before it finished; back to pending.
    Aborted,
}

/// Why a file a process runs or has mapped is left (evac would pull the pages from under it).
pub const MAPPED: &str = "a process is running or has mapped it (use --relocate-mapped to force)";

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
