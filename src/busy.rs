//! Who is using a file: the set of files mapped or executed by any process (refreshed in the
//! background), and a /proc scan for files open for writing where leases are not available.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// (dev, ino) of every file that some process has mapped or is running.
#[derive(Default)]
pub struct Mapped {
    set: RwLock<HashSet<(u64, u64)>>,
}

impl Mapped {
    pub fn contains(&self, dev: u64, ino: u64) -> bool {
        self.set
            .read()
            .map(|s| s.contains(&(dev, ino)))
            .unwrap_or(false)
    }

    pub fn refresh(&self, dev: u64) {
        let fresh = scan_mapped(dev);
        if let Ok(mut s) = self.set.write() {
            *s = fresh;
        }
    }

    /// Refresh every `every` until `done` is set.
    pub fn spawn_refresher(self: &Arc<Self>, dev: u64, every: Duration, done: Arc<AtomicBool>) {
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("evac-mapped".into())
            .spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let mut slept = Duration::ZERO;
                    while slept < every && !done.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        slept += Duration::from_millis(50);
                    }
                    me.refresh(dev);
                }
            });
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn scan_mapped(dev: u64) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    let me = std::process::id();
    for pid in pids() {
        if pid == me {
            continue;
        }
        if let Ok(st) = rustix::fs::stat(format!("/proc/{pid}/exe")) {
            if st.st_dev == dev {
                out.insert((st.st_dev, st.st_ino));
            }
        }
        let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for line in maps.split(|&b| b == b'\n') {
            // address perms offset dev inode path
            let mut f = line.split(|&b| b == b' ').filter(|s| !s.is_empty());
            let (Some(_), Some(_), Some(_), Some(d), Some(ino)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let Some(d) = std::str::from_utf8(d).ok() else {
                continue;
            };
            let Some((maj, min)) = d.split_once(':') else {
                continue;
            };
            let (Ok(maj), Ok(min)) = (u32::from_str_radix(maj, 16), u32::from_str_radix(min, 16))
            else {
                continue;
            };
            let Some(ino) = std::str::from_utf8(ino)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let d = libc::makedev(maj, min);
            if ino != 0 && d == dev {
                out.insert((d, ino));
            }
        }
    }
    out
}

/// (dev, ino) of files on `dev` that some process has open for writing (the fallback where the
/// filesystem does not support leases).
pub fn open_for_writing(dev: u64) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    let me = std::process::id();
    for pid in pids() {
        if pid == me {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(st) = rustix::fs::stat(e.path()) else {
                continue;
            };
            if st.st_dev != dev {
                continue;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
            let Ok(text) = std::fs::read_to_string(info) else {
                continue;
            };
            let flags = text
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .unwrap_or(0);
            if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
                out.insert((st.st_dev, st.st_ino));
            }
        }
        // Writable shared mappings count as writers too.
        if let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) {
            for line in maps.split(|&b| b == b'\n') {
                let f: Vec<&[u8]> = line
                    .split(|&b| b == b' ')
                    .filter(|s| !s.is_empty())
                    .collect();
                if f.len() >= 6 && f[1].len() == 4 && f[1][1] == b'w' && f[1][3] == b's' {
                    if let Ok(st) = rustix::fs::stat(std::ffi::OsStr::new(
                        std::str::from_utf8(f[5]).unwrap_or(""),
                    )) {
                        if st.st_dev == dev {
                            out.insert((st.st_dev, st.st_ino));
                        }
                    }
                }
            }
        }
    }
    out
}
