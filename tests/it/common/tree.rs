//! The deterministic tree builder: nested directories, varied sizes, hard links, sparse files,
//! xattrs/ACLs/capabilities, special modes and owners, nanosecond times, symlinks, FIFOs,
//! sockets, device nodes, pathological names and a directory chain longer than PATH_MAX.

use super::*;

#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub seed: u64,
    /// Number of ordinary files under `t/`.
    pub files: usize,
    /// Cap on generated file sizes.
    pub max_size: usize,
    pub hardlinks: bool,
    pub sparse: bool,
    /// user.* xattrs.
    pub xattrs: bool,
    /// FIFO, socket (and as root a device node).
    pub specials: bool,
    pub symlinks: bool,
    pub weird_names: bool,
    /// A directory chain whose full path exceeds PATH_MAX.
    pub deep_chain: bool,
    /// setuid/setgid/sticky and varied permission bits.
    pub modes: bool,
    /// Varied uid/gid (root only).
    pub owners: bool,
    /// trusted.*, security.capability, POSIX ACLs (root only).
    pub root_xattrs: bool,
    /// Set distinctive atime/mtime (with nanoseconds) on everything.
    pub times: bool,
}

impl TreeSpec {
    /// Everything the harness can build (owners/root xattrs only as root).
    pub fn full(seed: u64) -> TreeSpec {
        TreeSpec {
            seed,
            files: 60,
            max_size: 1 << 20,
            hardlinks: true,
            sparse: true,
            xattrs: true,
            specials: true,
            symlinks: true,
            weird_names: true,
            deep_chain: true,
            modes: true,
            owners: is_root(),
            root_xattrs: is_root(),
            times: true,
        }
    }
    /// Only `files` ordinary files in nested dirs (with times).
    pub fn plain(files: usize, seed: u64) -> TreeSpec {
        TreeSpec {
            seed,
            files,
            max_size: 64 << 10,
            hardlinks: false,
            sparse: false,
            xattrs: false,
            specials: false,
            symlinks: false,
            weird_names: false,
            deep_chain: false,
            modes: false,
            owners: false,
            root_xattrs: false,
            times: true,
        }
    }
}

/// What the builder made (relative paths).
#[derive(Default, Debug, Clone)]
pub struct TreeInfo {
    pub files: Vec<Vec<u8>>,
    pub hardlink_groups: Vec<Vec<Vec<u8>>>,
    pub sparse: Vec<Vec<u8>>,
    pub symlinks: Vec<Vec<u8>>,
    pub fifos: Vec<Vec<u8>>,
    pub sockets: Vec<Vec<u8>>,
    pub devices: Vec<Vec<u8>>,
    pub weird: Vec<Vec<u8>>,
    pub deep_files: Vec<Vec<u8>>,
    pub root_xattr_files: Vec<Vec<u8>>,
    /// A directory outside the tree that a symlink in the tree points to.
    pub outside: Option<PathBuf>,
}

impl TreeInfo {
    pub fn specials(&self) -> Vec<Vec<u8>> {
        let mut v = self.fifos.clone();
        v.extend(self.sockets.iter().cloned());
        v.extend(self.devices.iter().cloned());
        v
    }
}

const SIZES: &[usize] = &[
    0, 1, 2, 100, 511, 4095, 4096, 4097, 8192, 65_537, 131_072, 300_001, 1_048_579,
];

pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

/// The on-disk (xattr) form of a POSIX ACL.
pub fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// security.capability granting cap_net_bind_service (effective + permitted), VFS v2.
pub fn cap_xattr() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o640, 0o4755, 0o2755, 0o6711, 0o444, 0o664, 0o700,
];
const DIR_MODES: &[u32] = &[0o755, 0o2775, 0o1777, 0o750, 0o711, 0o3775];
const OWNERS: &[(u32, u32)] = &[
    (1234, 5678),
    (4321, 8765),
    (0, 0),
    (65534, 65534),
    (1234, 0),
];

struct Builder<'a> {
    spec: &'a TreeSpec,
    info: TreeInfo,
    rng: Rng,
    counter: u64,
}

impl<'a> Builder<'a> {
    /// Create one regular file with all the metadata the spec asks for.
    fn file(&mut self, d: &D, prefix: &[u8], name: &[u8], size: usize) -> Vec<u8> {
        let data = content(self.spec.seed ^ fnv64(&join_rel(prefix, name)), size);
        self.file_with(d, prefix, name, |d, n| d.create(n, &data, 0o600))
    }

    /// Create a file with `write`, then apply owner, mode and xattrs (in that
    /// order: a write or chown would clear setuid bits and capabilities).
    fn file_with(
        &mut self,
        d: &D,
        prefix: &[u8],
        name: &[u8],
        write: impl FnOnce(&D, &[u8]) -> io::Result<()>,
    ) -> Vec<u8> {
        let rel = join_rel(prefix, name);
        self.counter += 1;
        let i = self.counter;
        write(d, name).unwrap_or_else(|e| panic!("create {}: {e}", esc(&rel)));
        if self.spec.owners {
            let (u, g) = OWNERS[(i as usize) % OWNERS.len()];
            d.chown(name, u, g).unwrap();
        }
        // user.* xattrs need write permission: set them before the mode.
        if self.spec.xattrs && i % 3 == 0 {
            d.set_xattr(name, b"user.evac.test", &content(i, (i % 40) as usize))
                .unwrap();
            d.set_xattr(name, b"user.bin", b"\x00\x01\xff\xfe\n")
                .unwrap();
            if i % 2 == 0 {
                d.set_xattr(name, b"user.empty", b"").unwrap();
            }
        }
        let mode = if self.spec.modes {
            FILE_MODES[(i as usize) % FILE_MODES.len()]
        } else {
            0o644
        };
        d.chmod(name, mode).unwrap();
        self.info.files.push(rel.clone());
        rel
    }

    fn dir(&mut self, parent: &D, prefix: &[u8], name: &[u8], idx: usize) -> D {
        let rel = join_rel(prefix, name);
        let d = parent
            .mkdir(name, 0o755)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", esc(&rel)));
        if self.spec.owners {
            let (u, g) = OWNERS[(idx + 1) % OWNERS.len()];
            parent.chown(name, u, g).unwrap();
        }
        if self.spec.xattrs && idx % 2 == 0 {
            parent
                .set_xattr(name, b"user.dir", format!("dir {idx}").as_bytes())
                .unwrap();
        }
        d
    }
}

/// Build a tree under `root` (created if needed) according to `spec`.
#[allow(clippy::map_entry)]
pub fn build_tree(root: &Path, spec: &TreeSpec) -> TreeInfo {
    std::fs::create_dir_all(root).unwrap();
    let rd = D::open(root).unwrap();
    let mut b = Builder {
        spec,
        info: TreeInfo::default(),
        rng: Rng::new(spec.seed),
        counter: spec.seed % 97,
    };
    let mut dir_modes: Vec<(Vec<u8>, u32)> = Vec::new();

    // Ordinary files in nested directories: t/dNN/sNN/fNNNNN.dat
    if spec.files > 0 {
        let t = b.dir(&rd, b"", b"t", 0);
        let ndirs = spec.files.div_ceil(25).max(1);
        let per = (ndirs as f64).sqrt().ceil() as usize;
        let mut dirs: HashMap<usize, (D, Vec<u8>)> = HashMap::new();
        let mut tops: HashMap<usize, (D, Vec<u8>)> = HashMap::new();
        for i in 0..spec.files {
            let k = i % ndirs;
            let (top, sub) = (k / per, k % per);
            if !dirs.contains_key(&k) {
                if !tops.contains_key(&top) {
                    let name = format!("d{top:02}").into_bytes();
                    let d = b.dir(&t, b"t", &name, top);
                    let rel = join_rel(b"t", &name);
                    dir_modes.push((rel.clone(), DIR_MODES[top % DIR_MODES.len()]));
                    tops.insert(top, (d, rel));
                }
                let (td, trel) = &tops[&top];
                let name = format!("s{sub:02}").into_bytes();
                let d = b.dir(td, &trel.clone(), &name, k);
                let rel = join_rel(trel, &name);
                dir_modes.push((rel.clone(), DIR_MODES[(k + 1) % DIR_MODES.len()]));
                dirs.insert(k, (d, rel));
            }
            let (d, drel) = &dirs[&k];
            let mut size = SIZES[i % SIZES.len()].min(spec.max_size);
            if size > 16 {
                size = size - 8 + b.rng.below(16) as usize;
            }
            let name = format!("f{i:05}.dat").into_bytes();
            b.file(d, &drel.clone(), &name, size);
        }
    }

    if spec.hardlinks {
        let hl = b.dir(&rd, b"", b"hl", 1);
        let hsub = b.dir(&hl, b"hl", b"sub", 2);
        let other = b.dir(&rd, b"", b"hl-other", 3);
        // group 1: two names in one directory
        let a = b.file(&hl, b"hl", b"a", 5000);
        hl.link_from(b"b", &hl, b"a").unwrap();
        // group 2: three names across directories (one with a weird name)
        let x = b.file(&hl, b"hl", b"x", 70_000);
        hsub.link_from(b"x-again", &hl, b"x").unwrap();
        other.link_from(b"x\nthird name", &hl, b"x").unwrap();
        // group 3: an empty file with two names
        let e = b.file(&hsub, b"hl/sub", b"empty", 0);
        other.link_from(b"empty2", &hsub, b"empty").unwrap();
        let groups = vec![
            vec![a, b"hl/b".to_vec()],
            vec![
                x,
                b"hl/sub/x-again".to_vec(),
                b"hl-other/x\nthird name".to_vec(),
            ],
            vec![e, b"hl-other/empty2".to_vec()],
        ];
        for g in &groups {
            for r in &g[1..] {
                b.info.files.push(r.clone());
            }
        }
        b.info.hardlink_groups = groups;
    }

    if spec.sparse {
        let sp = b.dir(&rd, b"", b"sparse", 4);
        let mib = 1u64 << 20;
        let r1 = b.file_with(&sp, b"sparse", b"holes.bin", |d, n| {
            d.create(n, b"", 0o600)?;
            d.set_len(n, 8 * mib)?;
            d.pwrite(n, 0, &content(11, 4096))?;
            d.pwrite(n, 5 * mib, &content(12, 4096))
        });
        // (A file that is all hole has no data blocks, which the default `--hsm auto` takes for
        // an HSM stub: hsm_detect.rs relocates such files with --hsm none.)
        let r2 = b.file_with(&sp, b"sparse", b"mostly-hole.bin", |d, n| {
            d.create(n, b"", 0o600)?;
            d.set_len(n, 8 * mib)?;
            d.pwrite(n, 4 * mib, b"x")
        });
        let r3 = b.file_with(&sp, b"sparse", b"tail.bin", |d, n| {
            d.create(n, b"", 0o600)?;
            d.set_len(n, 3 * mib)?;
            d.pwrite(n, 3 * mib - 100, &content(13, 100))
        });
        b.info.sparse = vec![r1, r2, r3];
    }

    if spec.weird_names {
        let nd = b.dir(&rd, b"", b"names", 5);
        for (i, n) in weird_names().iter().enumerate() {
            let r = b.file(&nd, b"names", n, 10 + i * 7);
            b.info.weird.push(r);
        }
        // Directories with weird names, one nested in the other, 255-byte names.
        let wdname: &[u8] = b"dir \n\t\xff\\\"*?[-";
        let wd = b.dir(&nd, b"names", wdname, 6);
        let wrel = join_rel(b"names", wdname);
        let r = b.file(&wd, &wrel, b"inner\tfile\r", 33);
        b.info.weird.push(r);
        let long = vec![b'D'; 255];
        let ld = b.dir(&wd, &wrel, &long, 7);
        let lrel = join_rel(&wrel, &long);
        let r = b.file(&ld, &lrel, &vec![b'F'; 255], 44);
        b.info.weird.push(r);
        let r = b.file(&ld, &lrel, b"-", 1);
        b.info.weird.push(r);
    }

    if spec.deep_chain {
        // 18 levels of 240-byte names: the directory path is > 4096 bytes.
        // Regular files only down to level 12 so that DEST/<rel> still fits in
        // a symlink target (4095 bytes) for ordinary DEST paths.
        let mut d = b.dir(&rd, b"", b"deep", 8);
        let mut rel = b"deep".to_vec();
        for level in 1..=18usize {
            let mut name = format!("{level:03}-").into_bytes();
            name.resize(240, b'a' + (level % 26) as u8);
            let nd = b.dir(&d, &rel, &name, level);
            rel = join_rel(&rel, &name);
            d = nd;
            if level % 3 == 0 && level <= 12 {
                let r = b.file(&d, &rel, b"f", 100 + level);
                b.info.deep_files.push(r);
            }
            if level == 18 && spec.symlinks {
                d.symlink(b"deep-link", b"../../..").unwrap();
                b.info.symlinks.push(join_rel(&rel, b"deep-link"));
            }
        }
    }

    if spec.symlinks {
        let ld = b.dir(&rd, b"", b"links", 9);
        let outside = root
            .parent()
            .unwrap()
            .join(format!("outside-{:x}", spec.seed));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), b"outside the tree; never copy").unwrap();
        let mut abs_target = bytes_of(root);
        abs_target.extend_from_slice(if spec.files > 0 {
            b"/t/d00/s00/f00000.dat"
        } else {
            b"/links"
        });
        let links: Vec<(&[u8], Vec<u8>)> = vec![
            (
                b"rel",
                if spec.files > 0 {
                    b"../t/d00/s00/f00000.dat".to_vec()
                } else {
                    b"..".to_vec()
                },
            ),
            (b"abs", abs_target),
            (b"dangling", b"no/such/file".to_vec()),
            (b"loop", b"loop".to_vec()),
            (b"dir-outside", bytes_of(&outside)),
            (b"dir-inside", b"..".to_vec()),
            (b"we\tird\xff link", b"\xfe\nodd target".to_vec()),
        ];
        for (i, (n, t)) in links.iter().enumerate() {
            ld.symlink(n, t).unwrap();
            if spec.owners {
                let (u, g) = OWNERS[i % OWNERS.len()];
                ld.chown(n, u, g).unwrap();
            }
            b.info.symlinks.push(join_rel(b"links", n));
        }
        b.info.outside = Some(outside);
    }

    if spec.specials {
        let sd = b.dir(&rd, b"", b"special", 10);
        sd.mkfifo(b"fifo", 0o644).unwrap();
        sd.mkfifo(b"fi\nfo \xff", 0o600).unwrap();
        b.info.fifos = vec![b"special/fifo".to_vec(), b"special/fi\nfo \xff".to_vec()];
        let sock_path = root.join("special").join("sock");
        if sock_path.as_os_str().len() < 100 {
            let l = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
            drop(l); // the socket inode stays
            b.info.sockets.push(b"special/sock".to_vec());
        }
        if is_root() && sd.mknod_char(b"null-dev", 0o666, 1, 3).is_ok() {
            b.info.devices.push(b"special/null-dev".to_vec());
        }
        // a regular file next to them
        b.file(&sd, b"special", b"regular.txt", 12);
    }

    if spec.root_xattrs && is_root() {
        let xd = b.dir(&rd, b"", b"xa", 11);
        let r = b.file(&xd, b"xa", b"trusted.bin", 300);
        xd.set_xattr(b"trusted.bin", b"trusted.evac", b"\x00trusted\xff value")
            .unwrap();
        b.info.root_xattr_files.push(r);
        // File capability: set after chown/chmod (both clear it).
        let r = b.file(&xd, b"xa", b"cap-bin", 1000);
        xd.chmod(b"cap-bin", 0o755).unwrap();
        xd.set_xattr(b"cap-bin", b"security.capability", &cap_xattr())
            .unwrap();
        b.info.root_xattr_files.push(r);
        // Access ACL on a file.
        let r = b.file(&xd, b"xa", b"acl-file", 400);
        let acl = acl_xattr(&[
            (ACL_USER_OBJ, 6, u32::MAX),
            (ACL_USER, 4, 1234),
            (ACL_GROUP_OBJ, 4, u32::MAX),
            (ACL_GROUP, 4, 5678),
            (ACL_MASK, 6, u32::MAX),
            (ACL_OTHER, 0, u32::MAX),
        ]);
        xd.set_xattr(b"acl-file", b"system.posix_acl_access", &acl)
            .unwrap();
        b.info.root_xattr_files.push(r);
        // A directory with a default and an access ACL; a file inherits it.
        let ad = b.dir(&xd, b"xa", b"acl-dir", 12);
        let dacl = acl_xattr(&[
            (ACL_USER_OBJ, 7, u32::MAX),
            (ACL_USER, 5, 1234),
            (ACL_GROUP_OBJ, 5, u32::MAX),
            (ACL_MASK, 7, u32::MAX),
            (ACL_OTHER, 5, u32::MAX),
        ]);
        xd.set_xattr(b"acl-dir", b"system.posix_acl_default", &dacl)
            .unwrap();
        xd.set_xattr(b"acl-dir", b"system.posix_acl_access", &dacl)
            .unwrap();
        ad.create(b"inherits.txt", b"inherits the default ACL", 0o666)
            .unwrap();
        b.info.files.push(b"xa/acl-dir/inherits.txt".to_vec());
        b.info
            .root_xattr_files
            .push(b"xa/acl-dir/inherits.txt".to_vec());
        // All of it together, with setuid.
        let r = b.file(&xd, b"xa", b"everything", 2000);
        xd.chown(b"everything", 1234, 5678).unwrap();
        xd.chmod(b"everything", 0o4750).unwrap();
        xd.set_xattr(b"everything", b"user.a", b"1").unwrap();
        xd.set_xattr(b"everything", b"trusted.b", b"2").unwrap();
        xd.set_xattr(b"everything", b"security.capability", &cap_xattr())
            .unwrap();
        xd.set_xattr(b"everything", b"system.posix_acl_access", &acl)
            .unwrap();
        b.info.root_xattr_files.push(r);
        // A big user xattr value.
        let r = b.file(&xd, b"xa", b"big-xattr", 10);
        xd.set_xattr(b"big-xattr", b"user.big", &content(5, 2000))
            .unwrap();
        b.info.root_xattr_files.push(r);
    }

    // Directory modes last-but-one (creating entries does not change modes; it
    // would clear nothing), then times bottom-up.
    if spec.modes {
        for (rel, mode) in &dir_modes {
            let (d, n) = open_rel(root, rel).unwrap();
            d.chmod(&n, *mode).unwrap();
        }
    }
    if spec.times {
        stamp_times(root, spec.seed);
    }
    b.info
}

/// The times `stamp_times` gives `rel`: (atime, mtime), both with nanoseconds.
pub fn stamp_for(seed: u64, rel: &[u8]) -> ((i64, i64), (i64, i64)) {
    let mut r = Rng::new(seed ^ fnv64(rel));
    let m = (
        1_500_000_000 + r.below(100_000_000) as i64,
        1 + r.below(999_999_998) as i64,
    );
    let a = (
        1_000_000_000 + r.below(400_000_000) as i64,
        1 + r.below(999_999_998) as i64,
    );
    (a, m)
}

/// Give every entry under `root` (and root itself) distinctive atime/mtime, bottom-up.
pub fn stamp_times(root: &Path, seed: u64) {
    fn walk(d: &D, prefix: &[u8], seed: u64) {
        for name in d.names().unwrap() {
            let rel = join_rel(prefix, &name);
            let st = d.lstat(&name).unwrap();
            if Kind::from_mode(st.st_mode) == Kind::Dir {
                walk(&d.sub(&name).unwrap(), &rel, seed);
            }
            let (a, m) = stamp_for(seed, &rel);
            d.set_times(&name, a, m)
                .unwrap_or_else(|e| panic!("utimensat {}: {e}", esc(&rel)));
        }
    }
    let d = D::open(root).unwrap();
    walk(&d, b"", seed);
    let (a, m) = stamp_for(seed, b"");
    d.set_times(b".", a, m).unwrap();
}
