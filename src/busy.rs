//! Who is using a file, as the engine needs to know: the set of files mapped or executed by any
//! process (refreshed in the background), and a scan for files open for writing where leases
//! are not available. The reading of /proc itself is shared with `evac holders`, in `holders`.

use crate::holders::{self, Access, Proc};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// (dev, ino) of every file that some process has mapped or is running.
#[derive(Default)]
pub struct Mapped {
    set: RwLock<HashSet<(u64, u64)>>,
}

/// (dev, ino) → the processes that have it open, each with whether it can write to it.
type OpenFiles = HashMap<(u64, u64), Vec<(Proc, bool)>>;

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

fn scan_mapped(dev: u64) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    for p in holders::other_processes().unwrap_or_default() {
        if let Ok(st) = p.stat_of("exe") {
            if st.st_dev == dev {
                out.insert((st.st_dev, st.st_ino));
            }
        }
        let Ok(maps) = p.maps() else {
            continue;
        };
        for m in holders::mappings(&maps) {
            if m.ino != 0 && m.dev == dev {
                out.insert((m.dev, m.ino));
            }
        }
    }
    out
}

/// Every file on `dev` that some process has open or has mapped shared and writable, with
/// who does and whether they can write to it.
fn open_files(dev: u64) -> OpenFiles {
    let mut out: OpenFiles = HashMap::new();
    for p in holders::other_processes().unwrap_or_default() {
        let mut add = |key: (u64, u64), writes: bool| {
            let v = out.entry(key).or_default();
            match v.iter_mut().find(|(q, _)| *q == p) {
                Some(e) => e.1 |= writes,
                None => v.push((p, writes)),
            }
        };
        let _ = p.for_each_fd(|fd, st| {
            if st.st_dev == dev {
                add(
                    (st.st_dev, st.st_ino),
                    p.access(fd).is_some_and(Access::writes),
                );
            }
        });
        // A writable shared mapping writes to the file even after its fd is closed. Its device
        // and inode come from the maps line: the name there is a path users control.
        if let Ok(maps) = p.maps() {
            for m in holders::mappings(&maps) {
                if m.ino != 0 && m.dev == dev && m.shared_writable() {
                    add((m.dev, m.ino), true);
                }
            }
        }
    }
    out
}

/// (dev, ino) of files on `dev` that some process has open for writing (the fallback where the
/// filesystem does not support leases).
pub fn open_for_writing(dev: u64) -> HashSet<(u64, u64)> {
    open_files(dev)
        .into_iter()
        .filter(|(_, who)| who.iter().any(|&(_, w)| w))
        .map(|(k, _)| k)
        .collect()
}
