//! Running the real binary: in the foreground with a timeout (`Out`) or in the background
//! (`Bg`), the usual `evac run` command lines, polling, and a test's workspace (`Env`).

use super::*;

/// Longest any single evac invocation may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

pub fn evac_bin() -> &'static str {
    env!("CARGO_BIN_EXE_evac")
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
