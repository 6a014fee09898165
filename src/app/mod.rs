//! One module per command: each takes typed options, does its work through the layers below, and
//! hands what it has to say to `ui`.

pub mod demo;
pub mod docs;
pub mod events;
pub mod fingerprint;
pub mod hsm;
pub mod recover;
pub mod report;
pub mod rescue;
pub mod run;
pub mod status;
pub mod verify;
