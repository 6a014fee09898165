//! evac: relocate a live filesystem to new storage, one file at a time, replacing each original
//! with a symlink to its durable, verified copy, with a journal that survives any stop.

//!
//! The public surface is what the binaries and the tests need: the command line (`cli`), HSM
//! stub detection (`hsm::detect`, for the simulator), the journal (`journal`, whose schema
//! the migration tests check) and the calendar (`util::time`). The layers are described in the
//! README's "Code layout".

#![deny(missing_docs)]

pub(crate) mod app;
pub mod cli;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod fingerprint;
pub mod hsm;
pub(crate) mod journal;
pub(crate) mod pace;
pub(crate) mod protocol;
pub(crate) mod sys;
pub(crate) mod ui;
pub mod util;
