//! Progress output: off a terminal, one plain line per interval on stderr; `--quiet` prints only
//! the START and FINISH lines.

use crate::common::*;

/// A run that lasts a few seconds for sure: one file held open for writing is deferred and
/// retried after --retry-delay.
fn slow_run(e: &Env, extra: &[&str]) -> Out {
    build_tree(&e.src, &TreeSpec::plain(50, 77));
    let busy = e.src.join("held.log");
    std::fs::write(&busy, b"x\n").unwrap();
    let _h = Holder::hold_for_write(&busy);
    let mut args = run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &["--retry-delay", "2.5", "--progress-interval", "1"],
    );
    // run_args adds --quiet; the caller decides.
    args.retain(|a| a != "--quiet");
    args.extend(extra.iter().map(std::ffi::OsString::from));
    evac(args)
}

#[test]
fn plain_progress_lines_when_not_on_a_terminal() {
    let _gate = suite_gate!();
    let e = env();
    let out = slow_run(&e, &[]);
    out.expect(3, "run with a busy file");
    let err = out.stderr_str();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" files, ") && l.contains("/s"))
        .collect();
    assert!(
        !lines.is_empty(),
        "expected periodic progress lines on stderr:\n{err}"
    );
    assert!(lines.iter().all(|l| l.starts_with("evac: ")), "{lines:?}");
    assert!(err.contains("evac: START run"), "{err}");
    assert!(err.contains("evac: FINISH run"), "{err}");
    assert!(
        !err.contains('\r') && !err.contains("\x1b["),
        "no terminal control codes off a terminal"
    );
}

#[test]
fn quiet_prints_only_start_and_finish() {
    let _gate = suite_gate!();
    let e = env();
    let out = slow_run(&e, &["--quiet"]);
    out.expect(3, "quiet run with a busy file");
    let err = out.stderr_str();
    assert!(
        !err.lines()
            .any(|l| l.contains(" files, ") && l.contains("/s")),
        "no progress lines with --quiet:\n{err}"
    );
    assert!(
        err.contains("evac: START run") && err.contains("evac: FINISH run"),
        "{err}"
    );
}
