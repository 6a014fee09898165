//! Who is using a file, as the engine needs to know: the set of files mapped or executed by any
//! process (refreshed in the background), a scan for files open for writing where leases are
//! not available, and the names of the processes that keep a deferred file busy. The reading of
//! /proc itself is shared with `evac holders`, in `holders`.

use crate::sys::proc::{self, Access, Proc};
use rustix::fs::Stat;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// (dev, ino) of every file that some process has mapped or is running; and the last scan of
/// open files, kept to name the holders of busy files.
#[derive(Default)]
pub struct Mapped {
    set: RwLock<HashSet<(u64, u64)>>,
    openers: Mutex<Option<OpenScan>>,
}

/// Starts the holders a deferral reason names: ` (pid 1234 make, pid 99 vim)`. The journal
/// groups reasons without it, so that one cause counts once however many processes share it.
pub const HOLDERS_MARK: &str = " (pid ";

/// How many holders a reason names before it only counts the rest.
const NAMED: usize = 4;

/// A scan that knows a busy file's holders is reused this long: in a live tree busy files come
/// in bursts, and one scan of /proc names the holders of them all.
const REUSE_KNOWN: Duration = Duration::from_secs(1);

/// Any scan is reused at least this long, and five times what it took, so that files kept busy
/// by writers /proc cannot show (other NFS clients) cannot keep evac scanning.
const REUSE_ANY: Duration = Duration::from_millis(250);

struct OpenScan {
    dev: u64,
    taken: Instant,
    took: Duration,
    files: OpenFiles,
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

    /// `why`, followed by the processes that have the file open (only those that can write to
    /// it, with `writers`), for the operator to know whom to ask: e.g. "open for writing by
    /// another process (pid 1234 make, pid 99 vim)". Just `why` when /proc shows nobody.
    pub fn busy_reason(&self, why: &str, st: &Stat, writers: bool) -> String {
        let mut named: Vec<String> = self
            .openers_of(st.st_dev, st.st_ino, writers)
            .into_iter()
            .filter_map(|p| {
                let comm = p.comm()?;
                Some(format!(
                    "pid {} {}",
                    p.0,
                    crate::util::escape::escape(&comm)
                ))
            })
            .collect();
        if named.is_empty() {
            return why.to_string();
        }
        let more = named.len().saturating_sub(NAMED);
        named.truncate(NAMED);
        if more > 0 {
            named.push(format!("{more} more"));
        }
        // Each entry starts "pid ", so the list starts with HOLDERS_MARK.
        format!("{why} ({})", named.join(", "))
    }

    /// The processes that have (dev, ino) open, by pid, from a scan shared by all workers.
    fn openers_of(&self, dev: u64, ino: u64, writers: bool) -> Vec<Proc> {
        let Ok(mut cache) = self.openers.lock() else {
            return Vec::new();
        };
        let pick = |s: &OpenScan| -> Vec<Proc> {
            let mut v: Vec<Proc> = s
                .files
                .get(&(dev, ino))
                .into_iter()
                .flatten()
                .filter(|&&(_, w)| w || !writers)
                .map(|&(p, _)| p)
                .collect();
            v.sort();
            v
        };
        if let Some(s) = cache.as_ref().filter(|s| s.dev == dev) {
            let age = s.taken.elapsed();
            let known = pick(s);
            if (age <= REUSE_KNOWN && !known.is_empty()) || age < REUSE_ANY.max(s.took * 5) {
                return known;
            }
        }
        let taken = Instant::now();
        let files = open_files(dev);
        let s = cache.insert(OpenScan {
            dev,
            taken,
            took: taken.elapsed(),
            files,
        });
        pick(s)
    }
}

fn scan_mapped(dev: u64) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    for p in proc::other_processes().unwrap_or_default() {
        if let Ok(st) = p.stat_of("exe") {
            if st.st_dev == dev {
                out.insert((st.st_dev, st.st_ino));
            }
        }
        let Ok(maps) = p.maps() else {
            continue;
        };
        for m in proc::mappings(&maps) {
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
    for p in proc::other_processes().unwrap_or_default() {
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
            for m in proc::mappings(&maps) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_reason_names_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        let file = std::fs::File::create(&path).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .stdout(file)
            .spawn()
            .unwrap();
        let st = rustix::fs::stat(&path).unwrap();
        let fd1 = format!("/proc/{}/fd/1", child.id());
        let started = Instant::now();
        // Until the child has exec'd, its comm is this test's.
        while std::fs::read(format!("/proc/{}/comm", child.id())).unwrap_or_default() != b"sleep\n"
            || std::fs::read_link(&fd1).ok().as_deref() != Some(path.as_path())
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "child never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let m = Mapped::default();
        let why = m.busy_reason("busy", &st, true);
        let writing = open_for_writing(st.st_dev).contains(&(st.st_dev, st.st_ino));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(why, format!("busy (pid {} sleep)", child.id()));
        assert!(why.starts_with(&format!("busy{HOLDERS_MARK}")));
        assert!(writing, "open_for_writing misses the writer");
    }
}
