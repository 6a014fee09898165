//! Signals: SIGINT/SIGTERM ask for a clean stop; lease-break signals are answered at once. All
//! are read from a signalfd by one thread, so the mask must be set before any other thread
//! starts.
//!
//! A lease break is answered in this order: the break is flagged, then whatever the holder
//! registered to run on a break runs (a swap in progress puts the original back where the
//! user's path now leads), and only then is the lease let go. The writer's `open()` is blocked
//! by the kernel until that moment, so its writes land in the file its path names when the
//! `open()` returns, never in an original that a swap had moved aside (I2).

use crate::sys::fsx;
use rustix::fd::BorrowedFd;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// What must happen on a lease break before the lease is let go.
pub trait OnBreak: Send + Sync {
    /// Called once the break is flagged; the lease is released when it returns.
    fn on_break(&self);
}

/// One leased file: the flag a break sets, and what the break must do first.
#[derive(Default)]
pub struct Lease {
    broken: AtomicBool,
    on_break: Mutex<Option<Arc<dyn OnBreak>>>,
}

impl Lease {
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Run `f` on a break, before the lease is let go (replaces what was set before).
    pub fn set_on_break(&self, f: Option<Arc<dyn OnBreak>>) {
        *self.on_break.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
}

/// Files we hold a lease on, by fd number.
#[derive(Default)]
pub struct Leases {
    map: Mutex<HashMap<RawFd, Arc<Lease>>>,
}

impl Leases {
    pub fn register(&self, fd: RawFd) -> Arc<Lease> {
        let lease = Arc::new(Lease::default());
        if let Ok(mut m) = self.map.lock() {
            m.insert(fd, lease.clone());
        }
        lease
    }

    /// Must be called before the fd is closed, so a late signal cannot hit a reused number.
    pub fn unregister(&self, fd: RawFd) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&fd);
        }
    }

    fn broken(&self, fd: RawFd) {
        // The map stays locked until the lease is let go: the owner unregisters under this lock
        // before it closes the fd, so the fd stays the leased file's throughout.
        if let Ok(m) = self.map.lock() {
            if let Some(lease) = m.get(&fd) {
                lease.broken.store(true, Ordering::SeqCst);
                let f = lease
                    .on_break
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(f) = f {
                    f.on_break();
                }
                // SAFETY: the fd is registered, so its owner has not closed it yet (it
                // unregisters under this same lock before closing).
                let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = fsx::set_lease(bfd, fsx::LEASE_UNLCK, 0);
            }
        }
    }
}

/// Paused by `evac pause`, SIGUSR1 (until `evac resume` or SIGUSR2): copy workers wait.
static PAUSED: AtomicBool = AtomicBool::new(false);

pub fn set_paused(p: bool) {
    PAUSED.store(p, Ordering::SeqCst);
}

pub fn paused() -> bool {
    PAUSED.load(Ordering::SeqCst)
}

pub fn lease_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

pub struct Stopper {
    pub stop: Arc<AtomicBool>,
    pub count: AtomicU32,
}

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The process's signal handling, started once: the lease map and the stop flag it serves.
/// (`evac stage` relocates several times in one process: every run shares them.)
pub fn process() -> std::io::Result<(Arc<Leases>, Arc<AtomicBool>)> {
    static ONCE: std::sync::OnceLock<(Arc<Leases>, Arc<AtomicBool>)> = std::sync::OnceLock::new();
    static START: Mutex<()> = Mutex::new(());
    let _g = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((l, s)) = ONCE.get() {
        return Ok((l.clone(), s.clone()));
    }
    let leases = Arc::new(Leases::default());
    let stop = Arc::new(AtomicBool::new(false));
    start(leases.clone(), stop.clone())?;
    let _ = ONCE.set((leases.clone(), stop.clone()));
    Ok((leases, stop))
}

/// Block our signals in the calling thread (inherited by threads spawned later) and start the
/// thread that handles them.
fn start(leases: Arc<Leases>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let sigs = [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        lease_signal(),
    ];
    let set = sigset(&sigs);
    // SAFETY: standard signal-mask and signalfd calls with a valid set.
    let sfd = unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    };
    if sfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stopper = Stopper {
        stop,
        count: AtomicU32::new(0),
    };
    std::thread::Builder::new()
        .name("evac-signals".into())
        .spawn(move || loop {
            // SAFETY: reading one signalfd_siginfo into a correctly sized buffer.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let n = unsafe {
                libc::read(
                    sfd,
                    &mut info as *mut _ as *mut libc::c_void,
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            if n != std::mem::size_of::<libc::signalfd_siginfo>() as isize {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            let sig = info.ssi_signo as i32;
            if sig == lease_signal() {
                leases.broken(info.ssi_fd);
            } else if sig == libc::SIGUSR1 {
                set_paused(true);
                crate::util::notice::say("evac: paused (SIGUSR1); SIGUSR2 or `evac resume` goes on");
            } else if sig == libc::SIGUSR2 {
                set_paused(false);
                crate::util::notice::say("evac: resumed (SIGUSR2)");
            } else {
                let n = stopper.count.fetch_add(1, Ordering::SeqCst);
                stopper.stop.store(true, Ordering::SeqCst);
                if n >= 1 {
                    // Second request: stop now; the journal makes this as safe as a crash.
                    crate::util::notice::say_now(
                        "evac: second stop request, exiting now; the next run will recover",
                    );
                    std::process::exit(crate::util::exit::EXIT_INTERRUPTED);
                }
                crate::util::notice::say("evac: stopping cleanly (finishing in-flight files); send again to stop at once");
            }
        })?;
    Ok(())
}
