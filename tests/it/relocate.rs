//! What a relocation produces: the oracle over full trees, names, deep paths,
//! hard links, sparse files, xattrs, owners and modes, untouched symlinks and
//! special files, idempotence, reappearing files, --link-prefix, DEST inside
//! SOURCE, filesystem boundaries.

use crate::common::mounts::*;
use crate::common::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn verify_ok(journal: &Path) {
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        journal.as_os_str(),
    ])
    .expect(0, "verify after a clean run");
}

#[test]
fn full_tree_is_relocated() {
    let _gate = suite_gate!();
    let e = env();
    let info = build_tree(&e.src, &TreeSpec::full(101));
    let before = Manifest::scan(&e.src);
    let outside = info.outside.clone().unwrap();
    let outside_before = Manifest::scan(&outside);

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "relocating the full tree");

    check_relocated(&before, &e.src, &e.dst, None);
    // The directory a symlink points to (outside SOURCE) was not followed.
    assert_no_problems(
        "outside directory behind a symlink",
        &diff_manifests(
            &outside_before,
            &Manifest::scan(&outside),
            DiffOpts::everything(),
        ),
    );
    let st = status(&e.journal);
    for s in ["pending", "deferred", "failed", "staged_out"] {
        assert_eq!(count(&st, s), 0, "files.{s} after a clean run: {st:?}");
    }
    verify_ok(&e.journal);
}

#[test]
fn pathological_names_are_relocated() {
    let _gate = suite_gate!();
    let e = env();
    let spec = TreeSpec {
        weird_names: true,
        ..TreeSpec::plain(5, 102)
    };
    let info = build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    // Sanity: the corpus is really there, decoys included.
    for n in weird_names() {
        assert!(
            before.get(&join_rel(b"names", &n)).is_some(),
            "builder lost {}",
            esc(&n)
        );
    }

    // Without --quiet, so that whatever evac prints about these paths is checked below.
    let run = evac([
        OsStr::new("run"),
        e.src.as_os_str(),
        e.dst.as_os_str(),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ]);
    run.expect(0, "relocating pathological names");

    check_relocated(&before, &e.src, &e.dst, None);
    // Every weird name reads back through its link.
    for rel in &info.weird {
        let want = before.get(rel).unwrap().hash.unwrap();
        let got = std::fs::read(path_of(&e.src, rel))
            .unwrap_or_else(|err| panic!("read {} via link: {err}", esc(rel)));
        assert_eq!(hash_bytes(&got), want, "{} via its link", esc(rel));
    }
    // User files named like evac temporaries of another journal were relocated, not deleted.
    for d in decoy_names() {
        let rel = join_rel(b"names", &d);
        let e2 = lstat_rel(&e.dst, &rel)
            .unwrap_or_else(|err| panic!("decoy {} missing at DEST: {err}", esc(&rel)));
        assert_eq!(e2.st_mode & libc::S_IFMT, libc::S_IFREG);
    }
    verify_ok(&e.journal);

    // Printed paths are escaped: no raw control bytes (other than line breaks
    // and TAB separators) and no invalid UTF-8 in anything evac prints.
    let j = e.journal.as_os_str();
    let outputs = vec![
        ("run", run),
        (
            "status",
            evac([OsStr::new("status"), OsStr::new("--journal"), j]),
        ),
        (
            "status --json",
            evac([
                OsStr::new("status"),
                OsStr::new("--journal"),
                j,
                OsStr::new("--json"),
            ]),
        ),
        (
            "status --list relocated",
            evac([
                OsStr::new("status"),
                OsStr::new("--journal"),
                j,
                OsStr::new("--list"),
                OsStr::new("relocated"),
            ]),
        ),
        (
            "verify",
            evac([OsStr::new("verify"), OsStr::new("--journal"), j]),
        ),
    ];
    for (what, out) in outputs {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let bad: Vec<u8> = bytes
                .iter()
                .copied()
                .filter(|b| *b < 0x20 && *b != b'\n' && *b != b'\t')
                .collect();
            assert!(
                bad.is_empty(),
                "{what} {stream} has raw control bytes {bad:?}\n{}",
                out.dump()
            );
            assert!(
                std::str::from_utf8(bytes).is_ok(),
                "{what} {stream} is not valid UTF-8 (unescaped bytes)\n{}",
                out.dump()
            );
        }
    }
}

/// Build `levels` directories of 240-byte names under `d`, returning the last and its rel path.
fn chain(mut d: D, mut rel: Vec<u8>, levels: usize, tag: u8) -> (D, Vec<u8>) {
    for level in 0..levels {
        let mut name = format!("{}{level:03}-", tag as char).into_bytes();
        name.resize(240, b'a' + (level % 26) as u8);
        d = d.mkdir(&name, 0o755).unwrap();
        rel = join_rel(&rel, &name);
    }
    (d, rel)
}

#[test]
fn paths_longer_than_path_max() {
    let _gate = suite_gate!();
    // SOURCE and DEST both ~220 bytes deep; a file at a relative path of 3990
    // bytes, so its absolute path on both sides exceeds PATH_MAX (4096) while
    // "/x/<rel>" still fits in a symlink target (4095 bytes).
    let e = env();
    let src = e.tmp.path().join(format!("s{}", "S".repeat(200)));
    let dst = e.tmp.path().join(format!("d{}", "D".repeat(200)));
    std::fs::create_dir(&src).unwrap();
    let root = D::open(&src).unwrap();
    let (d, rel) = chain(root, Vec::new(), 16, b'c');
    let fname_len = 3990 - rel.len() - 1;
    let mut fname = b"deepest-".to_vec();
    fname.resize(fname_len, b'z');
    d.create(&fname, &content(1, 5000), 0o640).unwrap();
    let deep_rel = join_rel(&rel, &fname);
    assert_eq!(deep_rel.len(), 3990);
    assert!(
        src.as_os_str().len() + 1 + deep_rel.len() > 4096,
        "test must exceed PATH_MAX"
    );
    // A sibling file higher up, and more (empty) levels below: the directory chain is ~4800 bytes.
    let mid_rel = {
        let mut name = b"c000-".to_vec();
        name.resize(240, b'a');
        let first = D::open(&src).unwrap().sub(&name).unwrap();
        first.create(b"shallow", b"shallow file", 0o644).unwrap();
        join_rel(&name, b"shallow")
    };
    let (bottom, bottom_rel) = chain(d, rel.clone(), 3, b'x');
    bottom.mkfifo(b"fifo-at-the-bottom", 0o600).unwrap();
    assert!(src.as_os_str().len() + bottom_rel.len() > 4600);
    stamp_times(&src, 103);
    let before = Manifest::scan(&src);
    assert!(before.get(&deep_rel).is_some() && before.get(&mid_rel).is_some());

    evac_run(&src, &dst, &e.journal, &["--link-prefix", "/x"])
        .expect(0, "relocating paths beyond PATH_MAX");

    check_relocated(&before, &src, &dst, Some(Path::new("/x")));
    let target = readlink_rel(&src, &deep_rel).unwrap();
    assert_eq!(target.len(), 3993);
}

#[test]
fn file_whose_link_target_cannot_exist_is_left_intact() {
    let _gate = suite_gate!();
    // DEST/<rel> would be longer than the longest possible symlink target
    // (4095 bytes): evac cannot make the link, so the file must stay a regular
    // file with its content, counted as left (exit 3) -- never lost.
    let e = env();
    std::fs::write(e.src.join("normal.txt"), b"normal").unwrap();
    let root = D::open(&e.src).unwrap();
    let (d, rel) = chain(root, Vec::new(), 16, b'q');
    let want_total = 4095 - e.dst.as_os_str().len() - 1 + 20; // target would be 20 bytes too long
    let mut fname = b"too-long-for-a-link-".to_vec();
    fname.resize(want_total - rel.len() - 1, b'y');
    let data = content(2, 3000);
    d.create(&fname, &data, 0o644).unwrap();
    let deep_rel = join_rel(&rel, &fname);
    assert!(e.dst.as_os_str().len() + 1 + deep_rel.len() > 4095);
    stamp_times(&e.src, 104);
    let before = Manifest::scan(&e.src);

    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    out.expect(3, "a file that cannot be linked is left (exit 3)");

    let o = OracleOpts {
        not_relocated: [deep_rel.clone()].into_iter().collect(),
        allow_extra_dest: true,
        check_dir_mtime: false,
        ..Default::default()
    };
    check_relocated_opts(&before, &e.src, &e.dst, &o);
    assert_eq!(read_rel(&e.src, &deep_rel).unwrap(), data);
    let st = status(&e.journal);
    assert!(
        count(&st, "failed") + count(&st, "deferred") >= 1,
        "the file must be counted as left: {st:?}"
    );
    let mut listed = status_list(&e.journal, "failed");
    listed.extend(status_list(&e.journal, "deferred"));
    assert!(
        listed.contains(&deep_rel),
        "status --list failed/deferred does not name the file"
    );
}

#[test]
fn hard_link_groups_are_kept() {
    let _gate = suite_gate!();
    let e = env();
    let spec = TreeSpec {
        hardlinks: true,
        ..TreeSpec::plain(10, 105)
    };
    let info = build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    assert_eq!(
        before
            .link_groups_of(info.files.iter())
            .iter()
            .filter(|g| g.len() > 1)
            .count(),
        3,
        "builder made 3 multi-name groups"
    );

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "relocating hard links");

    check_relocated(&before, &e.src, &e.dst, None);
    let after = Manifest::scan(&e.dst);
    assert_eq!(
        after.distinct_file_inodes(),
        before.distinct_file_inodes(),
        "data copied once per inode"
    );
    verify_ok(&e.journal);
}

#[test]
fn sparse_files_stay_sparse() {
    let _gate = suite_gate!();
    let e = env();
    let spec = TreeSpec {
        sparse: true,
        ..TreeSpec::plain(3, 106)
    };
    let info = build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    for r in &info.sparse {
        if !before.get(r).unwrap().is_sparse() {
            skip!(
                "sparse_files_stay_sparse",
                "the temp filesystem does not keep {} sparse",
                esc(r)
            );
        }
    }

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "relocating sparse files");

    check_relocated(&before, &e.src, &e.dst, None);
    for r in &info.sparse {
        let s = before.get(r).unwrap();
        let d = lstat_rel(&e.dst, r).unwrap();
        eprintln!(
            "{}: size {} blocks SOURCE {} DEST {}",
            esc(r),
            s.size,
            s.blocks,
            d.st_blocks
        );
        assert!(
            d.st_blocks as u64 <= s.blocks,
            "{} is not sparse at DEST",
            esc(r)
        );
    }
}

#[test]
fn user_xattrs_and_special_modes() {
    let _gate = suite_gate!();
    // Works unprivileged: user.* xattrs on files and dirs, setuid/setgid
    // files, setgid and sticky directories.
    let e = env();
    let spec = TreeSpec {
        xattrs: true,
        modes: true,
        ..TreeSpec::plain(40, 107)
    };
    build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    assert!(
        before.files().any(|(_, f)| f.mode & 0o4000 != 0),
        "builder made setuid files"
    );
    assert!(
        before.of_kind(Kind::Dir).any(|(_, d)| d.mode & 0o1000 != 0),
        "builder made sticky dirs"
    );
    assert!(before
        .entries
        .values()
        .any(|x| x.xattrs.keys().any(|k| k.starts_with(b"user."))));

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "relocating xattrs and modes");
    check_relocated(&before, &e.src, &e.dst, None);
}

#[test]
fn root_xattrs_acls_capabilities() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "root_xattrs_acls_capabilities",
        "trusted.*, security.capability and ACLs for other uids need CAP_SYS_ADMIN/CAP_SETFCAP"
    );
    let e = env();
    let spec = TreeSpec {
        xattrs: true,
        root_xattrs: true,
        owners: true,
        ..TreeSpec::plain(6, 108)
    };
    let info = build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    for (rel, key) in [
        (&b"xa/cap-bin"[..], &b"security.capability"[..]),
        (b"xa/trusted.bin", b"trusted.evac"),
        (b"xa/acl-file", b"system.posix_acl_access"),
        (b"xa/acl-dir", b"system.posix_acl_default"),
        (b"xa/everything", b"security.capability"),
    ] {
        assert!(
            before.get(rel).unwrap().xattrs.contains_key(key),
            "builder: {} lacks {}",
            esc(rel),
            esc(key)
        );
    }
    assert!(!info.root_xattr_files.is_empty());

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "relocating root-only xattrs");

    check_relocated(&before, &e.src, &e.dst, None);
    let cap = Manifest::scan(&e.dst)
        .get(b"xa/everything")
        .unwrap()
        .clone();
    assert!(
        cap.mode & 0o4000 != 0,
        "setuid lost at DEST (mode {:o})",
        cap.mode
    );
    assert!(
        cap.xattrs.contains_key(&b"security.capability"[..]),
        "capability lost at DEST"
    );
}

#[test]
fn owners_and_setid_bits_as_root() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "owners_and_setid_bits_as_root",
        "chown to other uids/gids needs CAP_CHOWN"
    );
    let e = env();
    let spec = TreeSpec {
        owners: true,
        modes: true,
        symlinks: true,
        ..TreeSpec::plain(50, 109)
    };
    build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    let owners: BTreeSet<(u32, u32)> = before.files().map(|(_, f)| (f.uid, f.gid)).collect();
    assert!(owners.len() >= 4, "builder made varied owners: {owners:?}");
    assert!(before
        .files()
        .any(|(_, f)| f.mode & 0o6000 == 0o6000 && f.uid != 0));

    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "relocating owned files");
    // The oracle checks DEST owners/modes and that each link is lchown'ed to the file's owner.
    check_relocated(&before, &e.src, &e.dst, None);
}

#[test]
fn symlinks_and_special_files_are_left_alone() {
    let _gate = suite_gate!();
    let e = env();
    let spec = TreeSpec {
        symlinks: true,
        specials: true,
        ..TreeSpec::plain(8, 110)
    };
    let info = build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    let outside = info.outside.clone().unwrap();
    let outside_before = Manifest::scan(&outside);
    assert!(info.fifos.len() == 2 && !info.symlinks.is_empty());

    // Anyone opening a FIFO for reading would let this non-blocking writer open succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, opened) = (stop.clone(), opened.clone());
        let fifos: Vec<PathBuf> = info.fifos.iter().map(|r| path_of(&e.src, r)).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for f in &fifos {
                    let c = std::ffi::CString::new(f.as_os_str().as_bytes()).unwrap();
                    let fd = unsafe {
                        libc::open(
                            c.as_ptr(),
                            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                        )
                    };
                    if fd >= 0 {
                        opened.store(true, Ordering::Relaxed);
                        unsafe { libc::close(fd) };
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    out.expect(0, "relocating a tree with symlinks and special files");
    assert!(
        !opened.load(Ordering::Relaxed),
        "evac opened a FIFO for reading"
    );

    // Unchanged in SOURCE, absent from DEST (the oracle checks both).
    check_relocated(&before, &e.src, &e.dst, None);
    assert_no_problems(
        "directory outside SOURCE behind a symlink",
        &diff_manifests(
            &outside_before,
            &Manifest::scan(&outside),
            DiffOpts::everything(),
        ),
    );
    assert!(!path_of(&e.dst, b"links/dir-outside").exists());

    // Special files are recorded as skipped.
    let st = status(&e.journal);
    let specials = info.specials();
    assert!(
        count(&st, "skipped") >= specials.len() as i64,
        "files.skipped {} < {} special files: {st:?}",
        count(&st, "skipped"),
        specials.len()
    );
    let skipped: BTreeSet<Vec<u8>> = status_list(&e.journal, "skipped").into_iter().collect();
    for s in &specials {
        assert!(
            skipped.contains(s),
            "{} not listed by status --list skipped",
            esc(s)
        );
    }
    let relocated: BTreeSet<Vec<u8>> = status_list(&e.journal, "relocated").into_iter().collect();
    for s in specials.iter().chain(info.symlinks.iter()) {
        assert!(!relocated.contains(s), "{} listed as relocated", esc(s));
    }
}

/// Run twice; return DEST and SOURCE manifests after the first and second run.
fn run_twice(e: &Env, spec: &TreeSpec) -> (Manifest, [Manifest; 2], [Manifest; 2]) {
    build_tree(&e.src, spec);
    let before = Manifest::scan(&e.src);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    check_relocated(&before, &e.src, &e.dst, None);
    let d1 = Manifest::scan(&e.dst);
    let s1 = Manifest::scan(&e.src);
    // Make timestamps from a rewrite distinguishable.
    std::thread::sleep(Duration::from_millis(20));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "second run");
    let d2 = Manifest::scan(&e.dst);
    let s2 = Manifest::scan(&e.src);
    (before, [d1, d2], [s1, s2])
}

#[test]
fn second_run_changes_nothing() {
    let _gate = suite_gate!();
    let e = env();
    let spec = TreeSpec {
        hardlinks: true,
        symlinks: true,
        specials: true,
        weird_names: true,
        ..TreeSpec::plain(30, 111)
    };
    let (_, [d1, d2], [s1, s2]) = run_twice(&e, &spec);
    let opts = DiffOpts {
        ino: true,
        ctime: false,
        file_atime: true,
        dir_mtime: true,
    };
    assert_no_problems(
        "DEST changed by a second run",
        &diff_manifests(&d1, &d2, opts),
    );
    assert_no_problems(
        "SOURCE changed by a second run",
        &diff_manifests(&s1, &s2, opts),
    );
    let st = status(&e.journal);
    assert_eq!(count(&st, "pending"), 0);
    assert_eq!(count(&st, "failed"), 0);
}

#[test]
fn second_run_does_not_even_touch_ctime() {
    let _gate = suite_gate!();
    // "copies nothing and changes nothing": no chmod/chown/utimens/setxattr either.
    let e = env();
    let (_, [d1, d2], [s1, s2]) = run_twice(
        &e,
        &TreeSpec {
            hardlinks: true,
            ..TreeSpec::plain(20, 112)
        },
    );
    let opts = DiffOpts {
        ino: true,
        ctime: true,
        file_atime: true,
        dir_mtime: true,
    };
    assert_no_problems(
        "DEST touched by a second run",
        &diff_manifests(&d1, &d2, opts),
    );
    assert_no_problems(
        "SOURCE touched by a second run",
        &diff_manifests(&s1, &s2, opts),
    );
}

#[test]
fn existing_links_count_as_relocated_with_a_new_journal() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            weird_names: true,
            ..TreeSpec::plain(25, 113)
        },
    );
    let before = Manifest::scan(&e.src);
    let nfiles = before.file_count() as i64;
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    let d1 = Manifest::scan(&e.dst);

    let j2 = e.tmp.path().join("second-journal.db");
    evac_run(&e.src, &e.dst, &j2, &[])
        .expect(0, "run with a fresh journal over an already relocated tree");

    let st = status(&j2);
    assert_eq!(
        count(&st, "relocated"),
        nfiles,
        "links already pointing to LINK_PREFIX/<rel> count as relocated: {st:?}"
    );
    for s in ["pending", "deferred", "failed"] {
        assert_eq!(count(&st, s), 0, "files.{s}: {st:?}");
    }
    let opts = DiffOpts {
        ino: true,
        ctime: false,
        file_atime: true,
        dir_mtime: true,
    };
    assert_no_problems(
        "DEST changed by the second journal's run",
        &diff_manifests(&d1, &Manifest::scan(&e.dst), opts),
    );
    check_relocated(&before, &e.src, &e.dst, None);
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        j2.as_os_str(),
    ])
    .expect(0, "verify with the new journal");
}

/// Every regular file under DEST/.evac-trash, by content hash.
fn trash_hashes(dest: &Path) -> BTreeSet<[u8; 32]> {
    let t = dest.join(".evac-trash");
    if !t.exists() {
        return BTreeSet::new();
    }
    Manifest::scan(&t)
        .files()
        .map(|(_, f)| f.hash.unwrap())
        .collect()
}

#[test]
fn reappearing_file_is_relocated_as_new_version() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(12, 114));
    let weird: &[u8] = b"t/d00/s00/re\nappears \xff";
    {
        let (d, n) = open_rel(&e.src, weird).unwrap();
        d.create(&n, b"old version of the weird one", 0o600)
            .unwrap();
    }
    let before = Manifest::scan(&e.src);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    check_relocated(&before, &e.src, &e.dst, None);
    let d1 = Manifest::scan(&e.dst);

    // The user deletes two links and writes new files in their place.
    let plain: &[u8] = b"t/d00/s00/f00000.dat";
    let mut old = Vec::new();
    for (i, rel) in [plain, weird].iter().enumerate() {
        old.push(d1.get(rel).unwrap().hash.unwrap());
        let (d, n) = open_rel(&e.src, rel).unwrap();
        d.unlink(&n).unwrap();
        d.create(&n, &content(900 + i as u64, 777 + i), 0o640)
            .unwrap();
        d.set_times(&n, (1_600_000_000, 5), (1_650_000_000, 123_456_789))
            .unwrap();
    }
    let before2 = Manifest::scan(&e.src);

    // The old copies stay at DEST for one more walk (a link renamed during a walk can be missed
    // by it, and must not be left dangling): the new versions wait for the next run, which says so.
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run after files reappeared");
    let waiting = status_list(&e.journal, "deferred");
    assert_eq!(waiting.len(), 2, "the two new versions wait: {waiting:?}");
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "the run after that");

    // The new versions are relocated like any file...
    let o = OracleOpts {
        check_dir_mtime: false,
        ..Default::default()
    };
    check_relocated_opts(&before2, &e.src, &e.dst, &o);
    // ...the old versions were moved to DEST/.evac-trash, not overwritten...
    let trash = trash_hashes(&e.dst);
    for (rel, h) in [plain, weird].iter().zip(&old) {
        assert!(
            trash.contains(h),
            "old version of {} not found in DEST/.evac-trash",
            esc(rel)
        );
    }
    // ...and nothing else at DEST changed.
    let d2 = Manifest::scan(&e.dst);
    for (rel, f) in d1.files() {
        if rel.as_slice() == plain || rel.as_slice() == weird {
            continue;
        }
        let g = d2.get(rel).unwrap();
        assert_eq!(
            (f.ino, f.mtime, f.hash),
            (g.ino, g.mtime, g.hash),
            "{} changed",
            esc(rel)
        );
    }
    verify_ok(&e.journal);
}

#[test]
fn link_prefix_is_used_for_targets() {
    let _gate = suite_gate!();
    let e = env();
    std::fs::create_dir(&e.dst).unwrap(); // DEST may also exist already
    build_tree(
        &e.src,
        &TreeSpec {
            weird_names: true,
            hardlinks: true,
            ..TreeSpec::plain(15, 115)
        },
    );
    let before = Manifest::scan(&e.src);
    let prefix = "/mnt/evac new/store";
    evac_run(&e.src, &e.dst, &e.journal, &["--link-prefix", prefix])
        .expect(0, "run with --link-prefix");
    check_relocated(&before, &e.src, &e.dst, Some(Path::new(prefix)));
    let st = status(&e.journal);
    assert_eq!(
        st.get("dest").and_then(|v| v.as_str()),
        Some(e.dst.to_str().unwrap())
    );
    verify_ok(&e.journal);
}

#[test]
fn dest_inside_source_is_not_entered() {
    let _gate = suite_gate!();
    // Two DEST names, sorting after and before everything else in SOURCE.
    for name in ["zz-dest", "0-dest"] {
        let e = env();
        build_tree(
            &e.src,
            &TreeSpec {
                hardlinks: true,
                ..TreeSpec::plain(30, 116)
            },
        );
        let before = Manifest::scan(&e.src);
        let dst = e.src.join(name);
        evac_run(&e.src, &dst, &e.journal, &[])
            .expect(0, &format!("run with DEST = SOURCE/{name}"));
        let o = OracleOpts {
            source_skip: vec![name.as_bytes().to_vec()],
            check_dir_mtime: false,
            ..Default::default()
        };
        check_relocated_opts(&before, &e.src, &dst, &o);
        assert!(
            !dst.join(name).exists(),
            "DEST contains a copy of itself ({name}/{name})"
        );
        // The copies inside DEST are regular files, not links.
        let inside = Manifest::scan(&dst);
        assert!(
            inside.of_kind(Kind::Symlink).next().is_none(),
            "evac relocated files inside DEST"
        );
        let st = status(&e.journal);
        assert_eq!(
            count(&st, "relocated"),
            before.file_count() as i64,
            "{st:?}"
        );
        // A second run does not enter it either.
        evac_run(&e.src, &dst, &e.journal, &[]).expect(0, "second run with DEST inside SOURCE");
        assert!(Manifest::scan(&dst).of_kind(Kind::Symlink).next().is_none());
        assert!(!dst.join(name).exists());
    }
}

#[test]
fn does_not_cross_into_another_filesystem() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "does_not_cross_into_another_filesystem",
        "mounting a tmpfs inside SOURCE needs CAP_SYS_ADMIN"
    );
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(10, 117));
    let mnt = e.src.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = match tmpfs(&mnt, "4m") {
        Ok(g) => g,
        Err(m) => skip!(
            "does_not_cross_into_another_filesystem",
            "mount -t tmpfs failed here: {m}"
        ),
    };
    std::fs::write(mnt.join("inner.txt"), b"on another filesystem").unwrap();
    std::fs::create_dir(mnt.join("sub")).unwrap();
    std::fs::write(mnt.join("sub/deeper.txt"), b"also").unwrap();
    let before = Manifest::scan_opts(
        &e.src,
        &ScanOpts {
            skip: vec![b"mnt".to_vec()],
            ..Default::default()
        },
    );
    let inner_before = Manifest::scan(&mnt);

    evac_run(&e.src, &e.dst, &e.journal, &[])
        .expect(0, "run over a tree with a mount point inside");

    let o = OracleOpts {
        source_skip: vec![b"mnt".to_vec()],
        allow_extra_dest: true,
        ..Default::default()
    };
    check_relocated_opts(&before, &e.src, &e.dst, &o);
    assert_no_problems(
        "the other filesystem was modified",
        &diff_manifests(
            &inner_before,
            &Manifest::scan(&mnt),
            DiffOpts {
                dir_mtime: false,
                ..DiffOpts::everything()
            },
        ),
    );
    assert!(
        !e.dst.join("mnt/inner.txt").exists(),
        "a file of another filesystem was copied to DEST"
    );
    assert!(
        !e.dst.join("mnt/sub").exists(),
        "a directory of another filesystem was copied to DEST"
    );
}

/// I7: a file at DEST that evac did not write is never overwritten. The SOURCE file stays as it
/// is (not a link), the run says so (exit 3, cause `conflict`), and the files beside it go.
#[test]
fn a_dest_file_evac_did_not_write_is_left_and_so_is_its_source() {
    let _gate = suite_gate!();
    let e = env();
    std::fs::create_dir_all(e.src.join("d")).unwrap();
    std::fs::create_dir_all(e.dst.join("d")).unwrap();
    std::fs::write(e.src.join("d/a"), b"the user's file in SOURCE\n").unwrap();
    std::fs::write(e.src.join("d/b"), b"another file\n").unwrap();
    std::fs::write(e.dst.join("d/a"), b"someone else's file at DEST\n").unwrap();
    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    out.expect(3, "a run that meets a file it did not write at DEST");
    let meta = std::fs::symlink_metadata(e.src.join("d/a")).unwrap();
    assert!(
        meta.is_file(),
        "the SOURCE file was replaced despite the conflict"
    );
    assert_eq!(
        std::fs::read(e.src.join("d/a")).unwrap(),
        b"the user's file in SOURCE\n"
    );
    assert_eq!(
        std::fs::read(e.dst.join("d/a")).unwrap(),
        b"someone else's file at DEST\n",
        "the DEST file evac did not write was changed"
    );
    assert!(std::fs::symlink_metadata(e.src.join("d/b"))
        .unwrap()
        .file_type()
        .is_symlink());
    let st = status(&e.journal);
    assert_eq!(count(&st, "failed"), 1, "{st:?}");
    let reasons = st.get("reasons").and_then(|r| r.as_array()).unwrap();
    assert!(
        reasons.iter().any(|r| {
            r.get("cause").and_then(|c| c.as_str()) == Some("conflict")
                && r.get("reason")
                    .and_then(|c| c.as_str())
                    .is_some_and(|t| t.contains("did not write"))
        }),
        "{st:?}"
    );
    let none = Manifest {
        root: PathBuf::new(),
        entries: Default::default(),
    };
    for root in [&e.src, &e.dst] {
        let left = leftover_temps(root, &none);
        assert!(left.is_empty(), "temporaries left: {left:?}");
    }
}
