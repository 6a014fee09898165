//! The paths evac takes where the kernel or filesystem lacks something: no RENAME_EXCHANGE
//! (plain rename with the original kept in an attic until checked), no leases (writers found by
//! scanning /proc). Forced here with test knobs on a filesystem that has both; and the proof
//! that copying starts while the walk is still going.

use crate::common::*;
use std::ffi::OsStr;

fn run_env(e: &Env, envs: &[(&str, &OsStr)]) -> Out {
    spawn_evac_env(run_args(&e.src, &e.dst, &e.journal, &[]), envs).wait()
}

#[test]
fn without_rename_exchange_files_are_relocated_through_the_attic() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            weird_names: true,
            ..TreeSpec::plain(120, 901)
        },
    );
    let before = Manifest::scan(&e.src);
    run_env(&e, &[("EVAC_TEST_NO_EXCHANGE", OsStr::new("1"))])
        .expect(0, "run without RENAME_EXCHANGE");
    check_relocated(&before, &e.src, &e.dst, None);
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify");
    let log = journal_log(&e.journal);
    assert!(
        log.iter()
            .any(|m| m.contains("RENAME_EXCHANGE unsupported")),
        "the run log says it fell back: {log:?}"
    );
}

#[test]
fn without_rename_exchange_a_busy_file_is_still_deferred() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 902));
    let busy = e.src.join("busy.txt");
    std::fs::write(&busy, b"before\n").unwrap();
    let before = Manifest::scan(&e.src);
    let h = Holder::hold_for_write(&busy);
    run_env(&e, &[("EVAC_TEST_NO_EXCHANGE", OsStr::new("1"))]).expect(3, "run with a busy file");
    let st = std::fs::symlink_metadata(&busy).unwrap();
    assert!(
        st.file_type().is_file(),
        "the busy file stays a regular file"
    );
    assert_eq!(read_rel(&e.src, b"busy.txt").unwrap(), b"before\n");
    drop(h);
    run_env(&e, &[("EVAC_TEST_NO_EXCHANGE", OsStr::new("1"))]).expect(0, "run once released");
    assert!(std::fs::symlink_metadata(&busy)
        .unwrap()
        .file_type()
        .is_symlink());
    check_relocated(&before, &e.src, &e.dst, None);
}

#[test]
fn without_leases_writers_are_found_by_scanning_proc() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(30, 903));
    let busy = e.src.join("held-open.log");
    std::fs::write(&busy, b"line 1\n").unwrap();
    let h = Holder::hold_for_write(&busy);
    let before = Manifest::scan(&e.src);
    let out = run_env(&e, &[("EVAC_TEST_NO_LEASE", OsStr::new("1"))]);
    out.expect(3, "run without leases, one file held open for writing");
    assert!(
        std::fs::symlink_metadata(&busy)
            .unwrap()
            .file_type()
            .is_file(),
        "held file not swapped"
    );
    let deferred = status_list(&e.journal, "deferred");
    assert_eq!(
        deferred,
        vec![b"held-open.log".to_vec()],
        "only the held file is deferred"
    );
    let log = journal_log(&e.journal);
    assert!(
        log.iter().any(|m| m.contains("scanning /proc")),
        "the run log says it scanned /proc: {log:?}"
    );
    drop(h);
    run_env(&e, &[("EVAC_TEST_NO_LEASE", OsStr::new("1"))]).expect(0, "run once released");
    check_relocated(&before, &e.src, &e.dst, None);
}

#[test]
fn copying_starts_before_the_walk_ends() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(3000, 904));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    let log = journal_log(&e.journal);
    let line = log
        .iter()
        .find(|m| m.starts_with("inventory complete"))
        .unwrap_or_else(|| panic!("no inventory line: {log:?}"));
    // "inventory complete: N regular files seen, K already sent to copy workers, ..."
    let sent: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" already sent to copy workers"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the count: {line}"));
    assert!(
        sent > 0,
        "files were sent to copy workers before the walk ended: {line}"
    );
}

fn journal_log(journal: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(journal).unwrap();
    let mut st = c.prepare("SELECT message FROM log ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}
