//! Correctness by enumeration, with evac's step points (`src/steps.rs`): small trees that hold
//! every kind of file the engine treats differently are relocated once to learn the sequence of
//! step points a run passes; then, for every point P and every passage k of it:
//!
//! - crash enumeration: evac is stopped at P@k as by kill -9, resumed until it finishes, and the
//!   tree is checked (content and metadata at DEST; every SOURCE path a link to a complete copy
//!   of its own content; no temporary left; no file copied twice; `evac verify` passes). Then,
//!   for every point the resumed run passes while it recovers what the crash left, a second crash
//!   there, and the same checks;
//! - interleaving enumeration: evac is held at P@k while a user acts on the file the point
//!   concerns, through its path (append and read back, rename away, rename onto, delete, replace
//!   with a new file, chmod), then let go. Checked: at the moment it is held, every path shows
//!   its own content; the user's read-back shows their own write at once and after every later
//!   run; no operation fails with ENOENT; no path ever shows another file's content; after the
//!   resumed runs, the same checks as above against the user's model.
//!
//! A run with step points armed keeps to one schedule (one worker, one rayon thread, batches
//! that end only when every copy is back), so a failure replays exactly:
//!   EVAC_ENUM_ONLY='SCENARIO crash POINT@K' (or 'SCENARIO crash P@K P2@K2', or
//!   'SCENARIO interleave POINT@K OP') cargo test --release --test it enumerate:: -- --nocapture
//! EVAC_ENUM_SCENARIO=NAME explores one tree only; EVAC_ENUM_KEEP=1 keeps the workspaces of
//! failed cases. Needs root (file handles, leases on
//! any file): skipped with a reason otherwise.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ===========================================================================
// Workspaces and the model
// ===========================================================================

struct Ws {
    root: PathBuf,
    src: PathBuf,
    dst: PathBuf,
    journal: PathBuf,
    steps: PathBuf,
}

impl Ws {
    fn new(base: &Path, name: &str) -> Ws {
        let root = base.join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("steps")).unwrap();
        Ws {
            src: root.join("src"),
            dst: root.join("dst"),
            journal: root.join("journal.db"),
            steps: root.join("steps"),
            root,
        }
    }
    fn s(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }
}

/// What a path must hold, read through it.
#[derive(Clone, Debug)]
struct Want {
    data: Vec<u8>,
    /// Permission bits, when known (a user's chmod changes them).
    mode: Option<u32>,
    /// The mtime the copy must carry, while nobody wrote the file.
    mtime_ns: Option<i64>,
    /// Names of one hard-linked file share a group (and must share a DEST inode).
    group: Option<u32>,
    sparse: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    files: BTreeMap<String, Want>,
    /// Every content any path has held: what DEST's trash may keep.
    versions: BTreeSet<Vec<u8>>,
    /// The trash must hold exactly these contents (crash cases), or any known version.
    trash_exact: Option<Vec<Vec<u8>>>,
}

impl Model {
    fn add(&mut self, rel: &str, w: Want) {
        self.versions.insert(w.data.clone());
        self.files.insert(rel.into(), w);
    }
}

fn body(tag: &str, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut x: u64 = tag.bytes().fold(1469598103934665603, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(format!("{tag}:{x:016x}\n").as_bytes());
    }
    v.truncate(n);
    v
}

fn set_mtime(p: &Path, ns: i64) {
    let ts = libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let times = [ts, ts];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

/// A regular file with a known mode and mtime.
fn put(ws: &Ws, m: &mut Model, rel: &str, data: &[u8], mode: u32, mtime_ns: i64) {
    let p = ws.s(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(&p, mtime_ns);
    m.add(
        rel,
        Want {
            data: data.to_vec(),
            mode: Some(mode),
            mtime_ns: Some(mtime_ns),
            group: None,
            sparse: false,
        },
    );
}

// ===========================================================================
// Running evac
// ===========================================================================

struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

fn evac_cmd(ws: &Ws, args: &[&str], arm: &[(&str, String)]) -> Command {
    let mut c = Command::new(evac_bin());
    c.args(args)
        .env("EVAC_TEST_GOVERNOR", "off")
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("EVAC_TEST_STEPS")
        .env_remove("EVAC_TEST_STEP_CRASH")
        .env_remove("EVAC_TEST_STEP_PAUSE")
        .env_remove("EVAC_TEST_STEP_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !arm.is_empty() {
        c.env("EVAC_TEST_STEPS", &ws.steps);
        for (k, v) in arm {
            c.env(k, v);
        }
    }
    c
}

fn first_args(ws: &Ws) -> Vec<OsString> {
    vec![
        "run".into(),
        ws.src.clone().into(),
        ws.dst.clone().into(),
        "--journal".into(),
        ws.journal.clone().into(),
        "--quiet".into(),
        "--workers".into(),
        "1".into(),
        "--retry-delay".into(),
        "0".into(),
    ]
}

/// A resume names SOURCE and DEST too: a crash before the plan was committed leaves a journal
/// that cannot say them.
fn resume_args(ws: &Ws) -> Vec<OsString> {
    first_args(ws)
}

fn spawn(ws: &Ws, args: &[OsString], arm: &[(&str, String)]) -> Child {
    let a: Vec<&str> = args.iter().map(|s| s.to_str().unwrap()).collect();
    evac_cmd(ws, &a, arm).spawn().expect("spawn evac")
}

fn finish(mut child: Child, limit: Duration) -> Ran {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let mut e = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut e);
                }
                return Ran {
                    code: st.code(),
                    signal: st.signal(),
                    stderr: e,
                };
            }
            Ok(None) if t0.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Ran {
                    code: None,
                    signal: None,
                    stderr: format!("HUNG: killed after {limit:?}"),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("wait for evac: {e}"),
        }
    }
}

fn run(ws: &Ws, args: &[OsString], arm: &[(&str, String)]) -> Ran {
    finish(spawn(ws, args, arm), Duration::from_secs(60))
}

/// Resume until a run exits 0 with DEST mirroring SOURCE, as an operator would (a deferred
/// file, or a copy whose link has gone, may need another complete walk); the runs' stderr.
fn resume_to_end(ws: &Ws, after_each: &mut dyn FnMut(usize)) -> Result<(), String> {
    let mut log = String::new();
    for i in 0..6 {
        let r = run(ws, &resume_args(ws), &[]);
        after_each(i);
        match r.code {
            Some(0) if cutover_ready(ws) => return Ok(()),
            Some(0) => log.push_str(&format!("--- resume {i}: exit 0, cutover not ready\n")),
            Some(3) => log.push_str(&format!("--- resume {i}: exit 3\n{}", r.stderr)),
            _ => {
                return Err(format!(
                    "resume {i} ended with {:?}/{:?}\n{}{}",
                    r.code, r.signal, log, r.stderr
                ))
            }
        }
    }
    Err(format!("not done after 6 resumes\n{log}"))
}

fn cutover_ready(ws: &Ws) -> bool {
    try_status(&ws.journal)
        .and_then(|st| st.get("cutover")?.get("ready")?.as_bool())
        .unwrap_or(false)
}

/// The trace the last armed run wrote: (point, k, path).
fn read_trace(ws: &Ws) -> Vec<(String, u64, Vec<u8>)> {
    let t = std::fs::read_to_string(ws.steps.join("trace")).unwrap_or_default();
    t.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?.to_string();
            let k = f.next()?.parse().ok()?;
            let path = unhex(f.next().unwrap_or(""));
            Some((name, k, path))
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn clear_trace(ws: &Ws) {
    let _ = std::fs::remove_file(ws.steps.join("trace"));
}

// ===========================================================================
// Scenarios: small trees, some after a first run and a user's changes
// ===========================================================================

struct Scenario {
    name: &'static str,
    build: fn(&Ws) -> Model,
}

const T0: i64 = 1_600_000_000_123_456_789;

fn prelim(ws: &Ws) {
    let r = run(ws, &first_args(ws), &[]);
    assert_eq!(r.code, Some(0), "preliminary run: {}", r.stderr);
}

fn mv(ws: &Ws, a: &str, b: &str) {
    std::fs::create_dir_all(ws.s(b).parent().unwrap()).unwrap();
    std::fs::rename(ws.s(a), ws.s(b)).unwrap_or_else(|e| panic!("mv {a} {b}: {e}"));
}

fn sc_plain(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "d/plain", &body("plain", 3000), 0o640, T0);
    m
}

fn sc_hardlinks(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "d/h1", &body("hard", 2500), 0o644, T0 + 7);
    std::fs::create_dir_all(ws.s("e")).unwrap();
    std::fs::hard_link(ws.s("d/h1"), ws.s("d/h2")).unwrap();
    std::fs::hard_link(ws.s("d/h1"), ws.s("e/h3")).unwrap();
    let mut w = m.files["d/h1"].clone();
    w.group = Some(1);
    for r in ["d/h1", "d/h2", "e/h3"] {
        m.add(r, w.clone());
    }
    m
}

fn sc_sparse(ws: &Ws) -> Model {
    let mut m = Model::default();
    let p = ws.s("d/sparse");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(&p).unwrap();
    let tail = body("sparse", 4096);
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&tail).unwrap();
    drop(f);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&p, T0 + 11);
    let mut data = vec![0u8; 1 << 20];
    data.extend_from_slice(&tail);
    m.add(
        "d/sparse",
        Want {
            data,
            mode: Some(0o600),
            mtime_ns: Some(T0 + 11),
            group: None,
            sparse: true,
        },
    );
    m
}

fn renamed(m: &mut Model, a: &str, b: &str) {
    let w = m.files.remove(a).unwrap();
    m.files.insert(b.into(), w);
}

fn sc_renamed_link(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "d/a", &body("a", 1200), 0o644, T0 + 1);
    put(ws, &mut m, "d/c", &body("c", 1300), 0o644, T0 + 2);
    put(ws, &mut m, "e/b", &body("b", 1400), 0o644, T0 + 3);
    prelim(ws);
    // Across directories, and within one.
    mv(ws, "d/a", "e/a-moved");
    renamed(&mut m, "d/a", "e/a-moved");
    mv(ws, "d/c", "d/c2");
    renamed(&mut m, "d/c", "d/c2");
    m
}

fn sc_replaced_link(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "d/r", &body("r-old", 1500), 0o644, T0 + 4);
    let old = m.files["d/r"].data.clone();
    prelim(ws);
    std::fs::remove_file(ws.s("d/r")).unwrap();
    put(ws, &mut m, "d/r", &body("r-new", 1700), 0o640, T0 + 5);
    m.trash_exact = Some(vec![old]);
    m
}

fn sc_cycle(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "d/x", &body("x", 900), 0o644, T0 + 6);
    put(ws, &mut m, "d/y", &body("y", 950), 0o644, T0 + 8);
    prelim(ws);
    mv(ws, "d/x", "d/tmp");
    mv(ws, "d/y", "d/x");
    mv(ws, "d/tmp", "d/y");
    let (x, y) = (m.files["d/x"].clone(), m.files["d/y"].clone());
    m.files.insert("d/x".into(), y);
    m.files.insert("d/y".into(), x);
    m.trash_exact = Some(Vec::new());
    m
}

fn sc_renamed_dir(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "p/q/f1", &body("f1", 800), 0o644, T0 + 9);
    put(ws, &mut m, "p/q/f2", &body("f2", 850), 0o644, T0 + 10);
    prelim(ws);
    mv(ws, "p/q", "p/r");
    renamed(&mut m, "p/q/f1", "p/r/f1");
    renamed(&mut m, "p/q/f2", "p/r/f2");
    m
}

/// The shape of races 1 and 3: a link renamed away while a new file takes its old name, so that
/// the old copy's DEST name is still named by the renamed link when the new file wants it.
fn sc_renamed_and_reused(ws: &Ws) -> Model {
    let mut m = Model::default();
    put(ws, &mut m, "d/a", &body("a-first", 1500), 0o644, T0 + 12);
    put(ws, &mut m, "d/b", &body("b", 700), 0o644, T0 + 13);
    prelim(ws);
    mv(ws, "d/a", "e/moved");
    renamed(&mut m, "d/a", "e/moved");
    put(ws, &mut m, "d/a", &body("a-second", 1600), 0o640, T0 + 14);
    m
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "plain",
        build: sc_plain,
    },
    Scenario {
        name: "hardlinks",
        build: sc_hardlinks,
    },
    Scenario {
        name: "sparse",
        build: sc_sparse,
    },
    Scenario {
        name: "renamed-link",
        build: sc_renamed_link,
    },
    Scenario {
        name: "replaced-link",
        build: sc_replaced_link,
    },
    Scenario {
        name: "rename-cycle",
        build: sc_cycle,
    },
    Scenario {
        name: "renamed-dir",
        build: sc_renamed_dir,
    },
    Scenario {
        name: "renamed-and-reused",
        build: sc_renamed_and_reused,
    },
];

// ===========================================================================
// The oracle
// ===========================================================================

fn rd(p: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(p)
}

/// Every path of the model, read through SOURCE, shows its own content (I1 and no lost or
/// foreign content), at any moment.
fn paths_show_their_content(ws: &Ws, m: &Model, when: &str, out: &mut Vec<String>) {
    paths_show_their_content_or(ws, m, when, out, &mut |_, _| false)
}

/// The user's append, as `user_op` makes it.
const APPENDED: &[u8] = b"+ appended by the user\n";

/// As `paths_show_their_content`, where `allowed(rel, content)` may accept a read the model
/// does not (and counts it).
fn paths_show_their_content_or(
    ws: &Ws,
    m: &Model,
    when: &str,
    out: &mut Vec<String>,
    allowed: &mut dyn FnMut(&str, &[u8]) -> bool,
) {
    for (rel, w) in &m.files {
        match rd(&ws.s(rel)) {
            Ok(d) if d == w.data => {}
            Ok(d) if allowed(rel, &d) => {}
            Ok(d) => {
                let whose = m
                    .files
                    .iter()
                    .find(|(r, o)| *r != rel && o.data == d)
                    .map(|(r, _)| format!(" (that is {r}'s content)"))
                    .unwrap_or_default();
                out.push(format!(
                    "{when}: {rel} shows {} bytes where it must show {}{whose}",
                    d.len(),
                    w.data.len()
                ))
            }
            Err(e) => out.push(format!("{when}: {rel} cannot be read: {e}")),
        }
    }
}

fn walk(root: &Path, rel: &str, out: &mut Vec<(String, std::fs::Metadata)>) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = std::fs::symlink_metadata(root.join(&r)).unwrap();
        if md.is_dir() {
            walk(root, &r, out);
        } else {
            out.push((r, md));
        }
    }
}

/// After the last run: the whole tree against the model.
fn final_problems(ws: &Ws, m: &Model) -> Vec<String> {
    let mut out = Vec::new();
    paths_show_their_content(ws, m, "at the end", &mut out);
    // SOURCE holds the model's paths, each evac's link to DEST/<its path>, and nothing else.
    let mut src = Vec::new();
    walk(&ws.src, "", &mut src);
    for (r, md) in &src {
        let name = r.rsplit('/').next().unwrap();
        if name.starts_with(".evac-") {
            out.push(format!("SOURCE temporary left: {r}"));
        } else if !m.files.contains_key(r) {
            out.push(format!(
                "SOURCE has {r} ({}), which no user made",
                if md.is_symlink() { "a link" } else { "a file" }
            ));
        }
    }
    for (rel, w) in &m.files {
        match std::fs::read_link(ws.s(rel)) {
            Ok(t) if t == ws.dst.join(rel) => {}
            Ok(t) => out.push(format!(
                "{rel} links to {}, not its own DEST path",
                t.display()
            )),
            Err(_) => out.push(format!("{rel} is not a link after the final run")),
        }
        let d = ws.dst.join(rel);
        match std::fs::symlink_metadata(&d) {
            Ok(md) if md.is_file() => {
                if let Some(mode) = w.mode {
                    if md.mode() & 0o7777 != mode {
                        out.push(format!(
                            "DEST {rel}: mode {:o}, want {mode:o}",
                            md.mode() & 0o7777
                        ));
                    }
                }
                if let Some(t) = w.mtime_ns {
                    let got = md.mtime() * 1_000_000_000 + md.mtime_nsec();
                    if got != t {
                        out.push(format!("DEST {rel}: mtime {got}, want {t}"));
                    }
                }
                if w.sparse && md.blocks() * 512 >= md.size() {
                    out.push(format!("DEST {rel}: not sparse ({} blocks)", md.blocks()));
                }
                if rd(&d).ok().as_deref() != Some(&w.data[..]) {
                    out.push(format!("DEST {rel}: content differs"));
                }
            }
            _ => out.push(format!("DEST {rel}: no regular file")),
        }
    }
    // Hard-link groups share one DEST inode; nothing else does.
    let mut inode_of: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut dst = Vec::new();
    walk(&ws.dst, "", &mut dst);
    let mut trash = Vec::new();
    for (r, md) in &dst {
        if r.starts_with(".evac-trash/") {
            trash.push(rd(&ws.dst.join(r)).unwrap_or_default());
            continue;
        }
        let name = r.rsplit('/').next().unwrap();
        if name.starts_with(".evac-") {
            out.push(format!("DEST temporary left: {r}"));
            continue;
        }
        if !m.files.contains_key(r) {
            out.push(format!("DEST has {r}, which SOURCE does not"));
        }
        inode_of.entry(md.ino()).or_default().insert(r.clone());
    }
    for names in inode_of.values() {
        let groups: BTreeSet<Option<u32>> = names
            .iter()
            .filter_map(|n| m.files.get(n))
            .map(|w| w.group)
            .collect();
        if names.len() > 1 && (groups.len() != 1 || groups.contains(&None)) {
            out.push(format!(
                "DEST names {names:?} share an inode but are not one file"
            ));
        }
    }
    let mut group_inodes: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for (r, md) in &dst {
        if let Some(g) = m.files.get(r).and_then(|w| w.group) {
            group_inodes.entry(g).or_default().insert(md.ino());
        }
    }
    for (g, inos) in group_inodes {
        if inos.len() > 1 {
            out.push(format!(
                "hard-link group {g} was split at DEST ({} inodes)",
                inos.len()
            ));
        }
    }
    // The trash keeps earlier versions only (a second copy of a file would show here).
    match &m.trash_exact {
        Some(want) => {
            let mut a = trash.clone();
            a.sort();
            let mut b = want.clone();
            b.sort();
            if a != b {
                out.push(format!(
                    "DEST trash holds {} files, want {} (a file copied twice, or a version lost)",
                    a.len(),
                    b.len()
                ));
            }
        }
        None => {
            for t in &trash {
                if !m.versions.contains(t) {
                    out.push(format!(
                        "DEST trash holds {} bytes no path ever held",
                        t.len()
                    ));
                }
            }
        }
    }
    let v = Command::new(evac_bin())
        .args(["verify", "--journal"])
        .arg(&ws.journal)
        .output()
        .unwrap();
    if v.status.code() != Some(0) {
        out.push(format!(
            "verify exited {:?}: {}",
            v.status.code(),
            String::from_utf8_lossy(&v.stdout)
        ));
    }
    match try_status(&ws.journal) {
        Some(st) => {
            for s in ["pending", "deferred", "failed", "staged_out"] {
                let n = count(&st, s);
                if n != 0 {
                    out.push(format!("status: {n} {s}"));
                }
            }
            let ready = st
                .get("cutover")
                .and_then(|c| c.get("ready"))
                .and_then(|r| r.as_bool());
            if ready != Some(true) {
                out.push("status: cutover not ready".into());
            }
        }
        None => out.push("status --json failed".into()),
    }
    out
}

// ===========================================================================
// Cases
// ===========================================================================

/// A step point's K-th passage in the R-th run of a scenario (from 0), written `R:POINT@K`.
#[derive(Clone, Debug)]
struct At(usize, String, u64);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}@{}", self.0, self.1, self.2)
    }
}

impl At {
    fn spec(&self) -> String {
        format!("{}@{}", self.1, self.2)
    }
}

#[derive(Clone, Debug)]
enum Case {
    Crash {
        sc: usize,
        at: At,
        /// A second crash, in the run that recovers from the first (its point and k).
        then: Option<(String, u64)>,
    },
    Interleave {
        sc: usize,
        at: At,
        op: &'static str,
    },
}

impl Case {
    fn label(&self) -> String {
        match self {
            Case::Crash { sc, at, then: None } => {
                format!("{} crash {at}", SCENARIOS[*sc].name)
            }
            Case::Crash {
                sc,
                at,
                then: Some(t),
            } => format!("{} crash {at} {}@{}", SCENARIOS[*sc].name, t.0, t.1),
            Case::Interleave { sc, at, op } => {
                format!("{} interleave {at} {op}", SCENARIOS[*sc].name)
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    reached: usize,
    not_reached: usize,
    problems: Vec<String>,
    /// Second-crash points learned from each first crash's recovery.
    second: Vec<Case>,
    saved_files: usize,
    /// Reads of a replaced name's previous content in the instant between evac's exchange and
    /// its undo (the README's first "moment that cannot be closed").
    instants: usize,
    /// Reads, after a kill and before the next run, of a path's content without the append
    /// that waited on evac's lease (the README's second moment).
    killed_window: usize,
}

const OPS: &[&str] = &[
    "append",
    "rename-away",
    "rename-onto",
    "delete",
    "replace",
    "chmod",
    "move-and-reuse",
    // Killed where held, just after the user's operation: the operations that leave a link
    // naming a DEST name the path no longer leads to, and a write that waits on the lease.
    "append+kill",
    "rename-away+kill",
    "move-and-reuse+kill",
];

/// The runs of the learnt schedule before run `r` (armed, so that they keep to it).
fn runs_before(ws: &Ws, r: usize) -> Result<(), String> {
    for i in 0..r {
        let x = run(
            ws,
            &first_or_resume(ws),
            &[("EVAC_TEST_STEP_CRASH", "none@0".into())],
        );
        if x.code != Some(3) {
            return Err(format!(
                "run {i} of the schedule ended {:?}: {}",
                x.code, x.stderr
            ));
        }
    }
    Ok(())
}

fn crash_case(
    base: &Path,
    id: usize,
    sc: usize,
    at: &At,
    then: &Option<(String, u64)>,
    t: &Mutex<Tally>,
) -> Result<(), String> {
    let ws = Ws::new(base, &format!("c{id}"));
    let mut m = (SCENARIOS[sc].build)(&ws);
    if m.trash_exact.is_none() {
        m.trash_exact = Some(Vec::new());
    }
    runs_before(&ws, at.0)?;
    let arm = vec![("EVAC_TEST_STEP_CRASH", at.spec())];
    let r = run(&ws, &first_or_resume(&ws), &arm);
    if r.signal != Some(9) {
        t.lock().unwrap().not_reached += 1;
        return check_end(&ws, &m, r);
    }
    match then {
        None => {
            // Learn what the recovery passes (armed, so the schedule is the replayed one).
            clear_trace(&ws);
            let r2 = run(
                &ws,
                &resume_args(&ws),
                &[("EVAC_TEST_STEP_CRASH", "none@0".into())],
            );
            let trace = read_trace(&ws);
            if let Some(last) = trace
                .iter()
                .rposition(|(n, _, _)| n.starts_with("recover."))
            {
                let mut tl = t.lock().unwrap();
                for (n, k, _) in &trace[..=last] {
                    tl.second.push(Case::Crash {
                        sc,
                        at: at.clone(),
                        then: Some((n.clone(), *k)),
                    });
                }
            }
            t.lock().unwrap().reached += 1;
            match r2.code {
                Some(0) | Some(3) => {}
                _ => {
                    return Err(format!(
                        "resume after the crash: {:?}\n{}",
                        r2.code, r2.stderr
                    ))
                }
            }
        }
        Some(p2) => {
            let arm2 = vec![("EVAC_TEST_STEP_CRASH", format!("{}@{}", p2.0, p2.1))];
            let r2 = run(&ws, &resume_args(&ws), &arm2);
            let mut tl = t.lock().unwrap();
            if r2.signal == Some(9) {
                tl.reached += 1;
            } else {
                tl.not_reached += 1;
            }
        }
    }
    resume_to_end(&ws, &mut |_| {})?;
    let p = final_problems(&ws, &m);
    if p.is_empty() {
        let _ = std::fs::remove_dir_all(&ws.root);
        Ok(())
    } else {
        Err(p.join("\n"))
    }
}

/// The first run of a case: SOURCE and DEST given (the scenario's first run, or its resume).
fn first_or_resume(ws: &Ws) -> Vec<OsString> {
    if ws.journal.exists() {
        resume_args(ws)
    } else {
        first_args(ws)
    }
}

fn check_end(ws: &Ws, m: &Model, r: Ran) -> Result<(), String> {
    if r.code != Some(0) && r.code != Some(3) {
        return Err(format!(
            "run ended {:?}/{:?}\n{}",
            r.code, r.signal, r.stderr
        ));
    }
    resume_to_end(ws, &mut |_| {})?;
    let p = final_problems(ws, m);
    if p.is_empty() {
        let _ = std::fs::remove_dir_all(&ws.root);
        Ok(())
    } else {
        Err(p.join("\n"))
    }
}

/// What the user does at the pause, on `target`, through its path; the model follows, and the
/// read-back (at once) is checked. Returns problems.
fn user_op(ws: &Ws, m: &mut Model, op: &str, target: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let p = ws.s(target);
    let mut fail =
        |what: &str, e: std::io::Error| errs.push(format!("user {op} of {target}: {what}: {e}"));
    match op {
        // The soak's sequence (seed 1796324558532479618): the path renamed away, another file
        // renamed onto the name it left, then written through it, all while evac is held.
        "move-and-reuse" => {
            for step in ["rename-away", "rename-onto", "append"] {
                errs.extend(user_op(ws, m, step, target));
            }
            return errs;
        }
        "append" => {
            let add = APPENDED;
            match std::fs::OpenOptions::new().append(true).open(&p) {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(add) {
                        fail("write", e);
                    }
                }
                Err(e) => fail("open for append", e),
            }
            // Every name of a hard-linked file shows the append.
            let g = m.files[target].group;
            for (r, w) in m.files.iter_mut() {
                if r == target || (g.is_some() && w.group == g) {
                    w.data.extend_from_slice(add);
                    w.mtime_ns = None;
                }
            }
            let now = m.files[target].data.clone();
            m.versions.insert(now);
        }
        "rename-away" => {
            let to = format!("{target}.moved");
            if let Err(e) = std::fs::rename(&p, ws.s(&to)) {
                fail("rename", e);
            }
            renamed(m, target, &to);
        }
        "rename-onto" => {
            let other = m
                .files
                .keys()
                .find(|k| *k != target && !k.ends_with(".moved") && m.files[*k].group.is_none())
                .cloned();
            let other = match other {
                Some(o) => o,
                None => {
                    let o = format!("{target}.other");
                    let data = body("onto", 777);
                    std::fs::write(ws.s(&o), &data).unwrap();
                    m.add(
                        &o,
                        Want {
                            data,
                            mode: None,
                            mtime_ns: None,
                            group: None,
                            sparse: false,
                        },
                    );
                    o
                }
            };
            if let Err(e) = std::fs::rename(ws.s(&other), &p) {
                fail("rename onto", e);
            }
            let w = m.files.remove(&other).unwrap();
            m.files.insert(target.into(), w);
        }
        "delete" => {
            if let Err(e) = std::fs::remove_file(&p) {
                fail("unlink", e);
            }
            m.files.remove(target);
        }
        "replace" => {
            let tmp = ws.s(&format!("{target}.new"));
            let data = body(&format!("{target}-replaced"), 1111);
            std::fs::write(&tmp, &data).unwrap();
            if let Err(e) = std::fs::rename(&tmp, &p) {
                fail("rename over", e);
            }
            let g = m.files.get(target).and_then(|w| w.group);
            let _ = g;
            m.add(
                target,
                Want {
                    data,
                    mode: None,
                    mtime_ns: None,
                    group: None,
                    sparse: false,
                },
            );
        }
        "chmod" => {
            if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)) {
                fail("chmod", e);
            }
            // Every name of a hard-linked file has the new mode.
            let g = m.files[target].group;
            for (r, w) in m.files.iter_mut() {
                if r == target || (g.is_some() && w.group == g) {
                    w.mode = Some(0o604);
                }
            }
        }
        _ => unreachable!(),
    }
    let mut out = errs;
    // The read-back, at once.
    paths_show_their_content(
        ws,
        m,
        &format!("read-back right after the user's {op}"),
        &mut out,
    );
    if op == "chmod" {
        match std::fs::metadata(&p) {
            Ok(md) if md.mode() & 0o7777 == 0o604 => {}
            Ok(md) => out.push(format!(
                "after chmod, {target} has mode {:o}",
                md.mode() & 0o7777
            )),
            Err(e) => out.push(format!("after chmod, stat {target}: {e}")),
        }
    }
    out
}

fn interleave_case(
    base: &Path,
    id: usize,
    sc: usize,
    at: &At,
    op: &'static str,
    t: &Mutex<Tally>,
) -> Result<(), String> {
    // `OP+kill`: the user acts while evac is held, and evac is killed there instead of going on.
    let (user, kill) = match op.strip_suffix("+kill") {
        Some(u) => (u, true),
        None => (op, false),
    };
    let ws = Ws::new(base, &format!("i{id}"));
    let mut m = (SCENARIOS[sc].build)(&ws);
    m.trash_exact = None;
    runs_before(&ws, at.0)?;
    clear_trace(&ws);
    let arm = vec![("EVAC_TEST_STEP_PAUSE", at.spec())];
    let mut child = spawn(&ws, &first_or_resume(&ws), &arm);
    let paused = ws.steps.join("paused");
    let t0 = Instant::now();
    let line = loop {
        if let Ok(l) = std::fs::read_to_string(&paused) {
            break l;
        }
        if let Ok(Some(_)) = child.try_wait() {
            t.lock().unwrap().not_reached += 1;
            let r = finish(child, Duration::from_secs(1));
            return check_end(&ws, &m, r);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err("evac never reached the pause nor ended".into());
        }
        std::thread::sleep(Duration::from_micros(300));
    };
    t.lock().unwrap().reached += 1;
    let mut problems = Vec::new();
    paths_show_their_content(
        &ws,
        &m,
        &format!("held at {}@{}", at.0, at.1),
        &mut problems,
    );
    // The file the point concerns, else the last one before it in the run (a commit or a sync).
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    let path = String::from_utf8(unhex(fields.get(2).copied().unwrap_or(""))).unwrap();
    let target = if m.files.contains_key(&path) {
        path
    } else {
        let trace = read_trace(&ws);
        trace
            .iter()
            .rev()
            .filter_map(|(_, _, p)| String::from_utf8(p.clone()).ok())
            .find(|p| m.files.contains_key(p))
            .or_else(|| m.files.keys().next().cloned())
            .unwrap()
    };
    // The user acts in a thread of its own: its open() may wait for evac's lease.
    let (tx, rx) = std::sync::mpsc::channel();
    let wsr = &ws;
    let before = m.clone();
    std::thread::scope(|s| {
        let mut mm = before.clone();
        let target = target.clone();
        s.spawn(move || {
            let p = user_op(wsr, &mut mm, user, &target);
            let _ = tx.send((mm, p));
        });
        let early = rx.recv_timeout(Duration::from_millis(300)).ok();
        if kill {
            // As if by kill -9 while held: the kernel lets evac's lease go with the process.
            let _ = child.kill();
        } else {
            std::fs::write(ws.steps.join("go"), b"").unwrap();
        }
        let (mm, p) = match early {
            Some(r) => r,
            None => rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the user's operation never returned after evac went on"),
        };
        m = mm;
        if kill {
            // Read-backs while evac is dead are checked below, with the window the README
            // documents.
            problems.extend(
                p.into_iter()
                    .filter(|e| !e.starts_with("read-back right after")),
            );
        } else {
            problems.extend(p);
        }
    });
    // Killed while a writer waited on its lease, the append lands in the original moved aside:
    // until the next run, reads through the path may show the copy without it (README, "The
    // moments that cannot be closed"). Exactly that content is accepted, and only until then.
    let mut window = 0;
    if kill {
        let mut stale = |_: &str, d: &[u8]| {
            let ok = m.files.values().any(|w| {
                w.data.ends_with(APPENDED) && w.data[..w.data.len() - APPENDED.len()] == *d
            });
            window += ok as usize;
            ok
        };
        paths_show_their_content_or(
            &ws,
            &m.clone(),
            "after the kill, before the next run",
            &mut problems,
            &mut stale,
        );
    }
    // While evac goes on, every path keeps showing its own content. One exception is the
    // instant the README names: a name the user replaced just before evac's exchange shows its
    // previous content between that exchange and its undo. A read of exactly that content at the
    // target is held aside, and passes only if evac's trace shows the undo for that path.
    let prior = match user {
        "replace" | "rename-onto" | "move-and-reuse" => {
            before.files.get(&target).map(|w| w.data.clone())
        }
        _ => None,
    };
    let mut others = m.clone();
    let want_target = others.files.remove(&target).map(|w| w.data);
    let mut in_instant = Vec::new();
    let r = loop {
        if kill {
            // Dead, or about to be: the reads above were the ones before the next run.
            break finish(child, Duration::from_secs(10));
        }
        match child.try_wait() {
            Ok(Some(_)) => break finish(child, Duration::from_secs(1)),
            _ => {
                let when = "while evac went on after the user's operation";
                paths_show_their_content(&ws, &others, when, &mut problems);
                if let Some(want) = &want_target {
                    match rd(&ws.s(&target)) {
                        Ok(d) if d == *want => {}
                        Ok(d) if prior.as_ref() == Some(&d) => {
                            in_instant.push(format!("{when}: {target} showed its previous content"))
                        }
                        Ok(d) => problems.push(format!(
                            "{when}: {target} shows {} bytes where it must show {}",
                            d.len(),
                            want.len()
                        )),
                        Err(e) => problems.push(format!("{when}: {target} cannot be read: {e}")),
                    }
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    break finish(child, Duration::from_secs(0));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    if !kill && r.code != Some(0) && r.code != Some(3) {
        problems.push(format!(
            "the held run ended {:?}/{:?}\n{}",
            r.code, r.signal, r.stderr
        ));
    }
    // A user's operation is a change to try again, never a failure: on these small trees
    // nothing else can fail, and a file left failed is one an operator must chase.
    let failed = try_status(&ws.journal)
        .and_then(|st| st.get("files")?.get("failed")?.as_u64())
        .unwrap_or(0);
    if failed > 0 {
        problems.push(format!(
            "the held run left {failed} file(s) failed after the user's {op}\n{}",
            r.stderr
        ));
    }
    if !in_instant.is_empty() {
        let undone = read_trace(&ws).iter().any(|(name, _, p)| {
            (name == "swap.undo" || name == "resync.link-undo") && p == target.as_bytes()
        });
        if undone {
            t.lock().unwrap().instants += in_instant.len();
        } else {
            problems.extend(
                in_instant
                    .into_iter()
                    .map(|s| s + " and evac undid no exchange of it"),
            );
        }
    }
    if !kill {
        paths_show_their_content(&ws, &m, "after the held run", &mut problems);
    }
    t.lock().unwrap().killed_window += window;
    let mm = m.clone();
    let mut later = Vec::new();
    if let Err(e) = resume_to_end(&ws, &mut |i| {
        paths_show_their_content(&ws, &mm, &format!("after resume {i}"), &mut later)
    }) {
        problems.push(e);
    }
    problems.extend(later);
    // A saved original (`NAME.evac-saved`) is the user's data kept, not a problem; counted.
    let mut src = Vec::new();
    walk(&ws.src, "", &mut src);
    for (r, _) in &src {
        if r.contains(".evac-saved") {
            t.lock().unwrap().saved_files += 1;
            let data = rd(&ws.s(r)).unwrap_or_default();
            m.add(
                r,
                Want {
                    data,
                    mode: None,
                    mtime_ns: None,
                    group: None,
                    sparse: false,
                },
            );
        }
    }
    problems.extend(final_problems(&ws, &m));
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&ws.root);
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

// ===========================================================================
// The suites
// ===========================================================================

fn base_dir() -> PathBuf {
    // tmpfs when there is one: every syncfs is free, and hundreds of runs take seconds.
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let b = parent.join(format!("evac-enum-{}", std::process::id()));
    std::fs::create_dir_all(&b).unwrap();
    b
}

fn only() -> Option<String> {
    std::env::var("EVAC_ENUM_ONLY").ok()
}

type Trace = Vec<(String, u64, Vec<u8>)>;

/// Armed runs (no crash) until one exits 0: the points each passes, in order, with the k of
/// each passage (k counts within one process).
fn traced_runs(ws: &Ws) -> Result<Vec<Trace>, String> {
    let mut runs = Vec::new();
    for _ in 0..4 {
        clear_trace(ws);
        let r = run(
            ws,
            &first_or_resume(ws),
            &[("EVAC_TEST_STEP_CRASH", "none@0".into())],
        );
        runs.push(read_trace(ws));
        match r.code {
            Some(0) => return Ok(runs),
            Some(3) => {}
            _ => {
                return Err(format!(
                    "a traced run ended {:?}/{:?}: {}",
                    r.code, r.signal, r.stderr
                ))
            }
        }
    }
    Err("no exit 0 after 4 traced runs".into())
}

/// The points a scenario's runs pass (learnt twice: a replay means something only if the
/// schedule is the same each time).
fn learn(base: &Path, sc: usize) -> Vec<Trace> {
    let name = SCENARIOS[sc].name;
    let ws = Ws::new(base, &format!("learn-{name}"));
    let mut m = (SCENARIOS[sc].build)(&ws);
    let runs = traced_runs(&ws).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ws2 = Ws::new(base, &format!("learn2-{name}"));
    (SCENARIOS[sc].build)(&ws2);
    let again = traced_runs(&ws2).unwrap_or_else(|e| panic!("{name}: {e}"));
    let names = |t: &[Trace]| {
        t.iter()
            .map(|r| {
                r.iter()
                    .map(|(n, k, _)| (n.clone(), *k))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&runs),
        names(&again),
        "{name}: two armed runs passed different step points: the schedule is not deterministic"
    );
    if m.trash_exact.is_none() {
        m.trash_exact = Some(Vec::new());
    }
    let p = final_problems(&ws, &m);
    assert!(
        p.is_empty(),
        "{name}: uninterrupted runs fail the oracle:\n{}",
        p.join("\n")
    );
    let _ = std::fs::remove_dir_all(&ws.root);
    let _ = std::fs::remove_dir_all(&ws2.root);
    runs
}

fn parse_case(s: &str) -> Case {
    let f: Vec<&str> = s.split_whitespace().collect();
    let sc = SCENARIOS
        .iter()
        .position(|x| x.name == f[0])
        .expect("scenario name");
    let pk = |x: &str| {
        let (n, k) = x.rsplit_once('@').expect("POINT@K");
        (n.to_string(), k.parse().expect("K"))
    };
    let at = |x: &str| {
        let (r, pk_) = x.split_once(':').expect("R:POINT@K");
        let (n, k) = pk(pk_);
        At(r.parse().expect("R"), n, k)
    };
    match f[1] {
        "crash" => Case::Crash {
            sc,
            at: at(f[2]),
            then: f.get(3).map(|x| pk(x)),
        },
        "interleave" => Case::Interleave {
            sc,
            at: at(f[2]),
            op: OPS.iter().copied().find(|o| *o == f[3]).expect("operation"),
        },
        _ => panic!("crash or interleave"),
    }
}

static CASE_ID: AtomicUsize = AtomicUsize::new(0);

/// Run `cases` on two threads; failures are collected with their replay line.
fn run_cases(base: &Path, cases: Vec<Case>, t: &Mutex<Tally>) {
    let next = AtomicUsize::new(0);
    let keep = std::env::var_os("EVAC_ENUM_KEEP").is_some();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(c) = cases.get(i) else { break };
                let id = CASE_ID.fetch_add(1, Ordering::SeqCst);
                let r = match c {
                    Case::Crash { sc, at, then } => crash_case(base, id, *sc, at, then, t),
                    Case::Interleave { sc, at, op } => interleave_case(base, id, *sc, at, op, t),
                };
                if let Err(e) = r {
                    let tag = match c {
                        Case::Crash { .. } => format!("c{id}"),
                        Case::Interleave { .. } => format!("i{id}"),
                    };
                    if !keep {
                        let _ = std::fs::remove_dir_all(base.join(&tag));
                    }
                    t.lock().unwrap().problems.push(format!(
                        "{}\n  replay: EVAC_ENUM_ONLY='{}' cargo test --release --test it enumerate:: -- --nocapture{}\n  {}",
                        c.label(),
                        c.label(),
                        if keep { format!(" (kept: {})", base.join(tag).display()) } else { String::new() },
                        e.replace('\n', "\n  ")
                    ));
                }
            });
        }
    });
}

fn report(what: &str, t: &Tally, cases: usize, started: Instant) {
    let line = format!(
        "{what}: {cases} cases, {} reached their point, {} did not; {} saved originals; {} reads in the instant of an exchange undone; {} reads without an append between a kill and the next run; violations {} (in {:.0?})",
        t.reached,
        t.not_reached,
        t.saved_files,
        t.instants,
        t.killed_window,
        t.problems.len(),
        started.elapsed()
    );
    eprintln!("{line}");
    figures("enumerate", &line);
    if !t.problems.is_empty() {
        let n = t.problems.len();
        for p in &t.problems {
            eprintln!("VIOLATION {}", p.lines().next().unwrap_or(""));
        }
        let shown: Vec<&String> = t.problems.iter().take(40).collect();
        panic!(
            "{n} violations:\n\n{}",
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}

/// Learn every scenario's points: (scenario, run, point, k).
fn points(base: &Path) -> Vec<(usize, usize, String, u64)> {
    let mut v = Vec::new();
    let want = std::env::var("EVAC_ENUM_SCENARIO").ok();
    for (sc, scenario) in SCENARIOS.iter().enumerate() {
        if want.as_deref().is_some_and(|w| w != scenario.name) {
            continue;
        }
        for (r, trace) in learn(base, sc).into_iter().enumerate() {
            for (n, k, _) in trace {
                v.push((sc, r, n, k));
            }
        }
    }
    v
}

#[test]
fn crash_at_every_step_point() {
    let _gate = suite_gate!();
    skip_unless_root!("crash_at_every_step_point", "recovery follows links by file handle (open_by_handle_at needs CAP_DAC_READ_SEARCH) and takes leases on any file");
    let started = Instant::now();
    let base = base_dir().join("crash");
    let t = Mutex::new(Tally::default());
    let cases: Vec<Case> = match only() {
        Some(o) => {
            let c = parse_case(&o);
            if !matches!(c, Case::Crash { .. }) {
                return;
            }
            vec![c]
        }
        None => points(&base)
            .into_iter()
            .map(|(sc, r, n, k)| Case::Crash {
                sc,
                at: At(r, n, k),
                then: None,
            })
            .collect(),
    };
    let n = cases.len();
    run_cases(&base, cases, &t);
    let second = std::mem::take(&mut t.lock().unwrap().second);
    let n2 = second.len();
    if only().is_none() {
        run_cases(&base, second, &t);
    }
    if std::env::var_os("EVAC_ENUM_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    let tl = t.into_inner().unwrap();
    report(
        &format!("crash enumeration over {} trees: {n} crash points, then {n2} second crashes during recovery", SCENARIOS.len()),
        &tl,
        n + n2,
        started,
    );
}

#[test]
fn user_acts_at_every_step_point() {
    let _gate = suite_gate!();
    skip_unless_root!("user_acts_at_every_step_point", "a put-back follows a moved link by file handle (open_by_handle_at needs CAP_DAC_READ_SEARCH)");
    let started = Instant::now();
    let base = base_dir().join("interleave");
    let t = Mutex::new(Tally::default());
    let cases: Vec<Case> = match only() {
        Some(o) => {
            let c = parse_case(&o);
            if !matches!(c, Case::Interleave { .. }) {
                return;
            }
            vec![c]
        }
        None => {
            let mut v = Vec::new();
            for (sc, r, n, k) in points(&base) {
                for op in OPS {
                    v.push(Case::Interleave {
                        sc,
                        at: At(r, n.clone(), k),
                        op,
                    });
                }
            }
            v
        }
    };
    let n = cases.len();
    run_cases(&base, cases, &t);
    if std::env::var_os("EVAC_ENUM_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    let tl = t.into_inner().unwrap();
    report(
        &format!(
            "interleaving enumeration over {} trees x {} user operations",
            SCENARIOS.len(),
            OPS.len()
        ),
        &tl,
        n,
        started,
    );
}

// ===========================================================================
// Races found before, replayed at their exact steps
// ===========================================================================

/// Wait until evac is held at `point`; the path it concerns.
fn wait_paused(ws: &Ws, child: &mut Child, point: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(l) = std::fs::read_to_string(ws.steps.join("paused")) {
            let f: Vec<&str> = l.trim_end().split('\t').collect();
            if f[0] == point {
                return String::from_utf8(unhex(f.get(2).copied().unwrap_or(""))).unwrap();
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("evac ended ({st:?}) before reaching {point}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "evac never reached {point}"
        );
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// Let a held evac go on, and wait until it has.
fn let_go(ws: &Ws) {
    std::fs::write(ws.steps.join("go"), b"").unwrap();
    let t0 = Instant::now();
    while ws.steps.join("go").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "evac did not go on");
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// Races 2 and 4 of the correctness issue, at their exact steps. A user's append opens the
/// file just before evac exchanges it for its link: the open() breaks evac's lease. Evac must
/// not let the lease go until the original is back where the user's path leads, so that:
/// - the append cannot land in an original moved aside, while reads through the path show the
///   copy without it (race 2: a read-back short by the append);
/// - if the user renames the path (by then the link) meanwhile, the original takes the link's
///   place at the new name, with the append; putting it back under the name the user left
///   (race 4) loses the append from the user's view.
#[test]
fn a_writer_that_races_the_exchange_finds_its_append_where_its_path_leads() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "a_writer_that_races_the_exchange_finds_its_append_where_its_path_leads",
        "the original follows a renamed link by its file handle (open_by_handle_at needs CAP_DAC_READ_SEARCH)"
    );
    let base = base_dir().join("races");
    for rename in [false, true] {
        let ws = Ws::new(&base, &format!("race-append-rename-{rename}"));
        let mut m = Model::default();
        let first = body("raced", 2000);
        put(&ws, &mut m, "d/f", &first, 0o644, T0);
        let add = b"+ the user's append\n";
        let mut child = spawn(
            &ws,
            &first_args(&ws),
            &[(
                "EVAC_TEST_STEP_PAUSE",
                "swap.exchange@1,swap.undo@1".to_string(),
            )],
        );
        assert_eq!(wait_paused(&ws, &mut child, "swap.exchange"), "d/f");
        // The user's append: open() now, before the exchange.
        let (tx, rx) = std::sync::mpsc::channel();
        let p = ws.s("d/f");
        let moved = ws.s("d/g");
        let writer = std::thread::spawn(move || {
            let r = std::fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .and_then(|mut f| f.write_all(add));
            let _ = tx.send(r.map_err(|e| e.to_string()));
            // The read-back, at once, through the name the file has now.
            let at = if rename { &moved } else { &p };
            std::fs::read(at).map_err(|e| e.to_string())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            rx.try_recv().is_err(),
            "rename={rename}: the writer's open() returned while evac held the swap (the lease was let go before the original was settled)"
        );
        let_go(&ws);
        // Exchanged, the check failed (the lease is breaking): held before putting it back.
        assert_eq!(wait_paused(&ws, &mut child, "swap.undo"), "d/f");
        assert!(
            rx.try_recv().is_err(),
            "rename={rename}: the writer's open() returned before the original was put back"
        );
        assert_eq!(
            std::fs::read(ws.s("d/f")).unwrap(),
            first,
            "rename={rename}: the path must show the copy, whole, while the append waits"
        );
        if rename {
            mv(&ws, "d/f", "d/g");
            renamed(&mut m, "d/f", "d/g");
        }
        let_go(&ws);
        let wrote = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer's open() never returned");
        assert!(
            wrote.is_ok(),
            "rename={rename}: the append failed: {wrote:?}"
        );
        let back = writer.join().unwrap().expect("read back");
        let mut want = first.clone();
        want.extend_from_slice(add);
        assert_eq!(
            back.len(),
            want.len(),
            "rename={rename}: the read-back right after the append is short by {} bytes",
            want.len() as i64 - back.len() as i64
        );
        assert_eq!(back, want, "rename={rename}: the read-back differs");
        let r = finish(child, Duration::from_secs(30));
        assert!(
            r.code == Some(0) || r.code == Some(3),
            "the held run: {:?}\n{}",
            r.code,
            r.stderr
        );
        let name = if rename { "d/g" } else { "d/f" };
        let w = m.files.get_mut(name).unwrap();
        w.data = want;
        w.mtime_ns = None;
        m.versions.insert(w.data.clone());
        m.trash_exact = Some(Vec::new());
        resume_to_end(&ws, &mut |_| {}).unwrap();
        let p = final_problems(&ws, &m);
        assert!(p.is_empty(), "rename={rename}:\n{}", p.join("\n"));
        let _ = std::fs::remove_dir_all(&ws.root);
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Hold evac at a file's exchange while a writer's append opens it (the open waits on evac's
/// lease), let the exchange happen, then, held before the put-back, let `meanwhile` act and kill
/// evac: the kernel lets the lease go with it and the append lands in the original moved aside.
fn kill_while_an_append_waits(ws: &Ws, add: &'static [u8], meanwhile: impl FnOnce(&Ws)) {
    let mut child = spawn(
        ws,
        &first_args(ws),
        &[(
            "EVAC_TEST_STEP_PAUSE",
            "swap.exchange@1,swap.undo@1".to_string(),
        )],
    );
    wait_paused(ws, &mut child, "swap.exchange");
    let p = ws.s("d/f");
    let writer = std::thread::spawn(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(add))
    });
    // The writer's open() waits on the lease until evac is gone.
    std::thread::sleep(Duration::from_millis(100));
    let_go(ws);
    wait_paused(ws, &mut child, "swap.undo");
    meanwhile(ws);
    let _ = child.kill();
    let _ = child.wait();
    writer
        .join()
        .unwrap()
        .expect("the append, once the lease went with evac");
}

/// Race 1 of the correctness issue, at its exact steps (the soak met it once: an append through
/// a fresh link failed with ENOENT). evac is killed while a writer waits on its lease, so the
/// append lands in the original moved aside; then the user writes through the link too, to the
/// copy. Written on both sides: recovery puts the original back and keeps the copy in the
/// trash. It must not move the copy before the original is back, or the path is for that
/// moment a link to nothing. Held at each of recovery's two steps, the path must read.
#[test]
fn recovery_keeps_a_copy_written_on_both_sides_readable_until_the_original_is_back() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "recovery_keeps_a_copy_written_on_both_sides_readable_until_the_original_is_back",
        "recovery finds the swap's link by its file handle (open_by_handle_at needs CAP_DAC_READ_SEARCH)"
    );
    let base = base_dir().join("both-sides");
    let ws = Ws::new(&base, "both-sides");
    let mut m = Model::default();
    let first = body("both", 1700);
    put(&ws, &mut m, "d/f", &first, 0o644, T0);
    let to_original = b"+ appended to the original while evac was down\n";
    let through_link = b"+ appended through the link\n";
    kill_while_an_append_waits(&ws, to_original, |_| {});
    // The killed run left its pause behind.
    let _ = std::fs::remove_file(ws.steps.join("paused"));
    assert!(
        std::fs::symlink_metadata(ws.s("d/f"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the path must be evac's link while evac is down"
    );
    // Through the link the copy is written too (its mtime moves on from the one copied).
    std::fs::OpenOptions::new()
        .append(true)
        .open(ws.s("d/f"))
        .and_then(|mut f| f.write_all(through_link))
        .unwrap();
    let mut child = spawn(
        &ws,
        &resume_args(&ws),
        &[(
            "EVAC_TEST_STEP_PAUSE",
            "recover.restore@1,place.trash@1".to_string(),
        )],
    );
    let mut held_at = Vec::new();
    for _ in 0..2 {
        let t0 = Instant::now();
        let point = loop {
            if let Ok(l) = std::fs::read_to_string(ws.steps.join("paused")) {
                break l.split('\t').next().unwrap_or("").to_string();
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("evac ended ({st:?}) before recovery's steps; held at {held_at:?}");
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "evac never paused");
            std::thread::sleep(Duration::from_micros(300));
        };
        let read = std::fs::read(ws.s("d/f"));
        assert!(
            read.is_ok(),
            "held at {point} (after {held_at:?}): d/f cannot be read: {:?}",
            read.err()
        );
        held_at.push(point);
        let_go(&ws);
    }
    let r = finish(child, Duration::from_secs(30));
    assert!(
        r.code == Some(0) || r.code == Some(3),
        "the recovering run: {:?}\n{}",
        r.code,
        r.stderr
    );
    assert_eq!(
        held_at,
        ["recover.restore", "place.trash"],
        "the original goes back before the copy goes to the trash"
    );
    // The original, with its append, is the file; the copy written through the link is kept.
    let mut want = first.clone();
    want.extend_from_slice(to_original);
    m.add(
        "d/f",
        Want {
            data: want,
            mode: Some(0o644),
            mtime_ns: None,
            group: None,
            sparse: false,
        },
    );
    let mut kept = first.clone();
    kept.extend_from_slice(through_link);
    m.versions.insert(kept.clone());
    m.trash_exact = None;
    resume_to_end(&ws, &mut |_| {}).unwrap();
    let p = final_problems(&ws, &m);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let mut in_trash = Vec::new();
    walk(&ws.dst.join(".evac-trash"), "", &mut in_trash);
    assert!(
        in_trash
            .iter()
            .any(|(r, _)| rd(&ws.dst.join(".evac-trash").join(r)).ok() == Some(kept.clone())),
        "the copy written through the link must be kept in the trash: {:?}",
        in_trash.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// The instant the README cannot close, held open on purpose: a user replaces a name in the
/// moment before evac's exchange of it (the swap of a file for its link, or resync's rewrite of
/// a renamed link). evac swaps the user's new file out, and until its check puts it back, the
/// path shows the previous content; then the path shows the user's file again, and no copy or
/// link of evac's is lost. Held at the exchange and at its undo, so
/// the read between them is certain, not a matter of timing (the enumeration meets it by chance).
#[test]
fn a_name_replaced_in_the_instant_of_an_exchange_is_put_back() {
    let _gate = suite_gate!();
    let base = base_dir().join("instant");
    for (exchange, undo) in [
        ("swap.exchange", "swap.undo"),
        ("resync.link-exchange", "resync.link-undo"),
    ] {
        let ws = Ws::new(&base, exchange);
        let mut m = Model::default();
        let first = body("first", 1500);
        put(&ws, &mut m, "d/f", &first, 0o644, T0);
        let name = if exchange == "swap.exchange" {
            "d/f"
        } else {
            // A relocated file whose link the user renamed: the next run rewrites it.
            prelim(&ws);
            mv(&ws, "d/f", "d/g");
            renamed(&mut m, "d/f", "d/g");
            "d/g"
        };
        let mut child = spawn(
            &ws,
            &first_or_resume(&ws),
            &[("EVAC_TEST_STEP_PAUSE", format!("{exchange}@1,{undo}@1"))],
        );
        assert_eq!(wait_paused(&ws, &mut child, exchange), name, "{exchange}");
        let theirs = body("theirs", 1111);
        std::fs::write(ws.s("d/new"), &theirs).unwrap();
        std::fs::rename(ws.s("d/new"), ws.s(name)).unwrap();
        let_go(&ws);
        assert_eq!(wait_paused(&ws, &mut child, undo), name, "{exchange}");
        assert_eq!(
            std::fs::read(ws.s(name)).unwrap(),
            first,
            "{exchange}: between the exchange and its undo the path shows its previous content"
        );
        let_go(&ws);
        let r = finish(child, Duration::from_secs(30));
        assert!(
            r.code == Some(0) || r.code == Some(3),
            "{exchange}: the held run ended {:?}\n{}",
            r.code,
            r.stderr
        );
        // (The run may have relocated the user's file since: the path shows it either way.)
        assert_eq!(
            std::fs::read(ws.s(name)).unwrap(),
            theirs,
            "{exchange}: {name} must show the user's file once the exchange is undone"
        );
        m.add(
            name,
            Want {
                data: theirs,
                mode: None,
                mtime_ns: None,
                group: None,
                sparse: false,
            },
        );
        m.trash_exact = None;
        resume_to_end(&ws, &mut |_| {}).unwrap();
        let p = final_problems(&ws, &m);
        assert!(p.is_empty(), "{exchange}:\n{}", p.join("\n"));
        let _ = std::fs::remove_dir_all(&ws.root);
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// The same race with evac killed while the writer waits: the kernel lets the lease go with the
/// process, and the append lands in the original moved aside (until the next run, reads through
/// the path show the copy without it: the README says so). The next run's recovery finds the
/// link the user renamed by the inode and file handle recorded with the placement, before the
/// exchange, and puts the original, with the append, in its place. A link moved out of SOURCE
/// cannot take it: the original is saved beside its old name, and the copy stays at DEST for the
/// link, which must still read it.
#[test]
fn after_a_kill_recovery_takes_a_written_original_where_the_user_moved_its_link() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "after_a_kill_recovery_takes_a_written_original_where_the_user_moved_its_link",
        "recovery follows a renamed link by its file handle (open_by_handle_at needs CAP_DAC_READ_SEARCH)"
    );
    let base = base_dir().join("races-kill");
    for outside in [false, true] {
        let ws = Ws::new(&base, &format!("race-kill-{outside}"));
        let mut m = Model::default();
        let first = body("killed", 1800);
        put(&ws, &mut m, "d/f", &first, 0o644, T0);
        let add = b"+ appended while evac was down\n";
        let out = ws.root.join("outside-link");
        kill_while_an_append_waits(&ws, add, |ws| {
            // Held before the put-back: the user moves the link.
            if outside {
                std::fs::rename(ws.s("d/f"), &out).unwrap();
            } else {
                mv(ws, "d/f", "d/g");
            }
        });
        if outside {
            m.files.remove("d/f");
        } else {
            renamed(&mut m, "d/f", "d/g");
        }
        let mut want = first.clone();
        want.extend_from_slice(add);
        let name = if outside { "d/f.evac-saved" } else { "d/g" };
        m.add(
            name,
            Want {
                data: want,
                mode: Some(0o644),
                mtime_ns: None,
                group: None,
                sparse: false,
            },
        );
        m.trash_exact = None;
        let mut outside_read = Vec::new();
        resume_to_end(&ws, &mut |i| {
            if outside && i == 0 {
                outside_read.push(std::fs::read(&out).map_err(|e| e.to_string()));
            }
        })
        .unwrap();
        if outside {
            assert!(
                outside_read[0].as_deref().ok() == Some(&first[..]),
                "the link moved out of SOURCE must still read its copy after recovery: {:?}",
                outside_read[0].as_ref().map(|v| v.len())
            );
        }
        let p = final_problems(&ws, &m);
        assert!(p.is_empty(), "outside={outside}:\n{}", p.join("\n"));
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// The user renames the file away between the swap's last check and its exchange: the
/// exchange finds no name (ENOENT). That is a change like any other, to be tried again at the
/// new name, never a file left failed (the live suite met it as "swap the file for its link:
/// ENOENT", seed 1796327214435772072).
#[test]
fn a_name_renamed_away_just_before_the_exchange_is_deferred_not_failed() {
    let _gate = suite_gate!();
    let base = base_dir().join("vanished");
    let ws = Ws::new(&base, "v");
    let mut m = Model::default();
    let data = body("mine", 2000);
    put(&ws, &mut m, "d/f", &data, 0o644, T0);
    let mut child = spawn(
        &ws,
        &first_args(&ws),
        &[("EVAC_TEST_STEP_PAUSE", "swap.exchange@1".to_string())],
    );
    assert_eq!(wait_paused(&ws, &mut child, "swap.exchange"), "d/f");
    mv(&ws, "d/f", "d/g");
    renamed(&mut m, "d/f", "d/g");
    let_go(&ws);
    let r = finish(child, Duration::from_secs(30));
    assert!(
        r.code == Some(0) || r.code == Some(3),
        "the held run ended {:?}\n{}",
        r.code,
        r.stderr
    );
    assert_eq!(
        std::fs::read(ws.s("d/g")).unwrap(),
        data,
        "d/g after the run"
    );
    let st = try_status(&ws.journal).expect("status");
    let files = &st["files"];
    assert_eq!(
        files["failed"].as_u64(),
        Some(0),
        "a name that vanished before the exchange must not be left failed: {files}\n{}",
        r.stderr
    );
    m.trash_exact = None;
    resume_to_end(&ws, &mut |_| {}).unwrap();
    let p = final_problems(&ws, &m);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let _ = std::fs::remove_dir_all(&base);
}
