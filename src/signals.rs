//! Signals: SIGINT/SIGTERM ask for a clean stop; lease-break signals are answered at once by
//! releasing the lease and marking the file's swap abandoned. All are read from a signalfd by
//! one thread, so the mask must be set before any other thread starts.

use crate::fsx;
use rustix::fd::BorrowedFd;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Files we hold a lease on, by fd number, with the flag that a break sets.
#[derive(Default)]
pub struct Leases {
    map: Mutex<HashMap<RawFd, Arc<AtomicBool>>>,
}

impl Leases {
    pub fn register(&self, fd: RawFd) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut m) = self.map.lock() {
            m.insert(fd, flag.clone());
        }
        flag
    }

    /// Must be called before the fd is closed, so a late signal cannot hit a reused number.
    pub fn unregister(&self, fd: RawFd) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&fd);
        }
    }

    fn broken(&self, fd: RawFd) {
        if let Ok(m) = self.map.lock() {
            if let Some(flag) = m.get(&fd) {
                flag.store(true, Ordering::SeqCst);
                // SAFETY: the fd is registered, so its owner has not closed it yet (it
                // unregisters under this same lock before closing).
                let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = fsx::set_lease(bfd, fsx::LEASE_UNLCK, 0);
            }
        }
    }
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
                crate::throttle::set_paused(true);
                eprintln!("evac: paused (SIGUSR1); SIGUSR2 or `evac resume` goes on");
            } else if sig == libc::SIGUSR2 {
                crate::throttle::set_paused(false);
                eprintln!("evac: resumed (SIGUSR2)");
            } else {
                let n = stopper.count.fetch_add(1, Ordering::SeqCst);
                stopper.stop.store(true, Ordering::SeqCst);
                if n >= 1 {
                    // Second request: stop now; the journal makes this as safe as a crash.
                    eprintln!("evac: second stop request, exiting now; the next run will recover");
                    std::process::exit(4);
                }
                eprintln!("evac: stopping cleanly (finishing in-flight files); send again to stop at once");
            }
        })?;
    Ok(())
}
