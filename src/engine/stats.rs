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
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
