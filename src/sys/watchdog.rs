//! Storage that stops answering must not hang a run: notice a thread that has sat in one system
//! call, without once being woken, for longer than `--op-timeout`, and say which call on which
//! file. Blocked threads cannot be cancelled; the coordinator gives up on them instead (see
//! `run::storage`), and a coordinator that is itself stuck is ended by the deadman here.

use crate::util::escape::quoted;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// Whether this kernel shows threads' system calls (/proc, CONFIG_HAVE_ARCH_TRACEHOOK): without
/// that nothing here can see a blocked thread.
pub fn can_watch() -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{}/syscall", gettid())).is_ok()
}

/// What the kernel shows of a thread: the system call it is in (its line in
/// /proc/self/task/TID/syscall, arguments included) and how many times it has been switched
/// out. A thread blocked in one call is never switched in, so both stay the same; a thread
/// whose I/O progresses is woken again and again.
#[derive(PartialEq, Eq, Clone, Debug)]
struct Sample {
    syscall: String,
    switches: u64,
}

fn sample(tid: i32) -> Option<Sample> {
    let syscall = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let syscall = syscall.trim().to_string();
    if syscall.starts_with("running") {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let switches = status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum();
    Some(Sample { syscall, switches })
}

/// How long one thread has been blocked in the same system call, from repeated looks.
pub struct Stall {
    tid: i32,
    seen: Option<Sample>,
    since: Instant,
}

impl Stall {
    pub fn new(tid: i32) -> Stall {
        Stall {
            tid,
            seen: None,
            since: Instant::now(),
        }
    }

    /// Look again; returns how long the thread has been blocked in the call it is in now (zero
    /// if it is running, or has been woken since the last look).
    pub fn poll(&mut self) -> Duration {
        let now = sample(self.tid);
        if now.is_some() && now == self.seen {
            return self.since.elapsed();
        }
        self.seen = now;
        self.since = Instant::now();
        Duration::ZERO
    }

    /// The call the thread is blocked in, in words: "open in \"/dest/dir\"".
    pub fn describe(&self) -> String {
        self.seen
            .as_ref()
            .map(|s| describe_syscall(&s.syscall))
            .unwrap_or_else(|| "a file operation".into())
    }
}

fn fd_path(fd: u64) -> Option<String> {
    let fd = i32::try_from(fd).ok()?;
    let p = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    Some(quoted(p.as_os_str().as_encoded_bytes()))
}

/// "NR ARG1 … ARG6 SP PC" (hex arguments) into the operation and the file or directory its
/// first argument names; "-1 SP PC" is a thread blocked outside any system call.
fn describe_syscall(line: &str) -> String {
    let mut it = line.split_whitespace();
    let Some(nr) = it.next().and_then(|n| n.parse::<i64>().ok()) else {
        return "a file operation".into();
    };
    if nr < 0 {
        return "the kernel (outside a system call, e.g. a page fault)".into();
    }
    let arg0 = it
        .next()
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    let Some((name, what)) = syscall_name(nr) else {
        return format!("system call {nr}");
    };
    match (what, arg0.and_then(fd_path)) {
        (Arg::Dir, Some(p)) => format!("{name} in {p}"),
        (Arg::File, Some(p)) => format!("{name} of {p}"),
        _ => name.to_string(),
    }
}

#[derive(Clone, Copy)]
enum Arg {
    /// The first argument is a directory fd (the *at calls).
    Dir,
    /// The first argument is the fd of the file operated on.
    File,
    None,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn syscall_name(nr: i64) -> Option<(&'static str, Arg)> {
    let n = nr as libc::c_long;
    Some(match n {
        libc::SYS_openat => ("open", Arg::Dir),
        libc::SYS_mkdirat => ("mkdir", Arg::Dir),
        libc::SYS_unlinkat => ("unlink", Arg::Dir),
        libc::SYS_linkat => ("link", Arg::Dir),
        libc::SYS_renameat2 => ("rename", Arg::Dir),
        libc::SYS_newfstatat | libc::SYS_statx => ("stat", Arg::Dir),
        libc::SYS_readlinkat => ("readlink", Arg::Dir),
        libc::SYS_utimensat => ("set times", Arg::Dir),
        libc::SYS_fchownat => ("chown", Arg::Dir),
        libc::SYS_read | libc::SYS_pread64 => ("read", Arg::File),
        libc::SYS_write | libc::SYS_pwrite64 => ("write", Arg::File),
        libc::SYS_fsync | libc::SYS_fdatasync => ("fsync", Arg::File),
        libc::SYS_syncfs => ("syncfs", Arg::File),
        libc::SYS_fstat => ("stat", Arg::File),
        libc::SYS_lseek => ("seek", Arg::File),
        libc::SYS_ftruncate => ("truncate", Arg::File),
        libc::SYS_fchown => ("chown", Arg::File),
        libc::SYS_fchmod => ("chmod", Arg::File),
        libc::SYS_fsetxattr | libc::SYS_fgetxattr | libc::SYS_flistxattr => ("xattr", Arg::File),
        libc::SYS_fcntl => ("fcntl", Arg::File),
        libc::SYS_ioctl => ("ioctl", Arg::File),
        libc::SYS_close => ("close", Arg::None),
        libc::SYS_futex => ("a wait for another thread", Arg::None),
        _ => return None,
    })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn syscall_name(_nr: i64) -> Option<(&'static str, Arg)> {
    None
}

/// What one copy worker is doing, shared with the coordinator that watches it.
#[derive(Default)]
pub struct Slot {
    inner: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    tid: i32,
    /// Bumped for every job, so a look at an earlier job is never held against a later one.
    seq: u64,
    job: Option<(Vec<i64>, Vec<u8>)>,
    abandoned: bool,
}

impl Slot {
    pub fn set_tid(&self, tid: i32) {
        if let Ok(mut s) = self.inner.lock() {
            s.tid = tid;
        }
    }

    pub fn begin(&self, ids: &[i64], path: &[u8]) {
        if let Ok(mut s) = self.inner.lock() {
            s.seq += 1;
            s.job = Some((ids.to_vec(), path.to_vec()));
        }
    }

    /// The job is done. False if the coordinator gave up on it meanwhile: its result was
    /// already recorded, and another worker has taken this one's place.
    pub fn end(&self) -> bool {
        match self.inner.lock() {
            Ok(mut s) => {
                s.job = None;
                !s.abandoned
            }
            Err(_) => false,
        }
    }

    /// (tid, job sequence) while a job is under way.
    pub fn busy(&self) -> Option<(i32, u64)> {
        let s = self.inner.lock().ok()?;
        s.job.as_ref().map(|_| (s.tid, s.seq))
    }

    /// Give up on job `seq` if it is still the one under way; returns its ids and first path.
    pub fn abandon(&self, seq: u64) -> Option<(Vec<i64>, Vec<u8>)> {
        let mut s = self.inner.lock().ok()?;
        if s.seq != seq || s.job.is_none() {
            return None;
        }
        s.abandoned = true;
        s.job.take()
    }
}

/// Watches the coordinating thread from another thread: if it stays blocked in one system call
/// past the timeout, nothing in the process can unblock it, so `fire` is called (it records why
/// and exits). Stopped when dropped.
pub struct Deadman {
    stop: Arc<AtomicBool>,
}

impl Deadman {
    pub fn start(
        tid: i32,
        timeout: Duration,
        fire: Box<dyn FnOnce(String, Duration) + Send>,
    ) -> Deadman {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let every = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let spawned = std::thread::Builder::new()
            .name("evac-deadman".into())
            .spawn(move || {
                let mut stall = Stall::new(tid);
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let blocked = stall.poll();
                    if blocked >= timeout && !s.load(Ordering::Relaxed) {
                        fire(stall.describe(), blocked);
                        return;
                    }
                }
            });
        // Without the thread the run goes on unwatched, as before there was one.
        drop(spawned);
        Deadman { stop }
    }
}

impl Drop for Deadman {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_thread_is_seen_and_named() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let mut fds = [0i32; 2];
        // SAFETY: pipe(2) fills the two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [r, w] = fds;
        let h = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into a valid buffer; blocks until the test writes.
            unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        });
        let tid = tid_rx.recv().unwrap();
        let mut st = Stall::new(tid);
        let start = Instant::now();
        let mut longest = Duration::ZERO;
        while start.elapsed() < Duration::from_secs(5) && longest < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(20));
            longest = st.poll();
        }
        assert!(longest >= Duration::from_millis(200), "never seen blocked");
        assert!(st.describe().starts_with("read of "), "{}", st.describe());
        // SAFETY: writing one byte to the pipe, then closing both ends once the reader is gone.
        unsafe { libc::write(w, b"x".as_ptr().cast(), 1) };
        h.join().unwrap();
        unsafe {
            libc::close(r);
            libc::close(w);
        }
    }

    #[test]
    fn slots_hand_a_job_to_exactly_one_side() {
        let s = Slot::default();
        s.begin(&[7], b"a");
        let (_, seq) = s.busy().unwrap();
        assert!(s.abandon(seq + 1).is_none());
        assert_eq!(s.abandon(seq).unwrap().0, vec![7]);
        assert!(!s.end());
        let t = Slot::default();
        t.begin(&[8], b"b");
        let (_, seq) = t.busy().unwrap();
        assert!(t.end());
        assert!(t.abandon(seq).is_none());
    }
}
