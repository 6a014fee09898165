//! Hard caps on what evac asks of the old disks: bytes per second (`--bwlimit`, a rate or a
//! timetable of rates by local time of day) and files per second (`--files-per-sec`), shared by
//! all copy workers and applied inside a file's copy, so a large file cannot defeat them; and
//! the gate through which the governor's worker count and duty cycle take effect.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Paused (SIGUSR1, `evac pause`) until resumed (SIGUSR2, `evac resume`): process-wide, so the
/// signal thread can set it.
/// A rate in bytes per second by time of day: `10M`, `off`, or `08:00,10M 19:00,off` (each
/// entry holds from its time until the next; the last one wraps around midnight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// (minute of the day, bytes per second; None = unlimited), sorted by minute.
    entries: Vec<(u32, Option<u64>)>,
}

fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    match s {
        "off" | "0" | "none" | "unlimited" => Ok(None),
        _ => crate::util::units::parse_bytes(s).map(|b| (b != 0).then_some(b)),
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if !s.contains(',') {
            return Ok(Schedule {
                entries: vec![(0, parse_rate(s)?)],
            });
        }
        let mut entries = Vec::new();
        for part in s.split_whitespace() {
            let (t, r) = part
                .split_once(',')
                .ok_or_else(|| format!("--bwlimit {s}: {part:?} is not HH:MM,RATE"))?;
            let (h, m) = t
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
                .filter(|(h, m)| *h < 24 && *m < 60)
                .ok_or_else(|| format!("--bwlimit {s}: {t:?} is not a time HH:MM"))?;
            entries.push((
                h * 60 + m,
                parse_rate(r).map_err(|e| format!("--bwlimit {s}: {e}"))?,
            ));
        }
        entries.sort_by_key(|e| e.0);
        Ok(Schedule { entries })
    }
}

impl Schedule {
    pub fn unlimited() -> Schedule {
        Schedule {
            entries: vec![(0, None)],
        }
    }

    /// The rate now (the clock is read only for a timetable).
    fn rate_now(&self) -> Option<u64> {
        match self.entries.as_slice() {
            [(_, r)] => *r,
            _ => self.rate_at(local_minute()),
        }
    }

    /// The rate at `minute` of the day.
    pub fn rate_at(&self, minute: u32) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.0 <= minute)
            .or(self.entries.last())
            .and_then(|e| e.1)
    }
}

/// Run windows by local time (`--window 19:00-07:00`, repeatable): new files start only inside
/// one; a window may span midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    from: u32,
    to: u32,
}

fn hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl std::str::FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("--window {s}: expected HH:MM-HH:MM"))?;
        match (hhmm(a.trim()), hhmm(b.trim())) {
            (Some(from), Some(to)) if from != to => Ok(Window { from, to }),
            _ => Err(format!(
                "--window {s}: expected HH:MM-HH:MM (two different times)"
            )),
        }
    }
}

impl Window {
    fn contains(&self, m: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&m)
        } else {
            m >= self.from || m < self.to
        }
    }
}

/// Whether minute `m` is inside one of `ws` (no windows: always).
pub fn in_windows(ws: &[Window], m: u32) -> bool {
    ws.is_empty() || ws.iter().any(|w| w.contains(m))
}

/// The next minute of the day at which `ws` changes from inside to outside or back.
pub fn next_window_change(ws: &[Window], m: u32) -> Option<u32> {
    let now = in_windows(ws, m);
    (1..=1440)
        .map(|d| (m + d) % 1440)
        .find(|x| in_windows(ws, *x) != now)
}

pub fn fmt_minute(m: u32) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// The local minute of the day now.
pub fn local_minute() -> u32 {
    // SAFETY: time(2) and localtime_r(3) with a zeroed tm to fill.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        (tm.tm_hour * 60 + tm.tm_min) as u32
    }
}

/// One pacing line: the earliest time the next unit may go (GCRA); a short burst is allowed.
struct Pace {
    next: Instant,
}

impl Pace {
    /// Reserve `units` at `rate` per second; the instant they may start.
    fn reserve(&mut self, units: f64, rate: f64, burst: Duration) -> Instant {
        let now = Instant::now();
        let start = self.next.max(now.checked_sub(burst).unwrap_or(now));
        self.next = start + Duration::from_secs_f64(units / rate);
        start
    }
}

/// The caps, shared by all copy workers.
pub struct Limiter {
    windows: Vec<Window>,
    bw: RwLock<Schedule>,
    files_per_sec: RwLock<Option<f64>>,
    bytes: Mutex<Pace>,
    files: Mutex<Pace>,
    /// Workers that may copy at once (the governor's count, or `evac throttle --workers`).
    allowed: AtomicUsize,
    /// Workers copying now (holding a `Turn`).
    active: AtomicUsize,
    /// Below 1: the share of the time the one allowed worker may work (f64 bits).
    duty: AtomicU64,
    /// With a duty below 1: no new file starts before this instant.
    rest_until: Mutex<Instant>,
    /// Bytes read and files started so far, for the governor's rate.
    pub bytes_read: AtomicU64,
    pub files_started: AtomicU64,
    streaming: AtomicBool,
}

thread_local! {
    /// Since when this worker has worked without resting (for the duty cycle).
    static BUSY_FROM: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A worker's permission to copy one file; the slot is given back when it is dropped.
pub struct Turn<'a> {
    limiter: &'a Limiter,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let l = self.limiter;
        // The rest this file's work has earned is taken before the next file starts (not here:
        // the file may still be leased, and a lease break must be answered at once).
        if let Some(from) = BUSY_FROM.with(|b| b.take()) {
            let owed = l.owed(from.elapsed());
            if !owed.is_zero() {
                if let Ok(mut r) = l.rest_until.lock() {
                    *r = (*r).max(Instant::now() + owed);
                }
            }
        }
        l.active.fetch_sub(1, Ordering::SeqCst);
    }
}

const BURST: Duration = Duration::from_millis(100);
const GOVERNED_CHUNK: usize = 512 << 10;

impl Limiter {
    pub fn with_windows(bw: Schedule, files_per_sec: Option<f64>, windows: Vec<Window>) -> Limiter {
        let now = Instant::now();
        Limiter {
            windows,
            bw: RwLock::new(bw),
            files_per_sec: RwLock::new(files_per_sec.filter(|f| *f > 0.0)),
            bytes: Mutex::new(Pace { next: now }),
            files: Mutex::new(Pace { next: now }),
            allowed: AtomicUsize::new(usize::MAX),
            active: AtomicUsize::new(0),
            duty: AtomicU64::new(1f64.to_bits()),
            rest_until: Mutex::new(now),
            bytes_read: AtomicU64::new(0),
            files_started: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
        }
    }

    /// The governor's decision: how many workers may copy at once, and below one worker, what
    /// share of the time the one may work.
    pub fn govern(&self, allowed: usize, duty: f64) {
        self.allowed.store(allowed.max(1), Ordering::SeqCst);
        self.duty
            .store(duty.clamp(0.01, 1.0).to_bits(), Ordering::SeqCst);
    }

    /// Whether copies should write back as they go (see `fsx::copy_sparse`): when the governor
    /// or a cap paces them, the pace must reach the disk, not only the page cache.
    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
    }

    pub fn allowed(&self) -> usize {
        self.allowed.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn duty(&self) -> f64 {
        f64::from_bits(self.duty.load(Ordering::Relaxed))
    }

    /// The rest that `busy` of work earns at the current duty.
    fn owed(&self, busy: Duration) -> Duration {
        let d = self.duty();
        if d >= 1.0 {
            return Duration::ZERO;
        }
        busy.mul_f64((1.0 - d) / d)
    }

    /// Take one of the allowed slots (waiting for one), then any rest owed.
    fn take_turn(&self, go_on: &mut dyn FnMut() -> bool) -> Option<Turn<'_>> {
        loop {
            let a = self.active.load(Ordering::SeqCst);
            if a < self.allowed() {
                if self
                    .active
                    .compare_exchange(a, a + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            if !go_on() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let turn = Turn { limiter: self };
        let rest = self
            .rest_until
            .lock()
            .map(|r| *r)
            .unwrap_or_else(|_| Instant::now());
        if !wait_until(rest, go_on) {
            return None;
        }
        BUSY_FROM.with(|b| b.set(Some(Instant::now())));
        Some(turn)
    }

    /// Inside a copy, at a duty below 1: rest for what the work since the last rest earned.
    fn rest_in_copy(&self, go_on: &mut dyn FnMut() -> bool) -> bool {
        let Some(from) = BUSY_FROM.with(|b| b.get()) else {
            return true;
        };
        let busy = from.elapsed();
        if busy < Duration::from_millis(50) {
            return true;
        }
        let owed = self.owed(busy);
        if owed.is_zero() {
            return true;
        }
        let ok = wait_until(Instant::now() + owed, go_on);
        BUSY_FROM.with(|b| b.set(Some(Instant::now())));
        ok
    }

    /// New caps from `evac throttle` while running.
    pub fn set(&self, bw: Option<Schedule>, files_per_sec: Option<Option<f64>>) {
        if let (Some(b), Ok(mut w)) = (bw, self.bw.write()) {
            *w = b;
        }
        if let (Some(f), Ok(mut w)) = (files_per_sec, self.files_per_sec.write()) {
            *w = f.filter(|f| *f > 0.0);
        }
    }

    fn rate(&self) -> Option<u64> {
        self.bw.read().ok().and_then(|s| s.rate_now())
    }

    /// While paused: wait (in slices, so that a stop or a lease break is seen at once).
    fn while_paused(go_on: &mut dyn FnMut() -> bool) -> bool {
        while crate::sys::signals::paused() {
            if !go_on() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Wait until `n` more bytes may be read. Returns false (at once) if `go_on` says stop.
    pub fn bytes(&self, n: u64, go_on: &mut dyn FnMut() -> bool) -> bool {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
        if !Self::while_paused(go_on) || !self.rest_in_copy(go_on) {
            return false;
        }
        let Some(rate) = self.rate() else {
            return true;
        };
        let start = match self.bytes.lock() {
            Ok(mut p) => p.reserve(n as f64, rate as f64, BURST),
            Err(_) => return true,
        };
        wait_until(start, go_on)
    }

    /// How much to read at a time under the current cap: a tenth of a second's worth (at least
    /// 64 KiB), so the old disk sees an even stream rather than bursts of `max`.
    pub fn chunk(&self, max: usize) -> usize {
        // Governed, requests stay small enough that a user's read queued behind one of ours
        // waits a fraction of a millisecond, not the time a 4 MiB request takes.
        let max = if self.streaming() {
            max.min(GOVERNED_CHUNK)
        } else {
            max
        };
        match self.rate() {
            Some(rate) => max.min(((rate / 10) as usize).max(64 << 10)),
            None => max,
        }
    }

    /// Wait until one more file may be started: not paused, inside a run window, a worker
    /// slot free, under --files-per-sec. None if `go_on` says stop first. The slot is held
    /// until the `Turn` is dropped, when the file's copy is over.
    pub fn file(&self, go_on: &mut dyn FnMut() -> bool) -> Option<Turn<'_>> {
        if !Self::while_paused(go_on) {
            return None;
        }
        // Outside the run windows no new file starts (those in flight finish).
        while !self.windows.is_empty() && !in_windows(&self.windows, local_minute()) {
            if !go_on() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let turn = self.take_turn(go_on)?;
        self.files_started.fetch_add(1, Ordering::Relaxed);
        let Some(rate) = self.files_per_sec.read().ok().and_then(|f| *f) else {
            return Some(turn);
        };
        let start = match self.files.lock() {
            Ok(mut p) => p.reserve(1.0, rate, Duration::ZERO),
            Err(_) => return Some(turn),
        };
        wait_until(start, go_on).then_some(turn)
    }
}

/// Sleep until `t` in short slices, so that a stop request or a lease break is seen at once.
fn wait_until(t: Instant, go_on: &mut dyn FnMut() -> bool) -> bool {
    loop {
        if !go_on() {
            return false;
        }
        let now = Instant::now();
        if now >= t {
            return true;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(20)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s: Schedule = "08:00,10M 19:00,off".parse().unwrap();
        assert_eq!(s.rate_at(7 * 60 + 59), None, "wraps from 19:00");
        assert_eq!(s.rate_at(8 * 60), Some(10 << 20));
        assert_eq!(s.rate_at(18 * 60 + 59), Some(10 << 20));
        assert_eq!(s.rate_at(19 * 60), None);
        assert_eq!("5M".parse::<Schedule>().unwrap().rate_at(0), Some(5 << 20));
        assert_eq!("off".parse::<Schedule>().unwrap().rate_at(600), None);
        assert!("25:00,1M".parse::<Schedule>().is_err());
        assert!("08:00".parse::<Schedule>().is_err());
        assert!("08:00,fast".parse::<Schedule>().is_err());
    }

    #[test]
    fn windows() {
        let night: Window = "19:00-07:00".parse().unwrap();
        let ws = vec![night];
        assert!(in_windows(&ws, 23 * 60));
        assert!(in_windows(&ws, 6 * 60 + 59));
        assert!(!in_windows(&ws, 7 * 60));
        assert!(!in_windows(&ws, 12 * 60));
        assert_eq!(next_window_change(&ws, 12 * 60), Some(19 * 60));
        assert_eq!(next_window_change(&ws, 23 * 60), Some(7 * 60));
        assert!(in_windows(&[], 0));
        assert!("19:00".parse::<Window>().is_err());
        assert!("10:00-10:00".parse::<Window>().is_err());
    }

    #[test]
    fn pace_holds_the_rate() {
        let mut p = Pace {
            next: Instant::now(),
        };
        let mut last = Instant::now();
        for _ in 0..100 {
            last = p.reserve(1000.0, 10_000.0, Duration::ZERO);
        }
        // 100 x 1000 units at 10000/s: the last may start 9.9 s after the first.
        let span = last.duration_since(Instant::now()).as_secs_f64();
        assert!((9.8..=9.95).contains(&span), "{span}");
    }
}
