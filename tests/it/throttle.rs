//! Hard caps: `--bwlimit` holds the copy rate inside one large file (measured from the growth of
//! its DEST temporary), `--files-per-sec` holds the rate of files relocated (measured from the
//! journal's relocation times); each within ±15%.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The DEST temporary being written, if any.
fn temporary(dst: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dst).ok()?.find_map(|e| {
        let e = e.ok()?;
        let n = e.file_name();
        let n = n.to_string_lossy();
        (n.starts_with(".evac-") && n.ends_with(".tmp")).then(|| e.path())
    })
}

/// Least-squares slope of (t, y).
fn slope(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    let (mt, my) = pts
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let num: f64 = pts.iter().map(|(t, y)| (t - mt) * (y - my)).sum();
    let den: f64 = pts.iter().map(|(t, _)| (t - mt) * (t - mt)).sum();
    num / den
}

#[test]
fn bwlimit_holds_inside_one_large_file() {
    let _gate = suite_gate!();
    let e = env();
    let len = 12usize << 20;
    std::fs::write(e.src.join("big.bin"), content(31, len)).unwrap();
    let mut bg = spawn_evac(run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &["--bwlimit", "3M", "--workers", "1"],
    ));
    let t0 = Instant::now();
    let mut pts = Vec::new();
    while bg.poll().is_none() && t0.elapsed() < Duration::from_secs(60) {
        if let Some(t) = temporary(&e.dst) {
            if let Ok(m) = std::fs::metadata(&t) {
                let y = m.len() as f64;
                if y > 0.1 * len as f64 && y < 0.9 * len as f64 {
                    pts.push((t0.elapsed().as_secs_f64(), y));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bg.wait().expect(0, "a throttled run");
    assert!(
        pts.len() >= 20,
        "too few samples of the copy: {}",
        pts.len()
    );
    let rate = slope(&pts) / (1 << 20) as f64;
    eprintln!(
        "bwlimit 3M: measured {rate:.2} MiB/s over {} samples",
        pts.len()
    );
    assert!(
        (2.55..=3.45).contains(&rate),
        "measured {rate:.2} MiB/s for --bwlimit 3M"
    );
    assert_eq!(
        std::fs::read(e.src.join("big.bin")).unwrap(),
        content(31, len)
    );
}

#[test]
fn files_per_sec_holds_the_rate_of_files() {
    let _gate = suite_gate!();
    let e = env();
    for i in 0..60 {
        std::fs::write(e.src.join(format!("f{i:02}")), format!("file {i}")).unwrap();
    }
    evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--files-per-sec",
            "20",
            "--batch-files",
            "1",
            "--workers",
            "2",
        ],
    )
    .expect(0, "a run at 20 files per second");
    let c = rusqlite::Connection::open_with_flags(
        &e.journal,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT at FROM events WHERE event = 'relocated' ORDER BY at")
        .unwrap();
    let at: Vec<f64> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(at.len(), 60);
    // The middle of the run (start-up and the last batch aside).
    let pts: Vec<(f64, f64)> = at[10..50]
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as f64))
        .collect();
    let rate = slope(&pts);
    eprintln!("files-per-sec 20: measured {rate:.1} files/s");
    assert!(
        (17.0..=23.0).contains(&rate),
        "measured {rate:.1} files/s for --files-per-sec 20"
    );
}

fn tmp_size(dst: &Path) -> u64 {
    temporary(dst)
        .and_then(|t| std::fs::metadata(t).ok())
        .map_or(0, |m| m.len())
}

fn control(journal: &Path, args: &[&str]) {
    let mut v: Vec<std::ffi::OsString> = args.iter().map(|a| (*a).into()).collect();
    v.insert(1, "--journal".into());
    v.insert(2, journal.into());
    evac(v).expect(0, &format!("evac {args:?}"));
}

/// The temporary's growth over `secs`, after letting `settle` pass.
fn growth(dst: &Path, settle: f64, secs: f64) -> u64 {
    std::thread::sleep(Duration::from_secs_f64(settle));
    let a = tmp_size(dst);
    std::thread::sleep(Duration::from_secs_f64(secs));
    tmp_size(dst).saturating_sub(a)
}

#[test]
fn pause_resume_and_throttle_take_effect_within_a_second() {
    let _gate = suite_gate!();
    let e = env();
    let len = 40usize << 20;
    std::fs::write(e.src.join("big.bin"), content(32, len)).unwrap();
    let bg = spawn_evac(run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &["--bwlimit", "2M", "--workers", "1"],
    ));
    wait_until("the copy to start", Duration::from_secs(30), || {
        tmp_size(&e.dst) > 0
    });
    // `evac pause`: within a second, the copy stands still.
    control(&e.journal, &["pause"]);
    let paused = growth(&e.dst, 1.0, 1.0);
    assert!(
        paused <= 256 << 10,
        "still copying {paused} bytes/s after evac pause"
    );
    let st = evac([
        std::ffi::OsStr::new("status"),
        std::ffi::OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .stdout_str();
    assert!(st.contains("PAUSED"), "{st}");
    // `evac resume`: going again within a second, at the cap.
    control(&e.journal, &["resume"]);
    let resumed = growth(&e.dst, 1.0, 1.0) as f64 / (1 << 20) as f64;
    assert!(
        (1.5..=2.5).contains(&resumed),
        "{resumed:.2} MiB/s after evac resume (cap 2M)"
    );
    // `evac throttle --bwlimit 6M`: the new cap within a second.
    control(&e.journal, &["throttle", "--bwlimit", "6M"]);
    let faster = growth(&e.dst, 1.0, 1.0) as f64 / (1 << 20) as f64;
    assert!(
        (4.5..=7.5).contains(&faster),
        "{faster:.2} MiB/s after throttle 6M"
    );
    // SIGUSR1 pauses, SIGUSR2 resumes.
    send_signal(bg.pid(), libc::SIGUSR1);
    let sig_paused = growth(&e.dst, 1.0, 1.0);
    assert!(
        sig_paused <= 768 << 10,
        "still copying {sig_paused} bytes/s after SIGUSR1"
    );
    send_signal(bg.pid(), libc::SIGUSR2);
    bg.wait().expect(0, "the run, resumed");
    assert_eq!(
        std::fs::read(e.src.join("big.bin")).unwrap(),
        content(32, len)
    );
}

/// A window of local time starting `from` minutes from now and lasting `len` minutes.
fn window_from_now(from: u32, len: u32) -> String {
    let now = String::from_utf8(
        std::process::Command::new("date")
            .arg("+%H %M")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut it = now.split_whitespace().map(|x| x.parse::<u32>().unwrap());
    let m = it.next().unwrap() * 60 + it.next().unwrap();
    let f = |x: u32| format!("{:02}:{:02}", (x % 1440) / 60, x % 60);
    format!("{}-{}", f(m + from), f(m + from + len))
}

#[test]
fn a_window_not_yet_open_exits_4_or_idles() {
    let _gate = suite_gate!();
    let e = env();
    for i in 0..5 {
        std::fs::write(e.src.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let later = window_from_now(120, 60);
    // For cron: exit 4 at once, nothing copied.
    let t0 = Instant::now();
    let out = evac_run(
        &e.src,
        &e.dst,
        &e.journal,
        &["--window", &later, "--exit-outside-window"],
    );
    out.expect(4, "outside the window, --exit-outside-window");
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(
        out.text().contains("outside the run windows"),
        "{}",
        out.text()
    );
    assert_eq!(count(&status(&e.journal), "relocated"), 0);
    // Without it: idle (nothing starts), and status says until when.
    let mut bg = spawn_evac(run_args(&e.src, &e.dst, &e.journal, &["--window", &later]));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        bg.poll().is_none(),
        "evac ended instead of idling outside its window"
    );
    assert_eq!(
        count(&status(&e.journal), "relocated"),
        0,
        "a file started outside the window"
    );
    let text = evac([
        std::ffi::OsStr::new("status"),
        std::ffi::OsStr::new("--journal"),
        e.journal.as_os_str(),
    ])
    .stdout_str();
    let opens = later.split('-').next().unwrap();
    assert!(
        text.contains(&format!(
            "outside the windows: no new file starts before {opens}"
        )),
        "{text}"
    );
    send_signal(bg.pid(), libc::SIGTERM);
    let code = bg.wait().code();
    assert_eq!(code, 4, "a stopped idle run");
    // Inside a window (one that opened a minute ago): the run goes.
    let now = window_from_now(1439, 120);
    evac_run(&e.src, &e.dst, &e.journal, &["--window", &now]).expect(0, "inside the window");
}
