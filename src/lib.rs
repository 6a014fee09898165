//! evac: relocate a live filesystem to new storage, one file at a time, replacing each original
//! with a symlink to its durable, verified copy, with a journal that survives any stop.

pub mod busy;
pub mod cli;
pub mod demo;
pub mod disks;
pub mod error;
pub mod escape;
pub mod faults;
pub mod fingerprint;
pub mod fsx;
pub mod governor;
pub mod holders;
pub mod hsm;
pub mod hsm_import;
pub mod journal;
pub mod lock;
pub mod progress;
pub mod recover;
pub mod relocate;
pub mod report;
pub mod resync;
pub mod run;
pub mod signals;
pub mod stage;
pub mod steps;
pub mod throttle;
pub mod walk;
pub mod watchdog;
