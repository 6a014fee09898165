//! What `evac fingerprint` has done so far, counted in atomics by its workers (the terminal side
//! draws it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    pub dirs: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub candidates: AtomicU64,
    pub errors: AtomicU64,
    pub indexed: AtomicBool,
    /// Candidate files to read (cache misses) and their bytes, once the index is complete.
    pub to_read: AtomicU64,
    pub to_read_bytes: AtomicU64,
    /// Candidate files opened, and bytes read from them.
    pub read: AtomicU64,
    pub read_bytes: AtomicU64,
    /// Candidate files finished with (read, or given up on).
    pub done: AtomicU64,
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
