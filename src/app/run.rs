//! `evac run`: the engine's run with the terminal's progress display around it, and the metrics
//! file (`--metrics-file`) and the event log (`--log-json`) kept beside it.

use crate::engine::{self, RunOpts};
use crate::error::{Error, IoContext, Result};
use crate::journal::Journal;
use crate::ui::progress::Ui;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Run (or resume) a relocation, drawing its progress on the terminal, keeping the metrics in
/// `metrics` (the file, and how often it is replaced while the run goes), and streaming the
/// run's events as JSON lines to `log_json` (a file, or `-` for stderr), if given.
pub fn run(
    o: RunOpts,
    metrics: Option<(PathBuf, Duration)>,
    log_json: Option<PathBuf>,
) -> Result<i32> {
    // Before any other thread exists: the signal mask is inherited.
    crate::sys::signals::process()
        .map_err(|e| crate::error::Error::Setup(format!("set up signal handling: {e}")))?;
    if o.dry_run {
        let mut list = crate::ui::PathList::new(o.null);
        let code = engine::dryrun::dry_run(&o, &mut |p| list.item(p, None))?;
        // As while listing: a reader that went away (`| head`) ends the list, not the count.
        let _ = list.done();
        return Ok(code);
    }
    let metrics = match metrics {
        Some((p, every)) => Some(MetricsWriter::start(o.journal.clone(), p, every)?),
        None => None,
    };
    let log = match log_json {
        Some(p) => Some(super::events::LogFollower::start(
            o.journal.clone(),
            crate::ui::events::LogJson::open(&p)?,
        )?),
        None => None,
    };
    let ui = Ui::start(o.stats.clone(), o.quiet, o.progress_interval);
    let r = engine::run(o);
    drop(ui);
    if let Some(l) = log {
        l.finish();
    }
    if let Some(m) = metrics {
        m.finish();
    }
    r
}

/// The thread that replaces the metrics file every few seconds while the run goes.
struct MetricsWriter {
    journal: PathBuf,
    path: PathBuf,
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl MetricsWriter {
    fn start(journal: PathBuf, path: PathBuf, every: Duration) -> Result<MetricsWriter> {
        // A directory that cannot be written is said now, not found out at the end of a long
        // run; the file itself (a previous run's metrics) stays until replaced.
        let probe = temp_beside(&path)?;
        std::fs::write(&probe, b"").ctx("write metrics", probe.as_os_str().as_encoded_bytes())?;
        let _ = std::fs::remove_file(&probe);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (j, p) = (journal.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("evac-metrics".into())
            .spawn(move || {
                let me = std::process::id().to_string();
                let mut said = String::new();
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    // Only while this process holds the journal: a run refused because another
                    // holds it must not overwrite that run's metrics.
                    if crate::sys::lock::running_pid(&j).as_deref() != Some(me.as_str()) {
                        continue;
                    }
                    match write_metrics(&j, &p, true) {
                        Ok(()) => said.clear(),
                        Err(e) => {
                            let e = e.to_string();
                            if e != said {
                                crate::util::notice::say(format!("evac: metrics file: {e}"));
                                said = e;
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::Setup(format!("start metrics thread: {e}")))?;
        Ok(MetricsWriter {
            journal,
            path,
            stop,
            thread,
        })
    }

    /// Stop the thread and write the metrics once more, as the run left the journal.
    fn finish(self) {
        drop(self.stop);
        let _ = self.thread.join();
        // The run recorded in the journal last must be this process's: a run that never got
        // the journal (another held it, or the arguments were refused) leaves the file alone.
        let ours = Journal::open_read(&self.journal)
            .and_then(|j| j.last_run())
            .ok()
            .flatten()
            .is_some_and(|r| r.pid == std::process::id() as i64);
        if !ours {
            return;
        }
        if let Err(e) = write_metrics(&self.journal, &self.path, false) {
            crate::ui::err(format!("evac: metrics file: {e}"));
        }
    }
}

fn write_metrics(journal: &Path, path: &Path, running: bool) -> Result<()> {
    let j = Journal::open_read(journal)?;
    let plan = super::status::need_plan(&j)?;
    let m = super::status::metrics(&j, &plan, running)?;
    write_replace(path, crate::ui::metrics::render(&m).as_bytes())
}

/// Replace `path` whole: a reader (node_exporter's textfile collector) sees the old file or the
/// new one, never half of one. The temporary is in the same directory (a rename does not cross
/// filesystems) and does not end in `.prom`, so the collector never reads it. Not fsynced: the
/// file is rewritten within seconds, and after a power cut the next run writes it again.
fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_beside(path)?;
    let tb = tmp.as_os_str().as_encoded_bytes();
    let r = std::fs::write(&tmp, data)
        .ctx("write metrics", tb)
        .and_then(|()| {
            std::fs::rename(&tmp, path).ctx(
                "rename metrics into place",
                path.as_os_str().as_encoded_bytes(),
            )
        });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// `DIR/.NAME.PID.tmp` for `DIR/NAME`.
fn temp_beside(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        Error::Setup(format!(
            "metrics file {}: not a file name",
            crate::util::escape::quoted(path.as_os_str().as_encoded_bytes())
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}
