//! The event log: `evac run --log-json` on real trees, every line parsed as JSON and held against
//! `evac events --json` afterwards (the same events, the same objects), with the causes of what
//! was left, a name that is not UTF-8 given back byte for byte, `--since`, and `--follow`
//! showing what a later run (another process) records.

use crate::common::*;
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every line of `text` as a JSON object (panics naming the line that is not one).
#[track_caller]
fn lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{what}: not an object: {l}");
            v
        })
        .collect()
}

fn events_json(journal: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        OsStr::new("events"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--json"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let o = evac(args);
    o.expect(0, "evac events --json");
    lines(&o.stdout_str(), "evac events --json")
}

fn read_log(p: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
    lines(&text, "--log-json")
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn of<'a>(v: &'a [Value], event: &str) -> Vec<&'a Value> {
    v.iter().filter(|e| s(e, "event") == Some(event)).collect()
}

/// The one event `event` of `path` (escaped as evac shows paths).
#[track_caller]
fn one<'a>(v: &'a [Value], event: &str, path: &str) -> &'a Value {
    let found: Vec<&Value> = of(v, event)
        .into_iter()
        .filter(|e| s(e, "path") == Some(path))
        .collect();
    assert!(
        !found.is_empty(),
        "no {event} event for {path:?} in:\n{}",
        dump(v)
    );
    found[0]
}

fn dump(v: &[Value]) -> String {
    v.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The events as a set of their JSON texts (a Value's keys serialise sorted).
fn set(v: &[Value]) -> BTreeSet<String> {
    v.iter().map(Value::to_string).collect()
}

#[track_caller]
fn assert_same_events(log: &[Value], back: &[Value]) {
    let (a, b) = (set(log), set(back));
    assert_eq!(a.len(), log.len(), "--log-json wrote an event twice");
    let only_log: Vec<_> = a.difference(&b).collect();
    let only_back: Vec<_> = b.difference(&a).collect();
    assert!(
        only_log.is_empty() && only_back.is_empty(),
        "--log-json and `evac events --json` differ\nonly in --log-json: {only_log:#?}\nonly in events: {only_back:#?}"
    );
}

#[test]
fn log_json_equals_events_read_back_with_causes_raw_names_and_resync_moves() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "log_json_equals_events_read_back_with_causes_raw_names_and_resync_moves",
        "a file held open for writing is found busy through a lease"
    );
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(30, 7));
    let raw: &[u8] = b"t/not-utf8-\xff\xfe name";
    std::fs::create_dir_all(e.src.join("t")).unwrap();
    std::fs::write(e.src.join(OsStr::from_bytes(raw)), b"raw bytes").unwrap();
    for (rel, data) in [
        ("t/keep", "keep"),
        ("t/gone", "gone"),
        ("t/conflict", "mine"),
    ] {
        std::fs::write(e.src.join(rel), data).unwrap();
    }
    // DEST holds a file evac did not write at one path: that file fails, cause conflict.
    std::fs::create_dir_all(e.dst.join("t")).unwrap();
    std::fs::write(e.dst.join("t/conflict"), b"theirs").unwrap();
    // One file open for writing all along: deferred, cause busy.
    let busy = e.src.join("t/busy.log");
    std::fs::write(&busy, b"held").unwrap();
    let holder = Holder::hold_for_write(&busy);
    let log = e.tmp.path().join("events.jsonl");
    let log_s = log.to_str().unwrap();
    // The governor on, with a load target nothing meets: its first decision is to back off.
    evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--log-json",
            log_s,
            "--governor",
            "on",
            "--max-load",
            "0.001",
        ],
    )
    .expect(3, "first run: a busy file and a conflict are left");
    holder.release();

    let first = read_log(&log);
    assert_same_events(&first, &events_json(&e.journal, &[]));
    for v in &first {
        for k in ["ts", "seq", "event"] {
            assert!(s(v, k).is_some(), "no {k} in {v}");
        }
        assert_eq!(v.get("run").and_then(Value::as_i64), Some(1), "{v}");
        let ts = s(v, "ts").unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
            "ts is not RFC 3339 UTC: {ts}"
        );
    }
    let seqs: BTreeSet<&str> = first.iter().filter_map(|v| s(v, "seq")).collect();
    assert_eq!(seqs.len(), first.len(), "seq is unique");
    assert_eq!(of(&first, "START").len(), 1);
    let finish = of(&first, "FINISH");
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0].get("exit_code").and_then(Value::as_i64), Some(3));
    assert_eq!(
        s(&first[0], "event"),
        Some("START"),
        "START comes first:\n{}",
        dump(&first)
    );

    // Every relocated file once, with its hash; nothing else relocated.
    let st = status(&e.journal);
    let relocated = of(&first, "relocated");
    assert_eq!(relocated.len() as i64, count(&st, "relocated"));
    for r in &relocated {
        let h = s(r, "blake3").unwrap_or_default();
        assert!(
            h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()),
            "{r}"
        );
    }
    let keep = one(&first, "relocated", "t/keep");
    assert_eq!(
        s(keep, "blake3").unwrap(),
        blake3::hash(b"keep").to_hex().as_str()
    );
    assert!(
        keep.get("path_b64").is_none(),
        "a UTF-8 path has no path_b64"
    );

    // The name that is not UTF-8: escaped as evac escapes, and its raw bytes in base64.
    let r = one(&first, "relocated", &esc(raw));
    let b64 = s(r, "path_b64").unwrap_or_else(|| panic!("no path_b64 in {r}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("path_b64 is base64");
    assert_eq!(decoded, raw, "path_b64 is the raw path");

    // What was left says why.
    let d = one(&first, "deferred", "t/busy.log");
    assert_eq!(s(d, "cause"), Some("busy"), "{d}");
    assert!(
        s(d, "detail").is_some_and(|t| t.contains("open for writing")),
        "{d}"
    );
    let f = one(&first, "failed", "t/conflict");
    assert_eq!(s(f, "cause"), Some("conflict"), "{f}");
    assert!(s(f, "detail").is_some_and(|t| !t.is_empty()), "{f}");

    let gov = of(&first, "governor");
    assert!(
        gov.iter().any(|g| s(g, "change") == Some("down")
            && g.get("allowed").and_then(Value::as_u64).is_some()
            && g.pointer("/limiting/signal").and_then(Value::as_str) == Some("load")),
        "no governor decision to back off for load:\n{}",
        dump(&first)
    );

    // Users rename one link and delete another; two more runs follow (a copy whose link is gone
    // waits one walk), appending to the same log.
    std::fs::rename(e.src.join("t/keep"), e.src.join("t/kept")).unwrap();
    std::fs::remove_file(e.src.join("t/gone")).unwrap();
    for run in [2, 3] {
        evac_resume(&e.journal, &["--log-json", log_s]).expect(3, &format!("run {run}"));
    }
    let all = read_log(&log);
    assert_same_events(&all, &events_json(&e.journal, &[]));
    assert_eq!(all[..first.len()], first[..], "the log is appended to");
    assert_eq!(of(&all, "START").len(), 3);
    assert_eq!(of(&all, "FINISH").len(), 3);
    let renamed = one(&all, "renamed", "t/kept");
    assert!(
        s(renamed, "from").is_some_and(|f| f.contains("t/keep")),
        "{renamed}"
    );
    let unlinked = one(&all, "unlinked", "t/gone");
    assert_eq!(unlinked.get("run").and_then(Value::as_i64), Some(3));
}

#[test]
fn since_takes_times_and_ages_and_filters() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(10, 3));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    std::fs::write(e.src.join("later"), b"later").unwrap();
    evac_resume(&e.journal, &[]).expect(0, "second run");
    let all = events_json(&e.journal, &[]);
    let start2 = of(&all, "START")
        .into_iter()
        .find(|v| v.get("run").and_then(Value::as_i64) == Some(2))
        .expect("run 2's START");
    let t = s(start2, "ts").unwrap();
    // RFC 3339 strings of one format sort as their times do.
    let want: Vec<&Value> = all.iter().filter(|v| s(v, "ts").unwrap() >= t).collect();
    let got = events_json(&e.journal, &["--since", t]);
    assert_eq!(
        set(&got),
        set(&want.into_iter().cloned().collect::<Vec<_>>())
    );
    assert!(got
        .iter()
        .all(|v| v.get("run").and_then(Value::as_i64) == Some(2)));
    one(&got, "relocated", "later");
    // The same instant in another zone is the same filter.
    let (h, rest) = (t[11..13].parse::<u32>().unwrap(), &t[13..26]);
    if h < 23 {
        let shifted = format!("{}T{:02}{rest}+01:00", &t[..10], h + 1);
        assert_eq!(
            set(&events_json(&e.journal, &["--since", &shifted])),
            set(&got)
        );
    }
    assert_eq!(events_json(&e.journal, &["--since", "1h"]).len(), all.len());
    assert!(events_json(&e.journal, &["--since", "0s"]).is_empty());
    let o = evac([
        OsStr::new("events"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--since"),
        OsStr::new("yesterday"),
    ]);
    o.expect(1, "--since yesterday");
    assert!(o.stderr_str().contains("--since"), "{}", o.dump());

    // Text: one line per event, the same count, paths escaped and quoted.
    let o = evac([
        OsStr::new("events"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ]);
    o.expect(0, "evac events");
    let text = o.stdout_str();
    assert_eq!(text.lines().count(), all.len(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" run 2 relocated \"later\" blake3=")),
        "{text}"
    );
}

#[test]
fn follow_shows_what_a_later_run_records() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(5, 11));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    let all = events_json(&e.journal, &[]);
    let finish1 = s(of(&all, "FINISH")[0], "ts").unwrap().to_string();
    // From run 1's FINISH on: that line shows the follower has read the journal once.
    let mut follower = spawn_evac([
        OsStr::new("events"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--follow"),
        OsStr::new("--json"),
        OsStr::new("--since"),
        OsStr::new(&finish1),
    ]);
    let seen = |f: &mut Bg| -> Vec<Value> {
        let (out, _) = f.output_so_far();
        let text = String::from_utf8_lossy(&out).into_owned();
        // Only whole lines: the follower may be writing the next one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        lines(whole, "evac events --follow")
    };
    let deadline = Duration::from_secs(60);
    let until = |f: &mut Bg, what: &str, ok: &dyn Fn(&[Value]) -> bool| {
        let start = Instant::now();
        loop {
            let v = seen(f);
            if ok(&v) {
                return v;
            }
            if let Some(st) = f.poll() {
                panic!("the follower exited ({st:?}) before {what}:\n{}", dump(&v));
            }
            if start.elapsed() > deadline {
                panic!(
                    "no {what} within {deadline:?}; the follower printed:\n{}",
                    dump(&v)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until(&mut follower, "run 1's FINISH", &|v| {
        !of(v, "FINISH").is_empty()
    });

    std::fs::write(e.src.join("new"), b"new").unwrap();
    evac_resume(&e.journal, &[]).expect(0, "second run, another process");
    let v = until(&mut follower, "run 2's relocation of \"new\"", &|v| {
        v.iter().any(|x| {
            s(x, "event") == Some("relocated")
                && s(x, "path") == Some("new")
                && x.get("run").and_then(Value::as_i64) == Some(2)
        })
    });
    assert_eq!(of(&v, "START").len(), 1, "run 2's START, not run 1's again");
    follower.signal(libc::SIGINT);
    let o = follower.wait_for(Duration::from_secs(30));
    o.expect(0, "the follower interrupted");
    // What it printed is what the journal holds for that span.
    let v = lines(&o.stdout_str(), "evac events --follow");
    assert_same_events(&v, &events_json(&e.journal, &["--since", &finish1]));
}

#[test]
fn a_log_that_cannot_be_written_is_said_once_and_the_run_goes_on() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 5));
    // /dev/full: every write fails (ENOSPC).
    let o = evac_run(&e.src, &e.dst, &e.journal, &["--log-json", "/dev/full"]);
    o.expect(0, "a run whose event log cannot be written");
    let err = o.stderr_str();
    assert_eq!(
        err.matches("warning: --log-json: write").count(),
        1,
        "said once: {err}"
    );
    assert!(
        err.contains("events not written"),
        "the count of lost events at the end: {err}"
    );
    assert_eq!(count(&status(&e.journal), "pending"), 0);
    // The events are in the journal all the same.
    assert!(!of(&events_json(&e.journal, &[]), "FINISH").is_empty());

    // A log file that cannot be opened stops the run before it starts, naming it.
    let bad = e.tmp.path().join("no/such/dir/log.jsonl");
    let o = evac_resume(&e.journal, &["--log-json", bad.to_str().unwrap()]);
    o.expect(1, "--log-json in a missing directory");
    assert!(
        o.stderr_str().contains("no/such/dir/log.jsonl"),
        "{}",
        o.dump()
    );
}

#[test]
fn stage_batches_are_events_and_so_are_their_relocations() {
    let _gate = suite_gate!();
    let e = env();
    // Two HSM stubs (a size and no data blocks) on two volumes, their data on a "tape".
    let tape = e.tmp.path().join("tape");
    std::fs::create_dir_all(&tape).unwrap();
    let mut listing = String::from("#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n");
    for (name, vol) in [("s1", "V1"), ("s2", "V2")] {
        let data = format!("{name} recalled from {vol}").repeat(40);
        std::fs::write(tape.join(name), &data).unwrap();
        std::fs::File::create(e.src.join(name))
            .unwrap()
            .set_len(data.len() as u64)
            .unwrap();
        listing += &format!(
            "{}/{name}\tstaged_out\t1\t{vol}\t1\t{}\t\n",
            e.src.display(),
            data.len()
        );
    }
    std::fs::write(e.src.join("resident"), b"here").unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "phase 1 leaves the stubs");
    let lp = e.tmp.path().join("listing.tsv");
    std::fs::write(&lp, listing).unwrap();
    evac([
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("tsv"),
        lp.as_os_str(),
    ])
    .expect(0, "import");
    let script = e.tmp.path().join("stage.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor p in \"$@\"; do cat {}/\"$(basename \"$p\")\" > \"$p\" || exit 1; done\n",
            tape.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    evac_timeout(
        [
            OsStr::new("stage"),
            OsStr::new("--journal"),
            e.journal.as_os_str(),
            OsStr::new("--stage-cmd"),
            script.as_os_str(),
        ],
        Duration::from_secs(120),
    )
    .expect(0, "stage");

    let all = events_json(&e.journal, &[]);
    let batches = of(&all, "stage_batch");
    for vol in ["V1", "V2"] {
        let outcome = |o: &str| {
            batches
                .iter()
                .filter(|b| s(b, "volume") == Some(vol) && s(b, "outcome") == Some(o))
                .count()
        };
        assert_eq!(
            (outcome("started"), outcome("done")),
            (1, 1),
            "{vol}:\n{}",
            dump(&all)
        );
    }
    assert!(
        batches
            .iter()
            .filter(|b| s(b, "outcome") == Some("done"))
            .all(|b| b.get("resident").and_then(Value::as_u64) == Some(1)),
        "{}",
        dump(&all)
    );
    for name in ["s1", "s2"] {
        let r = one(&all, "relocated", name);
        assert!(
            r.get("run").and_then(Value::as_i64).is_some_and(|n| n > 1),
            "relocated by a run of the stage: {r}"
        );
    }
}
