//! The checks: the relocation oracle (`check_relocated`), leftover temporaries, problems
//! reported together, and the suites' figures.

use super::*;

/// A suite's figures (what its adversaries did, kills, faults injected, data lost), printed and
/// appended to `target/tmp/figures.txt`, which `.ci/run` prints after the tests (cargo test
/// shows a passing test's output only with --nocapture).
pub fn figures(suite: &str, line: &str) {
    use std::io::Write;
    eprintln!("FIGURES {suite}: {line}");
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        let _ = writeln!(f, "{suite}: {line}");
    }
}

#[track_caller]
pub fn assert_no_problems(what: &str, problems: &[String]) {
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(60).collect();
        panic!(
            "{what}: {} problem(s):\n  {}{}",
            problems.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if problems.len() > 60 { "\n  …" } else { "" }
        );
    }
}

#[derive(Clone, Debug)]
pub struct OracleOpts {
    /// LINK_PREFIX; None means DEST's absolute path.
    pub link_prefix: Option<Vec<u8>>,
    /// Compare DEST files' atime with the original's.
    pub check_atime: bool,
    /// Compare DEST directories' mtime with the original's.
    pub check_dir_mtime: bool,
    /// Allow entries at DEST that were not in SOURCE (besides `.evac-trash`).
    pub allow_extra_dest: bool,
    /// A subtree of SOURCE to leave out of the after-scan (DEST inside SOURCE).
    pub source_skip: Vec<Vec<u8>>,
    /// Paths of `before` that are expected NOT to be relocated (left as regular files).
    pub not_relocated: BTreeSet<Vec<u8>>,
}

impl Default for OracleOpts {
    fn default() -> Self {
        OracleOpts {
            link_prefix: None,
            check_atime: true,
            check_dir_mtime: true,
            allow_extra_dest: false,
            source_skip: Vec::new(),
            not_relocated: BTreeSet::new(),
        }
    }
}

fn is_trash(rel: &[u8]) -> bool {
    rel == b".evac-trash" || rel.starts_with(b".evac-trash/")
}

/// Everything wrong with SOURCE/DEST after a complete relocation of `before`.
pub fn relocation_problems(
    before: &Manifest,
    source: &Path,
    dest: &Path,
    o: &OracleOpts,
) -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    let prefix = o.link_prefix.clone().unwrap_or_else(|| bytes_of(dest));
    let after_src = Manifest::scan_opts(
        source,
        &ScanOpts {
            hash: true,
            skip: o.source_skip.clone(),
            one_fs: false,
        },
    );
    if !dest.is_dir() {
        p.push(format!("DEST {} does not exist", dest.display()));
        return p;
    }
    let after_dst = Manifest::scan(dest);

    let relocated: Vec<&Vec<u8>> = before
        .files()
        .map(|(r, _)| r)
        .filter(|r| !o.not_relocated.contains(*r))
        .collect();

    // Regular files: SOURCE link + DEST copy.
    for rel in &relocated {
        let b = &before.entries[*rel];
        let want_target = join_rel(&prefix, rel);
        match after_src.get(rel) {
            None => p.push(format!(
                "{}: missing in SOURCE (should be a symlink)",
                short(rel)
            )),
            Some(s) if s.kind != Kind::Symlink => p.push(format!(
                "{}: still a {:?} in SOURCE, not a symlink",
                short(rel),
                s.kind
            )),
            Some(s) => {
                if s.target.as_deref() != Some(&want_target[..]) {
                    p.push(format!(
                        "{}: link target {} (want {})",
                        short(rel),
                        short(s.target.as_deref().unwrap_or(b"")),
                        short(&want_target)
                    ));
                }
                if (s.uid, s.gid) != (b.uid, b.gid) {
                    p.push(format!(
                        "{}: link owner {}:{} (want {}:{})",
                        short(rel),
                        s.uid,
                        s.gid,
                        b.uid,
                        b.gid
                    ));
                }
                if s.mtime != b.mtime {
                    p.push(format!(
                        "{}: link mtime {:?} (want {:?})",
                        short(rel),
                        s.mtime,
                        b.mtime
                    ));
                }
            }
        }
        match after_dst.get(rel) {
            None => p.push(format!("{}: missing at DEST", short(rel))),
            Some(d) if d.kind != Kind::File => {
                p.push(format!("{}: is a {:?} at DEST", short(rel), d.kind))
            }
            Some(d) => {
                let mut diffs = Vec::new();
                if d.hash != b.hash {
                    diffs.push("content differs".to_string());
                }
                if d.size != b.size {
                    diffs.push(format!("size {} (want {})", d.size, b.size));
                }
                if d.mode != b.mode {
                    diffs.push(format!("mode {:o} (want {:o})", d.mode, b.mode));
                }
                if (d.uid, d.gid) != (b.uid, b.gid) {
                    diffs.push(format!(
                        "owner {}:{} (want {}:{})",
                        d.uid, d.gid, b.uid, b.gid
                    ));
                }
                if d.mtime != b.mtime {
                    diffs.push(format!("mtime {:?} (want {:?})", d.mtime, b.mtime));
                }
                if o.check_atime && d.atime != b.atime {
                    diffs.push(format!("atime {:?} (want {:?})", d.atime, b.atime));
                }
                if d.xattrs != b.xattrs {
                    diffs.push(format!(
                        "xattrs {:?} (want {:?})",
                        xattr_names(&d.xattrs),
                        xattr_names(&b.xattrs)
                    ));
                }
                if b.is_sparse() && d.blocks > b.blocks {
                    diffs.push(format!(
                        "not sparse: {} blocks at DEST, {} in SOURCE (size {})",
                        d.blocks, b.blocks, b.size
                    ));
                }
                if !diffs.is_empty() {
                    p.push(format!("{} at DEST: {}", short(rel), diffs.join(", ")));
                }
            }
        }
    }

    // Files that must have stayed regular files in SOURCE, untouched.
    for rel in &o.not_relocated {
        let (Some(b), Some(a)) = (before.get(rel), after_src.get(rel)) else {
            p.push(format!(
                "{}: should have stayed in SOURCE but is gone",
                short(rel)
            ));
            continue;
        };
        if a.kind != Kind::File || a.hash != b.hash || a.size != b.size {
            p.push(format!(
                "{}: should have stayed an intact regular file in SOURCE ({:?})",
                short(rel),
                a.kind
            ));
        }
    }

    // Hard-link groups.
    let want_groups = before.link_groups_of(relocated.iter().copied());
    let got_groups = after_dst.link_groups_of(relocated.iter().copied());
    if want_groups != got_groups {
        let show = |g: &BTreeSet<BTreeSet<Vec<u8>>>| -> Vec<String> {
            g.iter()
                .filter(|s| s.len() > 1)
                .map(|s| s.iter().map(|r| short(r)).collect::<Vec<_>>().join(" = "))
                .collect()
        };
        let only_want: BTreeSet<_> = want_groups.difference(&got_groups).cloned().collect();
        let only_got: BTreeSet<_> = got_groups.difference(&want_groups).cloned().collect();
        p.push(format!(
            "hard-link groups differ: SOURCE had {:?}, DEST has {:?} (multi-name groups only)",
            show(&only_want),
            show(&only_got)
        ));
    }
    for g in &want_groups {
        let first = g.iter().next().unwrap();
        if let Some(d) = after_dst.get(first) {
            if d.kind == Kind::File && d.nlink != g.len() as u64 {
                p.push(format!(
                    "{}: nlink {} at DEST, want {}",
                    short(first),
                    d.nlink,
                    g.len()
                ));
            }
        }
    }

    // Directories.
    for (rel, b) in before.of_kind(Kind::Dir) {
        if rel.is_empty() {
            continue;
        }
        match after_src.get(rel) {
            Some(s) if s.kind == Kind::Dir => {}
            other => p.push(format!(
                "{}: directory in SOURCE is now {:?}",
                short(rel),
                other.map(|e| e.kind)
            )),
        }
        match after_dst.get(rel) {
            None => p.push(format!("{}/: directory missing at DEST", short(rel))),
            Some(d) if d.kind != Kind::Dir => {
                p.push(format!("{}/: is a {:?} at DEST", short(rel), d.kind))
            }
            Some(d) => {
                let mut diffs = Vec::new();
                if d.mode != b.mode {
                    diffs.push(format!("mode {:o} (want {:o})", d.mode, b.mode));
                }
                if (d.uid, d.gid) != (b.uid, b.gid) {
                    diffs.push(format!(
                        "owner {}:{} (want {}:{})",
                        d.uid, d.gid, b.uid, b.gid
                    ));
                }
                if o.check_dir_mtime && d.mtime != b.mtime {
                    diffs.push(format!("mtime {:?} (want {:?})", d.mtime, b.mtime));
                }
                if d.xattrs != b.xattrs {
                    diffs.push(format!(
                        "xattrs {:?} (want {:?})",
                        xattr_names(&d.xattrs),
                        xattr_names(&b.xattrs)
                    ));
                }
                if !diffs.is_empty() {
                    p.push(format!("{}/ at DEST: {}", short(rel), diffs.join(", ")));
                }
            }
        }
    }

    // Symlinks and special files: untouched in SOURCE, not copied.
    for (rel, b) in before
        .entries
        .iter()
        .filter(|(_, e)| e.kind == Kind::Symlink || e.kind.is_special())
    {
        match after_src.get(rel) {
            None => p.push(format!("{}: {:?} vanished from SOURCE", short(rel), b.kind)),
            Some(a) => {
                let same = a.kind == b.kind
                    && a.ino == b.ino
                    && a.target == b.target
                    && a.mode == b.mode
                    && (a.uid, a.gid) == (b.uid, b.gid)
                    && a.mtime == b.mtime
                    && a.ctime == b.ctime
                    && a.rdev == b.rdev;
                if !same {
                    p.push(format!(
                        "{}: {:?} in SOURCE was modified (before {:?}, after {:?})",
                        short(rel),
                        b.kind,
                        (b.ino, b.mode, b.uid, b.gid, b.mtime, b.ctime),
                        (a.ino, a.mode, a.uid, a.gid, a.mtime, a.ctime)
                    ));
                }
            }
        }
        // A link that already points to LINK_PREFIX/<rel> is an earlier relocation: its DEST file is expected.
        let already =
            b.kind == Kind::Symlink && b.target.as_deref() == Some(&join_rel(&prefix, rel)[..]);
        if let (Some(d), false) = (after_dst.get(rel), already) {
            p.push(format!(
                "{}: {:?} was copied to DEST (as {:?})",
                short(rel),
                b.kind,
                d.kind
            ));
        }
    }

    // Unexpected entries at DEST.
    if !o.allow_extra_dest {
        for (rel, d) in &after_dst.entries {
            if rel.is_empty() || is_trash(rel) || before.entries.contains_key(rel) {
                continue;
            }
            p.push(format!("{}: unexpected {:?} at DEST", short(rel), d.kind));
        }
    }

    // Temporaries.
    for (side, m) in [("SOURCE", &after_src), ("DEST", &after_dst)] {
        for rel in m.temp_names() {
            if before.entries.contains_key(&rel) {
                continue; // a user's file that merely looks like a temporary
            }
            p.push(format!("{side}: leftover temporary {}", short(&rel)));
        }
    }
    p
}

/// The oracle with default options: every regular file of `before` relocated.
#[track_caller]
pub fn check_relocated(before: &Manifest, source: &Path, dest: &Path, link_prefix: Option<&Path>) {
    let o = OracleOpts {
        link_prefix: link_prefix.map(bytes_of),
        ..Default::default()
    };
    check_relocated_opts(before, source, dest, &o);
}

#[track_caller]
pub fn check_relocated_opts(before: &Manifest, source: &Path, dest: &Path, o: &OracleOpts) {
    let p = relocation_problems(before, source, dest, o);
    assert_no_problems("relocation oracle", &p);
}

/// Leftover temporaries anywhere under `root`, except paths in `allowed`.
pub fn leftover_temps(root: &Path, allowed: &Manifest) -> Vec<Vec<u8>> {
    let m = Manifest::scan_opts(
        root,
        &ScanOpts {
            hash: false,
            ..Default::default()
        },
    );
    m.temp_names()
        .into_iter()
        .filter(|r| !allowed.entries.contains_key(r))
        .collect()
}
