//! `evac events`: the journal's events read back (all, since a time, or followed as they come,
//! like `tail -f`), and the follower that streams a run's events to `evac run --log-json`. Both
//! read the journal only (the same pages, the same JSON shape): a running evac never waits for
//! them.

use crate::error::{Error, Result};
use crate::journal::{self, EventCursor, Journal};
use crate::ui::events::LogJson;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Events read from the journal at a time.
const PAGE: usize = 2000;
/// How often a follower looks for new events.
const POLL: Duration = Duration::from_millis(500);

/// `evac events`: print the journal's events (since `since`, if given) as text or JSON lines;
/// with `follow`, go on printing new ones until interrupted (then exit 0). Without `since`,
/// `follow` starts at the end (only new events), as `tail -n0 -f` does.
pub fn events(journal: &Path, since: Option<&str>, follow: bool, json: bool) -> Result<i32> {
    let since = since
        .map(|s| crate::util::time::parse_when(s, crate::util::time::now()))
        .transpose()
        .map_err(|e| Error::Setup(format!("--since {e}")))?;
    let stop = if follow {
        Some(
            crate::sys::signals::process()
                .map_err(|e| Error::Setup(format!("set up signal handling: {e}")))?
                .1,
        )
    } else {
        None
    };
    let j = Journal::open_read(journal)?;
    let mut cursor = match (since, follow) {
        (Some(t), _) => j.events_cursor_at(t)?,
        (None, true) => j.events_end()?,
        (None, false) => EventCursor::default(),
    };
    loop {
        loop {
            let (rows, next) = j.events_page(cursor, since, PAGE)?;
            if !rows.is_empty() {
                let mut out = String::with_capacity(rows.len() * 160);
                for e in &rows {
                    if json {
                        out.push_str(&crate::ui::events::json(e).to_string());
                    } else {
                        out.push_str(&crate::ui::events::text(e));
                    }
                    out.push('\n');
                }
                // A reader that went away (`| head`) ends the listing.
                if crate::ui::out_bytes(out.as_bytes()).is_err() {
                    return Ok(crate::util::exit::EXIT_OK);
                }
            }
            if next == cursor {
                break;
            }
            cursor = next;
        }
        let Some(stop) = &stop else { break };
        let until = Instant::now() + POLL;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(crate::util::exit::EXIT_OK)
}

/// The thread that streams a run's events to `--log-json`: every event the journal records
/// while this process holds it, read back from the journal after each commit is visible (so a
/// line is never written for a step that was rolled back), flushed after each page.
pub struct LogFollower {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<(LogJson, EventCursor)>,
    journal: PathBuf,
}

impl LogFollower {
    /// Start after the events the journal holds now (a new journal: from its first).
    pub fn start(journal: PathBuf, sink: LogJson) -> Result<LogFollower> {
        let from = journal::events_end_of(&journal)?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let j = journal.clone();
        let thread = std::thread::Builder::new()
            .name("evac-log-json".into())
            .spawn(move || {
                let (mut sink, mut cursor) = (sink, from);
                let me = std::process::id().to_string();
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(POLL)
                {
                    // Only while this process holds the journal: a run refused because another
                    // holds it must not stream that run's events as its own.
                    if crate::sys::lock::running_pid(&j).as_deref() != Some(me.as_str()) {
                        continue;
                    }
                    // The journal may be being created or upgraded: the next poll tries again,
                    // and the last one (`finish`) says what keeps failing.
                    let _ = pump(&j, &mut cursor, &mut sink);
                }
                (sink, cursor)
            })
            .map_err(|e| Error::Setup(format!("start the --log-json thread: {e}")))?;
        Ok(LogFollower {
            stop,
            thread,
            journal,
        })
    }

    /// Stop the thread and write the events the run recorded last (FINISH among them), if the
    /// last run in the journal is this process's.
    pub fn finish(self) {
        drop(self.stop);
        let Ok((mut sink, mut cursor)) = self.thread.join() else {
            return;
        };
        let ours = Journal::open_read(&self.journal)
            .and_then(|j| j.last_run())
            .ok()
            .flatten()
            .is_some_and(|r| r.pid == std::process::id() as i64);
        if ours {
            if let Err(e) = pump(&self.journal, &mut cursor, &mut sink) {
                crate::ui::err(format!(
                    "evac: warning: --log-json: read the last events back from the journal: {e}"
                ));
            }
        }
        sink.finish();
    }
}

/// Write every event after `cursor` to `sink`, page by page, moving the cursor.
fn pump(journal: &Path, cursor: &mut EventCursor, sink: &mut LogJson) -> Result<()> {
    let j = Journal::open_read(journal)?;
    loop {
        let (rows, next) = j.events_page(*cursor, None, PAGE)?;
        sink.write(&rows);
        if next == *cursor {
            return Ok(());
        }
        *cursor = next;
    }
}
