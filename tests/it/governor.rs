//! The load governor in a real run: a target that cannot be met brings the copy workers down to
//! one (and then to part of the time) while the run still finishes; `evac throttle` changes the
//! worker cap and the targets of a running evac; `status` shows the governor's state and names
//! the storage behind SOURCE and DEST.

use crate::common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

fn tree(src: &Path, n: usize, len: usize) {
    for i in 0..n {
        let d = src.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), content(i as u64, len)).unwrap();
    }
}

fn governor(st: &Json) -> Option<&Json> {
    st.get("governor").filter(|g| !g.is_null())
}

fn int(g: &Json, k: &str) -> i64 {
    g.get(k).and_then(Json::as_i64).unwrap_or(-1)
}

fn status_text(journal: &Path) -> String {
    evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
    ])
    .stdout_str()
}

/// Poll status until `pred` holds on the governor object (panics after `secs`).
fn wait_governor(
    journal: &Path,
    bg: &mut Bg,
    secs: u64,
    what: &str,
    pred: impl Fn(&Json) -> bool,
) -> Json {
    let t0 = Instant::now();
    loop {
        assert!(bg.poll().is_none(), "the run ended before {what}");
        if let Some(st) = try_status(journal) {
            if let Some(g) = governor(&st) {
                if pred(g) {
                    return g.clone();
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no {what} within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of a governor log as (t, allowed, duty, active).
fn log_rows(p: &Path) -> Vec<(f64, usize, f64, usize)> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].parse().unwrap(),
                f[8].parse().unwrap(),
                f[9].parse().unwrap(),
                f[10].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_unmeetable_target_brings_the_run_to_one_worker_that_still_finishes() {
    let _gate = suite_gate!();
    let e = env();
    tree(&e.src, 150, 64 << 10);
    let log = e.tmp.path().join("governor.tsv");
    let mut bg = spawn_evac(run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--governor",
            "on",
            // No machine runs at a load of a ten-thousandth per CPU: always over.
            "--max-load",
            "0.0001",
            "--workers",
            "4",
            "--files-per-sec",
            "10",
            "--governor-log",
            log.to_str().unwrap(),
        ],
    ));
    let g = wait_governor(&e.journal, &mut bg, 30, "one worker allowed", |g| {
        int(g, "allowed") == 1
    });
    assert_eq!(int(&g, "max"), 4);
    assert_eq!(g.get("enabled").and_then(Json::as_bool), Some(true));
    let lim = g.get("limiting").expect("a limiting signal");
    assert_eq!(
        lim.get("signal").and_then(Json::as_str),
        Some("load"),
        "{g:?}"
    );
    assert!(lim.get("value").and_then(Json::as_f64).unwrap() > 0.0001);
    let text = status_text(&e.journal);
    assert!(
        text.contains("governor 1 of 4 workers allowed") && text.contains("limited by load"),
        "{text}"
    );
    // Still relocating at one worker.
    let before = count(&status(&e.journal), "relocated");
    wait_until("progress at one worker", Duration::from_secs(20), || {
        count(&status(&e.journal), "relocated") > before
    });
    bg.wait().expect(0, "the governed run");
    assert_eq!(count(&status(&e.journal), "relocated"), 150);
    for i in 0..150 {
        let p = e.src.join(format!("d{}", i % 7)).join(format!("f{i}"));
        assert_eq!(std::fs::read(&p).unwrap(), content(i as u64, 64 << 10));
    }
    // The log: the count only ever went down (the target is never met), never below one
    // worker; once one worker was allowed, one at most was copying (a file in flight at the
    // change may finish: a second's grace).
    let rows = log_rows(&log);
    assert!(rows.len() > 10, "{} log lines", rows.len());
    for w in rows.windows(2) {
        assert!(w[1].1 <= w[0].1, "allowed went up: {w:?}");
        assert!(w[1].1 >= 1 && w[1].2 >= 0.1);
    }
    let one = rows
        .iter()
        .find(|r| r.1 == 1)
        .expect("one worker allowed")
        .0;
    let over: Vec<_> = rows.iter().filter(|r| r.0 > one + 1.0 && r.3 > 1).collect();
    assert!(over.is_empty(), "more than one copying: {over:?}");
    assert!(
        rows.iter().any(|r| r.3 >= 2),
        "four workers were allowed at first, yet never two copied at once: the log cannot show a cut"
    );
}

#[test]
fn throttle_changes_the_worker_cap_and_the_governor_of_a_running_evac() {
    let _gate = suite_gate!();
    let e = env();
    tree(&e.src, 200, 16 << 10);
    let log = e.tmp.path().join("governor.tsv");
    let mut bg = spawn_evac(run_args(
        &e.src,
        &e.dst,
        &e.journal,
        &[
            "--governor",
            "off",
            "--workers",
            "4",
            "--files-per-sec",
            "10",
            "--governor-log",
            log.to_str().unwrap(),
        ],
    ));
    let g = wait_governor(&e.journal, &mut bg, 30, "the governor's state", |_| true);
    assert_eq!(g.get("enabled").and_then(Json::as_bool), Some(false));
    assert_eq!(int(&g, "allowed"), 4);
    assert!(status_text(&e.journal).contains("governor off; 4 of 4 workers allowed"));

    let throttle = |args: &[&str]| {
        let mut v = vec!["throttle", "--journal", e.journal.to_str().unwrap()];
        v.extend_from_slice(args);
        evac(v).expect(0, &format!("evac throttle {args:?}"));
    };
    throttle(&["--workers", "1"]);
    let t0 = Instant::now();
    wait_governor(&e.journal, &mut bg, 10, "the cap of one", |g| {
        int(g, "allowed") == 1
    });
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "the cap took {took:?}");

    throttle(&["--workers", "0", "--governor", "on", "--max-load", "0.0001"]);
    let g = wait_governor(
        &e.journal,
        &mut bg,
        15,
        "the governor on, limited by load",
        |g| {
            g.get("enabled").and_then(Json::as_bool) == Some(true)
                && g.get("limiting")
                    .and_then(|l| l.get("signal"))
                    .and_then(Json::as_str)
                    == Some("load")
        },
    );
    assert_eq!(int(&g, "max"), 4, "--workers 0 gives the whole pool back");
    let text = status_text(&e.journal);
    assert!(
        text.contains("caps set by `evac throttle`") && text.contains("--max-load 0.0001"),
        "{text}"
    );
    throttle(&["--governor", "off", "--max-load", "off"]);
    wait_governor(&e.journal, &mut bg, 10, "all 4 workers again", |g| {
        int(g, "allowed") == 4 && g.get("enabled").and_then(Json::as_bool) == Some(false)
    });
    bg.wait().expect(0, "the run");
    assert_eq!(count(&status(&e.journal), "relocated"), 200);
    assert!(
        status(&e.journal)
            .get("governor")
            .is_some_and(Json::is_null),
        "no governor state once the run is over"
    );
}

/// The storage status names: the block devices of a directory's filesystem as /sys has them,
/// "tmpfs: no block device" for a tmpfs, and as root a loop-mounted image down to the disk
/// its backing file is on.
#[test]
fn status_names_the_storage_behind_source_and_dest() {
    let _gate = suite_gate!();
    let e = env();
    tree(&e.src, 30, 4 << 10);
    let shm = tempfile::Builder::new()
        .prefix("evac-gov")
        .tempdir_in("/dev/shm")
        .expect("a directory in /dev/shm (a tmpfs)");
    let dst = shm.path().join("dst");
    let mut bg = spawn_evac(run_args(
        &e.src,
        &dst,
        &e.journal,
        &["--governor", "on", "--files-per-sec", "5", "--workers", "1"],
    ));
    let g = wait_governor(&e.journal, &mut bg, 30, "the governor's state", |_| true);
    assert_eq!(
        g.get("dest").and_then(Json::as_str),
        Some("tmpfs: no block device")
    );
    let source = g.get("source").and_then(Json::as_str).unwrap().to_string();
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(&e.src).unwrap().dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    if maj != 0 {
        let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).unwrap();
        let name = sys.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            source.split('+').next() == Some(name.as_str()),
            "SOURCE on {maj}:{min} ({name}), status says {source:?}"
        );
    } else {
        println!("SOURCE's filesystem has no device number of its own ({maj}:{min}): status says {source:?}");
    }
    bg.signal(libc::SIGTERM);
    bg.wait();

    if !is_root() {
        println!("skipped the loop-device half: it mounts an image, which needs root");
        return;
    }
    let img = e.tmp.path().join("src.img");
    let mp = e.tmp.path().join("loopsrc");
    let _m = match crate::common::mounts::loop_fs(&img, &mp, "ext4", 64) {
        Ok(m) => m,
        Err(err) => {
            println!("skipped the loop-device half: cannot loop-mount an ext4 image here: {err}");
            return;
        }
    };
    tree(&mp, 30, 4 << 10);
    let j2 = e.tmp.path().join("loop.db");
    let mut bg = spawn_evac(run_args(
        &mp,
        &e.tmp.path().join("dst2"),
        &j2,
        &["--governor", "on", "--files-per-sec", "5", "--workers", "1"],
    ));
    let g = wait_governor(&j2, &mut bg, 30, "the governor's state", |_| true);
    let source = g.get("source").and_then(Json::as_str).unwrap().to_string();
    assert!(source.starts_with("loop"), "{source}");
    // The image's own disk follows, when the image is on one.
    let idev = std::fs::metadata(&img).unwrap().dev();
    if libc::major(idev) != 0 {
        let disk = std::fs::canonicalize(format!(
            "/sys/dev/block/{}:{}",
            libc::major(idev),
            libc::minor(idev)
        ))
        .unwrap();
        let disk = disk.file_name().unwrap().to_str().unwrap();
        assert!(
            source.split('+').any(|n| n == disk),
            "{source} lacks {disk}"
        );
    }
    bg.signal(libc::SIGTERM);
    bg.wait();
}
