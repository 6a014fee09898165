//! Phase 3's machinery: fingerprint what the passes left (failed, deferred, staged-out files,
//! and files the HSM lost or phase 2 gave up on) without triggering a recall (I4), and find
//! candidate copies the way duplicate finders do: files of a leftover's size only, then a
//! partial hash of their ends, then the full content hash only where that still decides
//! something. The command that drives it is `app::fingerprint`.

pub mod hashing;
pub mod index;
pub mod leftovers;
pub mod matching;
pub mod output;
pub mod stats;
