//! One run per journal: an exclusive flock on `JOURNAL.lock`, which also holds the runner's PID
//! so a second run (exit 5) and `status` can name it. The kernel drops the lock when the holder
//! dies, so a kill -9 never leaves a stale lock behind.

use crate::error::{Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::path::{Path, PathBuf};

pub struct JournalLock {
    _fd: OwnedFd,
}

pub fn lock_path(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn open(journal: &Path, create: bool) -> std::io::Result<OwnedFd> {
    let mut flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if create {
        flags |= OFlags::CREATE;
    }
    rustix::fs::open(lock_path(journal), flags, Mode::from_raw_mode(0o600)).map_err(Into::into)
}

fn holder(fd: &OwnedFd) -> String {
    let mut buf = [0u8; 32];
    let n = rustix::io::pread(fd, &mut buf, 0).unwrap_or(0);
    let s = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

impl JournalLock {
    pub fn acquire(journal: &Path) -> Result<JournalLock> {
        let fd = open(journal, true).map_err(|e| {
            Error::Setup(format!(
                "create lock file {}: {e}",
                crate::util::escape::quoted(lock_path(journal).as_os_str().as_encoded_bytes())
            ))
        })?;
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(Error::Locked {
                path: journal.to_path_buf(),
                pid: holder(&fd),
            });
        }
        let pid = format!("{}\n", std::process::id());
        let _ = rustix::fs::ftruncate(&fd, 0);
        let _ = rustix::io::pwrite(&fd, pid.as_bytes(), 0);
        Ok(JournalLock { _fd: fd })
    }
}

/// The PID of the run holding this journal, if one is running now.
pub fn running_pid(journal: &Path) -> Option<String> {
    let fd = open(journal, false).ok()?;
    match rustix::fs::flock(fd.as_fd(), FlockOperation::NonBlockingLockShared) {
        Ok(()) => None,
        Err(_) => Some(holder(&fd)),
    }
}
