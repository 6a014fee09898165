//! `evac recover` (phase 3): leftovers relocated with the data of copies planted under a search
//! directory, checked against the fingerprint first (an HSM md5, a decoy of the same size
//! refused, `--force` for content nothing is known of), with the leftover's metadata, never
//! opening the stub (inotify), and resumed after kill -9.

use crate::common::opens::Opens;
use crate::common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MARK: &str = "user.evacrc";
const HSM: &str = "--hsm=xattr:user.evacrc=released";

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// A stub at `rel` for the HSM mode above: `len` bytes of junk (its real data is "on tape"),
/// marked released, with a user attribute and its own mode and mtime. None if this filesystem
/// has no user attributes.
fn stub(src: &Path, rel: &[u8], len: usize) -> Option<PathBuf> {
    let p = path_of(src, rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, vec![b'#'; len]).unwrap();
    if !set_xattr(&p, MARK, b"released") {
        return None;
    }
    assert!(set_xattr(&p, "user.note", b"kept"));
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    unsafe {
        libc::chmod(c.as_ptr(), 0o640);
        let ts = [
            libc::timespec {
                tv_sec: 1_500_000_000,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 1_500_000_000,
                tv_nsec: 123_456_789,
            },
        ];
        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0);
    }
    Some(p)
}

fn md5_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("md5sum");
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

/// A tsv0 listing: the seven fields, NUL-terminated, raw path bytes.
fn listing(p: &Path, entries: &[(&[u8], usize, String)]) {
    let mut v = Vec::new();
    for (path, size, md5) in entries {
        for f in [
            path.to_vec(),
            b"staged_out".to_vec(),
            b"1".to_vec(),
            b"VOL1".to_vec(),
            b"7".to_vec(),
            size.to_string().into_bytes(),
            format!("md5:{md5}").into_bytes(),
        ] {
            v.extend_from_slice(&f);
            v.push(0);
        }
    }
    std::fs::write(p, v).unwrap();
}

fn j_args<'a>(e: &'a Env, rest: &[&'a OsStr]) -> Vec<&'a OsStr> {
    let mut v = vec![
        OsStr::new("recover"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ];
    v.extend_from_slice(rest);
    v
}

/// Phase 1 leaves the stubs; the listing and `evac fingerprint` give their fingerprints.
fn phase_one_and_fingerprint(e: &Env, backup: &Path, list: &[(&[u8], usize, String)]) {
    evac_run(&e.src, &e.dst, &e.journal, &[HSM]).expect(3, "phase 1 leaves the stubs");
    let lp = e.tmp.path().join("listing.tsv0");
    listing(&lp, list);
    evac([
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("tsv0"),
        OsStr::new("-q"),
        lp.as_os_str(),
    ])
    .expect(0, "hsm import");
    let o = evac([
        OsStr::new("fingerprint"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--search"),
        backup.as_os_str(),
        OsStr::new("-q"),
    ]);
    assert!(matches!(o.code(), 0 | 3), "{}", o.dump());
}

#[test]
fn leftovers_recovered_from_checked_copies_with_their_own_metadata_never_opening_a_stub() {
    let _gate = suite_gate!();
    let e = env();
    let weird = weird_names().into_iter().find(|n| n.len() > 3).unwrap();
    let one: &[u8] = b"a/one.dat";
    let mut odd = b"b/".to_vec();
    odd.extend_from_slice(&weird);
    let two: &[u8] = b"c/two.dat";
    let (t1, t_odd, t2) = (content(1, 70_000), content(2, 33_000), content(3, 5_000));
    let Some(p1) = stub(&e.src, one, t1.len()) else {
        println!(
            "skipped: this filesystem ({}) has no user attributes",
            e.src.display()
        );
        return;
    };
    let p_odd = stub(&e.src, &odd, t_odd.len()).unwrap();
    let p2 = stub(&e.src, two, t2.len()).unwrap();
    std::fs::write(e.src.join("plain.txt"), b"resident").unwrap();
    let before = std::fs::symlink_metadata(&p1).unwrap();
    // The copies, planted: renamed and moved; a decoy of one.dat's size with other content.
    let backup = e.tmp.path().join("backup");
    for (rel, data) in [
        ("restore/x/renamed.bin", &t1),
        ("salvage/odd-name.bin", &t_odd),
        ("snap/c/two.dat", &t2),
        ("decoy/one.dat", &content(9, 70_000)),
    ] {
        let p = backup.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    phase_one_and_fingerprint(
        &e,
        &backup,
        &[
            (one, t1.len(), md5_hex(&t1)),
            (&odd, t_odd.len(), md5_hex(&t_odd)),
        ],
    );
    assert_eq!(count(&status(&e.journal), "staged_out"), 3);

    // A decoy is refused: its md5 is not the HSM's.
    let decoy = backup.join("decoy/one.dat");
    let o = evac(j_args(
        &e,
        &[p1.as_os_str(), OsStr::new("--from"), decoy.as_os_str()],
    ));
    o.expect(3, "a decoy");
    assert!(o.text().contains("md5 differs"), "{}", o.dump());
    assert!(!std::fs::symlink_metadata(&p1).unwrap().is_symlink());

    // Every exact candidate (the two with an HSM md5), the stubs watched.
    let opens = Opens::watch(&[&e.src]);
    let o = evac(j_args(&e, &[OsStr::new("--all-exact")]));
    o.expect(0, "recover --all-exact");
    let opened = opens.take();
    assert!(opened.is_empty(), "files in SOURCE opened: {opened:?}");
    for (p, rel, data) in [(&p1, one, &t1), (&p_odd, &odd[..], &t_odd)] {
        let md = std::fs::symlink_metadata(p).unwrap();
        assert!(md.is_symlink(), "{} is not a link", esc(rel));
        assert_eq!(std::fs::read_link(p).unwrap(), path_of(&e.dst, rel));
        assert_eq!(&std::fs::read(p).unwrap(), data, "{}", esc(rel));
    }
    // The copy has the leftover's metadata and attributes, not the HSM's marker.
    let copy = path_of(&e.dst, one);
    let md = std::fs::metadata(&copy).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    assert_eq!((md.uid(), md.gid()), (before.uid(), before.gid()));
    assert_eq!(get_xattr(&copy, "user.note").as_deref(), Some(&b"kept"[..]));
    assert_eq!(
        get_xattr(&copy, MARK),
        None,
        "the HSM's marker went to the copy"
    );

    // two.dat: nothing is known of its content; refused without --force, taken with it.
    let cand2 = backup.join("snap/c/two.dat");
    let o = evac(j_args(
        &e,
        &[p2.as_os_str(), OsStr::new("--from"), cand2.as_os_str()],
    ));
    o.expect(3, "no content known");
    assert!(o.text().contains("--force"), "{}", o.dump());
    assert!(!std::fs::symlink_metadata(&p2).unwrap().is_symlink());
    let opens = Opens::watch(&[&e.src]);
    evac(j_args(
        &e,
        &[
            OsStr::new("c/two.dat"),
            OsStr::new("--from"),
            cand2.as_os_str(),
            OsStr::new("--force"),
        ],
    ))
    .expect(0, "recover --force");
    assert!(opens.take().is_empty());
    assert_eq!(std::fs::read(&p2).unwrap(), t2);

    let st = status(&e.journal);
    assert_eq!(count(&st, "relocated"), 4);
    assert_eq!(count(&st, "staged_out"), 0);
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify after recovery");
}

#[test]
fn an_interrupted_recovery_resumes_without_loss() {
    let _gate = suite_gate!();
    let e = env();
    let backup = e.tmp.path().join("backup");
    let mut list = Vec::new();
    let names: Vec<Vec<u8>> = (0..6).map(|i| format!("d/s{i}.dat").into_bytes()).collect();
    let mut data = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let t = content(100 + i as u64, 20_000 + i * 1000);
        if stub(&e.src, n, t.len()).is_none() {
            println!("skipped: this filesystem has no user attributes");
            return;
        }
        let p = backup.join(format!("copy{i}.bin"));
        std::fs::create_dir_all(&backup).unwrap();
        std::fs::write(&p, &t).unwrap();
        data.push(t);
    }
    for (i, n) in names.iter().enumerate() {
        list.push((&n[..], data[i].len(), md5_hex(&data[i])));
    }
    phase_one_and_fingerprint(&e, &backup, &list);
    // Held after its first batch's swaps, before they are recorded: killed there.
    let mut bg = spawn_evac_env(
        j_args(
            &e,
            &[
                OsStr::new("--all-exact"),
                OsStr::new("--workers"),
                OsStr::new("1"),
            ],
        ),
        &[("EVAC_TEST_PAUSE_AFTER_SWAP", OsStr::new("20000"))],
    );
    wait_until("a swap", Duration::from_secs(60), || {
        names
            .iter()
            .any(|n| std::fs::symlink_metadata(path_of(&e.src, n)).is_ok_and(|m| m.is_symlink()))
    });
    assert!(bg.kill9(), "evac ended before the kill");
    // Going on with what was requested: no PATH, no --all-exact.
    evac(j_args(&e, &[])).expect(0, "recover, resumed");
    for (i, n) in names.iter().enumerate() {
        let p = path_of(&e.src, n);
        assert!(
            std::fs::symlink_metadata(&p).unwrap().is_symlink(),
            "{}",
            esc(n)
        );
        assert_eq!(std::fs::read(&p).unwrap(), data[i], "{}", esc(n));
    }
    assert_eq!(count(&status(&e.journal), "relocated"), 6);
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .expect(0, "verify");
    // Nothing left to do.
    let o = evac(j_args(&e, &[]));
    o.expect(0, "recover with nothing requested");
    assert!(
        o.stdout_str().contains("nothing to recover"),
        "{}",
        o.dump()
    );
}
