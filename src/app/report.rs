//! `evac report`: the whole run history of a journal as one self-contained HTML page (progress
//! and ETA over time, rate per run, the governor, deferrals and failures by cause, phase 2, the
//! directories left, cutover readiness).
//!
//! Everything is aggregated by the journal in SQL (time buckets, groups), so building the page
//! reads each large table once and holds a few hundred rows, whatever the number of files. The
//! headline figures and the cutover verdict are `status`'s own (`status::build`), so the page and
//! `evac status` never disagree.

use super::status::{build, need_plan};
use crate::error::{Error, Result};
use crate::journal::{Buckets, DirLeft, FileState, Journal};
use crate::ui::report::svg::TimeAxis;
use crate::ui::report::{DirTotals, Report, StageReport};
use crate::util::escape::quoted;
use std::path::Path;

/// Time buckets across the run history: fine enough to see a night's window, few enough that
/// each bar of a chart is a few pixels wide.
const BUCKETS: i64 = 120;
/// The ETA at a bucket uses the rate over this many buckets up to it.
const RATE_WINDOW: usize = 5;
/// Directories listed as "left".
const TOP_DIRS: usize = 15;

/// Write the report of `journal` to `out`; exit 0.
pub fn report(journal: &Path, out: &Path) -> Result<i32> {
    let started = std::time::Instant::now();
    let j = Journal::open_read(journal)?;
    let plan = need_plan(&j)?;
    let status = build(&j, &plan, journal)?;
    let buckets = j.report_span()?.map(|(a, b)| Buckets::over(a, b, BUCKETS));
    let n = buckets.map_or(0, |b| b.n as usize);
    let mut relocated = vec![(0i64, 0i64); n];
    let mut left_events = Vec::new();
    let mut governor = Vec::new();
    let mut recalled = vec![0i64; n];
    if let Some(b) = buckets {
        for r in j.relocated_by_time(b)? {
            relocated[r.bucket as usize] = (r.files, r.bytes);
        }
        left_events = j.left_events_by_time(b)?;
        governor = j.governor_by_time(b)?;
        for r in j.recalls_by_time(b)? {
            recalled[r.bucket as usize] = r.files;
        }
    }
    let eta_hours = eta_trend(&relocated, buckets, status.bytes_total);
    let mut left_now = Vec::new();
    for s in [FileState::Deferred, FileState::Failed] {
        for (c, files) in j.by_cause(s)? {
            left_now.push((
                s.as_str().to_string(),
                c.map_or(String::new(), |c| c.as_str().to_string()),
                files,
            ));
        }
    }
    let volumes = j.stage_volumes()?;
    let stage =
        (status.stage.staged > 0 || status.stage.given_up > 0 || !volumes.is_empty()).then(|| {
            StageReport {
                progress: status.stage.clone(),
                volumes,
                recalled,
            }
        });
    let (dirs, dirs_total) = top_dirs(&j)?;
    let report = Report {
        status: &status,
        generated_at: crate::util::time::now(),
        axis: buckets.map(|b| TimeAxis {
            t0: b.t0,
            width: b.width,
            n: b.n as usize,
        }),
        relocated,
        eta_hours,
        left_events,
        left_now,
        runs: j.runs_work()?,
        governor,
        governor_time: j.governor_time()?,
        stage,
        dirs,
        dirs_total,
    };
    let page = crate::ui::report::render(&report);
    write_atomically(out, page.as_bytes())?;
    crate::ui::report::written(out, page.len(), started.elapsed());
    Ok(crate::util::exit::EXIT_OK)
}

/// The ETA (hours) at the end of each bucket: the bytes left then over the rate of the last
/// `RATE_WINDOW` buckets; None where nothing was relocated in the bucket (no run, paused).
fn eta_trend(relocated: &[(i64, i64)], b: Option<Buckets>, total: i64) -> Vec<Option<f64>> {
    let Some(b) = b else {
        return Vec::new();
    };
    let mut cum = 0i64;
    let mut out = Vec::with_capacity(relocated.len());
    for (i, (_, bytes)) in relocated.iter().enumerate() {
        cum += bytes;
        if *bytes == 0 {
            out.push(None);
            continue;
        }
        let from = (i + 1).saturating_sub(RATE_WINDOW);
        let window: i64 = relocated[from..=i].iter().map(|x| x.1).sum();
        let rate = window as f64 / ((i + 1 - from) as f64 * b.width);
        let left = (total - cum).max(0) as f64;
        out.push((rate > 0.0).then(|| left / rate / 3600.0));
    }
    out
}

/// The directories with the most bytes left (largest first) and what all of them add up to;
/// the journal streams one row per directory, of which only the largest are kept.
fn top_dirs(j: &Journal) -> Result<(Vec<DirLeft>, DirTotals)> {
    let mut top: Vec<DirLeft> = Vec::new();
    let mut t = DirTotals::default();
    let order = |v: &mut Vec<DirLeft>| {
        v.sort_by(|a, b| {
            (b.bytes, b.files)
                .cmp(&(a.bytes, a.files))
                .then(a.dir.cmp(&b.dir))
        });
        v.truncate(TOP_DIRS);
    };
    j.for_each_dir_left(&mut |d| {
        t.dirs += 1;
        t.files += d.files;
        t.bytes += d.bytes;
        top.push(d);
        if top.len() > 4 * TOP_DIRS {
            order(&mut top);
        }
    })?;
    order(&mut top);
    Ok((top, t))
}

/// `data` at `out` through a temporary beside it and a rename: a browser that has the page open
/// reloads the old one or the new one, never half of one.
fn write_atomically(out: &Path, data: &[u8]) -> Result<()> {
    let shown = quoted(out.as_os_str().as_encoded_bytes());
    let name = out
        .file_name()
        .ok_or_else(|| Error::Setup(format!("--out {shown}: not a file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let io = |what: &str, e: std::io::Error| Error::Setup(format!("{what} {shown}: {e}"));
    std::fs::write(&tmp, data).map_err(|e| io("write", e))?;
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("write", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_uses_the_recent_rate_and_skips_idle_buckets() {
        let b = Buckets {
            t0: 0.0,
            width: 3600.0,
            n: 4,
        };
        // 100 bytes an hour for two hours, an idle hour, then 100 again; 1000 to carry.
        let r = [(1, 100), (1, 100), (0, 0), (1, 100)];
        let e = eta_trend(&r, Some(b), 1000);
        assert_eq!(e[0], Some(9.0));
        assert_eq!(e[1], Some(8.0));
        assert_eq!(e[2], None);
        // 300 over the last four hours: 75 an hour, 700 left.
        assert!((e[3].unwrap() - 700.0 / 75.0).abs() < 1e-9, "{e:?}");
    }
}
