//! Damaged or unusable journals: a journal of another SOURCE/DEST, a truncated
//! journal, garbage written into the middle of one, a read-only journal (root:
//! `chattr +i`, and a read-only bind mount), a journal on a full filesystem
//! (root: a tiny tmpfs filled up).
//!
//! Oracle for each: exit 1, an error message naming the journal, and SOURCE and
//! DEST exactly as they were (full manifests: content, metadata, inodes, ctime).

use crate::common::mounts::*;
use crate::common::*;
use std::ffi::OsString;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn untouched(what: &str, before: &Manifest, root: &Path) {
    assert_no_problems(
        what,
        &diff_manifests(before, &Manifest::scan(root), DiffOpts::everything()),
    );
}

/// A journal with history: a run over 300 files with one file held open for
/// writing (exit 3, one deferred), then the holder released. A resumed run
/// would now have work to do (the deferred file), so "nothing changed" means
/// evac refused, not that it had nothing to do.
struct Prepared {
    e: Env,
    src_before: Manifest,
    dst_before: Manifest,
}

fn prepared(seed: u64) -> Prepared {
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            hardlinks: true,
            ..TreeSpec::plain(300, seed)
        },
    );
    let busy = e.src.join("t/busy.log");
    std::fs::write(&busy, b"held open for writing during the first run\n").unwrap();
    let h = Holder::hold_for_write(&busy);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "preparing run (one busy file)");
    h.release();
    let st = status(&e.journal);
    assert_eq!(count(&st, "deferred"), 1, "{st:?}");
    let wal = PathBuf::from(format!("{}-wal", e.journal.display()));
    eprintln!(
        "prepared journal: {} bytes; -wal present after the run: {}",
        std::fs::metadata(&e.journal).unwrap().len(),
        wal.exists()
    );
    let src_before = Manifest::scan(&e.src);
    let dst_before = Manifest::scan(&e.dst);
    Prepared {
        e,
        src_before,
        dst_before,
    }
}

/// Exit 1, the journal named in the message, SOURCE and DEST unchanged.
#[track_caller]
fn assert_refused(what: &str, out: &Out, journal: &Path, p: &[(&str, &Manifest, &Path)]) {
    let code = out.code();
    // Check the trees first: changed files are the worse defect.
    for (name, before, root) in p {
        untouched(&format!("{what}: {name} after the run"), before, root);
    }
    assert_eq!(
        code,
        1,
        "{what}: expected exit 1 (unusable journal), got {code}\n{}",
        out.dump()
    );
    let text = out.text();
    let jp = journal.to_str().unwrap();
    assert!(
        text.contains(jp),
        "{what}: the error message does not name the journal {jp}\n{}",
        out.dump()
    );
    figures(
        "journal_damage",
        &format!(
            "{what}: exit 1, SOURCE, DEST and the journal untouched: {}",
            out.stderr_str()
                .lines()
                .filter(|l| l.contains("error"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    );
}

fn resume_args(journal: &Path) -> Vec<OsString> {
    vec![
        "run".into(),
        "--journal".into(),
        journal.into(),
        "--quiet".into(),
    ]
}

// ---------------------------------------------------------------------------

#[test]
fn journal_of_another_source_is_refused() {
    let _gate = suite_gate!();
    // Journal J belongs to (src1, dst1), fully relocated.
    let e1 = env();
    build_tree(&e1.src, &TreeSpec::plain(40, 7001));
    evac_run(&e1.src, &e1.dst, &e1.journal, &[]).expect(0, "first tree");
    let s1 = Manifest::scan(&e1.src);
    let d1 = Manifest::scan(&e1.dst);
    let jbytes = std::fs::read(&e1.journal).unwrap();

    // Another tree, with an existing (empty) DEST.
    let e2 = env();
    build_tree(&e2.src, &TreeSpec::plain(40, 7002));
    std::fs::create_dir(&e2.dst).unwrap();
    let s2 = Manifest::scan(&e2.src);
    let d2 = Manifest::scan(&e2.dst);

    let j = &e1.journal;
    let cases: Vec<(&str, &Path, &Path)> = vec![
        ("other SOURCE, other DEST", &e2.src, &e2.dst),
        ("other SOURCE, same DEST", &e2.src, &e1.dst),
        ("same SOURCE, other DEST", &e1.src, &e2.dst),
    ];
    for (what, s, d) in cases {
        let out = evac_run(s, d, j, &[]);
        assert_refused(
            what,
            &out,
            j,
            &[
                ("src1", &s1, &e1.src),
                ("dst1", &d1, &e1.dst),
                ("src2", &s2, &e2.src),
                ("dst2", &d2, &e2.dst),
            ],
        );
    }
    // The refusals did not write into the journal's plan: resuming still works on its own tree.
    let now = std::fs::read(&e1.journal).unwrap();
    if now != jbytes {
        eprintln!(
            "note: the refused runs changed the journal file's bytes ({} -> {} bytes)",
            jbytes.len(),
            now.len()
        );
    }
    evac_resume(j, &[]).expect(0, "resume of the right tree after the refusals");
    untouched("src2 at the end", &s2, &e2.src);
    untouched("dst2 at the end", &d2, &e2.dst);
}

#[test]
fn truncated_journal_is_refused() {
    let _gate = suite_gate!();
    let p = prepared(7101);
    let j = &p.e.journal;
    let len = std::fs::metadata(j).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(j).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    eprintln!("truncated the journal from {len} to {} bytes", len / 2);
    let trees = [
        ("SOURCE", &p.src_before, p.e.src.as_path()),
        ("DEST", &p.dst_before, p.e.dst.as_path()),
    ];
    let out = evac(resume_args(j));
    assert_refused("resume from a truncated journal", &out, j, &trees);
    let out = evac_run(&p.e.src, &p.e.dst, j, &[]);
    assert_refused("run SOURCE DEST with a truncated journal", &out, j, &trees);
}

#[test]
fn garbage_in_the_middle_of_the_journal_is_refused() {
    let _gate = suite_gate!();
    let p = prepared(7201);
    let j = &p.e.journal;
    let len = std::fs::metadata(j).unwrap().len();
    let at = (len / 2) & !4095;
    let f = std::fs::OpenOptions::new().write(true).open(j).unwrap();
    f.write_all_at(&content(7202, 8192), at).unwrap();
    f.sync_all().unwrap();
    drop(f);
    eprintln!("wrote 8192 garbage bytes at offset {at} of the {len}-byte journal");
    let trees = [
        ("SOURCE", &p.src_before, p.e.src.as_path()),
        ("DEST", &p.dst_before, p.e.dst.as_path()),
    ];
    let out = evac(resume_args(j));
    assert_refused(
        "resume from a journal with garbage in the middle",
        &out,
        j,
        &trees,
    );
}

#[test]
fn garbage_over_the_journal_header_is_refused() {
    let _gate = suite_gate!();
    let p = prepared(7251);
    let j = &p.e.journal;
    let f = std::fs::OpenOptions::new().write(true).open(j).unwrap();
    f.write_all_at(&content(7252, 100), 0).unwrap();
    drop(f);
    let trees = [
        ("SOURCE", &p.src_before, p.e.src.as_path()),
        ("DEST", &p.dst_before, p.e.dst.as_path()),
    ];
    let out = evac(resume_args(j));
    assert_refused(
        "resume from a journal with a garbage header",
        &out,
        j,
        &trees,
    );
}

// ---------------------------------------------------------------------------
// Read-only journals (root: chmod alone does not stop root).
// ---------------------------------------------------------------------------

struct Immutable(PathBuf);
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn immutable_journal_is_refused() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "immutable_journal_is_refused",
        "chmod 0444 does not stop root; it uses chattr +i"
    );
    let p = prepared(7301);
    let j = &p.e.journal;
    std::fs::set_permissions(j, std::fs::Permissions::from_mode(0o444)).unwrap();
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(j)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        skip!(
            "immutable_journal_is_refused",
            "chattr +i failed on {}",
            j.display()
        );
    }
    let _guard = Immutable(j.clone());
    // Root really cannot write it now.
    assert!(
        std::fs::OpenOptions::new().write(true).open(j).is_err(),
        "chattr +i did not make the journal unwritable"
    );
    let trees = [
        ("SOURCE", &p.src_before, p.e.src.as_path()),
        ("DEST", &p.dst_before, p.e.dst.as_path()),
    ];
    let out = evac(resume_args(j));
    assert_refused(
        "resume from an immutable (0444, chattr +i) journal",
        &out,
        j,
        &trees,
    );
    let out = evac_run(&p.e.src, &p.e.dst, j, &[]);
    assert_refused("run SOURCE DEST with an immutable journal", &out, j, &trees);
}

#[test]
fn journal_on_read_only_mount_is_refused() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "journal_on_read_only_mount_is_refused",
        "it bind-mounts the journal's directory read-only"
    );
    let p = prepared(7401);
    // Move the journal into its own directory, then make that directory a read-only bind mount.
    let jd = p.e.tmp.path().join("jdir");
    std::fs::create_dir(&jd).unwrap();
    let j = jd.join("journal.db");
    std::fs::rename(&p.e.journal, &j).unwrap();
    let _ = std::fs::remove_file(format!("{}.lock", p.e.journal.display()));
    if let Err(m) = mount(&["--bind".as_ref(), jd.as_os_str(), jd.as_os_str()]) {
        skip!(
            "journal_on_read_only_mount_is_refused",
            "bind mount failed: {m}"
        );
    }
    let _guard = Mounted(jd.clone());
    if let Err(m) = mount(&["-o".as_ref(), "remount,bind,ro".as_ref(), jd.as_os_str()]) {
        skip!(
            "journal_on_read_only_mount_is_refused",
            "read-only remount failed: {m}"
        );
    }
    assert!(
        std::fs::OpenOptions::new().write(true).open(&j).is_err(),
        "the bind mount is not read-only"
    );
    let trees = [
        ("SOURCE", &p.src_before, p.e.src.as_path()),
        ("DEST", &p.dst_before, p.e.dst.as_path()),
    ];
    let out = evac(resume_args(&j));
    assert_refused(
        "resume from a journal on a read-only mount",
        &out,
        &j,
        &trees,
    );
}

// ---------------------------------------------------------------------------
// Full filesystem.
// ---------------------------------------------------------------------------

fn tiny_tmpfs(test: &str, e: &Env, size: &str) -> Option<(PathBuf, Mounted)> {
    let mp = e.tmp.path().join("fullfs");
    match tmpfs(&mp, size) {
        Ok(g) => Some((mp, g)),
        Err(m) => {
            eprintln!("SKIP {test}: cannot mount a tmpfs: {m}");
            None
        }
    }
}

#[test]
fn journal_on_full_filesystem_is_refused() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "journal_on_full_filesystem_is_refused",
        "it mounts a tiny tmpfs"
    );
    let p = prepared(7501);
    let Some((mp, _guard)) = tiny_tmpfs("journal_on_full_filesystem_is_refused", &p.e, "2m") else {
        return;
    };
    let j = mp.join("journal.db");
    std::fs::copy(&p.e.journal, &j).unwrap();
    let filled = fill(&mp, "filler");
    eprintln!("journal copied to a 2 MiB tmpfs, then {filled} bytes of filler: full");
    let trees = [
        ("SOURCE", &p.src_before, p.e.src.as_path()),
        ("DEST", &p.dst_before, p.e.dst.as_path()),
    ];
    let out = evac(resume_args(&j));
    assert_refused(
        "resume from a journal on a full filesystem",
        &out,
        &j,
        &trees,
    );
}

#[test]
fn new_journal_on_full_filesystem_is_refused() {
    let _gate = suite_gate!();
    skip_unless_root!(
        "new_journal_on_full_filesystem_is_refused",
        "it mounts a tiny tmpfs"
    );
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(50, 7601));
    let src_before = Manifest::scan(&e.src);
    let Some((mp, _guard)) = tiny_tmpfs("new_journal_on_full_filesystem_is_refused", &e, "1m")
    else {
        return;
    };
    let filled = fill(&mp, "filler");
    let j = mp.join("journal.db");
    eprintln!("1 MiB tmpfs filled with {filled} bytes; starting a new run with its journal there");
    let out = evac_run(&e.src, &e.dst, &j, &[]);
    let code = out.code();
    untouched(
        "SOURCE after a run whose new journal is on a full filesystem",
        &src_before,
        &e.src,
    );
    if e.dst.exists() {
        let d = Manifest::scan(&e.dst);
        assert!(
            d.entries.len() == 1,
            "DEST was created and filled although the journal could not be written: {} entries\n{}",
            d.entries.len(),
            out.dump()
        );
        panic!(
            "DEST {} was created although the journal could not be written\n{}",
            e.dst.display(),
            out.dump()
        );
    }
    assert_eq!(code, 1, "expected exit 1\n{}", out.dump());
    assert!(
        out.text().contains(j.to_str().unwrap()),
        "the message does not name the journal\n{}",
        out.dump()
    );
    eprintln!(
        "new journal on a full filesystem: {}",
        out.stderr_str().trim()
    );
}

// ---------------------------------------------------------------------------
// Garbage in each page of the journal in turn.
// ---------------------------------------------------------------------------

/// page number -> table/index name, where SQLite's dbstat table is available.
fn page_owners(journal: &Path) -> std::collections::BTreeMap<u64, String> {
    let mut m = std::collections::BTreeMap::new();
    let Ok(c) =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return m;
    };
    if let Ok(mut st) = c.prepare("SELECT pageno, name FROM dbstat") {
        if let Ok(rows) = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))) {
            for (p, n) in rows.flatten() {
                m.insert(p as u64, n);
            }
        }
    }
    m
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = Command::new("rm").arg("-rf").arg(to).status();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

#[test]
fn garbage_in_any_page_of_the_journal_is_refused() {
    let _gate = suite_gate!();
    let p = prepared(7701);
    let e = &p.e;
    let j = &e.journal;
    let pristine_j = std::fs::read(j).unwrap();
    let owners = page_owners(j);
    let pages = pristine_j.len() as u64 / 4096;
    let keep_src = e.tmp.path().join("src.pristine");
    let keep_dst = e.tmp.path().join("dst.pristine");
    copy_tree(&e.src, &keep_src);
    copy_tree(&e.dst, &keep_dst);
    // (cp read the files: take the baselines after it.)
    let mut src_before = Manifest::scan(&e.src);
    let mut dst_before = Manifest::scan(&e.dst);
    let mut bad = Vec::new();
    let mut refused = 0;
    for page in 2..=pages {
        std::fs::write(j, &pristine_j).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(j).unwrap();
        f.write_all_at(&content(7700 + page, 4096), (page - 1) * 4096)
            .unwrap();
        drop(f);
        let out = evac(resume_args(j));
        let code = out.code();
        let ds = diff_manifests(&src_before, &Manifest::scan(&e.src), DiffOpts::everything());
        let dd = diff_manifests(&dst_before, &Manifest::scan(&e.dst), DiffOpts::everything());
        let owner = owners.get(&page).cloned().unwrap_or_else(|| "?".into());
        let msg = out
            .stderr_str()
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("")
            .to_string();
        let named = out.text().contains(j.to_str().unwrap());
        if code == 1 && ds.is_empty() && dd.is_empty() && named {
            refused += 1;
        } else {
            bad.push(format!(
                "page {page} ({owner}): exit {code}, SOURCE changes {}, DEST changes {}{}{}",
                ds.len(),
                dd.len(),
                if ds.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (e.g. {})",
                        ds.iter().find(|l| l.contains("busy")).unwrap_or(&ds[0])
                    )
                },
                if msg.is_empty() {
                    String::new()
                } else {
                    format!("; message: {msg}")
                }
            ));
        }
        if !ds.is_empty() || !dd.is_empty() {
            copy_tree(&keep_src, &e.src);
            copy_tree(&keep_dst, &e.dst);
            src_before = Manifest::scan(&e.src);
            dst_before = Manifest::scan(&e.dst);
        }
    }
    eprintln!(
        "garbage in each of pages 2..={pages}: {refused} refused cleanly (exit 1, nothing changed), {} not",
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "a journal with one page of garbage was not refused before evac acted ({} of {} pages):\n  {}",
        bad.len(),
        pages - 1,
        bad.join("\n  ")
    );
}
