//! `evac demo`: a self-contained tour. Builds an "old server" tree (nested directories, a few
//! thousand files, hard links, a sparse file, xattrs, awkward names, a symlink and a FIFO),
//! relocates it, then shows `status` and runs `verify`.

use crate::error::{Error, Result};
use crate::escape::quoted;
use crate::run::{self, RunOpts};
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

pub fn demo(dir: Option<PathBuf>, files: usize) -> Result<i32> {
    let base = match dir {
        Some(d) => d,
        None => std::env::temp_dir(),
    };
    let t = (crate::journal::now() * 1000.0) as u64;
    let top = base.join(format!("evac-demo-{}-{t}", std::process::id()));
    let (old, new, journal) = (
        top.join("old-server"),
        top.join("new-server"),
        top.join("journal.sqlite"),
    );
    io("create", &old, std::fs::create_dir_all(&old))?;
    eprintln!(
        "evac demo: building an example old server in {}",
        quoted(old.as_os_str().as_bytes())
    );
    let (n, bytes) = build_tree(&old, files)?;
    eprintln!(
        "evac demo: {n} files ({}), with hard links, a sparse file, xattrs and awkward names; relocating to {}",
        crate::progress::human_bytes(bytes as f64),
        quoted(new.as_os_str().as_bytes())
    );
    let code = run::run(RunOpts {
        source: Some(old.clone()),
        dest: Some(new.clone()),
        journal: journal.clone(),
        link_prefix: None,
        workers: None,
        dry_run: false,
        list: false,
        null: false,
        quiet: false,
        progress_interval: 2,
        batch_files: 512,
        retry_rounds: 1,
        retry_delay: 0.2,
        op_timeout: 600.0,
        relocate_mapped: false,
        hsm: None,
        hsm_timeout: 60.0,
        skip_walk: false,
        args_text: format!("demo --files {files}"),
    })?;
    println!("\n$ evac status --journal {}", journal.display());
    crate::report::status(&journal, false, None, false)?;
    println!("\n$ evac verify --journal {}", journal.display());
    let v = crate::report::verify(&journal, false, None)?;
    println!(
        "\nLook around:\n  ls -l {old}/proj0/src0 | head      # originals are now symlinks\n  ls -l {new}/proj0/src0 | head      # the copies, with the originals' metadata\n  evac status --journal {j} --list skipped\n  evac run --journal {j}             # a second run finds nothing to do\nRemove it all with: rm -rf {top}",
        old = old.display(),
        new = new.display(),
        j = journal.display(),
        top = top.display()
    );
    Ok(if code == 0 && v == 0 { 0 } else { code.max(v) })
}
