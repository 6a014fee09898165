//! Writes that race the swap. A writer that opens a file for writing while evac
//! holds its read lease (copying it, waiting for the batch's syncfs, swapping
//! it) must be let through at once (evac releases the lease as soon as it is
//! told), its write must never be lost, and the file must still end up
//! relocated by a later attempt.
//!
//! The windows are made wide on purpose: big files (a copy and a syncfs take a
//! noticeable time), and in the `frozen_*` tests evac is stopped with SIGSTOP
//! exactly in the phase under test while the writer's open() blocks on the
//! lease (seen as BREAKING in /proc/locks), then continued; the writer's open
//! must return promptly after SIGCONT. The appender tests run writer processes
//! that append unique records in a tight loop (with short random pauses) to
//! many small files across whole runs, with varied `--batch-files` and
//! `--workers`, and check every record logged as written is in the file read
//! through its path afterwards, exactly once and in each writer's order.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Big-file tests run one at a time: their phase detection relies on timing.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

const MIB: usize = 1 << 20;

/// A writer must get through its open() within this long after evac can answer.
const MAX_OPEN_LATENCY: Duration = Duration::from_secs(2);

fn have_python() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of Python's time.monotonic_ns()).
fn mono_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// The state of any lease on inode `ino` in /proc/locks: "ACTIVE", "BREAKING", ...
fn lease_state(ino: u64) -> Option<String> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let suffix = format!(":{ino}");
    for line in text.lines() {
        if line.contains("->") {
            continue; // a blocked waiter, not the lease itself
        }
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < 6 || toks[1] != "LEASE" {
            continue;
        }
        if toks
            .iter()
            .any(|t| t.matches(':').count() == 2 && t.ends_with(&suffix))
        {
            return Some(toks[2].to_string());
        }
    }
    None
}

/// Process state letter from /proc/PID/stat ('T' when stopped).
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

fn stop_evac(bg: &mut Bg) -> bool {
    bg.signal(libc::SIGSTOP);
    let pid = bg.pid();
    let t = Instant::now();
    loop {
        if bg.poll().is_some() {
            return false;
        }
        if proc_state(pid) == Some('T') {
            return true;
        }
        if t.elapsed() > Duration::from_secs(10) {
            panic!("evac (pid {pid}) did not stop within 10 s of SIGSTOP");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Entries of `dir` named like evac temporaries with the given suffix (".tmp", ".lnk").
fn temps_in(dir: &Path, suffix: &str) -> Vec<(PathBuf, std::fs::Metadata)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            is_evac_temp(n.as_bytes()) && n.as_bytes().ends_with(suffix.as_bytes())
        })
        .filter_map(|e| {
            let p = e.path();
            std::fs::symlink_metadata(&p).ok().map(|m| (p, m))
        })
        .collect()
}

/// A big non-sparse file: 1 MiB pseudo-random blocks, each stamped with its index.
/// Returns (len, blake3, mode, ino).
fn make_big(path: &Path, mib: usize, seed: u64) -> (u64, [u8; 32]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut block = content(seed, MIB);
    let mut f = std::fs::File::create(path).unwrap();
    let mut h = blake3::Hasher::new();
    for i in 0..mib {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&block).unwrap();
        h.update(&block);
    }
    f.sync_all().unwrap();
    drop(f);
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    ((mib * MIB) as u64, *h.finalize().as_bytes())
}

/// Read `path` (following the link) and check it is `orig_len` bytes hashing to
/// `orig_hash` followed by exactly `tail`.
fn check_content(
    path: &Path,
    orig_len: u64,
    orig_hash: &[u8; 32],
    tail: &[u8],
) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().unwrap().len();
    if len != orig_len + tail.len() as u64 {
        return Err(format!(
            "{}: {} bytes, want {} (original) + {} (appended record)",
            path.display(),
            len,
            orig_len,
            tail.len()
        ));
    }
    let mut h = blake3::Hasher::new();
    let mut left = orig_len;
    let mut buf = vec![0u8; MIB];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    if h.finalize().as_bytes() != orig_hash {
        return Err(format!("{}: the original bytes changed", path.display()));
    }
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    if rest != tail {
        return Err(format!(
            "{}: tail is {:?}, want {:?}",
            path.display(),
            String::from_utf8_lossy(&rest),
            String::from_utf8_lossy(tail)
        ));
    }
    Ok(())
}

/// (path, event, detail) of every event in the journal.
fn journal_events(journal: &Path) -> Vec<(Vec<u8>, String, String)> {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = c
        .prepare(
            "SELECT f.path, e.event, coalesce(e.detail, '') FROM events e JOIN files f ON f.id = e.file_id ORDER BY e.id",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

// ---------------------------------------------------------------------------
// One-shot writer process: waits for a line on stdin, then open(O_WRONLY|O_APPEND),
// write, close; prints "t_before_open t_after_open bytes" (CLOCK_MONOTONIC ns).
// ---------------------------------------------------------------------------

const ONE_SHOT: &str = r#"
import os, sys, time
path, rec = sys.argv[1], sys.argv[2].encode()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic_ns()
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
t1 = time.monotonic_ns()
n = os.write(fd, rec)
os.close(fd)
print(t0, t1, n, flush=True)
"#;

struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

impl Writer {
    fn spawn(path: &Path, rec: &[u8]) -> Writer {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(ONE_SHOT)
            .arg(path)
            .arg(std::ffi::OsStr::from_bytes(rec))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 writer");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "writer did not start");
        Writer { child, stdin, out }
    }
    fn go(&mut self) {
        let mut s = self.stdin.take().unwrap();
        s.write_all(b"go\n").unwrap();
        s.flush().unwrap();
    }
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
    /// (t_before_open, t_after_open) in CLOCK_MONOTONIC ns.
    fn finish(mut self, timeout: Duration) -> (i128, i128) {
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                assert!(st.success(), "writer failed: {st:?}");
                break;
            }
            if t.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the writer's open()+write did not complete within {timeout:?}: evac did not let it through"
                );
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let v: Vec<i128> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 3, "writer output {line:?}");
        (v[0], v[1])
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `evac run --journal J` until it exits 0 (at most `max` runs); returns the codes.
fn resume_until_done(journal: &Path, max: usize) -> Vec<i32> {
    let mut codes = Vec::new();
    for _ in 0..max {
        let o = evac_resume(journal, &["--retry-delay", "0.1"]);
        let c = o.code();
        codes.push(c);
        if c == 0 {
            return codes;
        }
        assert_eq!(c, 3, "resume: unexpected exit\n{}", o.dump());
    }
    panic!("the file was never relocated: {max} resumed runs exited {codes:?}");
}

/// The relocated state of one path: SOURCE holds the link, DEST a regular file.
fn check_linked(e: &Env, rel: &[u8], mode: u32) {
    let l = lstat_rel(&e.src, rel).unwrap();
    assert_eq!(
        l.st_mode & libc::S_IFMT,
        libc::S_IFLNK,
        "{} is not a symlink in SOURCE after the final run",
        esc(rel)
    );
    let want = join_rel(&bytes_of(&e.dst), rel);
    assert_eq!(
        readlink_rel(&e.src, rel).unwrap(),
        want,
        "link target of {}",
        esc(rel)
    );
    let d = lstat_rel(&e.dst, rel).unwrap();
    assert_eq!(
        d.st_mode & libc::S_IFMT,
        libc::S_IFREG,
        "DEST copy of {}",
        esc(rel)
    );
    assert_eq!(d.st_mode & 0o7777, mode, "DEST mode of {}", esc(rel));
}

fn assert_no_temps(e: &Env) {
    let empty = Manifest {
        root: e.src.clone(),
        entries: BTreeMap::new(),
    };
    let s = leftover_temps(&e.src, &empty);
    let d = leftover_temps(&e.dst, &empty);
    assert!(
        s.is_empty() && d.is_empty(),
        "leftover temporaries: SOURCE {:?} DEST {:?}",
        s.iter().map(|r| esc(r)).collect::<Vec<_>>(),
        d.iter().map(|r| esc(r)).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// (a) A writer opens a big file while evac is copying it.
// ---------------------------------------------------------------------------

#[test]
fn writer_during_big_copy_is_let_through_and_kept() {
    let _gate = suite_gate!();
    if !have_python() {
        skip!(
            "writer_during_big_copy_is_let_through_and_kept",
            "python3 not found"
        );
    }
    let _g = heavy();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(40, 9101));
    let rel: &[u8] = b"big/data.log";
    let big = path_of(&e.src, rel);
    let (len, hash) = make_big(&big, 256, 9102);
    let ino = std::fs::metadata(&big).unwrap().ino();
    let rec = b"\n<<writer record 9101: appended during the copy>>\n".to_vec();
    let mut w = Writer::spawn(&big, &rec);

    let mut bg = spawn_evac(run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--workers",
            "2",
            "--batch-files",
            "64",
            "--retry-delay",
            "0.2",
        ],
    ));
    let dst_dir = e.dst.join("big");
    let t = Instant::now();
    let mut seen_size = 0;
    loop {
        if bg.poll().is_some() {
            let out = bg.wait();
            panic!(
                "evac finished before the test saw it copying the big file (last tmp size {seen_size})\n{}",
                out.dump()
            );
        }
        let tmp = temps_in(&dst_dir, ".tmp");
        if let Some((_, m)) = tmp.first() {
            seen_size = m.len();
            if m.len() > 0 && m.len() < len / 2 && lease_state(ino).as_deref() == Some("ACTIVE") {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never saw the copy under way"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    w.go();
    let (t0, t1) = w.finish(Duration::from_secs(50));
    let lat = t1 - t0;
    eprintln!(
        "writer_during_big_copy: copy was at {} of {} MiB; writer's open() took {:.3} ms",
        seen_size / MIB as u64,
        len / MIB as u64,
        ms(lat)
    );
    let out = bg.wait();
    let first = out.code();
    assert!(
        first == 0 || first == 3,
        "first run exit {first}\n{}",
        out.dump()
    );
    let mut codes = vec![first];
    if first != 0 {
        codes.extend(resume_until_done(&e.journal, 3));
    }
    eprintln!("writer_during_big_copy: run exit codes {codes:?}");
    for (p, ev, d) in journal_events(&e.journal) {
        if p == rel {
            eprintln!("writer_during_big_copy: event for {}: {ev}: {d}", esc(&p));
        }
    }
    assert!(
        lat < MAX_OPEN_LATENCY.as_nanos() as i128,
        "the writer's open() blocked {:.1} ms on evac's lease (want < {:?})",
        ms(lat),
        MAX_OPEN_LATENCY
    );
    check_linked(&e, rel, 0o640);
    check_content(&big, len, &hash, &rec).unwrap_or_else(|m| panic!("write lost or damaged: {m}"));
    assert_no_temps(&e);
    let st = status(&e.journal);
    assert_eq!(count(&st, "deferred"), 0, "{st:?}");
    assert_eq!(count(&st, "relocated"), 41, "{st:?}");
}

// ---------------------------------------------------------------------------
// Frozen phases: SIGSTOP evac in the phase, let the writer block on the lease,
// SIGCONT, measure how long evac takes to let it through.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// The DEST temporary exists and is partly written.
    MidCopy,
    /// The copy is complete (metadata set), the original is still in place, leased.
    BeforeSwap,
    /// The path is already the link; the original waits at its `.lnk` name.
    AfterSwap,
}

struct Frozen {
    target: Vec<u8>,
    what: String,
}

/// One attempt: returns None if the phase could not be caught (evac moved on).
fn frozen_attempt(phase: Phase, attempt: u32) -> Option<()> {
    let name = format!("frozen_{phase:?}");
    let e = env();
    // Two big files in separate directories; with one worker and batches of one,
    // the first file's swap waits for the second's copy before its original is
    // removed, and each file's swap waits for a syncfs of its data.
    let rels: [&[u8]; 2] = [b"a/one.bin", b"b/two.bin"];
    let mut info = BTreeMap::new();
    for (i, r) in rels.iter().enumerate() {
        let p = path_of(&e.src, r);
        let (len, hash) = make_big(&p, 160, 9200 + i as u64 + 10 * attempt as u64);
        let ino = std::fs::metadata(&p).unwrap().ino();
        info.insert(r.to_vec(), (len, hash, ino));
    }
    build_tree(&e.src, &TreeSpec::plain(10, 9210));

    let mut bg = spawn_evac(run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--workers",
            "1",
            "--batch-files",
            "1",
            "--retry-delay",
            "0.2",
            "--retry-rounds",
            "2",
        ],
    ));
    let pid = bg.pid();
    let t = Instant::now();
    let caught: Option<Frozen> = loop {
        if bg.poll().is_some() {
            break None;
        }
        if t.elapsed() > Duration::from_secs(60) {
            panic!("{name}: evac ran for 60 s without the phase showing");
        }
        let mut hit: Option<(Vec<u8>, String)> = None;
        for r in rels {
            let (len, _, ino) = info[r];
            let ddir = e.dst.join(std::str::from_utf8(&r[..1]).unwrap());
            let s = lstat_rel(&e.src, r).ok();
            let is_orig = s.map(|s| s.st_ino == ino && s.st_mode & libc::S_IFMT == libc::S_IFREG)
                == Some(true);
            let found: Option<String> = match phase {
                Phase::MidCopy => temps_in(&ddir, ".tmp").first().and_then(|(_, m)| {
                    (m.len() > 0 && m.len() < len * 3 / 4 && is_orig).then(|| {
                        format!(
                            "DEST temporary at {} of {} MiB",
                            m.len() / MIB as u64,
                            len / MIB as u64
                        )
                    })
                }),
                Phase::BeforeSwap => {
                    let done_tmp = temps_in(&ddir, ".tmp")
                        .into_iter()
                        .any(|(_, m)| m.len() == len && m.mode() & 0o7777 == 0o640);
                    let placed = std::fs::symlink_metadata(path_of(&e.dst, r))
                        .map(|m| m.is_file() && m.len() == len)
                        .unwrap_or(false);
                    ((done_tmp || placed)
                        && is_orig
                        && lease_state(ino).as_deref() == Some("ACTIVE"))
                    .then(|| {
                        format!(
                            "copy complete ({}), original still in place and leased",
                            if placed {
                                "placed at its final DEST name"
                            } else {
                                "DEST temporary with its final mode"
                            }
                        )
                    })
                }
                Phase::AfterSwap => {
                    let linked = s.map(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK) == Some(true);
                    let held = temps_in(path_of(&e.src, r).parent().unwrap(), ".lnk")
                        .into_iter()
                        .any(|(_, m)| m.ino() == ino);
                    (linked && held)
                        .then(|| "path is the link; original held at its .lnk name".to_string())
                }
            };
            if let Some(h) = found {
                hit = Some((r.to_vec(), h));
                break;
            }
        }
        if let Some((target, what)) = hit {
            if !stop_evac(&mut bg) {
                break None;
            }
            // Re-check now that it is frozen.
            let (len, _, ino) = info[&target];
            let s = lstat_rel(&e.src, &target).ok();
            let is_orig = s.map(|s| s.st_ino == ino && s.st_mode & libc::S_IFMT == libc::S_IFREG)
                == Some(true);
            let ddir = e.dst.join(std::str::from_utf8(&target[..1]).unwrap());
            let still = match phase {
                Phase::MidCopy => {
                    is_orig
                        && temps_in(&ddir, ".tmp").iter().any(|(_, m)| m.len() < len)
                        && lease_state(ino).as_deref() == Some("ACTIVE")
                }
                Phase::BeforeSwap => is_orig && lease_state(ino).as_deref() == Some("ACTIVE"),
                Phase::AfterSwap => {
                    s.map(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK) == Some(true)
                        && temps_in(path_of(&e.src, &target).parent().unwrap(), ".lnk")
                            .into_iter()
                            .any(|(_, m)| m.ino() == ino)
                }
            };
            if still {
                break Some(Frozen { target, what });
            }
            bg.signal(libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let Some(fz) = caught else {
        eprintln!("{name}: attempt {attempt}: evac left the phase before it could be frozen; trying again");
        bg.signal(libc::SIGCONT);
        let _ = bg.wait();
        return None;
    };
    let target = fz.target.clone();
    let (len, hash, ino) = info[&target];
    let tpath = path_of(&e.src, &target);
    let rec = format!("\n<<writer record: {phase:?}>>\n").into_bytes();
    eprintln!(
        "{name}: evac (pid {pid}) frozen with {}: {}",
        esc(&target),
        fz.what
    );

    let mut w = Writer::spawn(&tpath, &rec);
    w.go();
    let t_cont;
    match phase {
        Phase::MidCopy | Phase::BeforeSwap => {
            // The writer's open() must now be blocked on evac's lease.
            let t = Instant::now();
            loop {
                if lease_state(ino).as_deref() == Some("BREAKING") {
                    break;
                }
                assert!(
                    !w.exited(),
                    "{name}: the writer got through while evac was frozen holding the lease (lease state {:?})",
                    lease_state(ino)
                );
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "{name}: the lease never showed BREAKING (state {:?})",
                    lease_state(ino)
                );
                std::thread::sleep(Duration::from_micros(500));
            }
            assert!(
                !w.exited(),
                "{name}: the writer got through while evac was frozen"
            );
            t_cont = mono_ns();
            bg.signal(libc::SIGCONT);
        }
        Phase::AfterSwap => {
            // The path is the link: the writer reaches the DEST copy, no lease in the way.
            t_cont = mono_ns();
        }
    }
    let (t0, t1) = w.finish(Duration::from_secs(50));
    if phase == Phase::AfterSwap {
        bg.signal(libc::SIGCONT);
    }
    let latency = t1 - t_cont.max(t0);
    eprintln!(
        "{name}: writer blocked {:.3} ms in open() in all; {:.3} ms after evac was continued",
        ms(t1 - t0),
        ms(latency)
    );
    let out = bg.wait();
    let first = out.code();
    assert!(
        first == 0 || first == 3,
        "{name}: first run exit {first}\n{}",
        out.dump()
    );
    let mut codes = vec![first];
    if first != 0 {
        codes.extend(resume_until_done(&e.journal, 3));
    }
    let events: Vec<(String, String)> = journal_events(&e.journal)
        .into_iter()
        .filter(|(p, _, _)| *p == target)
        .map(|(_, a, b)| (a, b))
        .collect();
    eprintln!(
        "{name}: exit codes {codes:?}; events for {}: {events:?}",
        esc(&target)
    );

    assert!(
        latency < MAX_OPEN_LATENCY.as_nanos() as i128,
        "{name}: the writer's open() returned {:.1} ms after evac was continued (want < {:?}): the lease break was not answered at once",
        ms(latency),
        MAX_OPEN_LATENCY
    );
    check_linked(&e, &target, 0o640);
    check_content(&tpath, len, &hash, &rec)
        .unwrap_or_else(|m| panic!("{name}: the write was lost or damaged: {m}"));
    for r in rels {
        if r != &target[..] {
            let (l, h, _) = info[r];
            check_linked(&e, r, 0o640);
            check_content(&path_of(&e.src, r), l, &h, b"").unwrap();
        }
    }
    if phase != Phase::AfterSwap {
        assert!(
            events.iter().any(|(ev, _)| ev == "deferred"),
            "{name}: the writer broke the lease of {} but evac recorded no deferral: {events:?}",
            esc(&target)
        );
        // The copy was made after the write: it proves out.
        let v = evac([
            OsString::from("verify"),
            OsString::from("--journal"),
            e.journal.clone().into(),
        ]);
        v.expect(0, &format!("{name}: verify after the race"));
    }
    assert_no_temps(&e);
    let st = status(&e.journal);
    assert_eq!(count(&st, "deferred"), 0, "{st:?}");
    assert_eq!(count(&st, "relocated"), 12, "{st:?}");
    figures(
        &format!("swap_race {name}"),
        &format!(
            "evac frozen at the chosen moment, one writer opened the file: open() returned {:.1} ms after evac went on; exit codes {codes:?}; write lost: no",
            ms(latency)
        ),
    );
    Some(())
}

fn frozen(phase: Phase) {
    if !have_python() {
        skip!(format!("frozen_{phase:?}"), "python3 not found");
    }
    let _g = heavy();
    for attempt in 0..4 {
        if frozen_attempt(phase, attempt).is_some() {
            return;
        }
    }
    panic!("could not freeze evac in phase {phase:?} in 4 attempts (test timing problem, not an evac verdict)");
}

#[test]
fn frozen_mid_copy() {
    let _gate = suite_gate!();
    frozen(Phase::MidCopy);
}

#[test]
fn frozen_before_swap() {
    let _gate = suite_gate!();
    frozen(Phase::BeforeSwap);
}

#[test]
fn frozen_after_swap() {
    let _gate = suite_gate!();
    frozen(Phase::AfterSwap);
}

// ---------------------------------------------------------------------------
// (b)/(c) Appenders: many small files, writers appending across whole runs.
// ---------------------------------------------------------------------------

const APPENDER: &str = r#"
import os, sys, time, random
wid, stopfile, logpath, listpath, seed = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
paths = [l.rstrip("\n") for l in open(listpath) if l.strip()]
rnd = random.Random(seed)
log = open(logpath, "w", buffering=1)
seq = 0
while not os.path.exists(stopfile):
    p = rnd.choice(paths)
    rec = ("\n<<REC w%d s%07d>>\n" % (wid, seq)).encode()
    t0 = time.monotonic()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        log.write("ERR open %s errno %d\n" % (p, e.errno))
        seq += 1
        continue
    t1 = time.monotonic()
    try:
        n = os.write(fd, rec)
    finally:
        os.close(fd)
    if n != len(rec):
        log.write("ERR short %s %d\n" % (p, n))
    log.write("OK %d %d %s\n" % (seq, int((t1 - t0) * 1e6), p))
    seq += 1
    r = rnd.random()
    if r < 0.15:
        time.sleep(rnd.uniform(0.0002, 0.003))
    elif r < 0.17:
        time.sleep(rnd.uniform(0.005, 0.02))
log.write("END %d\n" % seq)
"#;

/// Parse a file's appended tail into (writer, seq) records; None if it is not a clean sequence.
fn parse_records(tail: &[u8]) -> Result<Vec<(u32, u64)>, String> {
    let mut v = Vec::new();
    let mut i = 0;
    let pre = b"\n<<REC w";
    while i < tail.len() {
        if !tail[i..].starts_with(pre) {
            return Err(format!(
                "garbage at byte {i} of the appended part: {:?}",
                String::from_utf8_lossy(&tail[i..(i + 40).min(tail.len())])
            ));
        }
        let rest = &tail[i + pre.len()..];
        let end = rest
            .windows(3)
            .position(|w| w == b">>\n")
            .ok_or("unterminated record")?;
        let body = std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())?;
        let (w, s) = body.split_once(" s").ok_or("bad record")?;
        v.push((
            w.parse().map_err(|_| format!("bad writer {w}"))?,
            s.parse().map_err(|_| format!("bad seq {s}"))?,
        ));
        i += pre.len() + end + 3;
    }
    Ok(v)
}

/// Every regular file under `root` (following nothing), with its content.
fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                if let Ok(b) = std::fs::read(&p) {
                    out.push((p, b));
                }
            }
        }
    }
    out
}

fn appenders(test: &str, files: usize, writers: u32, extra: &[&str], seed: u64) {
    if !have_python() {
        skip!(test, "python3 not found");
    }
    let e = env();
    let info = build_tree(&e.src, &TreeSpec::plain(files, seed));
    let before = Manifest::scan(&e.src);
    let list = e.tmp.path().join("paths.txt");
    let mut text = String::new();
    for r in &info.files {
        text.push_str(path_of(&e.src, r).to_str().unwrap());
        text.push('\n');
    }
    std::fs::write(&list, text).unwrap();
    let stop = e.tmp.path().join("STOP");
    let mut kids = Vec::new();
    for w in 0..writers {
        let log = e.tmp.path().join(format!("writer{w}.log"));
        let child = Command::new("python3")
            .arg("-c")
            .arg(APPENDER)
            .arg(w.to_string())
            .arg(&stop)
            .arg(&log)
            .arg(&list)
            .arg((seed * 31 + w as u64).to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3 appender");
        kids.push((child, log));
    }
    struct Kill(Vec<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    // Writers running (each has appended something) before evac starts.
    wait_until("the appenders to start", Duration::from_secs(20), || {
        kids.iter().all(|(_, log)| {
            std::fs::read_to_string(log)
                .map(|s| s.lines().filter(|l| l.starts_with("OK")).count() >= 20)
                .unwrap_or(false)
        })
    });
    let logs: Vec<PathBuf> = kids.iter().map(|(_, l)| l.clone()).collect();
    let guard = Kill(kids.into_iter().map(|(c, _)| c).collect());

    let mut args: Vec<&str> = vec!["--retry-rounds", "3", "--retry-delay", "0.1"];
    args.extend_from_slice(extra);
    let t_runs = Instant::now();
    let mut codes = Vec::new();
    for i in 0..2 {
        let o = if i == 0 {
            evac_run(&e.src, &e.dst, &e.journal, &args)
        } else {
            evac_resume(&e.journal, &args)
        };
        let c = o.code();
        assert!(
            c == 0 || c == 3,
            "{test}: run {} with appenders active exited {c}\n{}",
            i + 1,
            o.dump()
        );
        codes.push(c);
    }
    let with_writers = t_runs.elapsed();
    let st_mid = status(&e.journal);
    std::fs::write(&stop, b"").unwrap();
    let mut guard = guard;
    for c in &mut guard.0 {
        let st = c.wait().unwrap();
        assert!(st.success(), "{test}: an appender failed: {st:?}");
    }
    drop(guard);
    codes.extend(resume_until_done(&e.journal, 3));

    // What the writers say they wrote.
    let mut want: BTreeMap<PathBuf, Vec<(u32, u64)>> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut total = 0u64;
    let mut max_lat_us = 0u64;
    let mut lat_over_100ms = 0u64;
    for (w, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.lines().last().unwrap_or("").starts_with("END"),
            "{test}: writer {w} log not finished"
        );
        for l in text.lines() {
            if l.starts_with("ERR") {
                errors.push(format!("writer {w}: {l}"));
            } else if let Some(rest) = l.strip_prefix("OK ") {
                let mut it = rest.splitn(3, ' ');
                let seq: u64 = it.next().unwrap().parse().unwrap();
                let lat: u64 = it.next().unwrap().parse().unwrap();
                let p = PathBuf::from(it.next().unwrap());
                max_lat_us = max_lat_us.max(lat);
                if lat > 100_000 {
                    lat_over_100ms += 1;
                }
                want.entry(p).or_default().push((w as u32, seq));
                total += 1;
            }
        }
    }
    let evs = journal_events(&e.journal);
    let deferrals = evs.iter().filter(|(_, ev, _)| ev == "deferred").count();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (_, ev, d) in &evs {
        if ev == "deferred" {
            *reasons.entry(d.clone()).or_default() += 1;
        }
    }
    eprintln!(
        "{test}: {files} files, {writers} writers, args {extra:?}: {total} records appended over {:.1} s of runs, exit codes {codes:?}, {deferrals} deferrals {reasons:?}; after the runs with writers: {} relocated, {} deferred; slowest open() {:.1} ms ({} over 100 ms)",
        with_writers.as_secs_f64(),
        count(&st_mid, "relocated"),
        count(&st_mid, "deferred"),
        max_lat_us as f64 / 1000.0,
        lat_over_100ms
    );
    assert!(
        errors.is_empty(),
        "{test}: writers could not write (paths must always resolve): {errors:?}"
    );

    // Every file relocated; its content the original followed by exactly its records.
    let mut problems = Vec::new();
    let mut trash: Option<Vec<(PathBuf, Vec<u8>)>> = None;
    for r in &info.files {
        let p = path_of(&e.src, r);
        let b = before.get(r).unwrap();
        match lstat_rel(&e.src, r) {
            Ok(s) if s.st_mode & libc::S_IFMT == libc::S_IFLNK => {}
            Ok(_) => problems.push(format!("{}: not relocated (still a regular file)", esc(r))),
            Err(err) => problems.push(format!("{}: {err}", esc(r))),
        }
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(err) => {
                problems.push(format!("{}: cannot read through the path: {err}", esc(r)));
                continue;
            }
        };
        if data.len() < b.size as usize || hash_bytes(&data[..b.size as usize]) != b.hash.unwrap() {
            problems.push(format!("{}: original content damaged", esc(r)));
            continue;
        }
        let got = match parse_records(&data[b.size as usize..]) {
            Ok(v) => v,
            Err(m) => {
                problems.push(format!("{}: {m}", esc(r)));
                continue;
            }
        };
        let mut wanted = want.get(&p).cloned().unwrap_or_default();
        // Per-writer order must be kept.
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (w, s) in &got {
            if let Some(prev) = last.insert(*w, *s) {
                if prev >= *s {
                    problems.push(format!(
                        "{}: writer {w} records out of order ({prev} then {s})",
                        esc(r)
                    ));
                }
            }
        }
        let got_set: BTreeSet<(u32, u64)> = got.iter().cloned().collect();
        if got_set.len() != got.len() {
            problems.push(format!("{}: a record appears twice", esc(r)));
        }
        wanted.sort();
        let want_set: BTreeSet<(u32, u64)> = wanted.iter().cloned().collect();
        let missing: Vec<_> = want_set.difference(&got_set).cloned().collect();
        let extra_r: Vec<_> = got_set.difference(&want_set).cloned().collect();
        if !missing.is_empty() {
            let tr = trash.get_or_insert_with(|| all_files(&e.dst.join(".evac-trash")));
            let mut whereabouts = Vec::new();
            for (w, s) in missing.iter().take(5) {
                let needle = format!("\n<<REC w{w} s{s:07}>>\n").into_bytes();
                let found: Vec<String> = tr
                    .iter()
                    .filter(|(_, d)| d.windows(needle.len()).any(|x| x == needle))
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                whereabouts.push(format!("w{w} s{s}: found only in {found:?}"));
            }
            problems.push(format!(
                "{}: {} record(s) written (write() returned, file closed) are NOT in the file: {whereabouts:?}",
                esc(r),
                missing.len()
            ));
        }
        if !extra_r.is_empty() {
            problems.push(format!("{}: records nobody logged: {extra_r:?}", esc(r)));
        }
    }
    assert_no_problems(&format!("{test}: appended records"), &problems);
    assert_no_temps(&e);
    let st = status(&e.journal);
    assert_eq!(count(&st, "relocated"), files as i64, "{test}: {st:?}");
    assert_eq!(count(&st, "deferred"), 0, "{test}: {st:?}");
    assert!(
        max_lat_us < MAX_OPEN_LATENCY.as_micros() as u64,
        "{test}: a writer's open() took {:.1} ms (want < {:?})",
        max_lat_us as f64 / 1000.0,
        MAX_OPEN_LATENCY
    );
    figures(
        &format!("swap_race {test}"),
        &format!(
            "{writers} writers appended {total} records to {files} files during the runs ({deferrals} swaps given up for them); records lost: 0; slowest open() {:.1} ms",
            max_lat_us as f64 / 1000.0
        ),
    );
}

#[test]
fn appenders_batch64_workers2() {
    let _gate = suite_gate!();
    appenders(
        "appenders_batch64_workers2",
        300,
        3,
        &["--batch-files", "64", "--workers", "2"],
        9301,
    );
}

#[test]
fn appenders_batch1_workers1() {
    let _gate = suite_gate!();
    appenders(
        "appenders_batch1_workers1",
        150,
        3,
        &["--batch-files", "1", "--workers", "1"],
        9302,
    );
}

#[test]
fn appenders_batch512_workers4() {
    let _gate = suite_gate!();
    appenders(
        "appenders_batch512_workers4",
        400,
        4,
        &["--batch-files", "512", "--workers", "4"],
        9303,
    );
}
