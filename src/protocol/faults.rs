//! Storage faults told apart so each gets the right answer: a full DEST (stop trying, defer the
//! rest), which side of a copy failed (read SOURCE or write DEST), and files or directories the
//! kernel will not let anyone replace (immutable, append-only).

use crate::error::Error;
use crate::journal::{Cause, Why};
use crate::protocol::{Job, Outcome};
use crate::sys::fsx::SourceError;
use rustix::fd::BorrowedFd;
use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
use std::io;

/// The reason's first words for a file DEST had no room for (cause `DestFull`).
pub const DEST_FULL: &str = "destination full";

/// A quota (EDQUOT) is the owner's or the project's, not all of DEST's: other files may still
/// fit, so it defers the one file and does not stop the copying as ENOSPC does.
const DEST_QUOTA: &str = "destination full (quota)";

/// Why a file DEST had no room for, if that is what `e` says.
pub fn full_why(e: &io::Error, detail: &str) -> Option<Why> {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => Some(Why::new(Cause::DestFull, format!("{DEST_FULL}: {detail}"))),
        Some(libc::EDQUOT) => Some(Why::new(
            Cause::DestQuota,
            format!("{DEST_QUOTA}: {detail}"),
        )),
        _ => None,
    }
}

/// Why a file was not even tried: DEST was already full.
pub fn not_attempted_full() -> Why {
    Why::new(
        Cause::DestFull,
        format!("{DEST_FULL} (not attempted; free space at DEST, then run again)"),
    )
}

/// A copy that ended in an error: no room at DEST defers the file (it is fine, and will be
/// retried once there is room); anything else fails it.
pub fn copy_failed(job: Job, e: &Error) -> Outcome {
    let full = match e {
        Error::Io { source, .. } => full_why(source, &e.reason()),
        _ => None,
    };
    match full {
        Some(why) => Outcome::Deferred(why),
        None => Outcome::Failed(job, Why::new(Cause::Error, e.reason())),
    }
}

/// Why a placement at DEST did not happen.
#[derive(Debug)]
pub enum PlaceFault {
    /// DEST has a file at this path that evac did not write: both are left as they are.
    Conflict,
    /// A system call failed; `op` says which step.
    Io { op: &'static str, err: io::Error },
}

impl PlaceFault {
    pub fn io(op: &'static str) -> impl FnOnce(io::Error) -> PlaceFault {
        move |err| PlaceFault::Io { op, err }
    }

    /// The file's cause and reason: no room defers it, a conflict or an error fails it.
    pub fn why(&self) -> Why {
        match self {
            PlaceFault::Conflict => Why::new(Cause::Conflict, CONFLICT),
            PlaceFault::Io { err, .. } => full_why(err, &self.to_string())
                .unwrap_or_else(|| Why::new(Cause::Error, self.to_string())),
        }
    }
}

impl std::fmt::Display for PlaceFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlaceFault::Conflict => f.write_str(CONFLICT),
            PlaceFault::Io { op, err } => write!(f, "{op}: {err}"),
        }
    }
}

/// Why a placement was refused when DEST holds a file evac does not know at that path.
pub const CONFLICT: &str =
    "DEST already has a file at this path that evac did not write; left both as they are (conflict)";

/// An error from `fsx::copy_sparse`, with the side that failed as the operation, so a bad
/// sector in SOURCE and a failing DEST are not reported alike.
pub fn copy_error(path: &[u8], e: io::Error) -> Error {
    if e.get_ref().is_some_and(|i| i.is::<SourceError>()) {
        let inner = match e.into_inner().map(|b| b.downcast::<SourceError>()) {
            Some(Ok(s)) => s.0,
            Some(Err(other)) => io::Error::other(other),
            None => io::Error::other("unknown error"),
        };
        return Error::io("read SOURCE", path, inner);
    }
    Error::io("write DEST", path, e)
}

/// The inode flag, if any, that makes the kernel refuse to rename or unlink this file (or to
/// remove names from this directory), whoever asks, root included.
pub fn refusing_flag(fd: BorrowedFd<'_>) -> Option<&'static str> {
    let sx = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::empty()).ok()?;
    let known = sx.stx_attributes_mask;
    let set = sx.stx_attributes;
    if known.contains(StatxAttributes::IMMUTABLE) && set.contains(StatxAttributes::IMMUTABLE) {
        Some("immutable (chattr +i)")
    } else if known.contains(StatxAttributes::APPEND) && set.contains(StatxAttributes::APPEND) {
        Some("append-only (chattr +a)")
    } else {
        None
    }
}

/// Before anything is copied: a SOURCE file that cannot be replaced, or a SOURCE directory whose
/// names cannot be replaced, would only fail at the swap (an append-only directory would even
/// keep the link evac made there); say why now and leave both sides untouched.
pub fn source_refuses(file: BorrowedFd<'_>, dir: BorrowedFd<'_>) -> Option<String> {
    if let Some(flag) = refusing_flag(file) {
        return Some(format!(
            "the file is {flag}: the kernel refuses to replace it; clear the flag to relocate it"
        ));
    }
    refusing_flag(dir).map(|flag| {
        format!("its SOURCE directory is {flag}: the kernel refuses to replace names in it; clear the flag to relocate it")
    })
}

/// A DEST directory evac could create temporaries in but never remove them from (append-only),
/// or not write at all (immutable).
pub fn dest_dir_refuses(dir: BorrowedFd<'_>) -> Option<String> {
    refusing_flag(dir).map(|flag| {
        format!("its DEST directory is {flag}: evac cannot place (and clean up) copies there; clear the flag to relocate it")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_room_is_told_from_errors() {
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        let job = || Job { names: Vec::new() };
        let out = copy_failed(job(), &Error::io("write DEST", b"a", e));
        assert!(
            matches!(out, Outcome::Deferred(w) if w.cause == Cause::DestFull && w.text.starts_with(DEST_FULL))
        );
        let place =
            PlaceFault::io("place the copy at DEST")(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(place.why().cause, Cause::DestFull);
        // A quota defers the file, under the same heading, without stopping the copying.
        let q = io::Error::from_raw_os_error(libc::EDQUOT);
        let out = copy_failed(job(), &Error::io("write DEST", b"a", q));
        assert!(
            matches!(out, Outcome::Deferred(w) if w.cause == Cause::DestQuota && w.text.starts_with(DEST_FULL))
        );
        let other = io::Error::from_raw_os_error(libc::EIO);
        let place = PlaceFault::io("place the copy at DEST")(other);
        assert_eq!(place.why().cause, Cause::Error);
        assert!(
            place.why().text.starts_with("place the copy at DEST: "),
            "{}",
            place
        );
        assert_eq!(PlaceFault::Conflict.why().cause, Cause::Conflict);
        let out = copy_failed(
            job(),
            &Error::io("write DEST", b"a", io::Error::from_raw_os_error(libc::EIO)),
        );
        assert!(matches!(out, Outcome::Failed(_, w) if w.cause == Cause::Error));
    }

    #[test]
    fn copy_errors_name_their_side() {
        let r = io::Error::other(SourceError(io::Error::from_raw_os_error(libc::EIO)));
        let e = copy_error(b"a/b", r);
        assert!(e.reason().starts_with("read SOURCE: "), "{}", e.reason());
        let Error::Io { source, .. } = &e else {
            panic!("not an I/O error")
        };
        assert_eq!(source.raw_os_error(), Some(libc::EIO));
        let w = copy_error(b"a/b", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(w.reason().starts_with("write DEST: "), "{}", w.reason());
    }
}
