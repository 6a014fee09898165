//! Messages for the operator from any layer: errors, notes, the START and FINISH lines, a pause
//! or a stop taking effect. The library never prints: it says things here, and the terminal
//! side (`ui`, installed by the binary) shows them above the progress bars, honouring `--quiet`
//! where it applies. With nothing installed (evac used as a library), notices go nowhere.

use std::sync::{Arc, RwLock};

/// Where notices go.
pub trait Listener: Send + Sync {
    /// A line for the operator, shown in order with the progress display.
    fn line(&self, text: &str);
    /// A line that must be out before the process exits, which it is about to.
    fn urgent(&self, text: &str) {
        self.line(text)
    }
}

static LISTENER: RwLock<Option<Arc<dyn Listener>>> = RwLock::new(None);

/// Send every later notice to `l`.
pub fn install(l: Arc<dyn Listener>) {
    *LISTENER.write().unwrap_or_else(|e| e.into_inner()) = Some(l);
}

fn with(f: impl FnOnce(&dyn Listener)) {
    if let Some(l) = LISTENER.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        f(l.as_ref());
    }
}

/// A line for the operator.
pub fn say(text: impl AsRef<str>) {
    with(|l| l.line(text.as_ref()));
}

/// A line for the operator, out before this returns (the process is about to exit).
pub fn say_now(text: impl AsRef<str>) {
    with(|l| l.urgent(text.as_ref()));
}
