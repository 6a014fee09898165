//! Busy files are deferred, never swapped: a file open for writing by another
//! process, an executable that a process is running. They stay intact in
//! SOURCE (exit 3), are listed with a reason, and are relocated by a later run
//! once released.

use crate::common::*;
use std::collections::BTreeSet;

/// Run with `busy_rel` held busy by `holder`; check the deferral; release; run again.
fn deferred_then_relocated(e: &Env, busy_rel: &[u8], holder: Holder, before: &Manifest) {
    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    out.expect(3, "run with a busy file");

    // Still a regular file with its content.
    let now = lstat_rel(&e.src, busy_rel).unwrap();
    assert_eq!(
        now.st_mode & libc::S_IFMT,
        libc::S_IFREG,
        "{} was swapped while busy",
        esc(busy_rel)
    );
    assert_eq!(
        hash_bytes(&read_rel(&e.src, busy_rel).unwrap()),
        before.get(busy_rel).unwrap().hash.unwrap(),
        "{} content changed",
        esc(busy_rel)
    );
    // Everything else was relocated; no temporaries.
    let o = OracleOpts {
        not_relocated: [busy_rel.to_vec()].into_iter().collect(),
        allow_extra_dest: true,
        ..Default::default()
    };
    check_relocated_opts(before, &e.src, &e.dst, &o);

    // Status: counted, listed (raw and escaped), with a reason.
    let st = status(&e.journal);
    assert!(count(&st, "deferred") >= 1, "files.deferred: {st:?}");
    assert_eq!(
        count(&st, "relocated"),
        before.file_count() as i64 - 1,
        "{st:?}"
    );
    let listed = status_list(&e.journal, "deferred");
    assert_eq!(listed, vec![busy_rel.to_vec()], "status --list deferred -0");
    let o = evac([
        std::ffi::OsStr::new("status"),
        std::ffi::OsStr::new("--journal"),
        e.journal.as_os_str(),
        std::ffi::OsStr::new("--list"),
        std::ffi::OsStr::new("deferred"),
    ]);
    o.expect(0, "status --list deferred");
    // One line for the file: its escaped path (status_verify.rs checks that
    // nothing else is on the line; here a reason after a TAB is tolerated).
    let text = o.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "status --list deferred: {text:?}");
    assert_eq!(
        lines[0].split('\t').next().unwrap(),
        esc(busy_rel),
        "status --list deferred (escaped)"
    );
    let reasons = st
        .get("reasons")
        .and_then(|r| r.as_array())
        .expect("reasons array");
    let deferred_reason = reasons
        .iter()
        .find(|r| r.get("state").and_then(|s| s.as_str()) == Some("deferred"));
    let r = deferred_reason
        .unwrap_or_else(|| panic!("no reason given for the deferred file: {reasons:?}"));
    assert!(
        r.get("count").and_then(|c| c.as_i64()).unwrap_or(0) >= 1,
        "{r:?}"
    );
    assert!(
        !r.get("reason")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .is_empty(),
        "{r:?}"
    );
    eprintln!("deferred because: {:?}", r.get("reason"));

    // Released: the next run relocates it.
    holder.release();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run after the file was released");
    check_relocated(before, &e.src, &e.dst, None);
    let st = status(&e.journal);
    assert_eq!(count(&st, "deferred"), 0, "{st:?}");
    assert_eq!(
        count(&st, "relocated"),
        before.file_count() as i64,
        "{st:?}"
    );
}

#[test]
fn file_open_for_writing_is_deferred() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 301));
    let busy_rel: &[u8] = b"t/d00/busy\nlog \xff.txt";
    let busy = path_of(&e.src, busy_rel);
    std::fs::write(&busy, content(7, 10_000)).unwrap();
    let holder = Holder::hold_for_write(&busy);
    let before = Manifest::scan(&e.src);
    deferred_then_relocated(&e, busy_rel, holder, &before);
}

#[test]
fn running_executable_is_deferred() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 302));
    std::fs::create_dir(e.src.join("bin")).unwrap();
    let exe = e.src.join("bin/sleep");
    let holder = Holder::run_executable(&exe);
    let before = Manifest::scan(&e.src);
    deferred_then_relocated(&e, b"bin/sleep", holder, &before);
}

#[test]
fn several_busy_files_at_once() {
    let _gate = suite_gate!();
    // Two writers and a running program; all deferred; each relocated once released.
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            hardlinks: true,
            ..TreeSpec::plain(30, 303)
        },
    );
    let a = e.src.join("t/d00/s00/f00000.dat");
    let b = e.src.join("hl/x"); // has two more hard links
    std::fs::create_dir(e.src.join("bin")).unwrap();
    let exe = e.src.join("bin/sleep");
    let ha = Holder::hold_for_write(&a);
    let hb = Holder::hold_for_write(&b);
    let hx = Holder::run_executable(&exe);
    let before = Manifest::scan(&e.src);
    let busy: BTreeSet<Vec<u8>> = [
        b"t/d00/s00/f00000.dat".to_vec(),
        b"hl/x".to_vec(),
        b"hl/sub/x-again".to_vec(),
        b"hl-other/x\nthird name".to_vec(),
        b"bin/sleep".to_vec(),
    ]
    .into_iter()
    .collect();

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run with busy files");
    let o = OracleOpts {
        not_relocated: busy.clone(),
        allow_extra_dest: true,
        ..Default::default()
    };
    check_relocated_opts(&before, &e.src, &e.dst, &o);
    let listed: BTreeSet<Vec<u8>> = status_list(&e.journal, "deferred").into_iter().collect();
    for p in &busy {
        assert!(
            listed.contains(p),
            "{} not listed as deferred (listed: {:?})",
            esc(p),
            listed.iter().map(|p| esc(p)).collect::<Vec<_>>()
        );
    }

    // Release one at a time.
    ha.release();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "one released, two still busy");
    assert_eq!(
        lstat_rel(&e.src, b"t/d00/s00/f00000.dat").unwrap().st_mode & libc::S_IFMT,
        libc::S_IFLNK
    );
    hb.release();
    hx.release();
    evac_resume(&e.journal, &[]).expect(0, "all released");
    check_relocated(&before, &e.src, &e.dst, None);
}
