//! `evac recover` (phase 3): relocate a leftover with the data of a copy found elsewhere (a
//! candidate of `evac fingerprint`), after checking the copy against the leftover's
//! fingerprint; the relocation itself is the normal protocol, journaled and resumable.

use crate::engine::{self, RunOpts};
use crate::error::{Error, Result};
use crate::fingerprint::hashing::{self, Algo};
use crate::journal::fingerprint::FpLeftover;
use crate::journal::{FileState, Journal, RecoveryRow};
use crate::sys::lock::JournalLock;
use crate::util::escape::quoted;
use std::path::{Path, PathBuf};

pub struct RecoverOpts {
    pub journal: PathBuf,
    /// The leftover (absolute under SOURCE, or relative to it) and the copy to take its data
    /// from; both None with `all_exact` false: go on with the recoveries already requested.
    pub path: Option<PathBuf>,
    pub from: Option<PathBuf>,
    pub all_exact: bool,
    pub force: bool,
    pub workers: Option<usize>,
}

/// The leftover's path relative to SOURCE: an absolute path under SOURCE, a relative one that
/// leads under SOURCE from here, or else one relative to SOURCE.
fn relative(source: &Path, p: &Path) -> Result<Vec<u8>> {
    if !p.is_absolute() {
        if let Ok(abs) = std::path::absolute(p) {
            if let Ok(r) = abs.strip_prefix(source) {
                return Ok(r.as_os_str().as_encoded_bytes().to_vec());
            }
        }
    }
    let rel = if p.is_absolute() {
        p.strip_prefix(source).map_err(|_| {
            Error::Setup(format!(
                "{} is not under SOURCE {}",
                quoted(p.as_os_str().as_encoded_bytes()),
                quoted(source.as_os_str().as_encoded_bytes())
            ))
        })?
    } else {
        p
    };
    Ok(rel.as_os_str().as_encoded_bytes().to_vec())
}

/// Check `candidate` against what `l`'s fingerprint knows of its content; the request to
/// record, and what matched. Err: why it is refused.
fn check(
    l: &FpLeftover,
    candidate: &[u8],
    force: bool,
) -> std::result::Result<(RecoveryRow, String), String> {
    let file_id = l.file_id.ok_or_else(|| {
        "only the HSM listing knows it (no file of that name was seen in SOURCE)".to_string()
    })?;
    let (fd, st) = crate::sys::fsx::open_absolute(candidate)
        .map_err(|e| format!("open the candidate {}: {e}", quoted(candidate)))?;
    if st.st_size as u64 != l.size {
        return Err(format!(
            "the candidate {} has {} bytes, the leftover {}",
            quoted(candidate),
            st.st_size,
            l.size
        ));
    }
    let known = hashing::known_hashes(l);
    let mut algos: Vec<Algo> = known.iter().map(|k| k.0).collect();
    if !algos.contains(&Algo::Blake3) {
        algos.push(Algo::Blake3);
    }
    let mut buf = vec![0u8; 1 << 20];
    let h = hashing::full(
        rustix::fd::AsFd::as_fd(&fd),
        l.size,
        &algos,
        &mut buf,
        &mut |_| {},
    )
    .map_err(|e| format!("read the candidate {}: {e}", quoted(candidate)))?;
    let matched = known
        .iter()
        .find(|(a, want)| h.get(*a) == Some(want.as_slice()))
        .map(|(a, _)| a.name().to_string());
    let by = match (matched, known.first(), force) {
        (Some(by), _, _) => by,
        (None, None, true) => "forced".to_string(),
        (None, None, false) => {
            return Err(
                "nothing is known of its content (it could not be read without a recall and the HSM listing has no checksum): --force takes the candidate on its size and name"
                    .into(),
            )
        }
        (None, Some((a, _)), true) => format!("forced ({} differs)", a.name()),
        (None, Some((a, _)), false) => {
            return Err(format!(
                "the candidate's {} differs from the leftover's: not its data (--force overrides)",
                a.name()
            ))
        }
    };
    let mut blake3 = [0u8; 32];
    blake3.copy_from_slice(h.get(Algo::Blake3).unwrap_or(&[0u8; 32]));
    Ok((
        RecoveryRow {
            file_id,
            candidate: candidate.to_vec(),
            size: l.size,
            blake3,
        },
        by,
    ))
}

pub fn recover(mut o: RecoverOpts) -> Result<i32> {
    o.journal =
        std::path::absolute(&o.journal).map_err(|e| Error::Setup(format!("journal: {e}")))?;
    let _lock = JournalLock::acquire(&o.journal)?;
    let j = Journal::open(&o.journal, false)?;
    let plan = j.plan()?.ok_or_else(|| {
        Error::Setup(format!(
            "{}: no run recorded in this journal",
            quoted(o.journal.as_os_str().as_encoded_bytes())
        ))
    })?;
    let mut picks: Vec<(FpLeftover, Vec<u8>)> = Vec::new();
    match (&o.path, &o.from, o.all_exact) {
        (Some(p), Some(from), false) => {
            let rel = relative(&plan.source, p)?;
            let l = j.fp_leftover(&rel)?.ok_or_else(|| {
                Error::Setup(format!(
                    "{} is not a leftover of the last `evac fingerprint` (run it first)",
                    quoted(&rel)
                ))
            })?;
            let from = std::path::absolute(from).map_err(|e| Error::Setup(format!("{e}")))?;
            picks.push((l, from.as_os_str().as_encoded_bytes().to_vec()));
        }
        (None, None, true) => {
            for (l, m) in j.fp_exact()? {
                picks.push((l, m.candidate));
            }
        }
        (None, None, false) => {}
        _ => {
            return Err(Error::Setup(
                "evac recover: give PATH --from CANDIDATE, or --all-exact, or nothing to go on with the recoveries already requested".into(),
            ))
        }
    }
    let mut refused = 0;
    for (l, cand) in &picks {
        if let Some(id) = l.file_id {
            if j.file_state(id)?
                .is_some_and(|s| s.0 == FileState::Relocated)
            {
                crate::ui::out(format!("recover: {} is already relocated", quoted(&l.path)));
                continue;
            }
        }
        match check(l, cand, o.force) {
            Ok((row, by)) => {
                j.request_recovery(&row, &by)?;
                crate::ui::out(format!(
                    "recover: {} from {} (checked: {by})",
                    quoted(&l.path),
                    quoted(cand)
                ));
            }
            Err(why) => {
                refused += 1;
                crate::ui::err(format!("recover: {}: refused: {why}", quoted(&l.path)));
            }
        }
    }
    let requested = j.recoveries_requested()?;
    if requested.is_empty() {
        crate::ui::out("recover: nothing to recover");
        return Ok(if refused > 0 {
            engine::EXIT_LEFT
        } else {
            engine::EXIT_OK
        });
    }
    drop(j);
    let code = engine::run_locked(RunOpts::waiting_only(
        o.journal.clone(),
        o.workers,
        "recover (relocating leftovers from their candidates)",
    ))?;
    let j = Journal::open(&o.journal, false)?;
    let (mut done, mut failed) = (0, 0);
    for r in &requested {
        let path = j.files_in_state_any(r.file_id)?.unwrap_or_default();
        match j.state_and_reason(r.file_id)? {
            Some((FileState::Relocated, _)) => {
                j.finish_recovery(r.file_id, "done", None)?;
                j.event(r.file_id, None, "recovered", &quoted(&r.candidate))?;
                crate::ui::out(format!(
                    "recovered {} from {}",
                    quoted(&path),
                    quoted(&r.candidate)
                ));
                done += 1;
            }
            // Stopped before its turn: the next `evac recover` goes on with it.
            Some((FileState::Pending, _)) if code == engine::EXIT_INTERRUPTED => {}
            Some((s, why)) => {
                let why = why.unwrap_or_else(|| s.to_string());
                j.finish_recovery(r.file_id, "failed", Some(&why))?;
                crate::ui::err(format!("recover: {}: not recovered: {why}", quoted(&path)));
                failed += 1;
            }
            None => {}
        }
    }
    crate::ui::out(format!(
        "recover: {done} recovered, {failed} not, {refused} refused"
    ));
    Ok(if code == engine::EXIT_INTERRUPTED {
        engine::EXIT_INTERRUPTED
    } else if failed + refused > 0 {
        engine::EXIT_LEFT
    } else {
        engine::EXIT_OK
    })
}
