//! `evac rescue`: copy out the files under SOURCE that were deleted while some process still
//! holds them open or mapped, read back through /proc before the last holder lets go, into a
//! directory outside SOURCE, with their metadata and a manifest of who held them.
//!
//! Which files those are is `sys::proc::scan`'s answer (the reading of /proc `evac holders`
//! shows); this module only reads them back. Every read goes through the holder's own /proc
//! entry (`/proc/PID/fd/N`, or `/proc/PID/map_files/A-B` for a mapping and for a program that
//! runs), opened read-only: no path a user controls is resolved, and the process is never
//! signalled, traced or paused. The manifest's text is `ui::rescue`'s.

use crate::error::{Error, Result};
use crate::sys::fsx;
use crate::sys::proc::{Holding, Use};
use crate::ui::rescue as show;
use crate::util::escape::{escape, quoted};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What `evac rescue` was asked to do.
#[derive(Debug, Clone)]
pub struct RescueOpts {
    pub source: PathBuf,
    /// Where the rescued files go (created if missing; never inside SOURCE).
    pub to: PathBuf,
    /// The journal whose temporaries may be among the deleted files: it names the SOURCE path
    /// an original swapped out by evac belonged to.
    pub journal: Option<PathBuf>,
    pub json: bool,
}

/// How often a file that changes while it is copied is copied again before it is kept as read.
const COPY_TRIES: usize = 3;
/// The manifest's name in DIR (with a free suffix when taken).
const MANIFEST: &str = "evac-rescue";
/// Appended to a rescued file's last name (then `-2`, `-3`, ... when taken).
const SUFFIX: &[u8] = b".rescued";
const NAME_MAX: usize = 255;

/// A last name that is one of evac's temporaries in SOURCE, `.evac-JOURNALID-FILEID.lnk` (the
/// original a swap moved aside) or `.attic` (the same, where RENAME_EXCHANGE is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvacTemp {
    pub journal_id: String,
    pub file_id: i64,
    /// The SOURCE path (relative) the journal records for the file id, when it was given and
    /// is the one whose id the name carries.
    pub original: Option<Vec<u8>>,
    /// Why `original` is not known.
    pub unknown: Option<String>,
}

/// Parse an evac temporary name (the last component only).
pub fn parse_evac_temp(name: &[u8]) -> Option<(String, i64)> {
    let rest = name.strip_prefix(b".evac-")?;
    let (jid, rest) = (rest.get(..16)?, rest.get(16..)?);
    if !jid.iter().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let rest = std::str::from_utf8(rest.strip_prefix(b"-")?).ok()?;
    let (id, suffix) = rest.split_once('.')?;
    if !matches!(suffix, "lnk" | "attic")
        || id.is_empty()
        || !id.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((String::from_utf8_lossy(jid).into_owned(), id.parse().ok()?))
}

/// The journal's answer to "which SOURCE path was this temporary's file", read once.
struct Names {
    journal: Option<(crate::journal::Journal, String)>,
    given: bool,
}

impl Names {
    fn open(journal: Option<&Path>) -> Result<Names> {
        let Some(p) = journal else {
            return Ok(Names {
                journal: None,
                given: false,
            });
        };
        let j = crate::journal::Journal::open_read(p)?;
        let plan = j.plan()?.ok_or_else(|| {
            Error::Setup(format!(
                "journal {} has no plan yet (no run has started with it)",
                quoted(p.as_os_str().as_bytes())
            ))
        })?;
        Ok(Names {
            journal: Some((j, plan.journal_id)),
            given: true,
        })
    }

    fn evac_temp(&self, rel: &[u8]) -> Result<Option<EvacTemp>> {
        let Some((jid, id)) = parse_evac_temp(fsx::split_parent(rel).1) else {
            return Ok(None);
        };
        let (original, unknown) = match &self.journal {
            Some((j, ours)) if *ours == jid => match j.files_in_state_any(id)? {
                Some(p) => (Some(p), None),
                None => (None, Some(format!("file id {id} is not in the journal"))),
            },
            Some((_, ours)) => (
                None,
                Some(format!(
                    "a temporary of journal {jid}, not of the journal given ({ours})"
                )),
            ),
            None if !self.given => (None, Some("give --journal to name its SOURCE path".into())),
            None => (None, None),
        };
        Ok(Some(EvacTemp {
            journal_id: jid,
            file_id: id,
            original,
            unknown,
        }))
    }
}

/// One deleted file and every holding through which it was seen.
struct Held<'a> {
    key: (u64, u64),
    holdings: Vec<&'a Holding>,
}

/// What became of one deleted file.
struct Outcome<'a> {
    held: Held<'a>,
    /// The holding it was read through.
    read_via: Option<&'a Holding>,
    /// Relative to DIR.
    rescued_as: Option<Vec<u8>>,
    stat: Option<Stat>,
    blake3: Option<String>,
    evac: Option<EvacTemp>,
    /// An error (the file is not rescued) or a remark (it is).
    note: Option<String>,
    ok: bool,
}

/// Can this use of a file be read back? Directories (cwd, root) cannot be copied as files.
fn readable_use(h: &Holding) -> bool {
    h.deleted && matches!(h.how, Use::Open(_) | Use::Mmap | Use::Exe)
}

pub fn rescue(o: &RescueOpts) -> Result<i32> {
    let scan = crate::sys::proc::scan(&o.source)?;
    let src_st = rustix::fs::stat(&scan.source)
        .map_err(|e| Error::io("stat SOURCE", scan.source.as_os_str().as_bytes(), e.into()))?;
    let to = prepare_dir(&o.to, &src_st)?;
    let names = Names::open(o.journal.as_deref())?;
    let dir =
        fsx::open_root(&to).map_err(|e| Error::io("open DIR", to.as_os_str().as_bytes(), e))?;

    let mut files: Vec<Held<'_>> = Vec::new();
    for h in scan.holdings.iter().filter(|h| readable_use(h)) {
        match files.iter_mut().find(|f| f.key == h.key) {
            Some(f) => f.holdings.push(h),
            None => files.push(Held {
                key: h.key,
                holdings: vec![h],
            }),
        }
    }
    let mut outcomes = Vec::with_capacity(files.len());
    let mut buf = vec![0u8; 1 << 20];
    for held in files {
        let evac = names.evac_temp(&held.holdings[0].path)?;
        outcomes.push(rescue_one(dir.as_fd(), held, evac, &mut buf));
    }

    let (manifest, fd) = create_manifest(dir.as_fd(), &to, o.json)?;
    let report = report(&to, &scan.source, &manifest, &outcomes);
    let text = if o.json {
        show::json(&report)?
    } else {
        show::tsv(&report)
    };
    let mut f = std::fs::File::from(fd);
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write manifest", manifest.as_os_str().as_bytes(), e))?;
    rustix::fs::fsync(dir.as_fd())
        .map_err(|e| Error::io("sync", to.as_os_str().as_bytes(), e.into()))?;
    show::show(&report, o.json, scan.unreadable, fsx::is_root())?;
    let failed = outcomes.iter().filter(|x| !x.ok).count();
    Ok(if failed > 0 { 3 } else { 0 })
}

/// DIR made absolute, created if missing (new directories 0700: what is rescued is other
/// people's data), and refused if it is SOURCE or lies inside it (checked by inode on every
/// ancestor, so a bind mount or symlink of SOURCE is caught too). The existing part is checked
/// before anything is created, so a refused DIR leaves no trace in SOURCE.
fn prepare_dir(to: &Path, src: &Stat) -> Result<PathBuf> {
    let shown = to.as_os_str().as_bytes();
    let abs = std::path::absolute(to).map_err(|e| Error::io("resolve DIR", shown, e))?;
    let mut existing = abs.as_path();
    while std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    refuse_inside(existing, src, shown)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&abs)
        .map_err(|e| Error::io("create DIR", shown, e))?;
    let canon = std::fs::canonicalize(&abs).map_err(|e| Error::io("resolve DIR", shown, e))?;
    if !canon.is_dir() {
        return Err(Error::Setup(format!(
            "DIR {}: not a directory",
            quoted(shown)
        )));
    }
    refuse_inside(&canon, src, shown)?;
    Ok(canon)
}

use std::os::unix::fs::DirBuilderExt;

fn refuse_inside(dir: &Path, src: &Stat, shown: &[u8]) -> Result<()> {
    let canon = std::fs::canonicalize(dir).map_err(|e| Error::io("resolve DIR", shown, e))?;
    for a in canon.ancestors() {
        if let Ok(st) = rustix::fs::stat(a) {
            if (st.st_dev, st.st_ino) == (src.st_dev, src.st_ino) {
                return Err(Error::Setup(format!(
                    "DIR {} is inside SOURCE: rescued files must go elsewhere (SOURCE is what is being retired)",
                    quoted(shown)
                )));
            }
        }
    }
    Ok(())
}

/// Open the holder's /proc entry for reading, as the file the scan saw: an fd number can be
/// closed and reused between the scan and now, so the inode must still be the scan's, and
/// still unlinked.
fn open_held(h: &Holding) -> std::result::Result<(OwnedFd, Stat), String> {
    let Some(entry) = &h.entry else {
        return Err(format!(
            "pid {} maps it, but /proc/{}/map_files cannot be read{}",
            h.pid,
            h.pid,
            if fsx::is_root() { "" } else { " (needs root)" }
        ));
    };
    let path = format!("/proc/{}/{entry}", h.pid);
    let what = |e: Errno| {
        format!(
            "open {path}: {}",
            std::io::Error::from_raw_os_error(e.raw_os_error())
        )
    };
    // The entry is pinned first (O_PATH opens nothing: no FIFO blocks, no device acts) and
    // judged through that handle, then opened for reading through the handle itself: an fd
    // number the holder closes and reuses in between cannot put another file under the copy.
    let pinned = rustix::fs::open(path.as_str(), OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(what)?;
    let st = rustix::fs::fstat(&pinned).map_err(what)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(format!("{path}: not a regular file"));
    }
    if (st.st_dev, st.st_ino) != h.key {
        return Err(format!(
            "{path}: now another file (the holder closed it meanwhile)"
        ));
    }
    if st.st_nlink != 0 {
        return Err(format!("{path}: has a name again (linked back meanwhile)"));
    }
    use std::os::fd::AsRawFd;
    let again = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let base = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    // O_NOATIME: reading it back must not change the atime the copy keeps.
    let fd = match rustix::fs::open(again.as_str(), base | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::open(again.as_str(), base, Mode::empty()),
        r => r,
    }
    .map_err(what)?;
    let st = rustix::fs::fstat(&fd).map_err(what)?;
    Ok((fd, st))
}

fn rescue_one<'a>(
    dir: BorrowedFd<'_>,
    held: Held<'a>,
    evac: Option<EvacTemp>,
    buf: &mut [u8],
) -> Outcome<'a> {
    let mut misses = Vec::new();
    let mut opened = None;
    for h in &held.holdings {
        match open_held(h) {
            Ok((fd, st)) => {
                opened = Some((*h, fd, st));
                break;
            }
            Err(e) => misses.push(e),
        }
    }
    let mut out = Outcome {
        held,
        read_via: None,
        rescued_as: None,
        stat: None,
        blake3: None,
        evac,
        note: None,
        ok: false,
    };
    let Some((h, fd, st)) = opened else {
        out.note = Some(misses.join("; "));
        return out;
    };
    out.read_via = Some(h);
    out.stat = Some(st);
    match copy_out(dir, &h.path, fd.as_fd(), st, buf) {
        Ok((rel, st, hash, note)) => {
            out.rescued_as = Some(rel);
            out.stat = Some(st);
            out.blake3 = Some(hash);
            out.note = note;
            out.ok = true;
        }
        Err(e) => out.note = Some(e.to_string()),
    }
    out
}

type Copied = (Vec<u8>, Stat, String, Option<String>);

/// Copy the open file to DIR/<its last path>.rescued[-N] (created O_EXCL: nothing in DIR is
/// ever overwritten), holes kept, then owner, attributes, mode and times, made durable.
fn copy_out(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    src: BorrowedFd<'_>,
    st: Stat,
    buf: &mut [u8],
) -> Result<Copied> {
    let (parent, name) = fsx::split_parent(rel);
    let pdir = fsx::ensure_dir(dir, parent)
        .map_err(|e| Error::io("create directory in DIR", parent, e))?;
    let (dst, dname) =
        create_free(pdir.as_fd(), name).map_err(|e| Error::io("create in DIR", rel, e))?;
    let dst_rel = fsx::join(parent, &dname);
    let result = fill(pdir.as_fd(), dst.as_fd(), src, st, buf, &dst_rel);
    if result.is_err() {
        // Ours alone (created O_EXCL a moment ago): a half copy must not pass for a rescue.
        let _ = fsx::unlink_at(pdir.as_fd(), &dname);
    }
    let (st, hash, note) = result?;
    Ok((dst_rel, st, hash, note))
}

fn fill(
    pdir: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    src: BorrowedFd<'_>,
    mut st: Stat,
    buf: &mut [u8],
    dst_rel: &[u8],
) -> Result<(Stat, String, Option<String>)> {
    let io = |op: &'static str| move |e: std::io::Error| Error::io(op, dst_rel, e);
    let mut note = None;
    let mut hash;
    let mut tries = 0;
    loop {
        tries += 1;
        rustix::fs::ftruncate(dst, 0).map_err(|e| io("truncate rescued copy")(e.into()))?;
        let mut hasher = blake3::Hasher::new();
        let outcome = fsx::copy_sparse(
            src,
            dst,
            st.st_size as u64,
            &mut hasher,
            buf,
            &mut |_| true,
            false,
        )
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|i| i.downcast_ref::<fsx::SourceError>())
            {
                Some(_) => Error::io("read held file", dst_rel, e),
                None => Error::io("write rescued copy", dst_rel, e),
            }
        })?;
        hash = hasher.finalize().to_hex().to_string();
        // The holder may be writing as we read: copy again until size and times stand still.
        let after = fsx::fstat(src).map_err(io("stat held file"))?;
        let moved = matches!(outcome, fsx::CopyOutcome::Shrunk)
            || (after.st_size, fsx::mtime_ns(&after), fsx::ctime_ns(&after))
                != (st.st_size, fsx::mtime_ns(&st), fsx::ctime_ns(&st));
        if !moved {
            break;
        }
        st = after;
        if tries >= COPY_TRIES {
            // Kept as read, with the last stat it was read under: the holder keeps writing.
            let again = fsx::fstat(src).map_err(io("stat held file"))?;
            rustix::fs::ftruncate(dst, 0).map_err(|e| io("truncate rescued copy")(e.into()))?;
            let mut hasher = blake3::Hasher::new();
            fsx::copy_sparse(
                src,
                dst,
                again.st_size as u64,
                &mut hasher,
                buf,
                &mut |_| true,
                false,
            )
            .map_err(io("copy held file"))?;
            hash = hasher.finalize().to_hex().to_string();
            st = again;
            note = Some(format!(
                "still being written after {COPY_TRIES} copies: the copy is as it was read last, and may mix two versions"
            ));
            break;
        }
    }
    let xattrs = fsx::read_xattrs(src).unwrap_or_default();
    let skipped = match fsx::apply_meta(dst, &st, &xattrs) {
        Ok(s) => s,
        Err(e) if xattrs.is_empty() => {
            return Err(io("set owner, mode and times of rescued copy")(e));
        }
        // As root an attribute refused fails the whole; the data is what matters here.
        Err(e) => {
            fsx::apply_meta(dst, &st, &[])
                .map_err(io("set owner, mode and times of rescued copy"))?;
            vec![(b"(all)".to_vec(), e)]
        }
    };
    if !skipped.is_empty() {
        let kept = note.take().map(|n| format!("{n}; ")).unwrap_or_default();
        let names = skipped
            .iter()
            .map(|(n, e)| format!("{} ({e})", escape(n)))
            .collect::<Vec<_>>()
            .join(", ");
        note = Some(format!("{kept}extended attributes not kept: {names}"));
    }
    rustix::fs::fsync(dst).map_err(|e| io("sync rescued copy")(e.into()))?;
    rustix::fs::fsync(pdir).map_err(|e| io("sync directory of rescued copy")(e.into()))?;
    Ok((st, hash, note))
}

/// Create `NAME.rescued`, or the first free `NAME.rescued-N`, exclusively. A name too long for
/// the suffix is shortened (the manifest keeps the path it had).
fn create_free(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<(OwnedFd, Vec<u8>)> {
    for n in 1..=10_000u32 {
        let suffix = if n == 1 {
            SUFFIX.to_vec()
        } else {
            [SUFFIX, format!("-{n}").as_bytes()].concat()
        };
        let keep = name.len().min(NAME_MAX - suffix.len());
        let candidate = [&name[..keep], &suffix[..]].concat();
        match fsx::create_excl(dir, &candidate) {
            Ok(fd) => return Ok((fd, candidate)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free .rescued-N name among 10000",
    ))
}

/// The manifest goes into DIR beside the files (`evac-rescue.tsv`, or `.json` with --json; a
/// free `-N` when taken), created before it is filled, since the JSON names it.
fn create_manifest(dir: BorrowedFd<'_>, to: &Path, as_json: bool) -> Result<(PathBuf, OwnedFd)> {
    let ext = if as_json { "json" } else { "tsv" };
    let mut n = 1;
    loop {
        let name = if n == 1 {
            format!("{MANIFEST}.{ext}")
        } else {
            format!("{MANIFEST}-{n}.{ext}")
        };
        match fsx::create_excl(dir, name.as_bytes()) {
            Ok(fd) => return Ok((to.join(&name), fd)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 10_000 => n += 1,
            Err(e) => {
                return Err(Error::io(
                    "create manifest in",
                    to.as_os_str().as_bytes(),
                    e,
                ))
            }
        }
    }
}

fn report(to: &Path, source: &Path, manifest: &Path, outcomes: &[Outcome<'_>]) -> show::Rescue {
    let files: Vec<show::RescuedFile> = outcomes
        .iter()
        .map(|x| {
            let st = x.stat.filter(|_| x.ok);
            show::RescuedFile {
                result: if x.ok { "rescued" } else { "failed" },
                path: escape(&x.held.holdings[0].path),
                rescued_as: x.rescued_as.as_deref().map(escape),
                size: st.map(|s| s.st_size as u64),
                mode: st.map(|s| s.st_mode & 0o7777),
                uid: st.map(|s| s.st_uid),
                gid: st.map(|s| s.st_gid),
                mtime_ns: st.map(|s| fsx::mtime_ns(&s)),
                blake3: x.blake3.clone(),
                evac_temp: x.evac.as_ref().map(|e| show::EvacTemp {
                    journal_id: e.journal_id.clone(),
                    file_id: e.file_id,
                    original: e.original.as_deref().map(escape),
                    unknown: e.unknown.clone(),
                }),
                note: x.note.clone(),
                holders: x
                    .held
                    .holdings
                    .iter()
                    .map(|h| show::Holder {
                        pid: h.pid,
                        user: h.user.clone(),
                        command: escape(&h.command),
                        cmdline: h.cmdline.iter().map(|a| escape(a)).collect(),
                        what: h.how.to_string(),
                        via: h.entry.clone(),
                        read: x.read_via.is_some_and(|r| std::ptr::eq(r, *h)),
                    })
                    .collect(),
            }
        })
        .collect();
    let rescued = outcomes.iter().filter(|x| x.ok).count();
    show::Rescue {
        source: escape(source.as_os_str().as_bytes()),
        to: escape(to.as_os_str().as_bytes()),
        manifest: escape(manifest.as_os_str().as_bytes()),
        rescued,
        failed: outcomes.len() - rescued,
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evac_temporaries_are_told_by_name() {
        assert_eq!(
            parse_evac_temp(b".evac-0123456789abcdef-42.lnk"),
            Some(("0123456789abcdef".into(), 42))
        );
        assert_eq!(
            parse_evac_temp(b".evac-0123456789abcdef-7.attic"),
            Some(("0123456789abcdef".into(), 7))
        );
        // DEST's temporaries and look-alikes are not originals of SOURCE.
        assert_eq!(parse_evac_temp(b".evac-0123456789abcdef-42.tmp"), None);
        assert_eq!(parse_evac_temp(b".evac-0123456789abcdeg-42.lnk"), None);
        assert_eq!(parse_evac_temp(b".evac-0123456789abcdef-.lnk"), None);
        assert_eq!(parse_evac_temp(b".evac-0123456789abcdef-4x.lnk"), None);
        assert_eq!(parse_evac_temp(b"evac-0123456789abcdef-42.lnk"), None);
    }
}
