//! Phase 2, `evac stage`: staged-out files of the imported HSM listing are recalled through the
//! operator's stage command in tape order (tier, volume, position; one volume per batch), and
//! relocated as soon as they are resident; failures are retried with backoff and end as
//! leftovers with the reason; a stage command that hangs is killed; kill -9 during staging
//! loses nothing and stages nothing that was already relocated.

use crate::common::*;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Hsm {
    e: Env,
    tape: PathBuf,
    log: PathBuf,
    /// (relative path, tier, volume, position, content)
    files: Vec<(String, i64, String, i64, Vec<u8>)>,
}

/// SOURCE with `n` stubs per volume on (tier 1: V1, V2; tier 2: V3), their data on the "tape",
/// phase 1 run (the stubs left staged out), and the HSM's listing imported.
fn setup(n: usize) -> Hsm {
    let e = env();
    let tape = e.tmp.path().join("tape");
    std::fs::create_dir_all(&tape).unwrap();
    let log = e.tmp.path().join("stage.log");
    let mut files = Vec::new();
    for (tier, vol) in [(1i64, "V1"), (1, "V2"), (2, "V3")] {
        for i in 0..n {
            let rel = format!("{vol}/d{}/f{i}-{vol}", i % 3);
            // Positions run against name order, so tape order is not path order.
            let pos = (n - i) as i64;
            let data = content((tier as u64) << 20 | i as u64, 1000 + 37 * i);
            std::fs::write(tape.join(format!("f{i}-{vol}")), &data).unwrap();
            let p = e.src.join(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::File::create(&p)
                .unwrap()
                .set_len(data.len() as u64)
                .unwrap();
            files.push((rel, tier, vol.to_string(), pos, data));
        }
    }
    std::fs::write(e.src.join("resident.txt"), b"here all along").unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "phase 1 leaves the stubs");
    let mut listing = String::from("#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n");
    for (rel, tier, vol, pos, data) in &files {
        listing += &format!(
            "{}/{rel}\tstaged_out\t{tier}\t{vol}\t{pos}\t{}\t\n",
            e.src.display(),
            data.len()
        );
    }
    let lp = e.tmp.path().join("listing.tsv");
    std::fs::write(&lp, listing).unwrap();
    evac([
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        e.journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("tsv"),
        lp.as_os_str(),
    ])
    .expect(0, "import");
    Hsm {
        e,
        tape,
        log,
        files,
    }
}

/// A stage command: logs each batch (one line: the time and the paths), then, for each path,
/// fails if it matches FAIL, sleeps SLEEP first, and writes the data back from the tape.
fn stage_script(h: &Hsm, fail: &str, sleep: &str) -> PathBuf {
    let p = h.e.tmp.path().join("stage.sh");
    let body = format!(
        "#!/bin/sh\n\
         echo \"$(date +%s.%N) $*\" >> {log}\n\
         sleep {sleep}\n\
         rc=0\n\
         for p in \"$@\"; do\n\
           case \"$p\" in {fail}) echo \"cannot recall $p\" >&2; rc=2; continue;; esac\n\
           cat {tape}/\"$(basename \"$p\")\" > \"$p\" || rc=1\n\
         done\n\
         exit $rc\n",
        log = h.log.display(),
        tape = h.tape.display(),
    );
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn stage(h: &Hsm, extra: &[&str], script: &Path) -> Out {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("stage"),
        OsStr::new("--journal"),
        h.e.journal.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    args.push(OsStr::new("--stage-cmd"));
    args.push(script.as_os_str());
    evac_timeout(args, Duration::from_secs(120))
}

fn batches(h: &Hsm) -> Vec<Vec<String>> {
    std::fs::read_to_string(&h.log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|p| p.rsplit('/').next().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn stages_in_tape_order_and_relocates_each_batch() {
    let _gate = suite_gate!();
    let h = setup(4);
    let script = stage_script(&h, "NOMATCH", "0");
    let out = stage(&h, &["--tiers", "1"], &script);
    out.expect(3, "tier 1 only: tier 2 is left");
    // One volume per batch, tier 1 only, positions ascending (names descending).
    let b = batches(&h);
    assert_eq!(
        b,
        vec![
            vec!["f3-V1", "f2-V1", "f1-V1", "f0-V1"],
            vec!["f3-V2", "f2-V2", "f1-V2", "f0-V2"]
        ],
        "batches"
    );
    for (rel, tier, _, _, data) in &h.files {
        let p = h.e.src.join(rel);
        if *tier == 1 {
            assert!(is_link(&p), "{rel} not relocated");
            assert_eq!(&std::fs::read(&p).unwrap(), data, "{rel}: content");
        } else {
            assert!(!is_link(&p), "{rel}: tier 2 was staged");
        }
    }
    let st = status(&h.e.journal);
    let s = st.get("stage").unwrap();
    assert_eq!(
        s.get("relocated").and_then(|v| v.as_i64()),
        Some(8),
        "{st:?}"
    );
    assert_eq!(
        s.get("volumes_done").and_then(|v| v.as_i64()),
        Some(2),
        "{st:?}"
    );
    let text = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        h.e.journal.as_os_str(),
    ])
    .stdout_str();
    assert!(
        text.contains("phase 2: 2/3 volumes done, 8 files staged (8 relocated, 0 given up)"),
        "{text}"
    );

    // The rest, with the paths on stdin; nothing relocated is recalled again.
    let stdin_script = h.e.tmp.path().join("stage0.sh");
    std::fs::write(
        &stdin_script,
        format!(
            "#!/bin/sh\ntr '\\000' '\\n' | while IFS= read -r p; do echo \"0 $p\" >> {log}; cat {tape}/\"$(basename \"$p\")\" > \"$p\"; done\n",
            log = h.log.display(),
            tape = h.tape.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stdin_script, std::fs::Permissions::from_mode(0o755)).unwrap();
    stage(&h, &["--stdin0"], &stdin_script).expect(0, "the rest, paths on stdin");
    let b = batches(&h);
    assert_eq!(b.len(), 2 + 4, "{b:?}");
    assert!(
        b[2..].iter().all(|l| l.len() == 1 && l[0].ends_with("-V3")),
        "{b:?}"
    );
    for (rel, _, _, _, data) in &h.files {
        assert_eq!(&std::fs::read(h.e.src.join(rel)).unwrap(), data, "{rel}");
    }
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        h.e.journal.as_os_str(),
    ])
    .expect(0, "verify");
    let list = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        h.e.journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new("relocated"),
        OsStr::new("--print0"),
    ]);
    assert_eq!(
        list.stdout
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .count(),
        13
    );
}

#[test]
fn failures_are_retried_then_left_over_and_a_hung_command_is_killed() {
    let _gate = suite_gate!();
    let h = setup(2);
    let script = stage_script(&h, "*/f1-V2", "0");
    let t0 = Instant::now();
    let out = stage(
        &h,
        &[
            "--max-tries",
            "3",
            "--stage-backoff",
            "0.1",
            "--resident-wait",
            "0.2",
        ],
        &script,
    );
    out.expect(3, "one file cannot be recalled");
    let tries = batches(&h)
        .iter()
        .filter(|b| b.iter().any(|p| p == "f1-V2"))
        .count();
    assert_eq!(tries, 3, "f1-V2 tried {tries} times: {:?}", batches(&h));
    let p = h.e.src.join("V2/d1/f1-V2");
    assert!(!is_link(&p), "the unrecallable file was swapped");
    let failed = status_list(&h.e.journal, "failed");
    assert_eq!(failed, vec![b"V2/d1/f1-V2".to_vec()]);
    let text = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        h.e.journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new("failed"),
    ])
    .stdout_str();
    assert!(
        text.contains("could not be staged (3 tries)") && text.contains("exited with"),
        "{text}"
    );
    let relocated = h
        .files
        .iter()
        .filter(|f| is_link(&h.e.src.join(&f.0)))
        .count();
    assert_eq!(relocated, h.files.len() - 1);
    assert!(t0.elapsed() < Duration::from_secs(60));

    // A stage command that never returns: killed after --stage-timeout, tried again, left over.
    let h = setup(1);
    // A duration no other test's process has, so that looking for its `sleep` below finds this
    // test's only (other suites keep `sleep 600` holders running at the same time).
    let long = format!(
        "600.{:06}{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_micros(),
        std::process::id()
    );
    let hang = stage_script(&h, "NOMATCH", &long);
    let t0 = Instant::now();
    let out = stage(
        &h,
        &[
            "--stage-timeout",
            "1",
            "--max-tries",
            "2",
            "--stage-backoff",
            "0.1",
            "--resident-wait",
            "0",
        ],
        &hang,
    );
    out.expect(3, "a hung stage command");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        out.text().contains("killed with its process group"),
        "{}",
        out.text()
    );
    assert_eq!(status_list(&h.e.journal, "failed").len(), 3);
    // Its `sleep` child went with it.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &format!("^sleep {}$", long.replace('.', "\\."))])
        .output();
    if let Ok(ps) = ps {
        assert!(
            ps.stdout.is_empty(),
            "the stage command's child survived: {:?}",
            String::from_utf8_lossy(&ps.stdout)
        );
    }
}

#[test]
fn kill_9_during_staging_then_resume() {
    let _gate = suite_gate!();
    let h = setup(3);
    let script = stage_script(&h, "NOMATCH", "0.4");
    let mut args: Vec<std::ffi::OsString> = vec![
        "stage".into(),
        "--journal".into(),
        h.e.journal.clone().into(),
        "--quiet".into(),
        "--stage-cmd".into(),
    ];
    args.push(script.clone().into());
    let mut bg = spawn_evac(&args);
    // After the first volume is relocated, in the middle of the second's recall.
    wait_until("the first batch relocated", Duration::from_secs(60), || {
        h.files
            .iter()
            .filter(|f| is_link(&h.e.src.join(&f.0)))
            .count()
            >= 3
    });
    std::thread::sleep(Duration::from_millis(150));
    assert!(bg.kill9(), "stage ended before the kill");
    let before: Vec<String> = h
        .files
        .iter()
        .filter(|f| is_link(&h.e.src.join(&f.0)))
        .map(|f| f.0.rsplit('/').next().unwrap().to_string())
        .collect();
    let batches_before = batches(&h).len();
    stage(&h, &[], &script).expect(0, "resume after kill -9");
    for later in &batches(&h)[batches_before..] {
        for p in later {
            assert!(!before.contains(p), "{p} was relocated, then staged again");
        }
    }
    for (rel, _, _, _, data) in &h.files {
        assert_eq!(&std::fs::read(h.e.src.join(rel)).unwrap(), data, "{rel}");
        assert!(is_link(&h.e.src.join(rel)), "{rel}");
    }
    let dest_files = Manifest::scan(&h.e.dst)
        .files()
        .filter(|(r, _)| !r.starts_with(b".evac-trash"))
        .count();
    assert_eq!(dest_files, h.files.len() + 1, "one copy per file");
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        h.e.journal.as_os_str(),
    ])
    .expect(0, "verify");
}

fn batch_starts(h: &Hsm) -> Vec<f64> {
    std::fs::read_to_string(&h.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn drives_run_volumes_at_once_and_the_budget_holds_them_back() {
    let _gate = suite_gate!();
    // Two drives: the first two volumes' recalls overlap (each takes 1 s).
    let h = setup(2);
    let slow = stage_script(&h, "NOMATCH", "1");
    stage(&h, &["--drives", "2"], &slow).expect(0, "two drives");
    let t = batch_starts(&h);
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(
        t[1] - t[0] < 0.7,
        "the second volume waited for the first: {t:?}"
    );
    // The same with a budget that one batch fills: one at a time again.
    let h = setup(2);
    let slow = stage_script(&h, "NOMATCH", "1");
    let one_batch = h.files.iter().take(2).map(|f| f.4.len()).sum::<usize>();
    stage(
        &h,
        &[
            "--drives",
            "2",
            "--stage-budget",
            &(one_batch + 10).to_string(),
        ],
        &slow,
    )
    .expect(0, "two drives, budget of one batch");
    let t = batch_starts(&h);
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(
        t.windows(2).all(|w| w[1] - w[0] >= 0.9),
        "a batch started while the budget was full: {t:?}"
    );
}
