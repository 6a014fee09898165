//! I6, no escape: a hostile user works in SOURCE while evac runs as root.
//!
//! The attacker is a separate process (a python3 loop) that runs as the
//! unprivileged user nobody (65534) via `setpriv` when available, else as root
//! (printed). It owns `SOURCE/play` and everything in it, and — after evac has
//! mirrored directory owners — the matching directories at DEST. In a tight loop
//! it (i) replaces directories in SOURCE (and, once it owns them, at DEST) with
//! symlinks to a root-only directory OUTSIDE both trees, and back; (ii) replaces
//! files with symlinks to outside files (a copy of /etc/shadow in a 0700 root
//! directory) and back; (iii) makes hard links to outside files inside SOURCE:
//! as nobody, fs.protected_hardlinks lets it link only files it owns, so the
//! link targets are nobody-owned files in an outside directory (the
//! documented policy: such files are skipped, "hard-linked: N of its M names
//! are outside SOURCE"). Some links stay, some flicker, some replace a file's
//! name for an instant.
//!
//! Oracle: every outside file keeps its content, mode, owner, inode and type; no
//! outside bytes (every outside file carries a marker) appear anywhere at DEST;
//! no DEST file is readable by "other" unless its source was; DEST temporaries
//! sampled during the run are 0600 unless they are complete copies already
//! carrying their source's mode; the hard links from outside are listed as skipped with
//! the reason; once the attacker stops, a run relocates everything else.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// (kind, content hash, mode, uid, gid, inode) by path under the outside root.
type OutsideState = BTreeMap<Vec<u8>, (Kind, Option<[u8; 32]>, u32, u32, u32, u64)>;
/// (temporaries seen, samples by mode, violations).
type Samples = (u64, BTreeMap<u32, u64>, Vec<String>);

const MARKER: &[u8] = b"EVAC-OUTSIDE-MARKER";
const NOBODY: u32 = 65534;

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

/// A python interpreter that nobody (65534) can run under setpriv, if any.
fn nobody_python() -> Option<String> {
    let mut cands = vec!["/usr/bin/python3".to_string()];
    if let Ok(o) = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        cands.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    cands.into_iter().find(|py| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                py,
                "-c",
                "pass",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// The command that runs the attacker: python as nobody, else python as root.
fn attacker_cmd(as_nobody: &Option<String>) -> Command {
    match as_nobody {
        Some(py) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", py]);
            c
        }
        None => Command::new("python3"),
    }
}

/// A directory the attacker may write its log in.
fn log_dir(e: &Env) -> PathBuf {
    let d = e.tmp.path().join("attacker-logs");
    if !d.exists() {
        std::fs::create_dir(&d).unwrap();
        chown(&d, NOBODY, NOBODY);
    }
    d
}

fn wait_started(child: &mut Child, ready: &Path, what: &str) {
    let t = std::time::Instant::now();
    while !ready.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited before it started: {st:?}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} did not start within 20 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn marked(i: u64, len: usize) -> Vec<u8> {
    let mut v = MARKER.to_vec();
    v.extend_from_slice(format!("-{i:04}-").as_bytes());
    v.extend_from_slice(&content(0xbad0 + i, len));
    v
}

/// The outside world: root-only secrets, and nobody-owned files the attacker may hard-link.
struct Outside {
    root: PathBuf,
    secret_dir: PathBuf,
    shadow: PathBuf,
    owned: Vec<PathBuf>,
}

fn make_outside(base: &Path) -> Outside {
    let root = base.join("outside");
    std::fs::create_dir(&root).unwrap();
    chmod(&root, 0o711);
    let secret = root.join("secret");
    std::fs::create_dir(&secret).unwrap();
    chmod(&secret, 0o700);
    let shadow = secret.join("shadow");
    let mut sh = marked(1, 64);
    sh.extend_from_slice(&std::fs::read("/etc/shadow").unwrap_or_default());
    std::fs::write(&shadow, &sh).unwrap();
    chmod(&shadow, 0o600);
    let sdir = secret.join("dir");
    std::fs::create_dir(&sdir).unwrap();
    for i in 0..10u64 {
        let p = sdir.join(format!("f{i}"));
        std::fs::write(&p, marked(10 + i, 3000)).unwrap();
        chmod(&p, if i % 2 == 0 { 0o600 } else { 0o644 });
    }
    std::fs::create_dir(sdir.join("sub")).unwrap();
    std::fs::write(sdir.join("sub/deep"), marked(30, 100)).unwrap();
    let od = root.join("owned");
    std::fs::create_dir(&od).unwrap();
    chmod(&od, 0o755);
    let mut owned = Vec::new();
    for i in 0..4u64 {
        let p = od.join(format!("h{i}"));
        std::fs::write(&p, marked(40 + i, 5000)).unwrap();
        chown(&p, NOBODY, NOBODY);
        chmod(&p, 0o600);
        owned.push(p);
    }
    Outside {
        root,
        secret_dir: sdir,
        shadow,
        owned,
    }
}

/// The tree the attacker owns: play/dN/fM, nobody-owned, modes 0600/0640/0644;
/// plus root-owned files elsewhere in SOURCE.
fn make_play(src: &Path, dirs: usize, files: usize, big_every: usize) {
    let play = src.join("play");
    std::fs::create_dir(&play).unwrap();
    chown(&play, NOBODY, NOBODY);
    for d in 0..dirs {
        let dp = play.join(format!("d{d}"));
        std::fs::create_dir(&dp).unwrap();
        for f in 0..files {
            let p = dp.join(format!("f{f}"));
            let len = if big_every > 0 && f % big_every == 0 {
                3 << 20
            } else {
                6000 + f * 10
            };
            std::fs::write(&p, content((d * 100 + f) as u64, len)).unwrap();
            chown(&p, NOBODY, NOBODY);
            chmod(&p, [0o600, 0o640, 0o644][(d + f) % 3]);
        }
        chown(&dp, NOBODY, NOBODY);
    }
    let rootd = src.join("rootonly");
    std::fs::create_dir(&rootd).unwrap();
    for f in 0..10 {
        let p = rootd.join(format!("r{f}"));
        std::fs::write(&p, content(5000 + f, 4000)).unwrap();
        chmod(&p, 0o600);
    }
}

/// Kind/content/mode/owner/inode of everything under the outside root.
fn outside_state(root: &Path) -> OutsideState {
    Manifest::scan(root)
        .entries
        .into_iter()
        .map(|(k, e)| (k, (e.kind, e.hash, e.mode, e.uid, e.gid, e.ino)))
        .collect()
}

// ---------------------------------------------------------------------------
// The attacker.
// ---------------------------------------------------------------------------

const ATTACKER: &str = r#"
import os, sys, time, random, json
(play, dplay, secret_dir, shadow, owned_csv, stopfile, logpath, mode) = sys.argv[1:9]
owned = owned_csv.split(",")
rnd = random.Random(4242)
counts = {}
def bump(k):
    counts[k] = counts.get(k, 0) + 1
def tiny():
    r = rnd.random()
    if r < 0.5:
        return
    time.sleep(rnd.uniform(0.00005, 0.002))
def dirs(base):
    try:
        return [os.path.join(base, n) for n in os.listdir(base) if n.startswith("d") and not n.endswith(".away")]
    except OSError:
        return []
def files(d):
    try:
        return [os.path.join(d, n) for n in os.listdir(d) if n.startswith("f") and ".away" not in n]
    except OSError:
        return []
def swap_dir(d, target, tag):
    away = d + ".away"
    try:
        os.rename(d, away)
    except OSError:
        bump(tag + "-miss"); return
    try:
        os.symlink(target, d)
        bump(tag)
        tiny()
        os.unlink(d)
    except OSError:
        bump(tag + "-err")
    try:
        os.rename(away, d)
    except OSError:
        bump(tag + "-restore-err")
def swap_file(f, make, tag):
    away = os.path.join(os.path.dirname(f), "." + os.path.basename(f) + ".away")
    try:
        os.rename(f, away)
    except OSError:
        bump(tag + "-miss"); return
    try:
        make(f)
        bump(tag)
        tiny()
        os.unlink(f)
    except OSError:
        bump(tag + "-err")
    try:
        os.rename(away, f)
    except OSError:
        bump(tag + "-restore-err")
# Persistent hard links to outside files (the attacker owns them).
for i, h in enumerate(owned[:2]):
    try:
        os.link(h, os.path.join(play, "d%d" % i, "hl%d" % i))
        bump("persistent-link")
    except OSError as e:
        bump("persistent-link-err-%d" % e.errno)
open(logpath + ".ready", "w").close()
while not os.path.exists(stopfile):
    op = rnd.randrange(7)
    if op == 0:
        ds = dirs(play)
        if ds: swap_dir(rnd.choice(ds), rnd.choice([secret_dir, os.path.dirname(shadow)]), "src-dir-symlink")
    elif op == 1:
        ds = dirs(play)
        fs = files(rnd.choice(ds)) if ds else []
        if fs: swap_file(rnd.choice(fs), lambda p: os.symlink(shadow, p), "file-symlink")
    elif op == 2:
        ds = dirs(play)
        fs = files(rnd.choice(ds)) if ds else []
        if fs: swap_file(rnd.choice(fs), lambda p: os.link(rnd.choice(owned), p), "file-hardlink")
    elif op == 3:
        ds = dirs(play)
        if ds:
            p = os.path.join(rnd.choice(ds), "flick%d" % rnd.randrange(3))
            try:
                os.link(rnd.choice(owned), p); bump("flicker-link"); tiny(); os.unlink(p)
            except OSError:
                bump("flicker-link-err")
    elif op == 4:
        ds = dirs(dplay)
        if ds and mode == "dest":
            swap_dir(rnd.choice(ds), secret_dir, "dest-dir-symlink")
    elif op == 5 and mode == "dest":
        ds = dirs(dplay)
        fs = files(rnd.choice(ds)) if ds else []
        if fs: swap_file(rnd.choice(fs), lambda p: os.symlink(shadow, p), "dest-file-symlink")
    else:
        ds = dirs(play)
        if ds:
            d = rnd.choice(ds)
            # swap in a directory of the attacker's own holding a symlink farm to outside files
            alt = d + ".alt"
            try:
                os.mkdir(alt)
                for i in range(3):
                    os.symlink(os.path.join(secret_dir, "f%d" % i), os.path.join(alt, "f%d" % i))
                os.rename(d, d + ".away")
                os.rename(alt, d)
                bump("dir-of-symlinks"); tiny()
                os.rename(d, alt)
                os.rename(d + ".away", d)
            except OSError:
                bump("dir-of-symlinks-err")
            try:
                for n in os.listdir(alt): os.unlink(os.path.join(alt, n))
                os.rmdir(alt)
            except OSError:
                pass
# Clean up: put back anything left half swapped (after evac has stopped).
for base in (play, dplay):
    try:
        names = os.listdir(base)
    except OSError:
        continue
    for n in names:
        p = os.path.join(base, n)
        if n.endswith(".away"):
            orig = p[: -len(".away")]
            if os.path.islink(orig): os.unlink(orig)
            if os.path.isdir(orig) and not os.path.islink(orig):
                continue
            os.rename(p, orig)
    for d in dirs(base):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            if n.startswith(".") and n.endswith(".away"):
                orig = os.path.join(d, n[1:-len(".away")])
                if os.path.lexists(orig): os.unlink(orig)
                os.rename(p, orig)
            elif n.startswith("flick"):
                os.unlink(p)
json.dump(counts, open(logpath, "w"))
"#;

struct Attacker {
    child: Child,
    log: PathBuf,
    stop: PathBuf,
}

impl Attacker {
    fn start(e: &Env, out: &Outside, mode: &str, as_nobody: &Option<String>) -> Attacker {
        let log = log_dir(e).join(format!("attacker-{mode}.json"));
        let stop = e.tmp.path().join(format!("STOP-{mode}"));
        let owned: Vec<String> = out.owned.iter().map(|p| p.display().to_string()).collect();
        let mut cmd = attacker_cmd(as_nobody);
        let mut child = cmd
            .arg("-c")
            .arg(ATTACKER)
            .arg(e.src.join("play"))
            .arg(e.dst.join("play"))
            .arg(&out.secret_dir)
            .arg(&out.shadow)
            .arg(owned.join(","))
            .arg(&stop)
            .arg(&log)
            .arg(mode)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn attacker");
        wait_started(
            &mut child,
            Path::new(&format!("{}.ready", log.display())),
            "the attacker",
        );
        Attacker { child, log, stop }
    }
    fn stop(mut self) -> String {
        std::fs::write(&self.stop, b"").unwrap();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the attacker process failed: {st:?}");
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples DEST temporaries while a run goes on.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Samples>>,
}

impl Sampler {
    /// `legit`: (size, mode) of every source file: a temporary whose mode is not 0600 must
    /// be a complete copy already carrying its source's mode.
    fn start(dst: PathBuf, legit: BTreeSet<(u64, u32)>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = 0u64;
            let mut modes: BTreeMap<u32, u64> = BTreeMap::new();
            let mut bad = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                let mut stack = vec![dst.clone()];
                while let Some(d) = stack.pop() {
                    let Ok(rd) = std::fs::read_dir(&d) else {
                        continue;
                    };
                    for ent in rd.flatten() {
                        let p = ent.path();
                        let Ok(m) = std::fs::symlink_metadata(&p) else {
                            continue;
                        };
                        if m.is_dir() {
                            stack.push(p);
                            continue;
                        }
                        let n = ent.file_name();
                        let nb = n.as_encoded_bytes();
                        if !(is_evac_temp(nb) && nb.ends_with(b".tmp")) {
                            continue;
                        }
                        if !m.is_file() {
                            continue; // the attacker's own symlink, say
                        }
                        seen += 1;
                        let mode = m.mode() & 0o7777;
                        *modes.entry(mode).or_default() += 1;
                        if mode != 0o600 {
                            // Its mode is set after all its data is written (the
                            // times come a moment later): it must be a complete
                            // copy with its source's mode.
                            if !legit.contains(&(m.len(), mode)) && bad.len() < 20 {
                                bad.push(format!(
                                    "{}: mode {:o} owner {} size {} before its metadata was complete",
                                    p.display(),
                                    mode,
                                    m.uid(),
                                    m.len()
                                ));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            (seen, modes, bad)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }
    fn finish(mut self) -> (u64, BTreeMap<u32, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn octal(m: &BTreeMap<u32, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k:o}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn legit_meta(m: &Manifest) -> BTreeSet<(u64, u32)> {
    m.files().map(|(_, e)| (e.size, e.mode)).collect()
}

/// Every regular file under `root` (never following symlinks): (rel, content, mode).
fn dest_files(root: &Path) -> Vec<(PathBuf, Vec<u8>, u32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for ent in rd.flatten() {
            let p = ent.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                out.push((p, data, m.mode() & 0o7777, false));
            } else if m.file_type().is_symlink() {
                out.push((p, Vec::new(), 0, true));
            }
        }
    }
    out
}

fn check_no_escape(
    e: &Env,
    out: &Outside,
    outside_before: &OutsideState,
    src_before: &Manifest,
) -> Vec<String> {
    let mut p = Vec::new();
    // A. Outside untouched.
    let after = outside_state(&out.root);
    for (rel, b) in outside_before {
        match after.get(rel) {
            None => p.push(format!("outside/{}: disappeared", esc(rel))),
            Some(a) if a != b => p.push(format!(
                "outside/{}: changed (kind, hash, mode, uid, gid, ino) {:?} -> {:?}",
                esc(rel),
                (b.0, b.2, b.3, b.4, b.5),
                (a.0, a.2, a.3, a.4, a.5)
            )),
            _ => {}
        }
    }
    for rel in after.keys() {
        if !outside_before.contains_key(rel) {
            p.push(format!("outside/{}: appeared", esc(rel)));
        }
    }
    // B/D. DEST: no outside bytes, no symlinks, nothing more readable than its source.
    for (path, data, mode, is_link) in dest_files(&e.dst) {
        let rel = path
            .strip_prefix(&e.dst)
            .unwrap()
            .as_os_str()
            .as_encoded_bytes()
            .to_vec();
        if is_link {
            p.push(format!("DEST/{}: a symlink at DEST", esc(&rel)));
            continue;
        }
        if data.windows(MARKER.len()).any(|w| w == MARKER) {
            p.push(format!(
                "DEST/{}: holds bytes of an outside file",
                esc(&rel)
            ));
        }
        if mode & 0o004 != 0 {
            let src_other = src_before
                .get(&rel)
                .map(|s| s.mode & 0o004 != 0)
                .unwrap_or(false);
            if !src_other {
                p.push(format!(
                    "DEST/{}: mode {mode:o} is readable by others, its source was {:?}",
                    esc(&rel),
                    src_before.get(&rel).map(|s| format!("{:o}", s.mode))
                ));
            }
        }
    }
    p
}

fn attack_run(test: &str, as_nobody: Option<String>) {
    let e = env();
    chmod(e.tmp.path(), 0o755);
    chmod(&e.src, 0o755);
    let out = make_outside(e.tmp.path());
    make_play(&e.src, 6, 14, 5);
    let src_before = Manifest::scan(&e.src);
    let outside_before = outside_state(&out.root);
    let legit = legit_meta(&src_before);
    eprintln!(
        "{test}: attacker runs as {}",
        if as_nobody.is_some() {
            "nobody (65534) via setpriv; hard links only to files it owns (fs.protected_hardlinks)"
        } else {
            "root (setpriv or a python nobody may run is unavailable)"
        }
    );

    let args = [
        "--workers",
        "2",
        "--batch-files",
        "16",
        "--retry-rounds",
        "2",
        "--retry-delay",
        "0.1",
    ];
    // Run 1: SOURCE-side attacks.
    let att = Attacker::start(&e, &out, "source", &as_nobody);
    let sampler = Sampler::start(e.dst.clone(), legit.clone());
    let o1 = evac_run(&e.src, &e.dst, &e.journal, &args);
    let (seen1, modes1, bad1) = sampler.finish();
    let c1 = o1.code();
    let counts1 = att.stop();
    eprintln!("{test}: run 1 exit {c1}; attacker: {counts1}");
    assert!(
        c1 == 0 || c1 == 3,
        "{test}: run 1 under attack exited {c1}\n{}",
        o1.dump()
    );

    // New files for run 2, and DEST directories now owned by the attacker: attack both sides.
    for d in 0..6 {
        let p = e.src.join(format!("play/d{d}/fnew"));
        std::fs::write(&p, content(9000 + d, 2 << 20)).unwrap();
        chown(&p, NOBODY, NOBODY);
        chmod(&p, 0o600);
    }
    let src_before2 = {
        let mut m = Manifest::scan(&e.src);
        m.entries
            .retain(|k, _| !k.ends_with(b"/hl0") && !k.ends_with(b"/hl1"));
        m
    };
    let legit2 = legit_meta(&src_before2);
    let dplay = std::fs::symlink_metadata(e.dst.join("play"))
        .map(|m| m.uid())
        .unwrap_or(0);
    eprintln!("{test}: DEST/play owner after run 1: {dplay}");
    let att = Attacker::start(&e, &out, "dest", &as_nobody);
    let sampler = Sampler::start(e.dst.clone(), legit2);
    let o2 = evac_resume(&e.journal, &args);
    let (seen2, modes2, bad2) = sampler.finish();
    let c2 = o2.code();
    let counts2 = att.stop();
    eprintln!("{test}: run 2 exit {c2}; attacker: {counts2}");
    eprintln!(
        "{test}: DEST temporaries sampled: run 1 {seen1} {}, run 2 {seen2} {} (mode: samples)",
        octal(&modes1),
        octal(&modes2)
    );
    assert!(
        c2 == 0 || c2 == 3,
        "{test}: run 2 under attack exited {c2}\n{}",
        o2.dump()
    );

    // The attack is over: the next run(s) finish the job.
    let mut codes = vec![c1, c2];
    for _ in 0..3 {
        let o = evac_resume(&e.journal, &["--retry-delay", "0.1"]);
        codes.push(o.code());
        if o.code() == 0 {
            break;
        }
        assert_eq!(o.code(), 3, "{test}: run after the attack\n{}", o.dump());
    }
    eprintln!("{test}: exit codes {codes:?}");

    // SOURCE as it was before any run, plus the files added for run 2.
    let mut all = src_before.clone();
    for (k, v) in &src_before2.entries {
        if k.ends_with(b"/fnew") {
            // The two scans are from different moments: an inode number freed by
            // run 1 (a relocated original) may be reused by a new file. Keep the
            // new files out of the old files' hard-link groups.
            let mut v = v.clone();
            v.ino = u64::MAX - all.entries.len() as u64;
            all.entries.insert(k.clone(), v);
        }
    }
    let mut problems = check_no_escape(&e, &out, &outside_before, &all);
    problems.extend(bad1);
    problems.extend(bad2);
    // C. The outside hard links are skipped, with the reason.
    let skipped: BTreeSet<Vec<u8>> = status_list(&e.journal, "skipped").into_iter().collect();
    let st = status(&e.journal);
    let reasons = st
        .get("reasons")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let hl_reason = reasons.iter().any(|r| {
        r.get("state").and_then(|s| s.as_str()) == Some("skipped")
            && r.get("reason")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.starts_with("hard-linked: 1 of its 2 names are outside SOURCE"))
    });
    for i in 0..2 {
        let rel = format!("play/d{i}/hl{i}").into_bytes();
        let l = std::fs::symlink_metadata(path_of(&e.src, &rel));
        if l.as_ref().map(|m| m.is_file()).unwrap_or(false) {
            if !skipped.contains(&rel) {
                problems.push(format!(
                    "{}: a hard link to an outside file, not listed as skipped",
                    esc(&rel)
                ));
            }
        } else {
            problems.push(format!(
                "{}: the hard link to an outside file is no longer a regular file in SOURCE: {l:?}",
                esc(&rel)
            ));
        }
    }
    if !hl_reason {
        problems.push(format!(
            "no skipped reason \"hard-linked: 1 of its 2 names are outside SOURCE…\": {reasons:?}"
        ));
    }
    assert_no_problems(&format!("{test}: escape oracle"), &problems);
    assert_eq!(
        *codes.last().unwrap(),
        0,
        "{test}: once the attack stopped, evac should finish (exit codes {codes:?})"
    );

    // E. Everything of SOURCE's own relocated, unharmed.
    let o = OracleOpts {
        check_atime: false,
        check_dir_mtime: false,
        ..Default::default()
    };
    check_relocated_opts(&all, &e.src, &e.dst, &o);
    figures(
        &format!("hostile {test}"),
        &format!(
            "attacker during run 1: {counts1}; during run 2: {counts2}; exit codes {codes:?}; outside files modified, replaced or deleted: 0; outside bytes at DEST: 0; SOURCE's own files relocated unharmed"
        ),
    );
}

#[test]
fn attacker_cannot_make_evac_touch_outside_files() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "attacker_cannot_make_evac_touch_outside_files",
        "the attacker must be a different user from evac (root)"
    );
    if !have_python() {
        skip!(
            "attacker_cannot_make_evac_touch_outside_files",
            "python3 not found"
        );
    }
    attack_run(
        "attacker_cannot_make_evac_touch_outside_files",
        nobody_python(),
    );
}

// ---------------------------------------------------------------------------
// DEST temporaries hijacked: the attacker owns a DEST directory (evac mirrored
// its owner from SOURCE) and swaps evac's `.evac-*.tmp` for a symlink to an
// outside file while the copy is written. evac must never put a file it did
// not write at the final DEST name, nor link a SOURCE path to it.
// ---------------------------------------------------------------------------

const HIJACKER: &str = r#"
import os, sys, time
dplay, shadow, stopfile, logpath = sys.argv[1:5]
n = 0
open(logpath + ".ready", "w").close()
while not os.path.exists(stopfile):
    try:
        ds = [os.path.join(dplay, d) for d in os.listdir(dplay)]
    except OSError:
        ds = []
    for d in ds:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(".evac-") and name.endswith(".tmp"):
                p = os.path.join(d, name)
                if os.path.islink(p):
                    continue
                try:
                    os.rename(p, os.path.join(d, ".stolen-%d" % n))
                    os.symlink(shadow, p)
                    n += 1
                except OSError:
                    pass
open(logpath, "w").write("%d\n" % n)
"#;

#[test]
fn hijacked_dest_temporary_is_never_placed() {
    let _gate = suite_gate!();
    let test = "hijacked_dest_temporary_is_never_placed";
    skip_unless_root!(
        test,
        "the attacker must be a different user from evac (root)"
    );
    if !have_python() {
        skip!(test, "python3 not found");
    }
    let as_nobody = nobody_python();
    let e = env();
    chmod(e.tmp.path(), 0o755);
    chmod(&e.src, 0o755);
    let out = make_outside(e.tmp.path());
    make_play(&e.src, 3, 4, 0);
    // Run 1, no attack: DEST/play/dN now belong to nobody, like their sources.
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    let owner = std::fs::symlink_metadata(e.dst.join("play/d0"))
        .unwrap()
        .uid();
    eprintln!("{test}: DEST/play/d0 owner after the first run: {owner}");
    // New big files (the copy takes a while), then the hijacker.
    let mut newr = Vec::new();
    for d in 0..3 {
        for k in 0..3 {
            let rel = format!("play/d{d}/new{k}").into_bytes();
            let p = path_of(&e.src, &rel);
            std::fs::write(&p, content(8000 + d * 10 + k, 24 << 20)).unwrap();
            chown(&p, NOBODY, NOBODY);
            chmod(&p, 0o600);
            newr.push(rel);
        }
    }
    let before = Manifest::scan(&e.src);
    let outside_before = outside_state(&out.root);
    let log = log_dir(&e).join("hijack.log");
    let stop = e.tmp.path().join("STOP-hijack");
    eprintln!(
        "{test}: hijacker runs as {}",
        if as_nobody.is_some() {
            "nobody (65534)"
        } else {
            "root"
        }
    );
    let mut cmd = attacker_cmd(&as_nobody);
    let mut child = cmd
        .arg("-c")
        .arg(HIJACKER)
        .arg(e.dst.join("play"))
        .arg(&out.shadow)
        .arg(&stop)
        .arg(&log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_started(
        &mut child,
        Path::new(&format!("{}.ready", log.display())),
        "the hijacker",
    );
    let o2 = evac_resume(&e.journal, &["--workers", "2", "--retry-delay", "0.1"]);
    std::fs::write(&stop, b"").unwrap();
    child.wait().unwrap();
    let hijacks = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "{test}: run under attack exit {}; temporaries hijacked: {}",
        o2.code(),
        hijacks.trim()
    );

    let mut problems = check_no_escape(&e, &out, &outside_before, &before)
        .into_iter()
        .filter(|p| !p.contains(".stolen-")) // the attacker's own loot (its bytes are SOURCE's)
        .collect::<Vec<_>>();
    for rel in &newr {
        let p = path_of(&e.src, rel);
        let b = before.get(rel).unwrap();
        let l = std::fs::symlink_metadata(&p).unwrap();
        if l.file_type().is_symlink() {
            let d = std::fs::symlink_metadata(path_of(&e.dst, rel));
            match d {
                Ok(m) if m.is_file() => {}
                Ok(m) => problems.push(format!(
                    "{}: SOURCE now links to DEST/{}, which is a {:?} (evac placed the attacker's symlink), not evac's copy",
                    esc(rel),
                    esc(rel),
                    m.file_type()
                )),
                Err(err) => problems.push(format!("{}: linked, but DEST copy missing: {err}", esc(rel))),
            }
            match std::fs::read(&p) {
                Ok(data) if hash_bytes(&data) == b.hash.unwrap() => {}
                Ok(data) if data.starts_with(MARKER) => problems.push(format!(
                    "{}: reading the SOURCE path now yields the OUTSIDE file {} (its original data was unlinked)",
                    esc(rel),
                    out.shadow.display()
                )),
                Ok(_) => problems.push(format!("{}: content through the path is not the original", esc(rel))),
                Err(err) => problems.push(format!("{}: unreadable through the path: {err}", esc(rel))),
            }
        } else if hash_bytes(&std::fs::read(&p).unwrap()) != b.hash.unwrap() {
            problems.push(format!(
                "{}: still a file in SOURCE but its content changed",
                esc(rel)
            ));
        }
    }
    assert_no_problems(&format!("{test}: hijacked temporaries"), &problems);
    figures(
        &format!("hostile {test}"),
        "a DEST temporary hijacked (replaced by a symlink to an outside file) during each copy; placed hijacks: 0",
    );
}
