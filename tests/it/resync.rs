//! Namespace resync: users rename, delete, copy and replace relocated entries between runs, and
//! the next run makes DEST mirror SOURCE again without losing or clobbering anything: renamed
//! links and directories take their copies along, deleted links' copies go to the dated trash,
//! and `status` says when DEST is ready for cutover.

use crate::common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Problems with DEST as a mirror of SOURCE: every symlink into DEST names its own path and its
/// copy holds `want[path]`; every regular file at DEST outside the trash is named by such a link;
/// no regular file is left in SOURCE.
fn mirror_problems(src: &Path, dst: &Path, want: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<String> {
    let prefix = bytes_of(dst);
    let mut p = Vec::new();
    let sm = Manifest::scan(src);
    let mut linked = std::collections::BTreeSet::new();
    for (rel, e) in &sm.entries {
        match e.kind {
            Kind::File => p.push(format!("regular file left in SOURCE: {}", esc(rel))),
            Kind::Symlink => {
                let t = e.target.clone().unwrap_or_default();
                if !t.starts_with(&prefix) {
                    continue;
                }
                if t != join_rel(&prefix, rel) {
                    p.push(format!("{} -> {} (not its own path)", esc(rel), esc(&t)));
                    continue;
                }
                linked.insert(rel.clone());
                match (read_rel(dst, rel), want.get(rel)) {
                    (Ok(got), Some(w)) if &got == w => {}
                    (got, w) => p.push(format!(
                        "{}: DEST holds {:?}, want {:?}",
                        esc(rel),
                        got.map(|g| String::from_utf8_lossy(&g).into_owned()),
                        w.map(|w| String::from_utf8_lossy(w).into_owned())
                    )),
                }
            }
            _ => {}
        }
    }
    for rel in want.keys() {
        if !linked.contains(rel) {
            p.push(format!("{} is not a link to its own DEST path", esc(rel)));
        }
    }
    for (rel, e) in &Manifest::scan(dst).entries {
        if rel.starts_with(b".evac-trash") {
            continue;
        }
        match e.kind {
            Kind::File if !linked.contains(rel) => {
                p.push(format!("DEST/{} is named by no link", esc(rel)))
            }
            Kind::Dir => {
                let in_src =
                    lstat_rel(src, rel).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
                if !in_src {
                    p.push(format!("DEST directory {} is gone from SOURCE", esc(rel)));
                }
            }
            _ => {}
        }
    }
    p
}

/// Every regular file under DEST's trash, by content.
fn trash_contents(dst: &Path) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let t = dst.join(".evac-trash");
    let mut out: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    if !t.exists() {
        return out;
    }
    for (rel, e) in Manifest::scan(&t).entries {
        if e.kind == Kind::File {
            out.entry(read_rel(&t, &rel).unwrap())
                .or_default()
                .push(rel);
        }
    }
    out
}

fn cutover(journal: &Path) -> (bool, String) {
    let st = status(journal);
    let ready = st
        .get("cutover")
        .and_then(|c| c.get("ready"))
        .and_then(|r| r.as_bool());
    let list = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new("cutover"),
    ]);
    (ready == Some(true), list.stdout_str())
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn mv(root: &Path, a: &str, b: &str) {
    std::fs::rename(root.join(a), root.join(b)).unwrap();
}

/// Contents by path, as users expect to read them.
fn expect(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(p, c)| (p.as_bytes().to_vec(), c.as_bytes().to_vec()))
        .collect()
}

#[test]
fn renames_deletes_replacements_and_swaps_are_mirrored_at_dest() {
    let _gate = suite_gate!();
    let e = env();
    for (p, c) in [
        ("a/f1", "a1"),
        ("a/f2", "a2"),
        ("a/f3", "a3"),
        ("a/b/g1", "b1"),
        ("a/b/deep/g2", "b2"),
        ("c/h1", "c1"),
        ("c/h2", "c2"),
        ("c/h3", "c3"),
        ("c/new\nline \u{fffd}", "weird"),
    ] {
        write(&e.src, p, c.as_bytes());
    }
    std::fs::set_permissions(
        e.src.join("c/h2"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    let (ready, diff) = cutover(&e.journal);
    assert!(ready, "a fresh relocation is ready for cutover:\n{diff}");

    // Users at work: a rename across directories with a new file at the old name, a deleted
    // link, a renamed directory tree, two names swapped, a rename onto another link, and a link
    // moved twice.
    mv(&e.src, "a/f1", "c/f1-renamed");
    write(&e.src, "a/f1", b"NEW");
    std::fs::remove_file(e.src.join("c/h1")).unwrap();
    mv(&e.src, "a/b", "a/bb");
    mv(&e.src, "c/h2", "c/tmp");
    mv(&e.src, "c/h3", "c/h2");
    mv(&e.src, "c/tmp", "c/h3");
    mv(&e.src, "a/f3", "a/f2"); // over f2's link: f2's copy has no link any more
    mv(&e.src, "c/new\nline \u{fffd}", "a/x");
    mv(&e.src, "a/x", "c/weird again\n");
    let (ready, _) = cutover(&e.journal);
    assert!(ready, "status judges the last complete walk, not a guess");

    evac_run(&e.src, &e.dst, &e.journal, &[])
        .expect(0, "run after users renamed, deleted and replaced links");
    // A copy whose link is gone stays one more walk (a link renamed during a walk can be missed
    // by it): status says what is still to do.
    let (ready, diff) = cutover(&e.journal);
    assert!(
        !ready && diff.contains("c/h1\tcopies at DEST whose link is gone"),
        "{diff}"
    );
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "the next run");
    let want = expect(&[
        ("a/f1", "NEW"),
        ("a/f2", "a3"),
        ("a/bb/g1", "b1"),
        ("a/bb/deep/g2", "b2"),
        ("c/f1-renamed", "a1"),
        ("c/h2", "c3"),
        ("c/h3", "c2"),
        ("c/weird again\n", "weird"),
    ]);
    assert_no_problems(
        "DEST does not mirror SOURCE",
        &mirror_problems(&e.src, &e.dst, &want),
    );
    // Metadata travels with the copy (h3 now holds h2's 0600 file).
    let m = std::fs::metadata(e.dst.join("c/h3")).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o600,
        "c/h3 at DEST keeps its copy's mode"
    );
    // Copies no link names are kept, by path, in today's trash: h1 (deleted), f2 (replaced).
    let trash = trash_contents(&e.dst);
    let day = evac::util::time::today();
    for (content, rel) in [("c1", "c/h1"), ("a2", "a/f2")] {
        let names = trash.get(content.as_bytes()).cloned().unwrap_or_default();
        assert!(
            names.iter().any(|n| n == format!("{day}/{rel}").as_bytes()),
            "{rel} ({content}) not kept at DEST/.evac-trash/{day}/{rel}: trash {trash:?}"
        );
    }
    assert_eq!(trash.len(), 2, "nothing else went to the trash: {trash:?}");
    let (ready, diff) = cutover(&e.journal);
    assert!(ready, "DEST mirrors SOURCE but status says:\n{diff}");
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify after resync");
    // A third run has nothing to do.
    let d1 = Manifest::scan(&e.dst);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "third run");
    assert_no_problems(
        "a run with nothing to resync changed DEST",
        &diff_manifests(&d1, &Manifest::scan(&e.dst), DiffOpts::everything()),
    );
}

#[test]
fn status_lists_what_keeps_dest_from_mirroring_source() {
    let _gate = suite_gate!();
    let e = env();
    write(&e.src, "d/one", b"1");
    write(&e.src, "d/two", b"2");
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    // A rename onto a path where DEST already holds a file evac did not write: a conflict.
    write(&e.dst, "d/three", b"not evac's");
    mv(&e.src, "d/one", "d/three");
    // A user's own symlink, and a copy of a link whose file is still linked.
    std::os::unix::fs::symlink("two", e.src.join("d/mine")).unwrap();
    let two_target = std::fs::read_link(e.src.join("d/two")).unwrap();
    std::os::unix::fs::symlink(&two_target, e.src.join("d/two-copy")).unwrap();
    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    out.expect(3, "a rename that conflicts at DEST is left, and said");
    assert_eq!(
        std::fs::read(e.dst.join("d/three")).unwrap(),
        b"not evac's",
        "DEST's own file was not touched (I7)"
    );
    assert_eq!(
        std::fs::read(e.src.join("d/three")).unwrap(),
        b"1",
        "the renamed link still resolves to its copy"
    );
    let (ready, diff) = cutover(&e.journal);
    assert!(!ready, "status calls a conflicting rename ready:\n{diff}");
    assert!(
        diff.lines().any(
            |l| l.starts_with("d/three\trenamed links not followed at DEST")
                && l.contains("conflict")
        ),
        "the conflict is listed with its reason:\n{diff}"
    );
    for (p, what) in [
        ("d/mine", "symlink not carried over"),
        ("d/two-copy", "symlink not carried over"),
    ] {
        assert!(
            diff.lines().any(|l| l.starts_with(&format!("{p}\t{what}"))),
            "{p} listed as {what}:\n{diff}"
        );
    }
    let text = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ]);
    assert!(
        text.stdout_str().contains("cutover not ready"),
        "{}",
        text.stdout_str()
    );
    // The operator resolves the conflict; the next run follows the rename.
    std::fs::remove_file(e.dst.join("d/three")).unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run after the conflict is resolved");
    let (ready, diff) = cutover(&e.journal);
    assert!(ready, "{diff}");
    assert_eq!(std::fs::read(e.dst.join("d/three")).unwrap(), b"1");
    assert!(!e.dst.join("d/one").exists());
}

#[test]
fn a_renamed_link_takes_its_copy_back_from_the_trash() {
    let _gate = suite_gate!();
    // A link renamed while the walk could not see it (here: parked outside SOURCE, which keeps
    // its inode) looks deleted, and its copy goes to the trash while a new file takes the old
    // name. When the link shows up again under a new name, the link's inode says which copy it
    // is: the one in the trash, not the new file now at the old DEST path.
    let e = env();
    write(&e.src, "p/q", b"version one");
    write(&e.src, "p/other", b"o");
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    let parked = e.tmp.path().join("parked-link");
    std::fs::rename(e.src.join("p/q"), &parked).unwrap();
    write(&e.src, "p/q", b"version two");
    // The new file waits while the link, opened by its file handle, still exists and names the
    // old copy: it may have been renamed out of a walk's view. Parked outside SOURCE, it stays
    // unseen; after three complete walks without it, it is taken to live outside SOURCE and the
    // copy goes to the trash.
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run while the link is away");
    let second = evac_run(&e.src, &e.dst, &e.journal, &[]);
    if is_root() {
        second.expect(3, "second run while the link is away");
        assert_eq!(
            std::fs::read(&parked).unwrap(),
            b"version one",
            "the parked link lost its copy at once"
        );
    } else {
        eprintln!("note: not root, links cannot be opened by handle: the two-walk rule alone");
    }
    let mut runs = 2;
    while evac_run(&e.src, &e.dst, &e.journal, &[]).code() != 0 {
        runs += 1;
        assert!(runs <= 5, "the new version still waits after {runs} runs");
    }
    assert_eq!(std::fs::read(e.dst.join("p/q")).unwrap(), b"version two");
    assert!(
        trash_contents(&e.dst).contains_key(b"version one".as_slice()),
        "the first version's copy is kept in the trash"
    );
    std::fs::rename(&parked, e.src.join("p/back")).unwrap();
    assert_eq!(
        std::fs::read(e.src.join("p/back")).unwrap(),
        b"version two",
        "(the test's premise: by its target text alone the link now shows the wrong file)"
    );
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run after the link came back");
    let want = expect(&[
        ("p/q", "version two"),
        ("p/back", "version one"),
        ("p/other", "o"),
    ]);
    assert_no_problems(
        "DEST does not mirror SOURCE",
        &mirror_problems(&e.src, &e.dst, &want),
    );
    assert!(
        !trash_contents(&e.dst).contains_key(b"version one".as_slice()),
        "the copy left the trash for its link"
    );
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify");
}

#[test]
fn a_renamed_name_of_a_hard_link_group_keeps_the_group_at_dest() {
    let _gate = suite_gate!();
    let e = env();
    write(&e.src, "h/a", b"shared");
    std::fs::hard_link(e.src.join("h/a"), e.src.join("h/b")).unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    mv(&e.src, "h/a", "h/renamed");
    // Two links naming one copy whose own link is gone: both keep it, as hard links.
    mv(&e.src, "h/b", "h/b1");
    let t = std::fs::read_link(e.src.join("h/b1")).unwrap();
    std::os::unix::fs::symlink(&t, e.src.join("h/b2")).unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run after renames");
    let want = expect(&[
        ("h/renamed", "shared"),
        ("h/b1", "shared"),
        ("h/b2", "shared"),
    ]);
    assert_no_problems(
        "DEST does not mirror SOURCE",
        &mirror_problems(&e.src, &e.dst, &want),
    );
    let ino = |p: &str| std::fs::metadata(e.dst.join(p)).unwrap().ino();
    assert_eq!(ino("h/renamed"), ino("h/b1"), "the group stays one inode");
    assert_eq!(ino("h/b1"), ino("h/b2"), "two links to one copy share it");
    assert_eq!(std::fs::metadata(e.dst.join("h/b2")).unwrap().nlink(), 3);
    assert!(
        trash_contents(&e.dst).is_empty(),
        "nothing went to the trash"
    );
}

#[test]
fn links_changed_between_swap_and_record_survive_kill_9() {
    let _gate = suite_gate!();
    // The window between a batch's swaps and the journal's record of them: a user renames,
    // deletes or replaces the fresh link, and evac is killed there. Recovery must neither undo
    // the swap under a renamed link (which would strand it) nor remove the copy the renamed link
    // names; a deleted or replaced file's copy ends in the trash. One file per case, so that the
    // batch (whose size depends on timing) surely holds it.
    for action in ["rename", "delete", "replace"] {
        let e = env();
        let original = format!("{action}d while in flight");
        write(&e.src, "w/f", original.as_bytes());
        let mut bg = spawn_evac_env(
            run_args(&e.src, &e.dst, &e.journal, &[]),
            &[("EVAC_TEST_PAUSE_AFTER_SWAP", OsStr::new("120000"))],
        );
        wait_until("the swap", std::time::Duration::from_secs(60), || {
            std::fs::symlink_metadata(e.src.join("w/f")).is_ok_and(|m| m.file_type().is_symlink())
        });
        // (The premise: the journal has not recorded the swap.)
        assert_eq!(
            count(&status(&e.journal), "relocated"),
            0,
            "swap recorded too early"
        );
        let want = match action {
            "rename" => {
                mv(&e.src, "w/f", "w/f.moved");
                expect(&[("w/f.moved", &original)])
            }
            "delete" => {
                std::fs::remove_file(e.src.join("w/f")).unwrap();
                expect(&[])
            }
            _ => {
                write(&e.src, "w/f.new", b"the user's new version");
                mv(&e.src, "w/f.new", "w/f");
                expect(&[("w/f", "the user's new version")])
            }
        };
        assert!(bg.kill9(), "{action}: evac ended before the kill");
        // A copy goes to the trash after two walks without a link naming it, and a new version
        // waits for that: runs until DEST mirrors SOURCE.
        let mut runs = 0;
        loop {
            runs += 1;
            let code = evac_run(&e.src, &e.dst, &e.journal, &[]).code();
            if code == 0 && cutover(&e.journal).0 {
                break;
            }
            assert!(
                runs < 4,
                "{action}: {runs} runs and DEST does not mirror SOURCE (exit {code})"
            );
        }
        assert_no_problems(
            &format!("{action}: after kill -9 in the swap window"),
            &mirror_problems(&e.src, &e.dst, &want),
        );
        if action != "rename" {
            let trash = trash_contents(&e.dst);
            assert!(
                trash.contains_key(original.as_bytes()),
                "{action}: the copy holding {original:?} is not in the trash: {trash:?}"
            );
        }
        let temps: Vec<String> = Manifest::scan(&e.src)
            .entries
            .keys()
            .filter(|r| is_evac_temp(basename(r)))
            .map(|r| esc(r))
            .collect();
        assert!(
            temps.is_empty(),
            "{action}: temporaries left in SOURCE: {temps:?}"
        );
        let (ready, diff) = cutover(&e.journal);
        assert!(ready, "{action}: cutover not ready:\n{diff}");
        evac([
            OsStr::new("verify"),
            OsStr::new("--journal"),
            e.journal.as_os_str(),
        ])
        .expect(0, "verify");
    }
}

#[test]
fn a_link_moved_before_its_swap_is_undone_takes_the_original_along() {
    let _gate = suite_gate!();
    // A batch is swapped and recorded, then DEST's syncfs hangs (test knob) and the batch is put
    // back because its DEST names were never proven durable. The user renamed one of its fresh
    // links in between: the original goes where the user's rename put the file (in place of
    // the link), not back under the name the user left, and nothing is swapped over or lost.
    let e = env();
    write(&e.src, "u/one", b"first file");
    write(&e.src, "u/two", b"second file");
    let mut bg = spawn_evac_env(
        run_args(
            &e.src,
            &e.dst,
            &e.journal,
            &["--workers", "1", "--batch-files", "1", "--op-timeout", "2"],
        ),
        &[
            ("EVAC_TEST_PAUSE_AFTER_SWAP", OsStr::new("1500")),
            ("EVAC_TEST_STALL_SYNCFS", OsStr::new("2")),
        ],
    );
    let link_of = |rel: &str| {
        std::fs::symlink_metadata(e.src.join(rel)).is_ok_and(|m| m.file_type().is_symlink())
    };
    let mut first = "";
    wait_until(
        "the first batch's swap",
        std::time::Duration::from_secs(60),
        || {
            first = ["u/one", "u/two"]
                .into_iter()
                .find(|r| link_of(r))
                .unwrap_or("");
            !first.is_empty()
        },
    );
    let content = std::fs::read(e.src.join(first)).unwrap();
    let moved = format!("{first}.moved");
    mv(&e.src, first, &moved);
    let out = bg.wait_for(std::time::Duration::from_secs(60));
    out.expect(1, "a run whose syncfs of DEST stops answering");
    assert_eq!(
        std::fs::read(e.src.join(&moved)).unwrap(),
        content,
        "the renamed file no longer shows its content\n{}",
        out.dump()
    );
    assert!(
        std::fs::symlink_metadata(e.src.join(&moved)).is_ok_and(|m| m.file_type().is_file()),
        "the original did not take the renamed link's place\n{}",
        out.dump()
    );
    assert!(
        std::fs::symlink_metadata(e.src.join(first)).is_err(),
        "the name the user renamed away holds something again\n{}",
        out.dump()
    );
    let mut code = 3;
    for _ in 0..4 {
        code = evac_resume(&e.journal, &[]).code();
        if code == 0 {
            break;
        }
    }
    assert_eq!(code, 0, "resumes did not finish");
    let other = if first == "u/one" { "u/two" } else { "u/one" };
    let text = |r: &str| String::from_utf8(std::fs::read(e.src.join(r)).unwrap()).unwrap();
    let want = expect(&[
        (&moved, &String::from_utf8(content).unwrap()),
        (other, &text(other)),
    ]);
    assert_no_problems(
        "after a put-back batch whose link was renamed",
        &mirror_problems(&e.src, &e.dst, &want),
    );
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify");
}

#[test]
fn an_old_name_a_crash_kept_at_dest_is_released_later() {
    let _gate = suite_gate!();
    // The journal lets a renamed copy's old DEST name go, then removes the name; a crash (or a
    // power cut) between the two leaves the name. It is one more name of a copy the journal
    // records under its new path, not a stranger's file: a new file at the old path must not be
    // refused as a conflict.
    let e = env();
    write(&e.src, "a/x", b"the first x");
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    mv(&e.src, "a/x", "a/y");
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run after the rename");
    assert!(
        !e.dst.join("a/x").exists(),
        "(premise) the old name was released"
    );
    std::fs::hard_link(e.dst.join("a/y"), e.dst.join("a/x")).unwrap();
    write(&e.src, "a/x", b"a new x");
    let mut runs = 0;
    loop {
        runs += 1;
        let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
        if out.code() == 0 && cutover(&e.journal).0 {
            break;
        }
        assert!(runs < 4, "no convergence after {runs} runs\n{}", out.dump());
    }
    let want = expect(&[("a/x", "a new x"), ("a/y", "the first x")]);
    assert_no_problems(
        "after a crash left an old name at DEST",
        &mirror_problems(&e.src, &e.dst, &want),
    );
}
