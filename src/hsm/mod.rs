//! HSM stubs: telling them from resident files by metadata (detect), the HSM's own listing
//! (import), and phase 2's recalls in tape order (stage).

pub mod detect;
pub(crate) mod import;
pub(crate) mod stage;
