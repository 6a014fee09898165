//! Filesystems of a test's own (root only): mounts that undo themselves, size-limited tmpfs,
//! loop-mounted ext4/xfs images, and filling a filesystem up to ENOSPC.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Unmounts its mount point when dropped (retrying while busy, lazily as a last resort), so a
/// failing test does not leave mounts behind for the next one.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `mount ARGS...`; the error is mount's own message.
pub fn mount<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<(), String> {
    let o = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

/// A tmpfs of `size` (e.g. "4m") mounted on `mp` (created if missing).
pub fn tmpfs(mp: &Path, size: &str) -> Result<Mounted, String> {
    std::fs::create_dir_all(mp).map_err(|e| format!("mkdir {}: {e}", mp.display()))?;
    mount(&[
        "-t".as_ref(),
        "tmpfs".as_ref(),
        "-o".as_ref(),
        format!("size={size},mode=0755").as_ref(),
        "evac-test-tmpfs".as_ref(),
        mp.as_os_str(),
    ])?;
    Ok(Mounted(mp.to_path_buf()))
}

/// A filesystem image (`fstype`: ext4 or xfs) of `mib` MiB in `image`, loop-mounted on `mp`.
/// The image file stays where it is after the unmount (the caller's temporary directory).
pub fn loop_fs(image: &Path, mp: &Path, fstype: &str, mib: u64) -> Result<Mounted, String> {
    let f = std::fs::File::create(image).map_err(|e| format!("create {}: {e}", image.display()))?;
    f.set_len(mib << 20)
        .map_err(|e| format!("size {}: {e}", image.display()))?;
    drop(f);
    let mkfs = format!("mkfs.{fstype}");
    let mut c = Command::new(&mkfs);
    match fstype {
        "ext4" => c.args(["-q", "-F"]),
        "xfs" => c.args(["-q", "-f"]),
        _ => return Err(format!("no mkfs recipe for {fstype}")),
    };
    let o = c.arg(image).output().map_err(|e| format!("{mkfs}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{mkfs}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    std::fs::create_dir_all(mp).map_err(|e| format!("mkdir {}: {e}", mp.display()))?;
    mount(&[
        "-o".as_ref(),
        "loop".as_ref(),
        image.as_os_str(),
        mp.as_os_str(),
    ])?;
    Ok(Mounted(mp.to_path_buf()))
}

/// Fill the filesystem holding `dir` until writes fail with ENOSPC; returns the bytes written
/// into `dir/name`.
pub fn fill(dir: &Path, name: &str) -> u64 {
    let mut total = 0u64;
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    for chunk in [1 << 16, 4096, 512, 1] {
        let buf = vec![0x5au8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", dir.display()),
            }
        }
    }
    let _ = f.sync_all();
    total
}
