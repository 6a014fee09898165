//! `evac status` (also while a run is going; as text, JSON or Prometheus metrics) and the control commands (`pause`, `resume`,
//! `throttle`): read the journal, build the values `ui` shows.

use crate::error::{Error, Result};
use crate::journal::{FileState, Journal, Plan};
use crate::ui::metrics::{Governor, Metrics, RunTimes};
use crate::ui::status::{self as show, Status};
use crate::ui::PathList;
use crate::util::escape::{escape, quoted};
use std::collections::BTreeMap;
use std::path::Path;

fn pathstr(p: &Path) -> String {
    escape(p.as_os_str().as_encoded_bytes())
}

pub(super) fn need_plan(j: &Journal) -> Result<Plan> {
    j.plan()?.ok_or_else(|| {
        Error::Setup(format!(
            "journal {} has no plan yet (no run has started with it)",
            quoted(j.path().as_os_str().as_encoded_bytes())
        ))
    })
}

/// The states operators see: a file in flight when a run stopped is still pending to them.
const STATES: [FileState; 7] = [
    FileState::Pending,
    FileState::Relocated,
    FileState::Deferred,
    FileState::Failed,
    FileState::StagedOut,
    FileState::Skipped,
    FileState::Gone,
];

fn public_state(s: FileState) -> FileState {
    if s.unfinished() {
        FileState::Pending
    } else {
        s
    }
}

/// How `status` prints (`--format`; clap parses the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people (the default).
    Text,
    /// One JSON object (as `--json`).
    Json,
    /// Prometheus text exposition (the metrics of `run --metrics-file`).
    Prometheus,
}

/// What `status --list` lists: the paths in one of the states operators see, or one of the
/// views below (`--list`; clap parses the name, so a wrong one is a usage error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum List {
    /// To be relocated (a file in flight when a run stopped counts here).
    Pending,
    /// The path is evac's link to a complete, durable copy.
    Relocated,
    /// Left for now (busy, changed, no room), with the reason: a later run tries again.
    Deferred,
    /// An error that needs the operator, with it.
    Failed,
    /// Not relocated on purpose, with the reason.
    Skipped,
    /// No longer in SOURCE.
    Gone,
    /// An HSM stub, never opened: its data is on tape (`evac stage` recalls it).
    #[value(name = "staged_out", alias = "staged-out")]
    StagedOut,
    /// Every path that keeps DEST from mirroring SOURCE, and why.
    Cutover,
    /// What --exclude left in SOURCE (an excluded directory once).
    Excluded,
    /// Every link evac made, with what it names.
    Links,
}

impl List {
    /// The state listed, for the lists of a state.
    fn state(self) -> Option<FileState> {
        Some(match self {
            List::Pending => FileState::Pending,
            List::Relocated => FileState::Relocated,
            List::Deferred => FileState::Deferred,
            List::Failed => FileState::Failed,
            List::Skipped => FileState::Skipped,
            List::Gone => FileState::Gone,
            List::StagedOut => FileState::StagedOut,
            List::Cutover | List::Excluded | List::Links => return None,
        })
    }
}

pub fn status(journal: &Path, format: Format, list: Option<List>, null: bool) -> Result<i32> {
    let j = Journal::open_read(journal)?;
    let plan = need_plan(&j)?;
    if let Some(list) = list {
        let mut out = PathList::new(null);
        let sink = &mut |p: &[u8], reason: Option<&str>| out.item(p, reason);
        match list {
            List::Cutover => j.for_each_cutover_difference(sink)?,
            List::Excluded => j.for_each_excluded(sink)?,
            List::Links => {
                // What each link names, for people; the bare paths with -0.
                let prefix = plan.link_prefix.as_os_str().as_encoded_bytes();
                j.for_each_link(&mut |p: &[u8]| {
                    let sep: &[u8] = if prefix.ends_with(b"/") { b"" } else { b"/" };
                    let target = [prefix, sep, p].concat();
                    out.item(p, Some(&format!("-> {}", escape(&target))))
                })?
            }
            state => {
                let s = state.state();
                let states: Vec<FileState> = FileState::ALL
                    .into_iter()
                    .filter(|x| Some(public_state(*x)) == s)
                    .collect();
                j.for_each_in_states(&states, sink)?;
            }
        }
        out.done()?;
        return Ok(0);
    }
    if format == Format::Prometheus {
        let running = crate::sys::lock::running_pid(journal).is_some();
        crate::ui::metrics::show(&metrics(&j, &plan, running)?)?;
        return Ok(0);
    }
    let st = build(&j, &plan, journal)?;
    show::show_status(&st, format == Format::Json)?;
    Ok(0)
}

/// The metrics of `status --format prometheus` and `run --metrics-file`: the values status
/// shows, from the journal's counters (a few rows read, whatever its size). `running` is whether
/// a run holds the journal (the run writing its own metrics knows).
pub fn metrics(j: &Journal, plan: &Plan, running: bool) -> Result<Metrics> {
    let counts = j.counts()?;
    let by = |v: &[(FileState, i64)]| -> Vec<(&'static str, i64)> {
        let mut m: BTreeMap<&'static str, i64> = STATES.iter().map(|s| (s.as_str(), 0)).collect();
        for (s, n) in v {
            *m.entry(public_state(*s).as_str()).or_insert(0) += n;
        }
        m.into_iter().collect()
    };
    let last = j.last_run()?;
    let rate = match (&last, running) {
        (Some(r), true) => r.rate_bps,
        _ => 0.0,
    };
    let remaining = (counts.bytes_total - counts.bytes_relocated).max(0) as f64;
    let (files_total, bytes_total) = j.relocated_by_runs()?;
    let mut deferred: BTreeMap<String, i64> = crate::journal::Cause::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), 0))
        .collect();
    for (c, n) in j.by_cause(FileState::Deferred)? {
        *deferred
            .entry(c.map_or("none", |c| c.as_str()).to_string())
            .or_insert(0) += n;
    }
    let sp = j.stage_progress()?;
    let paused = j.controls()?.get("paused").is_some_and(|v| v == "1");
    let governor = crate::pace::governor::read_state(&plan.journal_id)
        .filter(|_| running)
        .and_then(|g| serde_json::from_str::<serde_json::Value>(&g.1).ok())
        .map(|g| {
            let f = |k: &str| g.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let limiting = g.get("limiting").filter(|l| !l.is_null());
            Governor {
                enabled: g.get("enabled").and_then(|v| v.as_bool()).unwrap_or(false),
                allowed: f("allowed"),
                max: f("max"),
                active: f("active"),
                limiting: limiting
                    .and_then(|l| l.get("signal"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("none")
                    .to_string(),
                device: limiting
                    .and_then(|l| l.get("device"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            }
        });
    Ok(Metrics {
        journal_id: plan.journal_id.clone(),
        source: pathstr(&plan.source),
        dest: pathstr(&plan.dest),
        files: by(&counts.by_state),
        bytes: by(&counts.bytes_by_state),
        bytes_total: counts.bytes_total,
        bytes_relocated: counts.bytes_relocated,
        relocated_files_total: files_total,
        relocated_bytes_total: bytes_total,
        rate_bytes_per_sec: rate,
        eta_seconds: (running && rate > 0.0).then(|| (remaining / rate).round() as i64),
        running,
        paused,
        last_run: last.map(|r| RunTimes {
            id: r.id,
            started_at: r.started_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
        }),
        governor,
        deferred: deferred.into_iter().collect(),
        stage_volumes: (sp.volumes > 0 && j.hsm_db_counts()?.1 > 0)
            .then_some((sp.volumes_done, sp.volumes)),
        at: crate::util::time::now(),
    })
}

/// What `status` shows (and `status --json` prints), also the figures `evac report` starts from.
pub(super) fn build(j: &Journal, plan: &Plan, journal: &Path) -> Result<Status> {
    let counts = j.counts()?;
    let mut files: BTreeMap<&'static str, i64> = STATES.iter().map(|s| (s.as_str(), 0)).collect();
    for (s, n) in &counts.by_state {
        *files.entry(public_state(*s).as_str()).or_insert(0) += n;
    }
    let running_pid = crate::sys::lock::running_pid(journal);
    let last = j.last_run()?;
    let running = running_pid.is_some();
    let rate = match (&last, running) {
        (Some(r), true) => r.rate_bps,
        _ => 0.0,
    };
    let remaining = (counts.bytes_total - counts.bytes_relocated).max(0) as f64;
    let eta = (running && rate > 0.0).then(|| (remaining / rate).round() as i64);
    let throttle = last
        .as_ref()
        .map(|r| r.throttle.clone())
        .unwrap_or_else(|| "none".into());
    let reasons = j
        .top_reasons(10)?
        .into_iter()
        .map(|(state, cause, reason, count)| show::Reason {
            state,
            cause,
            reason,
            count,
        })
        .collect();
    let cut = j.cutover()?;
    let excluded = j.excluded_count()?;
    let hsm_mode = j.plan_option("hsm")?.unwrap_or_else(|| "auto".into());
    let by_blocks = j.count_reason_prefix("staged_out", crate::hsm::detect::BLOCKS_RULE)?;
    let (hsm_n, hsm_out, hsm_vols) = j.hsm_db_counts()?;
    let sp = j.stage_progress()?;
    let fp = j.fp_last_run()?;
    let controls = j.controls()?;
    let paused = controls.get("paused").is_some_and(|v| v == "1");
    let caps: Vec<String> = [
        "bwlimit",
        "files_per_sec",
        "workers",
        "governor",
        "max_load",
        "max_io_pressure",
        "max_util",
        "max_latency",
    ]
    .iter()
    .filter_map(|k| {
        controls
            .get(*k)
            .filter(|v| !v.is_empty())
            .map(|v| format!("--{} {v}", k.replace('_', "-")))
    })
    .collect();
    let recall_rate = match (sp.first, sp.last) {
        (Some(a), Some(b)) if b > a && sp.staged > 1 => (sp.staged - 1) as f64 * 60.0 / (b - a),
        _ => 0.0,
    };
    // The governor's state, written by the run every second (in memory) while it runs.
    let gov = crate::pace::governor::read_state(&plan.journal_id).filter(|_| running);
    Ok(Status {
        source: pathstr(&plan.source),
        dest: pathstr(&plan.dest),
        link_prefix: pathstr(&plan.link_prefix),
        journal_id: plan.journal_id.clone(),
        files,
        bytes_relocated: counts.bytes_relocated,
        bytes_total: counts.bytes_total,
        excluded,
        rate_bytes_per_sec: rate,
        eta_seconds: eta,
        running,
        pid: running_pid,
        throttle,
        reasons,
        last_run: last.map(|r| show::LastRun {
            id: r.id,
            pid: r.pid,
            started_at: r.started_at,
            heartbeat_at: r.heartbeat_at,
            finished_at: r.finished_at,
            exit_code: r.exit_code,
            files_relocated: r.files_relocated,
            bytes_relocated: r.bytes_relocated,
        }),
        cutover: show::Cutover {
            ready: cut.ready(),
            as_of_run: cut.as_of.map(|a| a.0),
            as_of: cut.as_of.map(|a| a.1),
            differences: cut.differences.iter().cloned().collect(),
            not_carried_over: cut.not_carried.iter().cloned().collect(),
            excluded_on_source_only: cut.excluded,
        },
        hsm: show::Hsm {
            mode: hsm_mode,
            staged_out_by_blocks_rule: by_blocks,
            db_files: hsm_n,
            db_staged_out: hsm_out,
            db_volumes: hsm_vols,
        },
        paused,
        governor: gov
            .as_ref()
            .and_then(|g| serde_json::from_str(&g.1).ok())
            .unwrap_or(serde_json::Value::Null),
        stage: show::Stage {
            volumes: sp.volumes,
            volumes_done: sp.volumes_done,
            staged: sp.staged,
            relocated: sp.relocated,
            given_up: sp.given_up,
            bytes_waiting: sp.bytes_waiting,
            files_per_minute: (recall_rate * 10.0).round() / 10.0,
        },
        fingerprint: fp.map(|f| show::Fingerprint {
            at: f.finished_at.unwrap_or(f.started_at),
            started: crate::fingerprint::output::iso_time((f.started_at * 1e9) as i64)
                .split('.')
                .next()
                .unwrap_or_default()
                .to_string(),
            leftovers: f.leftovers,
            exact: f.exact,
            probable: f.probable,
            weak: f.weak,
            none: f.none,
            report: f.report.as_deref().map(escape),
        }),
        governor_text: gov.map(|g| g.0),
        window: controls.get("window").filter(|v| !v.is_empty()).cloned(),
        caps,
    })
}

/// `evac pause`, `resume`, `throttle`: record the command for the running evac (and the next).
pub fn control(journal: &Path, set: &[(&str, String)]) -> Result<i32> {
    if set.is_empty() {
        return Err(Error::Setup(
            "evac throttle: give one or more of --bwlimit, --files-per-sec, --workers, --governor, --max-load, --max-io-pressure, --max-util, --max-latency".into(),
        ));
    }
    let j = Journal::open(journal, false)?;
    need_plan(&j)?;
    for (k, v) in set {
        j.set_control(k, v)?;
    }
    let running = crate::sys::lock::running_pid(journal);
    let what = set
        .iter()
        .map(|(k, v)| match (*k, v.as_str()) {
            ("paused", "1") => "paused".to_string(),
            ("paused", _) => "resumed".to_string(),
            (k, v) => format!("{} {v}", k.replace('_', "-")),
        })
        .collect::<Vec<_>>()
        .join(", ");
    show::control_done(&what, running.as_deref())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// Every state operators see can be listed, under the name status and the journal use.
    #[test]
    fn every_public_state_can_be_listed() {
        for s in STATES {
            let l = List::from_str(s.as_str(), false)
                .unwrap_or_else(|e| panic!("--list {}: {e}", s.as_str()));
            assert_eq!(l.state(), Some(s));
        }
    }
}
