//! Shared harness for evac's integration tests.
//!
//! * running the real binary (foreground with a timeout, or in the background),
//! * root detection and skip macros,
//! * a deterministic tree builder (nested dirs, varied sizes, hard links, sparse
//!   files, xattrs/ACLs/capabilities, special modes and owners, nanosecond
//!   times, symlinks, FIFOs, sockets, device nodes, pathological names and a
//!   directory chain longer than PATH_MAX),
//! * a manifest of a tree taken with dirfd-relative calls only (so paths longer
//!   than PATH_MAX work),
//! * the relocation oracle, `check_relocated`,
//! * a tiny JSON parser for `evac status --json`,
//! * helpers for busy files (held open for writing, running executables).
//!
//! Every fd opened here is O_CLOEXEC: tests run in parallel threads and spawn
//! children, and an inherited write fd would make another test's file "busy".
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use json::Json;

pub mod gate;
pub mod mounts;
pub mod opens;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// Longest any single evac invocation may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

pub fn evac_bin() -> &'static str {
    env!("CARGO_BIN_EXE_evac")
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `let _gate = suite_gate!();`, first in every test: waits until this test's suite may run
/// (see `gate`) and holds its place while the test runs.
macro_rules! suite_gate {
    () => {
        crate::common::gate::enter(module_path!())
    };
}

/// `skip!("test_name", "reason {}", x)`: print `SKIP test_name: reason` to stderr and return.
macro_rules! skip {
    ($test:expr, $($reason:tt)+) => {{
        eprintln!("SKIP {}: {}", $test, format!($($reason)+));
        return;
    }};
}

/// `skip_unless_root!("test_name", "it chowns files")`: when not root, print
/// `SKIP test_name: needs root because it chowns files` and return.
macro_rules! skip_unless_root {
    ($test:expr, $why:expr) => {
        if !crate::common::is_root() {
            eprintln!("SKIP {}: needs root because {}", $test, $why);
            return;
        }
    };
}

/// The result of one evac invocation.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub cmd: String,
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}… [{} more bytes]", &s[..cut], s.len() - cut)
    }
}

impl Out {
    /// The exit code; panics (with the output) if evac died from a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "evac was killed by signal {:?}\n{}",
                self.status.signal(),
                self.dump()
            ),
        }
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// stdout and stderr together, lossily decoded (for "the message names X" checks).
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout_str(), self.stderr_str())
    }
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nstatus: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.cmd,
            self.status,
            clip(&self.stdout_str(), 6000),
            clip(&self.stderr_str(), 6000)
        )
    }
    /// Assert the exit code, printing everything on mismatch.
    #[track_caller]
    pub fn expect(&self, want: i32, context: &str) -> &Self {
        let got = self.code();
        if got != want {
            panic!(
                "{context}: expected exit {want}, got {got}\n{}",
                self.dump()
            );
        }
        self
    }
}

fn display_args(args: &[OsString]) -> String {
    let mut s = String::from("evac");
    for a in args {
        s.push(' ');
        s.push_str(&esc(a.as_bytes()));
    }
    s
}

/// A background evac process. Killed with SIGKILL on drop if still running.
pub struct Bg {
    pub child: Child,
    out: File,
    err: File,
    pub cmd: String,
    reaped: Option<ExitStatus>,
}

impl Bg {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Non-blocking: `Some(status)` once the process has exited (stopped does not count).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = Some(st);
            }
        }
        self.reaped
    }
    pub fn signal(&self, sig: i32) {
        if self.reaped.is_none() {
            send_signal(self.pid(), sig);
        }
    }
    fn read_back(f: &mut File) -> Vec<u8> {
        // pread: the child writes through the same open file description, so moving its offset
        // (seek, read) while it runs could put its next write over what it wrote before.
        use std::os::unix::fs::FileExt;
        let mut v = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match f.read_at(&mut buf, v.len() as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => v.extend_from_slice(&buf[..n]),
            }
        }
        v
    }
    pub fn output_so_far(&mut self) -> (Vec<u8>, Vec<u8>) {
        (
            Self::read_back(&mut self.out),
            Self::read_back(&mut self.err),
        )
    }
    /// Wait for exit; on timeout kill it and panic with its output.
    pub fn wait_for(&mut self, timeout: Duration) -> Out {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.poll() {
                break st;
            }
            if start.elapsed() > timeout {
                send_signal(self.pid(), libc::SIGKILL);
                let _ = self.child.wait();
                let (o, e) = self.output_so_far();
                panic!(
                    "{} did not finish within {:?}; killed.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.cmd,
                    timeout,
                    clip(&String::from_utf8_lossy(&o), 6000),
                    clip(&String::from_utf8_lossy(&e), 6000)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.reaped = Some(status);
        let (stdout, stderr) = self.output_so_far();
        Out {
            status,
            stdout,
            stderr,
            cmd: self.cmd.clone(),
        }
    }
    pub fn wait(mut self) -> Out {
        self.wait_for(RUN_TIMEOUT)
    }
    /// SIGKILL and reap. Returns true if the process was still running when killed.
    pub fn kill9(&mut self) -> bool {
        if self.poll().is_some() {
            return false;
        }
        send_signal(self.pid(), libc::SIGKILL);
        let st = self.child.wait().expect("wait after SIGKILL");
        self.reaped = Some(st);
        st.signal() == Some(libc::SIGKILL)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // A stopped process would never die from SIGKILL's delivery order issues,
            // but SIGKILL works on stopped processes too.
            send_signal(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

pub fn send_signal(pid: i32, sig: i32) {
    unsafe {
        libc::kill(pid, sig);
    }
}

fn to_os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect()
}

/// Start evac in the background with stdout/stderr going to anonymous temp files.
pub fn spawn_evac<I, S>(args: I) -> Bg
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_evac_env(args, &[])
}

/// `spawn_evac` with extra environment variables.
pub fn spawn_evac_env<I, S>(args: I, envs: &[(&str, &OsStr)]) -> Bg
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args = to_os_args(args);
    let out = tempfile::tempfile().expect("tempfile");
    let err = tempfile::tempfile().expect("tempfile");
    let child = Command::new(evac_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()))
        .env("NO_COLOR", "1")
        // The governor would slow every test on a machine the tests load; its own tests turn it
        // on with --governor on. `EVAC_TEST_GOVERNOR=on cargo test` runs every suite governed.
        .env(
            "EVAC_TEST_GOVERNOR",
            std::env::var_os("EVAC_TEST_GOVERNOR").unwrap_or_else(|| "off".into()),
        )
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", evac_bin()));
    Bg {
        child,
        out,
        err,
        cmd: display_args(&args),
        reaped: None,
    }
}

/// Run evac to completion (with `RUN_TIMEOUT`).
pub fn evac<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_evac(args).wait()
}

/// Run evac to completion, failing the test if it takes longer than `timeout`.
pub fn evac_timeout<I, S>(args: I, timeout: Duration) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_evac(args).wait_for(timeout)
}

pub fn run_args(src: &Path, dst: &Path, journal: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "run".into(),
        src.into(),
        dst.into(),
        "--journal".into(),
        journal.into(),
        "--quiet".into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// `evac run SRC DST --journal J --quiet EXTRA...`
pub fn evac_run(src: &Path, dst: &Path, journal: &Path, extra: &[&str]) -> Out {
    evac(run_args(src, dst, journal, extra))
}

/// `evac run --journal J --quiet EXTRA...` (resume from the journal)
pub fn evac_resume(journal: &Path, extra: &[&str]) -> Out {
    let mut v: Vec<OsString> = vec![
        "run".into(),
        "--journal".into(),
        journal.into(),
        "--quiet".into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    evac(v)
}

/// `evac status --journal J --json`, parsed; None if it failed or printed no JSON.
pub fn try_status(journal: &Path) -> Option<Json> {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--json"),
    ]);
    if o.status.code() != Some(0) {
        return None;
    }
    json::parse(o.stdout_str().trim()).ok()
}

/// `evac status --journal J --json`, which must succeed and print one JSON object.
#[track_caller]
pub fn status(journal: &Path) -> Json {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--json"),
    ]);
    o.expect(0, "status --json");
    match json::parse(o.stdout_str().trim()) {
        Ok(j) => j,
        Err(e) => panic!("status --json printed invalid JSON ({e})\n{}", o.dump()),
    }
}

/// `files.<state>` from a status object.
#[track_caller]
pub fn count(st: &Json, state: &str) -> i64 {
    st.get("files")
        .and_then(|f| f.get(state))
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("status JSON has no integer files.{state}: {st:?}"))
}

/// `evac status --journal J --list STATE -0`, split on NUL.
#[track_caller]
pub fn status_list(journal: &Path, state: &str) -> Vec<Vec<u8>> {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new(state),
        OsStr::new("-0"),
    ]);
    o.expect(0, &format!("status --list {state} -0"));
    o.stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect()
}

/// Poll `f` every 10 ms until it returns true; panic after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `status --json` until it reports `running: true` (returns true), or until
/// the background run exits first (returns false).
pub fn wait_running(journal: &Path, bg: &mut Bg, timeout: Duration) -> bool {
    wait_status(journal, bg, timeout, |_| true)
}

/// Poll `status --json` until it reports `running: true` and `pred` holds
/// (returns true), or until the background run exits first (returns false).
pub fn wait_status(
    journal: &Path,
    bg: &mut Bg,
    timeout: Duration,
    pred: impl Fn(&Json) -> bool,
) -> bool {
    let start = Instant::now();
    // Polling status while the run is still creating its journal has made
    // runs fail ("migrate: table ... already exists"); status_verify.rs has a
    // test for that race. Here, let the run announce itself (its START line)
    // first, or give it 5 s, so that other tests test what they are about.
    while start.elapsed() < Duration::from_secs(5) && bg.poll().is_none() {
        if String::from_utf8_lossy(&bg.output_so_far().1).contains("START") {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    loop {
        if bg.poll().is_some() {
            return false;
        }
        if let Some(st) = try_status(journal) {
            if st.get("running").and_then(|v| v.as_bool()) == Some(true) && pred(&st) {
                return bg.poll().is_none();
            }
        }
        if start.elapsed() > timeout {
            panic!("status --json never reported running=true (and the awaited progress) within {timeout:?} for {}", bg.cmd);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A test workspace: `tmp/src` (created), `tmp/dst` (not created), `tmp/journal.db`.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
    pub journal: PathBuf,
}

pub fn env() -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("evt")
        .tempdir()
        .expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let dst = tmp.path().join("dst");
    let journal = tmp.path().join("journal.db");
    Env {
        tmp,
        src,
        dst,
        journal,
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Make everything removable (a test may leave 0o000 dirs etc.).
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(self.tmp.path())
            .status();
    }
}

/// A seed from the clock (printed by the caller), overridable with EVAC_TEST_SEED.
pub fn time_seed() -> u64 {
    if let Ok(s) = std::env::var("EVAC_TEST_SEED") {
        if let Ok(v) = s.parse() {
            return v;
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

// ---------------------------------------------------------------------------
// Escaping, names
// ---------------------------------------------------------------------------

/// C-style escaping as the contract describes: printable UTF-8 stays, `\\`, `\"`,
/// `\n`, `\t`, `\r`, other control characters and invalid bytes as `\xNN`.
pub fn esc(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_esc(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                push_esc(&mut out, std::str::from_utf8(good).unwrap());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

/// `esc`, shortened for messages when very long.
pub fn short(bytes: &[u8]) -> String {
    let e = esc(bytes);
    if e.len() <= 160 {
        return e;
    }
    let mut a = 60;
    while !e.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = e.len() - 60;
    while !e.is_char_boundary(b) {
        b += 1;
    }
    format!("{}…[{} bytes]…{}", &e[..a], bytes.len(), &e[b..])
}

fn push_esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Does this file name look like one of evac's temporaries: `^\.evac-[0-9a-f]{16}-`?
pub fn is_evac_temp(name: &[u8]) -> bool {
    name.len() >= 23
        && name.starts_with(b".evac-")
        && name[6..22]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && name[22] == b'-'
}

pub fn basename(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => &rel[i + 1..],
        None => rel,
    }
}

pub fn join_rel(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut v = prefix.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// `root/rel` as a path (only for paths shorter than PATH_MAX).
pub fn path_of(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

pub fn bytes_of(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// The pathological-name corpus: every byte that may appear in a name.
pub fn weird_names() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"new\nline".to_vec(),
        b"\nleading-newline".to_vec(),
        b"tab\there".to_vec(),
        b"cr\rhere".to_vec(),
        b"ctl\x01\x02\x1b[31m\x7f".to_vec(),
        b"back\\slash\\n".to_vec(),
        b"quote\"double'single`".to_vec(),
        b"glob*?[a-z]{x}".to_vec(),
        b"-leading-dash".to_vec(),
        b"--".to_vec(),
        b"-n".to_vec(),
        b"   ".to_vec(),
        b" ".to_vec(),
        b"trailing space ".to_vec(),
        b"\xff\xfe".to_vec(),
        b"bad\xc3(utf8\x80".to_vec(),
        "caf\u{e9} \u{65e5}\u{672c} \u{1f600}".as_bytes().to_vec(),
        b"$(echo pwned);`id`|&<>".to_vec(),
        b"%s%n%x".to_vec(),
        b".hidden".to_vec(),
        b"...".to_vec(),
        vec![b'L'; 255],
        // Look like evac temporaries of some other journal: ordinary user files.
        b".evac-0123456789abcdef-7.tmp".to_vec(),
        b".evac-0123456789abcdef-8.lnk".to_vec(),
    ];
    // 255 bytes made of 2-byte UTF-8 characters plus one ASCII byte.
    let mut u = "\u{e9}".repeat(127).into_bytes();
    u.push(b'e');
    v.push(u);
    v
}

/// Decoy names in the corpus (user files named like evac temporaries).
pub fn decoy_names() -> Vec<Vec<u8>> {
    weird_names()
        .into_iter()
        .filter(|n| is_evac_temp(n))
        .collect()
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// `len` deterministic bytes from `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn hash_bytes(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

// ---------------------------------------------------------------------------
// Directory handles: dirfd-relative filesystem calls
// ---------------------------------------------------------------------------

fn cstring(b: &[u8]) -> CString {
    CString::new(b).expect("NUL byte in a file name")
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub type Stat = libc::stat;

/// An open directory. All operations are relative to it, so they work at any depth.
pub struct D {
    fd: OwnedFd,
}

impl D {
    pub fn open(path: &Path) -> io::Result<D> {
        let c = cstring(path.as_os_str().as_bytes());
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(D {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn openat(&self, name: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let c = cstring(name);
        let fd = cvt(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Open with O_NOATIME, falling back to a plain open when not permitted.
    fn openat_noatime(&self, name: &[u8], flags: i32) -> io::Result<OwnedFd> {
        match self.openat(name, flags | libc::O_NOATIME, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.openat(name, flags, 0),
            r => r,
        }
    }

    /// Open a subdirectory (never following a symlink).
    pub fn sub(&self, name: &[u8]) -> io::Result<D> {
        let fd =
            self.openat_noatime(name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        Ok(D { fd })
    }

    pub fn mkdir(&self, name: &[u8], mode: u32) -> io::Result<D> {
        let c = cstring(name);
        cvt(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })?;
        self.sub(name)
    }

    /// mkdir, or open it if it already exists as a directory.
    pub fn mkdir_or_open(&self, name: &[u8], mode: u32) -> io::Result<D> {
        match self.mkdir(name, mode) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.sub(name),
            r => r,
        }
    }

    /// Create a new regular file with `data`.
    pub fn create(&self, name: &[u8], data: &[u8], mode: u32) -> io::Result<()> {
        let fd = self.openat(
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?;
        let mut f = File::from(fd);
        f.write_all(data)
    }

    /// Open an existing regular file for writing (no truncation), never following symlinks.
    pub fn open_write(&self, name: &[u8]) -> io::Result<File> {
        Ok(File::from(self.openat(
            name,
            libc::O_WRONLY | libc::O_NOFOLLOW,
            0,
        )?))
    }

    /// Read a regular file (O_NOATIME when allowed, never following a symlink).
    pub fn read(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let fd = self.openat_noatime(name, libc::O_RDONLY | libc::O_NOFOLLOW)?;
        let mut v = Vec::new();
        File::from(fd).read_to_end(&mut v)?;
        Ok(v)
    }

    /// blake3 of a regular file (O_NOATIME when allowed, never following a symlink).
    pub fn hash(&self, name: &[u8]) -> io::Result<[u8; 32]> {
        let fd = self.openat_noatime(name, libc::O_RDONLY | libc::O_NOFOLLOW)?;
        let mut f = File::from(fd);
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(*h.finalize().as_bytes())
    }

    pub fn symlink(&self, name: &[u8], target: &[u8]) -> io::Result<()> {
        let t = cstring(target);
        let n = cstring(name);
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), n.as_ptr()) }).map(|_| ())
    }

    /// Make `self/name` a hard link to `from_dir/from_name`.
    pub fn link_from(&self, name: &[u8], from_dir: &D, from_name: &[u8]) -> io::Result<()> {
        let a = cstring(from_name);
        let b = cstring(name);
        cvt(unsafe { libc::linkat(from_dir.raw(), a.as_ptr(), self.raw(), b.as_ptr(), 0) })
            .map(|_| ())
    }

    pub fn mkfifo(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::mkfifoat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
    }

    pub fn mknod_char(&self, name: &[u8], mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let c = cstring(name);
        let dev = libc::makedev(major, minor);
        cvt(unsafe {
            libc::mknodat(
                self.raw(),
                c.as_ptr(),
                libc::S_IFCHR | mode as libc::mode_t,
                dev,
            )
        })
        .map(|_| ())
    }

    /// lstat relative to this directory; `b"."` is the directory itself.
    pub fn lstat(&self, name: &[u8]) -> io::Result<Stat> {
        let c = cstring(name);
        let mut st: Stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    pub fn chmod(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::fchmodat(self.raw(), c.as_ptr(), mode as libc::mode_t, 0) }).map(|_| ())
    }

    pub fn chown(&self, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
            .map(|_| ())
    }

    /// Set atime and mtime (seconds, nanoseconds) without following a symlink.
    pub fn set_times(&self, name: &[u8], atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
        let c = cstring(name);
        let ts = [
            libc::timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            libc::timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        ];
        cvt(unsafe {
            libc::utimensat(
                self.raw(),
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(|_| ())
    }

    /// `/proc/self/fd/N/name`: a short path to an entry at any depth, for the
    /// l*xattr calls (which have no *at variant).
    pub fn proc_path(&self, name: &[u8]) -> CString {
        let mut p = format!("/proc/self/fd/{}/", self.raw()).into_bytes();
        p.extend_from_slice(name);
        cstring(&p)
    }

    pub fn set_xattr(&self, name: &[u8], key: &[u8], value: &[u8]) -> io::Result<()> {
        let p = self.proc_path(name);
        let k = cstring(key);
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                k.as_ptr(),
                value.as_ptr() as *const libc::c_void,
                value.len(),
                0,
            )
        })
        .map(|_| ())
    }

    /// All xattrs of an entry (not following a symlink), sorted by name.
    pub fn xattrs(&self, name: &[u8]) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let p = self.proc_path(name);
        let mut map = BTreeMap::new();
        let list = loop {
            let n = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOTSUP) {
                    return Ok(map);
                }
                return Err(e);
            }
            let mut buf = vec![0u8; n as usize + 1];
            let m = unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
            };
            if m < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(m as usize);
            break buf;
        };
        for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let k = cstring(key);
            let val = loop {
                let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), std::ptr::null_mut(), 0) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut buf = vec![0u8; n as usize + 1];
                let m = unsafe {
                    libc::lgetxattr(
                        p.as_ptr(),
                        k.as_ptr(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                    )
                };
                if m < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ERANGE) {
                        continue;
                    }
                    return Err(e);
                }
                buf.truncate(m as usize);
                break buf;
            };
            map.insert(key.to_vec(), val);
        }
        Ok(map)
    }

    pub fn readlink(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let c = cstring(name);
        let mut buf = vec![0u8; 8192];
        let n = unsafe {
            libc::readlinkat(
                self.raw(),
                c.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Entry names, sorted, without `.` and `..`.
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        let dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut v = Vec::new();
        for ent in dir {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                v.push(n.to_vec());
            }
        }
        v.sort();
        Ok(v)
    }

    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }).map(|_| ())
    }

    pub fn rmdir(&self, name: &[u8]) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
    }

    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let a = cstring(from);
        let b = cstring(to);
        cvt(unsafe { libc::renameat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr()) }).map(|_| ())
    }

    pub fn set_len(&self, name: &[u8], len: u64) -> io::Result<()> {
        let f = self.open_write(name)?;
        f.set_len(len)
    }

    pub fn pwrite(&self, name: &[u8], offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = self.open_write(name)?;
        f.write_all_at(data, offset)
    }
}

/// Open the parent directory of `root/rel` (component by component, never
/// following symlinks) and return it with the last name. `rel == b""` gives
/// `(root, ".")`.
pub fn open_rel(root: &Path, rel: &[u8]) -> io::Result<(D, Vec<u8>)> {
    let mut d = D::open(root)?;
    if rel.is_empty() {
        return Ok((d, b".".to_vec()));
    }
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    for p in &parts[..parts.len() - 1] {
        d = d.sub(p)?;
    }
    Ok((d, parts[parts.len() - 1].to_vec()))
}

pub fn lstat_rel(root: &Path, rel: &[u8]) -> io::Result<Stat> {
    let (d, n) = open_rel(root, rel)?;
    d.lstat(&n)
}

pub fn read_rel(root: &Path, rel: &[u8]) -> io::Result<Vec<u8>> {
    let (d, n) = open_rel(root, rel)?;
    d.read(&n)
}

pub fn readlink_rel(root: &Path, rel: &[u8]) -> io::Result<Vec<u8>> {
    let (d, n) = open_rel(root, rel)?;
    d.readlink(&n)
}

/// Create all directories of `rel` under root (dirfd-relative; any depth) and return the last.
pub fn mkdirs_rel(root: &Path, rel: &[u8], mode: u32) -> io::Result<D> {
    let mut d = D::open(root)?;
    if rel.is_empty() {
        return Ok(d);
    }
    for p in rel.split(|b| *b == b'/') {
        d = d.mkdir_or_open(p, mode)?;
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    fn from_mode(m: u32) -> Kind {
        match m & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            other => panic!("unknown file type {other:o}"),
        }
    }
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    pub nlink: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// blake3 of the content (regular files, when hashing was asked for).
    pub hash: Option<[u8; 32]>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
}

impl Entry {
    fn from_stat(st: &Stat) -> Entry {
        Entry {
            kind: Kind::from_mode(st.st_mode),
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
            rdev: st.st_rdev,
            nlink: st.st_nlink,
            blocks: st.st_blocks as u64,
            hash: None,
            xattrs: BTreeMap::new(),
            target: None,
        }
    }
    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks * 512 < self.size
    }
}

#[derive(Clone, Debug)]
pub struct ScanOpts {
    /// Hash regular files' content.
    pub hash: bool,
    /// Relative paths not to record or enter (e.g. DEST inside SOURCE).
    pub skip: Vec<Vec<u8>>,
    /// Do not enter directories on another filesystem.
    pub one_fs: bool,
}

impl Default for ScanOpts {
    fn default() -> Self {
        ScanOpts {
            hash: true,
            skip: Vec::new(),
            one_fs: false,
        }
    }
}

/// Everything about a tree, keyed by raw relative path (`b""` is the root).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub root: PathBuf,
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

impl Manifest {
    pub fn scan(root: &Path) -> Manifest {
        Self::scan_opts(root, &ScanOpts::default())
    }

    pub fn scan_opts(root: &Path, opts: &ScanOpts) -> Manifest {
        let d = D::open(root)
            .unwrap_or_else(|e| panic!("manifest: cannot open {}: {e}", root.display()));
        let mut entries = BTreeMap::new();
        let st = d.lstat(b".").unwrap();
        let mut e = Entry::from_stat(&st);
        e.xattrs = d.xattrs(b".").unwrap_or_default();
        let dev = e.dev;
        entries.insert(Vec::new(), e);
        Self::walk(&d, b"", dev, opts, &mut entries);
        Manifest {
            root: root.to_path_buf(),
            entries,
        }
    }

    fn walk(
        d: &D,
        prefix: &[u8],
        root_dev: u64,
        opts: &ScanOpts,
        out: &mut BTreeMap<Vec<u8>, Entry>,
    ) {
        let names = d
            .names()
            .unwrap_or_else(|e| panic!("manifest: readdir {}: {e}", esc(prefix)));
        for name in names {
            let rel = join_rel(prefix, &name);
            if opts.skip.contains(&rel) {
                continue;
            }
            let st = match d.lstat(&name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // vanished meanwhile
                Err(e) => panic!("manifest: lstat {}: {e}", esc(&rel)),
            };
            let mut e = Entry::from_stat(&st);
            e.xattrs = d
                .xattrs(&name)
                .unwrap_or_else(|err| panic!("manifest: xattrs of {}: {err}", esc(&rel)));
            match e.kind {
                Kind::Symlink => {
                    e.target = Some(
                        d.readlink(&name)
                            .unwrap_or_else(|err| panic!("readlink {}: {err}", esc(&rel))),
                    )
                }
                Kind::File if opts.hash => {
                    e.hash = Some(
                        d.hash(&name)
                            .unwrap_or_else(|err| panic!("manifest: read {}: {err}", esc(&rel))),
                    )
                }
                _ => {}
            }
            let is_dir = e.kind == Kind::Dir;
            let other_fs = e.dev != root_dev;
            out.insert(rel.clone(), e);
            if is_dir && !(opts.one_fs && other_fs) {
                match d.sub(&name) {
                    Ok(sub) => Self::walk(&sub, &rel, root_dev, opts, out),
                    Err(err) => panic!("manifest: open dir {}: {err}", esc(&rel)),
                }
            }
        }
    }

    pub fn get(&self, rel: &[u8]) -> Option<&Entry> {
        self.entries.get(rel)
    }

    pub fn of_kind(&self, k: Kind) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.entries.iter().filter(move |(_, e)| e.kind == k)
    }

    pub fn files(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.of_kind(Kind::File)
    }

    pub fn file_count(&self) -> usize {
        self.files().count()
    }

    /// Number of distinct inodes among regular files.
    pub fn distinct_file_inodes(&self) -> usize {
        self.files()
            .map(|(_, e)| (e.dev, e.ino))
            .collect::<BTreeSet<_>>()
            .len()
    }

    pub fn file_bytes_distinct(&self) -> u64 {
        let mut seen = BTreeSet::new();
        self.files()
            .filter(|(_, e)| seen.insert((e.dev, e.ino)))
            .map(|(_, e)| e.size)
            .sum()
    }

    /// Hard-link groups (by inode) among the given regular files, as sets of paths.
    pub fn link_groups_of<'a>(
        &self,
        rels: impl Iterator<Item = &'a Vec<u8>>,
    ) -> BTreeSet<BTreeSet<Vec<u8>>> {
        let mut by_ino: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
        for r in rels {
            if let Some(e) = self.entries.get(r) {
                if e.kind == Kind::File {
                    by_ino.entry((e.dev, e.ino)).or_default().insert(r.clone());
                }
            }
        }
        by_ino.into_values().collect()
    }

    /// Paths whose basename looks like an evac temporary.
    pub fn temp_names(&self) -> Vec<Vec<u8>> {
        self.entries
            .keys()
            .filter(|r| is_evac_temp(basename(r)))
            .cloned()
            .collect()
    }
}

/// Which fields `diff_manifests` compares.
#[derive(Clone, Copy, Debug)]
pub struct DiffOpts {
    pub ino: bool,
    pub ctime: bool,
    /// Compare atime of regular files (dir and symlink atimes are never compared:
    /// readdir/readlink by anyone may update them).
    pub file_atime: bool,
    pub dir_mtime: bool,
}

impl DiffOpts {
    pub fn everything() -> DiffOpts {
        DiffOpts {
            ino: true,
            ctime: true,
            file_atime: true,
            dir_mtime: true,
        }
    }
}

/// Differences between two manifests, described one per line.
pub fn diff_manifests(a: &Manifest, b: &Manifest, o: DiffOpts) -> Vec<String> {
    let mut p = Vec::new();
    for (rel, ea) in &a.entries {
        let Some(eb) = b.entries.get(rel) else {
            p.push(format!("{}: disappeared (was {:?})", short(rel), ea.kind));
            continue;
        };
        let mut d = Vec::new();
        if ea.kind != eb.kind {
            d.push(format!("kind {:?} -> {:?}", ea.kind, eb.kind));
        }
        if ea.mode != eb.mode {
            d.push(format!("mode {:o} -> {:o}", ea.mode, eb.mode));
        }
        if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
            d.push(format!(
                "owner {}:{} -> {}:{}",
                ea.uid, ea.gid, eb.uid, eb.gid
            ));
        }
        if ea.kind != Kind::Dir && ea.size != eb.size {
            d.push(format!("size {} -> {}", ea.size, eb.size));
        }
        if ea.hash != eb.hash {
            d.push("content changed".into());
        }
        if ea.target != eb.target {
            d.push(format!(
                "target {} -> {}",
                short(ea.target.as_deref().unwrap_or(b"")),
                short(eb.target.as_deref().unwrap_or(b""))
            ));
        }
        if ea.xattrs != eb.xattrs {
            d.push(format!(
                "xattrs {:?} -> {:?}",
                xattr_names(&ea.xattrs),
                xattr_names(&eb.xattrs)
            ));
        }
        if (ea.kind != Kind::Dir || o.dir_mtime) && ea.mtime != eb.mtime {
            d.push(format!("mtime {:?} -> {:?}", ea.mtime, eb.mtime));
        }
        if o.file_atime && ea.kind == Kind::File && ea.atime != eb.atime {
            d.push(format!("atime {:?} -> {:?}", ea.atime, eb.atime));
        }
        if o.ctime && ea.ctime != eb.ctime {
            d.push(format!("ctime {:?} -> {:?}", ea.ctime, eb.ctime));
        }
        if o.ino && ea.ino != eb.ino {
            d.push(format!("inode {} -> {}", ea.ino, eb.ino));
        }
        if ea.kind == Kind::File && ea.nlink != eb.nlink {
            d.push(format!("nlink {} -> {}", ea.nlink, eb.nlink));
        }
        if !d.is_empty() {
            p.push(format!("{}: {}", short(rel), d.join(", ")));
        }
    }
    for (rel, eb) in &b.entries {
        if !a.entries.contains_key(rel) {
            p.push(format!("{}: appeared ({:?})", short(rel), eb.kind));
        }
    }
    p
}

fn xattr_names(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<String> {
    m.iter()
        .map(|(k, v)| format!("{}={}", short(k), short(v)))
        .collect()
}

/// A suite's figures (what its adversaries did, kills, faults injected, data lost), printed and
/// appended to `target/tmp/figures.txt`, which `.ci/run` prints after the tests (cargo test
/// shows a passing test's output only with --nocapture).
pub fn figures(suite: &str, line: &str) {
    use std::io::Write;
    eprintln!("FIGURES {suite}: {line}");
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        let _ = writeln!(f, "{suite}: {line}");
    }
}

#[track_caller]
pub fn assert_no_problems(what: &str, problems: &[String]) {
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(60).collect();
        panic!(
            "{what}: {} problem(s):\n  {}{}",
            problems.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if problems.len() > 60 { "\n  …" } else { "" }
        );
    }
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct OracleOpts {
    /// LINK_PREFIX; None means DEST's absolute path.
    pub link_prefix: Option<Vec<u8>>,
    /// Compare DEST files' atime with the original's.
    pub check_atime: bool,
    /// Compare DEST directories' mtime with the original's.
    pub check_dir_mtime: bool,
    /// Allow entries at DEST that were not in SOURCE (besides `.evac-trash`).
    pub allow_extra_dest: bool,
    /// A subtree of SOURCE to leave out of the after-scan (DEST inside SOURCE).
    pub source_skip: Vec<Vec<u8>>,
    /// Paths of `before` that are expected NOT to be relocated (left as regular files).
    pub not_relocated: BTreeSet<Vec<u8>>,
}

impl Default for OracleOpts {
    fn default() -> Self {
        OracleOpts {
            link_prefix: None,
            check_atime: true,
            check_dir_mtime: true,
            allow_extra_dest: false,
            source_skip: Vec::new(),
            not_relocated: BTreeSet::new(),
        }
    }
}

fn is_trash(rel: &[u8]) -> bool {
    rel == b".evac-trash" || rel.starts_with(b".evac-trash/")
}

/// Everything wrong with SOURCE/DEST after a complete relocation of `before`.
pub fn relocation_problems(
    before: &Manifest,
    source: &Path,
    dest: &Path,
    o: &OracleOpts,
) -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    let prefix = o.link_prefix.clone().unwrap_or_else(|| bytes_of(dest));
    let after_src = Manifest::scan_opts(
        source,
        &ScanOpts {
            hash: true,
            skip: o.source_skip.clone(),
            one_fs: false,
        },
    );
    if !dest.is_dir() {
        p.push(format!("DEST {} does not exist", dest.display()));
        return p;
    }
    let after_dst = Manifest::scan(dest);

    let relocated: Vec<&Vec<u8>> = before
        .files()
        .map(|(r, _)| r)
        .filter(|r| !o.not_relocated.contains(*r))
        .collect();

    // Regular files: SOURCE link + DEST copy.
    for rel in &relocated {
        let b = &before.entries[*rel];
        let want_target = join_rel(&prefix, rel);
        match after_src.get(rel) {
            None => p.push(format!(
                "{}: missing in SOURCE (should be a symlink)",
                short(rel)
            )),
            Some(s) if s.kind != Kind::Symlink => p.push(format!(
                "{}: still a {:?} in SOURCE, not a symlink",
                short(rel),
                s.kind
            )),
            Some(s) => {
                if s.target.as_deref() != Some(&want_target[..]) {
                    p.push(format!(
                        "{}: link target {} (want {})",
                        short(rel),
                        short(s.target.as_deref().unwrap_or(b"")),
                        short(&want_target)
                    ));
                }
                if (s.uid, s.gid) != (b.uid, b.gid) {
                    p.push(format!(
                        "{}: link owner {}:{} (want {}:{})",
                        short(rel),
                        s.uid,
                        s.gid,
                        b.uid,
                        b.gid
                    ));
                }
                if s.mtime != b.mtime {
                    p.push(format!(
                        "{}: link mtime {:?} (want {:?})",
                        short(rel),
                        s.mtime,
                        b.mtime
                    ));
                }
            }
        }
        match after_dst.get(rel) {
            None => p.push(format!("{}: missing at DEST", short(rel))),
            Some(d) if d.kind != Kind::File => {
                p.push(format!("{}: is a {:?} at DEST", short(rel), d.kind))
            }
            Some(d) => {
                let mut diffs = Vec::new();
                if d.hash != b.hash {
                    diffs.push("content differs".to_string());
                }
                if d.size != b.size {
                    diffs.push(format!("size {} (want {})", d.size, b.size));
                }
                if d.mode != b.mode {
                    diffs.push(format!("mode {:o} (want {:o})", d.mode, b.mode));
                }
                if (d.uid, d.gid) != (b.uid, b.gid) {
                    diffs.push(format!(
                        "owner {}:{} (want {}:{})",
                        d.uid, d.gid, b.uid, b.gid
                    ));
                }
                if d.mtime != b.mtime {
                    diffs.push(format!("mtime {:?} (want {:?})", d.mtime, b.mtime));
                }
                if o.check_atime && d.atime != b.atime {
                    diffs.push(format!("atime {:?} (want {:?})", d.atime, b.atime));
                }
                if d.xattrs != b.xattrs {
                    diffs.push(format!(
                        "xattrs {:?} (want {:?})",
                        xattr_names(&d.xattrs),
                        xattr_names(&b.xattrs)
                    ));
                }
                if b.is_sparse() && d.blocks > b.blocks {
                    diffs.push(format!(
                        "not sparse: {} blocks at DEST, {} in SOURCE (size {})",
                        d.blocks, b.blocks, b.size
                    ));
                }
                if !diffs.is_empty() {
                    p.push(format!("{} at DEST: {}", short(rel), diffs.join(", ")));
                }
            }
        }
    }

    // Files that must have stayed regular files in SOURCE, untouched.
    for rel in &o.not_relocated {
        let (Some(b), Some(a)) = (before.get(rel), after_src.get(rel)) else {
            p.push(format!(
                "{}: should have stayed in SOURCE but is gone",
                short(rel)
            ));
            continue;
        };
        if a.kind != Kind::File || a.hash != b.hash || a.size != b.size {
            p.push(format!(
                "{}: should have stayed an intact regular file in SOURCE ({:?})",
                short(rel),
                a.kind
            ));
        }
    }

    // Hard-link groups.
    let want_groups = before.link_groups_of(relocated.iter().copied());
    let got_groups = after_dst.link_groups_of(relocated.iter().copied());
    if want_groups != got_groups {
        let show = |g: &BTreeSet<BTreeSet<Vec<u8>>>| -> Vec<String> {
            g.iter()
                .filter(|s| s.len() > 1)
                .map(|s| s.iter().map(|r| short(r)).collect::<Vec<_>>().join(" = "))
                .collect()
        };
        let only_want: BTreeSet<_> = want_groups.difference(&got_groups).cloned().collect();
        let only_got: BTreeSet<_> = got_groups.difference(&want_groups).cloned().collect();
        p.push(format!(
            "hard-link groups differ: SOURCE had {:?}, DEST has {:?} (multi-name groups only)",
            show(&only_want),
            show(&only_got)
        ));
    }
    for g in &want_groups {
        let first = g.iter().next().unwrap();
        if let Some(d) = after_dst.get(first) {
            if d.kind == Kind::File && d.nlink != g.len() as u64 {
                p.push(format!(
                    "{}: nlink {} at DEST, want {}",
                    short(first),
                    d.nlink,
                    g.len()
                ));
            }
        }
    }

    // Directories.
    for (rel, b) in before.of_kind(Kind::Dir) {
        if rel.is_empty() {
            continue;
        }
        match after_src.get(rel) {
            Some(s) if s.kind == Kind::Dir => {}
            other => p.push(format!(
                "{}: directory in SOURCE is now {:?}",
                short(rel),
                other.map(|e| e.kind)
            )),
        }
        match after_dst.get(rel) {
            None => p.push(format!("{}/: directory missing at DEST", short(rel))),
            Some(d) if d.kind != Kind::Dir => {
                p.push(format!("{}/: is a {:?} at DEST", short(rel), d.kind))
            }
            Some(d) => {
                let mut diffs = Vec::new();
                if d.mode != b.mode {
                    diffs.push(format!("mode {:o} (want {:o})", d.mode, b.mode));
                }
                if (d.uid, d.gid) != (b.uid, b.gid) {
                    diffs.push(format!(
                        "owner {}:{} (want {}:{})",
                        d.uid, d.gid, b.uid, b.gid
                    ));
                }
                if o.check_dir_mtime && d.mtime != b.mtime {
                    diffs.push(format!("mtime {:?} (want {:?})", d.mtime, b.mtime));
                }
                if d.xattrs != b.xattrs {
                    diffs.push(format!(
                        "xattrs {:?} (want {:?})",
                        xattr_names(&d.xattrs),
                        xattr_names(&b.xattrs)
                    ));
                }
                if !diffs.is_empty() {
                    p.push(format!("{}/ at DEST: {}", short(rel), diffs.join(", ")));
                }
            }
        }
    }

    // Symlinks and special files: untouched in SOURCE, not copied.
    for (rel, b) in before
        .entries
        .iter()
        .filter(|(_, e)| e.kind == Kind::Symlink || e.kind.is_special())
    {
        match after_src.get(rel) {
            None => p.push(format!("{}: {:?} vanished from SOURCE", short(rel), b.kind)),
            Some(a) => {
                let same = a.kind == b.kind
                    && a.ino == b.ino
                    && a.target == b.target
                    && a.mode == b.mode
                    && (a.uid, a.gid) == (b.uid, b.gid)
                    && a.mtime == b.mtime
                    && a.ctime == b.ctime
                    && a.rdev == b.rdev;
                if !same {
                    p.push(format!(
                        "{}: {:?} in SOURCE was modified (before {:?}, after {:?})",
                        short(rel),
                        b.kind,
                        (b.ino, b.mode, b.uid, b.gid, b.mtime, b.ctime),
                        (a.ino, a.mode, a.uid, a.gid, a.mtime, a.ctime)
                    ));
                }
            }
        }
        // A link that already points to LINK_PREFIX/<rel> is an earlier relocation: its DEST file is expected.
        let already =
            b.kind == Kind::Symlink && b.target.as_deref() == Some(&join_rel(&prefix, rel)[..]);
        if let (Some(d), false) = (after_dst.get(rel), already) {
            p.push(format!(
                "{}: {:?} was copied to DEST (as {:?})",
                short(rel),
                b.kind,
                d.kind
            ));
        }
    }

    // Unexpected entries at DEST.
    if !o.allow_extra_dest {
        for (rel, d) in &after_dst.entries {
            if rel.is_empty() || is_trash(rel) || before.entries.contains_key(rel) {
                continue;
            }
            p.push(format!("{}: unexpected {:?} at DEST", short(rel), d.kind));
        }
    }

    // Temporaries.
    for (side, m) in [("SOURCE", &after_src), ("DEST", &after_dst)] {
        for rel in m.temp_names() {
            if before.entries.contains_key(&rel) {
                continue; // a user's file that merely looks like a temporary
            }
            p.push(format!("{side}: leftover temporary {}", short(&rel)));
        }
    }
    p
}

/// The oracle with default options: every regular file of `before` relocated.
#[track_caller]
pub fn check_relocated(before: &Manifest, source: &Path, dest: &Path, link_prefix: Option<&Path>) {
    let o = OracleOpts {
        link_prefix: link_prefix.map(bytes_of),
        ..Default::default()
    };
    check_relocated_opts(before, source, dest, &o);
}

#[track_caller]
pub fn check_relocated_opts(before: &Manifest, source: &Path, dest: &Path, o: &OracleOpts) {
    let p = relocation_problems(before, source, dest, o);
    assert_no_problems("relocation oracle", &p);
}

/// Leftover temporaries anywhere under `root`, except paths in `allowed`.
pub fn leftover_temps(root: &Path, allowed: &Manifest) -> Vec<Vec<u8>> {
    let m = Manifest::scan_opts(
        root,
        &ScanOpts {
            hash: false,
            ..Default::default()
        },
    );
    m.temp_names()
        .into_iter()
        .filter(|r| !allowed.entries.contains_key(r))
        .collect()
}

// ---------------------------------------------------------------------------
// Tree builder
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub seed: u64,
    /// Number of ordinary files under `t/`.
    pub files: usize,
    /// Cap on generated file sizes.
    pub max_size: usize,
    pub hardlinks: bool,
    pub sparse: bool,
    /// user.* xattrs.
    pub xattrs: bool,
    /// FIFO, socket (and as root a device node).
    pub specials: bool,
    pub symlinks: bool,
    pub weird_names: bool,
    /// A directory chain whose full path exceeds PATH_MAX.
    pub deep_chain: bool,
    /// setuid/setgid/sticky and varied permission bits.
    pub modes: bool,
    /// Varied uid/gid (root only).
    pub owners: bool,
    /// trusted.*, security.capability, POSIX ACLs (root only).
    pub root_xattrs: bool,
    /// Set distinctive atime/mtime (with nanoseconds) on everything.
    pub times: bool,
}

impl TreeSpec {
    /// Everything the harness can build (owners/root xattrs only as root).
    pub fn full(seed: u64) -> TreeSpec {
        TreeSpec {
            seed,
            files: 60,
            max_size: 1 << 20,
            hardlinks: true,
            sparse: true,
            xattrs: true,
            specials: true,
            symlinks: true,
            weird_names: true,
            deep_chain: true,
            modes: true,
            owners: is_root(),
            root_xattrs: is_root(),
            times: true,
        }
    }
    /// Only `files` ordinary files in nested dirs (with times).
    pub fn plain(files: usize, seed: u64) -> TreeSpec {
        TreeSpec {
            seed,
            files,
            max_size: 64 << 10,
            hardlinks: false,
            sparse: false,
            xattrs: false,
            specials: false,
            symlinks: false,
            weird_names: false,
            deep_chain: false,
            modes: false,
            owners: false,
            root_xattrs: false,
            times: true,
        }
    }
}

/// What the builder made (relative paths).
#[derive(Default, Debug, Clone)]
pub struct TreeInfo {
    pub files: Vec<Vec<u8>>,
    pub hardlink_groups: Vec<Vec<Vec<u8>>>,
    pub sparse: Vec<Vec<u8>>,
    pub symlinks: Vec<Vec<u8>>,
    pub fifos: Vec<Vec<u8>>,
    pub sockets: Vec<Vec<u8>>,
    pub devices: Vec<Vec<u8>>,
    pub weird: Vec<Vec<u8>>,
    pub deep_files: Vec<Vec<u8>>,
    pub root_xattr_files: Vec<Vec<u8>>,
    /// A directory outside the tree that a symlink in the tree points to.
    pub outside: Option<PathBuf>,
}

impl TreeInfo {
    pub fn specials(&self) -> Vec<Vec<u8>> {
        let mut v = self.fifos.clone();
        v.extend(self.sockets.iter().cloned());
        v.extend(self.devices.iter().cloned());
        v
    }
}

const SIZES: &[usize] = &[
    0, 1, 2, 100, 511, 4095, 4096, 4097, 8192, 65_537, 131_072, 300_001, 1_048_579,
];

pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

/// The on-disk (xattr) form of a POSIX ACL.
pub fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// security.capability granting cap_net_bind_service (effective + permitted), VFS v2.
pub fn cap_xattr() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o640, 0o4755, 0o2755, 0o6711, 0o444, 0o664, 0o700,
];
const DIR_MODES: &[u32] = &[0o755, 0o2775, 0o1777, 0o750, 0o711, 0o3775];
const OWNERS: &[(u32, u32)] = &[
    (1234, 5678),
    (4321, 8765),
    (0, 0),
    (65534, 65534),
    (1234, 0),
];

struct Builder<'a> {
    spec: &'a TreeSpec,
    info: TreeInfo,
    rng: Rng,
    counter: u64,
}

impl<'a> Builder<'a> {
    /// Create one regular file with all the metadata the spec asks for.
    fn file(&mut self, d: &D, prefix: &[u8], name: &[u8], size: usize) -> Vec<u8> {
        let data = content(self.spec.seed ^ fnv64(&join_rel(prefix, name)), size);
        self.file_with(d, prefix, name, |d, n| d.create(n, &data, 0o600))
    }

    /// Create a file with `write`, then apply owner, mode and xattrs (in that
    /// order: a write or chown would clear setuid bits and capabilities).
    fn file_with(
        &mut self,
        d: &D,
        prefix: &[u8],
        name: &[u8],
        write: impl FnOnce(&D, &[u8]) -> io::Result<()>,
    ) -> Vec<u8> {
        let rel = join_rel(prefix, name);
        self.counter += 1;
        let i = self.counter;
        write(d, name).unwrap_or_else(|e| panic!("create {}: {e}", esc(&rel)));
        if self.spec.owners {
            let (u, g) = OWNERS[(i as usize) % OWNERS.len()];
            d.chown(name, u, g).unwrap();
        }
        // user.* xattrs need write permission: set them before the mode.
        if self.spec.xattrs && i % 3 == 0 {
            d.set_xattr(name, b"user.evac.test", &content(i, (i % 40) as usize))
                .unwrap();
            d.set_xattr(name, b"user.bin", b"\x00\x01\xff\xfe\n")
                .unwrap();
            if i % 2 == 0 {
                d.set_xattr(name, b"user.empty", b"").unwrap();
            }
        }
        let mode = if self.spec.modes {
            FILE_MODES[(i as usize) % FILE_MODES.len()]
        } else {
            0o644
        };
        d.chmod(name, mode).unwrap();
        self.info.files.push(rel.clone());
        rel
    }

    fn dir(&mut self, parent: &D, prefix: &[u8], name: &[u8], idx: usize) -> D {
        let rel = join_rel(prefix, name);
        let d = parent
            .mkdir(name, 0o755)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", esc(&rel)));
        if self.spec.owners {
            let (u, g) = OWNERS[(idx + 1) % OWNERS.len()];
            parent.chown(name, u, g).unwrap();
        }
        if self.spec.xattrs && idx % 2 == 0 {
            parent
                .set_xattr(name, b"user.dir", format!("dir {idx}").as_bytes())
                .unwrap();
        }
        d
    }
}

/// Build a tree under `root` (created if needed) according to `spec`.
#[allow(clippy::map_entry)]
pub fn build_tree(root: &Path, spec: &TreeSpec) -> TreeInfo {
    std::fs::create_dir_all(root).unwrap();
    let rd = D::open(root).unwrap();
    let mut b = Builder {
        spec,
        info: TreeInfo::default(),
        rng: Rng::new(spec.seed),
        counter: spec.seed % 97,
    };
    let mut dir_modes: Vec<(Vec<u8>, u32)> = Vec::new();

    // Ordinary files in nested directories: t/dNN/sNN/fNNNNN.dat
    if spec.files > 0 {
        let t = b.dir(&rd, b"", b"t", 0);
        let ndirs = spec.files.div_ceil(25).max(1);
        let per = (ndirs as f64).sqrt().ceil() as usize;
        let mut dirs: HashMap<usize, (D, Vec<u8>)> = HashMap::new();
        let mut tops: HashMap<usize, (D, Vec<u8>)> = HashMap::new();
        for i in 0..spec.files {
            let k = i % ndirs;
            let (top, sub) = (k / per, k % per);
            if !dirs.contains_key(&k) {
                if !tops.contains_key(&top) {
                    let name = format!("d{top:02}").into_bytes();
                    let d = b.dir(&t, b"t", &name, top);
                    let rel = join_rel(b"t", &name);
                    dir_modes.push((rel.clone(), DIR_MODES[top % DIR_MODES.len()]));
                    tops.insert(top, (d, rel));
                }
                let (td, trel) = &tops[&top];
                let name = format!("s{sub:02}").into_bytes();
                let d = b.dir(td, &trel.clone(), &name, k);
                let rel = join_rel(trel, &name);
                dir_modes.push((rel.clone(), DIR_MODES[(k + 1) % DIR_MODES.len()]));
                dirs.insert(k, (d, rel));
            }
            let (d, drel) = &dirs[&k];
            let mut size = SIZES[i % SIZES.len()].min(spec.max_size);
            if size > 16 {
                size = size - 8 + b.rng.below(16) as usize;
            }
            let name = format!("f{i:05}.dat").into_bytes();
            b.file(d, &drel.clone(), &name, size);
        }
    }

    if spec.hardlinks {
        let hl = b.dir(&rd, b"", b"hl", 1);
        let hsub = b.dir(&hl, b"hl", b"sub", 2);
        let other = b.dir(&rd, b"", b"hl-other", 3);
        // group 1: two names in one directory
        let a = b.file(&hl, b"hl", b"a", 5000);
        hl.link_from(b"b", &hl, b"a").unwrap();
        // group 2: three names across directories (one with a weird name)
        let x = b.file(&hl, b"hl", b"x", 70_000);
        hsub.link_from(b"x-again", &hl, b"x").unwrap();
        other.link_from(b"x\nthird name", &hl, b"x").unwrap();
        // group 3: an empty file with two names
        let e = b.file(&hsub, b"hl/sub", b"empty", 0);
        other.link_from(b"empty2", &hsub, b"empty").unwrap();
        let groups = vec![
            vec![a, b"hl/b".to_vec()],
            vec![
                x,
                b"hl/sub/x-again".to_vec(),
                b"hl-other/x\nthird name".to_vec(),
            ],
            vec![e, b"hl-other/empty2".to_vec()],
        ];
        for g in &groups {
            for r in &g[1..] {
                b.info.files.push(r.clone());
            }
        }
        b.info.hardlink_groups = groups;
    }

    if spec.sparse {
        let sp = b.dir(&rd, b"", b"sparse", 4);
        let mib = 1u64 << 20;
        let r1 = b.file_with(&sp, b"sparse", b"holes.bin", |d, n| {
            d.create(n, b"", 0o600)?;
            d.set_len(n, 8 * mib)?;
            d.pwrite(n, 0, &content(11, 4096))?;
            d.pwrite(n, 5 * mib, &content(12, 4096))
        });
        // (A file that is all hole has no data blocks, which the default `--hsm auto` takes for
        // an HSM stub: hsm_detect.rs relocates such files with --hsm none.)
        let r2 = b.file_with(&sp, b"sparse", b"mostly-hole.bin", |d, n| {
            d.create(n, b"", 0o600)?;
            d.set_len(n, 8 * mib)?;
            d.pwrite(n, 4 * mib, b"x")
        });
        let r3 = b.file_with(&sp, b"sparse", b"tail.bin", |d, n| {
            d.create(n, b"", 0o600)?;
            d.set_len(n, 3 * mib)?;
            d.pwrite(n, 3 * mib - 100, &content(13, 100))
        });
        b.info.sparse = vec![r1, r2, r3];
    }

    if spec.weird_names {
        let nd = b.dir(&rd, b"", b"names", 5);
        for (i, n) in weird_names().iter().enumerate() {
            let r = b.file(&nd, b"names", n, 10 + i * 7);
            b.info.weird.push(r);
        }
        // Directories with weird names, one nested in the other, 255-byte names.
        let wdname: &[u8] = b"dir \n\t\xff\\\"*?[-";
        let wd = b.dir(&nd, b"names", wdname, 6);
        let wrel = join_rel(b"names", wdname);
        let r = b.file(&wd, &wrel, b"inner\tfile\r", 33);
        b.info.weird.push(r);
        let long = vec![b'D'; 255];
        let ld = b.dir(&wd, &wrel, &long, 7);
        let lrel = join_rel(&wrel, &long);
        let r = b.file(&ld, &lrel, &vec![b'F'; 255], 44);
        b.info.weird.push(r);
        let r = b.file(&ld, &lrel, b"-", 1);
        b.info.weird.push(r);
    }

    if spec.deep_chain {
        // 18 levels of 240-byte names: the directory path is > 4096 bytes.
        // Regular files only down to level 12 so that DEST/<rel> still fits in
        // a symlink target (4095 bytes) for ordinary DEST paths.
        let mut d = b.dir(&rd, b"", b"deep", 8);
        let mut rel = b"deep".to_vec();
        for level in 1..=18usize {
            let mut name = format!("{level:03}-").into_bytes();
            name.resize(240, b'a' + (level % 26) as u8);
            let nd = b.dir(&d, &rel, &name, level);
            rel = join_rel(&rel, &name);
            d = nd;
            if level % 3 == 0 && level <= 12 {
                let r = b.file(&d, &rel, b"f", 100 + level);
                b.info.deep_files.push(r);
            }
            if level == 18 && spec.symlinks {
                d.symlink(b"deep-link", b"../../..").unwrap();
                b.info.symlinks.push(join_rel(&rel, b"deep-link"));
            }
        }
    }

    if spec.symlinks {
        let ld = b.dir(&rd, b"", b"links", 9);
        let outside = root
            .parent()
            .unwrap()
            .join(format!("outside-{:x}", spec.seed));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), b"outside the tree; never copy").unwrap();
        let mut abs_target = bytes_of(root);
        abs_target.extend_from_slice(if spec.files > 0 {
            b"/t/d00/s00/f00000.dat"
        } else {
            b"/links"
        });
        let links: Vec<(&[u8], Vec<u8>)> = vec![
            (
                b"rel",
                if spec.files > 0 {
                    b"../t/d00/s00/f00000.dat".to_vec()
                } else {
                    b"..".to_vec()
                },
            ),
            (b"abs", abs_target),
            (b"dangling", b"no/such/file".to_vec()),
            (b"loop", b"loop".to_vec()),
            (b"dir-outside", bytes_of(&outside)),
            (b"dir-inside", b"..".to_vec()),
            (b"we\tird\xff link", b"\xfe\nodd target".to_vec()),
        ];
        for (i, (n, t)) in links.iter().enumerate() {
            ld.symlink(n, t).unwrap();
            if spec.owners {
                let (u, g) = OWNERS[i % OWNERS.len()];
                ld.chown(n, u, g).unwrap();
            }
            b.info.symlinks.push(join_rel(b"links", n));
        }
        b.info.outside = Some(outside);
    }

    if spec.specials {
        let sd = b.dir(&rd, b"", b"special", 10);
        sd.mkfifo(b"fifo", 0o644).unwrap();
        sd.mkfifo(b"fi\nfo \xff", 0o600).unwrap();
        b.info.fifos = vec![b"special/fifo".to_vec(), b"special/fi\nfo \xff".to_vec()];
        let sock_path = root.join("special").join("sock");
        if sock_path.as_os_str().len() < 100 {
            let l = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
            drop(l); // the socket inode stays
            b.info.sockets.push(b"special/sock".to_vec());
        }
        if is_root() && sd.mknod_char(b"null-dev", 0o666, 1, 3).is_ok() {
            b.info.devices.push(b"special/null-dev".to_vec());
        }
        // a regular file next to them
        b.file(&sd, b"special", b"regular.txt", 12);
    }

    if spec.root_xattrs && is_root() {
        let xd = b.dir(&rd, b"", b"xa", 11);
        let r = b.file(&xd, b"xa", b"trusted.bin", 300);
        xd.set_xattr(b"trusted.bin", b"trusted.evac", b"\x00trusted\xff value")
            .unwrap();
        b.info.root_xattr_files.push(r);
        // File capability: set after chown/chmod (both clear it).
        let r = b.file(&xd, b"xa", b"cap-bin", 1000);
        xd.chmod(b"cap-bin", 0o755).unwrap();
        xd.set_xattr(b"cap-bin", b"security.capability", &cap_xattr())
            .unwrap();
        b.info.root_xattr_files.push(r);
        // Access ACL on a file.
        let r = b.file(&xd, b"xa", b"acl-file", 400);
        let acl = acl_xattr(&[
            (ACL_USER_OBJ, 6, u32::MAX),
            (ACL_USER, 4, 1234),
            (ACL_GROUP_OBJ, 4, u32::MAX),
            (ACL_GROUP, 4, 5678),
            (ACL_MASK, 6, u32::MAX),
            (ACL_OTHER, 0, u32::MAX),
        ]);
        xd.set_xattr(b"acl-file", b"system.posix_acl_access", &acl)
            .unwrap();
        b.info.root_xattr_files.push(r);
        // A directory with a default and an access ACL; a file inherits it.
        let ad = b.dir(&xd, b"xa", b"acl-dir", 12);
        let dacl = acl_xattr(&[
            (ACL_USER_OBJ, 7, u32::MAX),
            (ACL_USER, 5, 1234),
            (ACL_GROUP_OBJ, 5, u32::MAX),
            (ACL_MASK, 7, u32::MAX),
            (ACL_OTHER, 5, u32::MAX),
        ]);
        xd.set_xattr(b"acl-dir", b"system.posix_acl_default", &dacl)
            .unwrap();
        xd.set_xattr(b"acl-dir", b"system.posix_acl_access", &dacl)
            .unwrap();
        ad.create(b"inherits.txt", b"inherits the default ACL", 0o666)
            .unwrap();
        b.info.files.push(b"xa/acl-dir/inherits.txt".to_vec());
        b.info
            .root_xattr_files
            .push(b"xa/acl-dir/inherits.txt".to_vec());
        // All of it together, with setuid.
        let r = b.file(&xd, b"xa", b"everything", 2000);
        xd.chown(b"everything", 1234, 5678).unwrap();
        xd.chmod(b"everything", 0o4750).unwrap();
        xd.set_xattr(b"everything", b"user.a", b"1").unwrap();
        xd.set_xattr(b"everything", b"trusted.b", b"2").unwrap();
        xd.set_xattr(b"everything", b"security.capability", &cap_xattr())
            .unwrap();
        xd.set_xattr(b"everything", b"system.posix_acl_access", &acl)
            .unwrap();
        b.info.root_xattr_files.push(r);
        // A big user xattr value.
        let r = b.file(&xd, b"xa", b"big-xattr", 10);
        xd.set_xattr(b"big-xattr", b"user.big", &content(5, 2000))
            .unwrap();
        b.info.root_xattr_files.push(r);
    }

    // Directory modes last-but-one (creating entries does not change modes; it
    // would clear nothing), then times bottom-up.
    if spec.modes {
        for (rel, mode) in &dir_modes {
            let (d, n) = open_rel(root, rel).unwrap();
            d.chmod(&n, *mode).unwrap();
        }
    }
    if spec.times {
        stamp_times(root, spec.seed);
    }
    b.info
}

/// The times `stamp_times` gives `rel`: (atime, mtime), both with nanoseconds.
pub fn stamp_for(seed: u64, rel: &[u8]) -> ((i64, i64), (i64, i64)) {
    let mut r = Rng::new(seed ^ fnv64(rel));
    let m = (
        1_500_000_000 + r.below(100_000_000) as i64,
        1 + r.below(999_999_998) as i64,
    );
    let a = (
        1_000_000_000 + r.below(400_000_000) as i64,
        1 + r.below(999_999_998) as i64,
    );
    (a, m)
}

/// Give every entry under `root` (and root itself) distinctive atime/mtime, bottom-up.
pub fn stamp_times(root: &Path, seed: u64) {
    fn walk(d: &D, prefix: &[u8], seed: u64) {
        for name in d.names().unwrap() {
            let rel = join_rel(prefix, &name);
            let st = d.lstat(&name).unwrap();
            if Kind::from_mode(st.st_mode) == Kind::Dir {
                walk(&d.sub(&name).unwrap(), &rel, seed);
            }
            let (a, m) = stamp_for(seed, &rel);
            d.set_times(&name, a, m)
                .unwrap_or_else(|e| panic!("utimensat {}: {e}", esc(&rel)));
        }
    }
    let d = D::open(root).unwrap();
    walk(&d, b"", seed);
    let (a, m) = stamp_for(seed, b"");
    d.set_times(b".", a, m).unwrap();
}

// ---------------------------------------------------------------------------
// Busy files
// ---------------------------------------------------------------------------

/// A process that keeps a file busy; killed on drop.
pub struct Holder {
    pub child: Child,
}

impl Holder {
    /// `sh -c 'exec 3>>FILE; exec sleep 600'`: FILE is open for writing until released.
    pub fn hold_for_write(path: &Path) -> Holder {
        Holder::hold_open(path, ">>")
    }

    /// FILE open for reading (`3<FILE`) until released.
    pub fn hold_for_read(path: &Path) -> Holder {
        Holder::hold_open(path, "<")
    }

    /// FILE open for reading and writing (`3<>FILE`) until released.
    pub fn hold_read_write(path: &Path) -> Holder {
        Holder::hold_open(path, "<>")
    }

    /// `sh -c 'exec 3REDIRECT"$1"; exec sleep 600'`, returned once fd 3 is the file `path`
    /// names (through any symlink) and the shell has become `sleep`.
    fn hold_open(path: &Path, redirect: &str) -> Holder {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3{redirect}\"$1\" || exit 9; exec sleep 600"))
            .arg("sh")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let h = Holder { child };
        let fd3 = format!("/proc/{}/fd/3", h.child.id());
        h.wait_ready("the holder to open the file", || {
            same_file(Path::new(&fd3), path)
        });
        h
    }

    /// `sleep 600` with its working directory in `dir`.
    pub fn in_dir(dir: &Path) -> Holder {
        let child = Command::new("sleep")
            .arg("600")
            .current_dir(dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let h = Holder { child };
        let cwd = format!("/proc/{}/cwd", h.child.id());
        h.wait_ready("the holder to enter the directory", || {
            same_file(Path::new(&cwd), dir)
        });
        h
    }

    /// `sleep 600` with the shared library `lib` mapped (LD_PRELOAD).
    pub fn map_library(lib: &Path) -> Holder {
        let child = Command::new("sleep")
            .arg("600")
            .env("LD_PRELOAD", lib)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let h = Holder { child };
        let maps = format!("/proc/{}/maps", h.child.id());
        let want = bytes_of(lib);
        h.wait_ready("the holder to map the library", || {
            std::fs::read(&maps).is_ok_and(|m| m.split(|&b| b == b'\n').any(|l| l.ends_with(&want)))
        });
        h
    }

    /// Wait until `ready` holds and the child runs `sleep` (its command name no longer the
    /// shell's or this test's), so tests can check both; panic if it died first.
    fn wait_ready(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let comm = format!("/proc/{}/comm", self.child.id());
        wait_until(what, Duration::from_secs(20), || {
            ready() && std::fs::read(&comm).is_ok_and(|c| c == b"sleep\n")
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Copy /bin/sleep to `path` and run it (so `path` is a running executable).
    pub fn run_executable(path: &Path) -> Holder {
        std::fs::copy("/bin/sleep", path).expect("copy /bin/sleep");
        let mut tries = 0;
        let child = loop {
            // ETXTBSY if another thread of this test process forked while our
            // copy's write fd was open (it is closed on their exec).
            match Command::new(path).arg("600").stdin(Stdio::null()).spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot run copied sleep {}: {e}", path.display()),
            }
        };
        let h = Holder { child };
        let exe = format!("/proc/{}/exe", h.child.id());
        let want = path.as_os_str().to_os_string();
        wait_until(
            "the copied executable to run",
            Duration::from_secs(20),
            || {
                std::fs::read_link(&exe)
                    .map(|t| t.into_os_string() == want)
                    .unwrap_or(false)
            },
        );
        // Loading maps the file after /proc/PID/exe is set, and mmap updates
        // the file's atime: wait until it is done, i.e. asleep in
        // (clock_)nanosleep, so that the file's metadata is stable.
        let pid = h.child.id();
        wait_until(
            "the copied executable to reach its sleep",
            Duration::from_secs(20),
            || {
                let sc =
                    std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
                let nr = sc.split(' ').next().unwrap_or("");
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                nr == "230" || nr == "35" || wchan.contains("nanosleep")
            },
        );
        h
    }

    pub fn release(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `a` and `b` (symlinks followed) are the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start a run that cannot finish quickly (a busy file forces a retry round),
/// wait until status reports it running and stop it with SIGSTOP, so it
/// provably still holds the journal. Returns the stopped run, the busy-file
/// holder and the manifest of SOURCE taken before the run.
///
/// With `min_relocated > 0` it waits until status counts that many relocated files.
pub fn start_and_freeze(
    e: &Env,
    files: usize,
    seed: u64,
    min_relocated: i64,
) -> (Bg, Holder, Manifest) {
    build_tree(
        &e.src,
        &TreeSpec {
            hardlinks: true,
            weird_names: true,
            ..TreeSpec::plain(files, seed)
        },
    );
    let busy = e.src.join("busy.log");
    std::fs::write(&busy, b"held open for writing during the run\n").unwrap();
    let holder = Holder::hold_for_write(&busy);
    let before = Manifest::scan(&e.src);
    // Held at a step point rather than stopped when status first shows progress: a run of a
    // small tree may finish between two looks at its status, and a held run cannot.
    let steps = e.tmp.path().join("steps");
    std::fs::create_dir_all(&steps).unwrap();
    let point = if min_relocated > 0 {
        // The original goes once the journal records its relocation: at least one is recorded.
        "finish.unlink@1"
    } else {
        "copy.create@1"
    };
    let mut bg = spawn_evac_env(
        run_args(&e.src, &e.dst, &e.journal, &[]),
        &[
            ("EVAC_TEST_STEPS", steps.as_os_str()),
            ("EVAC_TEST_STEP_PAUSE", OsStr::new(point)),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !steps.join("paused").exists() {
        if bg.poll().is_some() || Instant::now() > deadline {
            let out = bg.wait_for(Duration::from_secs(10));
            panic!("the run never reached {point}\n{}", out.dump());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = status(&e.journal);
    let relocated = st
        .get("files")
        .and_then(|f| f.get("relocated"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    assert!(
        relocated >= min_relocated,
        "held at {point} with {relocated} relocated (< {min_relocated}): {st:?}"
    );
    (bg, holder, before)
}

/// Lets a run held by `start_and_freeze` go on.
pub fn thaw(e: &Env) {
    std::fs::write(e.tmp.path().join("steps").join("go"), b"").unwrap();
}

// ---------------------------------------------------------------------------
// JSON (just enough for `status --json`)
// ---------------------------------------------------------------------------

pub mod json {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Json {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    impl Json {
        pub fn get(&self, key: &str) -> Option<&Json> {
            match self {
                Json::Obj(v) => v.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Json::Num(n) => Some(*n),
                _ => None,
            }
        }
        pub fn as_i64(&self) -> Option<i64> {
            match self {
                Json::Num(n) if n.fract() == 0.0 => Some(*n as i64),
                _ => None,
            }
        }
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Json::Str(s) => Some(s),
                _ => None,
            }
        }
        pub fn as_bool(&self) -> Option<bool> {
            match self {
                Json::Bool(b) => Some(*b),
                _ => None,
            }
        }
        pub fn as_array(&self) -> Option<&Vec<Json>> {
            match self {
                Json::Arr(a) => Some(a),
                _ => None,
            }
        }
        pub fn is_null(&self) -> bool {
            matches!(self, Json::Null)
        }
        pub fn is_number(&self) -> bool {
            matches!(self, Json::Num(_))
        }
        pub fn keys(&self) -> Vec<&str> {
            match self {
                Json::Obj(v) => v.iter().map(|(k, _)| k.as_str()).collect(),
                _ => Vec::new(),
            }
        }
    }

    pub fn parse(s: &str) -> Result<Json, String> {
        let mut p = P {
            b: s.as_bytes(),
            i: 0,
        };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            }
        }
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }
        fn eat(&mut self, c: u8) -> Result<(), String> {
            if self.peek() == Some(c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at byte {}", c as char, self.i))
            }
        }
        fn lit(&mut self, w: &str, v: Json) -> Result<Json, String> {
            if self.b[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(v)
            } else {
                Err(format!("bad literal at byte {}", self.i))
            }
        }
        fn value(&mut self) -> Result<Json, String> {
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(Json::Obj(v));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                        let val = self.value()?;
                        v.push((k, val));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Json::Obj(v));
                            }
                            _ => return Err(format!("expected , or }} at byte {}", self.i)),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Json::Arr(v));
                    }
                    loop {
                        self.ws();
                        v.push(self.value()?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Json::Arr(v));
                            }
                            _ => return Err(format!("expected , or ] at byte {}", self.i)),
                        }
                    }
                }
                Some(b'"') => Ok(Json::Str(self.string()?)),
                Some(b't') => self.lit("true", Json::Bool(true)),
                Some(b'f') => self.lit("false", Json::Bool(false)),
                Some(b'n') => self.lit("null", Json::Null),
                Some(c) if c == b'-' || c.is_ascii_digit() => {
                    let start = self.i;
                    while let Some(c) = self.peek() {
                        if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                    let s = std::str::from_utf8(&self.b[start..self.i]).unwrap();
                    s.parse::<f64>()
                        .map(Json::Num)
                        .map_err(|e| format!("bad number {s}: {e}"))
                }
                _ => Err(format!("unexpected byte at {}", self.i)),
            }
        }
        fn hex4(&mut self) -> Result<u32, String> {
            if self.i + 4 > self.b.len() {
                return Err("short \\u escape".into());
            }
            let s = std::str::from_utf8(&self.b[self.i..self.i + 4]).map_err(|e| e.to_string())?;
            self.i += 4;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        }
        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut out: Vec<u8> = Vec::new();
            loop {
                let c = self.peek().ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let e = self.peek().ok_or("bad escape")?;
                        self.i += 1;
                        let ch: char = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let hi = self.hex4()?;
                                let cp = if (0xd800..0xdc00).contains(&hi)
                                    && self.b[self.i..].starts_with(b"\\u")
                                {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    0x10000
                                        + ((hi - 0xd800) << 10)
                                        + (lo.wrapping_sub(0xdc00) & 0x3ff)
                                } else {
                                    hi
                                };
                                char::from_u32(cp).unwrap_or('\u{fffd}')
                            }
                            _ => return Err(format!("bad escape \\{}", e as char)),
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    c => out.push(c),
                }
            }
            String::from_utf8(out).map_err(|e| e.to_string())
        }
    }
}
