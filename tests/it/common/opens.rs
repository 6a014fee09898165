//! Which files a command opened: inotify IN_OPEN watches on every directory under some roots
//! (evac must never open an HSM stub, I4; a rerun over cached candidates must open none).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// inotify watches (IN_OPEN) on every directory under some roots: which files were opened, as
/// absolute paths, with how many times. Set up before the command, read after it exits (the
/// kernel queues an event at the open itself).
pub struct Opens {
    fd: OwnedFd,
    dirs: HashMap<i32, Vec<u8>>,
}

impl Opens {
    pub fn watch(roots: &[&Path]) -> Opens {
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut o = Opens {
            fd,
            dirs: HashMap::new(),
        };
        let mut stack: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
        while let Some(d) = stack.pop() {
            let wd = unsafe {
                libc::inotify_add_watch(o.fd.as_raw_fd(), cpath(&d).as_ptr(), libc::IN_OPEN)
            };
            assert!(
                wd >= 0,
                "inotify_add_watch {}: {}",
                d.display(),
                std::io::Error::last_os_error()
            );
            o.dirs.insert(wd, d.as_os_str().as_bytes().to_vec());
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        o
    }

    /// Files (not directories) opened since the last call.
    pub fn take(&self) -> BTreeMap<Vec<u8>, usize> {
        let mut out = BTreeMap::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                assert!(
                    n == 0 || e.raw_os_error() == Some(libc::EAGAIN),
                    "read inotify: {e}"
                );
                return out;
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
                let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
                assert_eq!(mask & libc::IN_Q_OVERFLOW, 0, "inotify queue overflowed");
                let name = &buf[off + 16..off + 16 + len];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if mask & libc::IN_OPEN != 0 && mask & libc::IN_ISDIR == 0 && !name.is_empty() {
                    let mut p = self.dirs[&wd].clone();
                    p.push(b'/');
                    p.extend_from_slice(name);
                    *out.entry(p).or_insert(0) += 1;
                }
                off += 16 + len;
            }
        }
    }
}
