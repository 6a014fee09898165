//! The operating system: dirfd-relative filesystem primitives, signals and leases, the journal
//! lock, disks and /proc, the watchdog of blocked threads, and the step points tests use.

pub mod busy;
pub mod disks;
pub mod fsx;
pub mod lock;
pub mod proc;
pub mod signals;
pub mod steps;
pub mod watchdog;
