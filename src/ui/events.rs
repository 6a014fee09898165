//! The journal's events as lines: one JSON object per event (`evac events --json`, and
//! `evac run --log-json` for log shippers, both from `json` alone), or one line of text for
//! people (`evac events`). Paths are escaped as everywhere in evac; a path that is not UTF-8
//! also comes as its raw bytes in base64 (`path_b64`), so that a program gets it exactly.

use crate::journal::{EventRow, EventTable};
use crate::util::escape::{escape, quoted};
use crate::util::time::rfc3339;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The one JSON shape of an event. Keys: `ts` (RFC 3339, UTC), `seq` (TABLE:ID, unique in the
/// journal), `run`, `event`, then what the event has: `path` (escaped) and `path_b64`, `cause`,
/// `level`, and its text under the name that says what it is (`blake3` of a relocation, `from`
/// of a rename, `candidate` of a recovery, `detail` of a deferral or failure, `message` of the
/// run log), and the fields of a run-level event (a FINISH's totals, a governor decision).
pub fn json(e: &EventRow) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), json!(rfc3339(e.at)));
    m.insert("seq".into(), json!(format!("{}:{}", e.table.name(), e.id)));
    m.insert("run".into(), json!(e.run));
    m.insert("event".into(), json!(e.event));
    if let Some(p) = &e.path {
        m.insert("path".into(), json!(escape(p)));
        if std::str::from_utf8(p).is_err() {
            m.insert(
                "path_b64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(p)),
            );
        }
    }
    if let Some(l) = &e.level {
        m.insert("level".into(), json!(l));
    }
    if let Some(c) = &e.cause {
        m.insert("cause".into(), json!(c));
    }
    if let Some(d) = e.detail.as_ref().filter(|d| !d.is_empty()) {
        m.insert(detail_key(e).into(), json!(d));
    }
    if let Some(Value::Object(f)) = e
        .fields
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok())
    {
        // An event's own fields never replace the ones every event has.
        for (k, v) in f {
            m.entry(k).or_insert(v);
        }
    }
    Value::Object(m)
}

/// What an event's text is, by event.
fn detail_key(e: &EventRow) -> &'static str {
    match (e.table, e.event.as_str()) {
        (EventTable::Run, _) => "message",
        (_, "relocated") => "blake3",
        (_, "renamed") => "from",
        (_, "recovered") => "candidate",
        _ => "detail",
    }
}

/// One line for people: `TIME run N EVENT "path" [cause] text`.
pub fn text(e: &EventRow) -> String {
    let mut s = format!(
        "{} run {}",
        rfc3339(e.at),
        e.run.map_or("-".into(), |r| r.to_string()),
    );
    // A message that starts with the event's name ("START run 3 …") names it already.
    if !e.detail.as_ref().is_some_and(|d| d.starts_with(&e.event)) {
        s.push(' ');
        s.push_str(&e.event);
    }
    if let Some(l) = e
        .level
        .as_ref()
        .filter(|l| e.event == "log" || *l != "info")
    {
        s.push_str(&format!(" [{l}]"));
    }
    if let Some(p) = &e.path {
        s.push(' ');
        s.push_str(&quoted(p));
    }
    if let Some(c) = &e.cause {
        s.push_str(&format!(" [{c}]"));
    }
    if let Some(d) = e.detail.as_ref().filter(|d| !d.is_empty()) {
        let key = detail_key(e);
        s.push(' ');
        if !matches!(key, "detail" | "message") {
            s.push_str(key);
            s.push('=');
        }
        s.push_str(&one_line(d));
    }
    s
}

/// A reason or message as it is, but on one line: control characters (a newline in an error
/// message) escaped as `escape` does. Paths in it were escaped when it was written.
fn one_line(d: &str) -> String {
    let mut out = String::with_capacity(d.len());
    for c in d.chars() {
        if c.is_control() {
            out.push_str(&escape(c.to_string().as_bytes()));
        } else {
            out.push(c);
        }
    }
    out
}

/// Where `evac run --log-json` writes: a file (appended to) or stderr (`-`). A write that fails
/// never stops the run: it is said once, the lines go on being tried, and the count of lines
/// lost is said at the end.
pub struct LogJson {
    to: Option<std::fs::File>,
    path: PathBuf,
    lost: u64,
    first_error: Option<String>,
}

impl LogJson {
    /// Open `path` for appending (created if missing), or stderr for `-`.
    pub fn open(path: &Path) -> crate::error::Result<LogJson> {
        let to = if path.as_os_str() == "-" {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        crate::error::Error::io(
                            "open the --log-json file",
                            path.as_os_str().as_encoded_bytes(),
                            e,
                        )
                    })?,
            )
        };
        Ok(LogJson {
            to,
            path: path.to_path_buf(),
            lost: 0,
            first_error: None,
        })
    }

    /// Write these events, one JSON line each, in one write, and flush.
    pub fn write(&mut self, events: &[EventRow]) {
        if events.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(events.len() * 200);
        for e in events {
            // A Value always serialises.
            let _ = serde_json::to_writer(&mut buf, &json(e));
            buf.push(b'\n');
        }
        let r = match &mut self.to {
            Some(f) => f.write_all(&buf).and_then(|()| f.flush()),
            None => {
                let mut err = std::io::stderr().lock();
                err.write_all(&buf).and_then(|()| err.flush())
            }
        };
        if let Err(e) = r {
            self.lost += events.len() as u64;
            if self.first_error.is_none() {
                let msg = format!("write {}: {e}", self.name());
                crate::util::notice::say(format!(
                    "evac: warning: --log-json: {msg}; the run goes on, events not written are in the journal (`evac events`)"
                ));
                self.first_error = Some(msg);
            }
        }
    }

    fn name(&self) -> String {
        if self.to.is_none() {
            "stderr".into()
        } else {
            quoted(self.path.as_os_str().as_encoded_bytes())
        }
    }

    /// Say, at the end, how many events were not written, if any.
    pub fn finish(self) {
        if let Some(e) = &self.first_error {
            crate::ui::err(format!(
                "evac: warning: --log-json: {} events not written (first error: {e}); read them with `evac events`",
                self.lost
            ));
        }
    }
}
