//! Dirfd-relative filesystem primitives: every mutation evac makes goes through a directory fd
//! reached from a root one component at a time without following symlinks (I6), so a user who
//! swaps a directory for a symlink cannot redirect it, and paths longer than PATH_MAX work.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::io;

pub use rustix::fs::Stat;

fn err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Split a relative path into its parent directory and final name.
pub fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// Join a relative directory and a name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(dir.len() + name.len() + 1);
    v.extend_from_slice(dir);
    if !dir.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn components(rel: &[u8]) -> impl Iterator<Item = &[u8]> {
    rel.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn check_component(c: &[u8]) -> io::Result<()> {
    if c == b"." || c == b".." || c.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path component '.', '..' or NUL refused",
        ));
    }
    Ok(())
}

/// Open a root directory given by the operator (the operator's own path may contain symlinks).
pub fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Open a subdirectory without following a symlink in its place.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    check_component(name)?;
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Resolve a relative directory from `root`, one component at a time, never following symlinks.
pub fn resolve_dir(root: BorrowedFd<'_>, rel_dir: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = rfs::openat(
        root,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    for c in components(rel_dir) {
        cur = open_dir_at(cur.as_fd(), c)?;
    }
    Ok(cur)
}

/// Like `resolve_dir`, creating missing directories with mode 0700 (final metadata comes later,
/// so nobody can reach a copy before its permissions are right).
pub fn ensure_dir(root: BorrowedFd<'_>, rel_dir: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = resolve_dir(root, b"")?;
    for c in components(rel_dir) {
        check_component(c)?;
        match rfs::mkdirat(cur.as_fd(), c, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(err(e)),
        }
        cur = open_dir_at(cur.as_fd(), c)?;
    }
    Ok(cur)
}

pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Stat> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    rfs::fstat(fd).map_err(err)
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

pub fn mtime_ns(st: &Stat) -> i64 {
    st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64
}
pub fn atime_ns(st: &Stat) -> i64 {
    st.st_atime * 1_000_000_000 + st.st_atime_nsec as i64
}
pub fn ctime_ns(st: &Stat) -> i64 {
    st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64
}

fn ts(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

pub fn timestamps(atime_ns: i64, mtime_ns: i64) -> Timestamps {
    Timestamps {
        last_access: ts(atime_ns),
        last_modification: ts(mtime_ns),
    }
}

/// Open a regular file for reading without following symlinks, without blocking on FIFOs, and
/// without touching its atime where the kernel lets us.
pub fn open_read(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match rfs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, base, Mode::empty()).map_err(err),
        r => r.map_err(err),
    }
}

/// A handle on a file that does not open its data (O_PATH): for an HSM stub, which a read open
/// could recall.
pub fn open_path(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Create a new file that did not exist, readable by its creator only.
pub fn create_excl(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(err)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rfs::unlinkat(dir, name, AtFlags::empty()).map_err(err)
}

/// Unlink, treating "already gone" as success.
pub fn unlink_if_exists(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(err(e)),
    }
}

pub fn rename_noreplace(
    od: BorrowedFd<'_>,
    on: &[u8],
    nd: BorrowedFd<'_>,
    nn: &[u8],
) -> io::Result<()> {
    rfs::renameat_with(od, on, nd, nn, RenameFlags::NOREPLACE).map_err(err)
}

pub fn rename_exchange(
    od: BorrowedFd<'_>,
    on: &[u8],
    nd: BorrowedFd<'_>,
    nn: &[u8],
) -> io::Result<()> {
    if exchange_disabled() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    rfs::renameat_with(od, on, nd, nn, RenameFlags::EXCHANGE).map_err(err)
}

/// Lets tests drive the no-RENAME_EXCHANGE fallback on filesystems that do support it.
fn exchange_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("EVAC_TEST_NO_EXCHANGE").is_some())
}

pub fn rename_replace(
    od: BorrowedFd<'_>,
    on: &[u8],
    nd: BorrowedFd<'_>,
    nn: &[u8],
) -> io::Result<()> {
    rfs::renameat(od, on, nd, nn).map_err(err)
}

pub fn rmdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(err)
}

pub fn link_at(od: BorrowedFd<'_>, on: &[u8], nd: BorrowedFd<'_>, nn: &[u8]) -> io::Result<()> {
    rfs::linkat(od, on, nd, nn, AtFlags::empty()).map_err(err)
}

/// Give an open file a new name (fails with EEXIST if the name is taken), through its
/// /proc/self/fd link so that what gets the name is the inode we hold, whatever the directory's
/// other names have become. ENOENT means /proc is not mounted.
pub fn link_fd_at(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rfs::linkat(rfs::CWD, proc.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW).map_err(err)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rfs::symlinkat(target, dir, name).map_err(err)
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    rfs::readlinkat(dir, name, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(err)
}

/// chown and times of a symlink itself.
pub fn set_link_meta(
    dir: BorrowedFd<'_>,
    name: &[u8],
    uid: u32,
    gid: u32,
    atime_ns: i64,
    mtime_ns: i64,
) -> io::Result<()> {
    if is_root() {
        rfs::chownat(
            dir,
            name,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(err)?;
    }
    rfs::utimensat(
        dir,
        name,
        &timestamps(atime_ns, mtime_ns),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(err)
}

/// Whether we run as root (cached: asked once per file otherwise).
pub fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
}

/// The file handle of `name` in `dir` (not followed if a symlink), as the handle type (4 bytes,
/// native order) followed by the handle's bytes. rustix has no name_to_handle_at.
pub fn handle_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    const MAX: usize = 128; // MAX_HANDLE_SZ
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + MAX];
    buf[..4].copy_from_slice(&(MAX as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf is a file_handle with room for MAX bytes of handle; cname is NUL-terminated.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut mount_id,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize).min(MAX);
    let mut out = buf[4..8].to_vec();
    out.extend_from_slice(&buf[8..8 + len]);
    Ok(out)
}

/// What `probe_handle` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Probed {
    pub ino: u64,
    /// For a symlink, its target.
    pub target: Option<Vec<u8>>,
    /// Where the kernel says it is now (its cached path; `/` or nothing when it cannot tell).
    pub path: Option<std::path::PathBuf>,
}

/// What a handle from `handle_at` names now: `Ok(None)` if that inode is gone (deleted, even
/// if its number was reused since), else its inode number, its target for a symlink, and its
/// path as the kernel knows it. Needs CAP_DAC_READ_SEARCH (EPERM otherwise); `fs` is any fd on
/// the same filesystem.
pub fn probe_handle(fs: BorrowedFd<'_>, handle: &[u8]) -> io::Result<Option<Probed>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if handle.len() < 4 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let n = handle.len() - 4;
    let mut buf = vec![0u8; 8 + n];
    buf[..4].copy_from_slice(&(n as u32).to_ne_bytes());
    buf[4..].copy_from_slice(handle);
    // SAFETY: buf is a complete file_handle of n bytes.
    let fd = unsafe {
        libc::open_by_handle_at(
            fs.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: open_by_handle_at returned a new fd that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_fd())?;
    if st.st_nlink == 0 {
        return Ok(None);
    }
    let target = if file_type(&st) == FileType::Symlink {
        Some(readlink_at(fd.as_fd(), b"")?)
    } else {
        None
    };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok();
    Ok(Some(Probed {
        ino: st.st_ino,
        target,
        path,
    }))
}

/// Open a file by its absolute path for reading, resolving every component from `/`
/// without following a symlink (a user who swaps a directory for a symlink cannot redirect
/// the read), and stat it. Refuses anything but a regular file.
pub fn open_absolute(abs: &[u8]) -> io::Result<(OwnedFd, Stat)> {
    let rel = abs
        .strip_prefix(b"/")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"))?;
    let root = open_root(std::path::Path::new("/"))?;
    let (pd, name) = split_parent(rel);
    let dir = resolve_dir(root.as_fd(), pd)?;
    let fd = open_read(dir.as_fd(), name)?;
    let st = fstat(fd.as_fd())?;
    if file_type(&st) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((fd, st))
}

pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::syncfs(fd).map_err(err)
}

/// All xattrs of an open file as (name, value) pairs; an fs without xattrs yields none.
pub fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    read_xattrs_with(&mut |b| rfs::flistxattr(fd, b), &mut |n, b| {
        rfs::fgetxattr(fd, n, b)
    })
}

/// The attributes of a file open only with O_PATH (an HSM stub, which must not be opened for
/// reading), through its /proc/self/fd link.
pub fn read_xattrs_opath(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    read_xattrs_with(&mut |b| rfs::listxattr(p.as_str(), b), &mut |n, b| {
        rfs::getxattr(p.as_str(), n, b)
    })
}

type ListFn<'a> = dyn FnMut(&mut [u8]) -> rustix::io::Result<usize> + 'a;
type GetFn<'a> = dyn FnMut(&[u8], &mut [u8]) -> rustix::io::Result<usize> + 'a;

fn read_xattrs_with(
    list_fn: &mut ListFn<'_>,
    get_fn: &mut GetFn<'_>,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut list = vec![0u8; 1024];
    let n = loop {
        match list_fn(&mut list[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => list.resize(list.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut val = vec![0u8; 256];
        loop {
            match get_fn(name, &mut val[..]) {
                Ok(len) => {
                    val.truncate(len);
                    out.push((name.to_vec(), val));
                    break;
                }
                Err(Errno::RANGE) => val.resize(val.len().max(256) * 4, 0),
                // Vanished between list and get: it is not there any more.
                Err(Errno::NODATA) => break,
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(out)
}

pub fn set_xattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    rfs::fsetxattr(fd, name, value, rfs::XattrFlags::empty()).map_err(err)
}

/// Owner, xattrs, mode and times, in the order that keeps setuid bits and file capabilities:
/// chown clears both, so it goes first; mode after xattrs so an ACL's mask cannot alter it.
/// Returns xattrs that could not be set (name, error) rather than failing the file on them
/// when we are not root (a user cannot set trusted.* on their own copy either).
pub fn apply_meta(
    fd: BorrowedFd<'_>,
    st: &Stat,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<Vec<(Vec<u8>, io::Error)>> {
    let root = is_root();
    if root {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(st.st_uid)),
            Some(rfs::Gid::from_raw(st.st_gid)),
        )
        .map_err(err)?;
    }
    let mut skipped = Vec::new();
    for (name, value) in xattrs {
        if let Err(e) = set_xattr(fd, name, value) {
            if root {
                return Err(e);
            }
            skipped.push((name.clone(), e));
        }
    }
    rfs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777)).map_err(err)?;
    rfs::futimens(fd, &timestamps(atime_ns(st), mtime_ns(st))).map_err(err)?;
    Ok(skipped)
}

/// fcntl F_SETSIG (Linux); the libc crate does not export it.
const F_SETSIG: i32 = 10;

pub const LEASE_RDLCK: i32 = libc::F_RDLCK;
pub const LEASE_UNLCK: i32 = libc::F_UNLCK;

/// Take a read lease: refused (EAGAIN) if anyone has the file open for writing.
pub fn set_lease(fd: BorrowedFd<'_>, kind: i32, signal: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain fcntl calls on a valid fd.
    unsafe {
        if kind != LEASE_UNLCK && libc::fcntl(fd.as_raw_fd(), F_SETSIG, signal) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, kind) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The lease type we hold, or the one it is being broken to while a break is pending.
pub fn get_lease(fd: BorrowedFd<'_>) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain fcntl on a valid fd.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Copy `len` bytes from `src` to `dst`, keeping holes, hashing every byte (holes as zeros) in the
/// same pass. `keep_going` is asked before each chunk, with the chunk's size (so that a rate cap
/// applies inside a file), and a lease break is answered promptly.
/// Start writing back the chunk just written, and wait for the one before: at most two chunks of
/// a copy are dirty at a time, so the disks see a steady stream at the pace evac is allowed,
/// not the kernel's bursts of gigabytes at a batch's syncfs. (Writeback only; durability is
/// still the batch's syncfs.)
fn stream_out(fd: BorrowedFd<'_>, this: (u64, usize), before: &mut Option<(u64, usize)>) {
    // SAFETY: sync_file_range on a descriptor we own, no memory passed.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            this.0 as i64,
            this.1 as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
        if let Some((off, n)) = before.replace(this) {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                off as i64,
                n as i64,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
    }
}

pub fn copy_sparse(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    hasher: &mut blake3::Hasher,
    buf: &mut [u8],
    keep_going: &mut dyn FnMut(u64) -> bool,
    stream: bool,
) -> io::Result<CopyOutcome> {
    use rustix::fs::SeekFrom;
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    let mut unsynced: Option<(u64, usize)> = None;
    while pos < len {
        let data = match rfs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(Errno::NXIO) => len,
            // Filesystems without SEEK_DATA: treat everything as data.
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(source_err(e)),
        };
        if data > pos {
            hash_zeros(hasher, data - pos);
            pos = data;
            if pos >= len {
                break;
            }
        }
        let hole = match rfs::seek(src, SeekFrom::Hole(pos)) {
            Ok(h) => h.min(len),
            Err(Errno::NXIO) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => len,
            Err(e) => return Err(source_err(e)),
        };
        while pos < hole {
            let want = ((hole - pos) as usize).min(buf.len());
            if !keep_going(want as u64) {
                return Ok(CopyOutcome::Aborted);
            }
            let n = match rustix::io::pread(src, &mut buf[..want], pos) {
                Ok(n) => n,
                Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
                Err(e) => return Err(source_err(e)),
            };
            if n == 0 {
                // Shrunk under us: the post-copy identity check will catch it.
                return Ok(CopyOutcome::Shrunk);
            }
            hasher.update(&buf[..n]);
            let mut off = 0;
            while off < n {
                match rustix::io::pwrite(dst, &buf[off..n], pos + off as u64) {
                    Ok(w) => off += w,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            if stream {
                stream_out(dst, (pos, n), &mut unsynced);
            }
            pos += n as u64;
            data_bytes += n as u64;
        }
    }
    rfs::ftruncate(dst, len).map_err(err)?;
    Ok(CopyOutcome::Done { data_bytes })
}

/// An error on the SOURCE side of `copy_sparse` (reading or seeking the original), carried inside
/// the io::Error it returns; every other error there is DEST's (writing the copy).
#[derive(Debug)]
pub struct SourceError(pub io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

fn source_err(e: Errno) -> io::Error {
    io::Error::other(SourceError(err(e)))
}

#[derive(Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    Done { data_bytes: u64 },
    Aborted,
    Shrunk,
}

fn hash_zeros(hasher: &mut blake3::Hasher, mut n: u64) {
    static ZEROS: [u8; 65536] = [0; 65536];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Hash a file's full content (holes read as zeros by the kernel).
pub fn hash_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(blake3::Hash, u64)> {
    let mut h = blake3::Hasher::new();
    let mut pos = 0u64;
    loop {
        let n = match rustix::io::pread(fd, &mut *buf, pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(err(e)),
        };
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok((h.finalize(), pos))
}

/// Raise the soft fd limit to the hard one: leases are held on open fds across a batch.
/// Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // Root may go past the hard limit up to the kernel's nr_open.
    if rustix::process::geteuid().is_root() {
        if let Some(nr) = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            let want = nr.min(1 << 20);
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(want),
                    maximum: Some(want),
                },
            );
        }
    }
    let lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1024)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_link_opened_by_handle_is_followed_through_renames_and_not_past_deletion() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_root(t.path()).unwrap();
        symlink_at(b"/some/target", dir.as_fd(), b"l").unwrap();
        let h = handle_at(dir.as_fd(), b"l").unwrap();
        let ino = stat_at(dir.as_fd(), b"l").unwrap().st_ino;
        match probe_handle(dir.as_fd(), &h) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped: open_by_handle_at needs CAP_DAC_READ_SEARCH (run as root)");
                return;
            }
            r => {
                let p = r.unwrap().unwrap();
                assert_eq!((p.ino, p.target), (ino, Some(b"/some/target".to_vec())));
            }
        }
        rename_noreplace(dir.as_fd(), b"l", dir.as_fd(), b"moved").unwrap();
        let p = probe_handle(dir.as_fd(), &h).unwrap().unwrap();
        assert_eq!((p.ino, p.target), (ino, Some(b"/some/target".to_vec())));
        // The kernel knows where it went (the renamed link is in its cache).
        assert_eq!(p.path, Some(t.path().canonicalize().unwrap().join("moved")));
        unlink_at(dir.as_fd(), b"moved").unwrap();
        // A new link may get the same inode number; the handle's generation tells them apart.
        for k in 0..50 {
            symlink_at(b"/other", dir.as_fd(), format!("n{k}").as_bytes()).unwrap();
        }
        assert_eq!(probe_handle(dir.as_fd(), &h).unwrap(), None);
    }
    use super::*;

    #[test]
    fn split_and_join() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }

    #[test]
    fn dotdot_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = open_root(d.path()).unwrap();
        assert!(resolve_dir(root.as_fd(), b"..").is_err());
    }
}
