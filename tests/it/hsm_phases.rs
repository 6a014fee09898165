//! Phases 1 and 2 against the simulated HSM (`evac-hsm-sim`, fanotify pre-content, root): a
//! third of the tree released to tape; phase 1 relocates every resident file and opens no stub
//! (the simulator's access log stays empty: I4); the listing is imported; phase 2 recalls in
//! tape order through the simulator's stage command, survives a failing volume, a wedged stage
//! command and kill -9, and in the end every file is relocated with its original content.

use crate::common::mounts::{loop_fs, Mounted};
use crate::common::*;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_evac-hsm-sim");

struct Rig {
    e: Env,
    _fs: Mounted,
    src: PathBuf,
    tape: PathBuf,
    /// Every file (relative path) and the blake3 of its content, taken before any release.
    hashes: BTreeMap<String, [u8; 32]>,
    /// Released files: relative path -> (tier, volume).
    stubs: BTreeMap<String, (i64, String)>,
    serve: Option<Child>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sim(args: &[&OsStr]) {
    let out = Command::new(SIM).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "evac-hsm-sim {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SOURCE on a loop-mounted ext4 of its own (serve watches a whole filesystem); 60 files, a
/// third released to three volumes (two on tier 1, one on tier 2), in shuffled order so that
/// tape positions are not path order; serve running. None (reason printed) without root, loop
/// devices or fanotify pre-content events.
fn rig(test: &str) -> Option<Rig> {
    if !is_root() {
        eprintln!("SKIP {test}: needs root (loop mount, trusted.hsm, fanotify)");
        return None;
    }
    let e = env();
    let mp = e.tmp.path().join("mnt");
    let fs = match loop_fs(&e.tmp.path().join("fs.img"), &mp, "ext4", 64) {
        Ok(m) => m,
        Err(m) => {
            eprintln!("SKIP {test}: cannot loop-mount an ext4 image: {m}");
            return None;
        }
    };
    let src = mp.join("src");
    let tape = e.tmp.path().join("tape");
    std::fs::create_dir_all(&tape).unwrap();
    let mut hashes = BTreeMap::new();
    let mut rels = Vec::new();
    for i in 0..60usize {
        let rel = format!("d{}/f{i:02}", i % 4);
        let p = src.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let data = content(900 + i as u64, 3000 + 211 * i);
        std::fs::write(&p, &data).unwrap();
        hashes.insert(rel.clone(), hash_bytes(&data));
        rels.push(rel);
    }
    let mut rng = Rng::new(4242);
    let mut pick: Vec<String> = rels.iter().filter(|_| rng.below(3) == 0).cloned().collect();
    // Shuffle, then release in that order: positions follow the release order.
    for i in (1..pick.len()).rev() {
        pick.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut stubs = BTreeMap::new();
    for (k, rel) in pick.iter().enumerate() {
        let (tier, vol) = match k % 3 {
            0 => (1i64, "V1"),
            1 => (1, "V2"),
            _ => (2, "V3"),
        };
        let p = src.join(rel);
        let tier_s = tier.to_string();
        sim(&[
            OsStr::new("release"),
            OsStr::new("--tape"),
            tape.as_os_str(),
            OsStr::new("--volume"),
            OsStr::new(vol),
            OsStr::new("--tier"),
            OsStr::new(&tier_s),
            p.as_os_str(),
        ]);
        stubs.insert(rel.clone(), (tier, vol.to_string()));
    }
    let ready = e.tmp.path().join("serve.ready");
    let serve = Command::new(SIM)
        .args([OsStr::new("serve"), OsStr::new("--tape"), tape.as_os_str()])
        .args([OsStr::new("--mount"), mp.as_os_str()])
        .args([OsStr::new("--ready"), ready.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(e.tmp.path().join("serve.err")).unwrap())
        .spawn()
        .unwrap();
    let mut rig = Rig {
        e,
        _fs: fs,
        src,
        tape,
        hashes,
        stubs,
        serve: Some(serve),
    };
    let t0 = Instant::now();
    while !ready.exists() {
        if let Ok(Some(st)) = rig.serve.as_mut().unwrap().try_wait() {
            let err =
                std::fs::read_to_string(rig.e.tmp.path().join("serve.err")).unwrap_or_default();
            eprintln!("SKIP {test}: the simulator cannot serve here ({st}): {err}");
            return None;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "serve not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(rig)
}

/// Opens and reads of stubs the simulator answered (its access log, header skipped).
fn stub_accesses(r: &Rig) -> Vec<String> {
    std::fs::read_to_string(r.tape.join("access.log"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Files recalled by `stage`, in order, as (relative path, volume, position).
fn recalls(r: &Rig) -> Vec<(String, String, i64)> {
    let prefix = format!("{}/", r.src.display());
    std::fs::read_to_string(r.tape.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.split("] recall ").nth(1)?;
            let (path, from) = rest.rsplit_once(" from ")?;
            let path = path.trim_matches('"');
            let (vol, pos) = from.split_whitespace().next()?.rsplit_once(':')?;
            Some((
                path.strip_prefix(&prefix)?.to_string(),
                vol.to_string(),
                pos.parse().ok()?,
            ))
        })
        .collect()
}

fn stage_args(r: &Rig, extra: &[&str], cmd_extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "stage".into(),
        "--journal".into(),
        r.e.journal.clone().into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v.push("--stage-cmd".into());
    v.push(SIM.into());
    v.push("stage".into());
    v.push("--tape".into());
    v.push(r.tape.clone().into());
    v.extend(cmd_extra.iter().map(OsString::from));
    v
}

fn import(r: &Rig) {
    evac([
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        r.e.journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("tsv"),
        r.tape.join("listing.tsv").as_os_str(),
    ])
    .expect(0, "import the simulator's listing");
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// Phase 1 over the rig: every resident file relocated, no stub opened.
fn phase1(r: &Rig) {
    let out = evac_run(&r.src, &r.e.dst, &r.e.journal, &[]);
    out.expect(3, "phase 1 leaves the stubs");
    assert_eq!(
        stub_accesses(r),
        Vec::<String>::new(),
        "phase 1 opened stubs (I4)"
    );
    for rel in r.hashes.keys() {
        let link = is_link(&r.src.join(rel));
        assert_eq!(link, !r.stubs.contains_key(rel), "{rel}: relocated {link}");
    }
    let st = status(&r.e.journal);
    assert_eq!(count(&st, "staged_out"), r.stubs.len() as i64, "{st:?}");
}

fn all_relocated_with_original_content(r: &Rig) {
    for (rel, h) in &r.hashes {
        let p = r.src.join(rel);
        assert!(is_link(&p), "{rel} not relocated");
        assert_eq!(
            &hash_bytes(&std::fs::read(&p).unwrap()),
            h,
            "{rel}: content"
        );
    }
    evac([
        OsStr::new("verify"),
        OsStr::new("--journal"),
        r.e.journal.as_os_str(),
    ])
    .expect(0, "verify");
}

#[test]
fn phase1_opens_no_stub_and_phase2_recalls_in_tape_order() {
    let _gate = suite_gate!();
    let Some(r) = rig("phase1_opens_no_stub_and_phase2_recalls_in_tape_order") else {
        return;
    };
    phase1(&r);
    import(&r);
    // Tier 1 first, as on a wedged HSM whose disk tier is all that answers.
    evac(stage_args(
        &r,
        &["--tiers", "1"],
        &["--mount-latency-ms", "50"],
    ))
    .expect(3, "tier 1 (tier 2 left)");
    let rec = recalls(&r);
    assert!(
        rec.iter().all(|(p, _, _)| r.stubs[p].0 == 1),
        "a tier-2 file was recalled: {rec:?}"
    );
    // Volume after volume, positions ascending within each.
    let mut sorted = rec.clone();
    sorted.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
    assert_eq!(rec, sorted, "not in tape order");
    evac(stage_args(&r, &[], &[])).expect(0, "the rest");
    assert_eq!(
        recalls(&r).len(),
        r.stubs.len(),
        "a file was recalled twice"
    );
    assert_eq!(
        stub_accesses(&r),
        Vec::<String>::new(),
        "a stub was read around the HSM (I4)"
    );
    all_relocated_with_original_content(&r);
    figures(
        "hsm_phases",
        &format!(
            "{} files, {} released to 3 volumes; phase 1 opened 0 stubs; phase 2 recalled {} in tape order; all relocated with their original content",
            r.hashes.len(),
            r.stubs.len(),
            recalls(&r).len()
        ),
    );
}

#[test]
fn phase2_survives_a_failing_volume_a_wedged_command_and_kill_9() {
    let _gate = suite_gate!();
    let Some(r) = rig("phase2_survives_a_failing_volume_a_wedged_command_and_kill_9") else {
        return;
    };
    phase1(&r);
    import(&r);
    let v2: Vec<&String> = r
        .stubs
        .iter()
        .filter(|(_, v)| v.1 == "V2")
        .map(|(k, _)| k)
        .collect();
    // V2's tape is unreadable: its files are left over, with the reason, after two tries.
    let fail: Vec<String> = v2
        .iter()
        .map(|rel| r.src.join(rel).display().to_string())
        .collect();
    let mut cmd: Vec<&str> = Vec::new();
    for f in &fail {
        cmd.push("--fail");
        cmd.push(f);
    }
    let out = evac(stage_args(
        &r,
        &[
            "--max-tries",
            "2",
            "--stage-backoff",
            "0.1",
            "--resident-wait",
            "0.5",
        ],
        &cmd,
    ));
    out.expect(3, "a failing volume");
    let failed: Vec<Vec<u8>> = status_list(&r.e.journal, "failed");
    assert_eq!(failed.len(), v2.len(), "{failed:?}");
    let text = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        r.e.journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new("failed"),
    ])
    .stdout_str();
    assert!(text.contains("could not be staged (2 tries)"), "{text}");

    // A wedged HSM: the stage command never returns; evac kills it and does not hang.
    let t0 = Instant::now();
    let out = evac_timeout(
        stage_args(
            &r,
            &[
                "--retry-leftovers",
                "--stage-timeout",
                "1",
                "--max-tries",
                "1",
            ],
            &["--wedge"],
        ),
        Duration::from_secs(60),
    );
    out.expect(3, "a wedged stage command");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(
        out.text().contains("killed with its process group"),
        "{}",
        out.text()
    );

    // The HSM repaired, slow: kill -9 in the middle, then resume.
    // (Only V2's files are left by now: one volume, mounted in 1 s, killed at 0.3 s.)
    let mut bg = spawn_evac(stage_args(
        &r,
        &["--retry-leftovers", "--quiet"],
        &["--mount-latency-ms", "1000"],
    ));
    std::thread::sleep(Duration::from_millis(300));
    let killed = bg.kill9();
    assert!(killed, "stage finished before the kill -9");
    evac(stage_args(&r, &["--retry-leftovers"], &[])).expect(0, "resume after kill -9");
    all_relocated_with_original_content(&r);
    assert_eq!(
        stub_accesses(&r),
        Vec::<String>::new(),
        "a stub was read around the HSM (I4)"
    );
    let dest = Manifest::scan(&r.e.dst)
        .files()
        .filter(|(p, _)| !p.starts_with(b".evac-trash"))
        .count();
    assert_eq!(dest, r.hashes.len(), "one copy per file");
    figures(
        "hsm_phases",
        &format!(
            "failing volume: {} files left over with the reason after 2 tries; wedged stage command killed after 1 s; kill -9 mid-recall landed; then all {} files relocated with their original content",
            v2.len(),
            r.hashes.len()
        ),
    );
}

/// When each volume's first file was recalled (seconds of the day, from the simulator's log).
fn first_recall_by_volume(r: &Rig) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in std::fs::read_to_string(r.tape.join("log"))
        .unwrap_or_default()
        .lines()
    {
        let Some(rest) = l.split("] recall ").nth(1) else {
            continue;
        };
        let Some((_, from)) = rest.rsplit_once(" from ") else {
            continue;
        };
        let vol = from.split(':').next().unwrap().to_string();
        // 2026-11-21T18:19:20.123Z
        let t = &l[11..23];
        let secs = t[0..2].parse::<f64>().unwrap() * 3600.0
            + t[3..5].parse::<f64>().unwrap() * 60.0
            + t[6..12].parse::<f64>().unwrap();
        out.entry(vol).or_insert(secs);
    }
    out
}

#[test]
fn phase2_honours_drives_and_the_stage_budget() {
    let _gate = suite_gate!();
    // Two drives: the two tier-1 volumes are mounted (500 ms each) at the same time.
    let Some(r) = rig("phase2_honours_drives_and_the_stage_budget") else {
        return;
    };
    phase1(&r);
    import(&r);
    evac(stage_args(
        &r,
        &["--drives", "2", "--tiers", "1"],
        &["--mount-latency-ms", "500"],
    ))
    .expect(3, "two drives, tier 1");
    let t = first_recall_by_volume(&r);
    assert!(
        (t["V1"] - t["V2"]).abs() < 0.4,
        "the volumes were not recalled at once: {t:?}"
    );
    drop(r);
    // Two drives, but a budget that one volume fills: one after the other.
    let Some(r) = rig("phase2_honours_drives_and_the_stage_budget") else {
        return;
    };
    phase1(&r);
    import(&r);
    let v1: u64 = r
        .stubs
        .iter()
        .filter(|(_, v)| v.1 == "V1")
        .map(|(k, _)| std::fs::metadata(r.src.join(k)).unwrap().len())
        .sum();
    let budget = (v1 + 1).to_string();
    evac(stage_args(
        &r,
        &["--drives", "2", "--tiers", "1", "--stage-budget", &budget],
        &["--mount-latency-ms", "500"],
    ))
    .expect(3, "two drives, a budget of one volume");
    let t = first_recall_by_volume(&r);
    assert!(
        t["V2"] - t["V1"] >= 0.45,
        "the second volume started while the budget was full: {t:?}"
    );
}
