//! The metrics of an evacuation in Prometheus' text exposition format, for `evac status --format
//! prometheus` and the file `evac run --metrics-file` keeps (node_exporter's textfile collector
//! reads such a file). Names start `evac_`, in base units (bytes, seconds); the values are the
//! ones `status` reads, built by `app`.

use crate::error::Result;
use std::fmt::Write as _;

/// One evacuation as the metrics tell it.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub journal_id: String,
    /// Escaped, as status shows them.
    pub source: String,
    pub dest: String,
    /// Files by the states operators see, every state present (0 when none).
    pub files: Vec<(&'static str, i64)>,
    /// Bytes of regular files by the same states.
    pub bytes: Vec<(&'static str, i64)>,
    /// Bytes of the regular files to relocate (all but gone and skipped), and relocated now.
    pub bytes_total: i64,
    pub bytes_relocated: i64,
    /// Relocated by all runs together: only ever grows.
    pub relocated_files_total: i64,
    pub relocated_bytes_total: i64,
    pub rate_bytes_per_sec: f64,
    pub eta_seconds: Option<i64>,
    pub running: bool,
    pub paused: bool,
    pub last_run: Option<RunTimes>,
    /// The governor of the running evac (None when no run is going).
    pub governor: Option<Governor>,
    /// Deferred files by cause ("none" for a row without one), every cause present.
    pub deferred: Vec<(String, i64)>,
    /// Phase 2: (volumes done, volumes) of the imported listing's staged-out files.
    pub stage_volumes: Option<(i64, i64)>,
    /// When these values were read (seconds since the epoch).
    pub at: f64,
}

#[derive(Debug, Clone, Default)]
pub struct RunTimes {
    pub id: i64,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Governor {
    pub enabled: bool,
    pub allowed: f64,
    pub max: f64,
    pub active: f64,
    /// The signal over its target ("none" when none is), and its device if it has one.
    pub limiting: String,
    pub device: Option<String>,
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value: finite (the format's NaN and infinities are never what evac means).
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "0".into()
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {}", num(v));
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// The text of the metrics. Families whose value is unknown (no ETA while nothing moves, no
/// finish before the first run ends) keep their HELP and TYPE and have no sample, so that an
/// alert on `absent()` tells "unknown" from zero.
pub fn render(m: &Metrics) -> String {
    let mut o = Out(String::new());
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    o.family(
        "evac_info",
        "gauge",
        "The evacuation this journal records (always 1; its labels say which).",
    );
    o.sample(
        "evac_info",
        &[
            ("journal_id", &m.journal_id),
            ("source", &m.source),
            ("dest", &m.dest),
        ],
        1.0,
    );
    o.family(
        "evac_files",
        "gauge",
        "Entries in the journal by state (a file in flight counts as pending).",
    );
    for (s, n) in &m.files {
        o.sample("evac_files", &[("state", s)], *n as f64);
    }
    o.family(
        "evac_file_bytes",
        "gauge",
        "Bytes of the regular files in the journal by state.",
    );
    for (s, n) in &m.bytes {
        o.sample("evac_file_bytes", &[("state", s)], *n as f64);
    }
    o.one(
        "evac_bytes_to_relocate",
        "gauge",
        "Bytes of all regular files evac relocates (every state but gone and skipped).",
        m.bytes_total as f64,
    );
    o.one(
        "evac_bytes_remaining",
        "gauge",
        "Bytes of the regular files not yet relocated.",
        (m.bytes_total - m.bytes_relocated).max(0) as f64,
    );
    o.one(
        "evac_relocated_files_total",
        "counter",
        "Files relocated, by all runs of this journal together.",
        m.relocated_files_total as f64,
    );
    o.one(
        "evac_relocated_bytes_total",
        "counter",
        "Bytes relocated, by all runs of this journal together.",
        m.relocated_bytes_total as f64,
    );
    o.one(
        "evac_rate_bytes_per_second",
        "gauge",
        "The running evac's copy rate (0 when none is running).",
        m.rate_bytes_per_sec,
    );
    o.family(
        "evac_eta_seconds",
        "gauge",
        "Seconds until the bytes remaining are relocated at the current rate (no sample when unknown).",
    );
    if let Some(e) = m.eta_seconds {
        o.sample("evac_eta_seconds", &[], e as f64);
    }
    o.one(
        "evac_running",
        "gauge",
        "1 while a run holds this journal.",
        b(m.running),
    );
    o.one(
        "evac_paused",
        "gauge",
        "1 while paused by evac pause or SIGUSR1 (it lasts until evac resume).",
        b(m.paused),
    );
    let r = m.last_run.as_ref();
    o.family(
        "evac_last_run_id",
        "gauge",
        "The last run's number in the journal.",
    );
    if let Some(r) = r {
        o.sample("evac_last_run_id", &[], r.id as f64);
    }
    o.family(
        "evac_last_run_start_timestamp_seconds",
        "gauge",
        "When the last run started (seconds since the epoch).",
    );
    if let Some(r) = r {
        o.sample("evac_last_run_start_timestamp_seconds", &[], r.started_at);
    }
    o.family(
        "evac_last_run_finish_timestamp_seconds",
        "gauge",
        "When the last run finished (no sample while it runs, or when it was killed).",
    );
    if let Some(t) = r.and_then(|r| r.finished_at) {
        o.sample("evac_last_run_finish_timestamp_seconds", &[], t);
    }
    o.family(
        "evac_last_run_exit_code",
        "gauge",
        "The last finished run's exit code: 0 all relocated, 1 error, 3 files left, 4 interrupted (resumable), 5 journal busy.",
    );
    if let Some(c) = r.and_then(|r| r.exit_code) {
        o.sample("evac_last_run_exit_code", &[], c as f64);
    }
    if let Some(g) = &m.governor {
        o.one(
            "evac_governor_enabled",
            "gauge",
            "1 when the load governor is on.",
            b(g.enabled),
        );
        o.one(
            "evac_governor_workers_allowed",
            "gauge",
            "Copy workers the governor allows now.",
            g.allowed,
        );
        o.one(
            "evac_governor_workers_max",
            "gauge",
            "Copy workers the run has.",
            g.max,
        );
        o.one(
            "evac_governor_workers_active",
            "gauge",
            "Copy workers copying now.",
            g.active,
        );
        o.family(
            "evac_governor_limiting",
            "gauge",
            "The signal over its target that holds the workers back (signal=\"none\" when none is); always 1.",
        );
        o.sample(
            "evac_governor_limiting",
            &[
                ("signal", &g.limiting),
                ("device", g.device.as_deref().unwrap_or("")),
            ],
            1.0,
        );
    }
    o.family(
        "evac_deferred_files",
        "gauge",
        "Files deferred (tried again by a later run) by cause.",
    );
    for (c, n) in &m.deferred {
        o.sample("evac_deferred_files", &[("cause", c)], *n as f64);
    }
    if let Some((done, all)) = m.stage_volumes {
        o.one(
            "evac_stage_volumes",
            "gauge",
            "Phase 2: volumes holding staged-out files of the imported HSM listing.",
            all as f64,
        );
        o.one(
            "evac_stage_volumes_done",
            "gauge",
            "Phase 2: volumes whose files are all relocated or given up.",
            done as f64,
        );
    }
    o.one(
        "evac_metrics_timestamp_seconds",
        "gauge",
        "When these values were read from the journal (seconds since the epoch).",
        m.at,
    );
    o.0
}

/// Print the metrics on stdout.
pub fn show(m: &Metrics) -> Result<()> {
    super::out_bytes(render(m).as_bytes())
}
