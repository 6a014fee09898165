//! Prometheus metrics: `evac status --format prometheus` and `evac run --metrics-file`, parsed
//! with a parser of the format (prometheus-parse) and held against the journal after real runs.

use crate::common::*;
use prometheus_parse::{Scrape, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"))
}

fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a plain value: {other:?}"),
    }
}

/// The value of `name` whose labels include `labels`; panics unless exactly one sample matches.
#[track_caller]
fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| value(&x.value))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name}{labels:?}: {} samples in {:?}",
        found.len(),
        s.samples
    );
    found[0]
}

fn has(s: &Scrape, name: &str) -> bool {
    s.samples.iter().any(|x| x.metric == name)
}

/// Every family has its HELP and TYPE lines before its samples, each name once.
#[track_caller]
fn assert_documented(text: &str) {
    let mut helped = BTreeMap::new();
    let mut typed = BTreeMap::new();
    for l in text.lines() {
        let w: Vec<&str> = l.splitn(4, ' ').collect();
        match (w.first(), w.get(1)) {
            (Some(&"#"), Some(&"HELP")) => {
                assert!(
                    helped.insert(w[2].to_string(), ()).is_none(),
                    "two HELP for {l}"
                );
            }
            (Some(&"#"), Some(&"TYPE")) => {
                assert!(typed.insert(w[2].to_string(), w[3].to_string()).is_none());
            }
            _ => {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with("evac_"), "{l}");
                assert!(
                    helped.contains_key(name) && typed.contains_key(name),
                    "{name}: a sample before its HELP and TYPE"
                );
                assert_eq!(
                    typed[name] == "counter",
                    name.ends_with("_total"),
                    "{name}: counters end in _total, and only they"
                );
            }
        }
    }
}

fn prometheus(journal: &Path) -> String {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("prometheus"),
    ]);
    o.expect(0, "status --format prometheus");
    o.stdout_str()
}

fn db_count(journal: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(journal)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn status_as_prometheus_metrics_equals_the_journal_after_a_run() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            symlinks: true,
            specials: true,
            ..TreeSpec::plain(40, 431)
        },
    );
    // One file open for writing all along: deferred, cause busy; the run exits 3.
    let busy = e.src.join("t/busy.log");
    std::fs::write(&busy, b"held").unwrap();
    let holder = Holder::hold_for_write(&busy);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run with a busy file");
    let text = prometheus(&e.journal);
    holder.release();
    assert_documented(&text);
    let s = parse(&text);
    let st = status(&e.journal);

    for state in [
        "pending",
        "relocated",
        "deferred",
        "failed",
        "staged_out",
        "skipped",
        "gone",
    ] {
        assert_eq!(
            get(&s, "evac_files", &[("state", state)]) as i64,
            count(&st, state),
            "evac_files{{state={state}}}"
        );
    }
    let j = &e.journal;
    assert_eq!(
        get(&s, "evac_files", &[("state", "relocated")]) as i64,
        db_count(j, "SELECT count(*) FROM files WHERE state = 'relocated'")
    );
    assert_eq!(
        get(&s, "evac_file_bytes", &[("state", "relocated")]) as i64,
        db_count(
            j,
            "SELECT sum(size) FROM files WHERE state = 'relocated' AND kind = 'file'"
        )
    );
    assert_eq!(
        get(&s, "evac_bytes_to_relocate", &[]) as i64,
        st.get("bytes_total").and_then(|v| v.as_i64()).unwrap()
    );
    assert_eq!(
        get(&s, "evac_bytes_remaining", &[]) as i64,
        db_count(j, "SELECT sum(size) FROM files WHERE state = 'deferred'")
    );
    assert_eq!(get(&s, "evac_deferred_files", &[("cause", "busy")]), 1.0);
    assert_eq!(get(&s, "evac_deferred_files", &[("cause", "changed")]), 0.0);
    // What the runs relocated, against what the relocated files add up to (one run, nothing
    // gone since).
    assert_eq!(
        get(&s, "evac_relocated_files_total", &[]) as i64,
        count(&st, "relocated")
    );
    assert_eq!(
        get(&s, "evac_relocated_bytes_total", &[]),
        get(&s, "evac_file_bytes", &[("state", "relocated")])
    );
    assert_eq!(get(&s, "evac_running", &[]), 0.0);
    assert_eq!(get(&s, "evac_paused", &[]), 0.0);
    assert_eq!(get(&s, "evac_rate_bytes_per_second", &[]), 0.0);
    assert!(!has(&s, "evac_eta_seconds"), "an ETA with no run going");
    assert!(
        !has(&s, "evac_governor_workers_allowed"),
        "a governor with no run going"
    );
    assert!(
        !has(&s, "evac_stage_volumes"),
        "phase 2 without an HSM listing"
    );
    assert_eq!(get(&s, "evac_last_run_exit_code", &[]), 3.0);
    assert_eq!(get(&s, "evac_last_run_id", &[]), 1.0);
    let (start, finish): (f64, f64) = rusqlite::Connection::open(j)
        .unwrap()
        .query_row("SELECT started_at, finished_at FROM runs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!((get(&s, "evac_last_run_start_timestamp_seconds", &[]) - start).abs() < 1e-3);
    assert!((get(&s, "evac_last_run_finish_timestamp_seconds", &[]) - finish).abs() < 1e-3);
    assert_eq!(
        get(
            &s,
            "evac_info",
            &[
                ("source", e.src.to_str().unwrap()),
                ("dest", e.dst.to_str().unwrap())
            ]
        ),
        1.0
    );

    // Every metric the sample alert rules use is one evac writes.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/evac-alerts.yml"),
    )
    .unwrap();
    let mut used: Vec<&str> = rules
        .match_indices("evac_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.ends_with(".prom") && *n != "evac_")
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 6, "{used:?}");
    for n in used {
        assert!(
            text.contains(&format!("# TYPE {n} ")),
            "scripts/evac-alerts.yml uses {n}, which evac does not write"
        );
    }

    // evac pause shows at once, with no run going.
    evac([
        OsStr::new("pause"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "pause");
    assert_eq!(
        get(&parse(&prometheus(&e.journal)), "evac_paused", &[]),
        1.0
    );
}

#[test]
fn metrics_file_is_replaced_whole_while_a_run_goes_and_complete_after_it() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(30, 432));
    let bytes = Manifest::scan(&e.src).file_bytes_distinct();
    let dir = e.tmp.path().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let prom = dir.join("evac.prom");
    // A rate cap that makes the run last about three seconds, and a write every 0.1 s.
    let rate = (bytes / 3).max(4096).to_string();
    let mut args = run_args(&e.src, &e.dst, &e.journal, &[]);
    for a in [
        "--bwlimit",
        &rate,
        "--metrics-file",
        prom.to_str().unwrap(),
        "--metrics-interval",
        "0.1",
        "--batch-files",
        "2",
    ] {
        args.push(a.into());
    }
    let mut bg = spawn_evac(args);
    // Read it as a collector would, as often as we can: every read must be a whole file (the
    // last family present), and each write a new inode (renamed into place, not rewritten).
    let mut inodes = std::collections::BTreeSet::new();
    let mut reads = 0;
    let mut seen_running = false;
    let mut seen_progress = false;
    let mut seen_governor = false;
    while bg.poll().is_none() {
        if let Ok(text) = std::fs::read_to_string(&prom) {
            let ino = std::fs::metadata(&prom).map(|m| m.ino()).unwrap_or(0);
            reads += 1;
            assert!(
                text.ends_with('\n') && text.contains("\nevac_metrics_timestamp_seconds "),
                "a partial metrics file (read {reads}):\n{text}"
            );
            let s = parse(&text);
            if get(&s, "evac_running", &[]) == 1.0 {
                seen_running = true;
                inodes.insert(ino);
                seen_governor |= has(&s, "evac_governor_workers_allowed");
                if get(&s, "evac_relocated_files_total", &[]) > 0.0 {
                    seen_progress = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = bg.wait_for(Duration::from_secs(120));
    out.expect(0, "run with --metrics-file");
    assert!(
        seen_running,
        "no metrics file while the run went ({reads} reads)"
    );
    assert!(
        seen_progress,
        "no progress in the metrics while the run went"
    );
    assert!(
        seen_governor,
        "no governor in the metrics while the run went"
    );
    assert!(
        inodes.len() >= 3,
        "the file was not replaced while the run went: {} inodes in {reads} reads",
        inodes.len()
    );

    // After the run: complete, and equal to the journal.
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_documented(&text);
    let s = parse(&text);
    let st = status(&e.journal);
    assert_eq!(get(&s, "evac_running", &[]), 0.0);
    assert_eq!(get(&s, "evac_last_run_exit_code", &[]), 0.0);
    assert_eq!(
        get(&s, "evac_files", &[("state", "relocated")]) as i64,
        count(&st, "relocated")
    );
    assert_eq!(get(&s, "evac_relocated_bytes_total", &[]) as u64, bytes);
    assert_eq!(get(&s, "evac_bytes_remaining", &[]), 0.0);
    // The same as status prints, but for when each was read.
    let strip = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.starts_with("evac_metrics_timestamp_seconds"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&text), strip(&prometheus(&e.journal)));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![OsStr::new("evac.prom")], "temporaries left");
}

#[test]
fn a_run_refused_for_a_busy_journal_leaves_the_running_ones_metrics_alone() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 433));
    let prom = e.tmp.path().join("evac.prom");
    let mut args = run_args(&e.src, &e.dst, &e.journal, &[]);
    // Written only at its finish: nothing but the second run could change the file meanwhile.
    for a in [
        "--bwlimit",
        "2K",
        "--metrics-file",
        prom.to_str().unwrap(),
        "--metrics-interval",
        "3600",
    ] {
        args.push(a.into());
    }
    let mut first = spawn_evac(args);
    assert!(
        wait_running(&e.journal, &mut first, Duration::from_secs(30)),
        "the first run did not start"
    );
    std::fs::write(&prom, b"# the first run's\n").unwrap();
    let mut args = run_args(&e.src, &e.dst, &e.journal, &[]);
    args.push("--metrics-file".into());
    args.push(prom.as_os_str().into());
    evac(args).expect(5, "a second run on the same journal");
    assert_eq!(std::fs::read(&prom).unwrap(), b"# the first run's\n");
    first.signal(libc::SIGTERM);
    first
        .wait_for(Duration::from_secs(60))
        .expect(4, "the first run, interrupted");
    let s = parse(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(get(&s, "evac_last_run_exit_code", &[]), 4.0);
    assert_eq!(get(&s, "evac_running", &[]), 0.0);
}
