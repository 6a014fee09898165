//! `evac report`: the real binary over real trees and several runs (a file held open for writing
//! by a child process is deferred, a file in the way at DEST fails), then the page it writes:
//! the figures it plots (its `evac-report-data` block and the charts' data attributes) equal the
//! journal's totals as `evac status --json` gives them, nothing is fetched from anywhere, and a
//! directory named like markup (quotes, `<script>`, bytes that are not UTF-8) is escaped.

use crate::common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `evac report` of `journal`, as (page, its data block).
fn report(journal: &Path, out: &Path) -> (String, Value) {
    evac([
        OsStr::new("report"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ])
    .expect(0, "evac report");
    let page = std::fs::read_to_string(out).expect("the report is UTF-8");
    let start = r#"<script type="application/json" id="evac-report-data">"#;
    let i = page.find(start).expect("the data block") + start.len();
    let j = i + page[i..].find("</script>").expect("the data block's end");
    let data: Value = serde_json::from_str(&page[i..j]).expect("the data block is JSON");
    (page, data)
}

fn status_json(journal: &Path) -> Value {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--json"),
    ]);
    o.expect(0, "evac status --json");
    serde_json::from_str(&o.stdout_str()).expect("status --json")
}

fn int(v: &Value, path: &[&str]) -> i64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_i64()
        .unwrap_or_else(|| panic!("{path:?} is not an integer in {v}"))
}

/// The sum of an object's integer values.
fn sum(v: &Value) -> i64 {
    v.as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_i64).sum())
}

/// The value of attribute `name` in the tag that has `id="ID"`.
fn attr(page: &str, id: &str, name: &str) -> i64 {
    let at = page
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element {id}"));
    let tag_end = at + page[at..].find('>').unwrap();
    let tag = &page[at..tag_end];
    let k = format!(r#"{name}=""#);
    let v = tag
        .find(&k)
        .unwrap_or_else(|| panic!("{id} has no {name}: {tag}"))
        + k.len();
    tag[v..v + tag[v..].find('"').unwrap()]
        .parse()
        .unwrap_or_else(|e| panic!("{id} {name}: {e}"))
}

/// Nothing on the page comes from elsewhere: no address at all, no external resource tag, and
/// the only script element is the data block (which a browser does not run).
#[track_caller]
fn self_contained(page: &str) {
    let lower = page.to_ascii_lowercase();
    for bad in [
        "http://", "https://", "<link", "<img", "<iframe", "@import", "url(", "src=", "href=",
    ] {
        assert!(!lower.contains(bad), "the page has {bad:?}");
    }
    assert_eq!(
        lower.matches("<script").count(),
        1,
        "one script element, the data block"
    );
    assert!(lower.contains(r#"<script type="application/json" id="evac-report-data">"#));
}

#[track_caller]
fn totals_match(page: &str, data: &Value, st: &Value) {
    assert_eq!(
        int(data, &["files_relocated"]),
        int(st, &["files", "relocated"])
    );
    assert_eq!(
        int(data, &["bytes_relocated"]),
        int(st, &["bytes_relocated"])
    );
    assert_eq!(int(data, &["bytes_total"]), int(st, &["bytes_total"]));
    let cum = data["cumulative_bytes"].as_array().unwrap();
    assert_eq!(
        cum.last().and_then(Value::as_i64),
        Some(int(st, &["bytes_relocated"])),
        "the progress curve ends at the bytes relocated"
    );
    assert_eq!(
        attr(page, "chart-relocated", "data-total-files"),
        int(st, &["files", "relocated"])
    );
    assert_eq!(
        attr(page, "chart-relocated", "data-total-bytes"),
        int(st, &["bytes_relocated"])
    );
    assert_eq!(sum(&data["deferred_now"]), int(st, &["files", "deferred"]));
    assert_eq!(sum(&data["failed_now"]), int(st, &["files", "failed"]));
    assert_eq!(data["cutover_ready"], st["cutover"]["ready"]);
    // The files left by directory add up to what keeps cutover from being ready.
    let not_relocated = st["cutover"]["differences"]["files not relocated"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(int(data, &["dirs_left", "files"]), not_relocated);
}

#[test]
fn report_plots_the_journals_totals_escapes_names_and_fetches_nothing() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "report_plots_the_journals_totals_escapes_names_and_fetches_nothing",
        "a file held open for writing is found busy through a lease"
    );
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(40, 15));
    // A directory named like markup, not UTF-8: the busy file in it keeps it in the
    // "directories left" table.
    let hostile: &[u8] = b"t/<script>alert('x')<\\script> \"q\" \xff&amp;";
    let hostile_dir = e.src.join(OsStr::from_bytes(hostile));
    std::fs::create_dir_all(&hostile_dir).unwrap();
    let held = hostile_dir.join("held.log");
    std::fs::write(&held, b"held all along").unwrap();
    std::fs::write(e.src.join("t/busy.log"), b"held for the first run").unwrap();
    std::fs::write(e.src.join("t/conflict"), b"mine").unwrap();
    std::fs::create_dir_all(e.dst.join("t")).unwrap();
    std::fs::write(e.dst.join("t/conflict"), b"theirs").unwrap();
    let keep = Holder::hold_for_write(&held);
    let first = Holder::hold_for_write(&e.src.join("t/busy.log"));
    // The governor on, with a load target nothing meets: it records decisions.
    evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &["--governor", "on", "--max-load", "0.001"],
    )
    .expect(3, "first run: busy files and a conflict are left");
    first.release();
    std::fs::write(e.src.join("late"), b"a file made between the runs").unwrap();
    evac_resume(&e.journal, &[]).expect(3, "second run: one file still held, the conflict");

    let out = e.tmp.path().join("report.html");
    let (page, data) = report(&e.journal, &out);
    let st = status_json(&e.journal);
    assert_eq!(int(&st, &["files", "deferred"]), 1, "{st}");
    assert_eq!(int(&st, &["files", "failed"]), 1, "{st}");
    totals_match(&page, &data, &st);
    self_contained(&page);

    // Two runs, each with its own work; the busy files' deferrals and the conflict's failures
    // are in the history by cause.
    let runs = data["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{data}");
    assert!(runs[0]["files"].as_i64().unwrap() >= 40, "{data}");
    assert!(runs[1]["files"].as_i64().unwrap() >= 2, "{data}");
    assert!(int(&data, &["deferral_events", "busy"]) >= 3, "{data}");
    assert!(int(&data, &["failure_events", "conflict"]) >= 2, "{data}");
    assert_eq!(
        attr(&page, "chart-left", "data-events"),
        sum(&data["deferral_events"]) + sum(&data["failure_events"])
    );
    assert_eq!(int(&data, &["deferred_now", "busy"]), 1);
    assert_eq!(int(&data, &["failed_now", "conflict"]), 1);
    assert!(int(&data, &["governor_decisions"]) >= 1, "{data}");
    assert_eq!(
        attr(&page, "chart-governor", "data-decisions"),
        int(&data, &["governor_decisions"])
    );
    assert_eq!(attr(&page, "chart-dirs", "data-files"), 2);
    assert!(page.contains("No phase 2 in this journal"));
    assert!(
        page.contains("cutover not ready (as of run 2)"),
        "status's verdict"
    );

    // The hostile directory: shown escaped as evac shows paths (\xff, \"), then as HTML.
    assert!(
        !page.contains("<script>alert"),
        "markup from a name reached the page"
    );
    assert!(
        !page.contains("'x'"),
        "a quote from a name reached the page unescaped"
    );
    assert!(
        page.contains(
            r#"t/&lt;script&gt;alert(&#39;x&#39;)&lt;\\script&gt; \&quot;q\&quot; \xff&amp;amp;"#
        ),
        "the name, escaped, in the directories left"
    );
    keep.release();
}

/// Without root (no lease needed): a tree relocated whole over two runs; the page says so, and
/// its totals are the journal's.
#[test]
fn report_of_a_finished_evacuation() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(25, 16));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    std::fs::write(e.src.join("more"), vec![7u8; 5000]).unwrap();
    evac_resume(&e.journal, &[]).expect(0, "second run relocates the new file");
    let out = e.tmp.path().join("r.html");
    let (page, data) = report(&e.journal, &out);
    let st = status_json(&e.journal);
    totals_match(&page, &data, &st);
    self_contained(&page);
    assert_eq!(data["runs"].as_array().unwrap().len(), 2);
    assert_eq!(data["runs"][1]["files"].as_i64(), Some(1), "{data}");
    assert_eq!(data["runs"][1]["bytes"].as_i64(), Some(5000), "{data}");
    assert!(page.contains("cutover ready: DEST mirrors SOURCE (as of run 2"));
    assert!(page.contains("No regular file is left"));
    assert!(page.contains("No file was ever deferred or failed"));
    // A second report replaces the first whole, and leaves no temporary beside it.
    let (again, _) = report(&e.journal, &out);
    assert!(again.starts_with("<!DOCTYPE html>"));
    let names: Vec<_> = std::fs::read_dir(e.tmp.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.as_bytes().starts_with(b".r.html.tmp")),
        "{names:?}"
    );
}
