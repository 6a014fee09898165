//! How fast evac may go: caps and windows (throttle) and the load governor.

pub mod governor;
pub mod throttle;
