//! A manifest of a tree (`Manifest`: kind, content hash, metadata, xattrs of every entry),
//! taken with dirfd-relative calls only, and the differences between two manifests.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub(super) fn from_mode(m: u32) -> Kind {
        match m & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            other => panic!("unknown file type {other:o}"),
        }
    }
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    pub nlink: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// blake3 of the content (regular files, when hashing was asked for).
    pub hash: Option<[u8; 32]>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
}

impl Entry {
    fn from_stat(st: &Stat) -> Entry {
        Entry {
            kind: Kind::from_mode(st.st_mode),
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
            rdev: st.st_rdev,
            nlink: st.st_nlink,
            blocks: st.st_blocks as u64,
            hash: None,
            xattrs: BTreeMap::new(),
            target: None,
        }
    }
    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks * 512 < self.size
    }
}

#[derive(Clone, Debug)]
pub struct ScanOpts {
    /// Hash regular files' content.
    pub hash: bool,
    /// Relative paths not to record or enter (e.g. DEST inside SOURCE).
    pub skip: Vec<Vec<u8>>,
    /// Do not enter directories on another filesystem.
    pub one_fs: bool,
}

impl Default for ScanOpts {
    fn default() -> Self {
        ScanOpts {
            hash: true,
            skip: Vec::new(),
            one_fs: false,
        }
    }
}

/// Everything about a tree, keyed by raw relative path (`b""` is the root).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub root: PathBuf,
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

impl Manifest {
    pub fn scan(root: &Path) -> Manifest {
        Self::scan_opts(root, &ScanOpts::default())
    }

    pub fn scan_opts(root: &Path, opts: &ScanOpts) -> Manifest {
        let d = D::open(root)
            .unwrap_or_else(|e| panic!("manifest: cannot open {}: {e}", root.display()));
        let mut entries = BTreeMap::new();
        let st = d.lstat(b".").unwrap();
        let mut e = Entry::from_stat(&st);
        e.xattrs = d.xattrs(b".").unwrap_or_default();
        let dev = e.dev;
        entries.insert(Vec::new(), e);
        Self::walk(&d, b"", dev, opts, &mut entries);
        Manifest {
            root: root.to_path_buf(),
            entries,
        }
    }

    fn walk(
        d: &D,
        prefix: &[u8],
        root_dev: u64,
        opts: &ScanOpts,
        out: &mut BTreeMap<Vec<u8>, Entry>,
    ) {
        let names = d
            .names()
            .unwrap_or_else(|e| panic!("manifest: readdir {}: {e}", esc(prefix)));
        for name in names {
            let rel = join_rel(prefix, &name);
            if opts.skip.contains(&rel) {
                continue;
            }
            let st = match d.lstat(&name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // vanished meanwhile
                Err(e) => panic!("manifest: lstat {}: {e}", esc(&rel)),
            };
            let mut e = Entry::from_stat(&st);
            e.xattrs = d
                .xattrs(&name)
                .unwrap_or_else(|err| panic!("manifest: xattrs of {}: {err}", esc(&rel)));
            match e.kind {
                Kind::Symlink => {
                    e.target = Some(
                        d.readlink(&name)
                            .unwrap_or_else(|err| panic!("readlink {}: {err}", esc(&rel))),
                    )
                }
                Kind::File if opts.hash => {
                    e.hash = Some(
                        d.hash(&name)
                            .unwrap_or_else(|err| panic!("manifest: read {}: {err}", esc(&rel))),
                    )
                }
                _ => {}
            }
            let is_dir = e.kind == Kind::Dir;
            let other_fs = e.dev != root_dev;
            out.insert(rel.clone(), e);
            if is_dir && !(opts.one_fs && other_fs) {
                match d.sub(&name) {
                    Ok(sub) => Self::walk(&sub, &rel, root_dev, opts, out),
                    Err(err) => panic!("manifest: open dir {}: {err}", esc(&rel)),
                }
            }
        }
    }

    pub fn get(&self, rel: &[u8]) -> Option<&Entry> {
        self.entries.get(rel)
    }

    pub fn of_kind(&self, k: Kind) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.entries.iter().filter(move |(_, e)| e.kind == k)
    }

    pub fn files(&self) -> impl Iterator<Item = (&Vec<u8>, &Entry)> {
        self.of_kind(Kind::File)
    }

    pub fn file_count(&self) -> usize {
        self.files().count()
    }

    /// Number of distinct inodes among regular files.
    pub fn distinct_file_inodes(&self) -> usize {
        self.files()
            .map(|(_, e)| (e.dev, e.ino))
            .collect::<BTreeSet<_>>()
            .len()
    }

    pub fn file_bytes_distinct(&self) -> u64 {
        let mut seen = BTreeSet::new();
        self.files()
            .filter(|(_, e)| seen.insert((e.dev, e.ino)))
            .map(|(_, e)| e.size)
            .sum()
    }

    /// Hard-link groups (by inode) among the given regular files, as sets of paths.
    pub fn link_groups_of<'a>(
        &self,
        rels: impl Iterator<Item = &'a Vec<u8>>,
    ) -> BTreeSet<BTreeSet<Vec<u8>>> {
        let mut by_ino: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
        for r in rels {
            if let Some(e) = self.entries.get(r) {
                if e.kind == Kind::File {
                    by_ino.entry((e.dev, e.ino)).or_default().insert(r.clone());
                }
            }
        }
        by_ino.into_values().collect()
    }

    /// Paths whose basename looks like an evac temporary.
    pub fn temp_names(&self) -> Vec<Vec<u8>> {
        self.entries
            .keys()
            .filter(|r| is_evac_temp(basename(r)))
            .cloned()
            .collect()
    }
}

/// Which fields `diff_manifests` compares.
#[derive(Clone, Copy, Debug)]
pub struct DiffOpts {
    pub ino: bool,
    pub ctime: bool,
    /// Compare atime of regular files (dir and symlink atimes are never compared:
    /// readdir/readlink by anyone may update them).
    pub file_atime: bool,
    pub dir_mtime: bool,
}

impl DiffOpts {
    pub fn everything() -> DiffOpts {
        DiffOpts {
            ino: true,
            ctime: true,
            file_atime: true,
            dir_mtime: true,
        }
    }
}

/// Differences between two manifests, described one per line.
pub fn diff_manifests(a: &Manifest, b: &Manifest, o: DiffOpts) -> Vec<String> {
    let mut p = Vec::new();
    for (rel, ea) in &a.entries {
        let Some(eb) = b.entries.get(rel) else {
            p.push(format!("{}: disappeared (was {:?})", short(rel), ea.kind));
            continue;
        };
        let mut d = Vec::new();
        if ea.kind != eb.kind {
            d.push(format!("kind {:?} -> {:?}", ea.kind, eb.kind));
        }
        if ea.mode != eb.mode {
            d.push(format!("mode {:o} -> {:o}", ea.mode, eb.mode));
        }
        if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
            d.push(format!(
                "owner {}:{} -> {}:{}",
                ea.uid, ea.gid, eb.uid, eb.gid
            ));
        }
        if ea.kind != Kind::Dir && ea.size != eb.size {
            d.push(format!("size {} -> {}", ea.size, eb.size));
        }
        if ea.hash != eb.hash {
            d.push("content changed".into());
        }
        if ea.target != eb.target {
            d.push(format!(
                "target {} -> {}",
                short(ea.target.as_deref().unwrap_or(b"")),
                short(eb.target.as_deref().unwrap_or(b""))
            ));
        }
        if ea.xattrs != eb.xattrs {
            d.push(format!(
                "xattrs {:?} -> {:?}",
                xattr_names(&ea.xattrs),
                xattr_names(&eb.xattrs)
            ));
        }
        if (ea.kind != Kind::Dir || o.dir_mtime) && ea.mtime != eb.mtime {
            d.push(format!("mtime {:?} -> {:?}", ea.mtime, eb.mtime));
        }
        if o.file_atime && ea.kind == Kind::File && ea.atime != eb.atime {
            d.push(format!("atime {:?} -> {:?}", ea.atime, eb.atime));
        }
        if o.ctime && ea.ctime != eb.ctime {
            d.push(format!("ctime {:?} -> {:?}", ea.ctime, eb.ctime));
        }
        if o.ino && ea.ino != eb.ino {
            d.push(format!("inode {} -> {}", ea.ino, eb.ino));
        }
        if ea.kind == Kind::File && ea.nlink != eb.nlink {
            d.push(format!("nlink {} -> {}", ea.nlink, eb.nlink));
        }
        if !d.is_empty() {
            p.push(format!("{}: {}", short(rel), d.join(", ")));
        }
    }
    for (rel, eb) in &b.entries {
        if !a.entries.contains_key(rel) {
            p.push(format!("{}: appeared ({:?})", short(rel), eb.kind));
        }
    }
    p
}

pub(super) fn xattr_names(m: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<String> {
    m.iter()
        .map(|(k, v)| format!("{}={}", short(k), short(v)))
        .collect()
}
