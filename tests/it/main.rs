//! evac's integration tests: one test binary, a module per topic, and the helpers they share in
//! `common`. `cargo test --release NAME` selects tests by path, e.g. `cli::sigint` or `enumerate`.
//! Every test enters `common::gate` first: the suites that measure time or load the machine run
//! only beside tests of their own suite, as when each suite was a binary of its own.

#[macro_use]
mod common;

mod busy;
mod cli;
mod completions_man;
mod counters;
mod crash;
mod enumerate;
mod events;
mod failing_storage;
mod fallbacks;
mod filters;
mod fingerprint;
mod governor;
mod hardlinks;
mod holders;
mod hostile;
mod hsm_detect;
mod hsm_import;
mod hsm_phases;
mod hsm_sim;
mod hsm_stage;
mod journal_damage;
mod layers;
mod live_users;
mod metrics;
mod power_loss;
mod progress;
mod recover;
mod relocate;
mod report;
mod rescue;
mod resync;
mod status_verify;
mod swap_race;
mod throttle;
mod units;
