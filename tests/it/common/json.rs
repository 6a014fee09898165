//! The JSON evac prints (`status --json`, `holders --json`, the fingerprint report), parsed with
//! serde_json; `Json` is serde_json's `Value`, whose accessors (`get`, `as_i64`, `as_str`, …)
//! the tests use directly.

pub use serde_json::Value as Json;

/// One JSON document; the error is serde_json's message.
pub fn parse(s: &str) -> Result<Json, String> {
    serde_json::from_str(s).map_err(|e| e.to_string())
}
