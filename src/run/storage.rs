//! How a run meets failing storage. A full DEST stops the copying at once and defers the rest
//! ("destination full"), instead of failing file after file against it.

use super::Runner;
use crate::error::{Error, Result};
use crate::escape::quoted;
use crate::faults::{self, DEST_FULL};
use crate::progress::Stats;
use crate::relocate::{self, Copied, Ctx, Job, Outcome};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the copy workers share with the coordinator.
#[derive(Default)]
struct Shared {
    full: AtomicBool,
    full_reason: Mutex<Option<String>>,
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

pub(super) struct Storage {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    full_logged: bool,
}

impl Storage {
    pub(super) fn new() -> Storage {
        Storage {
            shared: Arc::new(Shared::default()),
            workers: Vec::new(),
            full_logged: false,
        }
    }
}

/// A copy worker: takes jobs until the queue closes.
fn work(
    ctx: &Ctx,
    shared: &Shared,
    rx: &Receiver<Job>,
    tx: &Sender<(Vec<i64>, Outcome)>,
    stats: &Stats,
) {
    let mut buf = vec![0u8; 4 << 20];
    while let Ok(job) = rx.recv() {
        let ids: Vec<i64> = job.names.iter().map(|r| r.id).collect();
        if shared.is_full() {
            // Not one more try against a full DEST: each would fail the same way.
            let out = Outcome::Deferred(job, faults::not_attempted_full());
            if tx.send((ids, out)).is_err() {
                return;
            }
            continue;
        }
        Stats::add(&stats.busy_workers, 1);
        let out = relocate::copy_job(ctx, job, &mut buf);
        stats.busy_workers.fetch_sub(1, Ordering::Relaxed);
        if let Outcome::Deferred(_, why) = &out {
            if faults::is_full_reason(why) {
                shared.set_full(why);
            }
        }
        if tx.send((ids, out)).is_err() {
            return;
        }
    }
}

impl Runner {
    pub(super) fn start_workers(&mut self, n: usize) -> Result<()> {
        self.stats.workers.store(n as u64, Ordering::Relaxed);
        for i in 0..n {
            let (rx, tx) = (self.job_rx.clone(), self.res_tx.clone());
            let (ctx, stats) = (self.ctx.clone(), self.stats.clone());
            let shared = self.storage.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("evac-copy-{i}"))
                .spawn(move || work(&ctx, &shared, &rx, &tx, &stats))
                .map_err(|e| Error::Setup(format!("start worker: {e}")))?;
            self.storage.workers.push(handle);
        }
        Ok(())
    }

    pub(super) fn join_workers(&mut self) {
        for h in self.storage.workers.drain(..) {
            let _ = h.join();
        }
    }

    /// From the coordinator's loop: say once that DEST is full.
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
        Ok(())
    }

    /// Jobs about to be dispatched that must not be tried now (DEST full): deferred, with the
    /// reason, untried.
    pub(super) fn hold_back(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        if !self.storage.shared.is_full() {
            return jobs;
        }
        for job in jobs {
            let ids: Vec<i64> = job.names.iter().map(|r| r.id).collect();
            Stats::add(&self.stats.deferred, ids.len() as u64);
            self.outcomes
                .push((ids, "deferred", Some(faults::not_attempted_full())));
        }
        Vec::new()
    }

    /// Retry rounds are pointless against a full DEST: every retry would only be deferred again.
    pub(super) fn retry_worthwhile(&self) -> bool {
        !self.storage.shared.is_full()
    }

    /// A copy that could not be placed at DEST: deferred when DEST had no room for it (and no
    /// more copies tried when all of DEST is full), failed otherwise.
    pub(super) fn give_up_placing(&mut self, c: &Copied, why: String) {
        match faults::full_in_text(&why) {
            Some(full) => {
                if faults::is_full_reason(&full) {
                    self.storage.shared.set_full(&full);
                }
                self.give_up(c, "deferred", full);
            }
            None => self.give_up(c, "failed", why),
        }
    }
}
