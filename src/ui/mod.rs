//! The terminal: the only code that writes to it. Notices from the core (`util::notice`) are
//! printed here, above the progress bars while a progress display draws; command output
//! (status, verify, holders, reports) is rendered here from the values the commands build.

pub mod events;
pub mod fingerprint;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod rescue;
pub mod status;

use crossbeam_channel::Sender;
use std::sync::{Arc, Mutex};

/// The channel of the progress display drawing now, if any.
static DRAWING: Mutex<Option<Sender<String>>> = Mutex::new(None);

fn set_drawing(tx: Option<Sender<String>>) {
    *DRAWING.lock().unwrap_or_else(|e| e.into_inner()) = tx;
}

struct Terminal;

impl crate::util::notice::Listener for Terminal {
    fn line(&self, text: &str) {
        let tx = DRAWING.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) if tx.send(text.to_string()).is_ok() => {}
            _ => eprintln!("{text}"),
        }
    }

    fn urgent(&self, text: &str) {
        eprintln!("{text}");
    }
}

/// A line of a command's result, on stdout (what scripts read).
pub fn out(line: impl AsRef<str>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    // A closed pipe (`evac … | head`) ends the output, not the command's work.
    let _ = writeln!(o, "{}", line.as_ref()).and_then(|()| o.flush());
}

/// A command's output as it is (a script, a page), on stdout.
pub fn out_bytes(b: &[u8]) -> crate::error::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(b)
        .and_then(|()| o.flush())
        .map_err(|e| crate::error::Error::Setup(format!("write output: {e}")))
}

/// A line about a command's work, on stderr beside the notices (what people read).
pub fn err(line: impl AsRef<str>) {
    eprintln!("{}", line.as_ref());
}

/// Show the core's notices on this terminal (stderr), from now on.
pub fn install() {
    crate::util::notice::install(Arc::new(Terminal));
}
