//! evac: relocate a live filesystem to new storage, one file at a time, replacing each original
//! with a symlink to its durable, verified copy, with a journal that survives any stop.

pub mod app;
pub mod cli;
pub mod engine;
pub mod error;
pub mod fingerprint;
pub mod hsm;
pub mod journal;
pub mod pace;
pub mod protocol;
pub mod sys;
pub mod ui;
pub mod util;
