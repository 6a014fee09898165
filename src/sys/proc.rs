//! Which processes use files under a tree, told from /proc alone: the per-process readers that
//! the engine's busy-file checks share (open fds and their modes, cwd, root, executable,
//! mappings), and the scan behind `evac holders`. Only /proc entries are read or stat'ed; the
//! files themselves are never opened and no path a user controls is resolved.

use crate::error::{Error, Result};
use crate::util::escape::{escape, quoted};
use rustix::fs::Stat;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// How a file descriptor may be used, from the flags in /proc/PID/fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// O_PATH: no I/O, but the file (and its mount) stays in use.
    Path,
}

impl Access {
    pub fn from_flags(flags: u32) -> Access {
        if flags & libc::O_PATH as u32 != 0 {
            return Access::Path;
        }
        match flags & libc::O_ACCMODE as u32 {
            f if f == libc::O_WRONLY as u32 => Access::Write,
            f if f == libc::O_RDWR as u32 => Access::ReadWrite,
            _ => Access::Read,
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
            Access::ReadWrite => "rw",
            Access::Path => "path",
        }
    }
}

/// Why a read under /proc/PID failed, as far as a scan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The process, fd or mapping went away meanwhile.
    Gone,
    /// Not ours to read (another user's process, and we are not root).
    Denied,
    Other,
}

impl Miss {
    fn of(errno: Option<i32>) -> Miss {
        match errno {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Miss::Gone,
            Some(libc::EACCES) | Some(libc::EPERM) => Miss::Denied,
            _ => Miss::Other,
        }
    }
}

impl From<io::Error> for Miss {
    fn from(e: io::Error) -> Miss {
        Miss::of(e.raw_os_error())
    }
}

impl From<rustix::io::Errno> for Miss {
    fn from(e: rustix::io::Errno) -> Miss {
        Miss::of(Some(e.raw_os_error()))
    }
}

/// One process, read through /proc/PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proc(pub u32);

/// Every process but this one: evac is never a holder of what it works on.
pub fn other_processes() -> io::Result<Vec<Proc>> {
    let me = std::process::id();
    Ok(std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid != me)
        .map(Proc)
        .collect())
}

/// The flag in /proc/PID/stat that marks a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

impl Proc {
    fn entry(self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{name}", self.0))
    }

    /// The object a magic link (`cwd`, `root`, `exe`, `fd/N`, `map_files/A-B`) refers to. The
    /// kernel hands over the object itself: no path is looked up again, so a user's symlink
    /// cannot redirect it.
    pub fn stat_of(self, link: &str) -> Result<Stat, Miss> {
        rustix::fs::stat(self.entry(link)).map_err(Miss::from)
    }

    /// Where a magic link points, as the kernel names it (" (deleted)" after an unlinked name).
    pub fn link_of(self, link: &str) -> Result<Vec<u8>, Miss> {
        Ok(std::fs::read_link(self.entry(link))?
            .into_os_string()
            .into_vec())
    }

    /// Calls `f` with each open fd (its name under `fd/`) and what it refers to. Fds closed
    /// meanwhile are skipped.
    pub fn for_each_fd(self, mut f: impl FnMut(&str, &Stat)) -> Result<(), Miss> {
        for e in std::fs::read_dir(self.entry("fd"))?.flatten() {
            let name = e.file_name();
            let Some(fd) = name.to_str() else { continue };
            if let Ok(st) = rustix::fs::stat(e.path()) {
                f(fd, &st);
            }
        }
        Ok(())
    }

    /// The open mode of fd `fd` (None if it was closed meanwhile).
    pub fn access(self, fd: &str) -> Option<Access> {
        let text = std::fs::read_to_string(self.entry(&format!("fdinfo/{fd}"))).ok()?;
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())?;
        Some(Access::from_flags(flags))
    }

    /// The text of /proc/PID/maps (parse it with [`mappings`]).
    pub fn maps(self) -> Result<Vec<u8>, Miss> {
        Ok(std::fs::read(self.entry("maps"))?)
    }

    /// The command name the kernel keeps (at most 15 bytes; any bytes).
    pub fn comm(self) -> Option<Vec<u8>> {
        let mut c = std::fs::read(self.entry("comm")).ok()?;
        if c.last() == Some(&b'\n') {
            c.pop();
        }
        Some(c)
    }

    pub fn cmdline(self) -> Vec<Vec<u8>> {
        let raw = std::fs::read(self.entry("cmdline")).unwrap_or_default();
        let mut args: Vec<Vec<u8>> = raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        if args.last().is_some_and(|a| a.is_empty()) {
            args.pop();
        }
        args
    }

    /// The effective uid (what `ps` shows as the user).
    pub fn euid(self) -> Option<u32> {
        let status = std::fs::read_to_string(self.entry("status")).ok()?;
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        uids.split_whitespace().nth(1)?.parse().ok()
    }

    /// Kernel threads have no files of their own to ask about, and their entries are closed
    /// to non-root readers (they would only inflate the count of unreadable processes).
    pub fn is_kernel_thread(self) -> bool {
        let Ok(stat) = std::fs::read(self.entry("stat")) else {
            return false;
        };
        // The command in parentheses may contain anything; the fields follow its last ')'.
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            return false;
        };
        let flags = std::str::from_utf8(&stat[close + 1..])
            .ok()
            .and_then(|rest| rest.split_whitespace().nth(6)?.parse::<u64>().ok());
        flags.is_some_and(|f| f & PF_KTHREAD != 0)
    }
}

/// One line of /proc/PID/maps.
pub struct Mapping<'a> {
    /// "start-end", in hex.
    pub range: &'a [u8],
    pub perms: &'a [u8],
    /// The device as the mapping reports it (the superblock's; a stat of the file may differ
    /// on filesystems with several devices, such as btrfs subvolumes).
    pub dev: u64,
    /// 0 for anonymous memory.
    pub ino: u64,
    /// The name as maps shows it: a newline as `\012`, " (deleted)" after an unlinked name.
    pub shown: &'a [u8],
}

impl Mapping<'_> {
    /// Written through to the file itself, even after its fd is closed.
    pub fn shared_writable(&self) -> bool {
        self.perms.len() == 4 && self.perms[1] == b'w' && self.perms[3] == b's'
    }

    /// The entry under /proc/PID/map_files (its name drops the zero padding maps uses).
    fn map_files_entry(&self) -> Option<String> {
        let r = std::str::from_utf8(self.range).ok()?;
        let (a, b) = r.split_once('-')?;
        let (a, b) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        Some(format!("map_files/{a:x}-{b:x}"))
    }

    fn parse(line: &[u8]) -> Option<Mapping<'_>> {
        let mut rest = line;
        let range = field(&mut rest)?;
        let perms = field(&mut rest)?;
        let _offset = field(&mut rest)?;
        let dev = std::str::from_utf8(field(&mut rest)?).ok()?;
        let ino = std::str::from_utf8(field(&mut rest)?).ok()?.parse().ok()?;
        let (maj, min) = dev.split_once(':')?;
        let dev = libc::makedev(
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        );
        let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
        Some(Mapping {
            range,
            perms,
            dev,
            ino,
            shown: &rest[start..],
        })
    }
}

/// The next space-separated field of a maps line.
fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let start = rest.iter().position(|&b| b != b' ')?;
    let s = &rest[start..];
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let (f, r) = s.split_at(end);
    *rest = r;
    Some(f)
}

/// The lines of a /proc/PID/maps text.
pub fn mappings(maps: &[u8]) -> impl Iterator<Item = Mapping<'_>> {
    maps.split(|&b| b == b'\n').filter_map(Mapping::parse)
}

/// Undo the one escape maps applies to names (newline as `\012`). A name that itself contains
/// a backslash followed by 012 is read wrongly here; map_files, where readable, is exact.
fn unescape_maps(shown: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(shown.len());
    let mut i = 0;
    while i < shown.len() {
        if shown[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(shown[i]);
            i += 1;
        }
    }
    out
}

/// How a process uses something under the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Use {
    /// An open file descriptor, with its mode.
    Open(Access),
    /// Its working directory.
    Cwd,
    /// Its root directory (chroot).
    Root,
    /// The program it runs.
    Exe,
    /// A file mapped into its memory (a shared library, a data file).
    Mmap,
}

impl Use {
    pub fn kind(self) -> &'static str {
        match self {
            Use::Open(_) => "open",
            Use::Cwd => "cwd",
            Use::Root => "root",
            Use::Exe => "exe",
            Use::Mmap => "mmap",
        }
    }

    pub fn mode(self) -> Option<Access> {
        match self {
            Use::Open(a) => Some(a),
            _ => None,
        }
    }
}

impl std::fmt::Display for Use {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode() {
            Some(a) => write!(f, "{} {}", self.kind(), a.as_str()),
            None => f.write_str(self.kind()),
        }
    }
}

/// One use of one file or directory under the tree by one process.
#[derive(Debug, Clone)]
pub struct Holding {
    pub pid: u32,
    pub uid: Option<u32>,
    /// The user name (escaped), or the uid where it has none.
    pub user: String,
    /// /proc/PID/comm, raw.
    pub command: Vec<u8>,
    pub cmdline: Vec<Vec<u8>>,
    pub how: Use,
    /// Relative to the tree, raw; "." for the tree's top.
    pub path: Vec<u8>,
    /// Unlinked since the process took hold of it: it still keeps the old storage busy.
    pub deleted: bool,
    /// The /proc/PID entry its data can be read back through (`fd/3`, or `map_files/7f00-7f10`
    /// for a mapping and for the program itself), for `evac rescue`; None for a directory, or
    /// for a mapping seen only in maps (map_files closed to us).
    pub entry: Option<String>,
    /// (device, inode) as /proc showed them: the entry may name another file by the time it
    /// is opened (an fd closed and its number reused).
    pub key: (u64, u64),
}

/// What a scan found.
#[derive(Debug)]
pub struct Scan {
    /// The tree, canonicalized.
    pub source: PathBuf,
    /// By pid, then use, then path.
    pub holdings: Vec<Holding>,
    /// Processes whose entries could not be read (not ours, and we are not root).
    pub unreadable: usize,
}

impl Scan {
    pub fn processes(&self) -> usize {
        self.holdings
            .iter()
            .map(|h| h.pid)
            .collect::<HashSet<_>>()
            .len()
    }
}

/// The tree asked about.
struct Tree {
    path: Vec<u8>,
    dev: u64,
}

impl Tree {
    /// `name` relative to the tree ("." for its top), if it lies inside.
    fn relative(&self, name: &[u8]) -> Option<Vec<u8>> {
        if name == self.path.as_slice() {
            return Some(b".".to_vec());
        }
        // "/" is the one canonical path that already ends with the separator.
        let base = self.path.strip_suffix(b"/").unwrap_or(&self.path);
        let rest = name.strip_prefix(base)?.strip_prefix(b"/")?;
        (!rest.is_empty()).then(|| rest.to_vec())
    }

    /// Where a use found in /proc lies in the tree, if it does: on the tree's device and named
    /// under its path. Both are needed: a name alone would count a file reached through a bind
    /// mount or a look-alike path, a device alone any file of the same filesystem -- and a
    /// relocated file's holder, whose fd names the copy at DEST, is rightly not counted.
    fn locate(&self, name: &[u8], dev: u64, unlinked: bool) -> Option<(Vec<u8>, bool)> {
        if dev != self.dev {
            return None;
        }
        let name = match name.strip_suffix(b" (deleted)") {
            Some(n) if unlinked => n,
            _ => name,
        };
        Some((self.relative(name)?, unlinked))
    }
}

/// Which processes hold, have as cwd or root, run, or map anything under `source`.
pub fn scan(source: &Path) -> Result<Scan> {
    let shown = source.as_os_str().as_encoded_bytes();
    let canon = std::fs::canonicalize(source).map_err(|e| Error::io("resolve SOURCE", shown, e))?;
    let st = rustix::fs::stat(&canon).map_err(|e| Error::io("stat SOURCE", shown, e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Err(Error::Setup(format!(
            "SOURCE {}: not a directory",
            quoted(shown)
        )));
    }
    let tree = Tree {
        path: canon.clone().into_os_string().into_vec(),
        dev: st.st_dev,
    };
    let procs = other_processes().map_err(|e| Error::io("list processes in", b"/proc", e))?;
    let mut users: HashMap<u32, String> = HashMap::new();
    let mut holdings = Vec::new();
    let mut unreadable = 0;
    for p in procs {
        if p.is_kernel_thread() {
            continue;
        }
        let mut found = Vec::new();
        if uses_in(p, &tree, &mut found) == Err(Miss::Denied) {
            unreadable += 1;
        }
        if found.is_empty() {
            continue;
        }
        let uid = p.euid();
        let user = match uid {
            Some(u) => users
                .entry(u)
                .or_insert_with(|| user_name(u).unwrap_or_else(|| u.to_string()))
                .clone(),
            None => "?".into(),
        };
        let command = p.comm().unwrap_or_default();
        let cmdline = p.cmdline();
        for (how, path, deleted, entry, key) in found {
            holdings.push(Holding {
                pid: p.0,
                uid,
                user: user.clone(),
                command: command.clone(),
                cmdline: cmdline.clone(),
                how,
                path,
                deleted,
                entry,
                key,
            });
        }
    }
    holdings.sort_by(|a, b| (a.pid, a.how, &a.path).cmp(&(b.pid, b.how, &b.path)));
    Ok(Scan {
        source: canon,
        holdings,
        unreadable,
    })
}

type Found = Vec<(Use, Vec<u8>, bool, Option<String>, (u64, u64))>;

/// Everything `p` uses under the tree, into `found`; `Err(Denied)` if some of its entries
/// were closed to us (what could be read is still in `found`).
fn uses_in(p: Proc, tree: &Tree, found: &mut Found) -> Result<(), Miss> {
    let mut denied = false;
    let mut seen: HashSet<(Use, u64, u64)> = HashSet::new();
    let mut add = |found: &mut Found,
                   how: Use,
                   st: (u64, u64),
                   at: Option<(Vec<u8>, bool)>,
                   entry: Option<String>| {
        if let Some((path, deleted)) = at {
            if seen.insert((how, st.0, st.1)) {
                found.push((how, path, deleted, entry, st));
            }
        }
    };
    let mut exe = None;
    for (link, how) in [("cwd", Use::Cwd), ("root", Use::Root), ("exe", Use::Exe)] {
        match p.stat_of(link) {
            Ok(st) => {
                if how == Use::Exe {
                    exe = Some((st.st_dev, st.st_ino));
                }
                if st.st_dev == tree.dev {
                    if let Ok(name) = p.link_of(link) {
                        let at = tree.locate(&name, st.st_dev, st.st_nlink == 0);
                        // The program's data is read back through its mapping (below).
                        add(found, how, (st.st_dev, st.st_ino), at, None);
                    }
                }
            }
            Err(Miss::Denied) => denied = true,
            Err(_) => {}
        }
    }
    let fds = p.for_each_fd(|fd, st| {
        // Most fds are sockets, pipes or files elsewhere: dropped before the readlink.
        if st.st_dev != tree.dev {
            return;
        }
        let entry = format!("fd/{fd}");
        let Ok(name) = p.link_of(&entry) else {
            return;
        };
        let at = tree.locate(&name, st.st_dev, st.st_nlink == 0);
        if at.is_some() {
            if let Some(a) = p.access(fd) {
                add(found, Use::Open(a), (st.st_dev, st.st_ino), at, Some(entry));
            }
        }
    });
    denied |= fds == Err(Miss::Denied);
    match p.maps() {
        Ok(maps) => {
            for m in mappings(&maps) {
                if m.ino != 0 && Some((m.dev, m.ino)) == exe {
                    if let Some(e) = m.map_files_entry() {
                        for f in found
                            .iter_mut()
                            .filter(|f| f.0 == Use::Exe && f.3.is_none())
                        {
                            f.3 = Some(e.clone());
                        }
                    }
                    continue;
                }
                if m.ino == 0 {
                    continue;
                }
                let name = unescape_maps(m.shown);
                let unlinked = name.ends_with(b" (deleted)");
                // The name filters cheaply; the mapped file itself, where the kernel lets us
                // stat it (root), then decides, with its exact name.
                if tree.locate(&name, tree.dev, unlinked).is_none() {
                    continue;
                }
                let exact = m
                    .map_files_entry()
                    .and_then(|e| Some((p.stat_of(&e).ok()?, p.link_of(&e).ok()?, e)));
                let (at, key, entry) = match exact {
                    Some((st, name, e)) => (
                        tree.locate(&name, st.st_dev, st.st_nlink == 0),
                        (st.st_dev, st.st_ino),
                        Some(e),
                    ),
                    None => (tree.locate(&name, m.dev, unlinked), (m.dev, m.ino), None),
                };
                if Some(key) != exe {
                    add(found, Use::Mmap, key, at, entry);
                }
            }
        }
        Err(Miss::Denied) => denied = true,
        Err(_) => {}
    }
    if denied {
        Err(Miss::Denied)
    } else {
        Ok(())
    }
}

/// The login name of `uid`, escaped, from the system's user database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: getpwuid_r writes only into `pw` and `buf` (whose length it is told), and
        // sets `res` to null or to `&pw`; `pw`'s strings point into `buf`, read before it goes.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || res.is_null() || pw.pw_name.is_null() {
            return None;
        }
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        return Some(escape(name.to_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_maps_lines() {
        let maps = b"00400000-0040c000 r-xp 00000000 08:01 1234       /usr/bin/a b\\012c\n\
7f00-7f10 rw-s 00000000 fd:10 99 /data/x (deleted)\n\
7ffd-7ffe rw-p 00000000 00:00 0          [stack]\n";
        let m: Vec<_> = mappings(maps).collect();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, libc::makedev(8, 1));
        assert_eq!(m[0].ino, 1234);
        assert_eq!(unescape_maps(m[0].shown), b"/usr/bin/a b\nc");
        assert_eq!(
            m[0].map_files_entry().as_deref(),
            Some("map_files/400000-40c000")
        );
        assert!(!m[0].shared_writable());
        assert!(m[1].shared_writable());
        assert_eq!(m[1].dev, libc::makedev(0xfd, 0x10));
        assert_eq!(m[2].ino, 0);
    }

    #[test]
    fn open_modes_from_flags() {
        assert_eq!(Access::from_flags(0o100000), Access::Read);
        assert_eq!(Access::from_flags(0o102001), Access::Write);
        assert_eq!(Access::from_flags(0o2), Access::ReadWrite);
        assert_eq!(Access::from_flags(0o10000000), Access::Path);
        assert_eq!(Use::Open(Access::ReadWrite).to_string(), "open rw");
        assert_eq!(Use::Cwd.to_string(), "cwd");
    }

    #[test]
    fn inside_the_tree_by_device_and_name() {
        let t = Tree {
            path: b"/srv/data".to_vec(),
            dev: 7,
        };
        assert_eq!(t.relative(b"/srv/data"), Some(b".".to_vec()));
        assert_eq!(t.relative(b"/srv/data/a/b"), Some(b"a/b".to_vec()));
        assert_eq!(t.relative(b"/srv/data-old/a"), None);
        assert_eq!(t.relative(b"/srv/dat"), None);
        assert_eq!(t.relative(b"socket:[123]"), None);
        assert_eq!(t.locate(b"/srv/data/a", 8, false), None);
        assert_eq!(
            t.locate(b"/srv/data/a (deleted)", 7, true),
            Some((b"a".to_vec(), true))
        );
        // Only an unlinked file's name carries the kernel's suffix; a live name keeps it.
        assert_eq!(
            t.locate(b"/srv/data/a (deleted)", 7, false),
            Some((b"a (deleted)".to_vec(), false))
        );
        let root = Tree {
            path: b"/".to_vec(),
            dev: 7,
        };
        assert_eq!(root.relative(b"/"), Some(b".".to_vec()));
        assert_eq!(root.relative(b"/etc/x"), Some(b"etc/x".to_vec()));
    }
}
