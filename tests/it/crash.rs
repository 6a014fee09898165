//! Crash safety: kill -9 the real binary at random moments (at least 30 times)
//! during a run over a few thousand files, resume each time until it exits 0,
//! then check that nothing was lost, nothing was copied twice, no temporary is
//! left and `evac verify` agrees.
//!
//! The seed is printed; replay a failure with EVAC_TEST_SEED=<seed>.

use crate::common::*;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::{Duration, Instant};

/// At least this many kills (override with EVAC_CRASH_KILLS for longer soaks).
fn kills() -> usize {
    std::env::var("EVAC_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(36)
        .max(30)
}
const FILES: usize = 2000;

fn resume_args(journal: &Path) -> Vec<OsString> {
    vec![
        "run".into(),
        "--journal".into(),
        journal.into(),
        "--quiet".into(),
        "--workers".into(),
        "4".into(),
    ]
}

/// After the final exit 0 of a round.
fn crash_oracle(before: &Manifest, src: &Path, dst: &Path, journal: &Path) {
    // Every original path resolves (through its link) to identical content.
    let mut problems = Vec::new();
    // (Read with O_NOATIME so that the check itself does not change DEST atimes.)
    let read_through = |p: &Path| -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(p)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        Ok(v)
    };
    for (rel, f) in before.files() {
        match read_through(&path_of(src, rel)) {
            Ok(data) if hash_bytes(&data) == f.hash.unwrap() => {}
            Ok(_) => problems.push(format!("{}: content through the link differs", esc(rel))),
            Err(e) => problems.push(format!("{}: cannot read through the link: {e}", esc(rel))),
        }
    }
    assert_no_problems("original paths after crashes", &problems);

    // Links, DEST metadata (atime and directory mtimes included), hard-link
    // groups, no temporaries, nothing extra at DEST.
    check_relocated(before, src, dst, None);

    // No file copied twice: one DEST inode per distinct source inode, nothing in the trash.
    let after = Manifest::scan(dst);
    let dest_inodes = after
        .files()
        .filter(|(r, _)| !r.starts_with(b".evac-trash"))
        .map(|(_, f)| f.ino)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(
        dest_inodes,
        before.distinct_file_inodes(),
        "DEST inodes vs distinct SOURCE inodes"
    );
    let trashed: Vec<String> = after
        .files()
        .filter(|(r, _)| r.starts_with(b".evac-trash"))
        .map(|(r, _)| esc(r))
        .collect();
    assert!(
        trashed.is_empty(),
        "files were moved to .evac-trash although none reappeared: {trashed:?}"
    );

    let st = status(journal);
    for s in ["pending", "deferred", "failed", "staged_out"] {
        assert_eq!(count(&st, s), 0, "files.{s} after the final run: {st:?}");
    }
    assert_eq!(
        count(&st, "relocated"),
        before.file_count() as i64,
        "{st:?}"
    );
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        journal.as_os_str(),
    ])
    .expect(0, "verify after crashes");
}

fn make_tree(src: &Path, seed: u64, weird: bool) -> Manifest {
    let spec = TreeSpec {
        hardlinks: true,
        sparse: true,
        weird_names: weird,
        ..TreeSpec::plain(FILES, seed)
    };
    build_tree(src, &spec);
    for i in 0..3u64 {
        std::fs::write(
            src.join(format!("big{i}.bin")),
            content(seed ^ i, (3 << 20) + i as usize * 4099),
        )
        .unwrap();
    }
    stamp_times(src, seed);
    Manifest::scan(src)
}

#[test]
fn kill_9_at_random_moments_then_resume() {
    let _gate = suite_gate!();
    let seed = time_seed();
    eprintln!("crash test seed: {seed} (replay: EVAC_TEST_SEED={seed} cargo test --release --test it crash:: -- --nocapture)");
    let mut rng = Rng::new(seed);
    let e = env();
    let started = Instant::now();

    // How long one uninterrupted run takes here, so kill moments can be
    // spread over a whole run (and not only its first phase).
    let calib = e.tmp.path().join("calib");
    make_tree(&calib.join("src"), seed, false);
    let t0 = Instant::now();
    evac_run(
        &calib.join("src"),
        &calib.join("dst"),
        &calib.join("j.db"),
        &["--workers", "4"],
    )
    .expect(0, "calibration run");
    let mut full_ms = (t0.elapsed().as_millis() as u64).max(300);
    let _ = std::fs::remove_dir_all(&calib);
    eprintln!("an uninterrupted run takes {full_ms} ms");

    let kill_target = kills();
    let mut landed = 0usize;
    let mut spawns = 0usize;
    let mut round = 0u64;
    while landed < kill_target {
        round += 1;
        assert!(
            round <= 4 + kill_target as u64 / 2,
            "runs finish too fast to land {kill_target} kills (landed {landed} in {spawns} runs)"
        );
        let src = e.tmp.path().join(format!("src{round}"));
        let dst = e.tmp.path().join(format!("dst{round}"));
        let journal = e.tmp.path().join(format!("journal{round}.db"));
        let before = make_tree(&src, seed ^ round, round == 1);
        eprintln!(
            "round {round}: {} files, {} inodes",
            before.file_count(),
            before.distinct_file_inodes()
        );

        let total = before.file_count() as f64;
        let mut relocated = 0i64;
        loop {
            spawns += 1;
            assert!(spawns < 600, "no convergence after {spawns} runs");
            // Resume with the journal alone once it knows SOURCE and DEST, sometimes.
            let knows = try_status(&journal).is_some_and(|s| s.get("source").is_some());
            let args = if knows && rng.below(2) == 0 {
                resume_args(&journal)
            } else {
                run_args(&src, &dst, &journal, &["--workers", "4"])
            };
            let spawned = Instant::now();
            let mut bg = spawn_evac(&args);
            if landed < kill_target {
                // The moment of the kill is this test's input, not a wait for a
                // condition: a third early (start-up, recovery of the last
                // crash), the rest anywhere in what is left of the run.
                let left = 1.0 - (relocated.max(0) as f64 / total).min(1.0);
                let span = 300 + (full_ms as f64 * left * 0.9) as u64;
                let delay = if rng.below(3) == 0 {
                    5 + rng.below(296)
                } else {
                    5 + rng.below(span)
                };
                std::thread::sleep(Duration::from_millis(delay));
                if bg.kill9() {
                    landed += 1;
                    relocated = try_status(&journal)
                        .map(|s| count(&s, "relocated"))
                        .unwrap_or(0);
                    eprintln!("kill {landed} after {delay} ms: {relocated} relocated so far");
                    continue;
                }
            }
            let out = bg.wait();
            if relocated == 0 {
                // A whole run went by uninterrupted: a better estimate of its length.
                full_ms = full_ms.min((spawned.elapsed().as_millis() as u64).max(300));
            }
            match out.code() {
                0 => break,
                5 => panic!(
                    "exit 5 after kill -9: a dead run's lock was not recognised as stale\n{}",
                    out.dump()
                ),
                c => panic!(
                    "run after {landed} kills (seed {seed}) exited {c}\n{}",
                    out.dump()
                ),
            }
        }
        eprintln!(
            "round {round} converged; {landed} kills landed so far, {spawns} runs, {:?}",
            started.elapsed()
        );
        crash_oracle(&before, &src, &dst, &journal);
        let _ = std::fs::remove_dir_all(&dst);
        let _ = std::fs::remove_dir_all(&src);
    }
    figures(
        "crash",
        &format!(
            "{landed} kill -9s over {round} round(s) and {spawns} runs in {:.0?}; files lost 0, copied twice 0, temporaries left 0, verify passed",
            started.elapsed()
        ),
    );
}
