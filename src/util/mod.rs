//! Helpers every layer may use: escaping of byte strings for people, time and
//! calendar, byte units, exit codes, `--exclude` patterns.

pub(crate) mod escape;
pub(crate) mod exit;
pub(crate) mod filter;
pub(crate) mod notice;
pub mod time;
pub(crate) mod units;
