//! `evac holders`: real processes using SOURCE in each way /proc shows (a file open for reading,
//! for writing, for both; a working directory; a program run from SOURCE; a mapped library; a
//! chroot), checked against the real binary's output in its three forms; what must not count
//! (the copy a relocated file's link leads to, look-alike paths, a file reached through a
//! symlink out of SOURCE, evac itself); exit codes 0/3/1. And the holders named in the reason of
//! a file deferred because it is busy (lease refused, write lease held, no-lease /proc scan).

use crate::common::*;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One line of `evac holders`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    pid: u32,
    user: String,
    command: String,
    what: String,
    path: String,
}

fn holders(src: &Path, extra: &[&str]) -> Out {
    let mut args: Vec<OsString> = vec!["holders".into(), src.into()];
    args.extend(extra.iter().map(OsString::from));
    evac(args)
}

/// The tab-separated lines (pid, user, command, what, path), each checked for its shape.
#[track_caller]
fn lines(o: &Out) -> Vec<Line> {
    o.stdout_str()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(
                f.len(),
                5,
                "not 5 tab-separated fields: {l:?}\n{}",
                o.dump()
            );
            Line {
                pid: f[0]
                    .parse()
                    .unwrap_or_else(|_| panic!("no pid in {l:?}\n{}", o.dump())),
                user: f[1].into(),
                command: f[2].into(),
                what: f[3].into(),
                path: f[4].into(),
            }
        })
        .collect()
}

/// (pid, what, escaped path) of each line.
fn uses(ls: &[Line]) -> BTreeSet<(u32, String, String)> {
    ls.iter()
        .map(|l| (l.pid, l.what.clone(), l.path.clone()))
        .collect()
}

fn my_user() -> String {
    let o = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The directory this test's own libc was loaded from (where libm is found too).
fn libdir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next() == Some("libc.so.6"))?;
    Some(Path::new(libc).parent()?.to_path_buf())
}

fn write_file(root: &Path, rel: &[u8], data: &[u8]) -> PathBuf {
    if let Some(i) = rel.iter().rposition(|&b| b == b'/') {
        mkdirs_rel(root, &rel[..i], 0o755).unwrap();
    }
    let p = path_of(root, rel);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn every_kind_of_use_is_listed_with_its_pid_and_mode() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(10, 1101));
    let wrel: &[u8] = b"logs/busy\nlog \xff.txt";
    let w = Holder::hold_for_write(&write_file(&e.src, wrel, b"log\n"));
    let r = Holder::hold_for_read(&write_file(&e.src, b"data/read-me.txt", b"text\n"));
    let rw = Holder::hold_read_write(&write_file(&e.src, b"data/db", b"rows\n"));
    std::fs::create_dir_all(e.src.join("home/alice")).unwrap();
    let cwd = Holder::in_dir(&e.src.join("home/alice"));
    std::fs::create_dir(e.src.join("bin")).unwrap();
    let x = Holder::run_executable(&e.src.join("bin/sleep"));
    let mut want: BTreeSet<(u32, String, String)> = [
        (w.pid(), "open w", esc(wrel)),
        (r.pid(), "open r", "data/read-me.txt".into()),
        (rw.pid(), "open rw", "data/db".into()),
        (cwd.pid(), "cwd", "home/alice".into()),
        (x.pid(), "exe", "bin/sleep".into()),
    ]
    .into_iter()
    .map(|(p, w, path)| (p, w.to_string(), path))
    .collect();
    let mut raw: BTreeSet<Vec<u8>> = [
        wrel,
        b"data/read-me.txt",
        b"data/db",
        b"home/alice",
        b"bin/sleep",
    ]
    .into_iter()
    .map(<[u8]>::to_vec)
    .collect();
    let mut holders_ = vec![w, r, rw, cwd, x];
    match libdir().map(|d| d.join("libm.so.6")).filter(|p| p.exists()) {
        Some(libm) => {
            std::fs::create_dir(e.src.join("lib")).unwrap();
            let copy = e.src.join("lib/libm.so.6");
            std::fs::copy(&libm, &copy).unwrap();
            let m = Holder::map_library(&copy);
            want.insert((m.pid(), "mmap".into(), "lib/libm.so.6".into()));
            raw.insert(b"lib/libm.so.6".to_vec());
            holders_.push(m);
        }
        None => eprintln!("note: no libm.so.6 beside this test's libc; mapped-file case not run"),
    }

    let o = holders(&e.src, &[]);
    o.expect(3, "holders with processes using SOURCE");
    let ls = lines(&o);
    // Exactly these: the processes' other fds, maps and dirs are elsewhere, and the running
    // copy of sleep is listed as exe only (its mappings of itself are not repeated).
    assert_eq!(uses(&ls), want, "\n{}", o.dump());
    let me = my_user();
    for l in &ls {
        assert_eq!(l.command, "sleep", "{l:?}");
        assert_eq!(l.user, me, "{l:?}");
    }
    assert!(
        o.stderr_str()
            .contains(&format!("{} processes use", want.len())),
        "{}",
        o.dump()
    );

    // --json: one array, an object per line, the same facts.
    let o = holders(&e.src, &["--json"]);
    o.expect(3, "holders --json");
    let j = json::parse(o.stdout_str().trim())
        .unwrap_or_else(|err| panic!("invalid JSON ({err})\n{}", o.dump()));
    let items = j.as_array().expect("an array");
    let mut got = BTreeSet::new();
    for it in items {
        let s = |k: &str| it.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let what = match s("mode") {
            Some(m) => format!("{} {m}", s("what").unwrap()),
            None => s("what").expect("what"),
        };
        let pid = it.get("pid").and_then(|v| v.as_i64()).expect("pid") as u32;
        got.insert((pid, what, s("path").expect("path")));
        assert_eq!(s("command").as_deref(), Some("sleep"), "{it:?}");
        assert_eq!(s("user"), Some(me.clone()), "{it:?}");
        assert_eq!(it.get("deleted").and_then(|v| v.as_bool()), Some(false));
        let argv0 = it
            .get("cmdline")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .map(str::to_string);
        assert!(argv0.is_some_and(|a| a.ends_with("sleep")), "{it:?}");
    }
    assert_eq!(got, want, "holders --json\n{}", o.dump());

    // -0: each held path once, raw.
    let o = holders(&e.src, &["-0"]);
    o.expect(3, "holders -0");
    let listed: Vec<Vec<u8>> = o
        .stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(listed.len(), raw.len(), "each path once: {listed:?}");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), raw);

    // Released: nobody holds SOURCE.
    drop(holders_);
    let o = holders(&e.src, &[]);
    o.expect(0, "holders once released");
    assert_eq!(o.stdout_str(), "", "{}", o.dump());
    assert!(o.stderr_str().contains("no process uses"), "{}", o.dump());
    let o = holders(&e.src, &["--json"]);
    o.expect(0, "holders --json once released");
    assert_eq!(o.stdout_str().trim(), "[]");
}

#[test]
fn look_alike_paths_files_outside_and_evac_itself_do_not_count() {
    let _gate = suite_gate!();
    let e = env();
    let top = e.tmp.path();
    // A sibling whose name starts like SOURCE's, on the same filesystem.
    let sibling = write_file(top, b"src-old/file", b"x");
    let _s = Holder::hold_for_write(&sibling);
    // A file outside SOURCE, opened through a symlink inside it.
    let outside = write_file(top, b"outside/target", b"y");
    std::os::unix::fs::symlink(&outside, e.src.join("link")).unwrap();
    let _o = Holder::hold_for_write(&e.src.join("link"));
    // evac's own working directory inside SOURCE.
    std::fs::create_dir(e.src.join("here")).unwrap();
    let o = Command::new(evac_bin())
        .arg("holders")
        .arg(&e.src)
        .current_dir(e.src.join("here"))
        .stdin(Stdio::null())
        .output()
        .expect("run evac");
    assert_eq!(
        o.status.code(),
        Some(0),
        "nothing under SOURCE is held: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());

    // Control: a holder inside is seen, also when SOURCE is named through a symlink.
    let inside = write_file(&e.src, b"in/file", b"z");
    let h = Holder::hold_for_write(&inside);
    let alias = top.join("alias");
    std::os::unix::fs::symlink(&e.src, &alias).unwrap();
    let o = holders(&alias, &[]);
    o.expect(3, "holders through an alias of SOURCE");
    let want: BTreeSet<_> = [(h.pid(), "open w".to_string(), "in/file".to_string())].into();
    assert_eq!(uses(&lines(&o)), want, "{}", o.dump());
}

#[test]
fn a_relocated_files_copy_is_not_held_but_an_old_original_is() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 1102));
    std::fs::write(e.src.join("doc.txt"), b"document\n").unwrap();
    std::fs::write(e.src.join("old.txt"), b"read since before the run\n").unwrap();
    // A reader does not stop relocation; it keeps the original inode after the swap.
    let reader = Holder::hold_for_read(&e.src.join("old.txt"));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    assert!(std::fs::symlink_metadata(e.src.join("doc.txt"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Opened through the link: the fd is the copy at DEST, not a holder of SOURCE.
    let writer = Holder::hold_for_write(&e.src.join("doc.txt"));
    let o = holders(&e.src, &[]);
    o.expect(3, "holders of SOURCE: only the old reader");
    // The kernel names an unlinked file by its last name: the temporary the original was
    // swapped to, which carries the journal's file id.
    let id: i64 = rusqlite::Connection::open(&e.journal)
        .unwrap()
        .query_row(
            "SELECT id FROM files WHERE path = CAST('old.txt' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let ls = lines(&o);
    assert_eq!(ls.len(), 1, "{}", o.dump());
    assert_eq!(ls[0].pid, reader.pid(), "{}", o.dump());
    assert_eq!(ls[0].what, "open r (deleted)", "{}", o.dump());
    assert!(
        ls[0].path.starts_with(".evac-") && ls[0].path.ends_with(&format!("-{id}.lnk")),
        "{}",
        o.dump()
    );
    let o = holders(&e.src, &["--json"]);
    assert!(o.stdout_str().contains("\"deleted\":true"), "{}", o.dump());

    drop(reader);
    holders(&e.src, &[]).expect(0, "holders of SOURCE once the old reader is gone");
    // Control: the writer is where the copy is.
    let o = holders(&e.dst, &[]);
    o.expect(3, "holders of DEST");
    let want: BTreeSet<_> = [(writer.pid(), "open w".to_string(), "doc.txt".to_string())].into();
    assert_eq!(uses(&lines(&o)), want, "{}", o.dump());
}

#[test]
fn errors_exit_1_and_name_the_path() {
    let _gate = suite_gate!();
    let e = env();
    let missing = e.tmp.path().join(OsStr::from_bytes(b"no\nsuch"));
    let o = holders(&missing, &[]);
    o.expect(1, "holders of a missing SOURCE");
    assert!(
        o.stderr_str()
            .contains(&esc(missing.as_os_str().as_bytes())),
        "the message names the path, escaped\n{}",
        o.dump()
    );
    let file = e.tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let o = holders(&file, &[]);
    o.expect(1, "holders of a regular file");
    let text = o.stderr_str();
    assert!(
        text.contains("not a directory") && text.contains(&esc(file.as_os_str().as_bytes())),
        "{}",
        o.dump()
    );
    holders(&e.src, &["--json", "-0"]).expect(1, "--json with -0");
    evac(["holders"]).expect(1, "holders without SOURCE");
    holders(&e.src, &[]).expect(0, "holders of an unused SOURCE");
}

#[test]
fn a_chrooted_process_is_listed() {
    let _gate = suite_gate!();
    skip_unless_root!("a_chrooted_process_is_listed", "it calls chroot(2)");
    let e = env();
    let jail = e.src.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let mut child = Command::new("perl")
        .arg("-e")
        .arg("chroot($ARGV[0]) or die \"chroot: $!\"; chdir('/'); sleep 600")
        .arg(&jail)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn perl");
    let pid = child.id();
    let root = format!("/proc/{pid}/root");
    wait_until("the process to chroot", Duration::from_secs(20), || {
        same_file(Path::new(&root), &jail)
    });
    let o = holders(&e.src, &[]);
    let _ = child.kill();
    let _ = child.wait();
    o.expect(3, "holders with a chrooted process");
    let got = uses(&lines(&o));
    assert!(
        got.contains(&(pid, "root".into(), "jail".into()))
            && got.contains(&(pid, "cwd".into(), "jail".into())),
        "{}",
        o.dump()
    );
}

/// `status --list deferred` as (escaped path, reason) pairs.
fn deferred_reasons(journal: &Path) -> Vec<(String, String)> {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new("deferred"),
    ]);
    o.expect(0, "status --list deferred");
    o.stdout_str()
        .lines()
        .map(|l| {
            let (p, r) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("no reason on {l:?}\n{}", o.dump()));
            (p.to_string(), r.to_string())
        })
        .collect()
}

#[test]
fn a_file_deferred_because_it_is_busy_names_its_holders() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 1103));
    let a = write_file(&e.src, b"shared\tlog", b"a\n");
    let b = write_file(&e.src, b"t/own.log", b"b\n");
    let a1 = Holder::hold_for_write(&a);
    let a2 = Holder::hold_for_write(&a);
    let b1 = Holder::hold_for_write(&b);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "run with busy files");

    let listed = deferred_reasons(&e.journal);
    let reason_of = |p: &str| {
        listed
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{p} not deferred: {listed:?}"))
    };
    let ra = reason_of("shared\\tlog");
    let (p1, p2) = (a1.pid().min(a2.pid()), a1.pid().max(a2.pid()));
    assert_eq!(
        ra,
        format!("open for writing by another process (pid {p1} sleep, pid {p2} sleep)"),
        "{listed:?}"
    );
    assert_eq!(
        reason_of("t/own.log"),
        format!(
            "open for writing by another process (pid {} sleep)",
            b1.pid()
        )
    );
    assert_eq!(listed.len(), 2, "{listed:?}");

    // The summary counts one cause, whoever holds the files.
    let st = status(&e.journal);
    let reasons = st.get("reasons").and_then(|r| r.as_array()).unwrap();
    let busy: Vec<_> = reasons
        .iter()
        .filter(|r| r.get("state").and_then(|s| s.as_str()) == Some("deferred"))
        .map(|r| {
            (
                r.get("reason")
                    .and_then(|s| s.as_str())
                    .unwrap()
                    .to_string(),
                r.get("count").and_then(|c| c.as_i64()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        busy,
        vec![("open for writing by another process".to_string(), 2)],
        "{st:?}"
    );
    // Grouped by its cause, which the journal records as a word, not told from the text.
    assert!(
        reasons
            .iter()
            .filter(|r| r.get("state").and_then(|s| s.as_str()) == Some("deferred"))
            .all(|r| r.get("cause").and_then(|c| c.as_str()) == Some("busy")),
        "{st:?}"
    );
}

#[test]
fn without_leases_the_swap_time_scan_names_the_holder() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(20, 1104));
    let f = write_file(&e.src, b"held.log", b"line\n");
    let h = Holder::hold_for_write(&f);
    spawn_evac_env(
        run_args(&e.src, &e.dst, &e.journal, &[]),
        &[("EVAC_TEST_NO_LEASE", OsStr::new("1"))],
    )
    .wait()
    .expect(3, "run without leases, one file held open for writing");
    assert_eq!(
        deferred_reasons(&e.journal),
        vec![(
            "held.log".to_string(),
            format!(
                "open for writing by another process (pid {} sleep)",
                h.pid()
            )
        )]
    );
}

#[test]
fn a_file_under_another_programs_write_lease_names_it() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(10, 1105));
    let f = write_file(&e.src, b"leased.doc", b"held by a file server\n");
    // A file server's oplock: a write lease, whose break (SIGIO) it ignores, so that evac's
    // non-blocking open keeps being refused until the kernel's lease-break-time.
    let mut child = Command::new("perl")
        .arg("-e")
        .arg(
            "use Fcntl; $SIG{IO} = 'IGNORE'; open(my $f, '+<', $ARGV[0]) or die \"open: $!\"; \
             fcntl($f, 1024, F_WRLCK) or die \"F_SETLEASE: $!\"; sleep 600",
        )
        .arg(&f)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn perl");
    let pid = child.id();
    wait_until("the write lease", Duration::from_secs(20), || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|l| {
            l.lines().any(|l| {
                l.contains("LEASE") && l.split_whitespace().nth(4) == Some(&pid.to_string())
            })
        })
    });
    let out = evac_run(&e.src, &e.dst, &e.journal, &[]);
    let listed = deferred_reasons(&e.journal);
    let _ = child.kill();
    let _ = child.wait();
    out.expect(3, "run with a write-leased file");
    assert_eq!(
        listed,
        vec![(
            "leased.doc".to_string(),
            format!("leased for writing by another program (pid {pid} perl)")
        )]
    );
}

#[test]
fn a_file_on_another_filesystem_mounted_inside_source_does_not_count() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "a_file_on_another_filesystem_mounted_inside_source_does_not_count",
        "it mounts a tmpfs"
    );
    let e = env();
    let _m = match mounts::tmpfs(&e.src.join("mnt"), "1m") {
        Ok(m) => m,
        Err(err) => skip!(
            "a_file_on_another_filesystem_mounted_inside_source_does_not_count",
            "cannot mount a tmpfs: {err}"
        ),
    };
    // Named under SOURCE, but not on its device: evac never crosses into it either.
    let f = write_file(&e.src, b"mnt/elsewhere.log", b"x\n");
    let h = Holder::hold_for_write(&f);
    let o = holders(&e.src, &[]);
    o.expect(
        0,
        "holders with a file held on a filesystem mounted inside SOURCE",
    );
    // Control: the same holder is seen by the tree it is in.
    let o = holders(&e.src.join("mnt"), &[]);
    o.expect(3, "holders of the mounted filesystem");
    let want: BTreeSet<_> = [(h.pid(), "open w".to_string(), "elsewhere.log".to_string())].into();
    assert_eq!(uses(&lines(&o)), want, "{}", o.dump());
    drop(h);
}
