//! Power loss: cut the power under a run at random moments, check on what the disk held that
//! every original path still names its original or a link to a complete copy (invariant I1),
//! then resume from that state and check the full relocation oracle.
//!
//! Method. SOURCE, DEST and the journal live on one ext4 filesystem (the inner one) whose image
//! file sits on another loop-mounted ext4 filesystem (HOST). `fsfreeze -f HOST` syncs HOST and
//! then blocks every further write to it, so the inner loop device can complete no more writes:
//! from that instant the inner image holds exactly the block writes the device completed before
//! the cut, and none of the inner filesystem's dirty page cache. That image is copied (reading a
//! frozen filesystem is allowed) onto a second HOST, evac is killed, HOST is thawed, and the copy
//! is mounted where the inner filesystem was (link targets are absolute paths, so the mount
//! point must be the same); ext4 replays its journal on mount, as after a real power cut. The
//! two HOSTs take turns, so each snapshot is written straight to where it is mounted next. The
//! test first checks that the method works on this kernel (a write made after the freeze is
//! absent from the copy, a synced one present, the copy mounts) and skips, saying why, if not.
//!
//! Limits. This models a disk without a volatile write cache: every write the device completed
//! survives, every write it had not is lost (a request in flight may be cut part-way through its
//! blocks, as on a real disk). It does not model a drive that acknowledges writes from its cache
//! and then loses or reorders them, nor torn or corrupted sectors, so it cannot prove that the
//! flushes evac asks for reach the medium on hardware that lies about them. What it proves is
//! that evac takes no step on the strength of something still only in the page cache: a step
//! that relies on data or names not yet durable (copy bytes, the copy's metadata, DEST names,
//! swaps, journal records) shows up at some cut as a lost original, a link to an incomplete copy,
//! or a journal that the resume cannot finish from. Because SOURCE, DEST and the journal share
//! one ext4, its own journal commits their metadata operations (renames, links, unlinks) in the
//! order they were made, so an ordering that only breaks across two filesystems (a DEST name
//! that must be durable before a SOURCE swap on another disk) goes unseen here. File data is not
//! ordered with that metadata, and evac's journal records are file data (SQLite's write-ahead
//! log): they can reach the disk before the renames made just before them are committed, even
//! inside the very fsync meant to commit them (it writes the file's data first), so a record can
//! outlive the renames it describes (this test found evac relying on that order). Each remount
//! picks data=ordered or data=writeback at random; with writeback, metadata may reach the disk
//! before the data it describes, so leaning on ext4's default data ordering instead of syncing
//! would show up too.
//!
//! Cycles. One chain of cuts continues from the previous cut's state: the run is cut, the
//! snapshot checked, then resumed and cut again while the resume recovers and carries on, and
//! after the last cut a resume runs to the end and the full oracle is checked. Continuing (rather
//! than starting fresh for each cut) also cuts the power during recovery from a power cut, which
//! fresh runs never do, and costs one tree build per chain instead of one per cut; any original
//! lost at any cut is still missing at the end, so the final oracle covers every cut of the
//! chain. A chain holds at most 5 cuts; more cuts (EVAC_POWER_CUTS) make more chains, each
//! with a fresh filesystem and tree.
//!
//! The seed is printed; EVAC_TEST_SEED=<seed> replays its choices (the timing of a run cannot be
//! replayed). EVAC_POWER_KEEP=DIR keeps the disk image of any cut whose check fails. Soak:
//! EVAC_POWER_CUTS=50 cargo test --release --test it power_loss:: -- --nocapture

use crate::common::mounts::{self, Mounted};
use crate::common::*;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST: &str = "power_cuts_leave_every_path_resolving_and_resume_completes";
const FILES: usize = 2500;
/// 512 MiB and up gets 4 KiB blocks (room for the tree's large xattrs).
const INNER_MIB: u64 = 512;
/// Room for a full inner image plus the outer filesystem's own metadata.
const OUTER_MIB: u64 = 600;
const CHAIN: usize = 5;

/// Power cuts per test run (EVAC_POWER_CUTS for longer soaks).
fn cuts() -> usize {
    std::env::var("EVAC_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1)
}

fn run_cmd(cmd: &str, args: &[&OsStr]) -> Result<(), String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// HOST frozen; thawed on drop, so that a failing test never leaves a frozen filesystem (and
/// everything waiting on it) behind.
struct Frozen {
    host: PathBuf,
    thawed: bool,
}

impl Frozen {
    fn freeze(host: &Path) -> Result<Frozen, String> {
        run_cmd("fsfreeze", &["-f".as_ref(), host.as_os_str()])?;
        Ok(Frozen {
            host: host.to_path_buf(),
            thawed: false,
        })
    }

    fn thaw(mut self) -> Result<(), String> {
        self.thawed = true;
        run_cmd("fsfreeze", &["-u".as_ref(), self.host.as_os_str()])
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.host).status();
        }
    }
}

/// Two HOST filesystems and the inner filesystem under test, mounted at `mnt` from an image on
/// `hosts[cur]`. Fields drop in order: the inner filesystem is unmounted before its host.
struct Rig {
    inner: Option<Mounted>,
    hosts: Vec<Mounted>,
    cur: usize,
    mnt: PathBuf,
    /// Holds the images; removed last.
    _tmp: tempfile::TempDir,
}

impl Rig {
    fn new() -> Result<Rig, String> {
        let tmp = tempfile::Builder::new()
            .prefix("evt")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut hosts = Vec::new();
        for i in 0..2 {
            hosts.push(mounts::loop_fs(
                &tmp.path().join(format!("outer{i}.img")),
                &tmp.path().join(format!("host{i}")),
                "ext4",
                OUTER_MIB,
            )?);
        }
        Ok(Rig {
            inner: None,
            hosts,
            cur: 0,
            mnt: tmp.path().join("mnt"),
            _tmp: tmp,
        })
    }

    fn host(&self, i: usize) -> &Path {
        &self.hosts[i].0
    }

    fn image(&self, i: usize) -> PathBuf {
        self.host(i).join("inner.img")
    }

    fn src(&self) -> PathBuf {
        self.mnt.join("src")
    }

    fn dst(&self) -> PathBuf {
        self.mnt.join("dst")
    }

    fn journal(&self) -> PathBuf {
        self.mnt.join("journal.db")
    }

    /// A new, empty inner filesystem on the first HOST.
    fn fresh(&mut self) -> Result<(), String> {
        self.inner = None;
        for i in 0..2 {
            remove_if_exists(&self.image(i))?;
        }
        self.cur = 0;
        self.inner = Some(mounts::loop_fs(
            &self.image(0),
            &self.mnt,
            "ext4",
            INNER_MIB,
        )?);
        Ok(())
    }

    /// The power cut: from here on the inner device completes no more writes.
    fn freeze(&self) -> Result<Frozen, String> {
        Frozen::freeze(self.host(self.cur))
    }

    /// While frozen: the inner image as the device left it, onto the other HOST.
    fn snapshot(&self) -> Result<(), String> {
        let to = self.image(1 - self.cur);
        remove_if_exists(&to)?;
        run_cmd(
            "cp",
            &[
                "--sparse=always".as_ref(),
                self.image(self.cur).as_os_str(),
                to.as_os_str(),
            ],
        )
    }

    /// After the thaw (and once nothing uses the inner filesystem): drop the live filesystem,
    /// whose later writes a real power cut would never have made, and mount the snapshot in its
    /// place.
    fn switch_to_snapshot(&mut self, data_mode: &str) -> Result<(), String> {
        self.inner = None;
        self.cur = 1 - self.cur;
        let img = self.image(self.cur);
        mounts::mount(&[
            "-o".as_ref(),
            format!("loop,{data_mode}").as_ref(),
            img.as_os_str(),
            self.mnt.as_os_str(),
        ])?;
        self.inner = Some(Mounted(self.mnt.clone()));
        Ok(())
    }
}

fn remove_if_exists(p: &Path) -> Result<(), String> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", p.display()))
        }
        _ => Ok(()),
    }
}

fn sync_fs(p: &Path) {
    let f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        panic!(
            "syncfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// A thread's scheduler state letter from /proc ('D': waiting, uninterruptibly, on I/O).
fn thread_state(tid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Does freezing HOST stop the inner device's writes on this kernel? A file synced before the
/// freeze must be in the snapshot, one written after it must not be, and the fsync of the
/// latter must hang until the thaw.
fn probe(rig: &mut Rig) -> Result<(), String> {
    rig.fresh()?;
    let before = rig.mnt.join("probe-before");
    let after = rig.mnt.join("probe-after");
    let mut f = std::fs::File::create(&before).map_err(|e| format!("probe write: {e}"))?;
    f.write_all(b"synced before the cut")
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("probe write: {e}"))?;
    drop(f);
    let frozen = rig.freeze()?;
    let tid = Arc::new(AtomicI32::new(0));
    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let (tid, written, after) = (tid.clone(), written.clone(), after.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let mut f = std::fs::File::create(&after)?;
            f.write_all(b"written after the cut")?;
            written.store(true, Ordering::SeqCst);
            f.sync_all()
        })
    };
    let start = Instant::now();
    let blocked = loop {
        if writer.is_finished() {
            break false;
        }
        let t = tid.load(Ordering::SeqCst);
        if written.load(Ordering::SeqCst) && t != 0 && thread_state(t) == Some('D') {
            break true;
        }
        if start.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let snap = if blocked { rig.snapshot() } else { Ok(()) };
    frozen.thaw()?;
    let synced = writer
        .join()
        .map_err(|_| "probe writer panicked".to_string())?;
    if !blocked {
        return Err(format!(
            "an fsync on the inner filesystem did not wait for the thaw of HOST ({synced:?})"
        ));
    }
    snap?;
    rig.switch_to_snapshot("data=ordered")
        .map_err(|e| format!("the snapshot does not mount: {e}"))?;
    match std::fs::read(&before) {
        Ok(d) if d == b"synced before the cut" => {}
        other => {
            return Err(format!(
                "a file synced before the cut is not in the snapshot: {other:?}"
            ))
        }
    }
    if after.exists() {
        return Err("a file written after the cut is in the snapshot".into());
    }
    Ok(())
}

fn make_tree(src: &Path, seed: u64) -> Manifest {
    let spec = TreeSpec {
        max_size: 16 << 10,
        hardlinks: true,
        sparse: true,
        xattrs: true,
        weird_names: true,
        modes: true,
        owners: is_root(),
        root_xattrs: is_root(),
        ..TreeSpec::plain(FILES, seed)
    };
    build_tree(src, &spec);
    // Larger files keep copies in flight, so cuts also land inside a copy.
    for i in 0..4u64 {
        std::fs::write(
            src.join(format!("big{i}.bin")),
            content(seed ^ i, ((2 + i as usize) << 20) + i as usize * 4099),
        )
        .unwrap();
    }
    stamp_times(src, seed);
    Manifest::scan(src)
}

/// What the disk held after one cut.
#[derive(Default)]
struct AfterCut {
    /// Original paths that are links (to complete copies, or counted in `bad_links`).
    links: usize,
    /// Originals evac had swapped out and not yet removed (under its temporary names).
    held: usize,
    lost: Vec<String>,
    bad_links: Vec<String>,
}

/// Content and metadata of `got` against the original `want`.
fn differences(want: &Entry, got: &Entry, atime: bool) -> Vec<String> {
    let mut d = Vec::new();
    if got.kind != Kind::File {
        d.push(format!("is a {:?}", got.kind));
        return d;
    }
    if got.size != want.size {
        d.push(format!("size {} (want {})", got.size, want.size));
    }
    if got.hash != want.hash {
        d.push("content differs".into());
    }
    if got.mode != want.mode {
        d.push(format!("mode {:o} (want {:o})", got.mode, want.mode));
    }
    if (got.uid, got.gid) != (want.uid, want.gid) {
        d.push(format!(
            "owner {}:{} (want {}:{})",
            got.uid, got.gid, want.uid, want.gid
        ));
    }
    if got.mtime != want.mtime {
        d.push(format!("mtime {:?} (want {:?})", got.mtime, want.mtime));
    }
    if atime && got.atime != want.atime {
        d.push(format!("atime {:?} (want {:?})", got.atime, want.atime));
    }
    if got.xattrs != want.xattrs {
        d.push(format!(
            "xattrs {:?} (want {:?})",
            got.xattrs.keys().map(|k| short(k)).collect::<Vec<_>>(),
            want.xattrs.keys().map(|k| short(k)).collect::<Vec<_>>()
        ));
    }
    d
}

/// I1 on the state a power cut left, before anything runs on it: every path of `before` is its
/// original regular file (same inode, content and metadata) or a link to LINK_PREFIX/<path>
/// whose file at DEST has the original's full content and metadata.
fn check_i1(before: &Manifest, src: &Path, dst: &Path) -> AfterCut {
    let mut r = AfterCut::default();
    let s = Manifest::scan(src);
    let d = dst.is_dir().then(|| Manifest::scan(dst));
    let prefix = bytes_of(dst);
    for (rel, want) in before.files() {
        match s.get(rel) {
            None => r.lost.push(format!("{}: missing", short(rel))),
            Some(got) if got.kind == Kind::Symlink => {
                r.links += 1;
                let target = join_rel(&prefix, rel);
                let mut why = Vec::new();
                if got.target.as_deref() != Some(&target[..]) {
                    why.push(format!(
                        "points at {}",
                        short(got.target.as_deref().unwrap_or(b""))
                    ));
                } else if (got.uid, got.gid) != (want.uid, want.gid) {
                    why.push(format!("link owner {}:{}", got.uid, got.gid));
                }
                match d.as_ref().and_then(|d| d.get(rel)) {
                    None => why.push("no copy at DEST".into()),
                    Some(copy) => why.extend(
                        differences(want, copy, true)
                            .into_iter()
                            .map(|w| format!("copy: {w}")),
                    ),
                }
                if !why.is_empty() {
                    r.bad_links
                        .push(format!("{}: {}", short(rel), why.join(", ")));
                }
            }
            Some(got) => {
                let mut why = differences(want, got, false);
                if got.kind == Kind::File && got.ino != want.ino {
                    why.push(format!("inode {} (want {})", got.ino, want.ino));
                }
                if !why.is_empty() {
                    r.lost.push(format!("{}: {}", short(rel), why.join(", ")));
                }
            }
        }
    }
    r.held = s
        .temp_names()
        .iter()
        .filter(|t| {
            !before.entries.contains_key(*t) && s.get(t).is_some_and(|e| e.kind == Kind::File)
        })
        .count();
    r
}

/// After the last resume of a chain: the crash test's oracle.
fn final_oracle(before: &Manifest, src: &Path, dst: &Path, journal: &Path) {
    let read_through = |p: &Path| -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOATIME: the oracle below compares DEST atimes.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(p)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        Ok(v)
    };
    let mut problems = Vec::new();
    for (rel, f) in before.files() {
        match read_through(&path_of(src, rel)) {
            Ok(data) if hash_bytes(&data) == f.hash.unwrap() => {}
            Ok(_) => problems.push(format!("{}: content through the link differs", esc(rel))),
            Err(e) => problems.push(format!("{}: cannot read through the link: {e}", esc(rel))),
        }
    }
    assert_no_problems("original paths after power cuts and resume", &problems);

    check_relocated(before, src, dst, None);

    // Nothing copied twice: one DEST inode per SOURCE inode, nothing set aside in the trash.
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
        "files were moved to .evac-trash although no user touched the tree: {trashed:?}"
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
    .expect(0, "verify after power cuts");
}

/// Paths the journal records as relocated that are not links on disk.
fn journal_ahead(journal: &Path, src: &Path) -> Vec<Vec<u8>> {
    status_list(journal, "relocated")
        .into_iter()
        .filter(|p| lstat_rel(src, p).is_ok_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFLNK))
        .collect()
}

/// With EVAC_POWER_KEEP=DIR, keep the image of a cut that went wrong for a post-mortem (mount
/// it at the printed path to follow its links).
fn keep_snapshot(rig: &Rig, cut: usize) {
    let Some(dir) = std::env::var_os("EVAC_POWER_KEEP").map(PathBuf::from) else {
        return;
    };
    sync_fs(&rig.mnt);
    let to = dir.join(format!("cut-{cut}.img"));
    let kept = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            run_cmd(
                "cp",
                &[
                    "--sparse=always".as_ref(),
                    rig.image(rig.cur).as_os_str(),
                    to.as_os_str(),
                ],
            )
        });
    match kept {
        Ok(()) => eprintln!(
            "  kept the state after cut {cut} in {} (it was mounted at {})",
            to.display(),
            rig.mnt.display()
        ),
        Err(e) => eprintln!("  could not keep the state after cut {cut}: {e}"),
    }
}

fn resume_args(journal: &Path, batch: &str) -> Vec<OsString> {
    vec![
        "run".into(),
        "--journal".into(),
        journal.into(),
        "--quiet".into(),
        "--workers".into(),
        "4".into(),
        "--batch-files".into(),
        batch.into(),
    ]
}

fn relocated(st: &Json) -> i64 {
    st.get("files")
        .and_then(|f| f.get("relocated"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

#[test]
fn power_cuts_leave_every_path_resolving_and_resume_completes() {
    let _gate = suite_gate!();
    skip_unless_root!(TEST, "it loop-mounts filesystems and freezes one");
    for tool in ["fsfreeze", "mkfs.ext4"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            skip!(TEST, "{tool} is not available (util-linux / e2fsprogs)");
        }
    }
    let seed = time_seed();
    eprintln!("power-loss test seed: {seed} (replay its choices: EVAC_TEST_SEED={seed} cargo test --release --test it power_loss:: -- --nocapture)");
    eprintln!(
        "soak: EVAC_POWER_CUTS=50 cargo test --release --test it power_loss:: -- --nocapture"
    );
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut rig = match Rig::new() {
        Ok(r) => r,
        Err(m) => skip!(TEST, "cannot loop-mount ext4 images here: {m}"),
    };
    if let Err(m) = probe(&mut rig) {
        skip!(
            TEST,
            "freezing the outer filesystem does not cut the inner device's writes here: {m}"
        );
    }
    eprintln!("method checked: a freeze of HOST cuts the inner device's writes");

    let want = cuts();
    let mut landed = 0usize;
    let mut chain = 0u64;
    let mut at_cut: Vec<usize> = Vec::new();
    let mut ahead_total = 0usize;
    let (src, dst, journal) = (rig.src(), rig.dst(), rig.journal());
    while landed < want {
        chain += 1;
        assert!(
            chain <= 3 + want as u64,
            "runs finish too fast to land {want} cuts (landed {landed})"
        );
        let n = (want - landed).min(CHAIN);
        rig.fresh()
            .unwrap_or_else(|m| panic!("new inner filesystem: {m}"));
        let before = make_tree(&src, seed ^ chain);
        // The tree is the users' data from before the run: a cut must not take it with it.
        sync_fs(&rig.mnt);
        let total = before.file_count() as i64;
        eprintln!(
            "chain {chain}: {total} files, {} inodes, {} MiB",
            before.distinct_file_inodes(),
            before.file_bytes_distinct() >> 20
        );
        let mut jrel = 0i64;
        for k in 0..n {
            let batch = ["16", "64", "512"][rng.below(3) as usize];
            let args = if k == 0 {
                run_args(
                    &src,
                    &dst,
                    &journal,
                    &["--workers", "4", "--batch-files", batch],
                )
            } else {
                resume_args(&journal, batch)
            };
            let mut bg = spawn_evac(&args);
            // The cut's moment is this test's input: a quarter of the resumes are cut early
            // (start-up, recovery of the last cut), the rest once a random share of what was
            // left is relocated, plus a little.
            let moment = if k > 0 && rng.below(4) == 0 {
                let d = rng.below(400);
                std::thread::sleep(Duration::from_millis(d));
                format!("{d} ms after start")
            } else {
                let share = 0.2 + 0.7 * (rng.below(1000) as f64 / 1000.0);
                let step = (((total - jrel) as f64 * share) / (n - k) as f64).max(1.0) as i64;
                let target = jrel + step;
                let before_end = wait_status(&journal, &mut bg, Duration::from_secs(120), |st| {
                    relocated(st) >= target
                });
                if !before_end {
                    bg.wait().expect(0, "a run that ended before its cut");
                    eprintln!("  run {} ended before the cut (target {target})", k + 1);
                    break;
                }
                let d = rng.below(150);
                std::thread::sleep(Duration::from_millis(d));
                format!("{target}+ relocated, then {d} ms")
            };
            let frozen = rig.freeze().unwrap_or_else(|m| panic!("power cut: {m}"));
            let running = bg.poll().is_none();
            let snap = rig.snapshot();
            bg.signal(libc::SIGKILL);
            frozen.thaw().unwrap_or_else(|m| panic!("thaw: {m}"));
            let out = bg.wait_for(Duration::from_secs(120));
            snap.unwrap_or_else(|m| panic!("snapshot at the cut: {m}"));
            if !running {
                out.expect(0, "a run that ended just before its cut");
            }
            let mode = ["data=ordered", "data=writeback"][rng.below(2) as usize];
            rig.switch_to_snapshot(mode)
                .unwrap_or_else(|m| panic!("mount the snapshot: {m}"));
            landed += 1;

            let r = check_i1(&before, &src, &dst);
            let st = status(&journal);
            jrel = relocated(&st);
            let ahead = journal_ahead(&journal, &src);
            at_cut.push(r.links);
            ahead_total += ahead.len();
            eprintln!(
                "cut {landed} (chain {chain}, batches of {batch}, {}; {moment}): {}/{total} paths are links (journal: {jrel} relocated, {} of them not links on disk), {} originals at temporary names; originals lost: {}; links to incomplete copies: {}; remounted {mode}",
                if running { "evac running" } else { "evac had exited" },
                r.links,
                ahead.len(),
                r.held,
                r.lost.len(),
                r.bad_links.len()
            );
            if !ahead.is_empty() {
                // Not I1 (the originals are there), but a resume trusts the journal: the final
                // oracle shows whether it leaves these files behind.
                eprintln!(
                    "  the journal records as relocated: {}",
                    ahead
                        .iter()
                        .take(5)
                        .map(|p| short(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let mut problems = r.lost.clone();
            problems.extend(r.bad_links.iter().cloned());
            if !problems.is_empty() || !ahead.is_empty() {
                keep_snapshot(&rig, landed);
            }
            assert_no_problems(
                &format!("I1 after power cut {landed} (seed {seed})"),
                &problems,
            );
        }
        evac_timeout(resume_args(&journal, "512"), Duration::from_secs(240))
            .expect(0, "resume after the last power cut");
        final_oracle(&before, &src, &dst, &journal);
        eprintln!(
            "chain {chain}: resumed to the end; oracle, verify, no temporaries, nothing copied twice ({:?} so far)",
            started.elapsed()
        );
    }
    figures(
        "power_loss",
        &format!(
            "power cuts: {landed} in {chain} chain(s); paths relocated at each cut: {at_cut:?}; originals lost: 0; links to incomplete copies: 0; recorded as relocated before they were: {ahead_total}; {:.0?}",
            started.elapsed()
        ),
    );
}
