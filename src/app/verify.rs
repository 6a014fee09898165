//! `evac verify` (I5): re-hash every relocated copy against the journal and check every SOURCE
//! link, and check the journal's counters against a full count; `evac holders`: the processes that still use SOURCE.

use super::status::need_plan;
use crate::error::{Error, IoContext, Result};
use crate::journal::{self, Journal};
use crate::sys::fsx;
use crate::ui::status::{self as show, MetaChange, Verified};
use crate::util::escape::{escape, quoted};
use rayon::prelude::*;
use rustix::fd::AsFd;
use std::path::Path;

/// Not a problem: a relocated file that users have written to through its link since.
const CHANGED_SINCE: &str = "changed since relocation";
/// Mode or owner of a copy with its content intact, changed since: users chmod and chown through
/// their links like any file. Reported, not a problem.
const META_CHANGED: &str = "metadata changed since relocation: ";

struct Problem {
    path: Vec<u8>,
    what: String,
}

pub fn verify(journal: &Path, json: bool, workers: Option<usize>) -> Result<i32> {
    let j = Journal::open_read(journal)?;
    let plan = need_plan(&j)?;
    let src_root = fsx::open_root(&plan.source)
        .ctx("open SOURCE", plan.source.as_os_str().as_encoded_bytes())?;
    let dst_root =
        fsx::open_root(&plan.dest).ctx("open DEST", plan.dest.as_os_str().as_encoded_bytes())?;
    let prefix = journal::path_bytes(&plan.link_prefix);
    // The counters `status` reads, against a full count: a wrong one would mislead every status
    // and metric without anything else looking amiss.
    let counters: Vec<show::CounterProblem> = j
        .check_counters()?
        .into_iter()
        .map(|m| show::CounterProblem {
            what: m.what,
            kept_files: m.kept.0,
            kept_bytes: m.kept.1,
            counted_files: m.counted.0,
            counted_bytes: m.counted.1,
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers.unwrap_or(0))
        .build()
        .map_err(|e| Error::Setup(format!("start hashing threads: {e}")))?;
    let mut checked = 0u64;
    let mut problems: Vec<Problem> = Vec::new();
    let mut changed = 0u64;
    let mut meta_changed: Vec<Problem> = Vec::new();
    let mut after = 0;
    loop {
        let page = j.relocated_batch(after, 1024)?;
        let Some(l) = page.last() else { break };
        after = l.id;
        checked += page.len() as u64;
        let found: Vec<Problem> = pool.install(|| {
            page.par_iter()
                .map_init(
                    || vec![0u8; 1 << 20],
                    |buf, r| check_one(&src_root, &dst_root, &prefix, r, buf),
                )
                .flatten()
                .collect()
        });
        for p in found {
            if p.what == CHANGED_SINCE {
                changed += 1;
            } else if p.what.starts_with(META_CHANGED) {
                meta_changed.push(p);
            } else {
                problems.push(p);
            }
        }
    }
    let v = Verified {
        checked,
        ok: problems.is_empty() && counters.is_empty(),
        problems: problems
            .into_iter()
            .map(|p| show::Problem {
                path: escape(&p.path),
                raw: p.path,
                problem: p.what,
            })
            .collect(),
        written_since: changed,
        metadata_changed: meta_changed
            .into_iter()
            .map(|p| MetaChange {
                path: escape(&p.path),
                change: p.what[META_CHANGED.len()..].to_string(),
                raw: p.path,
            })
            .collect(),
        counters,
    };
    show::show_verified(&v, json)?;
    Ok(if v.ok { 0 } else { 3 })
}

fn check_one(
    src_root: &rustix::fd::OwnedFd,
    dst_root: &rustix::fd::OwnedFd,
    prefix: &[u8],
    r: &journal::Relocated,
    buf: &mut [u8],
) -> Vec<Problem> {
    let mut v = Vec::new();
    let mut bad = |what: String| {
        v.push(Problem {
            path: r.path.clone(),
            what,
        })
    };
    let (pd, name) = fsx::split_parent(&r.path);
    // SOURCE: the path must still be our link.
    let mut target = prefix.to_vec();
    if !target.ends_with(b"/") {
        target.push(b'/');
    }
    target.extend_from_slice(&r.path);
    match fsx::resolve_dir(src_root.as_fd(), pd).and_then(|d| fsx::readlink_at(d.as_fd(), name)) {
        Ok(t) if t == target => {}
        Ok(t) => bad(format!(
            "SOURCE link points to {} instead of {}",
            quoted(&t),
            quoted(&target)
        )),
        Err(e) => bad(format!("SOURCE path is not our link: {e}")),
    }
    // DEST: content and metadata as recorded.
    let fd = match fsx::resolve_dir(dst_root.as_fd(), pd)
        .and_then(|d| fsx::open_read(d.as_fd(), name))
    {
        Ok(fd) => fd,
        Err(e) => {
            bad(format!("DEST copy cannot be opened: {e}"));
            return v;
        }
    };
    let st = match fsx::fstat(fd.as_fd()) {
        Ok(st) => st,
        Err(e) => {
            bad(format!("DEST copy cannot be stat'ed: {e}"));
            return v;
        }
    };
    if fsx::mtime_ns(&st) != r.mtime_ns {
        // Written since it was relocated (users work through the link): the journal's hash is
        // of the copy as made, so this copy can no longer be held to it.
        bad(CHANGED_SINCE.into());
        return v;
    }
    if st.st_size as u64 != r.size {
        bad(format!(
            "DEST size {} differs from the journal's {} (mtime unchanged)",
            st.st_size, r.size
        ));
    }
    // Mode and owner: judged once the content is proven (below).
    let mut meta = Vec::new();
    if st.st_mode & 0o7777 != r.mode & 0o7777 {
        meta.push(format!(
            "mode {:o} (was {:o})",
            st.st_mode & 0o7777,
            r.mode & 0o7777
        ));
    }
    if fsx::is_root() && (st.st_uid != r.uid || st.st_gid != r.gid) {
        meta.push(format!(
            "owner {}:{} (was {}:{})",
            st.st_uid, st.st_gid, r.uid, r.gid
        ));
    }
    if r.dest_ino.is_some_and(|i| i != st.st_ino) {
        bad("DEST file is not the copy evac made (inode differs)".into());
    }
    match (&r.blake3, fsx::hash_fd(fd.as_fd(), buf)) {
        (Some(want), Ok((h, _))) if h.as_bytes().as_slice() == want.as_slice() => {
            if !meta.is_empty() {
                bad(format!("{META_CHANGED}{}", meta.join(", ")));
            }
        }
        (Some(want), Ok((h, _))) => bad(format!(
            "DEST content hash {} differs from the journal's {}",
            h.to_hex(),
            journal::blake3_hex(want)
        )),
        (None, _) => bad("no content hash on record (adopted link not yet hashed)".into()),
        (_, Err(e)) => bad(format!("read DEST copy: {e}")),
    }
    v
}

/// `evac holders`: the processes that still use SOURCE. Exit 0 when nothing holds SOURCE, 3 when
/// something does (like a run that left files).
pub fn holders(source: &Path, json: bool, null: bool) -> Result<i32> {
    let scan = crate::sys::proc::scan(source)?;
    show::show_holders(&scan, json, null)?;
    Ok(if scan.holdings.is_empty() { 0 } else { 3 })
}
