//! JSON string literals for the few places that write JSON by hand (stable key order, one line).

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
