//! How a run meets failing storage. A full DEST stops the copying at once and defers the rest
//! ("destination full"). A copy worker blocked in one operation past `--op-timeout` is given up
//! on (its file deferred, the call and file named) and replaced. When no worker gets anything
//! done any more, or a syncfs of DEST does not return in time, the storage is unusable: the run
//! records what was in flight and ends with exit 1. Blocked threads are left behind, never
//! joined, so they cannot keep the process from exiting.

use super::{Runner, EXIT_INTERRUPTED};
use crate::engine::stats::Stats;
use crate::error::{Error, Result};
use crate::journal::{Cause, FileState, Journal, Why};
use crate::protocol::faults::{self, DEST_FULL};
use crate::protocol::{self, Copied, Ctx, Job, Outcome};
use crate::sys::fsx;
use crate::sys::watchdog::{self, Deadman, Slot, Stall};
use crate::util::escape::quoted;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustix::fd::AsFd;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Exit code of a run that ended because storage stopped answering (1, as for any fatal I/O error: README, "Exit codes").
pub const EXIT_STORAGE: i32 = 1;

/// Reasons for files held up by storage that does not answer start with this.
pub const NOT_ANSWERING: &str = "storage not answering";

/// The reason of a file whose copy worker was given up on starts with this: such a file may
/// have left a DEST temporary behind, which the next run removes.
const ABANDONED: &str = "storage not answering: gave up";

/// Lets tests make DEST's syncfs hang (the Nth and every later one), which no filesystem of
/// the test's own can be made to do on demand.
fn stall_syncfs_at() -> Option<u64> {
    std::env::var("EVAC_TEST_STALL_SYNCFS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// What the copy workers share with the coordinator.
#[derive(Default)]
struct Shared {
    full: AtomicBool,
    full_reason: Mutex<Option<String>>,
    /// Jobs any worker has finished: the progress that tells one stuck file from stuck storage.
    completed: AtomicU64,
}

impl Shared {
    fn set_full(&self, why: &str) {
        if let Ok(mut r) = self.full_reason.lock() {
            r.get_or_insert_with(|| why.to_string());
        }
        self.full.store(true, Ordering::SeqCst);
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    fn full_reason(&self) -> String {
        self.full_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| DEST_FULL.into())
    }
}

struct Worker {
    slot: Arc<Slot>,
    handle: Option<JoinHandle<()>>,
    /// The job sequence being watched, and what has been seen of it.
    watched: Option<(u64, Stall)>,
    abandoned: bool,
}

pub(super) struct Storage {
    op_timeout: Duration,
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    pool_size: usize,
    spawned: usize,
    /// Files given up on this run, with the reason: not tried again before the next run.
    gave_up: HashMap<i64, String>,
    /// Workers given up on since a job last finished.
    streak: usize,
    completed_mark: u64,
    unusable: Option<String>,
    sync_hung: bool,
    full_logged: bool,
    next_look: Instant,
    syncs: u64,
    stall_syncfs_at: Option<u64>,
    _deadman: Deadman,
}

impl Storage {
    /// Call on the coordinating thread: that is the thread the deadman watches.
    pub(super) fn new(op_timeout: Duration, journal: &Path, run_id: i64) -> Storage {
        // The watchdog's clock: a zero would call every operation stuck.
        let op_timeout = op_timeout.max(Duration::from_millis(1));
        let path = journal.to_path_buf();
        let deadman = Deadman::start(
            watchdog::gettid(),
            op_timeout,
            Box::new(move |what, blocked| coordinator_stuck(&path, run_id, &what, blocked)),
        );
        Storage {
            op_timeout,
            shared: Arc::new(Shared::default()),
            workers: Vec::new(),
            pool_size: 0,
            spawned: 0,
            gave_up: HashMap::new(),
            streak: 0,
            completed_mark: 0,
            unusable: None,
            sync_hung: false,
            full_logged: false,
            next_look: Instant::now(),
            syncs: 0,
            stall_syncfs_at: stall_syncfs_at(),
            _deadman: deadman,
        }
    }

    fn secs(&self) -> String {
        format!("{}", self.op_timeout.as_secs_f64())
    }
}

/// The deadman's last word: the coordinating thread is blocked and nothing can unblock it. Say
/// so, record it in the journal (from a connection of our own, waiting a few seconds at most),
/// and exit; the files in flight are where a crash would leave them, for the next run.
fn coordinator_stuck(journal: &Path, run_id: i64, what: &str, blocked: Duration) {
    let msg = format!(
        "{NOT_ANSWERING}: the coordinating thread has been blocked for {:.0} s in {what}; exiting now (the next run recovers the files in flight, as after a crash)",
        blocked.as_secs_f64()
    );
    crate::util::notice::say_now(format!("evac: error: {msg}"));
    let path = journal.to_path_buf();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = std::thread::Builder::new()
        .name("evac-last-word".into())
        .spawn(move || {
            if let Ok(j) = Journal::open(&path, false) {
                let _ = j.log(Some(run_id), "error", &msg);
                let _ = j.finish_run(run_id, EXIT_STORAGE, "{}");
            }
            let _ = tx.send(());
        });
    let _ = rx.recv_timeout(Duration::from_secs(3));
    std::process::exit(EXIT_STORAGE);
}

/// A copy worker: takes jobs until the queue closes, or until it is given up on.
fn work(
    ctx: &Ctx,
    shared: &Shared,
    slot: &Slot,
    rx: &Receiver<Job>,
    tx: &Sender<(Vec<i64>, Outcome)>,
    stats: &Stats,
) {
    slot.set_tid(watchdog::gettid());
    let mut buf = vec![0u8; 4 << 20];
    while let Ok(job) = rx.recv() {
        let ids: Vec<i64> = job.names.iter().map(|r| r.id).collect();
        if shared.is_full() {
            // Not one more try against a full DEST: each would fail the same way.
            let out = Outcome::Deferred(faults::not_attempted_full());
            if tx.send((ids, out)).is_err() {
                return;
            }
            continue;
        }
        slot.begin(&ids, job.names.first().map_or(&[][..], |r| &r.path));
        Stats::add(&stats.busy_workers, 1);
        let out = protocol::copy_job(ctx, job, &mut buf);
        stats.busy_workers.fetch_sub(1, Ordering::Relaxed);
        if !slot.end() {
            // Given up on while blocked: the file is already recorded as deferred and another
            // worker has taken this one's place. Leave nothing of this copy behind.
            if let Outcome::Copied(c) = out {
                protocol::discard(ctx, &c, true);
            }
            return;
        }
        shared.completed.fetch_add(1, Ordering::SeqCst);
        if let Outcome::Deferred(why) = &out {
            if why.cause == Cause::DestFull {
                shared.set_full(&why.text);
            }
        }
        if tx.send((ids, out)).is_err() {
            return;
        }
    }
}

impl Runner {
    pub(super) fn start_workers(&mut self, n: usize) -> Result<()> {
        if !watchdog::can_watch() {
            self.log("warn", "cannot see threads' system calls (/proc/self/task/*/syscall): --op-timeout has no effect, and storage that stops answering will hang this run")?;
        }
        self.storage.pool_size = n;
        self.stats.workers.store(n as u64, Ordering::Relaxed);
        for _ in 0..n {
            self.spawn_worker()?;
        }
        Ok(())
    }

    fn spawn_worker(&mut self) -> Result<()> {
        let i = self.storage.spawned;
        self.storage.spawned += 1;
        let slot = Arc::new(Slot::default());
        let (rx, tx) = (self.chan.job_rx.clone(), self.chan.res_tx.clone());
        let (ctx, stats) = (self.ctx.clone(), self.stats.clone());
        let (shared, s) = (self.storage.shared.clone(), slot.clone());
        let handle = std::thread::Builder::new()
            .name(format!("evac-copy-{i}"))
            .spawn(move || work(&ctx, &shared, &s, &rx, &tx, &stats))
            .map_err(|e| Error::Setup(format!("start worker: {e}")))?;
        self.storage.workers.push(Worker {
            slot,
            handle: Some(handle),
            watched: None,
            abandoned: false,
        });
        Ok(())
    }

    /// Wait for the workers to end, except those given up on: they may never return, and the
    /// process exits without them.
    pub(super) fn join_workers(&mut self) {
        for w in &mut self.storage.workers {
            if !w.abandoned {
                if let Some(h) = w.handle.take() {
                    let _ = h.join();
                }
            }
        }
    }

    /// From the coordinator's loop: say once that DEST is full, and give up on workers that
    /// have been blocked in one operation for longer than --op-timeout.
    pub(super) fn watch(&mut self) -> Result<()> {
        if self.storage.shared.is_full() && !self.storage.full_logged {
            self.storage.full_logged = true;
            let msg = format!(
                "DEST {} is full ({}): no more copies are tried this run; the files left are deferred with reason \"{DEST_FULL}\"; free space at DEST (or grow it), then run again",
                quoted(self.plan.dest.as_os_str().as_encoded_bytes()),
                self.storage.shared.full_reason()
            );
            self.log("warn", &msg)?;
        }
        let now = Instant::now();
        if now < self.storage.next_look {
            return Ok(());
        }
        let every =
            (self.storage.op_timeout / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        self.storage.next_look = now + every;
        // Once the storage is known not to answer, a worker still blocked is not waited for
        // another full timeout: the run is only waiting for it to end.
        let timeout = match self.storage.unusable {
            Some(_) => self.storage.op_timeout.min(Duration::from_secs(1)),
            None => self.storage.op_timeout,
        };
        let mut stuck = Vec::new();
        for (i, w) in self.storage.workers.iter_mut().enumerate() {
            if w.abandoned {
                continue;
            }
            let Some((tid, seq)) = w.slot.busy() else {
                w.watched = None;
                continue;
            };
            if !matches!(&w.watched, Some((s, _)) if *s == seq) {
                w.watched = Some((seq, Stall::new(tid)));
            }
            if let Some((_, stall)) = w.watched.as_mut() {
                let blocked = stall.poll();
                if blocked >= timeout {
                    stuck.push((i, seq, blocked, stall.describe()));
                }
            }
        }
        for (i, seq, blocked, what) in stuck {
            self.give_up_worker(i, seq, blocked, &what)?;
        }
        Ok(())
    }

    fn give_up_worker(&mut self, i: usize, seq: u64, blocked: Duration, what: &str) -> Result<()> {
        let w = &mut self.storage.workers[i];
        let Some((ids, path)) = w.slot.abandon(seq) else {
            // It finished in the meantime.
            return Ok(());
        };
        w.abandoned = true;
        // Detached: it may never come back.
        w.handle = None;
        let why = format!(
            "{ABANDONED} after {:.0} s blocked in {what}",
            blocked.as_secs_f64()
        );
        let line = format!("{}: {why}", quoted(&path));
        self.j.log(Some(self.run_id), "error", &line)?;
        self.say(format!("evac: {line}"));
        for id in &ids {
            self.storage.gave_up.insert(*id, why.clone());
        }
        // The job itself stays with the blocked worker; a deferral needs only its ids.
        self.take((ids, Outcome::Deferred(Why::new(Cause::Abandoned, why))));
        let done = self.storage.shared.completed.load(Ordering::SeqCst);
        if done != self.storage.completed_mark {
            self.storage.completed_mark = done;
            self.storage.streak = 0;
        }
        self.storage.streak += 1;
        // One worker stuck while the others get on is one bad file (a dead sector, a hung
        // recall); as many in a row as there are workers (two at least) with nothing finishing
        // in between is the storage itself.
        if self.storage.streak >= self.storage.pool_size.max(2) {
            let why = format!(
                "{} copy workers in a row were blocked for over {} s with no file finishing in between (the last in {what})",
                self.storage.streak,
                self.storage.secs()
            );
            return self.storage_unusable(why);
        }
        self.spawn_worker()
    }

    /// Stop the run as an interrupt would (workers abandon their copies, nothing more is
    /// dispatched, what is copied and can be made durable is still committed), and say why.
    fn storage_unusable(&mut self, why: String) -> Result<()> {
        if self.storage.unusable.is_some() {
            return Ok(());
        }
        self.storage.unusable = Some(why.clone());
        self.stop.store(true, Ordering::SeqCst);
        let msg = format!(
            "{NOT_ANSWERING}: {why}; stopping this run. What was in flight is recorded (see `evac status`); run `evac run --journal {}` again once the storage answers",
            quoted(self.o.journal.as_os_str().as_encoded_bytes())
        );
        self.log("error", &msg)?;
        // Jobs still queued may have no worker left to take them.
        let untried = Why::new(
            Cause::Stalled,
            format!("{NOT_ANSWERING} (not attempted this run)"),
        );
        while let Ok(job) = self.chan.job_rx.try_recv() {
            let ids = job.names.iter().map(|r| r.id).collect();
            self.take((ids, Outcome::Deferred(untried.clone())));
        }
        Ok(())
    }

    /// Jobs about to be dispatched that must not be tried now (DEST full, storage not
    /// answering, or given up on earlier in this run): deferred, with the reason, untried.
    pub(super) fn hold_back(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        let full = self.storage.shared.is_full();
        let unusable = self.storage.unusable.is_some();
        if !full && !unusable && self.storage.gave_up.is_empty() {
            return jobs;
        }
        let mut keep = Vec::with_capacity(jobs.len());
        for job in jobs {
            let why = if full {
                Some(faults::not_attempted_full())
            } else if unusable {
                Some(Why::new(
                    Cause::Stalled,
                    format!("{NOT_ANSWERING} (not attempted this run)"),
                ))
            } else {
                job.names
                    .iter()
                    .find_map(|r| self.storage.gave_up.get(&r.id).cloned())
                    .map(|t| Why::new(Cause::Abandoned, t))
            };
            match why {
                None => keep.push(job),
                Some(why) => {
                    let ids: Vec<i64> = job.names.iter().map(|r| r.id).collect();
                    Stats::add(&self.stats.deferred, ids.len() as u64);
                    self.to_record
                        .outcomes
                        .push((ids, FileState::Deferred, Some(why)));
                }
            }
        }
        keep
    }

    /// Retry rounds are pointless against a full DEST: every retry would only be deferred again.
    pub(super) fn retry_worthwhile(&self) -> bool {
        !self.storage.shared.is_full() && self.storage.unusable.is_none()
    }

    /// A copy that could not be placed at DEST: deferred when DEST had no room for it (and no
    /// more copies tried when all of DEST is full), failed otherwise.
    pub(super) fn give_up_placing(&mut self, c: &Copied, fault: protocol::PlaceFault) {
        let why = fault.why();
        match why.cause {
            Cause::DestFull | Cause::DestQuota => {
                if why.cause == Cause::DestFull {
                    self.storage.shared.set_full(&why.text);
                }
                self.give_up(c, FileState::Deferred, why);
            }
            _ => self.give_up(c, FileState::Failed, why),
        }
    }

    /// syncfs of DEST on a thread of its own, waited for at most --op-timeout: DEST not
    /// answering then fails the batch (never swapped) and ends the run instead of hanging it.
    pub(super) fn sync_dest(&mut self) -> Result<std::io::Result<()>> {
        use std::io::{Error as IoError, ErrorKind};
        if self.storage.sync_hung {
            return Ok(Err(IoError::other(format!(
                "not tried: an earlier syncfs of DEST did not return ({NOT_ANSWERING})"
            ))));
        }
        crate::sys::steps::at(crate::sys::steps::Step::SyncDest, b"");
        self.storage.syncs += 1;
        let stall = self
            .storage
            .stall_syncfs_at
            .is_some_and(|n| self.storage.syncs >= n);
        let fd = match self.ctx.dst_root.try_clone() {
            Ok(fd) => fd,
            Err(e) => return Ok(Err(e)),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("evac-syncfs".into())
            .spawn(move || {
                if stall {
                    loop {
                        std::thread::park();
                    }
                }
                let _ = tx.send(fsx::syncfs(fd.as_fd()));
            });
        if let Err(e) = spawned {
            return Ok(Err(e));
        }
        let deadline = Instant::now() + self.storage.op_timeout;
        // Short waits: the deadman watching this thread must see it wake, not a stuck wait.
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Err(IoError::other(
                        "the syncfs thread ended without a result",
                    )))
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        self.storage.sync_hung = true;
        let secs = self.storage.secs();
        self.storage_unusable(format!(
            "syncfs of DEST {} did not return within {secs} s",
            quoted(self.plan.dest.as_os_str().as_encoded_bytes())
        ))?;
        Ok(Err(IoError::new(
            ErrorKind::TimedOut,
            format!("did not return within {secs} s ({NOT_ANSWERING})"),
        )))
    }

    /// Files whose copy worker an earlier run gave up on may have left a DEST temporary that
    /// nothing else would remove (if the file is gone by the next walk): recover them first,
    /// exactly as files left in flight.
    pub(super) fn recover_abandoned(&mut self) -> Result<()> {
        let mut after = 0;
        loop {
            let rows = self.j.deferred_for(Cause::Abandoned, after, 1000)?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            let j = self.j.clone();
            let tx = j.tx()?;
            for (id, path) in &rows {
                self.recover_one(*id, path)?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// A run stopped because storage stopped answering ends with exit 1, not as interrupted.
    pub(super) fn storage_exit_code(&self, code: i32) -> i32 {
        if self.storage.unusable.is_some() && code == EXIT_INTERRUPTED {
            EXIT_STORAGE
        } else {
            code
        }
    }
}
