//! The terminal: the only code that writes to it (progress, status as text or JSON, messages).

pub mod progress;
