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
pub mod verify;

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

/// A line about a command's progress or its result, on stdout (what scripts read). A closed pipe
/// (`evac … | head`) ends the output, not the command's work, so the error is dropped; output
/// that is the command's whole answer goes through `out_bytes`, which reports it.
pub fn out(line: impl AsRef<str>) {
    let _ = out_bytes(format!("{}\n", line.as_ref()).as_bytes());
}

/// A command's output as it is (a text, a script, a page), on stdout: the one place that writes
/// it.
pub fn out_bytes(b: &[u8]) -> crate::error::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(b)
        .and_then(|()| o.flush())
        .map_err(|e| crate::error::Error::Setup(format!("write output: {e}")))
}

/// A list of paths on stdout, for people or for `xargs -0`: each path escaped, with its reason
/// after a TAB, one a line; or with `null`, raw paths each ended by NUL. The one writer of
/// path lists (`run --dry-run --list`, `status --list`, `holders -0`), so that they all escape
/// and separate alike.
pub struct PathList {
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    null: bool,
}

impl PathList {
    /// A list on stdout, NUL-separated raw paths if `null`.
    pub fn new(null: bool) -> PathList {
        PathList {
            out: std::io::BufWriter::new(std::io::stdout().lock()),
            null,
        }
    }

    /// One path (the reason is left out of a NUL-separated list).
    pub fn item(&mut self, path: &[u8], reason: Option<&str>) -> std::io::Result<()> {
        use std::io::Write;
        let shown = crate::util::escape::escape;
        if self.null {
            self.out.write_all(path)?;
            self.out.write_all(b"\0")
        } else {
            match reason {
                Some(r) => writeln!(self.out, "{}\t{}", shown(path), r),
                None => writeln!(self.out, "{}", shown(path)),
            }
        }
    }

    /// The end of the list: what is buffered is written.
    pub fn done(mut self) -> crate::error::Result<()> {
        use std::io::Write;
        self.out
            .flush()
            .map_err(|e| crate::error::Error::Setup(format!("write output: {e}")))
    }
}

/// One value as one line of JSON (serde), as `--json` prints it.
pub fn json_line<T: serde::Serialize>(v: &T) -> crate::error::Result<String> {
    let mut s = serde_json::to_string(v)
        .map_err(|e| crate::error::Error::Setup(format!("encode JSON: {e}")))?;
    s.push('\n');
    Ok(s)
}

/// A line about a command's work, on stderr beside the notices (what people read).
pub fn err(line: impl AsRef<str>) {
    eprintln!("{}", line.as_ref());
}

/// Show the core's notices on this terminal (stderr), from now on.
pub fn install() {
    crate::util::notice::install(Arc::new(Terminal));
}
