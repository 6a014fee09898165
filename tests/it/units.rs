//! Version-control trees ("units") on real repositories made by `git`, through the real binary:
//! left whole, every file still a regular file, while a developer keeps committing in one during
//! the run (every git command must succeed); reported by `status --list excluded` with their
//! kind; a tree evac has begun file by file stays so when a marker appears in it (its new
//! `.git` alone is left whole);
//! `--no-default-units` relocates them file by file and later runs keep to it; the dry run agrees.

use crate::common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.org",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .map_err(|e| format!("git {args:?}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

fn have_git() -> bool {
    Command::new("git").arg("--version").output().is_ok()
}

/// A repository with history: `n` commits over a few files, a branch, `.gitignore`, a packed
/// object store (after `git gc`) and loose objects since.
fn make_repo(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]).unwrap();
    std::fs::write(dir.join(".gitignore"), "*.o\nbuild/\n").unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("src/f{}.c", i % 7)),
            format!("int v{i} = {i};\n").repeat(1 + i % 5),
        )
        .unwrap();
        git(dir, &["add", "-A"]).unwrap();
        git(dir, &["commit", "-q", "-m", &format!("commit {i}")]).unwrap();
        if i == n / 2 {
            git(dir, &["branch", "topic"]).unwrap();
            git(dir, &["gc", "-q"]).unwrap();
        }
    }
    std::fs::write(dir.join("ignored.o"), b"object").unwrap();
}

/// Every entry under `dir` (in SOURCE) that is a symlink.
fn links_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                out.push(e.path().display().to_string());
            } else if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn excluded_text(journal: &Path) -> String {
    let o = evac([
        OsStr::new("status"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--list"),
        OsStr::new("excluded"),
    ]);
    assert!(o.status.success(), "{}", o.cmd);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn repositories_stay_whole_and_git_works_throughout() {
    let _gate = suite_gate!();
    if !have_git() {
        eprintln!("SKIP repositories_stay_whole_and_git_works_throughout: no git on this machine (.ci/run installs it)");
        return;
    }
    let e = env();
    for i in 0..40 {
        let p = e.src.join(format!("plain/d{}/f{i}", i % 4));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("plain {i}\n").repeat(50)).unwrap();
    }
    let repo = e.src.join("work/proj");
    make_repo(&repo, 30);
    let bare = e.src.join("srv/proj.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        &e.src,
        &[
            "clone",
            "-q",
            "--bare",
            repo.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    )
    .unwrap();
    let hg = e.src.join("hgproj");
    std::fs::create_dir_all(hg.join(".hg")).unwrap();
    std::fs::write(hg.join(".hg/requires"), b"revlogv1\n").unwrap();
    std::fs::write(hg.join("readme"), b"hg").unwrap();

    // A developer works in the repository the whole time evac runs and resumes.
    let stop = AtomicBool::new(false);
    let (ran, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = std::sync::Mutex::new(Vec::new());
    let commits_before: usize = git(&repo, &["rev-list", "--count", "HEAD"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut committed = 0usize;
    std::thread::scope(|s| {
        let dev = s.spawn(|| {
            let mut i = 0usize;
            let mut made = 0usize;
            while !stop.load(Ordering::Relaxed) || i < 12 {
                i += 1;
                std::fs::write(repo.join(format!("src/live{}.c", i % 3)), format!("{i}\n"))
                    .unwrap();
                let steps: [&[&str]; 5] = [
                    &["status", "--porcelain"],
                    &["add", "-A"],
                    &["commit", "-q", "-m", "live"],
                    &["checkout", "-q", if i % 2 == 0 { "topic" } else { "main" }],
                    &["checkout", "-q", "main"],
                ];
                for a in steps {
                    ran.fetch_add(1, Ordering::Relaxed);
                    match git(&repo, a) {
                        Ok(_) => made += usize::from(a[0] == "commit"),
                        // Switching to the branch may meet the files just written; that is
                        // git's answer, not a failure of the repository.
                        Err(m) if a[0] == "checkout" && m.contains("would be overwritten") => {}
                        Err(m) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap().push(m);
                        }
                    }
                }
            }
            made
        });
        let r = evac_run(&e.src, &e.dst, &e.journal, &[]);
        assert_eq!(r.status.code(), Some(0), "{}", r.cmd);
        let r = evac_resume(&e.journal, &[]);
        assert_eq!(r.status.code(), Some(0), "{}", r.cmd);
        stop.store(true, Ordering::Relaxed);
        committed = dev.join().unwrap();
    });
    let (ran, failed) = (ran.into_inner(), failed.into_inner());
    eprintln!(
        "FIGURES units: git commands run during relocation {ran}, failures {failed}, commits made {committed}"
    );
    figures(
        "units",
        &format!("git commands run during relocation {ran}, failures {failed}"),
    );
    assert_eq!(
        failed,
        0,
        "git failed during the run: {:?}",
        failures.lock().unwrap()
    );
    // Whole: not one link inside; git's own checks pass; every commit is there.
    for d in [&repo, &bare, &hg] {
        assert_eq!(
            links_under(d),
            Vec::<String>::new(),
            "links inside {}",
            d.display()
        );
    }
    git(&repo, &["fsck", "--full", "--strict"]).unwrap();
    git(&bare, &["fsck", "--full", "--strict"]).unwrap();
    assert_eq!(git(&repo, &["status", "--porcelain"]).unwrap(), "");
    let count: usize = git(&repo, &["rev-list", "--count", "main"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, commits_before + committed, "commits on main");
    let modes = git(&repo, &["log", "--all", "--raw", "--format="]).unwrap();
    assert!(
        !modes.contains(" 120000 "),
        "a commit records a symlink the developer never made"
    );
    // Everything else relocated; the units reported with their kind.
    for i in 0..40 {
        let p = e.src.join(format!("plain/d{}/f{i}", i % 4));
        assert!(
            std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{} not relocated",
            p.display()
        );
    }
    let mut listed = status_list(&e.journal, "excluded");
    listed.sort();
    assert_eq!(
        listed,
        vec![
            b"hgproj".to_vec(),
            b"srv/proj.git".to_vec(),
            b"work/proj".to_vec()
        ]
    );
    let text = excluded_text(&e.journal);
    for kind in [
        "left whole as a git working tree",
        "left whole as a bare git repository",
        "left whole as a Mercurial working tree",
    ] {
        assert!(text.contains(kind), "status does not say {kind:?}:\n{text}");
    }
}

#[test]
fn a_tree_begun_file_by_file_stays_so_when_it_becomes_a_repository() {
    let _gate = suite_gate!();
    if !have_git() {
        eprintln!("SKIP a_tree_begun_file_by_file_stays_so_when_it_becomes_a_repository: no git on this machine (.ci/run installs it)");
        return;
    }
    let e = env();
    let d = e.src.join("d");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..5 {
        std::fs::write(d.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let r = evac_run(&e.src, &e.dst, &e.journal, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", r.cmd);
    // The user makes it a repository after its files were relocated: evac must not now skip
    // it (its walk would stop seeing the links it made, and in time let their copies go).
    git(&d, &["init", "-q"]).unwrap();
    let r = evac_resume(&e.journal, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", r.cmd);
    // Its new `.git` has nothing relocated beneath it and is a repository of its own kind (a
    // bare one, to look at): it stays whole, so git still finds a regular HEAD.
    assert_eq!(
        status_list(&e.journal, "excluded"),
        vec![b"d/.git".to_vec()]
    );
    git(&d, &["status", "--porcelain"]).unwrap();
    for i in 0..5 {
        let p = d.join(format!("f{i}"));
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), format!("file {i}\n").as_bytes());
    }
}

#[test]
fn no_default_units_relocates_repositories_file_by_file_for_good() {
    let _gate = suite_gate!();
    if !have_git() {
        eprintln!("SKIP no_default_units_relocates_repositories_file_by_file_for_good: no git on this machine (.ci/run installs it)");
        return;
    }
    let e = env();
    let repo = e.src.join("proj");
    make_repo(&repo, 3);
    // The dry run agrees with the run on what a unit keeps back.
    let dry = |extra: &[&str]| {
        let mut a = vec!["--dry-run", "--list", "--null"];
        a.extend_from_slice(extra);
        let o = evac_run(&e.src, &e.dst, &e.journal, &a);
        assert!(o.status.success(), "{}", o.cmd);
        o.stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .count()
    };
    assert_eq!(
        dry(&[]),
        0,
        "the dry run would relocate files inside a unit"
    );
    assert!(dry(&["--no-default-units"]) > 5);
    let r = evac_run(&e.src, &e.dst, &e.journal, &["--no-default-units"]);
    assert_eq!(r.status.code(), Some(0), "{}", r.cmd);
    assert!(std::fs::symlink_metadata(repo.join(".gitignore"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A later run without the flag keeps to the journal's choice: a repository made since is
    // relocated file by file too.
    let later = e.src.join("later");
    make_repo(&later, 2);
    let r = evac_resume(&e.journal, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", r.cmd);
    assert!(std::fs::symlink_metadata(later.join(".gitignore"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(status_list(&e.journal, "excluded").is_empty());
}
