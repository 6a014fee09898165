//! Directory handles (`D`): every filesystem call relative to a directory fd, O_CLOEXEC, no
//! symlink followed, so that paths longer than PATH_MAX work.

use super::*;

fn cstring(b: &[u8]) -> CString {
    CString::new(b).expect("NUL byte in a file name")
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub type Stat = libc::stat;

/// An open directory. All operations are relative to it, so they work at any depth.
pub struct D {
    fd: OwnedFd,
}

impl D {
    pub fn open(path: &Path) -> io::Result<D> {
        let c = cstring(path.as_os_str().as_bytes());
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(D {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn openat(&self, name: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let c = cstring(name);
        let fd = cvt(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Open with O_NOATIME, falling back to a plain open when not permitted.
    fn openat_noatime(&self, name: &[u8], flags: i32) -> io::Result<OwnedFd> {
        match self.openat(name, flags | libc::O_NOATIME, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.openat(name, flags, 0),
            r => r,
        }
    }

    /// Open a subdirectory (never following a symlink).
    pub fn sub(&self, name: &[u8]) -> io::Result<D> {
        let fd =
            self.openat_noatime(name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        Ok(D { fd })
    }

    pub fn mkdir(&self, name: &[u8], mode: u32) -> io::Result<D> {
        let c = cstring(name);
        cvt(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })?;
        self.sub(name)
    }

    /// mkdir, or open it if it already exists as a directory.
    pub fn mkdir_or_open(&self, name: &[u8], mode: u32) -> io::Result<D> {
        match self.mkdir(name, mode) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.sub(name),
            r => r,
        }
    }

    /// Create a new regular file with `data`.
    pub fn create(&self, name: &[u8], data: &[u8], mode: u32) -> io::Result<()> {
        let fd = self.openat(
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?;
        let mut f = File::from(fd);
        f.write_all(data)
    }

    /// Open an existing regular file for writing (no truncation), never following symlinks.
    pub fn open_write(&self, name: &[u8]) -> io::Result<File> {
        Ok(File::from(self.openat(
            name,
            libc::O_WRONLY | libc::O_NOFOLLOW,
            0,
        )?))
    }

    /// Read a regular file (O_NOATIME when allowed, never following a symlink).
    pub fn read(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let fd = self.openat_noatime(name, libc::O_RDONLY | libc::O_NOFOLLOW)?;
        let mut v = Vec::new();
        File::from(fd).read_to_end(&mut v)?;
        Ok(v)
    }

    /// blake3 of a regular file (O_NOATIME when allowed, never following a symlink).
    pub fn hash(&self, name: &[u8]) -> io::Result<[u8; 32]> {
        let fd = self.openat_noatime(name, libc::O_RDONLY | libc::O_NOFOLLOW)?;
        let mut f = File::from(fd);
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(*h.finalize().as_bytes())
    }

    pub fn symlink(&self, name: &[u8], target: &[u8]) -> io::Result<()> {
        let t = cstring(target);
        let n = cstring(name);
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), n.as_ptr()) }).map(|_| ())
    }

    /// Make `self/name` a hard link to `from_dir/from_name`.
    pub fn link_from(&self, name: &[u8], from_dir: &D, from_name: &[u8]) -> io::Result<()> {
        let a = cstring(from_name);
        let b = cstring(name);
        cvt(unsafe { libc::linkat(from_dir.raw(), a.as_ptr(), self.raw(), b.as_ptr(), 0) })
            .map(|_| ())
    }

    pub fn mkfifo(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::mkfifoat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
    }

    pub fn mknod_char(&self, name: &[u8], mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let c = cstring(name);
        let dev = libc::makedev(major, minor);
        cvt(unsafe {
            libc::mknodat(
                self.raw(),
                c.as_ptr(),
                libc::S_IFCHR | mode as libc::mode_t,
                dev,
            )
        })
        .map(|_| ())
    }

    /// lstat relative to this directory; `b"."` is the directory itself.
    pub fn lstat(&self, name: &[u8]) -> io::Result<Stat> {
        let c = cstring(name);
        let mut st: Stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(st)
    }

    pub fn chmod(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::fchmodat(self.raw(), c.as_ptr(), mode as libc::mode_t, 0) }).map(|_| ())
    }

    pub fn chown(&self, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::fchownat(self.raw(), c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
            .map(|_| ())
    }

    /// Set atime and mtime (seconds, nanoseconds) without following a symlink.
    pub fn set_times(&self, name: &[u8], atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
        let c = cstring(name);
        let ts = [
            libc::timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            libc::timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        ];
        cvt(unsafe {
            libc::utimensat(
                self.raw(),
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(|_| ())
    }

    /// `/proc/self/fd/N/name`: a short path to an entry at any depth, for the
    /// l*xattr calls (which have no *at variant).
    pub fn proc_path(&self, name: &[u8]) -> CString {
        let mut p = format!("/proc/self/fd/{}/", self.raw()).into_bytes();
        p.extend_from_slice(name);
        cstring(&p)
    }

    pub fn set_xattr(&self, name: &[u8], key: &[u8], value: &[u8]) -> io::Result<()> {
        let p = self.proc_path(name);
        let k = cstring(key);
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                k.as_ptr(),
                value.as_ptr() as *const libc::c_void,
                value.len(),
                0,
            )
        })
        .map(|_| ())
    }

    /// All xattrs of an entry (not following a symlink), sorted by name.
    pub fn xattrs(&self, name: &[u8]) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let p = self.proc_path(name);
        let mut map = BTreeMap::new();
        let list = loop {
            let n = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOTSUP) {
                    return Ok(map);
                }
                return Err(e);
            }
            let mut buf = vec![0u8; n as usize + 1];
            let m = unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
            };
            if m < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(m as usize);
            break buf;
        };
        for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let k = cstring(key);
            let val = loop {
                let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), std::ptr::null_mut(), 0) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut buf = vec![0u8; n as usize + 1];
                let m = unsafe {
                    libc::lgetxattr(
                        p.as_ptr(),
                        k.as_ptr(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                    )
                };
                if m < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ERANGE) {
                        continue;
                    }
                    return Err(e);
                }
                buf.truncate(m as usize);
                break buf;
            };
            map.insert(key.to_vec(), val);
        }
        Ok(map)
    }

    pub fn readlink(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let c = cstring(name);
        let mut buf = vec![0u8; 8192];
        let n = unsafe {
            libc::readlinkat(
                self.raw(),
                c.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Entry names, sorted, without `.` and `..`.
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        let dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut v = Vec::new();
        for ent in dir {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                v.push(n.to_vec());
            }
        }
        v.sort();
        Ok(v)
    }

    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }).map(|_| ())
    }

    pub fn rmdir(&self, name: &[u8]) -> io::Result<()> {
        let c = cstring(name);
        cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(|_| ())
    }

    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let a = cstring(from);
        let b = cstring(to);
        cvt(unsafe { libc::renameat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr()) }).map(|_| ())
    }

    pub fn set_len(&self, name: &[u8], len: u64) -> io::Result<()> {
        let f = self.open_write(name)?;
        f.set_len(len)
    }

    pub fn pwrite(&self, name: &[u8], offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = self.open_write(name)?;
        f.write_all_at(data, offset)
    }
}

/// Open the parent directory of `root/rel` (component by component, never
/// following symlinks) and return it with the last name. `rel == b""` gives
/// `(root, ".")`.
pub fn open_rel(root: &Path, rel: &[u8]) -> io::Result<(D, Vec<u8>)> {
    let mut d = D::open(root)?;
    if rel.is_empty() {
        return Ok((d, b".".to_vec()));
    }
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    for p in &parts[..parts.len() - 1] {
        d = d.sub(p)?;
    }
    Ok((d, parts[parts.len() - 1].to_vec()))
}

pub fn lstat_rel(root: &Path, rel: &[u8]) -> io::Result<Stat> {
    let (d, n) = open_rel(root, rel)?;
    d.lstat(&n)
}

pub fn read_rel(root: &Path, rel: &[u8]) -> io::Result<Vec<u8>> {
    let (d, n) = open_rel(root, rel)?;
    d.read(&n)
}

pub fn readlink_rel(root: &Path, rel: &[u8]) -> io::Result<Vec<u8>> {
    let (d, n) = open_rel(root, rel)?;
    d.readlink(&n)
}

/// Create all directories of `rel` under root (dirfd-relative; any depth) and return the last.
pub fn mkdirs_rel(root: &Path, rel: &[u8], mode: u32) -> io::Result<D> {
    let mut d = D::open(root)?;
    if rel.is_empty() {
        return Ok(d);
    }
    for p in rel.split(|b| *b == b'/') {
        d = d.mkdir_or_open(p, mode)?;
    }
    Ok(d)
}
