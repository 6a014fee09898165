//! `evac status` (JSON shape and counts, lists, while a run is going) and
//! `evac verify` (passes after a run; names what was tampered with).

use crate::common::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

fn verify(journal: &Path) -> Out {
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        journal.as_os_str(),
    ])
}

fn list(journal: &Path, state: &str) -> Out {
    evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new(state),
    ])
}

#[test]
fn status_json_has_the_documented_shape_and_counts() {
    let _gate = suite_gate!();
    let e = env();
    let spec = TreeSpec {
        symlinks: true,
        specials: true,
        sparse: true,
        ..TreeSpec::plain(40, 401)
    };
    let info = build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    let nfiles = before.file_count() as i64;
    let bytes = before.file_bytes_distinct() as i64;

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    let st = status(&e.journal);

    assert_eq!(
        st.get("source").and_then(|v| v.as_str()),
        Some(e.src.to_str().unwrap()),
        "source: {st:?}"
    );
    assert_eq!(
        st.get("dest").and_then(|v| v.as_str()),
        Some(e.dst.to_str().unwrap()),
        "dest: {st:?}"
    );
    let files = st
        .get("files")
        .unwrap_or_else(|| panic!("no files object: {st:?}"));
    for k in [
        "pending",
        "relocated",
        "deferred",
        "failed",
        "staged_out",
        "skipped",
        "gone",
    ] {
        let v = files
            .get(k)
            .unwrap_or_else(|| panic!("files.{k} missing: {st:?}"));
        assert!(
            v.as_i64().is_some_and(|n| n >= 0),
            "files.{k} is not a count: {v:?}"
        );
    }
    assert_eq!(count(&st, "relocated"), nfiles, "files.relocated");
    for k in ["pending", "deferred", "failed", "staged_out", "gone"] {
        assert_eq!(count(&st, k), 0, "files.{k}: {st:?}");
    }
    assert!(
        count(&st, "skipped") >= info.specials().len() as i64,
        "files.skipped: {st:?}"
    );
    let num = |k: &str| {
        st.get(k)
            .unwrap_or_else(|| panic!("{k} missing: {st:?}"))
            .clone()
    };
    assert_eq!(
        num("bytes_relocated").as_i64(),
        Some(bytes),
        "bytes_relocated (sum of distinct files' sizes)"
    );
    assert_eq!(num("bytes_total").as_i64(), Some(bytes), "bytes_total");
    assert!(
        num("rate_bytes_per_sec").is_number(),
        "rate_bytes_per_sec: {:?}",
        num("rate_bytes_per_sec")
    );
    let eta = num("eta_seconds");
    assert!(eta.is_null() || eta.is_number(), "eta_seconds: {eta:?}");
    assert_eq!(num("running").as_bool(), Some(false), "running");
    let _ = num("throttle");
    let reasons = num("reasons");
    let reasons = reasons
        .as_array()
        .unwrap_or_else(|| panic!("reasons is not an array: {reasons:?}"));
    for r in reasons {
        assert!(
            r.get("state").and_then(|v| v.as_str()).is_some(),
            "reason without state: {r:?}"
        );
        assert!(
            r.get("reason").and_then(|v| v.as_str()).is_some(),
            "reason without reason: {r:?}"
        );
        assert!(
            r.get("count")
                .and_then(|v| v.as_i64())
                .is_some_and(|n| n >= 1),
            "reason without count: {r:?}"
        );
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.get("state").and_then(|v| v.as_str()) == Some("skipped")),
        "no reason given for the skipped special files: {reasons:?}"
    );

    // The human-readable form works too.
    evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "status");
}

#[test]
fn status_lists_raw_and_escaped_paths() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            weird_names: true,
            ..TreeSpec::plain(5, 402)
        },
    );
    let before = Manifest::scan(&e.src);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");

    let want: BTreeSet<Vec<u8>> = before.files().map(|(r, _)| r.clone()).collect();
    let raw: Vec<Vec<u8>> = status_list(&e.journal, "relocated");
    assert_eq!(raw.len(), want.len(), "one NUL-terminated entry per file");
    let got: BTreeSet<Vec<u8>> = raw.into_iter().collect();
    let missing: Vec<String> = want.difference(&got).map(|r| esc(r)).collect();
    let extra: Vec<String> = got.difference(&want).map(|r| esc(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "-0 list: missing {missing:?}, unexpected {extra:?}"
    );

    let out = list(&e.journal, "relocated");
    out.expect(0, "status --list relocated");
    let text = out.stdout_str();
    let lines: BTreeSet<String> = text.lines().map(|l| l.to_string()).collect();
    let want_lines: BTreeSet<String> = want.iter().map(|r| esc(r)).collect();
    assert_eq!(text.lines().count(), want.len(), "one line per file");
    let missing: Vec<&String> = want_lines.difference(&lines).collect();
    assert!(
        missing.is_empty(),
        "escaped lines missing: {missing:?}\nunexpected: {:?}",
        lines.difference(&want_lines).collect::<Vec<_>>()
    );
    assert!(
        !text.bytes().any(|b| b < 0x20 && b != b'\n'),
        "raw control bytes in the escaped list"
    );

    // Empty states list nothing.
    assert!(status_list(&e.journal, "deferred").is_empty());
}

#[test]
fn status_list_without_null_prints_the_escaped_path_and_reason() {
    let _gate = suite_gate!();
    // Without -0: one line per file, the escaped path, a TAB, the reason. Escaped paths never
    // hold a raw TAB or newline, so the line splits unambiguously.
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(3, 403));
    let busy_rel: &[u8] = b"busy \t one";
    let busy = path_of(&e.src, busy_rel);
    std::fs::write(&busy, b"x").unwrap();
    let _h = Holder::hold_for_write(&busy);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run with a busy file");
    let out = list(&e.journal, "deferred");
    out.expect(0, "status --list deferred");
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line per deferred file: {text:?}");
    let (path, reason) = lines[0]
        .split_once('\t')
        .unwrap_or_else(|| panic!("no TAB between path and reason: {text:?}"));
    assert_eq!(path, esc(busy_rel), "escaped path");
    assert!(reason.contains("open for writing"), "reason: {reason:?}");
}

#[test]
fn status_works_while_a_run_is_going() {
    let _gate = suite_gate!();
    let e = env();
    let (mut bg, holder, before) = start_and_freeze(&e, 1000, 404, 1);
    // The run is held mid-way at a step point and holds the journal.
    let o = evac_timeout(
        [
            OsStr::new("status"),
            OsStr::new("--journal"),
            e.journal.as_os_str(),
            OsStr::new("--json"),
        ],
        Duration::from_secs(60),
    );
    o.expect(0, "status --json during a run");
    let st = json::parse(o.stdout_str().trim())
        .unwrap_or_else(|err| panic!("bad JSON ({err}): {}", o.dump()));
    assert_eq!(
        st.get("running").and_then(|v| v.as_bool()),
        Some(true),
        "{st:?}"
    );
    assert_eq!(
        st.get("source").and_then(|v| v.as_str()),
        Some(e.src.to_str().unwrap())
    );
    let total: i64 = [
        "pending",
        "relocated",
        "deferred",
        "failed",
        "staged_out",
        "skipped",
        "gone",
    ]
    .iter()
    .map(|k| count(&st, k))
    .sum();
    assert!(
        total >= 1 && count(&st, "relocated") >= 1,
        "status during a run shows its progress: {st:?}"
    );
    evac_timeout(
        [
            OsStr::new("status"),
            OsStr::new("--journal"),
            e.journal.as_os_str(),
        ],
        Duration::from_secs(60),
    )
    .expect(0, "human status during a run");
    evac_timeout(
        [
            OsStr::new("status"),
            OsStr::new("--journal"),
            e.journal.as_os_str(),
            OsStr::new("--list"),
            OsStr::new("pending"),
            OsStr::new("-0"),
        ],
        Duration::from_secs(60),
    )
    .expect(0, "status --list during a run");

    thaw(&e);
    bg.wait_for(RUN_TIMEOUT)
        .expect(3, "the run, with its busy file");
    holder.release();
    evac_resume(&e.journal, &[]).expect(0, "resume");
    check_relocated(&before, &e.src, &e.dst, None);
}

#[test]
fn status_polled_while_a_run_starts_does_not_break_it() {
    let _gate = suite_gate!();
    // A user polling status from the moment a run starts must not make the run fail.
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(30, 405));
    let mut failures = Vec::new();
    for i in 0..25 {
        let src = e.tmp.path().join(format!("src{i}"));
        let dst = e.tmp.path().join(format!("dst{i}"));
        let journal = e.tmp.path().join(format!("j{i}.db"));
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&e.src)
            .arg(&src)
            .status()
            .unwrap();
        let before = Manifest::scan(&src);
        let mut bg = spawn_evac(run_args(&src, &dst, &journal, &[]));
        let mut polls = 0;
        while bg.poll().is_none() {
            let _ = try_status(&journal);
            polls += 1;
        }
        let out = bg.wait();
        if out.code() != 0 {
            failures.push(format!(
                "iteration {i} (after {polls} status polls): exit {}: {}",
                out.code(),
                out.stderr_str().trim()
            ));
        } else {
            check_relocated(&before, &src, &dst, None);
        }
    }
    assert_no_problems("runs with status polled during start-up", &failures);
}

/// Relocate a tree with a plain and a weird name to tamper with.
fn relocated_tree(seed: u64) -> (Env, Manifest) {
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            weird_names: true,
            ..TreeSpec::plain(20, seed)
        },
    );
    let before = Manifest::scan(&e.src);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    verify(&e.journal).expect(0, "verify right after the run");
    (e, before)
}

#[test]
fn verify_passes_after_a_full_run() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            files: 30,
            ..TreeSpec::full(406)
        },
    );
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    verify(&e.journal).expect(0, "verify");
}

/// Change the first byte of a DEST copy, keeping its size and times: only the content differs.
fn tamper(e: &Env, before: &Manifest, rel: &[u8]) {
    use std::io::Write;
    let f = before.get(rel).unwrap();
    assert!(f.size > 0);
    let (d, n) = open_rel(&e.dst, rel).unwrap();
    let mut data = d.read(&n).unwrap();
    data[0] ^= 0xff;
    d.open_write(&n).unwrap().write_all(&data).unwrap();
    d.set_times(&n, f.atime, f.mtime).unwrap();
}

#[test]
fn verify_names_a_tampered_dest_file() {
    let _gate = suite_gate!();
    let (e, before) = relocated_tree(407);
    let plain: &[u8] = b"t/d00/s00/f00003.dat";
    let weird: &[u8] = b"names/tab\there";
    for rel in [plain, weird] {
        tamper(&e, &before, rel);
    }
    let out = verify(&e.journal);
    out.expect(3, "verify after tampering with DEST content");
    let text = out.text();
    for rel in [plain, weird] {
        assert!(
            text.contains(&esc(rel)),
            "verify does not name {} (escaped)\n{}",
            esc(rel),
            out.dump()
        );
    }
    assert!(
        !text.contains("f00004.dat"),
        "verify names an intact file\n{}",
        out.dump()
    );
}

#[test]
fn verify_names_a_missing_dest_file() {
    let _gate = suite_gate!();
    let (e, _before) = relocated_tree(408);
    let rel: &[u8] = b"names/new\nline";
    let (d, n) = open_rel(&e.dst, rel).unwrap();
    d.unlink(&n).unwrap();
    let out = verify(&e.journal);
    out.expect(3, "verify after a DEST file was deleted");
    assert!(
        out.text().contains(&esc(rel)),
        "verify does not name {}\n{}",
        esc(rel),
        out.dump()
    );
}

#[test]
fn verify_names_a_replaced_source_link() {
    let _gate = suite_gate!();
    let (e, _before) = relocated_tree(409);
    let rel: &[u8] = b"t/d00/s00/f00000.dat";
    let (d, n) = open_rel(&e.src, rel).unwrap();
    d.unlink(&n).unwrap();
    d.symlink(&n, b"/etc/hostname").unwrap();
    let weird: &[u8] = b"names/-leading-dash";
    let (d, n) = open_rel(&e.src, weird).unwrap();
    d.unlink(&n).unwrap();
    let mut other = bytes_of(&e.dst);
    other.extend_from_slice(b"/t/d00/s00/f00000.dat");
    d.symlink(&n, &other).unwrap(); // a valid DEST file, but not this one's
    let out = verify(&e.journal);
    out.expect(3, "verify after replacing source links");
    for r in [rel, weird] {
        assert!(
            out.text().contains(&esc(r)),
            "verify does not name {}\n{}",
            esc(r),
            out.dump()
        );
    }
}

/// `verify` tells its findings apart: a copy whose content differs is a problem (text and JSON,
/// with a `kind` for scripts), a copy whose mode users changed is a note, a copy written through
/// its link since is counted; only the problem fails it.
#[test]
fn verify_tells_problems_from_notes_in_text_and_json() {
    let _gate = suite_gate!();
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let (e, before) = relocated_tree(410);
    let tampered: &[u8] = b"t/d00/s00/f00003.dat";
    let chmodded: &[u8] = b"t/d00/s00/f00005.dat";
    let written: &[u8] = b"t/d00/s00/f00006.dat";
    tamper(&e, &before, tampered);
    let copy = e.dst.join(OsStr::from_bytes(chmodded));
    let was = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o7777;
    let now = if was == 0o600 { 0o640 } else { 0o600 };
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(now)).unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(e.src.join(OsStr::from_bytes(written)))
        .unwrap()
        .write_all(b"more")
        .unwrap();

    let out = verify(&e.journal);
    out.expect(3, "verify after tampering");
    let text = out.stdout_str();
    let line = |rel: &[u8]| {
        text.lines()
            .find(|l| l.contains(&esc(rel)))
            .unwrap_or_else(|| panic!("no line names {}\n{}", esc(rel), out.dump()))
            .to_string()
    };
    let l = line(tampered);
    assert!(
        l.starts_with("PROBLEM ")
            && l.contains(": DEST content hash ")
            && l.contains(" differs from the journal's "),
        "{l}"
    );
    assert!(
        line(chmodded).starts_with("NOTE ")
            && line(chmodded).ends_with(&format!(
                ": metadata changed since relocation: mode {now:o} (was {was:o})"
            )),
        "{}",
        out.dump()
    );
    assert!(
        !text.contains(&esc(written))
            && text.contains("; 1 written through their links since relocation"),
        "{}",
        out.dump()
    );

    let out = evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--json"),
    ]);
    out.expect(3, "verify --json after tampering");
    let v = json::parse(out.stdout_str().trim()).unwrap();
    let problems = v.get("problems").and_then(|p| p.as_array()).unwrap();
    assert_eq!(problems.len(), 1, "{v:?}");
    let p = &problems[0];
    assert_eq!(
        p.get("path").and_then(|x| x.as_str()),
        Some(esc(tampered).as_str())
    );
    assert_eq!(p.get("kind").and_then(|x| x.as_str()), Some("hash_differs"));
    assert!(p
        .get("problem")
        .and_then(|x| x.as_str())
        .is_some_and(|t| t.starts_with("DEST content hash ")));
    let meta = v
        .get("metadata_changed")
        .and_then(|p| p.as_array())
        .unwrap();
    assert_eq!(meta.len(), 1, "{v:?}");
    assert_eq!(
        meta[0].get("change").and_then(|x| x.as_str()),
        Some(format!("mode {now:o} (was {was:o})").as_str())
    );
    assert_eq!(v.get("written_since").and_then(|x| x.as_u64()), Some(1));
    assert_eq!(v.get("ok").and_then(|x| x.as_bool()), Some(false));
}
