//! The command line: exit codes, refusals, the run lock, signals, --dry-run,
//! resuming from the journal alone, the demo.

use crate::common::*;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

fn os(args: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Nothing at all changed under `root` (ctime and inodes included).
#[track_caller]
fn assert_untouched(what: &str, before: &Manifest, root: &Path) {
    let opts = DiffOpts {
        dir_mtime: true,
        ctime: true,
        ino: true,
        file_atime: true,
    };
    assert_no_problems(what, &diff_manifests(before, &Manifest::scan(root), opts));
}

/// Files next to the journal whose names start with the journal's name (-wal, -shm, -journal...).
fn journal_files(journal: &Path) -> Vec<String> {
    let name = journal.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_dir(journal.parent().unwrap())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&name))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn journal_inside_source_is_refused() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            symlinks: true,
            ..TreeSpec::plain(10, 201)
        },
    );
    std::fs::create_dir(e.src.join("sub")).unwrap();
    // A path that reaches SOURCE through a symlink outside it.
    let via_link = e.tmp.path().join("src-link");
    std::os::unix::fs::symlink(&e.src, &via_link).unwrap();
    let before = Manifest::scan(&e.src);
    for j in [
        e.src.join("j.db"),
        e.src.join("sub/j.db"),
        via_link.join("j.db"),
    ] {
        let out = evac_run(&e.src, &e.dst, &j, &[]);
        out.expect(1, &format!("journal {} inside SOURCE", j.display()));
        assert!(
            !j.exists(),
            "refused run still created the journal {}",
            j.display()
        );
        assert!(!e.dst.exists(), "refused run created DEST");
        assert_untouched("SOURCE after a refused run", &before, &e.src);
    }
}

#[test]
fn unusable_journal_is_an_error() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(5, 202));
    let before = Manifest::scan(&e.src);

    let garbage = e.tmp.path().join("garbage.db");
    std::fs::write(&garbage, content(3, 10_000)).unwrap();
    evac_run(&e.src, &e.dst, &garbage, &[]).expect(1, "journal that is not a journal");
    assert_untouched("SOURCE after a garbage journal", &before, &e.src);

    let no_dir = e.tmp.path().join("no/such/dir/j.db");
    evac_run(&e.src, &e.dst, &no_dir, &[]).expect(1, "journal in a missing directory");
    assert_untouched(
        "SOURCE after a journal in a missing directory",
        &before,
        &e.src,
    );

    let is_dir = e.tmp.path().join("a-directory");
    std::fs::create_dir(&is_dir).unwrap();
    evac_run(&e.src, &e.dst, &is_dir, &[]).expect(1, "journal path that is a directory");
    assert_untouched("SOURCE after a directory as journal", &before, &e.src);

    // Resuming from a journal that does not exist.
    evac_resume(&e.tmp.path().join("never-made.db"), &[])
        .expect(1, "resume from a missing journal");
    assert!(!e.dst.exists());
}

#[test]
fn bad_arguments_exit_1() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(3, 203));
    let before = Manifest::scan(&e.src);
    let j = e.journal.clone();
    let cases: Vec<(&str, Vec<OsString>)> = vec![
        (
            "unknown option",
            os(&[
                &"run",
                &e.src,
                &e.dst,
                &"--journal",
                &j,
                &"--no-such-option",
            ]),
        ),
        ("no --journal", os(&[&"run", &e.src, &e.dst])),
        (
            "SOURCE without DEST",
            os(&[&"run", &e.src, &"--journal", &j]),
        ),
        (
            "SOURCE missing",
            os(&[&"run", &e.tmp.path().join("nope"), &e.dst, &"--journal", &j]),
        ),
        (
            "SOURCE is a file",
            os(&[
                &"run",
                &e.src.join("t/d00/s00/f00000.dat"),
                &e.dst,
                &"--journal",
                &j,
            ]),
        ),
        (
            "--workers not a number",
            os(&[
                &"run",
                &e.src,
                &e.dst,
                &"--journal",
                &j,
                &"--workers",
                &"many",
            ]),
        ),
        ("unknown subcommand", os(&[&"frobnicate"])),
        ("status without --journal", os(&[&"status", &"--json"])),
    ];
    let mut problems = Vec::new();
    for (what, args) in cases {
        refused(what, &evac(&args), &e, &mut problems);
    }
    assert_untouched("SOURCE after bad arguments", &before, &e.src);
    assert_no_problems("bad arguments", &problems);
}

/// What a refused command must have done: exit 1 with a message, and left no journal and no
/// DEST (a journal it left is removed, so the next case starts clean).
fn refused(what: &str, out: &Out, e: &Env, problems: &mut Vec<String>) {
    if out.code() != 1 {
        problems.push(format!(
            "{what}: exit {} (want 1): {}",
            out.code(),
            out.stderr_str().lines().next().unwrap_or("")
        ));
    }
    if out.stderr.is_empty() {
        problems.push(format!("{what}: no message on stderr"));
    }
    if e.journal.exists() {
        problems.push(format!("{what}: created the journal"));
        for f in journal_files(&e.journal) {
            let _ = std::fs::remove_file(e.journal.parent().unwrap().join(f));
        }
    }
    if e.dst.exists() {
        problems.push(format!("{what}: created DEST"));
    }
}

/// A value outside an option's fixed set, or a duration that is not one, is refused while the
/// command line is parsed: exit 1 (not clap's 2), a message that names the option, and nothing
/// done (no journal, no DEST).
#[test]
fn bad_option_values_fail_at_parse_time_naming_the_option() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(3, 204));
    let j = e.journal.clone();
    let run = |extra: &[&str]| -> Vec<OsString> {
        let mut v = os(&[&"run", &e.src, &e.dst, &"--journal", &j]);
        v.extend(extra.iter().map(OsString::from));
        v
    };
    let cases: Vec<(&str, Vec<OsString>)> = vec![
        ("--op-timeout", run(&["--op-timeout", "5x"])),
        ("--op-timeout", run(&["--op-timeout", "0"])),
        // `=`: a lone `-1` would be taken for an option.
        ("--retry-delay", run(&["--retry-delay=-1"])),
        ("--progress-interval", run(&["--progress-interval", "soon"])),
        ("--hsm-timeout", run(&["--hsm-timeout", "1h 30m"])),
        ("--hsm", run(&["--hsm", "tape"])),
        ("--hsm", run(&["--hsm", "xattr:user.hsm"])),
        ("--governor", run(&["--governor", "maybe"])),
        (
            "--stage-timeout",
            os(&[
                &"stage",
                &"--journal",
                &j,
                &"--stage-timeout",
                &"forever",
                &"--stage-cmd",
                &"true",
            ]),
        ),
        (
            "--list",
            os(&[&"status", &"--journal", &j, &"--list", &"copying"]),
        ),
        (
            "--format",
            os(&[&"status", &"--journal", &j, &"--format", &"xml"]),
        ),
        (
            "--format",
            os(&[
                &"hsm",
                &"import",
                &"--journal",
                &j,
                &"--format",
                &"csv",
                &"listing",
            ]),
        ),
        (
            "--bwlimit",
            os(&[&"throttle", &"--journal", &j, &"--bwlimit", &"fast"]),
        ),
    ];
    let mut problems = Vec::new();
    for (option, args) in cases {
        let out = evac(&args);
        let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        let what = format!("{option} in `{}`", shown.join(" "));
        refused(&what, &out, &e, &mut problems);
        // clap's own error ("invalid value 'V' for '--option <NAME>'") is what shows that the
        // value was refused while parsing, before any command began.
        let err = out.stderr_str();
        if !err.contains("invalid value") || !err.contains(&format!("'{option} ")) {
            problems.push(format!("{what}: not a parse error naming {option}: {err}"));
        }
    }
    assert_no_problems("bad option values", &problems);
}

/// Durations take units (and bare seconds, as before), and `--hsm` is kept in the journal as
/// the text it was given, whatever it was parsed into.
#[test]
fn durations_take_units_and_hsm_keeps_its_text() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(5, 205));
    evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--op-timeout",
            "90s",
            "--retry-delay",
            "250ms",
            "--hsm-timeout",
            "2m",
            "--progress-interval",
            "1h30m",
            "--hsm",
            "xattr:user.evac-test=a=b",
        ],
    )
    .expect(0, "run with durations in units");
    let st = status(&e.journal);
    assert_eq!(
        st.get("hsm")
            .and_then(|h| h.get("mode"))
            .and_then(|m| m.as_str()),
        Some("xattr:user.evac-test=a=b"),
        "{st:?}"
    );
    // A resume reads the mode back from that text; bare seconds still work.
    evac_resume(&e.journal, &["--op-timeout", "600", "--retry-delay", "0.5"])
        .expect(0, "resume with durations in seconds");
    // Accepted by the parser: what refuses these is the missing plan, not the values.
    let missing = e.tmp.path().join("no-plan.db");
    let out = evac(os(&[
        &"stage",
        &"--journal",
        &missing,
        &"--stage-timeout",
        &"2m",
        &"--stage-backoff",
        &"90s",
        &"--resident-wait",
        &"0",
        &"--stage-cmd",
        &"true",
    ]));
    assert!(
        !out.stderr_str().contains("invalid value"),
        "stage refused good durations: {}",
        out.dump()
    );
    // `staged_out`, as the journal and status spell it, also with a hyphen.
    for list in ["staged_out", "staged-out"] {
        assert!(status_list(&e.journal, list).is_empty(), "--list {list}");
    }
}

#[test]
fn resume_with_a_different_source_or_dest_is_refused() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(8, 204));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");

    let src2 = e.tmp.path().join("src2");
    build_tree(&src2, &TreeSpec::plain(8, 205));
    let src2_before = Manifest::scan(&src2);
    let dst_before = Manifest::scan(&e.dst);
    let src_before = Manifest::scan(&e.src);

    evac_run(&src2, &e.dst, &e.journal, &[]).expect(1, "same journal, different SOURCE");
    assert_untouched("the other SOURCE", &src2_before, &src2);
    assert_untouched("DEST", &dst_before, &e.dst);

    let dst2 = e.tmp.path().join("dst2");
    evac_run(&e.src, &dst2, &e.journal, &[]).expect(1, "same journal, different DEST");
    assert!(!dst2.exists(), "a refused run created the other DEST");
    assert_untouched("SOURCE", &src_before, &e.src);

    // The journal still works with its own SOURCE and DEST.
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "same journal, same SOURCE and DEST");
    evac_resume(&e.journal, &[]).expect(0, "resume with no SOURCE/DEST");
}

#[test]
fn second_concurrent_run_exits_5_and_names_the_holder() {
    let _gate = suite_gate!();
    let e = env();
    let (mut bg, holder, before) = start_and_freeze(&e, 400, 206, 0);
    let pid = bg.pid().to_string();

    let out = evac_timeout(
        run_args(&e.src, &e.dst, &e.journal, &[]),
        Duration::from_secs(60),
    );
    out.expect(5, "a second run on a journal held by a live run");
    assert!(
        out.text().contains(&pid),
        "the message does not name the holder's PID {pid}\n{}",
        out.dump()
    );

    let out = evac_timeout(
        [
            OsStr::new("run"),
            OsStr::new("--journal"),
            e.journal.as_os_str(),
            OsStr::new("--quiet"),
        ],
        Duration::from_secs(60),
    );
    out.expect(5, "a resume on a journal held by a live run");
    assert!(
        out.text().contains(&pid),
        "the message does not name the holder's PID {pid}\n{}",
        out.dump()
    );

    let st = status(&e.journal);
    assert_eq!(
        st.get("running").and_then(|v| v.as_bool()),
        Some(true),
        "status while the holder is held: {st:?}"
    );

    thaw(&e);
    bg.wait_for(RUN_TIMEOUT)
        .expect(3, "the first run, with a file still busy");
    holder.release();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "after the busy file was released");
    check_relocated(&before, &e.src, &e.dst, None);
}

fn interrupted_then_resumed(sig: i32, seed: u64, min_relocated: i64) {
    let e = env();
    let (mut bg, holder, before) = start_and_freeze(&e, 1500, seed, min_relocated);
    bg.signal(sig);
    // Let it go on only once it has taken the request, so that the stop cannot come too late.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&bg.output_so_far().1).contains("stopping cleanly") {
        assert!(
            std::time::Instant::now() < deadline,
            "evac never said it took signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    thaw(&e);
    let out = bg.wait_for(RUN_TIMEOUT);
    out.expect(4, &format!("run interrupted by signal {sig}"));

    let st = status(&e.journal);
    assert_eq!(
        st.get("running").and_then(|v| v.as_bool()),
        Some(false),
        "{st:?}"
    );
    holder.release();

    evac_resume(&e.journal, &[]).expect(0, "resume after the interruption");
    check_relocated(&before, &e.src, &e.dst, None);
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify");
}

#[test]
fn sigterm_exits_4_and_the_run_resumes() {
    let _gate = suite_gate!();
    interrupted_then_resumed(libc::SIGTERM, 207, 0);
}

#[test]
fn sigint_exits_4_and_the_run_resumes() {
    let _gate = suite_gate!();
    // Interrupted after some files were relocated.
    interrupted_then_resumed(libc::SIGINT, 208, 1);
}

#[test]
fn dry_run_changes_nothing_and_writes_no_journal() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            files: 40,
            ..TreeSpec::full(209)
        },
    );
    let before = Manifest::scan(&e.src);

    // DEST does not exist: it must still not exist afterwards.
    let out = evac_run(&e.src, &e.dst, &e.journal, &["--dry-run"]);
    out.expect(0, "dry run");
    assert_untouched("SOURCE after --dry-run", &before, &e.src);
    assert!(!e.dst.exists(), "--dry-run created DEST");
    assert_eq!(
        journal_files(&e.journal),
        Vec::<String>::new(),
        "--dry-run wrote a journal"
    );

    // DEST exists (with a file in it): unchanged too.
    std::fs::create_dir(&e.dst).unwrap();
    std::fs::write(e.dst.join("already-here"), b"x").unwrap();
    let dest_before = Manifest::scan(&e.dst);
    evac_run(&e.src, &e.dst, &e.journal, &["--dry-run", "--workers", "3"])
        .expect(0, "dry run into an existing DEST");
    assert_untouched("SOURCE after the second --dry-run", &before, &e.src);
    assert_untouched("DEST after --dry-run", &dest_before, &e.dst);
    assert_eq!(
        journal_files(&e.journal),
        Vec::<String>::new(),
        "--dry-run wrote a journal"
    );

    // And a dry run over a tree that was already relocated changes nothing either.
    std::fs::remove_dir_all(&e.dst).unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "real run");
    let src_after = Manifest::scan(&e.src);
    let dst_after = Manifest::scan(&e.dst);
    let j2 = e.tmp.path().join("dry.db");
    evac_run(&e.src, &e.dst, &j2, &["--dry-run"]).expect(0, "dry run after the real one");
    assert_untouched("SOURCE (relocated) after --dry-run", &src_after, &e.src);
    assert_untouched("DEST (relocated) after --dry-run", &dst_after, &e.dst);
    assert_eq!(journal_files(&j2), Vec::<String>::new());
}

#[test]
fn resume_from_the_journal_alone() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            weird_names: true,
            ..TreeSpec::plain(30, 210)
        },
    );
    let busy = e.src.join("t/d00/busy \n file");
    std::fs::write(&busy, b"busy").unwrap();
    let before = Manifest::scan(&e.src);
    {
        let _holder = Holder::hold_for_write(&busy);
        evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run with a busy file");
    }
    evac_resume(&e.journal, &[]).expect(0, "`run --journal J` after the file was released");
    check_relocated(&before, &e.src, &e.dst, None);
    let d1 = Manifest::scan(&e.dst);
    evac_resume(&e.journal, &[]).expect(0, "`run --journal J` once more");
    let opts = DiffOpts {
        ino: true,
        ctime: false,
        file_atime: true,
        dir_mtime: true,
    };
    assert_no_problems(
        "DEST after a resume of a finished run",
        &diff_manifests(&d1, &Manifest::scan(&e.dst), opts),
    );
}

#[test]
fn demo_runs() {
    let _gate = suite_gate!();
    // `evac demo` works in a temporary directory: point TMPDIR at ours so
    // that whatever it leaves behind is cleaned up with the test.
    let e = env();
    let out = spawn_evac_env(["demo"], &[("TMPDIR", e.tmp.path().as_os_str())])
        .wait_for(Duration::from_secs(240));
    out.expect(0, "evac demo");
    let text = out.text();
    assert!(text.contains("all good"), "{}", out.dump());
    if is_root() {
        // All three phases: the files the simulated HSM lost come back from the backup restore.
        assert!(
            text.contains("4 leftovers: 4 exact")
                && text.contains("recover: 4 recovered, 0 not, 0 refused"),
            "{}",
            out.dump()
        );
    } else {
        println!("the demo's HSM phases need root: checked phase 1 only");
    }
}

/// `--dry-run --list` names exactly the regular files a run would relocate: escaped, one a line,
/// or raw and NUL-ended with `--null`; symlinks and FIFOs are left out.
#[test]
fn dry_run_lists_the_files_a_run_would_relocate() {
    let _gate = suite_gate!();
    use std::os::unix::ffi::OsStrExt;
    let e = env();
    std::fs::create_dir_all(e.src.join("d")).unwrap();
    let names: [&[u8]; 3] = [b"a", b"d/b", b"d/new\nline\xff"];
    for n in names {
        std::fs::write(e.src.join(OsStr::from_bytes(n)), b"x").unwrap();
    }
    std::os::unix::fs::symlink("a", e.src.join("l")).unwrap();
    let fifo = std::ffi::CString::new(e.src.join("f").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let out = evac_run(&e.src, &e.dst, &e.journal, &["--dry-run", "--list"]);
    out.expect(0, "dry run --list");
    let mut lines: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    lines.sort();
    let mut want: Vec<String> = names.iter().map(|n| esc(n)).collect();
    want.sort();
    assert_eq!(lines, want, "{}", out.dump());

    let out = evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &["--dry-run", "--list", "--null"],
    );
    out.expect(0, "dry run --list --null");
    let mut raw: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    assert_eq!(raw.pop(), Some(&b""[..]), "every path ends with NUL");
    raw.sort();
    let mut want: Vec<&[u8]> = names.to_vec();
    want.sort();
    assert_eq!(raw, want);
    assert!(
        !e.dst.exists() && !e.journal.exists(),
        "a dry run changed something"
    );
}
