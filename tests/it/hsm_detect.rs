//! HSM detection in phase 1 (I4): stubs are told from metadata alone, recorded `staged_out` and
//! never opened (each stub is watched with inotify for any open or read), premigrated files are
//! relocated as resident, a file released while being copied is not swapped, and an operator's
//! state program that hangs does not hang evac.

use crate::common::*;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Counts opens and reads of some files (inotify IN_OPEN | IN_ACCESS), without opening them.
struct OpenWatch {
    fd: i32,
    names: Vec<(i32, PathBuf)>,
}

impl OpenWatch {
    fn new(paths: &[PathBuf]) -> OpenWatch {
        // SAFETY: plain syscalls; the fd is closed in Drop.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let mut names = Vec::new();
        for p in paths {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            let wd = unsafe {
                libc::inotify_add_watch(
                    fd,
                    c.as_ptr(),
                    libc::IN_OPEN | libc::IN_ACCESS | libc::IN_DONT_FOLLOW,
                )
            };
            assert!(
                wd >= 0,
                "inotify_add_watch {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            );
            names.push((wd, p.clone()));
        }
        OpenWatch { fd, names }
    }

    /// The watched files that were opened or read since, by path.
    fn touched(&self) -> Vec<PathBuf> {
        let mut buf = vec![0u8; 64 << 10];
        let mut out = Vec::new();
        loop {
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut off = 0usize;
            while off < n as usize {
                // struct inotify_event { int wd; u32 mask, cookie, len; char name[]; }
                let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
                if let Some((_, p)) = self.names.iter().find(|(w, _)| *w == wd) {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
                off += 16 + len;
            }
        }
        out
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// A stub as an HSM leaves it: the size kept, no data blocks.
fn stub(p: &Path, size: u64) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let f = std::fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
}

fn data(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn state_of(journal: &Path, rel: &str) -> (String, String) {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    c.query_row(
        "SELECT state, coalesce(reason, '') FROM files WHERE path = ?1",
        [rel.as_bytes()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap_or_else(|e| panic!("no journal row for {rel}: {e}"))
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

fn status_text(journal: &Path) -> String {
    evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
    ])
    .stdout_str()
}

#[test]
fn blocks_rule_stubs_are_never_opened_and_none_relocates_them() {
    let _gate = suite_gate!();
    let e = env();
    data(&e.src.join("a/real.txt"), b"resident data");
    stub(&e.src.join("a/stub.bin"), 1 << 20);
    stub(&e.src.join("b/deep/other stub"), 12345);
    data(&e.src.join("b/empty"), b"");
    let stubs = [e.src.join("a/stub.bin"), e.src.join("b/deep/other stub")];
    let watch = OpenWatch::new(&stubs);
    // The default is --hsm auto: no Lustre marker here, so the blocks rule decides.
    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    out.expect(3, "a run that leaves staged-out files");
    assert_eq!(
        watch.touched(),
        Vec::<PathBuf>::new(),
        "evac opened a stub (I4)"
    );
    for rel in ["a/stub.bin", "b/deep/other stub"] {
        let (state, why) = state_of(&e.journal, rel);
        assert_eq!(state, "staged_out", "{rel}: {why}");
        assert!(why.starts_with("staged out (blocks rule"), "{rel}: {why}");
        assert!(!is_link(&e.src.join(rel)), "{rel} was swapped");
        assert!(!e.dst.join(rel).exists(), "{rel} has a copy at DEST");
    }
    for rel in ["a/real.txt", "b/empty"] {
        assert_eq!(state_of(&e.journal, rel).0, "relocated", "{rel}");
    }
    let text = status_text(&e.journal);
    assert!(
        text.contains("2 files taken for HSM stubs by the blocks rule")
            && text.contains("rerun with --hsm none"),
        "status does not explain the blocks rule:\n{text}"
    );
    let st = status(&e.journal);
    assert_eq!(count(&st, "staged_out"), 2, "{st:?}");
    assert_eq!(
        st.get("hsm")
            .and_then(|h| h.get("staged_out_by_blocks_rule"))
            .and_then(|v| v.as_i64()),
        Some(2),
        "{st:?}"
    );
    drop(watch);

    // Without an HSM these are sparse files: --hsm none relocates them (holes kept), and the
    // choice is remembered by the journal for later runs.
    evac_run(&e.src, &e.dst, &e.journal, &["--hsm", "none"]).expect(0, "--hsm none");
    for rel in ["a/stub.bin", "b/deep/other stub"] {
        assert!(
            is_link(&e.src.join(rel)),
            "{rel} not relocated with --hsm none"
        );
        let m = std::fs::metadata(e.dst.join(rel)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::blocks(&m),
            0,
            "{rel}: holes not kept"
        );
    }
    stub(&e.src.join("c/later sparse"), 4096);
    evac_resume(&e.journal, &[]).expect(0, "a resume keeps --hsm none");
    assert!(is_link(&e.src.join("c/later sparse")));
}

#[test]
fn xattr_marker_decides_and_blocks_do_not() {
    let _gate = suite_gate!();
    let e = env();
    data(&e.src.join("s1"), b"a stub with a resident head");
    data(&e.src.join("r1"), b"plain");
    stub(&e.src.join("sparse"), 1 << 16);
    data(&e.src.join("other-value"), b"x");
    if let Err(err) = set_xattr(&e.src.join("s1"), "user.hsm", b"released") {
        eprintln!(
            "SKIP xattr_marker_decides_and_blocks_do_not: user xattrs unsupported here: {err}"
        );
        return;
    }
    set_xattr(&e.src.join("other-value"), "user.hsm", b"resident").unwrap();
    let watch = OpenWatch::new(&[e.src.join("s1")]);
    evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &["--hsm", "xattr:user.hsm=released"],
    )
    .expect(3, "xattr mode");
    assert!(
        watch.touched().is_empty(),
        "the marked stub was opened (I4)"
    );
    let (state, why) = state_of(&e.journal, "s1");
    assert_eq!(state, "staged_out", "{why}");
    assert!(why.contains("user.hsm=released"), "{why}");
    for rel in ["r1", "sparse", "other-value"] {
        assert_eq!(state_of(&e.journal, rel).0, "relocated", "{rel}");
    }
}

#[test]
fn lustre_hsm_attribute_released_archived_and_lost() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "lustre_hsm_attribute_released_archived_and_lost",
        "trusted.* attributes need CAP_SYS_ADMIN"
    );
    let attrs = |flags: u32, arch: u64| {
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&arch.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v
    };
    let e = env();
    stub(&e.src.join("released"), 70000);
    stub(&e.src.join("lost"), 5000);
    data(&e.src.join("archived"), b"premigrated: on disk and on tape");
    data(&e.src.join("dirty"), b"changed since archived");
    // HS_EXISTS 0x1, HS_DIRTY 0x2, HS_RELEASED 0x4, HS_ARCHIVED 0x8, HS_LOST 0x40
    for (rel, flags) in [
        ("released", 0x1 | 0x4 | 0x8),
        ("lost", 0x1 | 0x8 | 0x40 | 0x4),
        ("archived", 0x1 | 0x8),
        ("dirty", 0x1 | 0x2 | 0x8),
    ] {
        if let Err(err) = set_xattr(&e.src.join(rel), "trusted.hsm", &attrs(flags, 2)) {
            eprintln!("SKIP lustre_hsm_attribute_released_archived_and_lost: trusted.hsm cannot be set here: {err}");
            return;
        }
    }
    let watch = OpenWatch::new(&[e.src.join("released"), e.src.join("lost")]);
    evac_run(&e.src, &e.dst, &e.journal, &["--hsm", "lustre"]).expect(3, "lustre mode");
    assert!(
        watch.touched().is_empty(),
        "a released file was opened (I4)"
    );
    let (s, why) = state_of(&e.journal, "released");
    assert_eq!(s, "staged_out", "{why}");
    assert!(why.contains("Lustre: released, archive 2"), "{why}");
    let (s, why) = state_of(&e.journal, "lost");
    assert_eq!(s, "staged_out", "{why}");
    assert!(why.contains("data lost"), "{why}");
    for rel in ["archived", "dirty"] {
        assert_eq!(state_of(&e.journal, rel).0, "relocated", "{rel}");
        assert!(is_link(&e.src.join(rel)));
    }
    // auto finds the same marker (the released stub has no blocks, so auto looks at it).
    let e2 = env();
    stub(&e2.src.join("released"), 70000);
    set_xattr(
        &e2.src.join("released"),
        "trusted.hsm",
        &attrs(0x1 | 0x4 | 0x8, 7),
    )
    .unwrap();
    // A stub that keeps a resident head (some blocks, fewer than its size needs): auto still
    // reads the marker.
    let head = e2.src.join("with-head");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&head).unwrap();
        f.write_all(&content(5, 8192)).unwrap();
        f.set_len(1 << 20).unwrap();
    }
    set_xattr(&head, "trusted.hsm", &attrs(0x1 | 0x4 | 0x8, 7)).unwrap();
    let watch = OpenWatch::new(&[e2.src.join("released"), head.clone()]);
    evac_run(&e2.src, &e2.dst, &e2.journal, &[]).expect(3, "auto mode");
    assert!(watch.touched().is_empty(), "auto opened a Lustre stub (I4)");
    for rel in ["released", "with-head"] {
        let (s, why) = state_of(&e2.journal, rel);
        assert_eq!(s, "staged_out", "{rel}");
        assert!(why.contains("Lustre: released, archive 7"), "{rel}: {why}");
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn state_program_answers_in_batches_and_a_hung_one_is_killed() {
    let _gate = suite_gate!();
    let e = env();
    for i in 0..300 {
        let rel = if i % 7 == 0 {
            format!("d{}/stub{i}", i % 5)
        } else {
            format!("d{}/file{i}", i % 5)
        };
        data(&e.src.join(&rel), format!("content {i}").as_bytes());
    }
    let log = e.tmp.path().join("asked");
    let prog = script(
        e.tmp.path(),
        "hsm-state",
        &format!(
            "tr '\\000' '\\n' | while IFS= read -r p; do echo \"$p\" >> {log}; case \"$p\" in */stub*) echo staged_out;; */file1) echo premigrated;; *) echo resident;; esac; done",
            log = log.display()
        ),
    );
    let stubs: Vec<PathBuf> = (0..300)
        .filter(|i| i % 7 == 0)
        .map(|i| e.src.join(format!("d{}/stub{i}", i % 5)))
        .collect();
    let watch = OpenWatch::new(&stubs);
    let arg = format!("cmd:{}", prog.display());
    evac_run(&e.src, &e.dst, &e.journal, &["--hsm", &arg]).expect(3, "cmd mode");
    assert!(
        watch.touched().is_empty(),
        "a stub the program named was opened (I4)"
    );
    let asked = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        asked.lines().count(),
        300,
        "the program was asked once per file"
    );
    assert!(
        asked
            .lines()
            .all(|l| l.starts_with(e.src.to_str().unwrap())),
        "paths given to the program are absolute"
    );
    let st = status(&e.journal);
    assert_eq!(count(&st, "staged_out"), stubs.len() as i64, "{st:?}");
    assert_eq!(count(&st, "relocated"), 300 - stubs.len() as i64, "{st:?}");

    // A program that never answers: killed after --hsm-timeout, nothing opened, no hang.
    let e2 = env();
    for i in 0..20 {
        data(&e2.src.join(format!("f{i}")), b"x");
    }
    let hung = script(e2.tmp.path(), "hsm-hang", "sleep 600");
    let all: Vec<PathBuf> = (0..20).map(|i| e2.src.join(format!("f{i}"))).collect();
    let watch = OpenWatch::new(&all);
    let t0 = Instant::now();
    let out = evac_timeout(
        run_args(
            &e2.src,
            &e2.dst,
            &e2.journal,
            &[
                "--hsm",
                &format!("cmd:{}", hung.display()),
                "--hsm-timeout",
                "1",
            ],
        ),
        Duration::from_secs(60),
    );
    out.expect(3, "a run whose state program hangs");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        watch.touched().is_empty(),
        "files of unknown state were opened (I4)"
    );
    let (s, why) = state_of(&e2.journal, "f3");
    assert_eq!(s, "staged_out");
    assert!(
        why.contains("HSM state unknown") && why.contains("killed"),
        "{why}"
    );
}

#[test]
fn a_file_released_while_being_copied_is_not_swapped() {
    let _gate = suite_gate!();
    let e = env();
    let big = e.src.join("big.dat");
    let len = 192usize << 20;
    data(&big, &content(77, len));
    data(&e.src.join("small"), b"small");
    // The "HSM": at evac's first read of the file, it releases it (all blocks freed, size kept).
    let watch = OpenWatch::new(std::slice::from_ref(&big));
    let big2 = big.clone();
    let released = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if !watch.touched().is_empty() {
                let f = std::fs::OpenOptions::new().write(true).open(&big2).unwrap();
                use std::os::fd::AsRawFd;
                let r = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        0,
                        len as i64,
                    )
                };
                assert_eq!(r, 0, "punch: {}", std::io::Error::last_os_error());
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    });
    let out = evac_run(&e.src, &e.dst, &e.journal, &["--workers", "1"]);
    assert!(released.join().unwrap(), "evac never read the file");
    out.expect(3, "a run during which the HSM released a file");
    assert!(!is_link(&big), "the released file was swapped for a link");
    assert!(
        !e.dst.join("big.dat").exists(),
        "a copy of the stub's zeros stands at DEST"
    );
    let (s, why) = state_of(&e.journal, "big.dat");
    assert_eq!(s, "staged_out", "{why}");
    assert_eq!(state_of(&e.journal, "small").0, "relocated");
}
