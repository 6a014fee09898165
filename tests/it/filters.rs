//! `--exclude`, `--exclude-from` and `--from0` on real trees through the real binary: rsync's
//! pattern rules (anchored or not, `**`, directory-only), nothing under an excluded directory
//! touched, excluded entries reported once each by `status` and its cutover line, the patterns
//! kept for resumes, dry runs, setup errors, agreement with rsync itself; and `status --list
//! links`.

use crate::common::*;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;

/// Regular files at these paths under `root`, each with content derived from its path.
fn make(root: &Path, files: &[&[u8]]) {
    for rel in files {
        let p = path_of(root, rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body(rel)).unwrap();
    }
}

fn body(rel: &[u8]) -> Vec<u8> {
    let mut v = b"content of ".to_vec();
    v.extend_from_slice(rel);
    v
}

fn set(v: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    v.iter().map(|s| s.to_vec()).collect()
}

fn is_link(root: &Path, rel: &[u8]) -> bool {
    std::fs::symlink_metadata(path_of(root, rel))
        .unwrap_or_else(|e| panic!("{}: {e}", esc(rel)))
        .file_type()
        .is_symlink()
}

/// Still the user's own regular file, with its content.
#[track_caller]
fn untouched(root: &Path, rel: &[u8]) {
    let p = path_of(root, rel);
    let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", esc(rel)));
    assert!(
        m.file_type().is_file(),
        "{} is no longer a regular file",
        esc(rel)
    );
    assert_eq!(
        std::fs::read(&p).unwrap(),
        body(rel),
        "{} changed",
        esc(rel)
    );
}

/// Relocated: a link to its copy at DEST, whose content is the file's.
#[track_caller]
fn relocated(e: &Env, rel: &[u8]) {
    assert!(is_link(&e.src, rel), "{} is not a link", esc(rel));
    let copy = path_of(&e.dst, rel);
    assert_eq!(
        std::fs::read(copy).unwrap(),
        body(rel),
        "{} at DEST",
        esc(rel)
    );
}

fn run_with(e: &Env, patterns: &[&str]) -> Out {
    let mut extra: Vec<&str> = Vec::new();
    for p in patterns {
        extra.push("--exclude");
        extra.push(p);
    }
    evac_run(&e.src, &e.dst, &e.journal, &extra)
}

fn status_text(journal: &Path, extra: &[&str]) -> Out {
    let mut v: Vec<OsString> = vec!["status".into(), "--journal".into(), journal.into()];
    v.extend(extra.iter().map(OsString::from));
    evac(v)
}

#[test]
fn anchored_patterns_match_at_the_root_and_unanchored_ones_anywhere() {
    let _gate = suite_gate!();
    let files: &[&[u8]] = &[
        b"cache/a",
        b"cache/deep/b",
        b"p/cache/c",
        b"q/cache",
        b"q/cached",
        b"other",
    ];
    let e = env();
    make(&e.src, files);
    run_with(&e, &["/cache"]).expect(0, "anchored run");
    assert_eq!(status_list(&e.journal, "excluded"), vec![b"cache".to_vec()]);
    untouched(&e.src, b"cache/a");
    untouched(&e.src, b"cache/deep/b");
    for rel in [&b"p/cache/c"[..], b"q/cache", b"q/cached", b"other"] {
        relocated(&e, rel);
    }

    let e = env();
    make(&e.src, files);
    run_with(&e, &["cache"]).expect(0, "unanchored run");
    assert_eq!(
        status_list(&e.journal, "excluded")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        set(&[b"cache", b"p/cache", b"q/cache"]),
        "a name matches at any depth, a directory or a file"
    );
    for rel in [&b"cache/a"[..], b"cache/deep/b", b"p/cache/c", b"q/cache"] {
        untouched(&e.src, rel);
    }
    relocated(&e, b"q/cached");
    relocated(&e, b"other");
    // An unanchored pattern with a slash matches trailing components, at a component boundary.
    let e = env();
    make(&e.src, &[b"x/sub/f", b"y/xsub/f", b"sub/f"]);
    run_with(&e, &["sub/f"]).expect(0, "trailing components");
    untouched(&e.src, b"x/sub/f");
    untouched(&e.src, b"sub/f");
    relocated(&e, b"y/xsub/f");
}

#[test]
fn double_star_crosses_directories_and_a_trailing_slash_matches_only_directories() {
    let _gate = suite_gate!();
    let e = env();
    make(
        &e.src,
        &[
            b"logs/today",
            b"app/logs",
            b"p/a/b/old.bak",
            b"p/old.bak",
            b"q/a/old.bak",
            b"w/x/y/z.tmp",
            b"w/z.tmpx",
        ],
    );
    run_with(&e, &["logs/", "/p/**/*.bak", "w/**.tmp"]).expect(0, "run");
    let excluded: BTreeSet<Vec<u8>> = status_list(&e.journal, "excluded").into_iter().collect();
    assert_eq!(
        excluded,
        set(&[b"logs", b"p/a/b/old.bak", b"w/x/y/z.tmp"]),
        "logs/ only the directory; /p/**/*.bak needs a directory between; ** crosses /"
    );
    untouched(&e.src, b"logs/today");
    untouched(&e.src, b"p/a/b/old.bak");
    untouched(&e.src, b"w/x/y/z.tmp");
    relocated(&e, b"app/logs");
    relocated(&e, b"p/old.bak");
    relocated(&e, b"q/a/old.bak");
    relocated(&e, b"w/z.tmpx");
}

#[test]
fn exclude_from_reads_lists_with_comments_and_nul_separated_lists() {
    let _gate = suite_gate!();
    let e = env();
    make(
        &e.src,
        &[
            b"a.o",
            b"d/b.o",
            b"deep/x",
            b"#kept",
            b"nl\nname",
            b"nl",
            b"keep.c",
        ],
    );
    let list = e.tmp.path().join("list");
    std::fs::write(
        &list,
        b"# object files\n*.o\n\n; anchored\r\n/deep/\n#kept\n",
    )
    .unwrap();
    let list0 = e.tmp.path().join("list0");
    std::fs::write(&list0, b"nl\nname\0#comment in a NUL list\0\0").unwrap();
    let mut args = run_args(&e.src, &e.dst, &e.journal, &[]);
    args.push("--exclude-from".into());
    args.push(list.into());
    evac(args).expect(0, "run with a line list");
    let excluded: BTreeSet<Vec<u8>> = status_list(&e.journal, "excluded").into_iter().collect();
    assert_eq!(
        excluded,
        set(&[b"a.o", b"d/b.o", b"deep"]),
        "comments are not patterns"
    );
    untouched(&e.src, b"a.o");
    untouched(&e.src, b"deep/x");
    relocated(&e, b"#kept");
    relocated(&e, b"keep.c");

    let e = env();
    make(&e.src, &[b"nl\nname", b"nl", b"#comment in a NUL list"]);
    let mut args = run_args(&e.src, &e.dst, &e.journal, &["--from0"]);
    args.push("--exclude-from".into());
    args.push(list0.into());
    evac(args).expect(0, "run with a NUL list");
    assert_eq!(
        status_list(&e.journal, "excluded"),
        vec![b"nl\nname".to_vec()]
    );
    untouched(&e.src, b"nl\nname");
    relocated(&e, b"nl");
    relocated(&e, b"#comment in a NUL list");
}

#[test]
fn nothing_under_an_excluded_directory_is_touched_and_status_reports_it_once() {
    let _gate = suite_gate!();
    let e = env();
    let mut under: Vec<Vec<u8>> = Vec::new();
    for d in 0..5 {
        for f in 0..20 {
            under.push(format!("repo/d{d}/f{f}").into_bytes());
        }
    }
    under.push(b"repo/.git/HEAD".to_vec());
    let refs: Vec<&[u8]> = under.iter().map(|v| v.as_slice()).collect();
    make(&e.src, &refs);
    make(&e.src, &[b"plain/a", b"plain/b"]);
    let before = Manifest::scan(&path_of(&e.src, b"repo"));
    run_with(&e, &["/repo/"]).expect(0, "run");

    for rel in &refs {
        untouched(&e.src, rel);
    }
    let after = Manifest::scan(&path_of(&e.src, b"repo"));
    assert_eq!(before.file_count(), after.file_count());
    assert!(
        !path_of(&e.dst, b"repo").exists(),
        "nothing of an excluded directory goes to DEST"
    );
    relocated(&e, b"plain/a");
    relocated(&e, b"plain/b");

    assert_eq!(status_list(&e.journal, "excluded"), vec![b"repo".to_vec()]);
    let st = status(&e.journal);
    assert_eq!(
        st.get("excluded").and_then(|v| v.as_i64()),
        Some(1),
        "{st:?}"
    );
    assert_eq!(
        count(&st, "relocated"),
        2,
        "excluded files are not counted as files"
    );
    assert_eq!(count(&st, "pending"), 0);
    let cut = st.get("cutover").unwrap();
    assert_eq!(
        cut.get("excluded_on_source_only").and_then(|v| v.as_i64()),
        Some(1),
        "{st:?}"
    );
    let text = status_text(&e.journal, &[])
        .expect(0, "status")
        .stdout_str();
    assert!(
        text.contains("excluded paths remain on SOURCE only: 1"),
        "cutover line names them:\n{text}"
    );
    let listed = status_text(&e.journal, &["--list", "excluded"])
        .expect(0, "list")
        .stdout_str();
    assert!(
        listed.starts_with("repo\tdirectory (not entered), excluded by --exclude \"/repo/\""),
        "{listed}"
    );
    let cutover = status_text(&e.journal, &["--list", "cutover"])
        .expect(0, "list cutover")
        .stdout_str();
    assert!(
        cutover.contains("repo\texcluded by --exclude \"/repo/\": stays on SOURCE only"),
        "{cutover}"
    );

    // An excluded entry that is gone is no longer reported after the next complete walk.
    Command::new("rm")
        .arg("-rf")
        .arg(path_of(&e.src, b"repo"))
        .status()
        .unwrap();
    evac_resume(&e.journal, &[]).expect(0, "resume");
    assert!(status_list(&e.journal, "excluded").is_empty());
}

#[test]
fn a_resume_keeps_the_patterns_and_refuses_others() {
    let _gate = suite_gate!();
    let e = env();
    make(&e.src, &[b"keep/a", b"b.o", b"c"]);
    run_with(&e, &["/keep/", "*.o"]).expect(0, "first run");
    // Files that appear later under an excluded directory stay too, with the recorded patterns.
    make(&e.src, &[b"keep/new", b"d.o", b"e"]);
    evac_resume(&e.journal, &[]).expect(0, "resume without --exclude");
    untouched(&e.src, b"keep/new");
    untouched(&e.src, b"d.o");
    relocated(&e, b"e");

    let o = evac_resume(&e.journal, &["--exclude", "*.o"]);
    o.expect(1, "resume with fewer patterns");
    let msg = o.stderr_str();
    assert!(
        msg.contains("refusing") && msg.contains("\"/keep/\"") && msg.contains("\"*.o\""),
        "the refusal names both sets: {msg}"
    );
    evac_resume(&e.journal, &["--exclude", "*.o", "--exclude", "/keep/"])
        .expect(0, "the same patterns in another order");

    // A journal started without patterns does not take some later.
    let e = env();
    make(&e.src, &[b"a"]);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    make(&e.src, &[b"x.o"]);
    evac_resume(&e.journal, &["--exclude", "*.o"]).expect(1, "patterns added on resume");
    untouched(&e.src, b"x.o");
}

#[test]
fn a_dry_run_honours_the_patterns_and_the_journals() {
    let _gate = suite_gate!();
    let e = env();
    make(&e.src, &[b"a", b"skip/b", b"c.tmp", b"d/e"]);
    let dry = |extra: &[&str], with_dirs: bool| -> BTreeSet<Vec<u8>> {
        let mut v: Vec<OsString> = vec!["run".into()];
        if with_dirs {
            v.push(e.src.clone().into());
            v.push(e.dst.clone().into());
        }
        v.extend(
            [
                "--journal",
                e.journal.to_str().unwrap(),
                "--dry-run",
                "--list",
                "-0",
            ]
            .iter()
            .map(OsString::from),
        );
        v.extend(extra.iter().map(OsString::from));
        let o = evac(v);
        o.expect(0, "dry run");
        o.stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_vec())
            .collect()
    };
    assert_eq!(
        dry(&["--exclude", "skip/", "--exclude", "*.tmp"], true),
        set(&[b"a", b"d/e"])
    );
    assert!(!e.journal.exists(), "a dry run writes no journal");
    assert!(!is_link(&e.src, b"a"));
    // With a journal, a dry run uses its patterns; other ones are refused as a run would.
    run_with(&e, &["/d/"]).expect(0, "run");
    make(&e.src, &[b"d/new", b"f"]);
    assert_eq!(dry(&[], false), set(&[b"f"]));
    let mut v = run_args(&e.src, &e.dst, &e.journal, &["--dry-run", "--exclude", "f"]);
    v.retain(|a| a != "--quiet");
    evac(v).expect(1, "dry run with other patterns");
}

#[test]
fn bad_patterns_and_unreadable_lists_stop_the_run_before_it_starts() {
    let _gate = suite_gate!();
    let e = env();
    make(&e.src, &[b"a"]);
    for (pattern, says) in [
        ("x[ab", "not closed"),
        ("[[:nope:]]", "POSIX class"),
        ("+ keep", "include rules"),
        ("", "empty pattern"),
    ] {
        let o = run_with(&e, &[pattern]);
        o.expect(1, pattern);
        assert!(
            o.stderr_str().contains(says),
            "{pattern}: {}",
            o.stderr_str()
        );
        assert!(!e.journal.exists(), "{pattern}: no journal is created");
    }
    let missing = e.tmp.path().join("no such list");
    let mut args = run_args(&e.src, &e.dst, &e.journal, &[]);
    args.push("--exclude-from".into());
    args.push(missing.clone().into());
    let o = evac(args);
    o.expect(1, "missing list");
    assert!(
        o.stderr_str().contains("read --exclude-from") && o.stderr_str().contains("no such list"),
        "names the operation and the path: {}",
        o.stderr_str()
    );
    let bad = e.tmp.path().join("bad list");
    std::fs::write(&bad, b"ok\nx[\n").unwrap();
    let mut args = run_args(&e.src, &e.dst, &e.journal, &[]);
    args.push("--exclude-from".into());
    args.push(bad.into());
    let o = evac(args);
    o.expect(1, "bad pattern in a list");
    assert!(o.stderr_str().contains("bad list"), "{}", o.stderr_str());
    assert!(!is_link(&e.src, b"a"));
}

/// The same patterns select the same files as rsync's own `--exclude`.
#[test]
fn the_patterns_select_what_rsync_selects() {
    let _gate = suite_gate!();
    if Command::new("rsync").arg("--version").output().is_err() {
        skip!(
            "the_patterns_select_what_rsync_selects",
            "rsync is not installed"
        );
    }
    let files: &[&[u8]] = &[
        b"top/a",
        b"x/top/b",
        b"a.o",
        b"s/a.o",
        b"b/c",
        b"q/b/c",
        b"q/bb/c",
        b"r/tmp/1.x",
        b"tmp/2.x",
        b"r/s/tmp/3.y",
        b"d/e/f",
        b"dd/g",
        b"ab.txt",
        b"ba.txt",
        b"cb.txt",
        b"aab.txt",
        b"logs/l",
        b"u/logs",
        b"v/w/n[1]",
        b"spa ce",
        b"star*name",
    ];
    let patterns = [
        "/top/",
        "*.o",
        "b/c",
        "**/tmp/*.x",
        "d/***",
        "[ab]?.txt",
        "logs/",
        "n\\[1]*",
        "spa ce",
        "star\\*n*",
    ];
    let e = env();
    make(&e.src, files);
    let out = e.tmp.path().join("rsync-out");
    let mut cmd = Command::new("rsync");
    cmd.arg("-r");
    for p in patterns {
        cmd.arg(format!("--exclude={p}"));
    }
    let st = cmd
        .arg(format!("{}/", e.src.display()))
        .arg(format!("{}/", out.display()))
        .status()
        .unwrap();
    assert!(st.success(), "rsync failed");
    let by_rsync: BTreeSet<Vec<u8>> = Manifest::scan(&out)
        .files()
        .map(|(p, _)| p.clone())
        .collect();
    run_with(&e, &patterns).expect(0, "run");
    let by_evac: BTreeSet<Vec<u8>> = status_list(&e.journal, "relocated").into_iter().collect();
    assert_eq!(
        by_evac.iter().map(|p| esc(p)).collect::<Vec<_>>(),
        by_rsync.iter().map(|p| esc(p)).collect::<Vec<_>>(),
        "evac relocated what rsync copied"
    );
    assert!(by_evac.len() > 3 && by_evac.len() < files.len());
}

#[test]
fn hsm_import_leaves_excluded_paths_out() {
    let _gate = suite_gate!();
    let e = env();
    make(&e.src, &[b"arch/f", b"g"]);
    evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &["--exclude", "arch/", "--hsm", "none"],
    )
    .expect(0, "run");
    let listing = e.tmp.path().join("listing.tsv");
    std::fs::write(
        &listing,
        b"arch/f\tstaged_out\t1\tV1\t1\t14\t\ng\tstaged_out\t1\tV1\t2\t9\t\n",
    )
    .unwrap();
    let o = evac([
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("tsv"),
        listing.as_os_str(),
    ]);
    o.expect(0, "import");
    let text = o.text();
    assert!(
        text.contains("imported 0 records") && text.contains("1 excluded by --exclude"),
        "{text}"
    );
    assert!(text.contains("\"arch/f\": excluded by --exclude"), "{text}");
}

/// `status --list links`: every link evac made, NUL-separated with -0, and what each names.
#[test]
fn list_links_gives_every_link_evac_made() {
    let _gate = suite_gate!();
    let e = env();
    make(&e.src, &[b"a", b"d/b", b"d/new\nline", b"skip/c"]);
    std::fs::hard_link(path_of(&e.src, b"a"), path_of(&e.src, b"d/a2")).unwrap();
    std::os::unix::fs::symlink("a", path_of(&e.src, b"users-own-link")).unwrap();
    run_with(&e, &["/skip/"]).expect(0, "run");

    let links: BTreeSet<Vec<u8>> = status_list(&e.journal, "links").into_iter().collect();
    assert_eq!(
        links,
        set(&[b"a", b"d/a2", b"d/b", b"d/new\nline"]),
        "evac's links: both names of the hard link, not a user's own symlink, not excluded files"
    );
    let dst = std::fs::canonicalize(&e.dst).unwrap();
    for rel in &links {
        let target = std::fs::read_link(path_of(&e.src, rel)).unwrap();
        assert_eq!(target, path_of(&dst, rel), "{}", esc(rel));
    }
    let text = status_text(&e.journal, &["--list", "links"])
        .expect(0, "list links")
        .stdout_str();
    let want = format!("d/b\t-> {}/d/b\n", dst.display());
    assert!(
        text.contains(&want),
        "text listing shows the target:\n{text}"
    );
    assert!(
        text.contains("d/new\\nline\t"),
        "paths are escaped, one a line:\n{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
}
