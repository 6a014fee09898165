//! What a run has done so far, counted in atomics by the workers and the coordinator; the
//! terminal side reads them to draw progress (the engine never draws).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    pub files_seen: AtomicU64,
    pub bytes_seen: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    pub busy_workers: AtomicU64,
    pub workers: AtomicU64,
    pub walk_done: AtomicBool,
    /// The governor's state in a few words ("gov 2/8 util 97%").
    pub governor: std::sync::Mutex<String>,
    /// The governor's decisions not yet in the journal (the coordinator writes them with its
    /// next commit).
    decisions: std::sync::Mutex<std::collections::VecDeque<Decided>>,
}

/// A governor decision, as the run log records it.
pub struct Decided {
    pub at: f64,
    pub message: String,
    /// A JSON object.
    pub fields: String,
}

/// Decisions kept waiting for a commit at most: with none for long (a long pause), the oldest go.
const DECISIONS_KEPT: usize = 1000;

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// A governor decision for the run log.
    pub fn note_decision(&self, d: Decided) {
        let mut q = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= DECISIONS_KEPT {
            q.pop_front();
        }
        q.push_back(d);
    }

    /// The governor decisions noted since the last call, oldest first.
    pub fn take_decisions(&self) -> Vec<Decided> {
        let mut q = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }
}
