//! `evac demo`: a self-contained tour. Builds an "old server" tree (nested directories, a few
//! thousand files, hard links, a sparse file, xattrs, awkward names, a symlink and a FIFO),
//! relocates it, then shows `status` and runs `verify`.

use crate::engine::{self, RunOpts};
use crate::error::{Error, Result};
use crate::util::escape::quoted;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough for file sizes and contents.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn io<T>(what: &str, p: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| {
        Error::Setup(format!(
            "demo: {what} {}: {e}",
            quoted(p.as_os_str().as_bytes())
        ))
    })
}

fn build_tree(root: &Path, files: usize) -> Result<(usize, u64)> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut total = 0u64;
    let dirs_per_level = 6usize;
    let mut dirs = Vec::new();
    for a in 0..dirs_per_level {
        for b in 0..dirs_per_level {
            let d = root.join(format!("proj{a}")).join(format!("src{b}"));
            io("create", &d, std::fs::create_dir_all(&d))?;
            dirs.push(d);
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..files {
        let d = &dirs[i % dirs.len()];
        let p = d.join(format!("file{i:05}.dat"));
        let size = match rng.next() % 100 {
            0 => 256 * 1024 + (rng.next() % (512 * 1024)) as usize,
            1..=9 => 16 * 1024 + (rng.next() % (48 * 1024)) as usize,
            _ => 1 + (rng.next() % (8 * 1024)) as usize,
        };
        let mut f = io("create", &p, std::fs::File::create(&p))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            for chunk in buf[..n].chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            io("write", &p, f.write_all(&buf[..n]))?;
            left -= n;
        }
        total += size as u64;
    }
    // Hard links, within a directory and across directories.
    let a = dirs[0].join("file00000.dat");
    io(
        "link",
        &a,
        std::fs::hard_link(&a, dirs[0].join("same-inode.dat")),
    )?;
    io(
        "link",
        &a,
        std::fs::hard_link(&a, dirs[5].join("also-same-inode.dat")),
    )?;
    // A sparse file: 64 MiB with two small extents.
    let sp = root.join("proj0/sparse.img");
    let f = io("create", &sp, std::fs::File::create(&sp))?;
    io(
        "write",
        &sp,
        std::os::unix::fs::FileExt::write_all_at(&f, b"header", 0),
    )?;
    io(
        "write",
        &sp,
        std::os::unix::fs::FileExt::write_all_at(&f, b"trailer", 64 * 1024 * 1024 - 7),
    )?;
    total += 64 * 1024 * 1024;
    // xattrs (user namespace: works without root where the filesystem supports it).
    let _ = rustix::fs::setxattr(&a, "user.project", b"demo", rustix::fs::XattrFlags::empty());
    // Awkward names.
    let odd = root.join("odd names");
    io("create", &odd, std::fs::create_dir_all(&odd))?;
    for name in [
        &b"new\nline"[..],
        b"tab\there",
        b"-leading-dash",
        b"   ",
        b"quote\"and\\backslash",
        b"star*question?bracket[",
        b"latin1-\xe9t\xe9",
        "ünïcödé ✓".as_bytes(),
    ] {
        let p = odd.join(std::ffi::OsStr::from_bytes(name));
        io("create", &p, std::fs::write(&p, name))?;
    }
    // Things evac leaves alone.
    io(
        "symlink",
        &odd,
        std::os::unix::fs::symlink("../proj0", odd.join("a-symlink")),
    )?;
    let _ = rustix::fs::mknodat(
        rustix::fs::CWD,
        odd.join("a-fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    );
    Ok((files + 11, total))
}

/// The HSM part of the demo: a third of `proj5` released to three tapes by the simulator (`evac
/// hsm-sim`). Needs root (Lustre's `trusted.hsm` attribute) and a filesystem that punches holes;
/// otherwise says what it skips. The evac binary to run the simulator from, if it was done.
fn release_some(old: &Path, tape: &Path) -> Result<Option<PathBuf>> {
    if !crate::sys::fsx::is_root() {
        crate::ui::err("evac demo: skipping the HSM part (phases 1 and 2 with stubs): making stubs needs root (Lustre's trusted.hsm attribute); try it with sudo");
        return Ok(None);
    }
    let Ok(exe) = std::env::current_exe() else {
        crate::ui::err(
            "evac demo: skipping the HSM part: cannot find the evac binary to run the simulator",
        );
        return Ok(None);
    };
    let mut batches: [Vec<PathBuf>; 3] = Default::default();
    let mut k = 0;
    for b in 0..6 {
        let d = old.join("proj5").join(format!("src{b}"));
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names.into_iter().step_by(3) {
            batches[k % 3].push(p);
            k += 1;
        }
    }
    // Four of them the HSM will lose; a backup restore holds their data under other names.
    let lost: Vec<PathBuf> = batches[0].iter().take(4).cloned().collect();
    let restore = tape.with_file_name("backup-restore");
    for (i, p) in lost.iter().enumerate() {
        let to = restore.join(format!("restored-{i}.bin"));
        io("create", &restore, std::fs::create_dir_all(&restore))?;
        io("copy", p, std::fs::copy(p, &to))?;
    }
    for (i, files) in batches.iter().enumerate() {
        if files.is_empty() {
            continue;
        }
        let out = std::process::Command::new(&exe)
            .arg("hsm-sim")
            .arg("release")
            .arg("--tape")
            .arg(tape)
            .arg("--volume")
            .arg(format!("TAPE{:02}", i + 1))
            .args(files)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                crate::ui::err(format!(
                    "evac demo: skipping the HSM part: the simulator could not release files here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                return Ok(None);
            }
            Err(e) => {
                crate::ui::err(format!(
                    "evac demo: skipping the HSM part: cannot run the simulator: {e}"
                ));
                return Ok(None);
            }
        }
    }
    let lose = std::process::Command::new(&exe)
        .arg("hsm-sim")
        .arg("lose")
        .arg("--tape")
        .arg(tape)
        .args(&lost)
        .output();
    if !lose.is_ok_and(|o| o.status.success()) {
        crate::ui::err(
            "evac demo: the simulator could not mark files lost; phase 3 will have nothing to do",
        );
    }
    crate::ui::err(format!(
        "evac demo: the simulated HSM released {k} files of proj5 to three tapes (stubs: size kept, no data blocks) and lost {} of them (copies wait in {}); phase 1 must not open them",
        lost.len(),
        quoted(restore.as_os_str().as_bytes())
    ));
    Ok(Some(exe))
}

/// Phase 3 of the demo: fingerprint what is left, find it in the backup restore, recover it.
fn phase3(journal: &Path, restore: &Path, report: &Path) -> Result<i32> {
    crate::ui::out(format!(
        "\n$ evac fingerprint --journal {} --search {} --report {}",
        journal.display(),
        restore.display(),
        report.display()
    ));
    crate::app::fingerprint::fingerprint(crate::app::fingerprint::FingerprintOpts {
        journal: journal.to_path_buf(),
        search: vec![restore.to_path_buf()],
        report: Some(report.to_path_buf()),
        workers: None,
        quiet: false,
        progress_interval: std::time::Duration::from_secs(2),
        args_text: "demo fingerprint".into(),
    })?;
    crate::ui::out(format!(
        "\n$ evac recover --journal {} --all-exact",
        journal.display()
    ));
    crate::app::recover::recover(crate::app::recover::RecoverOpts {
        journal: journal.to_path_buf(),
        path: None,
        from: None,
        all_exact: true,
        force: false,
        workers: None,
    })
}

/// Phase 2 of the demo: import the simulator's listing and stage the stubs in tape order.
fn phase2(journal: &Path, tape: &Path, exe: &Path) -> Result<i32> {
    let listing = tape.join("listing.tsv");
    crate::ui::out(format!(
        "\n$ evac hsm import --journal {} --format tsv {}",
        journal.display(),
        listing.display()
    ));
    crate::hsm::import::import(
        journal,
        crate::hsm::import::Format::Tsv,
        &listing,
        None,
        false,
    )?;
    crate::ui::out(format!(
        "\n$ evac stage --journal {} --drives 2 --stage-cmd evac hsm-sim stage --tape {} --mount-latency-ms 200",
        journal.display(),
        tape.display()
    ));
    let code = crate::hsm::stage::stage(crate::hsm::stage::StageOpts {
        journal: journal.to_path_buf(),
        program: vec![
            exe.as_os_str().to_owned(),
            "hsm-sim".into(),
            "stage".into(),
            "--tape".into(),
            tape.as_os_str().to_owned(),
            "--mount-latency-ms".into(),
            "200".into(),
        ],
        drives: 2,
        tiers: None,
        stdin0: false,
        stage_timeout: std::time::Duration::from_secs(300),
        budget: None,
        max_tries: 3,
        backoff: std::time::Duration::from_secs(1),
        resident_wait: std::time::Duration::from_secs(30),
        batch_files: 256,
        workers: None,
        retry_leftovers: false,
        quiet: false,
    })?;
    crate::ui::out(format!("\n$ evac status --journal {}", journal.display()));
    crate::app::status::status(journal, crate::app::status::Format::Text, None, false)?;
    Ok(code)
}

/// `git` in `dir` with a fixed identity; its stdout, or why it failed.
fn git(dir: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let o = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Demo", "-c", "user.email=demo@example.org"])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim_end().to_string())
    }
}

/// A small git repository with a few commits at `dir`, when git is installed (the demo shows
/// that a working tree is left whole and git keeps working in it).
fn git_repo(dir: &Path) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    git(dir, &["init", "-q"]).ok()?;
    for i in 0..3 {
        std::fs::write(dir.join("main.c"), format!("int version = {i};\n")).ok()?;
        std::fs::write(dir.join(".gitignore"), "*.o\n").ok()?;
        git(dir, &["add", "-A"]).ok()?;
        git(dir, &["commit", "-q", "-m", &format!("version {i}")]).ok()?;
    }
    Some(dir.to_path_buf())
}

pub fn demo(dir: Option<PathBuf>, files: usize) -> Result<i32> {
    let base = match dir {
        Some(d) => d,
        None => std::env::temp_dir(),
    };
    let t = (crate::util::time::now() * 1000.0) as u64;
    let top = base.join(format!("evac-demo-{}-{t}", std::process::id()));
    let (old, new, journal) = (
        top.join("old-server"),
        top.join("new-server"),
        top.join("journal.sqlite"),
    );
    io("create", &old, std::fs::create_dir_all(&old))?;
    crate::ui::err(format!(
        "evac demo: building an example old server in {}",
        quoted(old.as_os_str().as_bytes())
    ));
    let (n, bytes) = build_tree(&old, files)?;
    crate::ui::err(format!(
        "evac demo: {n} files ({}), with hard links, a sparse file, xattrs and awkward names; relocating to {}",
        crate::util::units::human_bytes(bytes as f64),
        quoted(new.as_os_str().as_bytes())
    ));
    let repo = git_repo(&old.join("team/tool"));
    let tape = top.join("hsm-tape");
    let hsm = release_some(&old, &tape)?;
    let code = engine::run(RunOpts {
        source: Some(old.clone()),
        dest: Some(new.clone()),
        quiet: false,
        progress_interval: std::time::Duration::from_secs(2),
        skip_walk: false,
        ..RunOpts::waiting_only(journal.clone(), None, &format!("demo --files {files}"))
    })?;
    crate::ui::out(format!("\n$ evac status --journal {}", journal.display()));
    crate::app::status::status(&journal, crate::app::status::Format::Text, None, false)?;
    if let Some(repo) = &repo {
        // The repository was left whole (a unit): git works in it as before.
        crate::ui::out(format!(
            "\n$ git -C {} status --short --branch",
            repo.display()
        ));
        match git(repo, &["status", "--short", "--branch"]) {
            Ok(s) => crate::ui::out(s.trim_end()),
            Err(e) => crate::ui::out(format!("git status failed: {e}")),
        }
    }
    let code = match hsm {
        Some(exe) => {
            phase2(&journal, &tape, &exe)?;
            phase3(
                &journal,
                &top.join("backup-restore"),
                &top.join("leftovers.html"),
            )?
        }
        None => code,
    };
    crate::ui::out(format!("\n$ evac verify --journal {}", journal.display()));
    let v = crate::app::verify::verify(&journal, false, None)?;
    crate::ui::out(format!(
        "\nLook around:\n  ls -l {old}/proj0/src0 | head      # originals are now symlinks\n  ls -l {new}/proj0/src0 | head      # the copies, with the originals' metadata\n  evac status --journal {j} --list skipped\n  {top}/leftovers.html           # phase 3's worksheet (as root)\n  evac run --journal {j}             # a second run finds nothing to do\nRemove it all with: rm -rf {top}",
        old = old.display(),
        new = new.display(),
        j = journal.display(),
        top = top.display()
    ));
    Ok(if code == 0 && v == 0 { 0 } else { code.max(v) })
}
