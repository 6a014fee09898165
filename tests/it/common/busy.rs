//! Busy files (held open for reading or writing, mapped, run as executables, a process's
//! working directory) and a run held at a step point while such a file keeps it from finishing.

use super::*;

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
