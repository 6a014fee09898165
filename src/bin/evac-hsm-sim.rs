//! `evac-hsm-sim`: a simulated HSM (hierarchical storage manager) for evac's tests and demo. It
//! makes real stubs, recalls them on demand or when something reads them, and keeps the HSM
//! database that evac imports.
//!
//! ```text
//! evac-hsm-sim release --tape DIR --volume VOL [--tier N] FILE...
//! evac-hsm-sim stage   --tape DIR [LATENCY/FAULTS] [--stdin0] [FILE...]
//! evac-hsm-sim serve   --tape DIR --mount PATH [LATENCY/FAULTS] [--ready FILE]
//! evac-hsm-sim state   [--stdin0] [FILE...]
//! evac-hsm-sim lose    --tape DIR FILE...
//!   LATENCY/FAULTS: [--mount-latency-ms N] [--mib-latency-ms N] [--fail GLOB]... [--wedge]
//! ```
//!
//! * `release` copies each file's data to the "tape" (`DIR/VOL/NNNNNNNN`, one file per recall
//!   unit, positions 1, 2, ... per volume, zero-padded to 8 digits), then makes the file a real
//!   stub: `trusted.hsm` set to Lustre's `struct hsm_attrs` with flags exists|archived|released
//!   and archive id = tier, holes punched over all of it (size kept, `st_blocks` 0 unless the
//!   filesystem keeps a block for the file's attributes), atime and mtime restored.
//! * `stage` is the command an operator gives `evac stage`: it recalls each stub (its data
//!   written back into the same inode, times kept, flags exists|archived: premigrated). It
//!   sleeps the mount latency once per distinct volume of the batch and the per-MiB latency per
//!   file; `--fail GLOB` (fnmatch(3) on the absolute path, `*` matching `/` too) fails those
//!   files; `--wedge` never returns. Exit 0, or 2 when some file failed (each named on stderr).
//! * `serve` is a daemon on the kernel's own HSM hooks (fanotify pre-content events, Linux
//!   6.14+, on ext4, xfs and btrfs but not tmpfs): a read of a stub on the filesystem mounted
//!   at PATH waits while the daemon recalls it (one drive: one recall at a time, a mount latency
//!   whenever the volume changes); `--fail` makes such reads fail with EIO and `--wedge` leaves
//!   them waiting. Every open and read of a stub is logged; resident files are let through at
//!   once. SIGTERM or SIGINT stops it cleanly: no new events, the queued ones served, then exit.
//! * `state` prints one line per file, in order: `resident`, `premigrated`, `staged_out` or
//!   `lost` (from `trusted.hsm`, else the blocks rule), exactly what evac's `--hsm cmd:` program
//!   answers (wrap it: `exec evac-hsm-sim state --stdin0`). `error` for a file it cannot read.
//! * `lose` marks files' data lost (the lost flag): recalls of them fail.
//!
//! Files in DIR:
//! * `listing.tsv`, the HSM database for evac: the line
//!   `#path\tstate\ttier\tvolume\tposition\tsize\tchecksum`, then one line per managed file,
//!   sorted by raw path bytes: absolute path, state (`staged_out`, `premigrated`, `resident`,
//!   `lost`), tier, volume, position, size in bytes, `blake3:HEX` of the data. In the path, `\`
//!   is `\\`, tab `\t`, newline `\n`, CR `\r`, and any other byte below 0x20 or not valid UTF-8
//!   `\xHH`; nothing else is escaped. Paths are absolute with the directories' symlinks resolved.
//! * `listing.tsv0`: the same records without a header, each of the 7 fields NUL-terminated, the
//!   path as raw bytes.
//! * `catalog.tsv`: the simulator's own record (the listing's fields, then device, inode, atime
//!   and mtime), found by device and inode first so a renamed stub is still recalled.
//!   Both listings and the catalog are rewritten atomically (temporary, fsync, rename) by every
//!   command that changes them, under `DIR/.lock`. A state comes from the file itself while its
//!   path still names the archived inode; a premigrated file written since is `resident`.
//! * `log`: every operation, timestamped (UTC), with the process id.
//! * `access.log` (serve): one line per open or read of a stub by another process:
//!   `time\tpid\tcomm\tevent\trange\tpath\taction`, event `open` or `pre-access`, range
//!   `OFFSET+COUNT` or `-`, action `logged` (an open), `recall`, `fail`, `lost` or `wedged`;
//!   comm and path escaped as in the listing.
//!
//! What the kernel does, and so what `serve` can promise: a stub read while no daemon watches
//! reads its holes (zeros); when a daemon dies or closes its group with reads still waiting,
//! the kernel lets them go on (`fanotify_release` answers FAN_ALLOW), so they read zeros too.
//! A clean stop avoids that by removing its marks first and serving what is queued. The
//! daemon writes recalled data through a descriptor of its own, whose events come back to it:
//! its main loop answers its own process's events at once and does nothing else that could
//! wait, so recalls never wait on themselves, even with the tape on the watched filesystem.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lustre's `struct hsm_attrs` flags (lustre_user.h).
const HS_EXISTS: u32 = 0x1;
const HS_RELEASED: u32 = 0x4;
const HS_ARCHIVED: u32 = 0x8;
const HS_LOST: u32 = 0x40;
const XATTR: &str = "trusted.hsm";

const LISTING_HEADER: &str = "#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n";
const CATALOG_HEADER: &str = "#evac-hsm-sim catalog 1: path\tstate\ttier\tvolume\tposition\tsize\tchecksum\tdev\tino\tatime_s\tatime_ns\tmtime_s\tmtime_ns\n";
const ACCESS_HEADER: &str = "#time\tpid\tcomm\tevent\trange\tpath\taction\n";

const ABOUT: &str = "A simulated HSM for evac's tests and demo: real stubs (data on a tape \
directory, holes punched, Lustre's trusted.hsm released), recalled by `stage` or, when read, by \
the `serve` daemon (fanotify pre-content events, Linux 6.14+), and the HSM database evac imports.";

const AFTER_HELP: &str = "\
Files in the tape directory DIR:
  VOL/NNNNNNNN   one recall unit per archived file, by position (1, 2, ... per volume)
  listing.tsv    the HSM database for evac: header
                 #path<TAB>state<TAB>tier<TAB>volume<TAB>position<TAB>size<TAB>checksum
                 then one line per file, sorted by path: absolute path (\\\\ \\t \\n \\r, and
                 \\xHH for other bytes below 0x20 or not UTF-8), staged_out|premigrated|
                 resident|lost, tier, volume, position, size, blake3:HEX
  listing.tsv0   the same records, each of the 7 fields NUL-terminated, raw path, no header
  catalog.tsv    the simulator's own records (also device, inode, times)
  log            every operation, timestamped
  access.log     (serve) every open or read of a stub: time pid comm event range path action

Exit status: 0 done; 2 some files failed (each named on stderr); 1 error of use or setup.
serve exits 1 with the reason when fanotify pre-content events are unavailable (kernel older
than 6.14, a filesystem without them such as tmpfs, or not root).

A stub read while no daemon serves it reads its holes (zeros), and so do reads still waiting
when a daemon is killed: the kernel lets pending events go on when their group closes.";

#[derive(Parser)]
#[command(name = "evac-hsm-sim", version, about = ABOUT, after_long_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Archive files to a tape volume and release them (make them real stubs)
    ///
    /// Each FILE's data is copied to DIR/VOL/NNNNNNNN (the next position on the volume; the same
    /// data released again keeps its unit) and recorded in the catalog and listings; then the
    /// file is marked in trusted.hsm (exists|archived|released, archive id TIER), its blocks
    /// are freed with holes punched over all of it (size kept, st_blocks 0 unless the
    /// filesystem keeps a block for its attributes) and its atime and mtime are restored. A
    /// file already released is left as it is. Exit 0, 2 if some file failed, 1 on errors.
    Release(ReleaseArgs),
    /// Recall stubs from the tape: the stage command to give `evac stage`
    ///
    /// Each stub's data goes back into the same inode, its times kept, trusted.hsm
    /// exists|archived (premigrated), and the listings follow. The mount latency is slept once
    /// per distinct volume of the batch, the per-MiB latency for each file. Files that are not
    /// stubs are left as they are. --wedge takes the request and never returns: the caller
    /// must kill it. Exit 0, 2 if some file failed (each named on stderr), 1 on errors.
    Stage(StageArgs),
    /// Serve reads of stubs on a filesystem, as an HSM does (fanotify pre-content events)
    ///
    /// A read of a stub under the filesystem mounted at PATH waits while its data is recalled
    /// (one drive: one recall at a time; the mount latency whenever the volume changes), then
    /// goes on; with --fail it fails with EIO; with --wedge it waits until the daemon dies.
    /// Every open and read of a stub by another process goes to DIR/access.log; resident files,
    /// the daemon's own accesses and this program's release and stage are let through at once.
    /// PATH must be a mount point of a filesystem of its own: the whole filesystem is watched.
    /// Needs root and Linux 6.14+ with ext4, xfs or btrfs (not tmpfs); otherwise it exits 1
    /// saying why. SIGTERM or SIGINT stops it cleanly (exit 0): no new events, those queued are
    /// served, then it exits. Killed (or wedged and stopped), the reads still waiting go on
    /// when the kernel closes its fanotify group, and read the stubs' holes (zeros); so does
    /// any read of a stub while no daemon runs.
    Serve(ServeArgs),
    /// Print each file's HSM state: resident, premigrated, staged_out or lost
    ///
    /// One line per FILE, in order, from trusted.hsm or else the blocks rule (size above zero,
    /// no blocks): what evac's --hsm cmd:PROGRAM is told (wrap it in a script:
    /// `exec evac-hsm-sim state --stdin0`). A file that cannot be examined prints `error` and
    /// makes the exit status 2.
    State(StateArgs),
    /// Mark files' data as lost by the HSM: recalls of them fail
    ///
    /// Sets the lost flag of trusted.hsm; the listing says `lost`; stage fails such files and
    /// serve fails their reads with EIO.
    Lose(LoseArgs),
}

#[derive(Args)]
struct ReleaseArgs {
    /// The tape directory (created if missing).
    #[arg(long, value_name = "DIR")]
    tape: PathBuf,
    /// The volume (tape) to write: letters, digits, '.', '_', '-'.
    #[arg(long, value_name = "VOL")]
    volume: String,
    /// The tier, recorded as the archive id of trusted.hsm.
    #[arg(long, value_name = "N", default_value_t = 1)]
    tier: u64,
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// How the simulated HSM behaves when it recalls.
#[derive(Args, Clone)]
struct Behaviour {
    /// Time to mount a volume: once per distinct volume of a `stage` batch; for `serve`,
    /// whenever the volume differs from the last one recalled.
    #[arg(long, value_name = "N", default_value_t = 0)]
    mount_latency_ms: u64,
    /// Time to read one MiB from tape (prorated by size).
    #[arg(long, value_name = "N", default_value_t = 0)]
    mib_latency_ms: u64,
    /// The recall of files whose absolute path matches GLOB (fnmatch(3), `*` matches `/` too)
    /// fails (with EIO for a reader under `serve`).
    #[arg(long = "fail", value_name = "GLOB")]
    fail: Vec<OsString>,
    /// Never answer: `stage` sleeps forever, `serve` leaves readers of stubs waiting.
    #[arg(long)]
    wedge: bool,
}

#[derive(Args)]
struct StageArgs {
    /// The tape directory.
    #[arg(long, value_name = "DIR")]
    tape: PathBuf,
    #[command(flatten)]
    how: Behaviour,
    /// Also read NUL-separated paths from stdin.
    #[arg(long)]
    stdin0: bool,
    #[arg(value_name = "FILE", required_unless_present = "stdin0")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// The tape directory.
    #[arg(long, value_name = "DIR")]
    tape: PathBuf,
    /// The mount point of the filesystem to serve (a filesystem of its own, not the root one).
    #[arg(long, value_name = "PATH")]
    mount: PathBuf,
    #[command(flatten)]
    how: Behaviour,
    /// Written (with the daemon's pid) once it is listening.
    #[arg(long, value_name = "FILE")]
    ready: Option<PathBuf>,
}

#[derive(Args)]
struct StateArgs {
    /// Also read NUL-separated paths from stdin.
    #[arg(long)]
    stdin0: bool,
    #[arg(value_name = "FILE", required_unless_present = "stdin0")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct LoseArgs {
    /// The tape directory.
    #[arg(long, value_name = "DIR")]
    tape: PathBuf,
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

fn main() {
    std::process::exit(main_with(std::env::args_os()));
}

/// The simulator's command line (also reached as `evac hsm-sim`, so that `evac demo` has it
/// whenever it has evac): the exit status.
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> i32 {
    // Usage errors exit 1: 2 means "some files failed" here.
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let (name, result) = match cli.cmd {
        Cmd::Release(a) => ("release", release(a)),
        Cmd::Stage(a) => ("stage", stage(a)),
        Cmd::Serve(a) => ("serve", serve(a)),
        Cmd::State(a) => ("state", state(a)),
        Cmd::Lose(a) => ("lose", lose(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("evac-hsm-sim {name}: {e:#}");
            1
        }
    }
}

// ---------------------------------------------------------------------------
// Escaping, time, small helpers
// ---------------------------------------------------------------------------

/// The listing's path escaping: `\\`, `\t`, `\n`, `\r`, and `\xHH` for any other byte below
/// 0x20 or not valid UTF-8; everything else as it is.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        let (good, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (g, b) = rest.split_at(e.valid_up_to());
                (std::str::from_utf8(g).unwrap_or_default(), b)
            }
        };
        for c in good.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        if bad.is_empty() {
            return out;
        }
        let n = match std::str::from_utf8(bad) {
            Err(e) => e.error_len().unwrap_or(bad.len()).max(1),
            Ok(_) => bad.len(),
        };
        for b in &bad[..n] {
            let _ = write!(out, "\\x{b:02x}");
        }
        rest = &bad[n..];
    }
}

/// The inverse of `escape`; None for a malformed escape.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(out)
}

/// A path for messages: escaped and quoted.
fn q(p: &[u8]) -> String {
    format!("\"{}\"", escape(p))
}

fn qp(p: &Path) -> String {
    q(p.as_os_str().as_bytes())
}

/// Now, as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn stamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

fn sleep_ms(ms: f64) {
    if ms > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(ms / 1000.0));
    }
}

/// Whether `path` matches one of the `--fail` globs.
fn fail_matches(globs: &[OsString], path: &[u8]) -> bool {
    let Ok(name) = CString::new(path) else {
        return false;
    };
    globs.iter().any(|g| {
        CString::new(g.as_bytes()).is_ok_and(|g| {
            // SAFETY: two NUL-terminated strings.
            unsafe { libc::fnmatch(g.as_ptr(), name.as_ptr(), 0) == 0 }
        })
    })
}

/// FILE arguments, then NUL-separated paths from stdin if asked.
fn inputs(files: &[PathBuf], stdin0: bool) -> Result<Vec<Vec<u8>>> {
    let mut v: Vec<Vec<u8>> = files
        .iter()
        .map(|f| f.as_os_str().as_bytes().to_vec())
        .collect();
    if stdin0 {
        let mut b = Vec::new();
        io::stdin()
            .read_to_end(&mut b)
            .context("read NUL-separated paths from stdin")?;
        v.extend(
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    Ok(v)
}

/// `p` made absolute with its directory's symlinks resolved; the last component is kept as it
/// is (a symlink there is not followed).
fn absolute(p: &[u8]) -> Result<Vec<u8>> {
    let path = Path::new(OsStr::from_bytes(p));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", q(p)))?;
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent)
        .with_context(|| format!("resolve directory {}", qp(parent)))?;
    Ok(dir.join(name).into_os_string().into_vec())
}

/// Open regular file `p` for reading: a final symlink is not followed, a FIFO put there
/// meanwhile does not block, and the atime is left alone where the kernel allows.
fn open_file(p: &[u8]) -> Result<(File, Metadata)> {
    let path = OsStr::from_bytes(p);
    let md = std::fs::symlink_metadata(path).with_context(|| format!("lstat {}", q(p)))?;
    if !md.is_file() {
        bail!("{}: not a regular file", q(p));
    }
    let open = |flags: i32| OpenOptions::new().read(true).custom_flags(flags).open(path);
    let base = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let file = match open(base | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(base),
        r => r,
    }
    .with_context(|| format!("open {}", q(p)))?;
    let md = file.metadata().with_context(|| format!("fstat {}", q(p)))?;
    if !md.is_file() {
        bail!("{}: not a regular file", q(p));
    }
    Ok((file, md))
}

/// A write descriptor on the very inode `f` is open on, whatever its path names now.
fn reopen_write(f: &File, path: &[u8]) -> Result<File> {
    let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
    OpenOptions::new()
        .write(true)
        .open(proc)
        .with_context(|| format!("open {} for writing", q(path)))
}

/// Restore `md`'s atime and mtime on `f`.
fn set_times(f: &File, md: &Metadata) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    };
    rustix::fs::futimens(f, &ts).map_err(io::Error::from)
}

/// Same size and mtime: the content is taken to be the same.
fn same_stamp(a: &Metadata, b: &Metadata) -> bool {
    a.size() == b.size() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", qp(dir)))
}

/// Replace `dir/name` with `data` atomically (temporary, fsync, rename, fsync of the directory).
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).with_context(|| format!("create {}", qp(&tmp)))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", qp(&tmp)))?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("rename {} to {}", qp(&tmp), qp(&dst)))?;
    sync_dir(dir)
}

// ---------------------------------------------------------------------------
// trusted.hsm
// ---------------------------------------------------------------------------

/// Lustre's `struct hsm_attrs { u32 hsm_compat; u32 hsm_flags; u64 hsm_arch_id; u64
/// hsm_arch_ver; }`, little-endian.
fn hsm_attr(flags: u32, arch: u64) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[4..8].copy_from_slice(&flags.to_le_bytes());
    v[8..16].copy_from_slice(&arch.to_le_bytes());
    v
}

/// (flags, archive id) of a `trusted.hsm` value.
fn flags_of(attr: &[u8]) -> (u32, u64) {
    let flags = attr
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    let arch = attr
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    (flags, arch)
}

fn xattr_result(r: rustix::io::Result<usize>, buf: &[u8]) -> io::Result<Option<Vec<u8>>> {
    match r {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn get_hsm(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    let r = rustix::fs::fgetxattr(fd, XATTR, &mut buf[..]);
    xattr_result(r, &buf)
}

/// `trusted.hsm` of `path`, not following a final symlink and without opening the file.
fn lget_hsm(path: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    let r = rustix::fs::lgetxattr(path, XATTR, &mut buf[..]);
    xattr_result(r, &buf)
}

fn set_hsm(fd: BorrowedFd<'_>, flags: u32, arch: u64) -> io::Result<()> {
    rustix::fs::fsetxattr(
        fd,
        XATTR,
        &hsm_attr(flags, arch),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// A file's state as evac's `lustre` and blocks rules see it.
fn state_name(md: &Metadata, attr: Option<&[u8]>) -> &'static str {
    use evac::hsm::detect::State;
    if let Some(c) = attr.and_then(evac::hsm::detect::lustre_state) {
        return match c.state {
            State::Resident => "resident",
            State::Premigrated => "premigrated",
            State::StagedOut => "staged_out",
            State::Lost => "lost",
            State::Unknown => "unknown",
        };
    }
    if md.size() > 0 && md.blocks() == 0 {
        "staged_out"
    } else {
        "resident"
    }
}

// ---------------------------------------------------------------------------
// The tape directory: units, catalog, listings, log
// ---------------------------------------------------------------------------

/// One managed file.
#[derive(Clone, Debug, PartialEq)]
struct Rec {
    path: Vec<u8>,
    state: String,
    tier: u64,
    volume: String,
    position: u64,
    size: u64,
    blake3: String,
    dev: u64,
    ino: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
}

impl Rec {
    fn catalog_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\tblake3:{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            escape(&self.path),
            self.state,
            self.tier,
            self.volume,
            self.position,
            self.size,
            self.blake3,
            self.dev,
            self.ino,
            self.atime.0,
            self.atime.1,
            self.mtime.0,
            self.mtime.1
        )
    }

    fn parse(line: &str) -> Option<Rec> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 13 {
            return None;
        }
        Some(Rec {
            path: unescape(f[0])?,
            state: f[1].to_string(),
            tier: f[2].parse().ok()?,
            volume: f[3].to_string(),
            position: f[4].parse().ok()?,
            size: f[5].parse().ok()?,
            blake3: f[6].strip_prefix("blake3:")?.to_string(),
            dev: f[7].parse().ok()?,
            ino: f[8].parse().ok()?,
            atime: (f[9].parse().ok()?, f[10].parse().ok()?),
            mtime: (f[11].parse().ok()?, f[12].parse().ok()?),
        })
    }

    fn new(path: &[u8], md: &Metadata, volume: &str, position: u64, tier: u64, hex: &str) -> Rec {
        Rec {
            path: path.to_vec(),
            state: "premigrated".into(),
            tier,
            volume: volume.to_string(),
            position,
            size: md.size(),
            blake3: hex.to_string(),
            dev: md.dev(),
            ino: md.ino(),
            atime: (md.atime(), md.atime_nsec()),
            mtime: (md.mtime(), md.mtime_nsec()),
        }
    }

    /// The state as the file itself shows it, while the path still names the archived inode.
    fn refresh(&mut self) {
        let p = OsStr::from_bytes(&self.path);
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if !md.is_file() || md.dev() != self.dev || md.ino() != self.ino {
            return;
        }
        let attr = lget_hsm(p).ok().flatten();
        let mut s = state_name(&md, attr.as_deref());
        // Written since it was archived: the tape copy is stale (Lustre would say dirty).
        if s == "premigrated"
            && (md.size() != self.size || (md.mtime(), md.mtime_nsec()) != self.mtime)
        {
            s = "resident";
        }
        if s != "unknown" {
            self.state = s.to_string();
        }
    }
}

/// The record of the file `md` describes: by device and inode, else (the device number of a
/// filesystem mounted again may differ) by path and inode.
fn find(recs: &[Rec], md: &Metadata, path: &[u8]) -> Option<usize> {
    recs.iter()
        .position(|r| r.dev == md.dev() && r.ino == md.ino())
        .or_else(|| {
            recs.iter()
                .position(|r| r.path == path && r.ino == md.ino())
        })
}

/// Put `rec` in, replacing whatever had its path or its inode: one record per file, one file
/// per path.
fn upsert(recs: &mut Vec<Rec>, rec: Rec) {
    recs.retain(|r| r.path != rec.path && !(r.dev == rec.dev && r.ino == rec.ino));
    recs.push(rec);
}

struct Tape {
    dir: PathBuf,
}

impl Tape {
    fn open(dir: &Path, create: bool) -> Result<Tape> {
        if create {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create tape directory {}", qp(dir)))?;
        }
        let md = std::fs::metadata(dir).with_context(|| format!("tape directory {}", qp(dir)))?;
        if !md.is_dir() {
            bail!("tape directory {}: not a directory", qp(dir));
        }
        // Absolute: a daemon and later commands may run elsewhere.
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("resolve tape directory {}", qp(dir)))?;
        Ok(Tape { dir })
    }

    /// Exclusive use of the catalog and listings until the returned file is dropped.
    fn lock(&self) -> Result<File> {
        self.lock_within(None)?
            .ok_or_else(|| anyhow!("lock {}: not obtained", qp(&self.dir)))
    }

    /// The lock, waiting at most `patience` (None: as long as it takes); None if not had.
    fn lock_within(&self, patience: Option<Duration>) -> Result<Option<File>> {
        use rustix::fs::FlockOperation::{LockExclusive, NonBlockingLockExclusive};
        let p = self.dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("open lock {}", qp(&p)))?;
        let Some(patience) = patience else {
            rustix::fs::flock(&f, LockExclusive)
                .map_err(io::Error::from)
                .with_context(|| format!("lock {}", qp(&p)))?;
            return Ok(Some(f));
        };
        let t0 = Instant::now();
        loop {
            match rustix::fs::flock(&f, NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(f)),
                Err(rustix::io::Errno::WOULDBLOCK) if t0.elapsed() < patience => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => {
                    return Err(io::Error::from(e)).with_context(|| format!("lock {}", qp(&p)))
                }
            }
        }
    }

    fn unit(&self, volume: &str, position: u64) -> PathBuf {
        self.dir.join(volume).join(format!("{position:08}"))
    }

    fn load(&self) -> Result<Vec<Rec>> {
        let p = self.dir.join("catalog.tsv");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("read catalog {}", qp(&p))),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(i, l)| {
                Rec::parse(l)
                    .ok_or_else(|| anyhow!("catalog {}: line {} is not a record", qp(&p), i + 1))
            })
            .collect()
    }

    /// Write the catalog and both listings, states refreshed from the files, sorted by path.
    fn save(&self, recs: &mut [Rec]) -> Result<()> {
        for r in recs.iter_mut() {
            r.refresh();
        }
        recs.sort_by(|a, b| a.path.cmp(&b.path));
        let mut cat = String::from(CATALOG_HEADER);
        let mut tsv = String::from(LISTING_HEADER);
        let mut tsv0 = Vec::new();
        for r in recs.iter() {
            cat.push_str(&r.catalog_line());
            let _ = writeln!(
                tsv,
                "{}\t{}\t{}\t{}\t{}\t{}\tblake3:{}",
                escape(&r.path),
                r.state,
                r.tier,
                r.volume,
                r.position,
                r.size,
                r.blake3
            );
            tsv0.extend_from_slice(&r.path);
            tsv0.push(0);
            for field in [
                r.state.clone(),
                r.tier.to_string(),
                r.volume.clone(),
                r.position.to_string(),
                r.size.to_string(),
                format!("blake3:{}", r.blake3),
            ] {
                tsv0.extend_from_slice(field.as_bytes());
                tsv0.push(0);
            }
        }
        write_atomic(&self.dir, "catalog.tsv", cat.as_bytes())?;
        write_atomic(&self.dir, "listing.tsv", tsv.as_bytes())?;
        write_atomic(&self.dir, "listing.tsv0", &tsv0)
    }

    /// Apply `updates` to the catalog as it is now (another process may have changed it).
    fn update(&self, updates: &mut Vec<Rec>) -> Result<()> {
        let _lock = self.lock()?;
        self.update_locked(updates)
    }

    fn update_locked(&self, updates: &mut Vec<Rec>) -> Result<()> {
        let mut recs = self.load()?;
        for u in updates.drain(..) {
            upsert(&mut recs, u);
        }
        self.save(&mut recs)
    }

    /// Append a line to `DIR/log`; a log that cannot be written is said on stderr, not fatal.
    fn log(&self, what: &str) {
        let line = format!("{} [{}] {what}\n", stamp(), std::process::id());
        let p = self.dir.join("log");
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = r {
            eprintln!("evac-hsm-sim: append to {}: {e}", qp(&p));
        }
    }

    /// Say a file's error on stderr and in the log.
    fn report(&self, e: &anyhow::Error) {
        let m = format!("{e:#}");
        eprintln!("evac-hsm-sim: {m}");
        self.log(&format!("error: {m}"));
    }
}

fn check_volume(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("--volume {v:?}: a volume name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'");
    }
    Ok(())
}

/// The next free position on `volume`: tapes are only appended to.
fn next_position(recs: &[Rec], volume: &str, voldir: &Path) -> Result<u64> {
    let mut max = recs
        .iter()
        .filter(|r| r.volume == volume)
        .map(|r| r.position)
        .max()
        .unwrap_or(0);
    for e in std::fs::read_dir(voldir).with_context(|| format!("list {}", qp(voldir)))? {
        let e = e.with_context(|| format!("list {}", qp(voldir)))?;
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            max = max.max(n);
        }
    }
    Ok(max + 1)
}

/// Removes a temporary unless told it was kept.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn hash_file(p: &Path) -> Result<(String, u64)> {
    let mut f = File::open(p).with_context(|| format!("open tape unit {}", qp(p)))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("read tape unit {}", qp(p)))?;
        if k == 0 {
            return Ok((h.finalize().to_hex().to_string(), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

// ---------------------------------------------------------------------------
// release
// ---------------------------------------------------------------------------

/// A file whose data is on tape and in the catalog, not yet released.
struct Archived {
    file: File,
    md: Metadata,
    path: Vec<u8>,
}

fn release(a: ReleaseArgs) -> Result<i32> {
    check_volume(&a.volume)?;
    let tape = Tape::open(&a.tape, true)?;
    let _lock = tape.lock()?;
    let mut recs = tape.load()?;
    let mut failed = 0;
    let mut archived = Vec::new();
    for f in &a.files {
        let arg = f.as_os_str().as_bytes();
        match archive(&tape, &mut recs, &a, arg) {
            Ok(Some(x)) => archived.push(x),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                tape.report(&e.context(format!("release {}", q(arg))));
            }
        }
    }
    // The tape and the catalog are durable before any file gives up its data.
    tape.save(&mut recs)?;
    for x in &archived {
        match punch(x, a.tier) {
            Ok(blocks) => {
                if blocks > 0 {
                    eprintln!(
                        "evac-hsm-sim: release {}: {blocks} blocks remain after punching (the filesystem keeps them, e.g. for the attributes); the blocks rule will not take it for a stub, trusted.hsm will",
                        q(&x.path)
                    );
                }
                let r = recs.iter().find(|r| r.path == x.path);
                tape.log(&format!(
                    "release {} to {}:{} ({} bytes, tier {}, {blocks} blocks left)",
                    q(&x.path),
                    r.map_or("?", |r| r.volume.as_str()),
                    r.map_or(0, |r| r.position),
                    x.md.size(),
                    a.tier
                ));
            }
            Err(e) => {
                failed += 1;
                tape.report(&e.context(format!("release {}", q(&x.path))));
            }
        }
    }
    tape.save(&mut recs)?;
    Ok(if failed > 0 { 2 } else { 0 })
}

/// Copy `arg`'s data to the tape (or find it already there) and record it.
fn archive(
    tape: &Tape,
    recs: &mut Vec<Rec>,
    a: &ReleaseArgs,
    arg: &[u8],
) -> Result<Option<Archived>> {
    let path = absolute(arg)?;
    let (mut file, md) = open_file(&path)?;
    if md.size() == 0 {
        bail!("empty: nothing to release");
    }
    if let Some(attr) = get_hsm(file.as_fd()).context("read trusted.hsm")? {
        let (flags, _) = flags_of(&attr);
        if flags & HS_LOST != 0 {
            bail!("the HSM lost its data (trusted.hsm flags {flags:#x})");
        }
        if flags & HS_RELEASED != 0 {
            tape.log(&format!("release {}: already released", q(&path)));
            return Ok(None);
        }
    }
    let voldir = tape.dir.join(&a.volume);
    std::fs::create_dir_all(&voldir)
        .with_context(|| format!("create tape volume {}", qp(&voldir)))?;
    let tmp_path = voldir.join(format!(".incoming.{}", std::process::id()));
    let mut tmp = Temp(Some(tmp_path.clone()));
    let mut out = File::create(&tmp_path).with_context(|| format!("create {}", qp(&tmp_path)))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = file.read(&mut buf).context("read")?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .with_context(|| format!("write {}", qp(&tmp_path)))?;
        n += k as u64;
    }
    let now = file.metadata().context("fstat")?;
    if n != md.size() || !same_stamp(&md, &now) {
        bail!("modified while being archived; not released");
    }
    let hex = h.finalize().to_hex().to_string();
    let known = find(recs, &md, &path);
    // The same data already on this volume (released, recalled, released again): the unit
    // is still there, as a real HSM keeps the archive copy of a premigrated file.
    let reuse = known.filter(|&i| {
        let r = &recs[i];
        r.volume == a.volume
            && r.blake3 == hex
            && r.size == n
            && std::fs::metadata(tape.unit(&r.volume, r.position)).is_ok_and(|m| m.len() == n)
    });
    let position = match reuse {
        Some(i) => recs[i].position,
        None => {
            out.sync_all()
                .with_context(|| format!("fsync {}", qp(&tmp_path)))?;
            let pos = next_position(recs, &a.volume, &voldir)?;
            let unit = tape.unit(&a.volume, pos);
            std::fs::rename(&tmp_path, &unit)
                .with_context(|| format!("rename {} to {}", qp(&tmp_path), qp(&unit)))?;
            tmp.0 = None;
            sync_dir(&voldir)?;
            pos
        }
    };
    drop(tmp);
    upsert(
        recs,
        Rec::new(&path, &md, &a.volume, position, a.tier, &hex),
    );
    Ok(Some(Archived { file, md, path }))
}

/// Make an archived file a stub; returns the blocks it still has.
fn punch(x: &Archived, tier: u64) -> Result<u64> {
    let now = x.file.metadata().context("fstat")?;
    if !same_stamp(&x.md, &now) {
        bail!("modified since it was archived; not released");
    }
    // Marked released before the data goes: a crash between the two leaves a stub that still
    // holds its data, which a recall rewrites identically; the other order could leave holes
    // taken for data.
    set_hsm(x.file.as_fd(), HS_EXISTS | HS_ARCHIVED | HS_RELEASED, tier)
        .context("set trusted.hsm")?;
    let punched = reopen_write(&x.file, &x.path).and_then(|w| {
        use rustix::fs::FallocateFlags;
        // A hole covers whole blocks only: the range is rounded up past the last partial
        // block, or the filesystem would zero that block's tail and keep it.
        let block = x.md.blksize().max(4096);
        rustix::fs::fallocate(
            &w,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            x.md.size().div_ceil(block) * block,
        )
        .map_err(io::Error::from)
        .context("punch holes (fallocate)")?;
        set_times(&w, &x.md).context("restore atime and mtime")?;
        w.sync_all().context("fsync")?;
        Ok(())
    });
    if let Err(e) = punched {
        // Its data is all there: say so rather than leave it marked released.
        let _ = set_hsm(x.file.as_fd(), HS_EXISTS | HS_ARCHIVED, tier);
        return Err(e);
    }
    Ok(x.file.metadata().context("fstat")?.blocks())
}

// ---------------------------------------------------------------------------
// Recall (stage and serve)
// ---------------------------------------------------------------------------

/// Bring `rec`'s data back from the tape into the stub `file` (the same inode, its times kept)
/// and mark it premigrated. The simulated latency comes first; `--fail` fails it after that.
fn recall(
    tape: &Tape,
    file: &File,
    md: &Metadata,
    path: &[u8],
    rec: &Rec,
    how: &Behaviour,
    mount: bool,
) -> Result<()> {
    let t0 = Instant::now();
    if mount {
        sleep_ms(how.mount_latency_ms as f64);
    }
    sleep_ms(how.mib_latency_ms as f64 * rec.size as f64 / f64::from(1u32 << 20));
    if fail_matches(&how.fail, path) {
        bail!("simulated recall failure (--fail)");
    }
    if md.size() != rec.size {
        bail!(
            "its size {} is not the {} bytes archived at {}:{}; not recalled",
            md.size(),
            rec.size,
            rec.volume,
            rec.position
        );
    }
    let unit = tape.unit(&rec.volume, rec.position);
    // Checked before a byte is written: a damaged tape must leave a stub, not wrong data.
    let (hex, n) = hash_file(&unit)?;
    if hex != rec.blake3 || n != rec.size {
        bail!(
            "tape unit {} is damaged ({n} bytes, blake3 {hex}; archived {} bytes, blake3 {})",
            qp(&unit),
            rec.size,
            rec.blake3
        );
    }
    let w = reopen_write(file, path)?;
    let mut src = File::open(&unit).with_context(|| format!("open tape unit {}", qp(&unit)))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let k = src
            .read(&mut buf)
            .with_context(|| format!("read tape unit {}", qp(&unit)))?;
        if k == 0 {
            break;
        }
        w.write_all_at(&buf[..k], off).context("write")?;
        off += k as u64;
    }
    w.sync_all().context("fsync")?;
    set_times(&w, md).context("restore atime and mtime")?;
    set_hsm(file.as_fd(), HS_EXISTS | HS_ARCHIVED, rec.tier).context("set trusted.hsm")?;
    w.sync_all().context("fsync")?;
    tape.log(&format!(
        "recall {} from {}:{} ({} bytes, {:.3} s)",
        q(path),
        rec.volume,
        rec.position,
        rec.size,
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn wedge_forever(tape: &Tape, what: &str) -> ! {
    tape.log(&format!("{what}: wedged (--wedge): never answering"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn stage(a: StageArgs) -> Result<i32> {
    let tape = Tape::open(&a.tape, false)?;
    let paths = inputs(&a.files, a.stdin0)?;
    tape.log(&format!(
        "stage: {} file(s) requested{}",
        paths.len(),
        paths
            .iter()
            .take(20)
            .fold(String::new(), |s, p| s + " " + &q(p))
    ));
    if a.how.wedge {
        wedge_forever(&tape, "stage");
    }
    let recs = tape.load()?;
    let mut mounted = HashSet::new();
    let mut failed = 0;
    let mut updates = Vec::new();
    let mut flushed = Instant::now();
    for p in &paths {
        match stage_one(&tape, &recs, p, &a.how, &mut mounted) {
            Ok(Some(rec)) => updates.push(rec),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                tape.report(&e.context(format!("stage {}", q(p))));
            }
        }
        // The listing follows along, so a stage killed for taking too long leaves it right.
        if !updates.is_empty() && flushed.elapsed() >= Duration::from_secs(1) {
            tape.update(&mut updates)?;
            flushed = Instant::now();
        }
    }
    tape.update(&mut updates)?;
    tape.log(&format!(
        "stage: done, {} file(s), {failed} failed",
        paths.len()
    ));
    Ok(if failed > 0 { 2 } else { 0 })
}

/// Recall one file; the updated record, or None if it was not a stub.
fn stage_one(
    tape: &Tape,
    recs: &[Rec],
    arg: &[u8],
    how: &Behaviour,
    mounted: &mut HashSet<String>,
) -> Result<Option<Rec>> {
    let path = absolute(arg)?;
    let (file, md) = open_file(&path)?;
    let flags = match get_hsm(file.as_fd()).context("read trusted.hsm")? {
        Some(attr) => flags_of(&attr).0,
        None => 0,
    };
    if flags & HS_LOST != 0 {
        bail!("the HSM lost its data (trusted.hsm flags {flags:#x})");
    }
    if flags & HS_RELEASED == 0 {
        tape.log(&format!("stage {}: not a stub; left as it is", q(&path)));
        return Ok(None);
    }
    let i =
        find(recs, &md, &path).ok_or_else(|| anyhow!("not in the catalog of {}", qp(&tape.dir)))?;
    let rec = &recs[i];
    let mount = mounted.insert(rec.volume.clone());
    recall(tape, &file, &md, &path, rec, how, mount)?;
    let mut r = rec.clone();
    r.path = path;
    r.state = "premigrated".into();
    r.dev = md.dev();
    r.ino = md.ino();
    Ok(Some(r))
}

// ---------------------------------------------------------------------------
// state, lose
// ---------------------------------------------------------------------------

fn state(a: StateArgs) -> Result<i32> {
    let paths = inputs(&a.files, a.stdin0)?;
    let mut out = io::stdout().lock();
    let mut failed = 0;
    for p in &paths {
        let path = OsStr::from_bytes(p);
        let r = std::fs::symlink_metadata(path)
            .context("lstat")
            .and_then(|md| {
                if !md.is_file() {
                    bail!("not a regular file");
                }
                let attr = lget_hsm(path).context("read trusted.hsm")?;
                Ok(state_name(&md, attr.as_deref()))
            });
        let line = match r {
            Ok(s) => s,
            Err(e) => {
                failed += 1;
                eprintln!("evac-hsm-sim: state {}: {e:#}", q(p));
                "error"
            }
        };
        writeln!(out, "{line}").context("write to stdout")?;
    }
    Ok(if failed > 0 { 2 } else { 0 })
}

fn lose(a: LoseArgs) -> Result<i32> {
    let tape = Tape::open(&a.tape, false)?;
    let _lock = tape.lock()?;
    let mut recs = tape.load()?;
    let mut failed = 0;
    for f in &a.files {
        let arg = f.as_os_str().as_bytes();
        let r = (|| -> Result<()> {
            let path = absolute(arg)?;
            let (file, md) = open_file(&path)?;
            let i = find(&recs, &md, &path)
                .ok_or_else(|| anyhow!("not in the catalog of {}", qp(&tape.dir)))?;
            let (flags, arch) = match get_hsm(file.as_fd()).context("read trusted.hsm")? {
                Some(attr) => flags_of(&attr),
                None => (HS_EXISTS | HS_ARCHIVED, recs[i].tier),
            };
            set_hsm(file.as_fd(), flags | HS_EXISTS | HS_LOST, arch).context("set trusted.hsm")?;
            recs[i].state = "lost".into();
            tape.log(&format!(
                "lose {}: data at {}:{} lost",
                q(&path),
                recs[i].volume,
                recs[i].position
            ));
            Ok(())
        })();
        if let Err(e) = r {
            failed += 1;
            tape.report(&e.context(format!("lose {}", q(arg))));
        }
    }
    tape.save(&mut recs)?;
    Ok(if failed > 0 { 2 } else { 0 })
}

// ---------------------------------------------------------------------------
// serve: fanotify pre-content events
// ---------------------------------------------------------------------------

/// Linux 6.14 pre-content hook (not in the libc crate yet): before a read or write of a range.
const FAN_PRE_ACCESS: u64 = 0x0010_0000;
const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;
const FAN_ALLOW: u32 = 0x01;
const FAN_DENY: u32 = 0x02;
const FANOTIFY_METADATA_VERSION: u8 = 3;
const EVENT_META: usize = 24;

/// `FAN_DENY_ERRNO(err)` (6.14+): deny with this errno.
fn fan_deny_errno(errno: i32) -> u32 {
    FAN_DENY | (((errno as u32) & 0xff) << 24)
}

struct Shared {
    tape: Tape,
    how: Behaviour,
    fan: RawFd,
    pid: i32,
    /// (device, inode) and name of this program: its `release` and `stage` commands do the
    /// HSM's work.
    exe: Option<(u64, u64)>,
    comm: Vec<u8>,
    /// One drive: recalls go one at a time, and the volume last read needs no mount.
    drive: Mutex<Option<String>>,
    /// Events a wedged HSM took and never answers; kept open, as an HSM that hangs would.
    wedged: Mutex<Vec<OwnedFd>>,
}

struct Event {
    mask: u64,
    fd: OwnedFd,
    pid: i32,
    range: Option<(u64, u64)>,
}

impl Shared {
    fn respond(&self, fd: RawFd, response: u32) {
        let r = libc::fanotify_response { fd, response };
        // SAFETY: writes one fanotify_response from a live local.
        let n = unsafe {
            libc::write(
                self.fan,
                (&r as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            eprintln!("evac-hsm-sim serve: answer fanotify event (fd {fd}): {e}");
        }
    }
}

/// A line of `access.log`.
fn access_line(ev: &Event, comm: &[u8], path: &[u8], action: &str) -> String {
    let kind = if ev.mask & FAN_PRE_ACCESS != 0 {
        "pre-access"
    } else {
        "open"
    };
    let range = ev
        .range
        .map_or_else(|| "-".to_string(), |(o, c)| format!("{o}+{c}"));
    format!(
        "{}\t{}\t{}\t{kind}\t{range}\t{}\t{action}\n",
        stamp(),
        ev.pid,
        escape(comm),
        escape(path)
    )
}

/// Writes `access.log` lines in the order the main loop saw the events. The main loop itself
/// must not write: the log may live on the watched filesystem, and its writes wait for the
/// main loop's answer.
fn access_logger(mut f: File, lines: mpsc::Receiver<String>) {
    for line in lines {
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("evac-hsm-sim serve: append to access.log: {e}");
        }
    }
}

fn serve(a: ServeArgs) -> Result<i32> {
    let tape = Tape::open(&a.tape, false)?;
    let mount =
        std::fs::canonicalize(&a.mount).with_context(|| format!("--mount {}", qp(&a.mount)))?;
    check_own_filesystem(&mount)?;
    raise_fd_limit();
    let sig = signal_fd()?;
    // Files are opened and written before the mark goes on: from then on, a write by this
    // thread to the watched filesystem would wait for this thread's own answer.
    let log_path = tape.dir.join("access.log");
    let mut access_log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", qp(&log_path)))?;
    if access_log.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        access_log
            .write_all(ACCESS_HEADER.as_bytes())
            .with_context(|| format!("write {}", qp(&log_path)))?;
    }
    let exe = std::fs::metadata("/proc/self/exe")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let fan = fanotify_setup(&mount)?;
    let sh = Arc::new(Shared {
        tape,
        how: a.how,
        fan: fan.as_raw_fd(),
        pid: std::process::id() as i32,
        exe,
        comm: std::fs::read("/proc/self/comm")
            .map(|c| c.strip_suffix(b"\n").unwrap_or(&c).to_vec())
            .unwrap_or_else(|_| b"evac-hsm-sim".to_vec()),
        drive: Mutex::new(None),
        wedged: Mutex::new(Vec::new()),
    });
    let (access_tx, access_rx) = mpsc::channel();
    let logger = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || access_logger(access_log, access_rx))
        .context("start the access log thread")?;
    // Announced by another thread, for the same reason: the log and the ready file may be on
    // the watched filesystem.
    let announce = {
        let sh = Arc::clone(&sh);
        let ready = a.ready.clone();
        let mount = mount.clone();
        std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || -> Result<()> {
                sh.tape.log(&format!(
                    "serve: serving reads of stubs under {}{}",
                    qp(&mount),
                    if sh.how.wedge { " (wedged)" } else { "" }
                ));
                if let Some(r) = ready {
                    let tmp = PathBuf::from(format!("{}.{}.tmp", r.display(), sh.pid));
                    std::fs::write(&tmp, format!("{}\n", sh.pid))
                        .and_then(|_| std::fs::rename(&tmp, &r))
                        .with_context(|| format!("write --ready {}", qp(&r)))?;
                }
                Ok(())
            })
            .context("start the announcing thread")?
    };
    let mut announce = Some(announce);
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let stop: Result<&str> = loop {
        let mut fds = [
            libc::pollfd {
                fd: sh.fan,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sig.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds in a live array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break Err(anyhow!("poll: {e}"));
        }
        if fds[1].revents != 0 {
            match read_signal(&sig) {
                Some(libc::SIGINT) => break Ok("SIGINT"),
                Some(_) => break Ok("SIGTERM"),
                None => {}
            }
        }
        if fds[0].revents != 0 {
            drain(&sh, &access_tx, &mut buf, &mut workers);
        }
        workers.retain(|w| !w.is_finished());
        if announce.as_ref().is_some_and(|h| h.is_finished()) {
            match announce.take().map(JoinHandle::join) {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(_)) => break Err(anyhow!("the announcing thread panicked")),
            }
        }
    };
    // No new events from here on. Those already queued are served like any other (or, wedged,
    // taken and never answered); the loop keeps answering while the workers finish, since
    // their own accesses may still have raised events.
    let c = CString::new(mount.as_os_str().as_bytes()).context("--mount holds a NUL byte")?;
    // SAFETY: a live fanotify fd and a NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            sh.fan,
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
            FAN_PRE_ACCESS | libc::FAN_OPEN,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        // Writing anything more might wait for this thread: leave the rest to the kernel.
        let e = io::Error::last_os_error();
        bail!("remove the fanotify mark on {}: {e}", qp(&mount));
    }
    loop {
        drain(&sh, &access_tx, &mut buf, &mut workers);
        workers.retain(|w| !w.is_finished());
        let announcing = announce.as_ref().is_some_and(|h| !h.is_finished());
        if workers.is_empty() && !announcing {
            break;
        }
        let mut p = libc::pollfd {
            fd: sh.fan,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack.
        unsafe { libc::poll(&mut p, 1, 50) };
    }
    drop(access_tx);
    let _ = logger.join();
    let name = stop?;
    if sh.how.wedge {
        let n = sh.wedged.lock().map(|w| w.len()).unwrap_or(0);
        sh.tape.log(&format!(
            "serve: {name}: stopping wedged with {n} read(s) never answered; the kernel lets them go on when the group closes, and they read the stubs' holes"
        ));
    } else {
        sh.tape
            .log(&format!("serve: {name}: stopped, every access answered"));
    }
    drop(fan);
    Ok(0)
}

/// `serve` marks a whole filesystem: insist on one of its own (a mount point, not the root
/// filesystem), so that a slip does not put every read on the machine through the daemon.
fn check_own_filesystem(mount: &Path) -> Result<()> {
    let c = CString::new(mount.as_os_str().as_bytes()).context("--mount holds a NUL byte")?;
    // SAFETY: statx into a zeroed struct of the right type.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("statx {}", qp(mount)));
    }
    let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & root != 0 && stx.stx_attributes & root == 0 {
        bail!(
            "--mount {}: not a mount point; serve watches a whole filesystem, so mount one there (e.g. a loop-mounted ext4 image)",
            qp(mount)
        );
    }
    let here = std::fs::metadata(mount).with_context(|| format!("stat {}", qp(mount)))?;
    let slash = std::fs::metadata("/").context("stat /")?;
    if here.dev() == slash.dev() {
        bail!(
            "--mount {}: on the root filesystem; serve watches a whole filesystem, so give it one of its own (e.g. a loop-mounted ext4 image)",
            qp(mount)
        );
    }
    Ok(())
}

/// Every event opens a descriptor in this process until it is answered.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// SIGTERM and SIGINT, blocked before any thread starts (so every thread inherits the mask)
/// and read from a descriptor the main loop polls.
fn signal_fd() -> Result<OwnedFd> {
    // SAFETY: sigset operations on a local, then signalfd; the fd is owned at once.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("block SIGTERM and SIGINT: {}", io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            bail!("signalfd: {}", io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn read_signal(sig: &OwnedFd) -> Option<i32> {
    // SAFETY: reads one signalfd_siginfo into a zeroed local of that type.
    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            sig.as_raw_fd(),
            (&mut si as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    (n == std::mem::size_of::<libc::signalfd_siginfo>() as isize).then_some(si.ssi_signo as i32)
}

// statfs's f_type is i64 here, a 32-bit integer on other architectures.
#[allow(clippy::unnecessary_cast)]
fn fs_name(p: &Path) -> String {
    match rustix::fs::statfs(p) {
        Ok(s) => match s.f_type as i64 {
            0xEF53 => "ext4".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x0102_1994 => "tmpfs".into(),
            0x6969 => "nfs".into(),
            0x6573_5546 => "fuse".into(),
            0x794C_7630 => "overlay".into(),
            t => format!("type {t:#x}"),
        },
        Err(_) => "unknown".into(),
    }
}

fn fanotify_setup(mount: &Path) -> Result<OwnedFd> {
    // Event descriptors are read-only: a write-mode one would break evac's read leases on
    // every file it reads here.
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_PRE_CONTENT
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_UNLIMITED_QUEUE,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let why = if e.raw_os_error() == Some(libc::EPERM) {
            " (it needs CAP_SYS_ADMIN: run as root)"
        } else {
            ""
        };
        bail!("fanotify pre-content events are unavailable: fanotify_init(FAN_CLASS_PRE_CONTENT): {e}{why}");
    }
    // SAFETY: fanotify_init returned a new fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = CString::new(mount.as_os_str().as_bytes()).context("--mount holds a NUL byte")?;
    // SAFETY: a live fd and a NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            fd.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            FAN_PRE_ACCESS | libc::FAN_OPEN,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EINVAL) => format!(
                "; this kernel has no pre-content events (FAN_PRE_ACCESS needs Linux 6.14 or later), or the {} filesystem there does not support them",
                fs_name(mount)
            ),
            Some(libc::EOPNOTSUPP) => format!(
                "; the {} filesystem there does not support pre-content events (ext4, xfs and btrfs do; tmpfs does not)",
                fs_name(mount)
            ),
            Some(libc::EPERM) => "; it needs CAP_SYS_ADMIN: run as root".to_string(),
            _ => String::new(),
        };
        bail!(
            "fanotify pre-content events are unavailable on {}: fanotify_mark(FAN_PRE_ACCESS): {e}{why}",
            qp(mount)
        );
    }
    Ok(fd)
}

/// The first range record of an event's info records (pre-content events carry one).
fn parse_range(mut info: &[u8]) -> Option<(u64, u64)> {
    while info.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([info[2], info[3]]));
        if len < 4 || len > info.len() {
            return None;
        }
        if info[0] == FAN_EVENT_INFO_TYPE_RANGE && len >= 24 {
            let u = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or([0; 8]));
            return Some((u(8), u(16)));
        }
        info = &info[len..];
    }
    None
}

/// Read and dispatch every queued event. Runs on the main loop, which must never wait for
/// anything an event could hold up: it only reads events, inspects their descriptors and
/// /proc, and answers.
fn drain(
    sh: &Arc<Shared>,
    log: &mpsc::Sender<String>,
    buf: &mut [u8],
    workers: &mut Vec<JoinHandle<()>>,
) {
    loop {
        // SAFETY: reads into a live buffer of its length.
        let n = unsafe { libc::read(sh.fan, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return,
                Some(libc::EINTR) => continue,
                _ => {
                    eprintln!("evac-hsm-sim serve: read fanotify events: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
        }
        if n == 0 {
            return;
        }
        let n = n as usize;
        let mut off = 0;
        while off + EVENT_META <= n {
            let b = &buf[off..n];
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let vers = b[4];
            let meta = usize::from(u16::from_ne_bytes([b[6], b[7]]));
            let mask = u64::from_ne_bytes(b[8..16].try_into().unwrap_or([0; 8]));
            let fd = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            let pid = i32::from_ne_bytes([b[20], b[21], b[22], b[23]]);
            let end = len.clamp(EVENT_META, b.len());
            let range = parse_range(&b[meta.clamp(EVENT_META, end)..end]);
            if vers != FANOTIFY_METADATA_VERSION {
                eprintln!("evac-hsm-sim serve: fanotify event version {vers}, expected {FANOTIFY_METADATA_VERSION}");
            }
            if fd >= 0 {
                // SAFETY: the kernel opened this fd for us with the event.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                handle(
                    sh,
                    log,
                    Event {
                        mask,
                        fd,
                        pid,
                        range,
                    },
                    workers,
                );
            }
            off += len.max(EVENT_META);
        }
    }
}

/// trusted.hsm flags of an event's file when it is a stub (released or lost).
fn stub_flags(fd: BorrowedFd<'_>) -> Option<u32> {
    let st = rustix::fs::fstat(fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let (flags, _) = flags_of(&get_hsm(fd).ok()??);
    (flags & (HS_RELEASED | HS_LOST) != 0).then_some(flags)
}

fn handle(
    sh: &Arc<Shared>,
    log: &mpsc::Sender<String>,
    ev: Event,
    workers: &mut Vec<JoinHandle<()>>,
) {
    let perm = ev.mask & FAN_PRE_ACCESS != 0;
    let allow = |ev: &Event| {
        if perm {
            sh.respond(ev.fd.as_raw_fd(), FAN_ALLOW);
        }
    };
    // This process's own accesses (a recall writing a stub, the tape, the logs) wait for this
    // very loop: answered first, or the daemon would wait for itself.
    if ev.pid == sh.pid {
        return allow(&ev);
    }
    let Some(flags) = stub_flags(ev.fd.as_fd()) else {
        return allow(&ev);
    };
    // This program's `release` (punching) and `stage` (writing back) are the HSM at work:
    // known by its executable, or by its name when it was rebuilt since the daemon started.
    let exe = std::fs::metadata(format!("/proc/{}/exe", ev.pid))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let comm = std::fs::read(format!("/proc/{}/comm", ev.pid))
        .map(|mut c| {
            if c.last() == Some(&b'\n') {
                c.pop();
            }
            c
        })
        .unwrap_or_else(|_| b"?".to_vec());
    if (exe.is_some() && exe == sh.exe) || comm == sh.comm {
        return allow(&ev);
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", ev.fd.as_raw_fd()))
        .map(|p| p.into_os_string().into_vec())
        .unwrap_or_else(|_| b"?".to_vec());
    let action = if !perm {
        "logged"
    } else if flags & HS_LOST != 0 {
        "lost"
    } else if sh.how.wedge {
        "wedged"
    } else if fail_matches(&sh.how.fail, &path) {
        "fail"
    } else {
        "recall"
    };
    let _ = log.send(access_line(&ev, &comm, &path, action));
    if !perm {
        return;
    }
    let who = format!("pid {} ({})", ev.pid, escape(&comm));
    let raw = ev.fd.as_raw_fd();
    let sh2 = Arc::clone(sh);
    match std::thread::Builder::new()
        .name("recall".into())
        .spawn(move || serve_read(sh2, ev, action, who, path))
    {
        Ok(h) => workers.push(h),
        Err(e) => {
            // The event is answered by its fd number, which stays valid for the answer.
            eprintln!("evac-hsm-sim serve: start a recall thread: {e}");
            if perm {
                sh.respond(raw, fan_deny_errno(libc::EIO));
            }
        }
    }
}

/// A read of a stub by another process: recalled and let go, failed, or left waiting.
fn serve_read(sh: Arc<Shared>, ev: Event, action: &str, who: String, path: Vec<u8>) {
    match action {
        "wedged" => {
            sh.tape.log(&format!(
                "serve: read of {} by {who}: wedged, never answered",
                q(&path)
            ));
            sh.wedged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ev.fd);
        }
        "lost" => {
            sh.tape.log(&format!(
                "serve: read of {} by {who}: data lost, EIO",
                q(&path)
            ));
            sh.respond(ev.fd.as_raw_fd(), fan_deny_errno(libc::EIO));
        }
        _ => match serve_recall(&sh, &ev, &path) {
            Ok(()) => sh.respond(ev.fd.as_raw_fd(), FAN_ALLOW),
            Err(e) => {
                let m = format!(
                    "serve: recall {} for {who}: {e:#}; the read fails with EIO",
                    q(&path)
                );
                eprintln!("evac-hsm-sim {m}");
                sh.tape.log(&m);
                sh.respond(ev.fd.as_raw_fd(), fan_deny_errno(libc::EIO));
            }
        },
    }
}

fn serve_recall(sh: &Shared, ev: &Event, path: &[u8]) -> Result<()> {
    let mut drive = sh.drive.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::from(ev.fd.try_clone().context("dup the event's fd")?);
    // Another reader's event may have had it recalled while this one waited for the drive.
    let flags = match get_hsm(file.as_fd()).context("read trusted.hsm")? {
        Some(attr) => flags_of(&attr).0,
        None => 0,
    };
    if flags & HS_RELEASED == 0 {
        return Ok(());
    }
    let md = file.metadata().context("fstat")?;
    let recs = sh.tape.load()?;
    let i = find(&recs, &md, path)
        .ok_or_else(|| anyhow!("not in the catalog of {}", qp(&sh.tape.dir)))?;
    let rec = &recs[i];
    let mount = drive.as_deref() != Some(rec.volume.as_str());
    *drive = Some(rec.volume.clone());
    recall(&sh.tape, &file, &md, path, rec, &sh.how, mount)?;
    let mut r = rec.clone();
    r.path = path.to_vec();
    r.state = "premigrated".into();
    r.dev = md.dev();
    r.ino = md.ino();
    // Whoever holds the catalog may be waiting for this very read (a copy of the simulator
    // this daemon does not recognise, holding it while it touches a stub): the recall is done,
    // and the next update of the listing shows it, since states come from the files.
    match sh.tape.lock_within(Some(Duration::from_secs(2)))? {
        Some(_lock) => sh.tape.update_locked(&mut vec![r]),
        None => {
            sh.tape.log(&format!(
                "serve: recall {}: the catalog is locked by another process; the listing shows it at its next update",
                q(path)
            ));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_exactly_the_listings() {
        assert_eq!(escape(b"/a b/c"), "/a b/c");
        assert_eq!(escape(b"t\tn\nr\r\\"), "t\\tn\\nr\\r\\\\");
        assert_eq!(escape(b"\x01\x1f\x7f\""), "\\x01\\x1f\x7f\"");
        assert_eq!(escape(b"\xff\xfeok\xc3"), "\\xff\\xfeok\\xc3");
        assert_eq!(escape("é€".as_bytes()), "é€");
        for s in [
            &b"plain"[..],
            b"\\x41 is not A",
            b"\t\n\r\x00\x1b\xff\xc3(\xe2\x82",
            "ünï".as_bytes(),
        ] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s), "{s:?}");
        }
        assert_eq!(unescape("bad\\q"), None);
        assert_eq!(unescape("short\\x4"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_413), (2025, 11, 21));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn globs_match_whole_paths() {
        let g = [OsString::from("*/bad*")];
        assert!(fail_matches(&g, b"/x/y/bad file"));
        assert!(!fail_matches(&g, b"/x/y/good"));
        assert!(!fail_matches(&[], b"/x"));
    }

    #[test]
    fn catalog_lines_round_trip() {
        let r = Rec {
            path: b"/d/a\tb\n\xff".to_vec(),
            state: "staged_out".into(),
            tier: 2,
            volume: "V1".into(),
            position: 7,
            size: 12345,
            blake3: "ab".repeat(32),
            dev: 2049,
            ino: 77,
            atime: (-5, 1),
            mtime: (1_700_000_000, 999_999_999),
        };
        let line = r.catalog_line();
        assert_eq!(Rec::parse(line.trim_end_matches('\n')), Some(r));
    }

    #[test]
    fn range_records() {
        let mut info = vec![0u8; 24];
        info[0] = FAN_EVENT_INFO_TYPE_RANGE;
        info[2..4].copy_from_slice(&24u16.to_ne_bytes());
        info[8..16].copy_from_slice(&4096u64.to_ne_bytes());
        info[16..24].copy_from_slice(&131_072u64.to_ne_bytes());
        assert_eq!(parse_range(&info), Some((4096, 131_072)));
        assert_eq!(parse_range(&info[..10]), None);
        assert_eq!(parse_range(&[]), None);
    }

    #[test]
    fn hsm_attribute_layout() {
        let a = hsm_attr(HS_EXISTS | HS_ARCHIVED | HS_RELEASED, 3);
        assert_eq!(flags_of(&a), (0xd, 3));
        assert_eq!(
            evac::hsm::detect::lustre_state(&a).map(|c| c.state),
            Some(evac::hsm::detect::State::StagedOut)
        );
    }
}
