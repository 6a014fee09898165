//! `evac status`: its JSON (parsed with serde_json), its counts and lists, and waiting until a
//! background run reports the awaited progress.

use super::*;

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
