//! `evac verify` (I5): re-hash every relocated copy against the journal and check every SOURCE
//! link, and check the journal's counters against a full count; `evac holders`: the processes that still use SOURCE.

use super::status::need_plan;
use crate::error::{Error, IoContext, Result};
use crate::journal::{self, Journal};
use crate::sys::fsx;
use crate::ui::status as show;
use crate::ui::verify::{self as shown, CounterProblem, Finding, MetaChange, MetaDiff, Verified};
use rayon::prelude::*;
use rustix::fd::AsFd;
use std::path::Path;

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
    let counters: Vec<CounterProblem> = j
        .check_counters()?
        .into_iter()
        .map(|m| CounterProblem {
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
    let mut v = Verified {
        checked: 0,
        ok: false,
        problems: Vec::new(),
        written_since: 0,
        metadata_changed: Vec::new(),
        counters,
    };
    let mut after = 0;
    loop {
        let page = j.relocated_batch(after, 1024)?;
        let Some(l) = page.last() else { break };
        after = l.id;
        v.checked += page.len() as u64;
        let found: Vec<(Vec<u8>, Finding)> = pool.install(|| {
            page.par_iter()
                .map_init(
                    || vec![0u8; 1 << 20],
                    |buf, r| {
                        check_one(&src_root, &dst_root, &prefix, r, buf)
                            .into_iter()
                            .map(|f| (r.path.clone(), f))
                            .collect::<Vec<_>>()
                    },
                )
                .flatten()
                .collect()
        });
        for (path, finding) in found {
            match finding {
                Finding::ChangedSince => v.written_since += 1,
                Finding::MetadataChanged(changes) => {
                    v.metadata_changed.push(MetaChange { path, changes })
                }
                finding => v.problems.push(shown::Problem { path, finding }),
            }
        }
    }
    v.ok = v.problems.is_empty() && v.counters.is_empty();
    shown::show_verified(&v, json)?;
    Ok(if v.ok { 0 } else { 3 })
}

/// What is not as the journal recorded about one relocated file: its SOURCE link, then its DEST
/// copy (existence, mtime, size, inode, content; mode and owner once the content is proven).
fn check_one(
    src_root: &rustix::fd::OwnedFd,
    dst_root: &rustix::fd::OwnedFd,
    prefix: &[u8],
    r: &journal::Relocated,
    buf: &mut [u8],
) -> Vec<Finding> {
    let mut v = Vec::new();
    let (pd, name) = fsx::split_parent(&r.path);
    // SOURCE: the path must still be our link.
    let mut target = prefix.to_vec();
    if !target.ends_with(b"/") {
        target.push(b'/');
    }
    target.extend_from_slice(&r.path);
    match fsx::resolve_dir(src_root.as_fd(), pd).and_then(|d| fsx::readlink_at(d.as_fd(), name)) {
        Ok(t) if t == target => {}
        Ok(found) => v.push(Finding::LinkElsewhere {
            found,
            want: target,
        }),
        Err(e) => v.push(Finding::NotOurLink(e)),
    }
    // DEST: content and metadata as recorded.
    let fd = match fsx::resolve_dir(dst_root.as_fd(), pd)
        .and_then(|d| fsx::open_read(d.as_fd(), name))
    {
        Ok(fd) => fd,
        Err(e) => {
            v.push(Finding::DestUnopenable(e));
            return v;
        }
    };
    let st = match fsx::fstat(fd.as_fd()) {
        Ok(st) => st,
        Err(e) => {
            v.push(Finding::DestUnstatable(e));
            return v;
        }
    };
    if fsx::mtime_ns(&st) != r.mtime_ns {
        // Written since it was relocated (users work through the link): the journal's hash is
        // of the copy as made, so this copy can no longer be held to it.
        v.push(Finding::ChangedSince);
        return v;
    }
    if st.st_size as u64 != r.size {
        v.push(Finding::SizeDiffers {
            dest: st.st_size,
            journal: r.size,
        });
    }
    // Mode and owner: judged once the content is proven (below).
    let mut meta = Vec::new();
    if st.st_mode & 0o7777 != r.mode & 0o7777 {
        meta.push(MetaDiff::Mode {
            now: st.st_mode & 0o7777,
            was: r.mode & 0o7777,
        });
    }
    if fsx::is_root() && (st.st_uid != r.uid || st.st_gid != r.gid) {
        meta.push(MetaDiff::Owner {
            now: (st.st_uid, st.st_gid),
            was: (r.uid, r.gid),
        });
    }
    if r.dest_ino.is_some_and(|i| i != st.st_ino) {
        v.push(Finding::InodeDiffers);
    }
    match (&r.blake3, fsx::hash_fd(fd.as_fd(), buf)) {
        (Some(want), Ok((h, _))) if h.as_bytes().as_slice() == want.as_slice() => {
            if !meta.is_empty() {
                v.push(Finding::MetadataChanged(meta));
            }
        }
        (Some(want), Ok((h, _))) => v.push(Finding::HashDiffers {
            dest: h.to_hex().to_string(),
            journal: journal::blake3_hex(want),
        }),
        (None, _) => v.push(Finding::NoHash),
        (_, Err(e)) => v.push(Finding::Unreadable(e)),
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
