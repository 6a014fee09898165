//! The exit codes of the operator's interface (the README lists them under "Exit codes").

/// Everything eligible is done.
pub const EXIT_OK: i32 = 0;
/// An error: bad arguments, an unusable journal, fatal I/O, storage that stopped answering.
pub const EXIT_ERROR: i32 = 1;
/// Finished with files left (deferred, failed, staged out: see `status`).
pub const EXIT_LEFT: i32 = 3;
/// Interrupted cleanly (SIGINT/SIGTERM); resumable.
pub const EXIT_INTERRUPTED: i32 = 4;
/// Another run holds this journal.
pub const EXIT_LOCKED: i32 = 5;
