//! `evac report`'s page: one self-contained HTML file (inline CSS and SVG, no script, nothing
//! fetched) rendered from the values `app::report` aggregated, with the plotted figures also in a
//! JSON block (`<script type="application/json" id="evac-report-data">`, data only) so that a
//! program can check the page against the journal.

pub mod svg;

use crate::journal::{DirLeft, GovernorBucket, GovernorTime, LeftEvents, RunWork, StageVolume};
use crate::ui::status::{cutover_lines, Stage, Status};
use crate::util::escape::{html, html_path};
use crate::util::time::rfc3339;
use crate::util::units::human_bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use svg::{Bar, Fmt, Series, TimeAxis, PALETTE};

/// Phase 2 as the report shows it.
pub struct StageReport {
    pub progress: Stage,
    pub volumes: Vec<StageVolume>,
    /// Files made resident per bucket (dense, one per bucket).
    pub recalled: Vec<i64>,
}

/// What the directories left add up to, all of them (the table shows the largest).
#[derive(Serialize, Default, Clone, Copy)]
pub struct DirTotals {
    pub dirs: i64,
    pub files: i64,
    pub bytes: i64,
}

/// Everything the page shows.
pub struct Report<'a> {
    /// What `status` says now (the same values `status --json` prints).
    pub status: &'a Status,
    pub generated_at: f64,
    /// The run history's time buckets (None: no run and no event yet).
    pub axis: Option<TimeAxis>,
    /// Files and bytes relocated now, per bucket of their relocation (dense).
    pub relocated: Vec<(i64, i64)>,
    /// The ETA in hours at each bucket's end, from the recent rate (None when idle).
    pub eta_hours: Vec<Option<f64>>,
    pub left_events: Vec<LeftEvents>,
    /// Files deferred or failed now: (state, cause, files), from the counters.
    pub left_now: Vec<(String, String, i64)>,
    pub runs: Vec<RunWork>,
    pub governor: Vec<GovernorBucket>,
    pub governor_time: Vec<GovernorTime>,
    pub stage: Option<StageReport>,
    /// The directories with the most bytes left, largest first.
    pub dirs: Vec<DirLeft>,
    pub dirs_total: DirTotals,
}

/// The figures the charts and tables plot, for programs (the `evac-report-data` block).
#[derive(Serialize)]
struct Data<'a> {
    generated_at: f64,
    buckets: Option<BucketsJson>,
    /// Sums of the progress chart: the files and bytes relocated now.
    files_relocated: i64,
    bytes_relocated: i64,
    bytes_total: i64,
    cumulative_files: Vec<i64>,
    cumulative_bytes: Vec<i64>,
    /// Deferral and failure events by cause, over all buckets.
    deferral_events: BTreeMap<String, i64>,
    failure_events: BTreeMap<String, i64>,
    /// Files deferred and failed now, by cause.
    deferred_now: BTreeMap<String, i64>,
    failed_now: BTreeMap<String, i64>,
    runs: Vec<RunJson>,
    governor_decisions: i64,
    governor_seconds: BTreeMap<String, f64>,
    stage_volumes: usize,
    stage_resident: i64,
    dirs_left: DirTotals,
    cutover_ready: bool,
    cutover: &'a [String],
}

#[derive(Serialize)]
struct BucketsJson {
    t0: f64,
    width: f64,
    n: usize,
}

#[derive(Serialize)]
struct RunJson {
    id: i64,
    files: i64,
    bytes: i64,
    seconds: f64,
    exit_code: Option<i64>,
}

fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The unit an ETA trend is plotted in, from its largest value in hours.
fn eta_unit(max_hours: f64) -> (f64, &'static str) {
    if max_hours >= 72.0 {
        (1.0 / 24.0, "ETA (days)")
    } else if max_hours >= 2.0 {
        (1.0, "ETA (hours)")
    } else if max_hours >= 2.0 / 60.0 {
        (60.0, "ETA (minutes)")
    } else {
        (3600.0, "ETA (seconds)")
    }
}

/// A duration as people read it ("2 h 05 min", "40 s").
fn duration(s: f64) -> String {
    let s = s.max(0.0);
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as i64,
            ((s % 3600.0) / 60.0) as i64
        )
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

fn when(t: f64) -> String {
    // To the second: the microseconds of `rfc3339` are noise on a page.
    let s = rfc3339(t);
    format!("{} {}", &s[..10], &s[11..19])
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:960px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
p.sub{color:#555;margin:0 0 10px}code,.path{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px;word-break:break-all}
table{border-collapse:collapse;margin:6px 0;font-size:13px}td,th{padding:3px 9px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
svg{width:100%;height:auto;display:block;margin:6px 0}svg .tick{font-size:11px;fill:#444}svg .axis{font-size:12px;fill:#222}
.legend span{display:inline-block;margin-right:14px;font-size:12.5px}.legend i{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px}
.verdict{padding:8px 12px;border-radius:4px;font-weight:600;margin:8px 0}.ready{background:#e3f4e8;color:#14532d}.notready{background:#fdf0d5;color:#7a4a00}
.figs td:first-child{color:#555}.none{color:#777;font-style:italic}
"#;

/// The page, as one string.
pub fn render(r: &Report<'_>) -> String {
    let st = r.status;
    let mut o = String::with_capacity(64 * 1024);
    let cut = cutover_lines(&st.cutover);
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>evac run report: {}</title><style>{STYLE}</style></head><body><main>
<h1>evac run report</h1>
<p class="sub"><span class="path">{}</span> → <span class="path">{}</span><br>journal {} · generated {} UTC</p>
<div class="verdict {}">{}</div>
"#,
        html(&st.source),
        html(&st.source),
        html(&st.dest),
        html(&st.journal_id),
        when(r.generated_at),
        if st.cutover.ready {
            "ready"
        } else {
            "notready"
        },
        html(&cut[0]),
    );
    summary(&mut o, r);
    progress(&mut o, r);
    runs(&mut o, r);
    governor(&mut o, r);
    left(&mut o, r);
    stage(&mut o, r);
    dirs(&mut o, r);
    o.push_str("<h2>Cutover readiness</h2>\n");
    for l in &cut {
        let _ = writeln!(o, "<p>{}</p>", html(l.trim_start()));
    }
    if !st.cutover.differences.is_empty() {
        o.push_str("<table><tr><th>what keeps DEST from mirroring SOURCE</th><th class=\"n\">entries</th></tr>");
        for (k, n) in &st.cutover.differences {
            let _ = write!(o, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", html(k));
        }
        o.push_str("</table>");
    }
    let _ = write!(
        o,
        "<p class=\"sub\">The same verdict as <code>evac status</code>; list the paths with <code>evac status --journal J --list cutover</code>.</p>\n{}\n</main></body></html>\n",
        data_block(r, &cut)
    );
    o
}

fn summary(o: &mut String, r: &Report<'_>) {
    let st = r.status;
    let pct = if st.bytes_total > 0 {
        100.0 * st.bytes_relocated as f64 / st.bytes_total as f64
    } else {
        100.0
    };
    o.push_str("<table class=\"figs\">");
    let row = |o: &mut String, k: &str, v: String| {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", html(k), html(&v));
    };
    row(
        o,
        "files",
        st.files
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        o,
        "bytes",
        format!(
            "{} of {} relocated ({pct:.1}%)",
            human_bytes(st.bytes_relocated as f64),
            human_bytes(st.bytes_total as f64)
        ),
    );
    row(
        o,
        "runs",
        match &st.last_run {
            None => "none yet".into(),
            Some(l) => format!(
                "{} (last: run {}, {}{})",
                r.runs.len(),
                l.id,
                if st.running { "going" } else { "ended" },
                match (st.running, l.exit_code) {
                    (true, _) => String::new(),
                    (false, Some(c)) => format!(", exit {c}"),
                    (false, None) => ", interrupted".into(),
                }
            ),
        },
    );
    if let Some(e) = st.eta_seconds {
        row(
            o,
            "ETA",
            format!(
                "{} at {}/s",
                duration(e as f64),
                human_bytes(st.rate_bytes_per_sec)
            ),
        );
    }
    o.push_str("</table>\n");
}

fn no_history(o: &mut String) {
    o.push_str("<p class=\"none\">No run has recorded anything yet.</p>\n");
}

fn progress(o: &mut String, r: &Report<'_>) {
    o.push_str("<h2>Relocated over time</h2>\n");
    let Some(x) = r.axis else {
        return no_history(o);
    };
    let (mut cf, mut cb) = (0i64, 0i64);
    let (mut files, mut bytes) = (Vec::new(), Vec::new());
    for (f, b) in &r.relocated {
        cf += f;
        cb += b;
        files.push(Some(cf as f64));
        bytes.push(Some(cb as f64));
    }
    let attrs = format!(
        r#"id="chart-relocated" data-total-files="{cf}" data-total-bytes="{cb}" data-bytes-total="{}""#,
        r.status.bytes_total
    );
    o.push_str(&svg::time_chart(
        "bytes and files relocated over time",
        &x,
        &[
            Series {
                name: "bytes relocated (left axis)".into(),
                color: PALETTE[0],
                values: bytes,
                right: false,
            },
            Series {
                name: "files relocated (right axis)".into(),
                color: PALETTE[1],
                values: files,
                right: true,
            },
        ],
        false,
        (Fmt::Bytes, "bytes relocated"),
        Some((Fmt::Number, "files relocated")),
        &attrs,
    ));
    let _ = writeln!(
        o,
        "<p class=\"sub\">Cumulative, by when each file now relocated was relocated (its last record): {} files, {} of the {} to carry.</p>",
        cf,
        html(&human_bytes(cb as f64)),
        html(&human_bytes(r.status.bytes_total as f64))
    );
    if r.eta_hours.iter().any(Option::is_some) {
        let max = r.eta_hours.iter().flatten().copied().fold(0.0, f64::max);
        let (scale, title) = eta_unit(max);
        o.push_str(&svg::time_chart(
            "ETA trend",
            &x,
            &[Series {
                name: "ETA: bytes left ÷ the rate over the last few buckets".into(),
                color: PALETTE[2],
                values: r.eta_hours.iter().map(|v| v.map(|h| h * scale)).collect(),
                right: false,
            }],
            false,
            (Fmt::Number, title),
            None,
            r#"id="chart-eta""#,
        ));
        o.push_str("<p class=\"sub\">Gaps are times without progress (no run, paused, outside the window). A flat line means the estimate holds.</p>\n");
    } else {
        o.push_str("<p class=\"none\">No ETA trend: not enough progress recorded.</p>\n");
    }
}

fn runs(o: &mut String, r: &Report<'_>) {
    o.push_str("<h2>Rate per run</h2>\n");
    if r.runs.is_empty() {
        return no_history(o);
    }
    let rate = |w: &RunWork| w.bytes as f64 / (w.ended_at - w.started_at).max(0.001);
    let bars: Vec<Bar> = r
        .runs
        .iter()
        .map(|w| Bar {
            label: format!("run {}", w.id),
            value: rate(w),
            text: format!(
                "{}/s, {} files/s",
                human_bytes(rate(w)),
                fmt_count(
                    (w.files as f64 / (w.ended_at - w.started_at).max(0.001) * 10.0).round() / 10.0
                )
            ),
        })
        .collect();
    o.push_str(&svg::hbars(
        "rate per run",
        &bars,
        PALETTE[0],
        r#"id="chart-runs""#,
    ));
    o.push_str("<table><tr><th>run</th><th>started (UTC)</th><th class=\"n\">duration</th><th class=\"n\">files</th><th class=\"n\">bytes</th><th class=\"n\">rate</th><th>exit</th></tr>");
    for w in &r.runs {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}/s</td><td>{}</td></tr>",
            w.id,
            when(w.started_at),
            duration(w.ended_at - w.started_at),
            w.files,
            html(&human_bytes(w.bytes as f64)),
            html(&human_bytes(rate(w))),
            match (w.finished, w.exit_code) {
                (true, Some(c)) => c.to_string(),
                _ if r.status.running && Some(w.id) == r.status.last_run.as_ref().map(|l| l.id) => "going".into(),
                _ => "interrupted".into(),
            }
        );
    }
    o.push_str("</table>\n");
}

/// A limiting signal as people read it.
fn signal_name(s: &str) -> String {
    if s.is_empty() {
        "nothing over its target".into()
    } else {
        s.to_string()
    }
}

fn governor(o: &mut String, r: &Report<'_>) {
    o.push_str("<h2>Where the governor throttled, and why</h2>\n");
    let Some(x) = r.axis.filter(|_| !r.governor.is_empty()) else {
        o.push_str("<p class=\"none\">No governor decision recorded (the governor was off, or nothing ever made it change the workers).</p>\n");
        return;
    };
    // One stack per limiting signal: the decisions it drove, per bucket; the fewest workers
    // allowed as a line over them.
    let mut signals: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
    let mut allowed: Vec<Option<f64>> = vec![None; x.n];
    for g in &r.governor {
        let i = g.bucket as usize;
        if i >= x.n {
            continue;
        }
        let v = signals.entry(&g.signal).or_insert_with(|| vec![None; x.n]);
        v[i] = Some(v[i].unwrap_or(0.0) + g.decisions as f64);
        allowed[i] = Some(allowed[i].map_or(g.min_allowed, |a: f64| a.min(g.min_allowed)));
    }
    // A decision holds until the next one: carry it through the buckets of the same run.
    let run_of = |i: usize| {
        let t = x.t0 + (i as f64 + 0.5) * x.width;
        r.runs
            .iter()
            .find(|w| t >= w.started_at - x.width && t <= w.ended_at + x.width)
            .map(|w| w.id)
    };
    for i in 1..x.n {
        if allowed[i].is_none() && run_of(i).is_some() && run_of(i) == run_of(i - 1) {
            allowed[i] = allowed[i - 1];
        }
    }
    let mut series: Vec<Series> = signals
        .into_iter()
        .enumerate()
        .map(|(k, (s, v))| Series {
            name: format!("decisions: {}", signal_name(s)),
            color: if s.is_empty() {
                "#bbbbbb"
            } else {
                PALETTE[(k + 1) % PALETTE.len()]
            },
            values: v,
            right: false,
        })
        .collect();
    series.push(Series {
        name: "fewest workers allowed (right axis)".into(),
        color: "#222222",
        values: allowed,
        right: true,
    });
    let total: i64 = r.governor.iter().map(|g| g.decisions).sum();
    o.push_str(&svg::time_chart(
        "governor decisions by limiting signal",
        &x,
        &series,
        true,
        (Fmt::Number, "decisions"),
        Some((Fmt::Number, "workers allowed")),
        &format!(r#"id="chart-governor" data-decisions="{total}""#),
    ));
    o.push_str("<table><tr><th>limiting signal</th><th class=\"n\">decisions</th><th class=\"n\">time held</th><th class=\"n\">workers allowed (share of the most)</th></tr>");
    for g in &r.governor_time {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.0}%</td></tr>",
            html(&signal_name(&g.signal)),
            g.decisions,
            duration(g.seconds),
            g.share * 100.0
        );
    }
    o.push_str("</table>\n<p class=\"sub\">A decision holds until the next one of its run, or the run's end.</p>\n");
}

fn left(o: &mut String, r: &Report<'_>) {
    o.push_str("<h2>Deferred and failed files, by cause</h2>\n");
    if let Some(x) = r.axis.filter(|_| !r.left_events.is_empty()) {
        let mut by: BTreeMap<(String, String), Vec<Option<f64>>> = BTreeMap::new();
        for e in &r.left_events {
            let i = e.bucket as usize;
            if i >= x.n {
                continue;
            }
            let v = by
                .entry((e.event.clone(), e.cause.clone()))
                .or_insert_with(|| vec![None; x.n]);
            v[i] = Some(v[i].unwrap_or(0.0) + e.events as f64);
        }
        let total: i64 = r.left_events.iter().map(|e| e.events).sum();
        let series: Vec<Series> = by
            .into_iter()
            .enumerate()
            .map(|(k, ((ev, cause), v))| Series {
                name: format!(
                    "{ev}: {}",
                    if cause.is_empty() { "no cause" } else { &cause }
                ),
                color: PALETTE[k % PALETTE.len()],
                values: v,
                right: false,
            })
            .collect();
        o.push_str(&svg::time_chart(
            "deferral and failure events over time",
            &x,
            &series,
            true,
            (Fmt::Number, "events"),
            None,
            &format!(r#"id="chart-left" data-events="{total}""#),
        ));
        o.push_str("<p class=\"sub\">Every deferral and failure recorded, by when it happened: a file deferred on three passes counts three times.</p>\n");
    } else {
        o.push_str("<p class=\"none\">No file was ever deferred or failed.</p>\n");
    }
    if r.left_now.is_empty() {
        o.push_str("<p>None deferred or failed now.</p>\n");
        return;
    }
    let bars: Vec<Bar> = r
        .left_now
        .iter()
        .map(|(s, c, n)| Bar {
            label: format!("{s}: {}", if c.is_empty() { "no cause" } else { c }),
            value: *n as f64,
            text: format!("{n} files"),
        })
        .collect();
    let now: i64 = r.left_now.iter().map(|x| x.2).sum();
    o.push_str("<p>Left now, by cause (as <code>evac status</code> counts them):</p>");
    o.push_str(&svg::hbars(
        "files deferred and failed now, by cause",
        &bars,
        PALETTE[1],
        &format!(r#"id="chart-left-now" data-files="{now}""#),
    ));
    if !r.status.reasons.is_empty() {
        o.push_str(
            "<table><tr><th class=\"n\">files</th><th>state</th><th>cause</th><th>reason</th></tr>",
        );
        for x in &r.status.reasons {
            let _ = write!(
                o,
                "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                x.count,
                x.state.as_str(),
                x.cause.map(|c| c.as_str()).unwrap_or(""),
                html(&x.reason)
            );
        }
        o.push_str("</table>\n");
    }
}

fn stage(o: &mut String, r: &Report<'_>) {
    o.push_str("<h2>Phase 2: staging from the HSM</h2>\n");
    let Some(s) = &r.stage else {
        o.push_str("<p class=\"none\">No phase 2 in this journal: no HSM listing imported, or no file staged.</p>\n");
        return;
    };
    let p = &s.progress;
    let _ = writeln!(
        o,
        "<p>{}/{} volumes done, {} files staged ({} relocated, {} given up), {:.1} files/min, {} staged and waiting.</p>",
        p.volumes_done,
        p.volumes,
        p.staged,
        p.relocated,
        p.given_up,
        p.files_per_minute,
        html(&human_bytes(p.bytes_waiting as f64))
    );
    if let Some(x) = r.axis.filter(|_| s.recalled.iter().any(|v| *v > 0)) {
        let resident: i64 = s.recalled.iter().sum();
        o.push_str(&svg::time_chart(
            "files recalled per bucket",
            &x,
            &[Series {
                name: "files made resident by stage batches".into(),
                color: PALETTE[3],
                values: s.recalled.iter().map(|v| Some(*v as f64)).collect(),
                right: false,
            }],
            true,
            (Fmt::Number, "files recalled"),
            None,
            &format!(r#"id="chart-recalls" data-resident="{resident}""#),
        ));
    }
    if !s.volumes.is_empty() {
        o.push_str("<table><tr><th>volume</th><th class=\"n\">batches</th><th class=\"n\">files</th><th class=\"n\">resident</th><th class=\"n\">given up</th><th class=\"n\">bytes</th><th class=\"n\">recall rate</th></tr>");
        for v in &s.volumes {
            let secs = (v.last - v.first).max(0.0);
            let _ = write!(
                o,
                "<tr><td class=\"path\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                html(&v.volume),
                v.batches,
                v.files,
                v.resident,
                v.given_up,
                html(&human_bytes(v.bytes as f64)),
                if secs > 0.0 {
                    format!("{:.1} files/min", v.resident as f64 * 60.0 / secs)
                } else {
                    "one batch".into()
                }
            );
        }
        o.push_str("</table>\n");
    }
}

fn dirs(o: &mut String, r: &Report<'_>) {
    o.push_str("<h2>Top directories still left</h2>\n");
    let t = r.dirs_total;
    if t.files == 0 {
        o.push_str("<p>No regular file is left: every one is relocated.</p>\n");
        return;
    }
    let _ = writeln!(
        o,
        "<p>{} files ({}) not relocated, in {} directories (counted by their first two levels below SOURCE); the largest:</p>",
        t.files,
        html(&human_bytes(t.bytes as f64)),
        t.dirs
    );
    let label = |d: &DirLeft| {
        if d.dir.is_empty() {
            "(SOURCE itself)".to_string()
        } else {
            crate::util::escape::escape(&d.dir)
        }
    };
    let bars: Vec<Bar> = r
        .dirs
        .iter()
        .map(|d| Bar {
            label: label(d),
            value: d.bytes as f64,
            text: format!("{}, {} files", human_bytes(d.bytes as f64), d.files),
        })
        .collect();
    o.push_str(&svg::hbars(
        "directories with the most bytes left",
        &bars,
        PALETTE[4],
        &format!(
            r#"id="chart-dirs" data-files="{}" data-bytes="{}""#,
            t.files, t.bytes
        ),
    ));
    o.push_str("<table><tr><th>directory</th><th class=\"n\">files</th><th class=\"n\">bytes</th><th class=\"n\">pending</th><th class=\"n\">deferred</th><th class=\"n\">failed</th><th class=\"n\">staged out</th><th class=\"n\">skipped</th></tr>");
    for d in &r.dirs {
        let _ = write!(
            o,
            "<tr><td class=\"path\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if d.dir.is_empty() { html(&label(d)) } else { html_path(&d.dir) },
            d.files,
            html(&human_bytes(d.bytes as f64)),
            d.pending,
            d.deferred,
            d.failed,
            d.staged_out,
            d.skipped
        );
    }
    o.push_str("</table>\n");
}

/// Where the page went, on stderr (stdout stays empty: the page is in the file).
pub fn written(out: &std::path::Path, bytes: usize, took: std::time::Duration) {
    crate::ui::err(format!(
        "evac: report written to {} ({}, built in {:.2}s)",
        crate::util::escape::quoted(out.as_os_str().as_encoded_bytes()),
        human_bytes(bytes as f64),
        took.as_secs_f64()
    ));
}

/// The plotted figures as JSON in a data block. `<`, `>` and `&` are written as JSON escapes so
/// that no text in it (a path, a reason) can end the block.
fn data_block(r: &Report<'_>, cut: &[String]) -> String {
    let (mut cf, mut cb) = (0, 0);
    let (mut cum_f, mut cum_b) = (Vec::new(), Vec::new());
    for (f, b) in &r.relocated {
        cf += f;
        cb += b;
        cum_f.push(cf);
        cum_b.push(cb);
    }
    let mut deferral_events = BTreeMap::new();
    let mut failure_events = BTreeMap::new();
    for e in &r.left_events {
        let m = if e.event == "failed" {
            &mut failure_events
        } else {
            &mut deferral_events
        };
        *m.entry(e.cause.clone()).or_insert(0) += e.events;
    }
    let mut deferred_now = BTreeMap::new();
    let mut failed_now = BTreeMap::new();
    for (s, c, n) in &r.left_now {
        let m = if s == "failed" {
            &mut failed_now
        } else {
            &mut deferred_now
        };
        *m.entry(c.clone()).or_insert(0) += n;
    }
    let data = Data {
        generated_at: r.generated_at,
        buckets: r.axis.map(|x| BucketsJson {
            t0: x.t0,
            width: x.width,
            n: x.n,
        }),
        files_relocated: cf,
        bytes_relocated: cb,
        bytes_total: r.status.bytes_total,
        cumulative_files: cum_f,
        cumulative_bytes: cum_b,
        deferral_events,
        failure_events,
        deferred_now,
        failed_now,
        runs: r
            .runs
            .iter()
            .map(|w| RunJson {
                id: w.id,
                files: w.files,
                bytes: w.bytes,
                seconds: w.ended_at - w.started_at,
                exit_code: w.exit_code,
            })
            .collect(),
        governor_decisions: r.governor.iter().map(|g| g.decisions).sum(),
        governor_seconds: r
            .governor_time
            .iter()
            .map(|g| (g.signal.clone(), g.seconds))
            .collect(),
        stage_volumes: r.stage.as_ref().map_or(0, |s| s.volumes.len()),
        stage_resident: r.stage.as_ref().map_or(0, |s| s.recalled.iter().sum()),
        dirs_left: r.dirs_total,
        cutover_ready: r.status.cutover.ready,
        cutover: cut,
    };
    let json = serde_json::to_string(&data)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    format!(r#"<script type="application/json" id="evac-report-data">{json}</script>"#)
}
