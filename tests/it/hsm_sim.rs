//! The simulated HSM (`evac-hsm-sim`, root): `release` makes real stubs (size kept, no blocks,
//! times kept, Lustre's trusted.hsm released) and the listings evac imports; `stage` recalls
//! them into the same inode, with latency, failures and a wedged HSM; `serve` answers reads of
//! stubs through fanotify pre-content events on a loop-mounted ext4 image of the test's own,
//! logs who read what, fails reads with EIO, leaves readers waiting, and stops cleanly.

use crate::common::mounts::*;
use crate::common::*;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_evac-hsm-sim");
const HEADER: &str = "#path\tstate\ttier\tvolume\tposition\tsize\tchecksum";
/// exists | archived | released, and exists | archived (premigrated).
const RELEASED: u32 = 0x1 | 0x8 | 0x4;
const PREMIGRATED: u32 = 0x1 | 0x8;

/// Run the simulator to completion (killed, and the test failed, after 120 s).
fn sim<I, S>(args: I, stdin: Option<&[u8]>) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let mut child = Command::new(SIM)
        .args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .expect("start evac-hsm-sim");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let cmd = format!("evac-hsm-sim {args:?}");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read_back = |f: &mut File| {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Out {
        status,
        stdout: read_back(&mut out),
        stderr: read_back(&mut err),
        cmd,
    }
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// `release --tape TAPE --volume VOL --tier TIER FILES...`, which must succeed.
fn release(tape: &Path, vol: &str, tier: u32, files: &[&Path]) {
    let mut a: Vec<&OsStr> = vec![
        "release".as_ref(),
        "--tape".as_ref(),
        os(tape),
        "--volume".as_ref(),
        vol.as_ref(),
    ];
    let tier = tier.to_string();
    a.extend(["--tier".as_ref(), tier.as_ref() as &OsStr]);
    a.extend(files.iter().map(|f| os(f)));
    sim(a, None).expect(0, "release");
}

/// (flags, archive id) of a file's trusted.hsm, or None.
fn hsm_of(p: &Path) -> Option<(u32, u64)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new("trusted.hsm").unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of its length.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
    (n >= 16).then(|| {
        (
            u32::from_le_bytes(buf[4..8].try_into().unwrap()),
            u64::from_le_bytes(buf[8..16].try_into().unwrap()),
        )
    })
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn mtime(m: &std::fs::Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

fn hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// `evac-hsm-sim state` for each path, one answer each.
fn states(paths: &[&Path]) -> Vec<String> {
    let mut a: Vec<&OsStr> = vec!["state".as_ref()];
    a.extend(paths.iter().map(|p| os(p)));
    let out = sim(a, None);
    out.expect(0, "state");
    out.stdout_str().lines().map(str::to_string).collect()
}

/// The listing's escaping, written again here so that the test does not trust the simulator's.
fn listing_escape(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out
}

/// The lines of listing.tsv after its header, which must be exactly HEADER.
fn listing(tape: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(tape.join("listing.tsv")).expect("read listing.tsv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HEADER), "listing.tsv header\n{text}");
    assert!(
        text.ends_with('\n'),
        "listing.tsv does not end with a newline"
    );
    lines.map(str::to_string).collect()
}

/// The line of listing.tsv for `path`.
fn listed(tape: &Path, path: &Path) -> Vec<String> {
    let key = format!("{}\t", listing_escape(path.as_os_str().as_bytes()));
    let all = listing(tape);
    let hits: Vec<&String> = all.iter().filter(|l| l.starts_with(&key)).collect();
    assert_eq!(
        hits.len(),
        1,
        "{} listed {} times:\n{all:#?}",
        path.display(),
        hits.len()
    );
    hits[0].split('\t').map(str::to_string).collect()
}

/// listing.tsv0 as records of 7 raw fields.
fn listing0(tape: &Path) -> Vec<Vec<Vec<u8>>> {
    let raw = std::fs::read(tape.join("listing.tsv0")).expect("read listing.tsv0");
    assert!(
        raw.is_empty() || raw.ends_with(b"\0"),
        "the last field is not NUL-terminated"
    );
    let fields: Vec<Vec<u8>> = raw
        .split(|&b| b == 0)
        .map(<[u8]>::to_vec)
        .collect::<Vec<_>>();
    let fields = &fields[..fields.len() - 1];
    assert_eq!(
        fields.len() % 7,
        0,
        "listing.tsv0 holds {} fields",
        fields.len()
    );
    fields.chunks(7).map(<[Vec<u8>]>::to_vec).collect()
}

fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p.parent().unwrap())
        .unwrap()
        .join(p.file_name().unwrap())
}

// ---------------------------------------------------------------------------
// release
// ---------------------------------------------------------------------------

#[test]
fn release_makes_real_stubs_and_the_listings() {
    let _gate = suite_gate!();
    const T: &str = "release_makes_real_stubs_and_the_listings";
    skip_unless_root!(T, "trusted.* attributes need CAP_SYS_ADMIN");
    let e = env();
    let tape = e.tmp.path().join("tape");
    let d = D::open(&e.src).unwrap();
    let weird: &[u8] = b"we\tird\nna\rme\xff\x01.bin";
    let files: Vec<(&[u8], Vec<u8>)> = vec![
        (b"plain.dat", content(1, 3_000_000)),
        (weird, content(2, 70_001)),
        (b"small", b"hello".to_vec()),
    ];
    for (i, (name, data)) in files.iter().enumerate() {
        d.create(name, data, 0o640).unwrap();
        d.set_times(
            name,
            (1_500_000_000 + i as i64, 5),
            (1_000_000_000 + i as i64, 123_456_789),
        )
        .unwrap();
    }
    let paths: Vec<PathBuf> = files.iter().map(|(n, _)| path_of(&e.src, n)).collect();
    let before: Vec<std::fs::Metadata> = paths.iter().map(|p| meta(p)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    release(&tape, "VOL-A", 2, &refs);

    for ((p, b), (_, data)) in paths.iter().zip(&before).zip(&files) {
        let m = meta(p);
        assert_eq!(m.ino(), b.ino(), "{}: not the same inode", p.display());
        assert_eq!(
            m.size(),
            data.len() as u64,
            "{}: size not kept",
            p.display()
        );
        assert_eq!(m.blocks(), 0, "{}: data blocks left", p.display());
        assert_eq!(mtime(&m), mtime(b), "{}: mtime changed", p.display());
        assert_eq!(
            (m.atime(), m.atime_nsec()),
            (b.atime(), b.atime_nsec()),
            "{}: atime changed",
            p.display()
        );
        assert_eq!(
            hsm_of(p),
            Some((RELEASED, 2)),
            "{}: trusted.hsm",
            p.display()
        );
    }
    assert_eq!(states(&refs), ["staged_out"; 3]);

    // The listing, checked field by field against what the test knows.
    let mut rows = listing(&tape);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let mut positions = Vec::new();
    for (p, (_, data)) in paths.iter().zip(&files) {
        let f = listed(&tape, &abs(p));
        let pos: u64 = f[4].parse().unwrap();
        positions.push(pos);
        let want = format!(
            "{}\tstaged_out\t2\tVOL-A\t{pos}\t{}\tblake3:{}",
            listing_escape(abs(p).as_os_str().as_bytes()),
            data.len(),
            hex(data)
        );
        assert_eq!(f.join("\t"), want);
        // The tape holds the data at that position.
        let unit = tape.join("VOL-A").join(format!("{pos:08}"));
        assert!(
            std::fs::read(&unit).unwrap() == *data,
            "{} does not hold {}",
            unit.display(),
            p.display()
        );
    }
    positions.sort();
    assert_eq!(positions, [1, 2, 3], "positions on the volume");
    let weird_line = format!(
        "{}/we\\tird\\nna\\rme\\xff\\x01.bin\t",
        std::fs::canonicalize(&e.src).unwrap().display()
    );
    assert!(
        rows.iter().any(|l| l.starts_with(&weird_line)),
        "no line starts with {weird_line:?}: {rows:#?}"
    );
    // Sorted by the raw path bytes.
    let mut raw: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| abs(p).as_os_str().as_bytes().to_vec())
        .collect();
    raw.sort();
    let order: Vec<String> = raw.iter().map(|r| listing_escape(r)).collect();
    let got: Vec<String> = rows
        .drain(..)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(got, order, "listing.tsv is not sorted by path");

    // The NUL-separated listing: the same records, raw paths.
    let recs = listing0(&tape);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs.iter().map(|r| r[0].clone()).collect::<Vec<_>>(), raw);
    for r in &recs {
        let i = paths
            .iter()
            .position(|p| abs(p).as_os_str().as_bytes() == r[0].as_slice())
            .unwrap();
        let f = listed(&tape, &abs(&paths[i]));
        let text: Vec<String> = r[1..]
            .iter()
            .map(|x| String::from_utf8(x.clone()).unwrap())
            .collect();
        assert_eq!(text, f[1..], "listing.tsv0 and listing.tsv disagree");
    }

    // Releasing a stub again changes nothing.
    let unchanged = std::fs::read(tape.join("listing.tsv")).unwrap();
    release(&tape, "VOL-A", 2, &[&paths[0]]);
    assert_eq!(std::fs::read(tape.join("listing.tsv")).unwrap(), unchanged);

    // Recalled, rewritten, released again to another volume and tier: the record is updated,
    // still one line for the path.
    let small = &paths[2];
    sim(
        [
            os(Path::new("stage")),
            "--tape".as_ref(),
            os(&tape),
            os(small),
        ],
        None,
    )
    .expect(0, "stage small");
    std::fs::write(small, b"hello, again").unwrap();
    release(&tape, "VOL-B", 3, &[small]);
    let f = listed(&tape, &abs(small));
    assert_eq!(
        f[1..].join("\t"),
        format!(
            "staged_out\t3\tVOL-B\t1\t12\tblake3:{}",
            hex(b"hello, again")
        )
    );
    assert_eq!(listing(&tape).len(), 3);
    assert_eq!(hsm_of(small), Some((RELEASED, 3)));
    assert_eq!(
        std::fs::read(tape.join("VOL-B/00000001")).unwrap(),
        b"hello, again"
    );
}

// ---------------------------------------------------------------------------
// stage
// ---------------------------------------------------------------------------

#[test]
fn stage_restores_content_times_and_inode_with_latency() {
    let _gate = suite_gate!();
    const T: &str = "stage_restores_content_times_and_inode_with_latency";
    skip_unless_root!(T, "trusted.* attributes need CAP_SYS_ADMIN");
    let e = env();
    let tape = e.tmp.path().join("tape");
    let d = D::open(&e.src).unwrap();
    let specs: [(&str, usize, &str); 3] = [
        ("a.big", 2 << 20, "V1"),
        ("b.mid", 100_000, "V2"),
        ("c.small", 50_000, "V1"),
    ];
    for (i, (name, len, _)) in specs.iter().enumerate() {
        d.create(name.as_bytes(), &content(10 + i as u64, *len), 0o600)
            .unwrap();
        d.set_times(
            name.as_bytes(),
            (1_600_000_000, 1),
            (1_234_567_890, 987_654_321 - i as i64),
        )
        .unwrap();
    }
    d.create(b"resident", b"never released", 0o600).unwrap();
    let p = |n: &str| e.src.join(n);
    release(&tape, "V1", 1, &[&p("a.big"), &p("c.small")]);
    release(&tape, "V2", 4, &[&p("b.mid")]);
    let before: Vec<std::fs::Metadata> = specs.iter().map(|s| meta(&p(s.0))).collect();

    let t0 = Instant::now();
    let out = sim(
        [
            "stage".as_ref(),
            "--tape".as_ref(),
            os(&tape),
            "--mount-latency-ms".as_ref(),
            "300".as_ref(),
            "--mib-latency-ms".as_ref(),
            "400".as_ref(),
            os(&p("a.big")),
            os(&p("b.mid")),
            os(&p("c.small")),
            os(&p("resident")),
        ],
        None,
    );
    let took = t0.elapsed();
    out.expect(0, "stage");
    // Two distinct volumes mounted (2 x 300 ms) and at least 2 MiB read (2 x 400 ms).
    assert!(
        took >= Duration::from_millis(1400),
        "stage took {took:?}, less than the latency asked for"
    );
    for ((i, (name, len, vol)), b) in specs.iter().enumerate().zip(&before) {
        let f = p(name);
        let m = meta(&f);
        assert_eq!(
            std::fs::read(&f).unwrap(),
            content(10 + i as u64, *len),
            "{name}: content not restored"
        );
        assert_eq!(m.ino(), b.ino(), "{name}: not the same inode");
        assert_eq!(mtime(&m), mtime(b), "{name}: mtime not restored");
        assert!(m.blocks() > 0, "{name}: still no blocks");
        let tier = if *vol == "V2" { 4 } else { 1 };
        assert_eq!(hsm_of(&f), Some((PREMIGRATED, tier)), "{name}: trusted.hsm");
        let row = listed(&tape, &abs(&f));
        assert_eq!(row[1], "premigrated", "{name}: {row:?}");
        assert_eq!(row[3], *vol);
    }
    assert_eq!(
        states(&[&p("a.big"), &p("b.mid"), &p("c.small"), &p("resident")]),
        ["premigrated", "premigrated", "premigrated", "resident"]
    );
    // The file that was not a stub is left as it was, and is not managed.
    assert_eq!(std::fs::read(p("resident")).unwrap(), b"never released");
    assert_eq!(hsm_of(&p("resident")), None);
    assert_eq!(listing(&tape).len(), 3);
    let log = std::fs::read_to_string(tape.join("log")).unwrap();
    assert!(
        log.contains(&format!(
            "recall \"{}\" from V2:1",
            abs(&p("b.mid")).display()
        )),
        "the log does not show the recall:\n{log}"
    );
}

#[test]
fn stage_fail_fails_only_the_matching_file() {
    let _gate = suite_gate!();
    const T: &str = "stage_fail_fails_only_the_matching_file";
    skip_unless_root!(T, "trusted.* attributes need CAP_SYS_ADMIN");
    let e = env();
    let tape = e.tmp.path().join("tape");
    let names = ["good1", "bad.one", "good2"];
    for (i, n) in names.iter().enumerate() {
        std::fs::write(e.src.join(n), content(20 + i as u64, 40_000)).unwrap();
    }
    let paths: Vec<PathBuf> = names.iter().map(|n| e.src.join(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    release(&tape, "V1", 1, &refs);
    let mut args: Vec<&OsStr> = vec![
        "stage".as_ref(),
        "--tape".as_ref(),
        os(&tape),
        "--fail".as_ref(),
        "*/bad*".as_ref(),
    ];
    args.extend(refs.iter().map(|p| os(p)));
    let out = sim(args, None);
    out.expect(2, "stage with one failing recall");
    let err = out.stderr_str();
    assert!(
        err.contains(&format!("stage \"{}\"", paths[1].display()))
            && err.contains("simulated recall failure"),
        "stderr does not name the failed file:\n{}",
        out.dump()
    );
    assert!(!err.contains("good"), "a good file is named:\n{err}");
    assert_eq!(states(&refs), ["premigrated", "staged_out", "premigrated"]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), content(20, 40_000));
    assert_eq!(std::fs::read(&paths[2]).unwrap(), content(22, 40_000));
    assert_eq!(meta(&paths[1]).blocks(), 0, "the failed file got data");
    assert_eq!(hsm_of(&paths[1]), Some((RELEASED, 1)));
    assert_eq!(listed(&tape, &abs(&paths[1]))[1], "staged_out");
}

#[test]
fn stage_wedge_never_returns() {
    let _gate = suite_gate!();
    const T: &str = "stage_wedge_never_returns";
    skip_unless_root!(T, "trusted.* attributes need CAP_SYS_ADMIN");
    let e = env();
    let tape = e.tmp.path().join("tape");
    let f = e.src.join("f");
    std::fs::write(&f, content(30, 10_000)).unwrap();
    release(&tape, "V1", 1, &[&f]);
    let mut child = Command::new(SIM)
        .args([
            "stage".as_ref(),
            "--tape".as_ref(),
            os(&tape),
            "--wedge".as_ref(),
            os(&f),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let st = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(st, None, "stage --wedge returned");
    assert_eq!(states(&[&f]), ["staged_out"]);
    assert_eq!(meta(&f).blocks(), 0);
}

#[test]
fn stage_reads_nul_separated_paths_from_stdin() {
    let _gate = suite_gate!();
    const T: &str = "stage_reads_nul_separated_paths_from_stdin";
    skip_unless_root!(T, "trusted.* attributes need CAP_SYS_ADMIN");
    let e = env();
    let tape = e.tmp.path().join("tape");
    let d = D::open(&e.src).unwrap();
    let names: [&[u8]; 3] = [b"one", b"new\nline \xfe", b"-dash"];
    for (i, n) in names.iter().enumerate() {
        d.create(n, &content(40 + i as u64, 5000 * (i + 1)), 0o600)
            .unwrap();
    }
    d.create(b"plain", b"resident", 0o600).unwrap();
    let paths: Vec<PathBuf> = names.iter().map(|n| path_of(&e.src, n)).collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    release(&tape, "V1", 1, &refs);
    let mut input = Vec::new();
    for p in paths.iter().chain([&e.src.join("plain")]) {
        input.extend_from_slice(p.as_os_str().as_bytes());
        input.push(0);
    }
    let out = sim(
        [
            "stage".as_ref(),
            "--tape".as_ref(),
            os(&tape),
            "--stdin0".as_ref(),
        ],
        Some(&input),
    );
    out.expect(0, "stage --stdin0");
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(
            std::fs::read(p).unwrap(),
            content(40 + i as u64, 5000 * (i + 1)),
            "{} not restored",
            p.display()
        );
    }
    let mut all = refs.clone();
    let plain = e.src.join("plain");
    all.push(&plain);
    assert_eq!(
        states(&all),
        ["premigrated", "premigrated", "premigrated", "resident"]
    );
}

#[test]
fn lose_marks_data_lost_and_recalls_fail() {
    let _gate = suite_gate!();
    const T: &str = "lose_marks_data_lost_and_recalls_fail";
    skip_unless_root!(T, "trusted.* attributes need CAP_SYS_ADMIN");
    let e = env();
    let tape = e.tmp.path().join("tape");
    let f = e.src.join("gone");
    std::fs::write(&f, content(90, 9000)).unwrap();
    release(&tape, "V7", 5, &[&f]);
    sim(
        ["lose".as_ref(), "--tape".as_ref(), os(&tape), os(&f)],
        None,
    )
    .expect(0, "lose");
    assert_eq!(states(&[&f]), ["lost"]);
    assert_eq!(hsm_of(&f), Some((RELEASED | 0x40, 5)));
    assert_eq!(listed(&tape, &abs(&f))[1], "lost");
    let out = sim(
        ["stage".as_ref(), "--tape".as_ref(), os(&tape), os(&f)],
        None,
    );
    out.expect(2, "stage of a lost file");
    assert!(out.stderr_str().contains("lost its data"), "{}", out.dump());
    assert_eq!(meta(&f).blocks(), 0);
}

// ---------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------

/// A loop-mounted ext4 image of the test's own (serve marks a whole filesystem), or None (the
/// reason printed) when it cannot be made or has no fanotify pre-content events.
fn serve_fs(e: &Env, test: &str) -> Option<(Mounted, PathBuf)> {
    let mp = e.tmp.path().join("mnt");
    let fs = match loop_fs(&e.tmp.path().join("fs.img"), &mp, "ext4", 64) {
        Ok(m) => m,
        Err(m) => {
            eprintln!("SKIP {test}: cannot loop-mount an ext4 image: {m}");
            return None;
        }
    };
    if let Err(err) = pre_content(&mp) {
        eprintln!("SKIP {test}: no fanotify pre-content events (Linux 6.14+ on ext4): {err}");
        return None;
    }
    Some((fs, mp))
}

/// Whether the filesystem at `mp` has fanotify pre-content events, tried the way the daemon
/// does it: a pre-content group marking the filesystem for FAN_PRE_ACCESS.
fn pre_content(mp: &Path) -> std::io::Result<()> {
    // SAFETY: plain syscalls; the fd is closed below.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_PRE_CONTENT | libc::FAN_CLOEXEC,
            libc::O_RDONLY as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let c = CString::new(mp.as_os_str().as_bytes()).unwrap();
    let r = unsafe {
        libc::fanotify_mark(
            fd,
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            0x0010_0000, // FAN_PRE_ACCESS
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if r < 0 {
        Err(err)
    } else {
        Ok(())
    }
}

/// A process of the test's own (the daemon, a reader), killed when dropped.
struct Proc {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    what: String,
}

impl Proc {
    fn spawn(mut c: Command, dir: &Path, tag: &str) -> Proc {
        let out = dir.join(format!("{tag}.out"));
        let err = dir.join(format!("{tag}.err"));
        let child = c
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {tag}: {e}"));
        Proc {
            child: Some(child),
            out,
            err,
            what: format!("{c:?}"),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Wait for the exit (the test fails after `timeout`): status and stdout.
    fn finish(&mut self, timeout: Duration) -> (ExitStatus, Vec<u8>) {
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not finish within {timeout:?}\n{}",
                    self.what,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        (st, std::fs::read(&self.out).unwrap())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `serve --tape TAPE --mount MP EXTRA... --ready R`, once it says it is listening.
fn start_serve(e: &Env, tape: &Path, mp: &Path, extra: &[&str]) -> Proc {
    let ready = e.tmp.path().join("serve.ready");
    let _ = std::fs::remove_file(&ready);
    let mut c = Command::new(SIM);
    c.arg("serve")
        .arg("--tape")
        .arg(tape)
        .arg("--mount")
        .arg(mp)
        .args(extra)
        .arg("--ready")
        .arg(&ready);
    let mut d = Proc::spawn(c, e.tmp.path(), "serve");
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(
            d.running(),
            "serve exited before it was ready:\n{}",
            d.stderr()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "serve not ready after 30 s:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    d
}

/// `cat PATH`, its output kept outside the watched filesystem.
fn cat(e: &Env, p: &Path, tag: &str) -> Proc {
    let mut c = Command::new("cat");
    c.arg(p);
    Proc::spawn(c, e.tmp.path(), tag)
}

/// access.log as rows of its 7 fields (header checked, then skipped).
fn access_log(tape: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(tape.join("access.log")).unwrap_or_default();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("#time\tpid\tcomm\tevent\trange\tpath\taction"),
        "access.log header"
    );
    lines
        .map(|l| {
            let f: Vec<String> = l.split('\t').map(str::to_string).collect();
            assert_eq!(f.len(), 7, "access.log line {l:?}");
            f
        })
        .collect()
}

/// The access.log rows about `p`.
fn accesses_of(tape: &Path, p: &Path) -> Vec<Vec<String>> {
    let want = listing_escape(p.as_os_str().as_bytes());
    access_log(tape)
        .into_iter()
        .filter(|r| r[5] == want)
        .collect()
}

#[test]
fn serve_recalls_a_stub_for_its_reader() {
    let _gate = suite_gate!();
    const T: &str = "serve_recalls_a_stub_for_its_reader";
    skip_unless_root!(
        T,
        "it loop-mounts ext4 and listens to fanotify pre-content events"
    );
    let e = env();
    let Some((_fs, mp)) = serve_fs(&e, T) else {
        return;
    };
    // The tape on the watched filesystem too: the daemon's own reads and writes there must not
    // wait for the daemon.
    let tape = mp.join("tape");
    let big = mp.join("data/big stub");
    let plain = mp.join("data/plain");
    std::fs::create_dir_all(mp.join("data")).unwrap();
    let data = content(50, 3 << 20);
    std::fs::write(&big, &data).unwrap();
    std::fs::write(&plain, b"resident all along").unwrap();
    release(&tape, "V1", 1, &[&big]);
    assert_eq!(meta(&big).blocks(), 0);

    let mut d = start_serve(&e, &tape, &mp, &["--mount-latency-ms", "300"]);
    let t0 = Instant::now();
    let mut r = cat(&e, &big, "reader");
    let pid = r.pid();
    let (st, out) = r.finish(Duration::from_secs(60));
    let took = t0.elapsed();
    assert!(st.success(), "cat of the stub: {st:?}\n{}", r.stderr());
    assert!(out == data, "the reader did not get the original content");
    assert!(
        took >= Duration::from_millis(300),
        "the read took {took:?}: no mount latency"
    );
    assert_eq!(states(&[&big]), ["premigrated"]);
    assert!(meta(&big).blocks() * 512 >= data.len() as u64);
    assert_eq!(listed(&tape, &big)[1], "premigrated");

    let rows = accesses_of(&tape, &big);
    let read = rows
        .iter()
        .find(|r| r[3] == "pre-access")
        .unwrap_or_else(|| panic!("no pre-access logged for the stub: {rows:#?}"));
    assert_eq!(read[1], pid.to_string(), "the reader's pid: {read:?}");
    assert_eq!(read[2], "cat", "{read:?}");
    assert_eq!(read[6], "recall", "{read:?}");
    assert!(read[4].starts_with("0+"), "range {read:?}");
    assert!(
        rows.iter()
            .any(|r| r[3] == "open" && r[1] == pid.to_string() && r[6] == "logged"),
        "the open of the stub is not logged: {rows:#?}"
    );

    // Resident files, and the stub now premigrated, are read without a word in the log.
    let n = access_log(&tape).len();
    let mut r = cat(&e, &plain, "plain");
    let (st, out) = r.finish(Duration::from_secs(30));
    assert!(st.success() && out == b"resident all along");
    let mut r = cat(&e, &big, "again");
    let (st, out) = r.finish(Duration::from_secs(30));
    assert!(st.success() && out == data);
    assert_eq!(access_log(&tape).len(), n, "{:#?}", access_log(&tape));
    assert!(accesses_of(&tape, &plain).is_empty());

    // The simulator's own commands on the served filesystem are the HSM at work: released and
    // staged again while the daemon serves, neither waits for it nor is logged.
    release(&tape, "V1", 1, &[&big]);
    assert_eq!(states(&[&big]), ["staged_out"]);
    sim(
        ["stage".as_ref(), "--tape".as_ref(), os(&tape), os(&big)],
        None,
    )
    .expect(0, "stage while serve runs");
    assert_eq!(states(&[&big]), ["premigrated"]);
    assert!(std::fs::read(&big).unwrap() == data);
    assert_eq!(access_log(&tape).len(), n, "{:#?}", access_log(&tape));

    // SIGTERM: a clean stop.
    send_signal(d.pid(), libc::SIGTERM);
    let (st, _) = d.finish(Duration::from_secs(30));
    assert_eq!(
        st.code(),
        Some(0),
        "serve after SIGTERM: {st:?}\n{}",
        d.stderr()
    );
}

#[test]
fn serve_fail_gives_the_reader_eio() {
    let _gate = suite_gate!();
    const T: &str = "serve_fail_gives_the_reader_eio";
    skip_unless_root!(
        T,
        "it loop-mounts ext4 and listens to fanotify pre-content events"
    );
    let e = env();
    let Some((_fs, mp)) = serve_fs(&e, T) else {
        return;
    };
    let tape = e.tmp.path().join("tape");
    let bad = mp.join("bad.dat");
    let good = mp.join("good.dat");
    std::fs::write(&bad, content(60, 200_000)).unwrap();
    std::fs::write(&good, content(61, 200_000)).unwrap();
    release(&tape, "V1", 1, &[&bad, &good]);
    let _d = start_serve(&e, &tape, &mp, &["--fail", "*/bad*"]);

    let mut r = cat(&e, &bad, "bad");
    let pid = r.pid().to_string();
    let (st, out) = r.finish(Duration::from_secs(60));
    assert!(!st.success(), "cat of the failing stub succeeded");
    assert!(out.is_empty(), "cat got {} bytes", out.len());
    assert!(
        r.stderr().contains("Input/output error"),
        "cat's error is not EIO: {}",
        r.stderr()
    );
    let rows = accesses_of(&tape, &bad);
    assert!(
        rows.iter()
            .any(|x| x[3] == "pre-access" && x[6] == "fail" && x[1] == pid),
        "{rows:#?}"
    );
    assert_eq!(states(&[&bad]), ["staged_out"]);

    let mut r = cat(&e, &good, "good");
    let (st, out) = r.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", r.stderr());
    assert!(out == content(61, 200_000));
    assert_eq!(states(&[&good]), ["premigrated"]);
}

#[test]
fn serve_wedge_leaves_the_reader_waiting_until_the_daemon_dies() {
    let _gate = suite_gate!();
    const T: &str = "serve_wedge_leaves_the_reader_waiting_until_the_daemon_dies";
    skip_unless_root!(
        T,
        "it loop-mounts ext4 and listens to fanotify pre-content events"
    );
    let e = env();
    let Some((_fs, mp)) = serve_fs(&e, T) else {
        return;
    };
    let tape = e.tmp.path().join("tape");
    let f = mp.join("wedged.dat");
    let len = 300_000;
    std::fs::write(&f, content(70, len)).unwrap();
    release(&tape, "V1", 1, &[&f]);
    let mut d = start_serve(&e, &tape, &mp, &["--wedge"]);
    let mut r = cat(&e, &f, "reader");
    let pid = r.pid();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        r.running(),
        "the reader of a stub finished although the HSM is wedged"
    );
    wait_until(
        "the wedged read in access.log",
        Duration::from_secs(10),
        || {
            accesses_of(&tape, &f)
                .iter()
                .any(|x| x[3] == "pre-access" && x[6] == "wedged" && x[1] == pid.to_string())
        },
    );
    // What the kernel does when the group of a wedged HSM goes away (fanotify_release answers
    // every pending event FAN_ALLOW): the read goes on, and reads the stub's holes. The data
    // is still on tape; the file is still a stub.
    send_signal(d.pid(), libc::SIGKILL);
    let _ = d.finish(Duration::from_secs(30));
    let (st, out) = r.finish(Duration::from_secs(30));
    assert!(
        st.success(),
        "the reader after the daemon died: {st:?}\n{}",
        r.stderr()
    );
    assert_eq!(out.len(), len, "the reader got {} bytes", out.len());
    assert!(
        out.iter().all(|&b| b == 0),
        "the reader got data, not the stub's holes: has the kernel changed?"
    );
    assert_eq!(states(&[&f]), ["staged_out"]);
}

#[test]
fn serve_sigterm_serves_the_pending_read_then_exits() {
    let _gate = suite_gate!();
    const T: &str = "serve_sigterm_serves_the_pending_read_then_exits";
    skip_unless_root!(
        T,
        "it loop-mounts ext4 and listens to fanotify pre-content events"
    );
    let e = env();
    let Some((_fs, mp)) = serve_fs(&e, T) else {
        return;
    };
    let tape = e.tmp.path().join("tape");
    let f = mp.join("slow.dat");
    let data = content(80, 4 << 20);
    std::fs::write(&f, &data).unwrap();
    release(&tape, "V1", 1, &[&f]);
    // 4 MiB at 500 ms per MiB: the recall is still going when SIGTERM comes.
    let mut d = start_serve(&e, &tape, &mp, &["--mib-latency-ms", "500"]);
    let mut r = cat(&e, &f, "reader");
    wait_until("the read in access.log", Duration::from_secs(20), || {
        accesses_of(&tape, &f).iter().any(|x| x[3] == "pre-access")
    });
    send_signal(d.pid(), libc::SIGTERM);
    let (st, _) = d.finish(Duration::from_secs(60));
    assert_eq!(
        st.code(),
        Some(0),
        "serve after SIGTERM: {st:?}\n{}",
        d.stderr()
    );
    let (st, out) = r.finish(Duration::from_secs(30));
    assert!(st.success(), "{}", r.stderr());
    assert!(out == data, "the pending read did not get the data");
    assert_eq!(states(&[&f]), ["premigrated"]);
}

#[test]
fn serve_refuses_filesystems_it_cannot_serve() {
    let _gate = suite_gate!();
    const T: &str = "serve_refuses_filesystems_it_cannot_serve";
    skip_unless_root!(T, "it mounts a tmpfs");
    let e = env();
    let tape = e.tmp.path().join("tape");
    std::fs::create_dir(&tape).unwrap();
    let serve = |mp: &Path| {
        sim(
            [
                "serve".as_ref(),
                "--tape".as_ref(),
                os(&tape),
                "--mount".as_ref(),
                os(mp),
            ],
            None,
        )
    };
    // A directory that is not a mount point, and the root filesystem.
    let out = serve(&e.src);
    out.expect(1, "serve on a plain directory");
    assert!(
        out.stderr_str().contains("not a mount point"),
        "{}",
        out.dump()
    );
    let out = serve(Path::new("/"));
    out.expect(1, "serve on /");
    assert!(
        out.stderr_str().contains("root filesystem"),
        "{}",
        out.dump()
    );
    // tmpfs has no pre-content events (Linux 6.14 to 6.18 at least).
    let mp = e.tmp.path().join("tmpfs");
    let _fs = match tmpfs(&mp, "4m") {
        Ok(m) => m,
        Err(m) => skip!(T, "cannot mount a tmpfs: {m}"),
    };
    if pre_content(&mp).is_ok() {
        skip!(T, "this kernel has pre-content events on tmpfs");
    }
    let out = serve(&mp);
    out.expect(1, "serve on a tmpfs");
    let err = out.stderr_str();
    assert!(
        err.contains("pre-content events are unavailable")
            && err.contains("the tmpfs filesystem there does not support pre-content events"),
        "the message does not say why: {}",
        out.dump()
    );
}
