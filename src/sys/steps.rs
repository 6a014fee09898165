//! Named step points: every effect evac has on SOURCE, DEST or the journal is preceded by
//! `steps::at(Step, path)`, so that a test can stop evac at exactly that step as if by kill -9,
//! or hold it there while a user acts, and so that a crash or an interleaving found once can be
//! replayed at will. Inert (one relaxed load) unless the test-only variable `EVAC_TEST_STEPS`
//! names a directory; then:
//!
//! - every passage is appended to `DIR/trace` as `NAME\tK\tPATH-HEX\n` (K counts the passages
//!   of that point in this process, from 1);
//! - `EVAC_TEST_STEP_CRASH=NAME@K` kills the process with SIGKILL at the K-th passage of NAME,
//!   before its effect (nothing unwinds, nothing is flushed: a kill -9);
//! - `EVAC_TEST_STEP_PAUSE=NAME@K[,NAME@K...]` holds the thread at the K-th passage of each NAME:
//!   evac writes `DIR/paused` (`NAME\tK\tPATH-HEX\n`, put in place by rename) and waits until
//!   `DIR/go` exists, removes both and goes on. Other threads go on meanwhile (a lease break is
//!   still answered, unless it must wait for the held thread), as they would while the kernel
//!   holds this one;
//! - `EVAC_TEST_STEP_PATH=HEX` counts only the passages concerning that path (relative to
//!   SOURCE or DEST, hex-encoded bytes), so that a test can name "the exchange of this file".
//!
//! A point names the effect that follows it; a crash "after" an effect is the crash at the next
//! point. Journal commits (every transaction and every statement outside one) pass
//! `journal.commit` from SQLite's commit hook, so no journal effect is missed.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The step points. The name of each is stable: tests and replay commands use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// A journal commit (a transaction, or one statement outside any).
    JournalCommit,
    /// Create a missing DEST directory (for a copy, a renamed link, the trash).
    DestMkdir,
    /// Create the DEST temporary of a copy (O_EXCL, mode 0600).
    CopyCreate,
    /// Write the copy's data.
    CopyData,
    /// Give the copy its owner, mode, xattrs and times.
    CopyMeta,
    /// Remove the DEST temporary of a copy that will not be placed.
    CopyDiscard,
    /// syncfs(DEST): a batch's data and temporaries durable (and the last batch's names).
    SyncDest,
    /// syncfs(SOURCE): a batch's swaps durable before the journal records them.
    SyncSource,
    /// Move an earlier version's copy out of the way into DEST's trash before placing.
    PlaceTrash,
    /// Remove an earlier attempt's copy that no link ever named, before placing.
    PlaceUnlinkStale,
    /// Give the copy its final DEST name (a link from its fd, never replacing).
    PlaceLink,
    /// Remove the DEST temporary's name once the copy has its final name.
    PlaceCleanup,
    /// Remove a placed copy whose swap was given up.
    DiscardPlaced,
    /// Create the symlink under its temporary name in the SOURCE directory.
    SwapSymlink,
    /// Give the fresh link the original's owner and times.
    SwapLinkMeta,
    /// RENAME_EXCHANGE the original with its link.
    SwapExchange,
    /// Put the original back (exchange again) after a check failed.
    SwapUndo,
    /// Remove the link that an undone swap left under its temporary name.
    SwapUnlinkLink,
    /// (No RENAME_EXCHANGE) keep the original under an attic name.
    SwapAtticLink,
    /// (No RENAME_EXCHANGE) rename the link over the original's name.
    SwapAtticReplace,
    /// Put an original whose link a user moved back where the link now is.
    SwapFollowLink,
    /// Save an original whose name a user removed or reused, beside it (`.evac-saved`).
    SwapSaveOriginal,
    /// Remove the swapped-out original once the journal records the relocation.
    FinishUnlink,
    /// Recovery: remove a leftover link under its temporary name.
    RecoverUnlinkLink,
    /// Recovery: put an original back under its name (or where its link went).
    RecoverRestore,
    /// Recovery: remove an original whose relocation is complete and recorded.
    RecoverUnlinkOriginal,
    /// Recovery: remove a leftover DEST temporary.
    RecoverUnlinkTemp,
    /// Recovery: remove a placed copy that no link names.
    RecoverUnlinkCopy,
    /// Recovery: syncfs both sides before recording relocations it completed.
    RecoverSync,
    /// Resync: give a copy the new DEST name its renamed link needs (a hard link).
    ResyncClaim,
    /// Resync: move a copy no link names any more into the trash.
    ResyncTrash,
    /// Resync: remove an old name of a copy that a crash left behind.
    ResyncUnlinkStale,
    /// Resync: syncfs(DEST) before links are rewritten to new names.
    ResyncSyncDest,
    /// Resync: create the rewritten link under its temporary name.
    ResyncLinkCreate,
    /// Resync: exchange the rewritten link with the user's renamed one.
    ResyncLinkExchange,
    /// Resync: put the user's link back (it changed while being rewritten).
    ResyncLinkUndo,
    /// Resync: remove the old link (or an unused fresh one) under its temporary name.
    ResyncLinkUnlink,
    /// Resync: syncfs(SOURCE) before the journal lets go of old names.
    ResyncSyncSource,
    /// Resync: remove a copy's old DEST name once no link names it.
    ResyncRelease,
    /// Resync: remove a new DEST name whose link could not be rewritten.
    ResyncUndoClaim,
    /// Resync: park a copy on a staging name to untangle a cycle of renames.
    ResyncPark,
    /// Resync: remove an empty DEST directory whose SOURCE directory is gone.
    ResyncRmdir,
    /// Directory metadata at DEST (created if missing) after the contents.
    DirMeta,
}

impl Step {
    pub const ALL: &'static [Step] = &[
        Step::JournalCommit,
        Step::DestMkdir,
        Step::CopyCreate,
        Step::CopyData,
        Step::CopyMeta,
        Step::CopyDiscard,
        Step::SyncDest,
        Step::SyncSource,
        Step::PlaceTrash,
        Step::PlaceUnlinkStale,
        Step::PlaceLink,
        Step::PlaceCleanup,
        Step::DiscardPlaced,
        Step::SwapSymlink,
        Step::SwapLinkMeta,
        Step::SwapExchange,
        Step::SwapUndo,
        Step::SwapUnlinkLink,
        Step::SwapAtticLink,
        Step::SwapAtticReplace,
        Step::SwapFollowLink,
        Step::SwapSaveOriginal,
        Step::FinishUnlink,
        Step::RecoverUnlinkLink,
        Step::RecoverRestore,
        Step::RecoverUnlinkOriginal,
        Step::RecoverUnlinkTemp,
        Step::RecoverUnlinkCopy,
        Step::RecoverSync,
        Step::ResyncClaim,
        Step::ResyncTrash,
        Step::ResyncUnlinkStale,
        Step::ResyncSyncDest,
        Step::ResyncLinkCreate,
        Step::ResyncLinkExchange,
        Step::ResyncLinkUndo,
        Step::ResyncLinkUnlink,
        Step::ResyncSyncSource,
        Step::ResyncRelease,
        Step::ResyncUndoClaim,
        Step::ResyncPark,
        Step::ResyncRmdir,
        Step::DirMeta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::JournalCommit => "journal.commit",
            Step::DestMkdir => "dest.mkdir",
            Step::CopyCreate => "copy.create",
            Step::CopyData => "copy.data",
            Step::CopyMeta => "copy.meta",
            Step::CopyDiscard => "copy.discard",
            Step::SyncDest => "sync.dest",
            Step::SyncSource => "sync.source",
            Step::PlaceTrash => "place.trash",
            Step::PlaceUnlinkStale => "place.unlink-stale",
            Step::PlaceLink => "place.link",
            Step::PlaceCleanup => "place.cleanup",
            Step::DiscardPlaced => "discard.placed",
            Step::SwapSymlink => "swap.symlink",
            Step::SwapLinkMeta => "swap.link-meta",
            Step::SwapExchange => "swap.exchange",
            Step::SwapUndo => "swap.undo",
            Step::SwapUnlinkLink => "swap.unlink-link",
            Step::SwapAtticLink => "swap.attic-link",
            Step::SwapAtticReplace => "swap.attic-replace",
            Step::SwapFollowLink => "swap.follow-link",
            Step::SwapSaveOriginal => "swap.save-original",
            Step::FinishUnlink => "finish.unlink",
            Step::RecoverUnlinkLink => "recover.unlink-link",
            Step::RecoverRestore => "recover.restore",
            Step::RecoverUnlinkOriginal => "recover.unlink-original",
            Step::RecoverUnlinkTemp => "recover.unlink-temp",
            Step::RecoverUnlinkCopy => "recover.unlink-copy",
            Step::RecoverSync => "recover.sync",
            Step::ResyncClaim => "resync.claim",
            Step::ResyncTrash => "resync.trash",
            Step::ResyncUnlinkStale => "resync.unlink-stale",
            Step::ResyncSyncDest => "resync.sync-dest",
            Step::ResyncLinkCreate => "resync.link-create",
            Step::ResyncLinkExchange => "resync.link-exchange",
            Step::ResyncLinkUndo => "resync.link-undo",
            Step::ResyncLinkUnlink => "resync.link-unlink",
            Step::ResyncSyncSource => "resync.sync-source",
            Step::ResyncRelease => "resync.release",
            Step::ResyncUndoClaim => "resync.undo-claim",
            Step::ResyncPark => "resync.park",
            Step::ResyncRmdir => "resync.rmdir",
            Step::DirMeta => "dir.meta",
        }
    }

    pub fn from_name(s: &str) -> Option<Step> {
        Step::ALL.iter().copied().find(|p| p.name() == s)
    }
}

struct Armed {
    dir: PathBuf,
    trace: Mutex<std::fs::File>,
    counts: Mutex<HashMap<Step, u64>>,
    crash: Option<(Step, u64)>,
    pause: Vec<(Step, u64)>,
    path: Option<Vec<u8>>,
}

fn spec(v: &str) -> Option<(Step, u64)> {
    let (name, k) = v.rsplit_once('@')?;
    Some((Step::from_name(name)?, k.parse().ok()?))
}

/// Hex of raw bytes, for paths in the trace and in `paused` (any byte string survives).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let dir = PathBuf::from(std::env::var_os("EVAC_TEST_STEPS")?);
            let trace = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("trace"))
                .ok()?;
            Some(Armed {
                dir,
                trace: Mutex::new(trace),
                counts: Mutex::new(HashMap::new()),
                crash: std::env::var("EVAC_TEST_STEP_CRASH")
                    .ok()
                    .and_then(|v| spec(&v)),
                pause: std::env::var("EVAC_TEST_STEP_PAUSE")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(spec)
                    .collect(),
                path: std::env::var("EVAC_TEST_STEP_PATH")
                    .ok()
                    .and_then(|h| unhex(&h)),
            })
        })
        .as_ref()
}

/// Whether a test has armed the step points (the engine keeps to one deterministic schedule
/// then: see `deterministic`).
pub fn enabled() -> bool {
    armed().is_some()
}

/// Pass step point `step`, about to act on `path` (relative to SOURCE or DEST; empty for a
/// step that concerns no single file).
pub fn at(step: Step, path: &[u8]) {
    let Some(a) = armed() else { return };
    if a.path.as_deref().is_some_and(|p| p != path) {
        return;
    }
    let k = {
        let mut c = a.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(step).or_insert(0);
        *n += 1;
        *n
    };
    let line = format!("{}\t{k}\t{}\n", step.name(), hex(path));
    if let Ok(mut f) = a.trace.lock() {
        let _ = f.write_all(line.as_bytes());
    }
    if a.crash == Some((step, k)) {
        // As kill -9 does: no unwinding, no flushing, every thread gone at once.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
    if a.pause.contains(&(step, k)) {
        let tmp = a.dir.join("paused.tmp");
        let _ =
            std::fs::write(&tmp, &line).and_then(|()| std::fs::rename(&tmp, a.dir.join("paused")));
        let go = a.dir.join("go");
        while !go.exists() {
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = std::fs::remove_file(&go);
        let _ = std::fs::remove_file(a.dir.join("paused"));
    }
}
