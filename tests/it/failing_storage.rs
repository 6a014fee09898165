//! Failing storage (root): DEST filling up, DEST refusing writes in some directories, DEST that
//! stops answering (every open held by a fanotify permission listener that never answers; a
//! syncfs that never returns), SOURCE reads failing with EIO/EPERM, and files the kernel
//! refuses to replace (chattr +i / +a on ext4).
//!
//! Oracle for each case: the run reports the affected files with path and operation and
//! carries on with the others; every SOURCE path is still its original (unchanged) or a link to
//! a complete copy; no temporaries are left except where a blocked call was abandoned (and the
//! next run removes those); once the fault is cleared, a resume finishes with exit 0 and the
//! full relocation oracle. Each case prints FIGURES: faults injected, files affected, data lost.

use crate::common::mounts::*;
use crate::common::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Fault injection helpers (each undoes itself when dropped, test failure or not)
// ---------------------------------------------------------------------------

const FAN_ALLOW: u32 = 0x01;
const FAN_DENY: u32 = 0x02;
/// Linux 6.14 pre-content hook (not in the libc crate yet).
const FAN_PRE_ACCESS: u64 = 0x0010_0000;

/// `FAN_DENY_ERRNO(err)` (6.14+): deny with an errno of our choice in the top byte.
fn fan_deny_errno(errno: i32) -> u32 {
    FAN_DENY | (((errno as u32) & 0xff) << 24)
}

/// A fanotify permission listener of the test's own, on one mount: it answers every event
/// (denying the chosen inodes with `deny`), or, once `hold()` is called, answers nothing more so
/// that every call waiting on it blocks. Dropping it closes the group, which lets every waiting
/// call go on.
struct Fan {
    stop: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    denied: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Fan {
    fn start(
        path: &Path,
        class: u32,
        mask: u64,
        mark: u32,
        deny: u32,
        victims: HashSet<(u64, u64)>,
    ) -> Result<Fan, String> {
        let fd = unsafe { libc::fanotify_init(class | libc::FAN_CLOEXEC, libc::O_RDONLY as u32) };
        if fd < 0 {
            return Err(format!(
                "fanotify_init: {}",
                std::io::Error::last_os_error()
            ));
        }
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let r = unsafe {
            libc::fanotify_mark(
                fd,
                libc::FAN_MARK_ADD | mark,
                mask,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(format!("fanotify_mark {}: {e}", path.display()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let denied = Arc::new(AtomicU64::new(0));
        let (s, h, a, d) = (stop.clone(), hold.clone(), answered.clone(), denied.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while !s.load(Ordering::SeqCst) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if unsafe { libc::poll(&mut p, 1, 20) } <= 0 || h.load(Ordering::SeqCst) {
                    continue;
                }
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    continue;
                }
                let mut off = 0usize;
                while off + 24 <= n as usize {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                    let efd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    if efd >= 0 {
                        let mut st: libc::stat = unsafe { std::mem::zeroed() };
                        let known = unsafe { libc::fstat(efd, &mut st) } == 0;
                        let bad = known && victims.contains(&(st.st_dev, st.st_ino));
                        let answer = if bad { deny } else { FAN_ALLOW };
                        let resp = libc::fanotify_response {
                            fd: efd,
                            response: answer,
                        };
                        unsafe {
                            libc::write(
                                fd,
                                (&resp as *const libc::fanotify_response).cast(),
                                std::mem::size_of::<libc::fanotify_response>(),
                            );
                            libc::close(efd);
                        }
                        a.fetch_add(1, Ordering::SeqCst);
                        if bad {
                            d.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    off += len.max(24);
                }
            }
            // Closing the group lets every call still waiting on it go on.
            unsafe { libc::close(fd) };
        });
        Ok(Fan {
            stop,
            hold,
            answered,
            denied,
            thread: Some(thread),
        })
    }

    /// From now on answer nothing: every call that needs an answer blocks.
    fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }
}

impl Drop for Fan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// chattr flags set by a test, cleared again when dropped.
#[derive(Default)]
struct Attrs(Vec<PathBuf>);

impl Attrs {
    fn set(&mut self, p: &Path, flag: &str) {
        let o = Command::new("chattr")
            .arg(format!("+{flag}"))
            .arg(p)
            .output()
            .expect("run chattr");
        assert!(
            o.status.success(),
            "chattr +{flag} {}: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        self.0.push(p.to_path_buf());
    }

    fn clear(&mut self) {
        for p in self.0.drain(..) {
            let _ = Command::new("chattr").arg("-ia").arg(&p).status();
        }
    }
}

impl Drop for Attrs {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Whether lsattr still shows `flag` ('i' or 'a') on `p`.
fn has_attr(p: &Path, flag: char) -> bool {
    let o = Command::new("lsattr")
        .arg("-d")
        .arg(p)
        .output()
        .expect("run lsattr");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .is_some_and(|f| f.contains(flag))
}

/// `dir` bind-mounted onto itself read-only (undone when dropped).
fn read_only_bind(dir: &Path) -> Result<Mounted, String> {
    mount(&[OsStr::new("--bind"), dir.as_os_str(), dir.as_os_str()])?;
    let g = Mounted(dir.to_path_buf());
    mount(&[
        OsStr::new("-o"),
        OsStr::new("remount,bind,ro"),
        dir.as_os_str(),
    ])?;
    Ok(g)
}

// ---------------------------------------------------------------------------
// The oracle for a run that stopped part way
// ---------------------------------------------------------------------------

/// Every regular file of `before`, as it is now: kept (still the original, unchanged, with no
/// copy at DEST) or relocated (our link to a complete, identical copy); anything else is a
/// problem. Temporaries are listed apart, since a test of abandoned calls expects some.
struct Interim {
    kept: BTreeSet<Vec<u8>>,
    relocated: BTreeSet<Vec<u8>>,
    problems: Vec<String>,
    src_temps: Vec<Vec<u8>>,
    dst_temps: Vec<Vec<u8>>,
}

fn interim(before: &Manifest, src: &Path, dst: &Path) -> Interim {
    let s = Manifest::scan(src);
    let d = Manifest::scan(dst);
    let prefix = bytes_of(dst);
    let mut r = Interim {
        kept: BTreeSet::new(),
        relocated: BTreeSet::new(),
        problems: Vec::new(),
        src_temps: s.temp_names(),
        dst_temps: d.temp_names(),
    };
    for (rel, b) in before.files() {
        match s.get(rel) {
            Some(a) if a.kind == Kind::File => {
                if (a.ino, a.size, a.hash, a.mode, a.mtime)
                    != (b.ino, b.size, b.hash, b.mode, b.mtime)
                {
                    r.problems
                        .push(format!("{}: changed in SOURCE, not relocated", short(rel)));
                }
                if d.get(rel).is_some_and(|x| x.kind == Kind::File) {
                    r.problems.push(format!(
                        "{}: not relocated, yet a copy stands at DEST (half done)",
                        short(rel)
                    ));
                }
                r.kept.insert(rel.clone());
            }
            Some(a) if a.kind == Kind::Symlink => {
                if a.target.as_deref() != Some(&join_rel(&prefix, rel)[..]) {
                    r.problems
                        .push(format!("{}: a link, but not ours", short(rel)));
                    continue;
                }
                match d.get(rel) {
                    Some(x)
                        if x.kind == Kind::File
                            && (x.size, x.hash, x.mode, x.mtime, x.uid, x.gid)
                                == (b.size, b.hash, b.mode, b.mtime, b.uid, b.gid) =>
                    {
                        r.relocated.insert(rel.clone());
                    }
                    other => r.problems.push(format!(
                        "{}: links to an incomplete or different copy ({:?})",
                        short(rel),
                        other.map(|x| (x.kind, x.size))
                    )),
                }
            }
            other => r.problems.push(format!(
                "{}: is {:?} in SOURCE",
                short(rel),
                other.map(|x| x.kind)
            )),
        }
    }
    r
}

/// (path, reason) of the journal's files in `state`.
fn journal_rows(journal: &Path, state: &str) -> BTreeMap<Vec<u8>, String> {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = c
        .prepare("SELECT path, coalesce(reason, '') FROM files WHERE state = ?1")
        .unwrap();
    let rows = st
        .query_map([state], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

fn status_text(journal: &Path, list: Option<&str>) -> String {
    let mut args = vec![
        "status".into(),
        "--journal".into(),
        journal.as_os_str().to_owned(),
    ];
    if let Some(s) = list {
        args.push("--list".into());
        args.push(s.into());
    }
    let o = evac(args);
    o.expect(0, "status");
    o.stdout_str()
}

fn storage_figures(case: &str, faults: &str, affected: usize, it: &Interim) {
    figures(
        &format!("failing_storage {case}"),
        &format!(
            "faults injected: {faults}; files affected: {affected}; data lost: {} ({} relocated, {} kept intact, {} problems)",
            it.problems.len(),
            it.relocated.len(),
            it.kept.len(),
            it.problems.len()
        ),
    );
}

#[track_caller]
fn assert_clean(what: &str, it: &Interim, out: &Out) {
    if !it.problems.is_empty() || !it.src_temps.is_empty() {
        panic!(
            "{what}: {:?}\nSOURCE temporaries: {:?}\n{}",
            it.problems,
            it.src_temps.iter().map(|t| short(t)).collect::<Vec<_>>(),
            out.dump()
        );
    }
}

/// The run's own error lines, for the record.
fn show_errors(case: &str, out: &Out) {
    for l in out
        .stderr_str()
        .lines()
        .filter(|l| l.contains("not answering") || l.contains("error") || l.contains("is full"))
    {
        eprintln!("{case}: {l}");
    }
}

fn rels_in(before: &Manifest, dir: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut p = dir.to_vec();
    p.push(b'/');
    before
        .files()
        .map(|(r, _)| r)
        .filter(|r| r.starts_with(&p))
        .cloned()
        .collect()
}

fn stat_id(p: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

// ---------------------------------------------------------------------------
// 1. DEST fills up
// ---------------------------------------------------------------------------

#[test]
fn dest_full_defers_the_rest_then_a_resume_finishes() {
    let _gate = suite_gate!();
    const T: &str = "dest_full_defers_the_rest_then_a_resume_finishes";
    skip_unless_root!(T, "it mounts a size-limited tmpfs as DEST");
    let e = env();
    let spec = TreeSpec {
        hardlinks: true,
        ..TreeSpec::plain(600, 9101)
    };
    build_tree(&e.src, &spec);
    let before = Manifest::scan(&e.src);
    let dst = e.tmp.path().join("dstfs");
    let fs = match tmpfs(&dst, "4m") {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot mount a tmpfs: {m}"),
    };
    let workers = 2;
    let out = evac_run(
        &e.src,
        &dst,
        &e.journal,
        &["--workers", "2", "--batch-files", "32"],
    );
    out.expect(3, "a run onto a DEST that fills up");
    show_errors(T, &out);
    assert!(
        out.stderr_str().contains("is full"),
        "the run does not say DEST is full\n{}",
        out.dump()
    );

    let it = interim(&before, &e.src, &dst);
    assert_clean("after DEST filled up", &it, &out);
    assert!(
        it.dst_temps.is_empty(),
        "partial temporaries left at DEST: {:?}",
        it.dst_temps.iter().map(|t| short(t)).collect::<Vec<_>>()
    );
    let deferred = journal_rows(&e.journal, "deferred");
    let failed = journal_rows(&e.journal, "failed");
    assert!(
        failed.is_empty(),
        "files failed instead of deferred: {failed:?}"
    );
    assert!(
        !it.relocated.is_empty() && !deferred.is_empty(),
        "expected some files relocated and some deferred: {} and {}",
        it.relocated.len(),
        deferred.len()
    );
    for (p, why) in &deferred {
        assert!(
            why.starts_with("destination full"),
            "{}: deferred for another reason: {why}",
            short(p)
        );
    }
    assert_eq!(
        deferred.keys().cloned().collect::<BTreeSet<_>>(),
        it.kept,
        "the deferred files are not exactly the files left in SOURCE"
    );
    // The files that met ENOSPC themselves: at most one per worker, the ones already copying
    // when DEST filled up; every other file was deferred without being tried.
    let hit: Vec<&String> = deferred
        .values()
        .filter(|w| !w.contains("not attempted"))
        .collect();
    assert!(
        !hit.is_empty() && hit.len() <= workers,
        "{} files were tried against the full DEST (want 1..={workers}): {hit:?}",
        hit.len()
    );
    assert!(
        hit.iter().all(|w| w.contains("No space left on device")),
        "{hit:?}"
    );
    let text = status_text(&e.journal, None);
    assert!(
        text.contains("destination full"),
        "status does not say why:\n{text}"
    );
    let listed = status_text(&e.journal, Some("deferred"));
    assert!(
        listed.lines().count() == deferred.len()
            && listed.lines().all(|l| l.contains("\tdestination full")),
        "status --list deferred does not give the reason for each file:\n{listed}"
    );
    storage_figures(
        T,
        &format!(
            "a 4 MiB DEST for {} bytes; files that met ENOSPC: {}",
            before.file_bytes_distinct(),
            hit.len()
        ),
        deferred.len(),
        &it,
    );

    // More room: remount the same tmpfs larger, and resume.
    mount(&[
        OsStr::new("-o"),
        OsStr::new("remount,size=64m"),
        dst.as_os_str(),
    ])
    .unwrap_or_else(|m| panic!("remount {} larger: {m}", dst.display()));
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume after DEST was grown");
    check_relocated(&before, &e.src, &dst, None);
    drop(fs);
}

// ---------------------------------------------------------------------------
// 2. DEST refuses writes in some directories
// ---------------------------------------------------------------------------

#[test]
fn dest_io_errors_fail_only_their_files() {
    let _gate = suite_gate!();
    const T: &str = "dest_io_errors_fail_only_their_files";
    skip_unless_root!(
        T,
        "it loop-mounts ext4, uses chattr +i and a read-only bind mount"
    );
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(200, 9201));
    let before = Manifest::scan(&e.src);
    let mp = e.tmp.path().join("dstfs");
    let _fs = match loop_fs(&e.tmp.path().join("dst.img"), &mp, "ext4", 64) {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot loop-mount an ext4 image: {m}"),
    };
    let dst = mp.join("dst");
    // Two DEST directories that will not take files: one immutable, one read-only.
    let (imm, ro) = (b"t/d00/s00".as_slice(), b"t/d01/s00".as_slice());
    for d in [imm, ro] {
        std::fs::create_dir_all(path_of(&dst, d)).unwrap();
    }
    let mut attrs = Attrs::default();
    attrs.set(&path_of(&dst, imm), "i");
    let bind = match read_only_bind(&path_of(&dst, ro)) {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot make a read-only bind mount: {m}"),
    };
    let mut victims = rels_in(&before, imm);
    let ro_files = rels_in(&before, ro);
    assert!(!victims.is_empty() && !ro_files.is_empty());
    victims.extend(ro_files.iter().cloned());

    let out = evac_run(&e.src, &dst, &e.journal, &["--workers", "2"]);
    out.expect(3, "a run onto a DEST with two unwritable directories");
    let failed = journal_rows(&e.journal, "failed");
    assert_eq!(
        failed.keys().cloned().collect::<BTreeSet<_>>(),
        victims,
        "the failed files are not exactly those under the unwritable DEST directories\n{}",
        out.dump()
    );
    for (p, why) in &failed {
        let ok = if p.starts_with(imm) {
            why.contains("DEST directory is immutable")
        } else {
            why.contains("create DEST temporary") && why.contains("Read-only file system")
        };
        assert!(
            ok,
            "{}: reason does not name the operation: {why}",
            short(p)
        );
    }
    let stderr = out.stderr_str();
    for d in [imm, ro] {
        let one = victims.iter().find(|v| v.starts_with(d)).unwrap();
        assert!(
            stderr.contains(&format!("\"{}\"", esc(one))),
            "stderr does not name {}\n{}",
            short(one),
            out.dump()
        );
    }
    let it = interim(&before, &e.src, &dst);
    assert_clean("after DEST refused some files", &it, &out);
    assert!(it.dst_temps.is_empty(), "{:?}", it.dst_temps);
    assert_eq!(it.kept, victims);
    assert_eq!(it.relocated.len(), before.file_count() - victims.len());
    storage_figures(
        T,
        "1 immutable DEST directory (EPERM), 1 read-only bind mount (EROFS)",
        failed.len(),
        &it,
    );

    // Faults cleared: the resume relocates the rest.
    attrs.clear();
    drop(bind);
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume once DEST takes files again");
    check_relocated(&before, &e.src, &dst, None);
}

// ---------------------------------------------------------------------------
// 3. DEST stops answering
// ---------------------------------------------------------------------------

const OP_TIMEOUT: &str = "4";

#[test]
fn dest_that_stops_answering_ends_the_run() {
    let _gate = suite_gate!();
    const T: &str = "dest_that_stops_answering_ends_the_run";
    skip_unless_root!(T, "it mounts a tmpfs and holds its opens with fanotify");
    let e = env();
    let spec = TreeSpec {
        max_size: 8 << 10,
        ..TreeSpec::plain(400, 9301)
    };
    build_tree(&e.src, &spec);
    let mut before = Manifest::scan(&e.src);
    let dst = e.tmp.path().join("dstfs");
    let _fs = match tmpfs(&dst, "64m") {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot mount a tmpfs: {m}"),
    };
    let fan = match Fan::start(
        &dst,
        libc::FAN_CLASS_CONTENT,
        libc::FAN_OPEN_PERM,
        libc::FAN_MARK_MOUNT,
        FAN_DENY,
        HashSet::new(),
    ) {
        Ok(f) => f,
        Err(m) => skip!(T, "no fanotify permission events here: {m}"),
    };
    let mut bg = spawn_evac(run_args(
        &e.src,
        &dst,
        &e.journal,
        &[
            "--workers",
            "2",
            "--batch-files",
            "16",
            "--op-timeout",
            OP_TIMEOUT,
        ],
    ));
    let going = wait_status(&e.journal, &mut bg, Duration::from_secs(60), |st| {
        count(st, "relocated") >= 32
    });
    assert!(going, "the run ended before DEST was made to hang");
    fan.hold();
    let held_at = Instant::now();
    let out = bg.wait_for(Duration::from_secs(60));
    let took = held_at.elapsed();
    out.expect(1, "a run whose DEST stopped answering");
    let stderr = out.stderr_str();
    assert!(
        stderr.contains("storage not answering") && stderr.contains("blocked in open in"),
        "the run does not say which operation hung\n{}",
        out.dump()
    );
    assert!(
        stderr.contains(&esc(&bytes_of(&dst))),
        "the messages do not name DEST\n{}",
        out.dump()
    );
    let secs: f64 = OP_TIMEOUT.parse().unwrap();
    assert!(
        took < Duration::from_secs_f64(3.0 * secs + 10.0),
        "took {took:?} to give up after DEST stopped answering"
    );
    let deferred = journal_rows(&e.journal, "deferred");
    let abandoned: BTreeMap<&Vec<u8>, &String> = deferred
        .iter()
        .filter(|(_, w)| w.starts_with("storage not answering: gave up"))
        .collect();
    assert!(
        (1..=4).contains(&abandoned.len()),
        "workers given up on: {abandoned:?}\n{}",
        out.dump()
    );
    for (p, w) in &abandoned {
        assert!(
            stderr.contains(&format!("\"{}\"", esc(p))) && w.contains("blocked in open in"),
            "{}: {w}",
            short(p)
        );
    }
    show_errors(T, &out);
    let st = status(&e.journal);
    let relocated_then = count(&st, "relocated");

    // Answer again (the listener goes away), then look at both trees.
    drop(fan);
    let it = interim(&before, &e.src, &dst);
    assert_clean("after DEST stopped answering", &it, &out);
    assert_eq!(it.relocated.len() as i64, relocated_then);
    // The only DEST temporaries are those of the opens that were abandoned.
    let temp_ids: BTreeSet<i64> = it.dst_temps.iter().map(|t| temp_id(basename(t))).collect();
    let abandoned_ids: BTreeSet<i64> = abandoned.keys().map(|p| file_id(&e.journal, p)).collect();
    assert!(
        temp_ids.is_subset(&abandoned_ids),
        "DEST temporaries {:?} of files not abandoned {abandoned_ids:?}",
        it.dst_temps.iter().map(|t| short(t)).collect::<Vec<_>>()
    );
    storage_figures(
        T,
        &format!(
            "every open at DEST held after {relocated_then} files; {} workers given up on; exit after {:.1} s; {} deferred, {} never dispatched",
            abandoned.len(),
            took.as_secs_f64(),
            deferred.len(),
            count(&st, "pending")
        ),
        it.kept.len(),
        &it,
    );

    // One abandoned file is deleted before the resume: its DEST temporary must still go.
    let gone = (*abandoned.keys().next().unwrap()).clone();
    std::fs::remove_file(path_of(&e.src, &gone)).unwrap();
    before.entries.remove(&gone);
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume once DEST answers again");
    check_relocated(&before, &e.src, &dst, None);
}

#[test]
fn coordinator_blocked_at_dest_exits_instead_of_hanging() {
    let _gate = suite_gate!();
    const T: &str = "coordinator_blocked_at_dest_exits_instead_of_hanging";
    skip_unless_root!(T, "it mounts a tmpfs and holds its opens with fanotify");
    // SOURCE holds only a link to a copy already at DEST with no hash on record: the run's
    // last step opens that copy to hash it, on the coordinating thread itself, and the open
    // never returns. No worker is involved; the deadman has to end the run.
    let e = env();
    let dst = e.tmp.path().join("dstfs");
    let _fs = match tmpfs(&dst, "8m") {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot mount a tmpfs: {m}"),
    };
    std::fs::write(dst.join("a.dat"), content(9351, 5000)).unwrap();
    std::os::unix::fs::symlink(dst.join("a.dat"), e.src.join("a.dat")).unwrap();
    let fan = match Fan::start(
        &dst,
        libc::FAN_CLASS_CONTENT,
        libc::FAN_OPEN_PERM,
        libc::FAN_MARK_MOUNT,
        FAN_DENY,
        HashSet::new(),
    ) {
        Ok(f) => f,
        Err(m) => skip!(T, "no fanotify permission events here: {m}"),
    };
    fan.hold();
    let start = Instant::now();
    let out = spawn_evac(run_args(
        &e.src,
        &dst,
        &e.journal,
        &["--op-timeout", OP_TIMEOUT],
    ))
    .wait_for(Duration::from_secs(60));
    let took = start.elapsed();
    out.expect(1, "a run whose coordinating thread is blocked at DEST");
    show_errors(T, &out);
    let stderr = out.stderr_str();
    assert!(
        stderr.contains("coordinating thread has been blocked")
            && stderr.contains(&format!("open in \"{}\"", esc(&bytes_of(&dst)))),
        "the run does not say where it was blocked\n{}",
        out.dump()
    );
    let secs: f64 = OP_TIMEOUT.parse().unwrap();
    assert!(
        took < Duration::from_secs_f64(2.0 * secs + 10.0),
        "took {took:?} to give up"
    );
    drop(fan);
    // Recorded where it could be: the coordinator held a journal transaction while it was
    // blocked, so the run's own record of the exit may be missing; the next run copes either way.
    let c = rusqlite::Connection::open_with_flags(
        &e.journal,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let exit: Option<i64> = c
        .query_row(
            "SELECT exit_code FROM runs ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(c);
    assert!(matches!(exit, None | Some(1)), "run recorded exit {exit:?}");
    figures(
        &format!("failing_storage {T}"),
        &format!(
            "faults injected: every open at DEST held from the start; files affected: 1; data lost: 0; exit 1 after {:.1} s; journal record of the exit: {}",
            took.as_secs_f64(),
            if exit.is_some() { "written" } else { "not written (journal busy)" }
        ),
    );
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume once DEST answers");
    assert_eq!(count(&status(&e.journal), "relocated"), 1);
    let v = evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
    ]);
    v.expect(0, "verify after the resume hashed the adopted copy");
}

/// Files recorded as relocated once, now deferred because a syncfs of DEST did not return.
fn put_back_after_swap(journal: &Path) -> BTreeSet<Vec<u8>> {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = c
        .prepare(
            "SELECT path FROM files f WHERE state = 'deferred' AND reason LIKE '%syncfs%'
               AND EXISTS (SELECT 1 FROM events e WHERE e.file_id = f.id AND e.event = 'relocated')",
        )
        .unwrap();
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// The file id a temporary name carries: `.evac-<journal id>-<file id>.<suffix>`.
fn temp_id(name: &[u8]) -> i64 {
    let s = String::from_utf8_lossy(&name[23..]).into_owned();
    s.split('.').next().unwrap().parse().unwrap()
}

fn file_id(journal: &Path, path: &[u8]) -> i64 {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    c.query_row("SELECT id FROM files WHERE path = ?1", [path], |r| r.get(0))
        .unwrap()
}

#[test]
fn syncfs_that_does_not_return_ends_the_run() {
    let _gate = suite_gate!();
    const T: &str = "syncfs_that_does_not_return_ends_the_run";
    // No filesystem of the test's own can be made to hang a syncfs on demand (no device
    // mapper here), so the engine's test knob stands in: from the 3rd syncfs of DEST on, the
    // call never returns. The first batch is then relocated for good, the second was swapped
    // but its DEST names were never made durable, the third is copied but not placed.
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(300, 9401));
    let before = Manifest::scan(&e.src);
    let args = run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--workers",
            "2",
            "--batch-files",
            "20",
            "--op-timeout",
            OP_TIMEOUT,
        ],
    );
    let start = Instant::now();
    let out = spawn_evac_env(args, &[("EVAC_TEST_STALL_SYNCFS", OsStr::new("3"))])
        .wait_for(Duration::from_secs(60));
    out.expect(1, "a run whose syncfs of DEST never returns");
    let took = start.elapsed();
    let stderr = out.stderr_str();
    assert!(
        stderr.contains("syncfs of DEST") && stderr.contains("did not return within"),
        "the run does not say the syncfs hung\n{}",
        out.dump()
    );
    show_errors(T, &out);
    let it = interim(&before, &e.src, &e.dst);
    assert_clean("after a syncfs of DEST hung", &it, &out);
    assert!(it.dst_temps.is_empty(), "{:?}", it.dst_temps);
    let relocated: BTreeSet<Vec<u8>> = journal_rows(&e.journal, "relocated").into_keys().collect();
    assert_eq!(
        relocated, it.relocated,
        "the journal's relocated files are not the links in SOURCE"
    );
    assert!(!relocated.is_empty(), "the first batch was not relocated");
    // The batch that was swapped when the syncfs hung: its DEST names were never proven
    // durable, so its originals were put back (they are in `kept`, checked intact above).
    let put_back = put_back_after_swap(&e.journal);
    assert!(
        !put_back.is_empty() && put_back.is_subset(&it.kept),
        "the swapped batch was not put back: {} files, {:?}",
        put_back.len(),
        put_back
            .difference(&it.kept)
            .map(|p| short(p))
            .collect::<Vec<_>>()
    );
    let left: BTreeMap<Vec<u8>, String> = journal_rows(&e.journal, "deferred")
        .into_iter()
        .chain(journal_rows(&e.journal, "failed"))
        .collect();
    assert!(
        left.values().any(|w| w.contains("syncfs")),
        "no file gives the hung syncfs as its reason: {left:?}"
    );
    storage_figures(
        T,
        &format!(
            "every syncfs of DEST from the 3rd on never returns; exit after {:.1} s; {} swapped files put back",
            took.as_secs_f64(),
            put_back.len()
        ),
        left.len(),
        &it,
    );
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume with a DEST whose syncfs returns");
    check_relocated(&before, &e.src, &e.dst, None);
}

// ---------------------------------------------------------------------------
// 4. SOURCE read errors
// ---------------------------------------------------------------------------

#[test]
fn source_read_errors_fail_only_their_files() {
    let _gate = suite_gate!();
    const T: &str = "source_read_errors_fail_only_their_files";
    skip_unless_root!(T, "it loop-mounts ext4 and denies reads with fanotify");
    let e = env();
    let mp = e.tmp.path().join("srcfs");
    let _fs = match loop_fs(&e.tmp.path().join("src.img"), &mp, "ext4", 64) {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot loop-mount an ext4 image: {m}"),
    };
    let src = mp.join("src");
    build_tree(&src, &TreeSpec::plain(120, 9501));
    let before = Manifest::scan(&src);
    let victims: BTreeSet<Vec<u8>> = before
        .files()
        .filter(|(_, f)| f.size >= 4096)
        .map(|(r, _)| r.clone())
        .step_by(17)
        .take(4)
        .collect();
    assert_eq!(victims.len(), 4);
    let ids: HashSet<(u64, u64)> = victims.iter().map(|v| stat_id(&path_of(&src, v))).collect();
    // Linux 6.14+ pre-content hooks can fail a read with EIO, as a bad disk would; older
    // kernels can only deny a read (EPERM).
    let (fan, how) = match Fan::start(
        &mp,
        libc::FAN_CLASS_PRE_CONTENT,
        FAN_PRE_ACCESS,
        libc::FAN_MARK_MOUNT,
        fan_deny_errno(libc::EIO),
        ids.clone(),
    ) {
        Ok(f) => (f, "EIO (fanotify pre-content)"),
        Err(pre) => match Fan::start(
            &mp,
            libc::FAN_CLASS_CONTENT,
            libc::FAN_ACCESS_PERM,
            libc::FAN_MARK_MOUNT,
            FAN_DENY,
            ids,
        ) {
            Ok(f) => (f, "EPERM (fanotify access permission)"),
            Err(m) => skip!(T, "no fanotify permission events here: {pre}; {m}"),
        },
    };
    let out = evac_run(&src, &e.dst, &e.journal, &["--workers", "2"]);
    out.expect(3, "a run where some SOURCE reads fail");
    let denied = fan.denied.load(Ordering::SeqCst);
    let answered = fan.answered.load(Ordering::SeqCst);
    drop(fan);
    let failed = journal_rows(&e.journal, "failed");
    assert_eq!(
        failed.keys().cloned().collect::<BTreeSet<_>>(),
        victims,
        "the failed files are not exactly those whose reads failed\n{}",
        out.dump()
    );
    for (p, why) in &failed {
        assert!(
            why.starts_with("read SOURCE: ")
                && (why.contains("Input/output error") || why.contains("Operation not permitted")),
            "{}: reason does not name the read: {why}",
            short(p)
        );
        assert!(
            out.stderr_str()
                .contains(&format!("\"{}\": read SOURCE", esc(p))),
            "stderr does not name {}\n{}",
            short(p),
            out.dump()
        );
    }
    let it = interim(&before, &src, &e.dst);
    assert_clean("after SOURCE reads failed", &it, &out);
    assert!(it.dst_temps.is_empty(), "{:?}", it.dst_temps);
    assert_eq!(
        it.kept, victims,
        "files other than the unreadable ones were left"
    );
    assert!(denied >= victims.len() as u64, "{denied} reads denied");
    storage_figures(
        T,
        &format!("{denied} reads failed with {how} ({answered} reads answered)"),
        failed.len(),
        &it,
    );
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume once SOURCE reads again");
    check_relocated(&before, &src, &e.dst, None);
}

// ---------------------------------------------------------------------------
// 5. Files the kernel refuses to replace
// ---------------------------------------------------------------------------

#[test]
fn files_the_kernel_refuses_to_replace_are_left_alone() {
    let _gate = suite_gate!();
    const T: &str = "files_the_kernel_refuses_to_replace_are_left_alone";
    skip_unless_root!(T, "it loop-mounts ext4 and uses chattr +i / +a");
    let e = env();
    let mp = e.tmp.path().join("srcfs");
    let _fs = match loop_fs(&e.tmp.path().join("src.img"), &mp, "ext4", 64) {
        Ok(g) => g,
        Err(m) => skip!(T, "cannot loop-mount an ext4 image: {m}"),
    };
    let src = mp.join("src");
    build_tree(&src, &TreeSpec::plain(100, 9601));
    let all = Manifest::scan_opts(
        &src,
        &ScanOpts {
            hash: false,
            ..Default::default()
        },
    );
    let append_dir = b"t/d01/s01".as_slice();
    let in_dir = rels_in(&all, append_dir);
    let others: Vec<Vec<u8>> = all
        .files()
        .map(|(r, _)| r.clone())
        .filter(|r| !in_dir.contains(r))
        .collect();
    let immutable = [others[3].clone(), others[40].clone()];
    let append_only = [others[11].clone(), others[60].clone()];
    let mut attrs = Attrs::default();
    for r in &immutable {
        attrs.set(&path_of(&src, r), "i");
    }
    for r in &append_only {
        attrs.set(&path_of(&src, r), "a");
    }
    attrs.set(&path_of(&src, append_dir), "a");
    // Taken after the flags are set (setting them changes ctime).
    let before = Manifest::scan(&src);
    let mut victims: BTreeSet<Vec<u8>> = in_dir.clone();
    victims.extend(immutable.iter().cloned());
    victims.extend(append_only.iter().cloned());

    let out = evac_run(&src, &e.dst, &e.journal, &["--workers", "2"]);
    out.expect(3, "a run over files the kernel will not let evac replace");
    let failed = journal_rows(&e.journal, "failed");
    assert_eq!(
        failed.keys().cloned().collect::<BTreeSet<_>>(),
        victims,
        "the failed files are not exactly the protected ones\n{}",
        out.dump()
    );
    for (p, why) in &failed {
        let want = if immutable.contains(p) {
            "the file is immutable (chattr +i)"
        } else if append_only.contains(p) {
            "the file is append-only (chattr +a)"
        } else {
            "its SOURCE directory is append-only (chattr +a)"
        };
        assert!(why.starts_with(want), "{}: {why} (want {want})", short(p));
    }
    let after = Manifest::scan(&src);
    for v in &victims {
        assert_eq!(
            before.get(v),
            after.get(v),
            "{}: changed although it could not be relocated",
            short(v)
        );
    }
    for r in &immutable {
        assert!(has_attr(&path_of(&src, r), 'i'), "{}: lost +i", short(r));
    }
    for r in &append_only {
        assert!(has_attr(&path_of(&src, r), 'a'), "{}: lost +a", short(r));
    }
    assert!(has_attr(&path_of(&src, append_dir), 'a'));
    let it = interim(&before, &src, &e.dst);
    assert_clean("after protected files", &it, &out);
    assert!(it.dst_temps.is_empty(), "{:?}", it.dst_temps);
    assert_eq!(it.kept, victims);
    storage_figures(
        T,
        "2 immutable files, 2 append-only files, 1 append-only directory",
        failed.len(),
        &it,
    );

    attrs.clear();
    let again = evac_resume(&e.journal, &[]);
    again.expect(0, "resume once the flags are cleared");
    check_relocated(&before, &src, &e.dst, None);
}
