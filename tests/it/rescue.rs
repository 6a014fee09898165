//! `evac rescue`: real processes hold files under SOURCE that are then deleted (open for
//! reading, for reading and writing, twice in one process, in two processes, mapped with the fd
//! closed, a running program), and the real binary copies each out once, with its content, holes,
//! mode, owner and times, and a manifest naming every holder. What must not be rescued (a
//! deleted file nobody holds, a held file that still has its name, a held deleted file outside
//! SOURCE) is not. The holders are asked afterwards to read through their own fds: they are alive,
//! their fds work, and no signal reached them. An original evac swapped out while a user held it is
//! named by the journal. DIR inside SOURCE is refused (exit 1); a file that cannot be copied
//! (DIR full) makes the exit 3 and leaves no half copy.

use crate::common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A holder process (python3): takes hold of files as told, says `ready`, then waits on its
/// stdin. Told `check`, it reads every file back through its own fds or mappings, prints their
/// sha256 and the signals it received (a handler records every catchable one), and exits 0.
const HOLDER: &str = r#"
import ctypes, hashlib, mmap, os, signal, sys
libc = ctypes.CDLL(None)
got = []
for s in signal.valid_signals():
    if s in (signal.SIGKILL, signal.SIGSTOP):
        continue
    try:
        signal.signal(s, lambda n, f: got.append(int(n)))
    except (OSError, ValueError, RuntimeError):
        pass
held = []
for spec in sys.argv[1:]:
    how, path = spec.split(":", 1)
    path = os.fsencode(path)
    if how == "r":
        held.append(("fd", os.open(path, os.O_RDONLY)))
    elif how == "rw":
        held.append(("fd", os.open(path, os.O_RDWR)))
    elif how == "r2":
        held.append(("fd", os.open(path, os.O_RDONLY)))
        held.append(("fd", os.open(path, os.O_RDONLY)))
    elif how == "map":
        # libc's mmap, not the mmap module (which keeps a dup of the fd): once the fd is
        # closed, the mapping alone holds the file.
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        os.close(fd)
        held.append(("map", (addr, size)))
sys.stdout.write("ready\n")
sys.stdout.flush()
line = sys.stdin.readline()
if line.strip() != "check":
    sys.exit(2)
for kind, h in held:
    if kind == "fd":
        size = os.fstat(h).st_size
        data = os.pread(h, size, 0) if size else b""
    else:
        data = ctypes.string_at(h[0], h[1])
    sys.stdout.write("sha256 %s\n" % hashlib.sha256(data).hexdigest())
sys.stdout.write("signals %s\n" % ",".join(map(str, got)))
sys.stdout.flush()
"#;

struct Py {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Py {
    /// Start a holder with `specs` (`r:PATH`, `rw:PATH`, `r2:PATH`, `map:PATH`), once it
    /// holds them all.
    fn hold(specs: &[(&str, &Path)]) -> Py {
        let args: Vec<OsString> = specs
            .iter()
            .map(|(how, p)| {
                let mut a = OsString::from(format!("{how}:"));
                a.push(p.as_os_str());
                a
            })
            .collect();
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HOLDER)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("holder output");
        assert_eq!(line, "ready\n", "the holder did not start");
        Py {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Ask it to read everything back: (sha256 of each held file, signals received).
    fn check(mut self) -> (Vec<String>, String) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"check\n").expect("tell the holder");
        drop(stdin);
        let mut sums = Vec::new();
        let mut signals = None;
        for line in (&mut self.stdout).lines() {
            let line = line.expect("holder output");
            if let Some(s) = line.strip_prefix("sha256 ") {
                sums.push(s.to_string());
            } else if let Some(s) = line.strip_prefix("signals ") {
                signals = Some(s.to_string());
            }
        }
        let st = self.child.wait().expect("wait holder");
        assert!(st.success(), "holder exited with {st:?}");
        (sums, signals.expect("the holder reported its signals"))
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_python() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("import mmap")
        .status()
        .is_ok_and(|s| s.success())
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rescue(src: &Path, to: &Path, extra: &[&OsStr]) -> Out {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("rescue"),
        src.as_os_str(),
        OsStr::new("--to"),
        to.as_os_str(),
    ];
    args.extend_from_slice(extra);
    evac(args)
}

/// One manifest line, by column name.
type Row = BTreeMap<String, String>;

#[track_caller]
fn rows(tsv: &str, o: &Out) -> Vec<Row> {
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().expect("a header line").split('\t').collect();
    assert_eq!(
        header,
        [
            "result",
            "pid",
            "command",
            "what",
            "via",
            "path",
            "rescued_as",
            "size",
            "blake3",
            "evac_temp",
            "original",
            "note"
        ],
        "{}",
        o.dump()
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), header.len(), "line {l:?}\n{}", o.dump());
            header
                .iter()
                .zip(f)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Set mode and nanosecond times (and owner, as root) so the copy's metadata can be compared.
fn dress(p: &Path, mode: u32, mtime: (i64, i64), owner: Option<(u32, u32)>) {
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: mtime.0 - 1000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) },
        0
    );
}

#[test]
fn held_deleted_files_are_rescued_once_with_content_metadata_and_a_manifest() {
    let _gate = suite_gate!();
    if !have_python() {
        skip!(
            "held_deleted_files_are_rescued_once_with_content_metadata_and_a_manifest",
            "python3 (with mmap) is not installed; the holder processes are python3"
        );
    }
    let e = env();
    let root = is_root();
    let owner = root.then_some((1234, 4321));
    let to = e.tmp.path().join("rescued");

    // What is held and then deleted, and what it should come back as.
    let report = e.src.join("docs/report.txt");
    let report_data = content(1, 70_000);
    write(&report, &report_data);
    dress(&report, 0o640, (1_600_000_000, 123_456_789), owner);
    let shared = e.src.join("db/shared.db");
    let shared_data = content(2, 5000);
    write(&shared, &shared_data);
    dress(&shared, 0o600, (1_500_000_000, 1), owner);
    let weird_rel: &[u8] = b"odd\tdir/we\nird \xff name";
    let weird = path_of(&e.src, weird_rel);
    let weird_data = b"a name with a newline\n".to_vec();
    write(&weird, &weird_data);
    dress(&weird, 0o4755, (1_400_000_000, 999_999_999), owner);
    // Sparse: 8 MiB with data at 1 MiB and at the end.
    let sparse = e.src.join("vm/disk.img");
    std::fs::create_dir_all(sparse.parent().unwrap()).unwrap();
    {
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&content(3, 65536), 1 << 20).unwrap();
        f.write_all_at(b"tail", (8 << 20) - 4).unwrap();
    }
    let sparse_data = std::fs::read(&sparse).unwrap();
    let mapped = e.src.join("lib/mapped.bin");
    let mapped_data = content(4, 10_000);
    write(&mapped, &mapped_data);

    // What must not be rescued.
    let kept = e.src.join("still/here.txt");
    write(&kept, b"held but not deleted\n");
    let unheld = e.src.join("gone/nobody.txt");
    write(&unheld, b"deleted, held by nobody\n");
    let outside = e.tmp.path().join("outside.txt");
    write(&outside, b"held and deleted, but not in SOURCE\n");

    let mut a = Py::hold(&[
        ("r", &report),
        ("r", &sparse),
        ("r", &kept),
        ("r", &outside),
    ]);
    let mut b = Py::hold(&[("r2", &shared)]);
    let mut c = Py::hold(&[("rw", &shared), ("rw", &weird)]);
    let mut m = root.then(|| Py::hold(&[("map", &mapped)]));
    if !root {
        eprintln!(
            "note: not root: /proc/PID/map_files cannot be opened; the mapped-file and running-program cases are not run"
        );
    }
    std::fs::create_dir_all(e.src.join("bin")).unwrap();
    let exe = e.src.join("bin/sleep");
    // A program is read back through its mapping (map_files), never through /proc/PID/exe.
    let x = Holder::run_executable(&exe);
    let exe_data = std::fs::read(&exe).unwrap();
    for p in [
        &report, &shared, &weird, &sparse, &mapped, &unheld, &outside, &exe,
    ] {
        std::fs::remove_file(p).unwrap();
    }

    let o = rescue(&e.src, &to, &[]);
    o.expect(if root { 0 } else { 3 }, "rescue");
    let rs = rows(&o.stdout_str(), &o);
    let manifest = std::fs::read_to_string(to.join("evac-rescue.tsv")).expect("manifest in DIR");
    assert_eq!(
        manifest,
        o.stdout_str(),
        "the manifest in DIR is what was printed"
    );

    // Each deleted, held file under SOURCE exactly once as `rescued`; its other holders as
    // `same-file`, pointing at the same copy.
    let mut want: Vec<(Vec<u8>, Vec<u8>, Option<u32>)> = vec![
        (
            b"docs/report.txt".to_vec(),
            report_data.clone(),
            Some(0o640),
        ),
        (b"db/shared.db".to_vec(), shared_data.clone(), Some(0o600)),
        (weird_rel.to_vec(), weird_data.clone(), Some(0o4755)),
        (b"vm/disk.img".to_vec(), sparse_data.clone(), None),
    ];
    if root {
        want.push((b"lib/mapped.bin".to_vec(), mapped_data.clone(), None));
        want.push((b"bin/sleep".to_vec(), exe_data.clone(), None));
    }
    let rescued: Vec<&Row> = rs.iter().filter(|r| r["result"] == "rescued").collect();
    assert_eq!(rescued.len(), want.len(), "{}", o.dump());
    // Not root: the program (map_files is closed to us) is the one failure, and it says why.
    assert!(
        rs.iter().all(|r| r["result"] != "failed"
            || (!root && r["path"] == "bin/sleep" && r["note"].contains("map_files"))),
        "{}",
        o.dump()
    );
    for (rel, data, mode) in &want {
        let r = rescued
            .iter()
            .find(|r| r["path"] == esc(rel))
            .unwrap_or_else(|| panic!("{} not rescued\n{}", esc(rel), o.dump()));
        let mut as_ = rel.clone();
        as_.extend_from_slice(b".rescued");
        assert_eq!(r["rescued_as"], esc(&as_), "{}", o.dump());
        let copy = path_of(&to, &as_);
        assert_eq!(
            &std::fs::read(&copy).unwrap(),
            data,
            "content of {}",
            esc(rel)
        );
        assert_eq!(r["size"], data.len().to_string());
        assert_eq!(r["blake3"], blake3::hash(data).to_hex().to_string());
        assert_eq!(r["evac_temp"], "-");
        let md = std::fs::metadata(&copy).unwrap();
        if let Some(mode) = mode {
            assert_eq!(md.mode() & 0o7777, *mode, "mode of {}", esc(rel));
            if let Some((u, g)) = owner {
                assert_eq!((md.uid(), md.gid()), (u, g), "owner of {}", esc(rel));
            }
        }
    }
    // Times to the nanosecond, and holes kept.
    let t = |rel: &str| std::fs::metadata(to.join(rel)).unwrap();
    assert_eq!(
        (
            t("docs/report.txt.rescued").mtime(),
            t("docs/report.txt.rescued").mtime_nsec()
        ),
        (1_600_000_000, 123_456_789)
    );
    assert_eq!(
        (
            t("db/shared.db.rescued").mtime(),
            t("db/shared.db.rescued").mtime_nsec()
        ),
        (1_500_000_000, 1)
    );
    let sp = t("vm/disk.img.rescued");
    assert_eq!(sp.len(), 8 << 20);
    assert!(
        sp.blocks() * 512 < 1 << 20,
        "holes kept: {} bytes allocated for 8 MiB with 64 KiB of data",
        sp.blocks() * 512
    );

    // Holders: the shared file's three holdings (two fds in b, collapsed as holders shows them,
    // and c's) are one rescue and name their pids and fds.
    let shared_rows: Vec<&Row> = rs.iter().filter(|r| r["path"] == "db/shared.db").collect();
    let pids: std::collections::BTreeSet<u32> = shared_rows
        .iter()
        .map(|r| r["pid"].parse().unwrap())
        .collect();
    assert_eq!(pids, [b.pid(), c.pid()].into(), "{}", o.dump());
    assert_eq!(
        shared_rows
            .iter()
            .filter(|r| r["result"] == "rescued")
            .count(),
        1
    );
    for r in &shared_rows {
        assert_eq!(r["rescued_as"], "db/shared.db.rescued");
        let pid: u32 = r["pid"].parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(r["command"], comm.trim_end());
        assert!(r["via"].starts_with("fd/"), "{r:?}");
        assert!(r["what"].starts_with("open r"), "{r:?}");
    }
    if root {
        let exe_row = rescued.iter().find(|r| r["path"] == "bin/sleep").unwrap();
        assert!(exe_row["via"].starts_with("map_files/"), "{exe_row:?}");
        assert_eq!(exe_row["what"], "exe");
        assert_eq!(exe_row["pid"], x.pid().to_string());
        let mrow = rescued
            .iter()
            .find(|r| r["path"] == "lib/mapped.bin")
            .unwrap();
        assert!(mrow["via"].starts_with("map_files/"), "{mrow:?}");
        assert_eq!(mrow["what"], "mmap");
    }
    // Not rescued: held but not deleted, deleted but not held, outside SOURCE.
    for r in &rs {
        assert!(
            !["still/here.txt", "gone/nobody.txt"].contains(&r["path"].as_str())
                && !r["path"].contains("outside"),
            "{r:?}"
        );
    }
    let mut in_dir = Vec::new();
    collect_files(&to, b"", &mut in_dir);
    assert_eq!(
        in_dir.len(),
        want.len() + 1,
        "only the rescued files and the manifest: {in_dir:?}"
    );

    // The holders were left alone: alive, their fds and mappings read the same data as before,
    // and no signal reached them.
    assert!(a.alive() && b.alive() && c.alive());
    let (sums, sigs) = a.check();
    assert_eq!(sums[0], sha256(&report_data));
    assert_eq!(sums[1], sha256(&sparse_data));
    assert_eq!(sigs, "", "signals received by a holder");
    let (sums, sigs) = b.check();
    assert_eq!(sums, vec![sha256(&shared_data); 2]);
    assert_eq!(sigs, "");
    let (sums, sigs) = c.check();
    assert_eq!(sums, vec![sha256(&shared_data), sha256(&weird_data)]);
    assert_eq!(sigs, "");
    if let Some(mut m) = m.take() {
        assert!(m.alive());
        let (sums, sigs) = m.check();
        assert_eq!(sums, vec![sha256(&mapped_data)]);
        assert_eq!(sigs, "");
    }
    drop(x);
}

#[test]
fn a_second_rescue_overwrites_nothing_and_json_says_the_same() {
    let _gate = suite_gate!();
    if !have_python() {
        skip!(
            "a_second_rescue_overwrites_nothing_and_json_says_the_same",
            "python3 is not installed; the holder processes are python3"
        );
    }
    let e = env();
    let to = e.tmp.path().join("out");
    let f = e.src.join("notes.txt");
    write(&f, b"version one\n");
    let h = Py::hold(&[("r", &f)]);
    std::fs::remove_file(&f).unwrap();
    // Something already in DIR under the name the rescue would take, and a manifest.
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("notes.txt.rescued"), b"the operator's own file\n").unwrap();
    std::fs::write(to.join("evac-rescue.json"), b"{}").unwrap();

    let o = rescue(&e.src, &to, &[OsStr::new("--json")]);
    o.expect(0, "rescue --json");
    let j = json::parse(o.stdout_str().trim()).unwrap_or_else(|err| panic!("{err}\n{}", o.dump()));
    assert_eq!(j.get("rescued").and_then(|v| v.as_i64()), Some(1));
    assert_eq!(j.get("failed").and_then(|v| v.as_i64()), Some(0));
    let files = j.get("files").and_then(|v| v.as_array()).unwrap();
    assert_eq!(files.len(), 1);
    let s = |k: &str| files[0].get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(s("path").as_deref(), Some("notes.txt"));
    assert_eq!(s("rescued_as").as_deref(), Some("notes.txt.rescued-2"));
    assert_eq!(files[0].get("size").and_then(|v| v.as_i64()), Some(12));
    let holders = files[0].get("holders").and_then(|v| v.as_array()).unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(
        holders[0].get("pid").and_then(|v| v.as_i64()),
        Some(h.pid() as i64)
    );
    assert_eq!(holders[0].get("read").and_then(|v| v.as_bool()), Some(true));
    assert_eq!(
        std::fs::read(to.join("notes.txt.rescued")).unwrap(),
        b"the operator's own file\n"
    );
    assert_eq!(
        std::fs::read(to.join("notes.txt.rescued-2")).unwrap(),
        b"version one\n"
    );
    assert_eq!(std::fs::read(to.join("evac-rescue.json")).unwrap(), b"{}");
    let m = std::fs::read_to_string(to.join("evac-rescue-2.json")).expect("manifest beside");
    assert_eq!(m, o.stdout_str());

    // Again: a third name, the earlier rescue untouched.
    let o = rescue(&e.src, &to, &[]);
    o.expect(0, "rescue again");
    assert!(
        o.stdout_str().contains("notes.txt.rescued-3"),
        "{}",
        o.dump()
    );
    assert_eq!(
        std::fs::read(to.join("notes.txt.rescued-2")).unwrap(),
        b"version one\n"
    );
    assert!(to.join("evac-rescue.tsv").exists());
    drop(h);

    // Nobody holds anything now: nothing to rescue is not an error.
    let o = rescue(&e.src, &to, &[]);
    o.expect(0, "rescue with nothing held");
    assert_eq!(rows(&o.stdout_str(), &o).len(), 0);
    assert!(o.stderr_str().contains("nothing to rescue"), "{}", o.dump());
}

#[test]
fn an_original_evac_swapped_out_is_named_through_the_journal() {
    let _gate = suite_gate!();
    if !have_python() {
        skip!(
            "an_original_evac_swapped_out_is_named_through_the_journal",
            "python3 is not installed; the holder processes are python3"
        );
    }
    let e = env();
    let to = e.tmp.path().join("saved");
    let rel: &[u8] = b"proj/old\nlog.txt";
    let f = path_of(&e.src, rel);
    let data = content(7, 3000);
    write(&f, &data);
    std::fs::write(e.src.join("other.txt"), b"x\n").unwrap();
    // A reader does not stop relocation: after the swap it holds the original, unlinked under
    // evac's temporary name.
    let h = Py::hold(&[("r", &f)]);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    assert!(std::fs::symlink_metadata(&f)
        .unwrap()
        .file_type()
        .is_symlink());
    let id: i64 = rusqlite::Connection::open(&e.journal)
        .unwrap()
        .query_row("SELECT id FROM files WHERE path = ?1", [rel], |r| r.get(0))
        .unwrap();

    let o = rescue(&e.src, &to, &[]);
    o.expect(0, "rescue without the journal");
    let rs = rows(&o.stdout_str(), &o);
    assert_eq!(rs.len(), 1, "{}", o.dump());
    let r = &rs[0];
    assert!(r["path"].starts_with("proj/.evac-") && r["path"].ends_with(&format!("-{id}.lnk")));
    assert!(r["evac_temp"].ends_with(&format!("-{id}")), "{r:?}");
    assert_eq!(r["original"], "-");
    assert!(r["note"].contains("--journal"), "{r:?}");
    let copy = to.join(&r["rescued_as"]);
    assert_eq!(std::fs::read(&copy).unwrap(), data);

    let o = rescue(
        &e.src,
        &to,
        &[OsStr::new("--journal"), e.journal.as_os_str()],
    );
    o.expect(0, "rescue with the journal");
    let rs = rows(&o.stdout_str(), &o);
    assert_eq!(rs[0]["original"], esc(rel), "{}", o.dump());
    assert_eq!(rs[0]["note"], "-");
    assert!(
        rs[0]["rescued_as"].ends_with(".lnk.rescued-2"),
        "{:?}",
        rs[0]
    );
    let o = rescue(
        &e.src,
        &to,
        &[
            OsStr::new("--journal"),
            e.journal.as_os_str(),
            OsStr::new("--json"),
        ],
    );
    o.expect(0, "rescue --json with the journal");
    let j = json::parse(o.stdout_str().trim()).unwrap();
    let ev = j.get("files").and_then(|f| f.as_array()).unwrap()[0]
        .get("evac_temp")
        .cloned()
        .unwrap();
    assert_eq!(ev.get("file_id").and_then(|v| v.as_i64()), Some(id));
    assert_eq!(
        ev.get("original").and_then(|v| v.as_str()),
        Some(esc(rel).as_str())
    );
    let (sums, sigs) = h.check();
    assert_eq!(sums, vec![sha256(&data)]);
    assert_eq!(sigs, "");
}

#[test]
fn dir_inside_source_and_bad_arguments_exit_1() {
    let _gate = suite_gate!();
    let e = env();
    std::fs::create_dir_all(e.src.join("sub")).unwrap();
    let inside = e.src.join("sub/rescued");
    let o = rescue(&e.src, &inside, &[]);
    o.expect(1, "DIR inside SOURCE");
    assert!(o.stderr_str().contains("inside SOURCE"), "{}", o.dump());
    assert!(!inside.exists(), "nothing created in SOURCE");
    // Through a symlink to SOURCE, and SOURCE itself.
    let alias = e.tmp.path().join("alias");
    std::os::unix::fs::symlink(&e.src, &alias).unwrap();
    rescue(&e.src, &alias.join("x"), &[]).expect(1, "DIR inside SOURCE through a symlink");
    assert!(!e.src.join("x").exists());
    rescue(&e.src, &e.src, &[]).expect(1, "DIR is SOURCE");
    // A missing SOURCE is named, escaped.
    let missing = e.tmp.path().join(OsStr::from_bytes(b"no\nsuch"));
    let o = rescue(&missing, &e.tmp.path().join("out"), &[]);
    o.expect(1, "missing SOURCE");
    assert!(o.stderr_str().contains("no\\nsuch"), "{}", o.dump());
    let o = rescue(
        &e.src,
        &e.tmp.path().join("out"),
        &[
            OsStr::new("--journal"),
            e.tmp.path().join("none.db").as_os_str(),
        ],
    );
    o.expect(1, "missing journal");
    evac(["rescue", "/tmp"]).expect(1, "rescue without --to");
}

#[test]
fn a_file_that_cannot_be_copied_exits_3_and_leaves_no_half_copy() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "a_file_that_cannot_be_copied_exits_3_and_leaves_no_half_copy",
        "it mounts a small tmpfs for DIR"
    );
    if !have_python() {
        skip!(
            "a_file_that_cannot_be_copied_exits_3_and_leaves_no_half_copy",
            "python3 is not installed; the holder processes are python3"
        );
    }
    let e = env();
    let mp = e.tmp.path().join("small");
    let _m = match mounts::tmpfs(&mp, "1m") {
        Ok(m) => m,
        Err(err) => skip!(
            "a_file_that_cannot_be_copied_exits_3_and_leaves_no_half_copy",
            "cannot mount a tmpfs: {err}"
        ),
    };
    let big = e.src.join("big.bin");
    let big_data = content(8, 3 << 20);
    write(&big, &big_data);
    let small = e.src.join("small.txt");
    write(&small, b"fits\n");
    let h = Py::hold(&[("r", &big), ("r", &small)]);
    std::fs::remove_file(&big).unwrap();
    std::fs::remove_file(&small).unwrap();
    let o = rescue(&e.src, &mp, &[]);
    o.expect(3, "rescue into a DIR too small");
    let rs = rows(&o.stdout_str(), &o);
    let by = |p: &str| rs.iter().find(|r| r["path"] == p).unwrap().clone();
    assert_eq!(by("small.txt")["result"], "rescued");
    let b = by("big.bin");
    assert_eq!(b["result"], "failed");
    assert!(
        b["note"].contains("write rescued copy") && b["note"].contains("big.bin"),
        "{b:?}"
    );
    assert_eq!(b["rescued_as"], "-");
    assert!(!mp.join("big.bin.rescued").exists(), "no half copy left");
    assert_eq!(
        std::fs::read(mp.join("small.txt.rescued")).unwrap(),
        b"fits\n"
    );
    assert!(
        o.stderr_str().contains("could not rescue \"big.bin\""),
        "{}",
        o.dump()
    );
    let (sums, sigs) = h.check();
    assert_eq!(sums[0], sha256(&big_data));
    assert_eq!(sigs, "");
}

/// Every non-directory under `dir`, relative.
fn collect_files(dir: &Path, rel: &[u8], out: &mut Vec<Vec<u8>>) {
    for ent in std::fs::read_dir(path_of(dir, rel)).unwrap() {
        let ent = ent.unwrap();
        let name = ent.file_name();
        let r = join_rel(rel, name.as_bytes());
        if ent.file_type().unwrap().is_dir() {
            collect_files(dir, &r, out);
        } else {
            out.push(r);
        }
    }
}
