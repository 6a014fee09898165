//! Helpers every layer may use: escaping of byte strings for people, time and
//! calendar, byte units, exit codes, `--exclude` patterns.

pub mod escape;
pub mod exit;
pub mod filter;
pub mod notice;
pub mod time;
pub mod units;
