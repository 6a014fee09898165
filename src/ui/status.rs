//! What `status`, `holders` and the control commands show: the values those commands
//! build, rendered as text for a terminal or as JSON (serde) for scripts and monitoring.

use crate::error::{Error, Result};
use crate::journal::{Cause, FileState};
use crate::sys::proc::Scan;
use crate::util::escape::{escape, quoted};
use crate::util::units::human_bytes;
use serde::Serialize;
use std::collections::BTreeMap;

/// Where `status` stands, as `status --json` prints it.
#[derive(Serialize)]
pub struct Status {
    pub source: String,
    pub dest: String,
    pub link_prefix: String,
    pub journal_id: String,
    /// Files by the states operators see (in flight counts as pending).
    pub files: BTreeMap<&'static str, i64>,
    pub bytes_relocated: i64,
    pub bytes_total: i64,
    /// Entries `--exclude` left as they are (an excluded directory counts once).
    pub excluded: i64,
    pub rate_bytes_per_sec: f64,
    pub eta_seconds: Option<i64>,
    pub running: bool,
    pub pid: Option<String>,
    pub throttle: String,
    pub reasons: Vec<Reason>,
    pub last_run: Option<LastRun>,
    pub cutover: Cutover,
    pub hsm: Hsm,
    pub paused: bool,
    /// The governor's last decision, as the run wrote it (null when no run is going).
    pub governor: serde_json::Value,
    pub stage: Stage,
    pub fingerprint: Option<Fingerprint>,
    /// Text only: the governor's line, the window, the caps `evac throttle` set.
    #[serde(skip)]
    pub governor_text: Option<String>,
    #[serde(skip)]
    pub window: Option<String>,
    #[serde(skip)]
    pub caps: Vec<String>,
}

/// One line of "why files are left".
#[derive(Serialize)]
pub struct Reason {
    pub state: FileState,
    pub cause: Option<Cause>,
    pub reason: String,
    pub count: i64,
}

#[derive(Serialize)]
pub struct LastRun {
    pub id: i64,
    pub pid: i64,
    pub started_at: f64,
    pub heartbeat_at: f64,
    pub finished_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub files_relocated: i64,
    pub bytes_relocated: i64,
}

#[derive(Serialize)]
pub struct Cutover {
    pub ready: bool,
    pub as_of_run: Option<i64>,
    pub as_of: Option<f64>,
    pub differences: BTreeMap<String, i64>,
    pub not_carried_over: BTreeMap<String, i64>,
    /// Excluded entries: they do not keep DEST from mirroring what evac carries, but their data
    /// stays on SOURCE only.
    pub excluded_on_source_only: i64,
}

#[derive(Serialize)]
pub struct Hsm {
    pub mode: String,
    pub staged_out_by_blocks_rule: i64,
    pub db_files: i64,
    pub db_staged_out: i64,
    pub db_volumes: i64,
}

#[derive(Serialize, Clone)]
pub struct Stage {
    pub volumes: i64,
    pub volumes_done: i64,
    pub staged: i64,
    pub relocated: i64,
    pub given_up: i64,
    pub bytes_waiting: i64,
    pub files_per_minute: f64,
}

#[derive(Serialize)]
pub struct Fingerprint {
    pub at: f64,
    /// Text only: when it started, as the operator reads it.
    #[serde(skip)]
    pub started: String,
    pub leftovers: i64,
    pub exact: i64,
    pub probable: i64,
    pub weak: i64,
    pub none: i64,
    pub report: Option<String>,
}

fn json_out<T: Serialize>(v: &T) -> Result<()> {
    super::out_bytes(super::json_line(v)?.as_bytes())
}

/// Print `status` as text or as one JSON object.
pub fn show_status(st: &Status, json: bool) -> Result<()> {
    if json {
        json_out(st)
    } else {
        super::out_bytes(status_text(st).as_bytes())
    }
}

fn status_text(st: &Status) -> String {
    let mut lines: Vec<String> = Vec::new();
    lines.push(format!("SOURCE  {}", quoted(st.source.as_bytes())));
    lines.push(format!("DEST    {}", quoted(st.dest.as_bytes())));
    lines.push(format!("links   {}/…", quoted(st.link_prefix.as_bytes())));
    lines.push(match (&st.pid, &st.last_run) {
        (Some(pid), _) => format!("run     going (pid {pid}), throttle: {}", st.throttle),
        (None, Some(r)) => format!(
            "run     not running; last run {} ended with exit {}",
            r.id,
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none (interrupted: the next run recovers)".into())
        ),
        (None, None) => "run     never started".into(),
    });
    lines.push(format!(
        "files   {}",
        st.files
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if st.excluded > 0 {
        lines.push(format!(
            "exclude {} paths left as they are: excluded by --exclude, or version-control trees left whole (directories not entered; --list excluded)",
            st.excluded
        ));
    }
    if st.hsm.db_files > 0 {
        lines.push(format!(
            "hsm db  {} files in the imported HSM listing, {} staged out on {} volumes",
            st.hsm.db_files, st.hsm.db_staged_out, st.hsm.db_volumes
        ));
    }
    if let Some(w) = &st.window {
        lines.push(format!("window  {w}"));
    }
    if let Some(g) = &st.governor_text {
        lines.push(format!("governor {g}"));
    }
    if st.paused || !st.caps.is_empty() {
        lines.push(format!(
            "control {}{}",
            if st.paused {
                "PAUSED by `evac pause` or SIGUSR1 (`evac resume` goes on)"
            } else {
                "running"
            },
            if st.caps.is_empty() {
                String::new()
            } else {
                format!("; caps set by `evac throttle`: {}", st.caps.join(", "))
            }
        ));
    }
    let sp = &st.stage;
    if sp.staged > 0 || sp.given_up > 0 {
        lines.push(format!(
            "stage   phase 2: {}/{} volumes done, {} files staged ({} relocated, {} given up), {:.1} files/min, {} staged and waiting",
            sp.volumes_done,
            sp.volumes,
            sp.staged,
            sp.relocated,
            sp.given_up,
            sp.files_per_minute,
            human_bytes(sp.bytes_waiting as f64)
        ));
    }
    if let Some(f) = &st.fingerprint {
        lines.push(format!(
            "fprint  phase 3 ({}): {} leftovers: {} exact, {} probable, {} weak, {} none{}",
            f.started,
            f.leftovers,
            f.exact,
            f.probable,
            f.weak,
            f.none,
            f.report
                .as_deref()
                .map(|r| format!("; report {}", quoted(r.as_bytes())))
                .unwrap_or_default()
        ));
    }
    if st.hsm.staged_out_by_blocks_rule > 0 {
        lines.push(format!(
            "hsm     {} files taken for HSM stubs by the blocks rule (size above zero, no data blocks; --hsm {}): never opened. On a filesystem without an HSM these are sparse files: rerun with --hsm none",
            st.hsm.staged_out_by_blocks_rule, st.hsm.mode
        ));
    }
    let pct = if st.bytes_total > 0 {
        100.0 * st.bytes_relocated as f64 / st.bytes_total as f64
    } else {
        100.0
    };
    lines.push(format!(
        "bytes   {} of {} relocated ({pct:.1}%){}",
        human_bytes(st.bytes_relocated as f64),
        human_bytes(st.bytes_total as f64),
        match st.eta_seconds {
            Some(e) => format!(", {}/s, ETA {e}s", human_bytes(st.rate_bytes_per_sec)),
            None => String::new(),
        }
    ));
    lines.extend(cutover_lines(&st.cutover));
    if !st.reasons.is_empty() {
        lines.push("why files are left (top reasons):".into());
        for r in &st.reasons {
            let cause = r.cause.map_or(String::new(), |c| format!("[{c}] "));
            lines.push(format!(
                "  {:>8}  {:<10} {cause}{}",
                r.count,
                r.state.as_str(),
                r.reason
            ));
        }
        lines.push("list them with: evac status --journal J --list STATE".into());
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// Cutover readiness as `status` says it: the verdict, then notes on what stays on SOURCE only
/// (`evac report` shows the same lines).
pub fn cutover_lines(cut: &Cutover) -> Vec<String> {
    let mut lines = Vec::new();
    let listing = |v: &BTreeMap<String, i64>| {
        v.iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    lines.push(match cut.as_of_run {
        None => "cutover not ready: no run has walked all of SOURCE yet".into(),
        Some(run) if cut.ready => {
            format!("cutover ready: DEST mirrors SOURCE (as of run {run}'s complete walk)")
        }
        Some(run) => format!(
            "cutover not ready (as of run {run}): {}; list them with --list cutover",
            listing(&cut.differences)
        ),
    });
    if cut.excluded_on_source_only > 0 {
        lines.push(format!(
            "        excluded paths remain on SOURCE only: {} (carry them over by other means before SOURCE is retired; --list excluded)",
            cut.excluded_on_source_only
        ));
    }
    if !cut.not_carried_over.is_empty() {
        lines.push(format!(
            "        left in SOURCE, not carried over to DEST: {} (recreate by hand if needed)",
            listing(&cut.not_carried_over)
        ));
    }
    lines
}

/// What `evac pause`, `resume` or `throttle` did.
pub fn control_done(what: &str, running_pid: Option<&str>) -> Result<()> {
    let line = match running_pid {
        Some(pid) => format!("{what}: the run (pid {pid}) applies it within a second\n"),
        None => format!("{what}: no run is going; the next run starts with it\n"),
    };
    super::out_bytes(line.as_bytes())
}

#[derive(Serialize)]
struct HolderJson<'a> {
    pid: u32,
    uid: Option<u32>,
    user: &'a str,
    command: String,
    cmdline: Vec<String>,
    what: &'a str,
    mode: Option<&'a str>,
    path: String,
    deleted: bool,
}

/// `evac holders`: one line per use (pid, user, command, what, path), JSON, or the held paths
/// NUL-separated; then, on stderr, how many processes that was.
pub fn show_holders(scan: &Scan, json: bool, null: bool) -> Result<()> {
    if json {
        let items: Vec<HolderJson> = scan
            .holdings
            .iter()
            .map(|h| HolderJson {
                pid: h.pid,
                uid: h.uid,
                user: &h.user,
                command: escape(&h.command),
                cmdline: h.cmdline.iter().map(|a| escape(a)).collect(),
                what: h.how.kind(),
                mode: h.how.mode().map(|m| m.as_str()),
                path: escape(&h.path),
                deleted: h.deleted,
            })
            .collect();
        json_out(&items)?;
    } else if null {
        let paths: std::collections::BTreeSet<&[u8]> =
            scan.holdings.iter().map(|h| h.path.as_slice()).collect();
        let mut out = super::PathList::new(true);
        paths
            .into_iter()
            .try_for_each(|p| out.item(p, None))
            .map_err(|e| Error::Setup(format!("write output: {e}")))?;
        out.done()?;
    } else {
        let mut s = String::new();
        for h in &scan.holdings {
            s.push_str(&format!(
                "{}\t{}\t{}\t{}{}\t{}\n",
                h.pid,
                h.user,
                escape(&h.command),
                h.how,
                if h.deleted { " (deleted)" } else { "" },
                escape(&h.path)
            ));
        }
        super::out_bytes(s.as_bytes())?;
    }
    let shown = quoted(scan.source.as_os_str().as_encoded_bytes());
    if !json && !null {
        match scan.processes() {
            0 => eprintln!("evac: no process uses anything under {shown}"),
            n => eprintln!(
                "evac: {n} process{} use{} {shown}",
                if n == 1 { "" } else { "es" },
                if n == 1 { "s" } else { "" }
            ),
        }
    }
    if scan.unreadable > 0 {
        eprintln!(
            "evac: note: {} process{} could not be inspected{}; they may use {shown} too",
            scan.unreadable,
            if scan.unreadable == 1 { "" } else { "es" },
            if crate::sys::fsx::is_root() {
                ""
            } else {
                " (not root: only your own processes can be)"
            }
        );
    }
    Ok(())
}
