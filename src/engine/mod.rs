//! `evac run`: set up (or resume) the plan, recover what a previous run left in flight, then walk,
//! copy in parallel and commit in durable batches, with one thread owning the journal.

// Copies stay boxed: they move between worker threads, the batch and rayon, and a box moves as a
// pointer where the struct (stat buffers, fds, names) would be copied.
#![allow(clippy::vec_box)]

use crate::error::{Error, IoContext, Result};
use crate::journal::{self, FileRec, Journal, Kind, Next, Plan};
use crate::protocol::{self, Copied, Ctx, Job, Outcome, RecoverResult, Swap};
use crate::sys::busy::{self, Mapped};
use crate::sys::fsx;
use crate::sys::lock::JournalLock;
use crate::sys::signals;
use crate::sys::steps::{self, Step};
use crate::util::escape::quoted;
use crate::util::units::human_bytes;
use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;
use rustix::fd::AsFd;
use stats::Stats;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walk::{WalkMsg, WalkOpts};

pub mod resync;
pub mod stats;
mod storage;
pub mod walk;

pub struct RunOpts {
    pub source: Option<PathBuf>,
    pub dest: Option<PathBuf>,
    pub journal: PathBuf,
    pub link_prefix: Option<PathBuf>,
    pub workers: Option<usize>,
    pub dry_run: bool,
    pub list: bool,
    pub null: bool,
    pub quiet: bool,
    pub progress_interval: u64,
    pub batch_files: usize,
    pub retry_rounds: u32,
    pub retry_delay: f64,
    /// Seconds one storage operation may block before the storage counts as not answering.
    pub op_timeout: f64,
    pub relocate_mapped: bool,
    /// `--hsm` as given (None: the journal's, else auto).
    pub hsm: Option<String>,
    pub hsm_timeout: f64,
    /// Relocate the files waiting in the journal without walking SOURCE (`evac stage`).
    pub skip_walk: bool,
    pub bwlimit: Option<crate::pace::throttle::Schedule>,
    pub files_per_sec: Option<f64>,
    pub windows: Vec<crate::pace::throttle::Window>,
    pub exit_outside_window: bool,
    /// The load governor's settings as given on the command line (defaults otherwise), and the
    /// control-table entries they make (which replace earlier `evac throttle` ones).
    pub governor: crate::pace::governor::Settings,
    pub governor_given: Vec<(&'static str, String)>,
    pub governor_log: Option<PathBuf>,
    /// The command line, for the START record.
    pub args_text: String,
    /// What the run has done so far (the terminal side draws it).
    pub stats: Arc<Stats>,
}

impl RunOpts {
    /// A run over the journal's waiting files only, no walk, quiet (for `evac stage` and
    /// `evac recover`, which make files waiting and relocate them at once).
    pub fn waiting_only(journal: PathBuf, workers: Option<usize>, what: &str) -> RunOpts {
        RunOpts {
            source: None,
            dest: None,
            journal,
            link_prefix: None,
            workers,
            dry_run: false,
            list: false,
            null: false,
            quiet: true,
            progress_interval: 10,
            batch_files: 512,
            retry_rounds: 1,
            retry_delay: 0.2,
            op_timeout: 600.0,
            relocate_mapped: false,
            hsm: None,
            hsm_timeout: 60.0,
            skip_walk: true,
            bwlimit: None,
            files_per_sec: None,
            windows: Vec::new(),
            exit_outside_window: false,
            governor: Default::default(),
            governor_given: Vec::new(),
            governor_log: None,
            args_text: what.into(),
            stats: Arc::default(),
        }
    }
}

pub use crate::util::exit::{EXIT_INTERRUPTED, EXIT_LEFT, EXIT_OK};

fn q(p: &Path) -> String {
    quoted(p.as_os_str().as_encoded_bytes())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd =
        std::env::current_dir().map_err(|e| Error::Setup(format!("current directory: {e}")))?;
    Ok(cwd.join(p))
}

fn canonical_dir(p: &Path, what: &str) -> Result<PathBuf> {
    let c = std::fs::canonicalize(p).map_err(|e| Error::Setup(format!("{what} {}: {e}", q(p))))?;
    if !c.is_dir() {
        return Err(Error::Setup(format!("{what} {}: not a directory", q(p))));
    }
    Ok(c)
}

/// The journal's directory, resolved, so "inside SOURCE" can be decided on real paths.
fn journal_dir(journal: &Path) -> Result<PathBuf> {
    let parent = journal.parent().unwrap_or(Path::new("/"));
    canonical_dir(parent, "journal directory")
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

fn new_journal_id() -> String {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = crate::util::time::now().to_bits() ^ u64::from(std::process::id());
        b = t.to_le_bytes();
    }
    journal::blake3_hex(&b)
}

fn stat_path(p: &Path) -> Result<(u64, u64)> {
    let st = rustix::fs::stat(p).map_err(|e| Error::Setup(format!("stat {}: {e}", q(p))))?;
    Ok((st.st_dev, st.st_ino))
}

/// Settle SOURCE, DEST and LINK_PREFIX from the arguments and/or the journal's plan.
fn settle_plan(o: &RunOpts, existing: Option<Plan>) -> Result<(Plan, bool)> {
    let given = match (&o.source, &o.dest) {
        (Some(s), Some(d)) => Some((s.clone(), d.clone())),
        (None, None) => None,
        _ => {
            return Err(Error::Setup(
                "give both SOURCE and DEST, or neither to resume from the journal".into(),
            ))
        }
    };
    if let Some(p) = existing {
        if let Some((s, d)) = given {
            let s = canonical_dir(&s, "SOURCE")?;
            let d = canonical_dir(&d, "DEST")?;
            if s != p.source || d != p.dest {
                return Err(Error::Setup(format!(
                    "journal {} belongs to SOURCE {} and DEST {}; refusing to resume it with SOURCE {} and DEST {}",
                    q(&o.journal),
                    q(&p.source),
                    q(&p.dest),
                    q(&s),
                    q(&d)
                )));
            }
        }
        if let Some(lp) = &o.link_prefix {
            if lp != &p.link_prefix {
                return Err(Error::Setup(format!(
                    "journal {} uses link prefix {}; refusing a different one ({})",
                    q(&o.journal),
                    q(&p.link_prefix),
                    q(lp)
                )));
            }
        }
        canonical_dir(&p.source, "SOURCE")?;
        canonical_dir(&p.dest, "DEST")?;
        return Ok((p, false));
    }
    let Some((s, d)) = given else {
        return Err(Error::Setup(format!(
            "journal {} has no plan yet: give SOURCE and DEST",
            q(&o.journal)
        )));
    };
    let s = canonical_dir(&s, "SOURCE")?;
    if !d.exists() {
        std::fs::create_dir(&d).map_err(|e| Error::Setup(format!("create DEST {}: {e}", q(&d))))?;
    }
    let d = canonical_dir(&d, "DEST")?;
    if s == d || s.starts_with(&d) {
        return Err(Error::Setup(format!(
            "SOURCE {} must not be DEST or lie inside it ({})",
            q(&s),
            q(&d)
        )));
    }
    let link_prefix = match &o.link_prefix {
        Some(lp) if lp.is_absolute() => lp.clone(),
        Some(lp) => {
            return Err(Error::Setup(format!(
                "--link-prefix {} must be an absolute path",
                q(lp)
            )))
        }
        None => d.clone(),
    };
    let (sdev, sino) = stat_path(&s)?;
    let (ddev, dino) = stat_path(&d)?;
    Ok((
        Plan {
            journal_id: new_journal_id(),
            source: s,
            dest: d,
            link_prefix,
            source_dev: sdev,
            source_ino: sino,
            dest_dev: ddev,
            dest_ino: dino,
        },
        true,
    ))
}

fn refuse_journal_in_source(journal: &Path, source: &Path) -> Result<()> {
    let jd = journal_dir(journal)?;
    if jd.starts_with(source) {
        return Err(Error::Setup(format!(
            "the journal {} lies inside SOURCE {}: put it elsewhere (evac replaces files in SOURCE)",
            q(journal),
            q(source)
        )));
    }
    Ok(())
}

pub fn run(mut o: RunOpts) -> Result<i32> {
    o.journal = absolute(&o.journal)?;
    if o.batch_files == 0 {
        return Err(Error::Setup("--batch-files must be at least 1".into()));
    }
    if o.dry_run {
        return dry_run(&o);
    }
    if o.source.is_some() != o.dest.is_some() {
        return Err(Error::Setup(
            "give both SOURCE and DEST, or neither to resume from the journal".into(),
        ));
    }
    if o.source.is_none() && !o.journal.exists() {
        return Err(Error::Setup(format!(
            "journal {} does not exist: give SOURCE and DEST to start a run",
            q(&o.journal)
        )));
    }
    // Check the journal's place before creating anything next to it.
    if let Some(s) = &o.source {
        let s = canonical_dir(s, "SOURCE")?;
        refuse_journal_in_source(&o.journal, &s)?;
    }
    let lock = JournalLock::acquire(&o.journal)?;
    let result = run_locked(o);
    drop(lock);
    result
}

/// A run by a caller that holds the journal's lock (`evac stage` relocates what it staged).
pub fn run_locked(o: RunOpts) -> Result<i32> {
    let j = Journal::open(&o.journal, true)?;
    j.check_integrity()?;
    let (plan, fresh) = settle_plan(&o, j.plan()?)?;
    refuse_journal_in_source(&o.journal, &plan.source)?;
    if fresh {
        let options = format!(
            "{{\"workers\":{},\"batch_files\":{},\"relocate_mapped\":{}}}",
            o.workers.unwrap_or(0),
            o.batch_files,
            o.relocate_mapped
        );
        j.create_plan(&plan, &options)?;
    }
    Runner::new(o, plan, j)?.go()
}

struct Runner {
    o: RunOpts,
    plan: Plan,
    j: Journal,
    ctx: Arc<Ctx>,
    run_id: i64,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    storage: storage::Storage,
    job_tx: Option<Sender<Job>>,
    res_rx: Receiver<(Vec<i64>, Outcome)>,
    res_tx: Sender<(Vec<i64>, Outcome)>,
    job_rx: Receiver<Job>,
    in_flight: usize,
    /// Jobs sent to workers this run.
    dispatched: u64,
    max_in_flight: usize,
    inflight_ids: HashSet<i64>,
    batch: Vec<Box<Copied>>,
    /// Swapped and recorded; originals removed after the next syncfs.
    unfinished: Vec<Box<Copied>>,
    batch_started: Instant,
    /// Outcomes not yet recorded: (ids, state, reason).
    outcomes: Vec<(Vec<i64>, &'static str, Option<String>)>,
    reserved_seen: Vec<(i64, Vec<u8>)>,
    /// Originals of relocations recovery completed: (path, temporary name, inode), removed
    /// once the journal has committed them relocated.
    held_originals: Vec<(Vec<u8>, Vec<u8>, u64)>,
    /// Copies left at DEST by undone swaps whose link a user moved: (ids, DEST inode).
    kept_copies: Vec<(Vec<i64>, u64)>,
    /// Copies of recorded relocations undone and removed from DEST: (ids, DEST inode).
    dropped_copies: Vec<(Vec<i64>, u64)>,
    walk_errors: u64,
    failures_printed: u64,
    rate: RateMeter,
    last_heartbeat: Instant,
    notes_logged: (bool, bool),
    prof: Prof,
}

/// Where the coordinator's time goes (printed at the end with EVAC_PROFILE=1).
#[derive(Default, Debug)]
struct Prof {
    batches: u64,
    observe: Duration,
    sync1: Duration,
    placed_tx: Duration,
    place: Duration,
    swap: Duration,
    reloc_tx: Duration,
    finish: Duration,
}

struct RateMeter {
    last: Instant,
    last_bytes: u64,
    rate: f64,
}

impl RateMeter {
    fn update(&mut self, bytes: u64) -> f64 {
        let dt = self.last.elapsed().as_secs_f64();
        if dt >= 1.0 {
            let inst = (bytes - self.last_bytes) as f64 / dt;
            self.rate = if self.rate == 0.0 {
                inst
            } else {
                0.7 * self.rate + 0.3 * inst
            };
            self.last = Instant::now();
            self.last_bytes = bytes;
        }
        self.rate
    }
}

impl Runner {
    fn new(o: RunOpts, plan: Plan, j: Journal) -> Result<Runner> {
        // --hsm as given is kept in the journal, so that a resume decides the same way.
        let hsm_text = match &o.hsm {
            Some(m) => {
                j.set_plan_option("hsm", m)?;
                m.clone()
            }
            None => j.plan_option("hsm")?.unwrap_or_else(|| "auto".into()),
        };
        let hsm_mode: crate::hsm::detect::Mode = hsm_text.parse().map_err(Error::Setup)?;
        let src_root = fsx::open_root(&plan.source)
            .ctx("open SOURCE", plan.source.as_os_str().as_encoded_bytes())?;
        let dst_root = fsx::open_root(&plan.dest)
            .ctx("open DEST", plan.dest.as_os_str().as_encoded_bytes())?;
        let src_dev = fsx::fstat(src_root.as_fd())
            .ctx("stat SOURCE", plan.source.as_os_str().as_encoded_bytes())?
            .st_dev;
        // Before any other thread exists: the signal mask is inherited.
        let (leases, stop) =
            signals::process().map_err(|e| Error::Setup(format!("set up signal handling: {e}")))?;
        let nofile = fsx::raise_nofile();
        let ctx = Arc::new(Ctx {
            src_root,
            dst_root,
            src_dev,
            jid: plan.journal_id.clone(),
            link_prefix: journal::path_bytes(&plan.link_prefix),
            leases,
            mapped: Arc::new(Mapped::default()),
            relocate_mapped: o.relocate_mapped,
            hsm: hsm_mode,
            limiter: Arc::new(crate::pace::throttle::Limiter::with_windows(
                o.bwlimit
                    .clone()
                    .unwrap_or_else(crate::pace::throttle::Schedule::unlimited),
                o.files_per_sec,
                o.windows.clone(),
            )),
            stop: stop.clone(),
            no_lease_seen: AtomicBool::new(false),
            no_exchange_seen: AtomicBool::new(false),
            recoveries: j
                .recoveries_requested()?
                .into_iter()
                .map(|r| (r.file_id, r))
                .collect(),
        });
        let run_id = j.start_run(std::process::id(), &o.args_text)?;
        let stats = o.stats.clone();
        let (job_tx, job_rx) = crossbeam_channel::unbounded();
        let (res_tx, res_rx) = crossbeam_channel::unbounded();
        let workers = o.workers.unwrap_or_else(default_workers).max(1);
        // Each copy waiting in a batch holds about 6 fds (file, copy, and both directories of
        // each name); keep well inside the limit.
        let mut o = o;
        o.batch_files = o
            .batch_files
            .min(((nofile.saturating_sub(256)) / 24).max(1) as usize);
        let max_in_flight = o.batch_files + 2 * workers;
        let storage = storage::Storage::new(o.op_timeout, &o.journal, run_id);
        Ok(Runner {
            o,
            plan,
            j,
            ctx,
            run_id,
            stats,
            stop,
            storage,
            job_tx: Some(job_tx),
            res_rx,
            res_tx,
            job_rx,
            in_flight: 0,
            dispatched: 0,
            max_in_flight,
            inflight_ids: HashSet::new(),
            batch: Vec::new(),
            unfinished: Vec::new(),
            batch_started: Instant::now(),
            outcomes: Vec::new(),
            reserved_seen: Vec::new(),
            held_originals: Vec::new(),
            kept_copies: Vec::new(),
            dropped_copies: Vec::new(),
            walk_errors: 0,
            failures_printed: 0,
            rate: RateMeter {
                last: Instant::now(),
                last_bytes: 0,
                rate: 0.0,
            },
            last_heartbeat: Instant::now(),
            notes_logged: (false, false),
            prof: Prof::default(),
        })
    }

    fn say(&self, line: String) {
        crate::util::notice::say(line);
    }

    fn log(&self, level: &str, msg: &str) -> Result<()> {
        self.j.log(Some(self.run_id), level, msg)?;
        self.say(format!("evac: {msg}"));
        Ok(())
    }

    fn go(mut self) -> Result<i32> {
        let started = Instant::now();
        let workers = self.o.workers.unwrap_or_else(default_workers).max(1);
        self.log(
            "info",
            &format!(
                "START run {} pid {}: SOURCE {} DEST {} link prefix {} workers {} journal {} args: {}",
                self.run_id,
                std::process::id(),
                q(&self.plan.source),
                q(&self.plan.dest),
                q(&self.plan.link_prefix),
                workers,
                q(&self.o.journal),
                self.o.args_text
            ),
        )?;
        let code = match self.body(workers) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.j.log(Some(self.run_id), "error", &e.to_string());
                let _ = self.j.finish_run(self.run_id, 1, "{}");
                return Err(e);
            }
        };
        let code = self.storage_exit_code(code);
        let counts = self.j.counts()?;
        let get = |s: &str| {
            counts
                .by_state
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        };
        let totals = format!(
            "{{\"relocated\":{},\"deferred\":{},\"failed\":{},\"skipped\":{},\"pending\":{},\"gone\":{},\"bytes_relocated_this_run\":{},\"files_relocated_this_run\":{},\"seconds\":{:.3}}}",
            get("relocated"),
            get("deferred"),
            get("failed"),
            get("skipped"),
            get("pending") + get("copying") + get("placed"),
            get("gone"),
            self.stats.bytes_done.load(Ordering::Relaxed),
            self.stats.files_done.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
        self.j.finish_run(self.run_id, code, &totals)?;
        let el = started.elapsed().as_secs_f64();
        let bytes = self.stats.bytes_done.load(Ordering::Relaxed);
        self.log(
            "info",
            &format!(
                "FINISH run {} exit {code}: relocated {} files ({}) this run in {el:.1}s ({}/s); journal totals: {} relocated, {} deferred, {} failed, {} skipped, {} pending",
                self.run_id,
                self.stats.files_done.load(Ordering::Relaxed),
                human_bytes(bytes as f64),
                human_bytes(bytes as f64 / el.max(0.001)),
                get("relocated"),
                get("deferred"),
                get("failed"),
                get("skipped"),
                get("pending") + get("copying") + get("placed"),
            ),
        )?;
        if code == EXIT_LEFT {
            self.say(format!(
                "evac: files are left; see `evac status --journal {}` (and --list deferred / --list failed)",
                quoted(self.o.journal.as_os_str().as_encoded_bytes())
            ));
        }
        if std::env::var_os("EVAC_PROFILE").is_some() {
            crate::util::notice::say(format!("evac profile: {:?}", self.prof));
        }
        Ok(code)
    }

    fn body(&mut self, workers: usize) -> Result<i32> {
        if self.o.exit_outside_window
            && !crate::pace::throttle::in_windows(
                &self.o.windows,
                crate::pace::throttle::local_minute(),
            )
        {
            self.say(format!(
                "evac: outside the run windows ({}); exit 4 (--exit-outside-window)",
                window_state(&self.o.windows)
            ));
            return Ok(EXIT_INTERRUPTED);
        }
        self.recover_in_flight()?;
        self.recover_abandoned()?;
        self.ctx.mapped.refresh(self.ctx.src_dev);
        let done = Arc::new(AtomicBool::new(false));
        self.ctx
            .mapped
            .spawn_refresher(self.ctx.src_dev, Duration::from_secs(2), done.clone());

        // Workers.
        self.start_workers(workers)?;
        self.start_control(done.clone(), workers)?;

        if self.o.skip_walk {
            return self.body_pending_only(done);
        }

        // Walker.
        let (wtx, wrx) = crossbeam_channel::bounded::<WalkMsg>(8192);
        let wopts = WalkOpts {
            root_dev: self.ctx.src_dev,
            prune: self.prune_list(),
            reserved_prefix: self.ctx.reserved_prefix(),
            hsm: self.ctx.hsm.clone(),
            hsm_timeout: Duration::from_secs_f64(self.o.hsm_timeout),
            source_abs: self.plan.source.clone(),
        };
        let root = fsx::resolve_dir(self.ctx.src_root.as_fd(), b"").ctx("open SOURCE", b".")?;
        let wstop = self.stop.clone();
        let walker = std::thread::Builder::new()
            .name("evac-walk".into())
            .spawn(move || walk::walk(&root, &wopts, &wtx, &wstop))
            .map_err(|e| Error::Setup(format!("start walker: {e}")))?;

        let complete = self.phase_walk(&wrx)?;
        let _ = walker.join();
        let resynced = complete && !self.stopping();
        if resynced {
            self.phase_resync()?;
            // Files that became pending behind the dispatch cursor (seen again by this walk).
            self.dispatch_waiting()?;
        }
        self.wind_down(&done)?;
        if complete && !self.stopping() {
            let gone = self.j.mark_unseen_gone(self.run_id)?;
            if gone > 0 {
                self.j.log(
                    Some(self.run_id),
                    "info",
                    &format!("{gone} waiting files are no longer in SOURCE"),
                )?;
            }
            self.adopt_unhashed()?;
            self.apply_dir_meta()?;
            if resynced && self.walk_errors == 0 {
                self.j.mark_resynced(self.run_id)?;
            }
        }
        if self.ctx.no_lease_seen.load(Ordering::Relaxed) {
            self.j.log(Some(self.run_id), "warn", "some files could not be leased (filesystem or privileges); writers were detected by scanning /proc instead")?;
        }
        if self.stopping() {
            return Ok(EXIT_INTERRUPTED);
        }
        let c = self.j.counts()?;
        let left: i64 = c
            .by_state
            .iter()
            .filter(|(s, _)| {
                matches!(
                    s.as_str(),
                    "deferred" | "failed" | "pending" | "copying" | "placed" | "staged_out"
                )
            })
            .map(|(_, n)| *n)
            .sum();
        if !complete || self.walk_errors > 0 || left > 0 {
            Ok(EXIT_LEFT)
        } else {
            Ok(EXIT_OK)
        }
    }

    /// The files waiting in the journal, without a walk (no resync, no judgement of SOURCE as a
    /// whole): what `evac stage` has just made resident.
    fn body_pending_only(&mut self, done: Arc<AtomicBool>) -> Result<i32> {
        self.dispatch_waiting()?;
        self.wind_down(&done)?;
        Ok(if self.stopping() {
            EXIT_INTERRUPTED
        } else {
            EXIT_OK
        })
    }

    /// Dispatch the journal's pending files and hard-link groups, then the retry rounds of the
    /// deferred ones.
    fn dispatch_waiting(&mut self) -> Result<()> {
        self.phase_pending()?;
        self.phase_hardlinks()?;
        for _ in 0..self.o.retry_rounds {
            if self.stopping() || !self.requeue_deferred()? {
                break;
            }
            self.phase_pending()?;
            self.phase_hardlinks()?;
        }
        Ok(())
    }

    /// Let the last copies finish and be committed, stop the workers and the helper threads.
    fn wind_down(&mut self, done: &AtomicBool) -> Result<()> {
        self.drain_all()?;
        self.job_tx = None;
        self.join_workers();
        done.store(true, Ordering::Relaxed);
        self.flush_outcomes()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Commands from another terminal (`evac pause`, `resume`, `throttle`), read from the
    /// journal's control table by a thread with its own connection, which also runs the load
    /// governor four times a second. The command line's caps win over an earlier `evac
    /// throttle`; a pause lasts until resumed.
    fn start_control(&mut self, done: Arc<AtomicBool>, workers: usize) -> Result<()> {
        if self.o.bwlimit.is_some() {
            self.j.set_control("bwlimit", "")?;
        }
        if self.o.files_per_sec.is_some() {
            self.j.set_control("files_per_sec", "")?;
        }
        for (k, _) in &self.o.governor_given {
            self.j.set_control(k, "")?;
        }
        let settings = crate::pace::governor::Settings {
            log: self.o.governor_log.clone(),
            ..self.o.governor.clone()
        };
        let gov = crate::pace::governor::Governor::new(
            &settings,
            workers,
            &self.plan.source,
            &self.plan.dest,
        );
        let said = format!(
            "governor {}: {}; targets: {}",
            if settings.enabled { "on" } else { "off" },
            gov.sampler.describe(),
            settings.describe_targets()
        );
        self.log("info", &said)?;
        // The governor has a thread of its own: the control thread waits on the journal, which
        // is slowest exactly when the disks are under pressure.
        let state = Arc::new(std::sync::Mutex::new((String::new(), String::new())));
        let (gov_tx, gov_rx) =
            crossbeam_channel::unbounded::<std::collections::BTreeMap<String, String>>();
        {
            let (limiter, stats, state) =
                (self.ctx.limiter.clone(), self.stats.clone(), state.clone());
            let (done, windows) = (done.clone(), self.o.windows.clone());
            let mut gov = gov;
            let mut controls = self.j.controls()?;
            let rx = gov_rx;
            std::thread::Builder::new()
                .name("evac-governor".into())
                .spawn(move || {
                    let mut tick = 0u64;
                    apply_controls(&controls, &Default::default(), &limiter, &mut gov);
                    while !done.load(Ordering::Relaxed) {
                        if let Some(c) = rx.try_iter().last() {
                            apply_controls(&c, &controls, &limiter, &mut gov);
                            controls = c;
                        }
                        let d = gov.tick(
                            limiter.bytes_read.load(Ordering::Relaxed),
                            limiter.files_started.load(Ordering::Relaxed),
                            limiter.active(),
                        );
                        limiter.govern(d.allowed, d.duty);
                        limiter.set_streaming(gov.settings.enabled);
                        if tick % 4 == 0 {
                            let w = (!windows.is_empty()).then(|| window_state(&windows));
                            let st = governor_state(&gov, &d, limiter.active(), w.as_deref());
                            if let Ok(mut g) = stats.governor.lock() {
                                g.clone_from(&st.short);
                            }
                            if let Ok(mut s) = state.lock() {
                                *s = (st.line, st.json);
                            }
                        }
                        tick += 1;
                        std::thread::sleep(Duration::from_millis(250));
                    }
                })
                .map_err(|e| Error::Setup(format!("start governor thread: {e}")))?;
        }
        let path = self.o.journal.clone();
        let jid = self.plan.journal_id.clone();
        let windows = self.o.windows.clone();
        let exit_outside = self.o.exit_outside_window;
        let stop = self.stop.clone();
        std::thread::Builder::new()
            .name("evac-control".into())
            .spawn(move || {
                let Ok(j) = Journal::open(&path, false) else {
                    return;
                };
                let mut seen: std::collections::BTreeMap<String, String> = Default::default();
                let mut window_said = String::new();
                let mut state_said = (String::new(), String::new());
                while !done.load(Ordering::Relaxed) {
                    if let Ok(c) = j.controls() {
                        // What the run itself notes there is not a command.
                        let c: std::collections::BTreeMap<_, _> =
                            c.into_iter().filter(|(k, _)| k != "window").collect();
                        if c != seen {
                            if c.get("paused") != seen.get("paused") {
                                let p = c.get("paused").is_some_and(|v| v == "1");
                                crate::sys::signals::set_paused(p);
                                eprintln!(
                                    "evac: {}",
                                    if p {
                                        "paused (evac pause)"
                                    } else {
                                        "resumed (evac resume)"
                                    }
                                );
                            }
                            let _ = gov_tx.send(c.clone());
                            seen = c;
                        }
                    }
                    if !windows.is_empty() {
                        let said = window_state(&windows);
                        if said != window_said {
                            let _ = j.set_control("window", &said);
                            crate::util::notice::say(format!("evac: run window: {said}"));
                            window_said = said;
                        }
                        let m = crate::pace::throttle::local_minute();
                        if exit_outside && !crate::pace::throttle::in_windows(&windows, m) {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    let now = state.lock().map(|s| s.clone()).unwrap_or_default();
                    if now != state_said {
                        crate::pace::governor::write_state(&jid, &now.0, &now.1);
                        state_said = now;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                crate::pace::governor::clear_state(&jid);
                if !windows.is_empty() {
                    let _ = j.set_control("window", "");
                }
            })
            .map_err(|e| Error::Setup(format!("start control thread: {e}")))?;
        Ok(())
    }

    fn prune_list(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(self.plan.dest_dev, self.plan.dest_ino)];
        if let Ok(st) = fsx::fstat(self.ctx.dst_root.as_fd()) {
            v.push((st.st_dev, st.st_ino));
        }
        if let Ok(jd) = journal_dir(&self.o.journal) {
            if let Ok(id) = stat_path(&jd) {
                v.push(id);
            }
        }
        v
    }

    /// Files a previous run left between dispatch and relocation.
    fn recover_in_flight(&mut self) -> Result<()> {
        let mut n = 0;
        for state in ["copying", "placed"] {
            loop {
                let recs = self.j.files_in_state(state, 0, 1000)?;
                if recs.is_empty() {
                    break;
                }
                self.j.begin()?;
                for r in &recs {
                    self.recover_one(r.id, &r.path)?;
                    n += 1;
                }
                self.commit_recovered()?;
            }
        }
        if n > 0 {
            self.j.log(
                Some(self.run_id),
                "info",
                &format!("recovered {n} files left in flight by an earlier run"),
            )?;
        }
        Ok(())
    }

    /// A placement refused because DEST already has a file at the path: if that file is an
    /// extra name of a copy the journal records under another path (a name a crash kept from
    /// being released after its link was renamed), remove it and say so.
    fn release_stale_name(&mut self, c: &Copied) -> Result<bool> {
        let mut any = false;
        for n in &c.names {
            let Some(ino) = protocol::extra_name_at_dest(&self.ctx, &n.rec.path) else {
                continue;
            };
            if !self.j.copy_known_elsewhere(ino, &n.rec.path)? {
                continue;
            }
            // Not while the path's last link, moved out of the walk's view, still names it.
            let unseen = match self.j.path_row(&n.rec.path)? {
                Some(r) => resync::unseen_link_names(&self.ctx, &self.j, self.run_id, &r)?,
                None => false,
            };
            if unseen {
                continue;
            }
            if protocol::remove_dest_name(&self.ctx, &n.rec.path, ino).is_ok() {
                self.j.log(
                    Some(self.run_id),
                    "info",
                    &format!(
                        "removed {} at DEST: an old name of a copy now recorded under another path",
                        quoted(&n.rec.path)
                    ),
                )?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Commit what recovery decided. Relocations it completed are made durable on both sides
    /// before the journal says so, and their originals removed only after that.
    fn commit_recovered(&mut self) -> Result<()> {
        let held = std::mem::take(&mut self.held_originals);
        if !held.is_empty() {
            steps::at(Step::RecoverSync, b"");
            fsx::syncfs(self.ctx.dst_root.as_fd()).ctx("make DEST durable (syncfs)", b".")?;
            fsx::syncfs(self.ctx.src_root.as_fd()).ctx("make SOURCE durable (syncfs)", b".")?;
        }
        self.j.commit()?;
        for (path, name, ino) in held {
            if let Err(e) = protocol::drop_held(&self.ctx, &path, &name, ino) {
                // The next walk finds it under its temporary name and recovery tries again.
                self.say(format!("evac: recover: {e}"));
            }
        }
        Ok(())
    }

    /// Mark every directory above `path` as one this journal put something under at DEST
    /// (`seen` skips those already marked in this batch).
    fn touch_ancestors<'p>(&self, path: &'p [u8], seen: &mut HashSet<&'p [u8]>) -> Result<()> {
        let mut p = fsx::split_parent(path).0;
        while !p.is_empty() && seen.insert(p) {
            self.j.touch_dir(p)?;
            p = fsx::split_parent(p).0;
        }
        Ok(())
    }

    fn recover_one(&mut self, id: i64, path: &[u8]) -> Result<()> {
        match protocol::recover(&self.ctx, &self.j, id, path) {
            Ok(RecoverResult::Pending) => self.j.set_state(id, "pending", None),
            Ok(RecoverResult::KeepCopy(ino)) => {
                self.j.set_state(id, "pending", None)?;
                self.j.keep_copy(id, ino)
            }
            Ok(RecoverResult::Relocated) => {
                self.touch_ancestors(path, &mut HashSet::new())?;
                self.j.mark_recovered_relocated(id)
            }
            Ok(RecoverResult::Completed { held, ino }) => {
                self.touch_ancestors(path, &mut HashSet::new())?;
                self.held_originals.push((path.to_vec(), held, ino));
                self.j.mark_recovered_relocated(id)
            }
            Ok(RecoverResult::Unknown) => Ok(()),
            Err(e) => {
                self.say(format!("evac: recover: {e}"));
                self.j.set_state(id, "failed", Some(&e.to_string()))
            }
        }
    }

    /// Send jobs after their `copying` state is committed (so recovery knows about them).
    fn dispatch(&mut self, jobs: Vec<Job>) -> Result<()> {
        let jobs = self.hold_back(jobs);
        if jobs.is_empty() {
            return Ok(());
        }
        let own_tx = !self.j.in_transaction();
        if own_tx {
            self.j.begin()?;
        }
        for job in &jobs {
            for r in &job.names {
                self.j.mark_copying(r.id)?;
            }
        }
        self.j.commit()?;
        let Some(tx) = &self.job_tx else {
            return Ok(());
        };
        for job in jobs {
            for r in &job.names {
                self.inflight_ids.insert(r.id);
            }
            self.in_flight += 1;
            self.dispatched += 1;
            let _ = tx.send(job);
        }
        Ok(())
    }

    /// The walk is recorded as fast as it comes (so `status` knows the whole tree early), while
    /// pending files are sent to the workers from the journal in id order, as fast as they copy.
    fn phase_walk(&mut self, wrx: &Receiver<WalkMsg>) -> Result<bool> {
        let link_prefix = self.ctx.link_prefix.clone();
        let mut walking = true;
        let mut complete = false;
        let mut cursor = 0i64;
        loop {
            let mut progressed = false;
            if walking {
                let mut msgs = Vec::new();
                while msgs.len() < 2048 {
                    // (With step points armed, the walk is recorded whole or in full pages, so
                    // that its journal commits do not depend on the walker's pace.)
                    let m = if steps::enabled() {
                        wrx.recv().ok()
                    } else {
                        wrx.try_recv().ok()
                    };
                    match m {
                        Some(m) => {
                            let last = matches!(m, WalkMsg::Done { .. });
                            msgs.push(m);
                            if last {
                                break;
                            }
                        }
                        None => break,
                    }
                }
                if !msgs.is_empty() {
                    progressed = true;
                    let t0 = Instant::now();
                    self.j.begin()?;
                    for m in msgs {
                        match m {
                            WalkMsg::Entry(s) => {
                                if s.kind == Kind::Reserved {
                                    let name = fsx::split_parent(&s.path).1.to_vec();
                                    if let Some((id, _)) = self.ctx.parse_tmp(&name) {
                                        self.reserved_seen.push((id, s.path.clone()));
                                        continue;
                                    }
                                }
                                if s.kind == Kind::File {
                                    Stats::add(&self.stats.files_seen, 1);
                                    Stats::add(&self.stats.bytes_seen, s.size);
                                }
                                let target = if s.kind == Kind::Symlink {
                                    self.ctx.link_target(&s.path)
                                } else {
                                    link_prefix.clone()
                                };
                                // What to copy is read back from the journal below.
                                let _: Next = self.j.observe(&s, self.run_id, &target)?;
                            }
                            WalkMsg::Error { path, op, err } => {
                                self.walk_errors += 1;
                                let msg = format!("{op} {}: {err}", quoted(&path));
                                self.j.log(Some(self.run_id), "error", &msg)?;
                                self.say(format!("evac: {msg}"));
                            }
                            WalkMsg::Done { complete: c } => {
                                walking = false;
                                complete = c;
                                self.stats.walk_done.store(true, Ordering::Relaxed);
                                // Tests read this line to show copying starts before the walk
                                // ends.
                                self.j.log(
                                    Some(self.run_id),
                                    "info",
                                    &format!(
                                        "inventory {}: {} regular files seen, {} already sent to copy workers, {} relocated so far",
                                        if c { "complete" } else { "incomplete" },
                                        self.stats.files_seen.load(Ordering::Relaxed),
                                        self.dispatched,
                                        self.stats.files_done.load(Ordering::Relaxed)
                                    ),
                                )?;
                            }
                        }
                    }
                    self.j.commit()?;
                    self.prof.observe += t0.elapsed();
                    self.handle_reserved()?;
                }
            }
            let mut drained = true;
            // (With step points armed, copying waits for the walk: one schedule to replay.)
            if walking && steps::enabled() {
                drained = false;
            } else if self.in_flight < self.max_in_flight && !self.stopping() {
                let want = (self.max_in_flight - self.in_flight).min(512) as i64;
                let recs = self.j.files_in_state("pending", cursor, want)?;
                if let Some(l) = recs.last() {
                    cursor = l.id;
                    drained = false;
                    progressed = true;
                }
                // A new file where a link was waits for the walk's end: the old copy at its DEST
                // path may belong to a link renamed elsewhere (namespace resync).
                let jobs = recs
                    .into_iter()
                    .filter(|r| r.nlink <= 1 && r.linked_ino.is_none())
                    .map(|r| Job { names: vec![r] })
                    .collect();
                self.dispatch(jobs)?;
            } else if !self.stopping() {
                drained = false;
            }
            if self.stopping() && walking {
                // The walker stops on its own; keep draining so it can finish sending.
                while let Ok(m) = wrx.try_recv() {
                    if let WalkMsg::Done { .. } = m {
                        walking = false;
                    }
                }
            }
            if !walking && drained && self.in_flight == 0 && self.batch.is_empty() {
                break;
            }
            progressed |= self.pump(!progressed)?;
            if !progressed && walking {
                // Nothing to do: wait for the walker or a worker.
                crossbeam_channel::select! {
                    recv(self.res_rx) -> r => { if let Ok(r) = r { self.take(r); } }
                    default(Duration::from_millis(5)) => {}
                }
            }
        }
        Ok(complete)
    }

    /// Temporary names the walk came across: finish or undo what a crash left there.
    fn handle_reserved(&mut self) -> Result<()> {
        let items: Vec<_> = std::mem::take(&mut self.reserved_seen);
        for (id, path) in items {
            if self.inflight_ids.contains(&id) {
                continue;
            }
            let Some(rec_path) = self.j.file_state(id)?.and(self.path_of(id)?) else {
                continue;
            };
            // The temporary must sit in the directory of the file it belongs to.
            if fsx::split_parent(&rec_path).0 != fsx::split_parent(&path).0 {
                continue;
            }
            self.j.begin()?;
            self.recover_one(id, &rec_path)?;
            self.commit_recovered()?;
        }
        Ok(())
    }

    fn path_of(&self, id: i64) -> Result<Option<Vec<u8>>> {
        self.j.files_in_state_any(id)
    }

    fn take(&mut self, (ids, out): (Vec<i64>, Outcome)) {
        self.in_flight -= 1;
        match out {
            Outcome::Copied(c) => {
                if self.batch.is_empty() {
                    self.batch_started = Instant::now();
                }
                self.batch.push(c);
            }
            Outcome::Deferred(_, why) => {
                Stats::add(&self.stats.deferred, ids.len() as u64);
                self.forget(&ids);
                self.outcomes.push((ids, "deferred", Some(why)));
            }
            Outcome::Failed(job, why) => {
                Stats::add(&self.stats.failed, ids.len() as u64);
                self.report_failure(&job.names[0].path, &why);
                self.forget(&ids);
                self.outcomes.push((ids, "failed", Some(why)));
            }
            Outcome::StagedOut(_, why) => {
                self.forget(&ids);
                self.outcomes.push((ids, "staged_out", Some(why)));
            }
            Outcome::Gone(_) => {
                self.forget(&ids);
                self.outcomes.push((
                    ids,
                    "gone",
                    Some("vanished from SOURCE before its copy".into()),
                ));
            }
            Outcome::Aborted(_) => {
                self.forget(&ids);
                self.outcomes.push((ids, "pending", None));
            }
        }
    }

    fn forget(&mut self, ids: &[i64]) {
        for id in ids {
            self.inflight_ids.remove(id);
        }
    }

    fn report_failure(&mut self, path: &[u8], why: &str) {
        self.failures_printed += 1;
        if self.failures_printed <= 100 {
            self.say(format!("evac: {}: {why}", quoted(path)));
        } else if self.failures_printed == 101 {
            self.say("evac: more failures; see `evac status --list failed`".into());
        }
    }

    /// Take finished copies; commit a batch when it is full, old, or nothing else is coming.
    fn pump(&mut self, block: bool) -> Result<bool> {
        self.watch()?;
        let mut progressed = false;
        if block && self.in_flight > 0 && self.batch.len() < self.o.batch_files {
            if let Ok(r) = self.res_rx.recv_timeout(Duration::from_millis(20)) {
                self.take(r);
                progressed = true;
            }
        }
        while let Ok(r) = self.res_rx.try_recv() {
            self.take(r);
            progressed = true;
        }
        let full = self.batch.len() >= self.o.batch_files;
        // With step points armed, a test replays one schedule: batches end only when full or
        // when every copy dispatched is back, never by the clock.
        let timed = !steps::enabled();
        let idle = self.in_flight == 0
            || (timed && self.in_flight < self.max_in_flight && self.job_rx.is_empty());
        let old = timed && self.batch_started.elapsed() > Duration::from_secs(2);
        if !self.batch.is_empty() && (full || idle || old || self.stopping()) {
            self.commit_batch()?;
            progressed = true;
        } else if self.outcomes.len() >= 256 || (!self.outcomes.is_empty() && self.in_flight == 0) {
            self.flush_outcomes()?;
            progressed = true;
        }
        Ok(progressed)
    }

    fn record_outcomes(&mut self) -> Result<()> {
        for (ids, ino) in std::mem::take(&mut self.kept_copies) {
            for id in ids {
                self.j.keep_copy(id, ino)?;
            }
        }
        for (ids, ino) in std::mem::take(&mut self.dropped_copies) {
            for id in ids {
                self.j.drop_copy(id, ino)?;
            }
        }
        for (ids, state, why) in std::mem::take(&mut self.outcomes) {
            for id in ids {
                self.j.set_state(id, state, why.as_deref())?;
                if state == "deferred" || state == "failed" {
                    self.j
                        .event(id, Some(self.run_id), state, why.as_deref().unwrap_or(""))?;
                }
            }
        }
        Ok(())
    }

    fn flush_outcomes(&mut self) -> Result<()> {
        if self.outcomes.is_empty() {
            return Ok(());
        }
        self.j.begin()?;
        self.record_outcomes()?;
        self.j.commit()
    }

    fn heartbeat(&mut self) -> Result<()> {
        let bytes = self.stats.bytes_done.load(Ordering::Relaxed);
        let rate = self.rate.update(bytes);
        self.j.heartbeat(
            self.run_id,
            self.stats.files_done.load(Ordering::Relaxed),
            bytes,
            rate,
            "none",
        )?;
        self.last_heartbeat = Instant::now();
        Ok(())
    }

    /// A copy that will not be relocated this time: remove what it left at DEST, count it, and
    /// queue its state (with the reason) for the next journal commit.
    fn give_up(&mut self, c: &Copied, state: &'static str, why: String) {
        protocol::discard(&self.ctx, c, false);
        let ids: Vec<i64> = c.names.iter().map(|n| n.rec.id).collect();
        let put_back = c.put_back();
        if put_back.iter().any(protocol::PutBack::keeps_copy) {
            // The copy stays at DEST as this path's linked copy: resync gives it to a link that
            // names it, or to the trash once walks show no link names it.
            self.kept_copies.push((ids.clone(), c.dst_st.st_ino));
        }
        let why = if put_back.is_empty() {
            why
        } else {
            protocol::put_back_reason(&why, c)
        };
        match state {
            "failed" => {
                Stats::add(&self.stats.failed, ids.len() as u64);
                self.report_failure(&c.names[0].rec.path, &why);
            }
            "deferred" => Stats::add(&self.stats.deferred, ids.len() as u64),
            _ => {}
        }
        self.forget(&ids);
        self.outcomes.push((ids, state, Some(why)));
    }

    /// A recorded relocation whose originals went back: the journal must stop naming the copy
    /// that `give_up` removes (unless a link may still name it), or the file would wait as if a
    /// link still needed it.
    fn give_up_recorded(&mut self, c: &Copied, why: String) {
        if !c.put_back().iter().any(protocol::PutBack::keeps_copy) {
            let ids = c.names.iter().map(|n| n.rec.id).collect();
            self.dropped_copies.push((ids, c.dst_st.st_ino));
        }
        self.give_up(c, "deferred", why);
    }

    /// DEST could not be made durable: put the unfinished batch's originals back.
    fn unswap_unfinished(&mut self, why: &str) {
        for c in std::mem::take(&mut self.unfinished) {
            protocol::unswap(&c, why);
            self.give_up_recorded(&c, why.to_string());
        }
    }

    /// Remove the originals of swapped files whose DEST names a syncfs has since made durable.
    fn finish_unfinished(&mut self) {
        let items = std::mem::take(&mut self.unfinished);
        let results = each_in_parallel(items, protocol::finish);
        for (c, r) in results {
            let ids: Vec<i64> = c.names.iter().map(|n| n.rec.id).collect();
            match r {
                Ok(()) => {
                    Stats::add(&self.stats.files_done, ids.len() as u64);
                    Stats::add(&self.stats.bytes_done, c.bytes);
                }
                Err(why) => self.give_up_recorded(&c, why),
            }
            self.forget(&ids);
        }
    }

    /// Durability, placement and swap for a batch of copies (DESIGN.md per-file protocol 4–6).
    /// One syncfs per batch: it makes this batch's data durable and, with it, the previous
    /// batch's DEST names, so the previous batch's originals are removed right after it.
    fn commit_batch(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let ctx = self.ctx.clone();
        self.prof.batches += 1;
        let mut t = Instant::now();
        // 1. Data and temporary names of this batch, DEST names of the last one, on disk.
        if let Err(e) = self.sync_dest()? {
            let why = format!("make DEST durable (syncfs): {e}");
            self.say(format!("evac: {why}"));
            self.unswap_unfinished(&why);
            for c in batch {
                self.give_up(&c, "failed", why.clone());
            }
            return self.flush_outcomes();
        }
        self.prof.sync1 += t.elapsed();
        t = Instant::now();
        self.finish_unfinished();
        self.prof.finish += t.elapsed();
        t = Instant::now();
        // 2. Each name's link beside its original, then each copy's DEST inode and link
        // recorded before its final name exists, so that recovery knows both.
        let mut batch = batch;
        let made: Vec<_> = batch
            .par_iter_mut()
            .map(|c| protocol::make_links(&ctx, c))
            .collect();
        let mut linked = Vec::with_capacity(batch.len());
        for (c, r) in batch.into_iter().zip(made) {
            match r {
                Ok(()) => linked.push(c),
                Err(why) => self.give_up(&c, "failed", why),
            }
        }
        let batch = linked;
        self.j.begin()?;
        self.record_outcomes()?;
        for c in &batch {
            for n in &c.names {
                self.j.mark_placed(
                    n.rec.id,
                    &c.hash,
                    c.dst_st.st_ino,
                    &c.st,
                    (n.link_ino, n.link_handle.as_deref()),
                )?;
            }
        }
        self.j.commit()?;
        self.prof.placed_tx += t.elapsed();
        t = Instant::now();
        // 3. Final names at DEST.
        let placed = each_in_parallel(batch, |c| protocol::place(&ctx, c));
        let mut ok = Vec::with_capacity(placed.len());
        for (c, r) in placed {
            let r = match r {
                Err(why) if why == protocol::CONFLICT && self.release_stale_name(&c)? => {
                    protocol::place(&ctx, &c)
                }
                r => r,
            };
            match r {
                Ok(()) => ok.push(c),
                // place() already removed what it had put at DEST.
                Err(why) => self.give_up_placing(&c, why),
            }
        }
        self.prof.place += t.elapsed();
        t = Instant::now();
        // 4. Swap. Without leases, one /proc scan for the whole batch finds writers.
        let writers = if ok.iter().any(|c| !c.src.leased) {
            if !self.notes_logged.0 {
                self.notes_logged.0 = true;
                self.j.log(Some(self.run_id), "warn", "leases unavailable for some files: scanning /proc for writers before each batch's swap")?;
            }
            Some(busy::open_for_writing(ctx.src_dev))
        } else {
            None
        };
        let swaps: Vec<Swap> = ok
            .into_par_iter()
            .map(|c| protocol::swap(&ctx, c, writers.as_ref()))
            .collect();
        let mut swapped = Vec::with_capacity(swaps.len());
        for s in swaps {
            match s {
                Swap::Swapped(c) => swapped.push(c),
                Swap::Deferred(c, why) => self.give_up(&c, "deferred", why),
                Swap::Failed(c, why) => self.give_up(&c, "failed", why),
            }
        }
        if !swapped.is_empty() {
            if let Some(d) = pause_after_swap() {
                std::thread::sleep(d);
            }
        }
        if ctx.no_exchange_seen.load(Ordering::Relaxed) && !self.notes_logged.1 {
            self.notes_logged.1 = true;
            self.j.log(Some(self.run_id), "warn", "RENAME_EXCHANGE unsupported on SOURCE: swapping by rename with the original kept in an attic until checked")?;
        }
        // The swaps (and, on one filesystem, the DEST names) on disk before the journal says
        // relocated: its records are file data that can reach the disk before the filesystem
        // commits these renames (even within the commit's own fsync), or live on another disk.
        if !swapped.is_empty() {
            steps::at(Step::SyncSource, b"");
            if let Err(e) = fsx::syncfs(ctx.src_root.as_fd()) {
                self.unfinished = std::mem::take(&mut swapped);
                self.unswap_unfinished(&format!("make the swaps durable (syncfs SOURCE): {e}"));
            }
        }
        self.prof.swap += t.elapsed();
        t = Instant::now();
        // 5. Record the relocations; the originals go after the next syncfs. A swap a lease
        // break has put back since is not recorded.
        let (swapped, undone): (Vec<_>, Vec<_>) =
            swapped.into_iter().partition(|c| c.put_back().is_empty());
        for c in undone {
            let why = c
                .swap
                .as_ref()
                .and_then(|s| s.lock().why.clone())
                .unwrap_or_default();
            self.give_up(&c, "deferred", why);
        }
        self.j.begin()?;
        self.record_outcomes()?;
        for c in &swapped {
            for n in &c.names {
                self.j.mark_relocated(
                    n.rec.id,
                    self.run_id,
                    &c.hash,
                    c.dst_st.st_ino,
                    (n.link_ino, n.link_handle.as_deref()),
                    &c.st,
                )?;
            }
        }
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        for c in &swapped {
            for n in &c.names {
                self.touch_ancestors(&n.rec.path, &mut dirs)?;
            }
        }
        self.heartbeat()?;
        self.j.commit()?;
        self.prof.reloc_tx += t.elapsed();
        self.unfinished = swapped;
        Ok(())
    }

    /// Make the last batch's DEST names durable and remove its originals.
    fn settle_unfinished(&mut self) -> Result<()> {
        if self.unfinished.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.sync_dest()? {
            self.unswap_unfinished(&format!("make DEST durable (syncfs): {e}"));
        } else {
            self.finish_unfinished();
        }
        self.flush_outcomes()
    }

    /// Wait until nothing is in flight and every copy is committed.
    fn drain_all(&mut self) -> Result<()> {
        while self.in_flight > 0 || !self.batch.is_empty() {
            self.pump(true)?;
        }
        self.settle_unfinished()
    }

    /// Dispatch jobs produced by `next` (pages of journal rows), keeping the pipeline full.
    fn phase_pending(&mut self) -> Result<()> {
        let mut after = 0;
        loop {
            if self.stopping() {
                break;
            }
            while self.in_flight >= self.max_in_flight {
                self.pump(true)?;
            }
            let recs = self.j.files_in_state("pending", after, 256)?;
            let Some(last) = recs.last() else { break };
            after = last.id;
            // A new file where a link was waits while the old copy is still at its DEST path
            // (resync moves it to the trash once no walk has seen a link naming it).
            let jobs = recs
                .into_iter()
                .filter(|r| r.nlink <= 1 && r.linked_ino.is_none())
                .map(|r| Job { names: vec![r] })
                .collect();
            self.dispatch(jobs)?;
            self.pump(false)?;
        }
        self.drain_all()
    }

    /// Hard-linked files, once the walk has found all their names: one job per inode. Pages end
    /// on an inode boundary (a partial last group is fetched again with the next page).
    fn phase_hardlinks(&mut self) -> Result<()> {
        let mut after = (i64::MIN, i64::MIN);
        let mut limit = 1024i64;
        loop {
            if self.stopping() {
                break;
            }
            while self.in_flight >= self.max_in_flight {
                self.pump(true)?;
            }
            let mut recs = self.j.hardlink_pending(after, limit)?;
            let Some(last) = recs.last() else { break };
            let last_key = (last.dev, last.ino);
            let full_page = recs.len() as i64 == limit;
            if full_page {
                let split = recs
                    .iter()
                    .position(|r| (r.dev, r.ino) == last_key)
                    .unwrap_or(0);
                if split == 0 {
                    // One inode has more names than a page holds.
                    limit *= 2;
                    continue;
                }
                recs.truncate(split);
            }
            if let Some(l) = recs.last() {
                after = (l.dev as i64, l.ino as i64);
            }
            let mut jobs = Vec::new();
            let mut group: Vec<FileRec> = Vec::new();
            self.j.begin()?;
            for r in recs {
                if group
                    .first()
                    .is_some_and(|g| (g.dev, g.ino) != (r.dev, r.ino))
                {
                    self.hardlink_group(std::mem::take(&mut group), &mut jobs)?;
                }
                group.push(r);
            }
            if !group.is_empty() {
                self.hardlink_group(group, &mut jobs)?;
            }
            self.dispatch(jobs)?;
            if self.j.in_transaction() {
                self.j.commit()?;
            }
            if !full_page {
                break;
            }
            self.pump(false)?;
        }
        self.drain_all()
    }

    fn hardlink_group(&mut self, group: Vec<FileRec>, jobs: &mut Vec<Job>) -> Result<()> {
        if group.iter().any(|r| r.linked_ino.is_some()) {
            // A name's old copy still stands at DEST (see phase_pending): the group waits whole.
            return Ok(());
        }
        let nlink = group.iter().map(|r| r.nlink).max().unwrap_or(1);
        if (group.len() as u64) < nlink {
            let why = format!(
                "hard-linked: {} of its {} names are outside SOURCE; relocating would split the file",
                nlink - group.len() as u64,
                nlink
            );
            for r in &group {
                self.j.set_state(r.id, "skipped", Some(&why))?;
            }
            return Ok(());
        }
        jobs.push(Job { names: group });
        Ok(())
    }

    /// Make DEST's namespace follow what users renamed, deleted and replaced in SOURCE.
    fn phase_resync(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let mut notes = Vec::new();
        let st = resync::resync(&self.ctx, &self.j, self.run_id, &mut |m| notes.push(m))?;
        for m in notes {
            self.say(m);
        }
        if st.renamed + st.trashed + st.dirs_removed + st.dirs_kept + st.problems > 0 {
            self.j.log(
                Some(self.run_id),
                "info",
                &format!(
                    "namespace resync: {} renamed links took their copies along ({} from the trash), {} copies without a link moved to DEST/.evac-trash, {} DEST directories removed, {} kept (not empty), {} problems, in {:.1}s",
                    st.renamed,
                    st.restored,
                    st.trashed,
                    st.dirs_removed,
                    st.dirs_kept,
                    st.problems,
                    t0.elapsed().as_secs_f64()
                ),
            )?;
        }
        Ok(())
    }

    fn requeue_deferred(&mut self) -> Result<bool> {
        if !self.retry_worthwhile() {
            return Ok(false);
        }
        let n = self.j.requeue_deferred()?;
        if n == 0 {
            return Ok(false);
        }
        self.j.log(
            Some(self.run_id),
            "info",
            &format!("retrying {n} deferred files"),
        )?;
        let until = Instant::now() + Duration::from_secs_f64(self.o.retry_delay.max(0.0));
        while Instant::now() < until && !self.stopping() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stats.deferred.store(0, Ordering::Relaxed);
        Ok(true)
    }

    /// Links found already in place with no hash on record: hash their copies (I5).
    fn adopt_unhashed(&mut self) -> Result<()> {
        let mut after = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let rows = self.j.unhashed_relocated(after, 256)?;
            let Some(l) = rows.last() else { break };
            after = l.0;
            self.j.begin()?;
            for (id, path) in rows {
                let (pd, name) = fsx::split_parent(&path);
                let fd = fsx::resolve_dir(self.ctx.dst_root.as_fd(), pd)
                    .and_then(|d| fsx::open_read(d.as_fd(), name));
                let Ok(fd) = fd else { continue };
                let Ok(st) = fsx::fstat(fd.as_fd()) else {
                    continue;
                };
                if fsx::file_type(&st) != rustix::fs::FileType::RegularFile {
                    continue;
                }
                if let Ok((h, _)) = fsx::hash_fd(fd.as_fd(), &mut buf) {
                    self.j.adopt_link(id, h.as_bytes(), st.st_ino, &st)?;
                }
            }
            self.j.commit()?;
        }
        Ok(())
    }

    /// Directories at DEST get their source's owner, xattrs, mode and times, deepest first,
    /// after their contents (creating them, so empty directories are mirrored too).
    fn apply_dir_meta(&mut self) -> Result<()> {
        let mut after = None;
        // Directories this pass created (with their ancestors): ours to set, touched or not.
        let mut created: HashSet<Vec<u8>> = HashSet::new();
        loop {
            let rows = self.j.dirs_deepest_first(after.clone(), 512)?;
            let Some((d, last)) = rows.last() else { break };
            after = Some((*d, last.path.clone()));
            for (_, dr) in rows {
                if let Err(e) = self.apply_one_dir(&dr, &mut created) {
                    self.say(format!("evac: {e}"));
                    self.j.log(Some(self.run_id), "error", &e.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn apply_one_dir(&self, dr: &journal::DirRec, created: &mut HashSet<Vec<u8>>) -> Result<()> {
        let src = match fsx::resolve_dir(self.ctx.src_root.as_fd(), &dr.path) {
            Ok(fd) => fd,
            Err(_) => return Ok(()),
        };
        let dst = match fsx::resolve_dir(self.ctx.dst_root.as_fd(), &dr.path) {
            // A DEST directory this journal put nothing into is not ours to change.
            Ok(_) if !dr.touched && !created.contains(&dr.path) => return Ok(()),
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                steps::at(Step::DirMeta, &dr.path);
                let fd = fsx::ensure_dir(self.ctx.dst_root.as_fd(), &dr.path)
                    .ctx("create DEST directory", &dr.path)?;
                let mut p: &[u8] = &dr.path;
                while !p.is_empty() && created.insert(p.to_vec()) {
                    p = fsx::split_parent(p).0;
                }
                fd
            }
            Err(e) => return Err(Error::io("open DEST directory", &dr.path, e)),
        };
        let xattrs = fsx::read_xattrs(src.as_fd()).ctx("read xattrs of directory", &dr.path)?;
        let mut st = fsx::fstat(src.as_fd()).ctx("stat directory", &dr.path)?;
        st.st_mode = dr.mode;
        st.st_uid = dr.uid;
        st.st_gid = dr.gid;
        st.st_atime = dr.atime_ns.div_euclid(1_000_000_000) as _;
        st.st_atime_nsec = dr.atime_ns.rem_euclid(1_000_000_000) as _;
        st.st_mtime = dr.mtime_ns.div_euclid(1_000_000_000) as _;
        st.st_mtime_nsec = dr.mtime_ns.rem_euclid(1_000_000_000) as _;
        // Already right (a rerun): leave it, so not even its ctime changes.
        let now = fsx::fstat(dst.as_fd()).ctx("stat DEST directory", &dr.path)?;
        let same = now.st_mode & 0o7777 == dr.mode & 0o7777
            && (!fsx::is_root() || (now.st_uid == dr.uid && now.st_gid == dr.gid))
            && fsx::mtime_ns(&now) == dr.mtime_ns
            && fsx::read_xattrs(dst.as_fd()).ok().map(sorted) == Some(sorted(xattrs.clone()));
        if !same {
            steps::at(Step::DirMeta, &dr.path);
            fsx::apply_meta(dst.as_fd(), &st, &xattrs)
                .ctx("set metadata of DEST directory", &dr.path)?;
        }
        Ok(())
    }
}

/// Run one step of the protocol on every copy of a batch at once (each is independent), keeping
/// each copy with its result.
fn each_in_parallel<F>(
    items: Vec<Box<Copied>>,
    f: F,
) -> Vec<(Box<Copied>, std::result::Result<(), String>)>
where
    F: Fn(&Copied) -> std::result::Result<(), String> + Sync,
{
    items
        .into_par_iter()
        .map(|c| {
            let r = f(&c);
            (c, r)
        })
        .collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// `--dry-run`: walk and classify exactly as a run would, touching nothing and writing no journal.
fn dry_run(o: &RunOpts) -> Result<i32> {
    let plan = if o.journal.exists() {
        Journal::open_read(&o.journal)?.plan()?
    } else {
        None
    };
    let (source, link_prefix, dest) = match (&o.source, &o.dest, plan) {
        (Some(s), Some(d), _) => {
            let s = canonical_dir(s, "SOURCE")?;
            let dabs = std::fs::canonicalize(d).unwrap_or(absolute(d)?);
            refuse_journal_in_source(&o.journal, &s)?;
            let lp = o.link_prefix.clone().unwrap_or(dabs.clone());
            (s, lp, Some(dabs))
        }
        (None, None, Some(p)) => (p.source, p.link_prefix, Some(p.dest)),
        _ => {
            return Err(Error::Setup(
                "--dry-run needs SOURCE and DEST (or a journal with a plan)".into(),
            ))
        }
    };
    let root = fsx::open_root(&source).ctx("open SOURCE", source.as_os_str().as_encoded_bytes())?;
    let root_dev = fsx::fstat(root.as_fd()).ctx("stat SOURCE", b".")?.st_dev;
    let mut prune = Vec::new();
    if let Some(d) = &dest {
        if let Ok(id) = stat_path(d) {
            prune.push(id);
        }
    }
    if let Ok(jd) = journal_dir(&o.journal) {
        if let Ok(id) = stat_path(&jd) {
            prune.push(id);
        }
    }
    let lp = journal::path_bytes(&link_prefix);
    let (tx, rx) = crossbeam_channel::bounded(8192);
    let stop = AtomicBool::new(false);
    let opts = WalkOpts {
        root_dev,
        prune,
        reserved_prefix: b"\0".to_vec(),
        hsm: crate::hsm::detect::Mode::None,
        hsm_timeout: Duration::from_secs(60),
        source_abs: PathBuf::new(),
    };
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut linked = 0u64;
    let mut skipped = 0u64;
    let mut dirs = 0u64;
    let mut errors = 0u64;
    let mut hard: HashSet<(u64, u64)> = HashSet::new();
    let mut out = std::io::stdout().lock();
    std::thread::scope(|sc| {
        sc.spawn(|| walk::walk(&root, &opts, &tx, &stop));
        for m in rx.iter() {
            match m {
                WalkMsg::Entry(s) => match s.kind {
                    Kind::File => {
                        files += 1;
                        if s.nlink <= 1 || hard.insert((s.dev, s.ino)) {
                            bytes += s.size;
                        }
                        if o.list {
                            use std::io::Write;
                            let _ = if o.null {
                                out.write_all(&s.path).and_then(|_| out.write_all(b"\0"))
                            } else {
                                writeln!(out, "{}", crate::util::escape::escape(&s.path))
                            };
                        }
                    }
                    Kind::Dir => dirs += 1,
                    Kind::Symlink => {
                        let mut t = lp.clone();
                        if !t.ends_with(b"/") {
                            t.push(b'/');
                        }
                        t.extend_from_slice(&s.path);
                        if s.target.as_deref() == Some(t.as_slice()) {
                            linked += 1;
                        } else {
                            skipped += 1;
                        }
                    }
                    _ => skipped += 1,
                },
                WalkMsg::Error { path, op, err } => {
                    errors += 1;
                    crate::util::notice::say(format!("evac: {op} {}: {err}", quoted(&path)));
                }
                WalkMsg::Done { .. } => break,
            }
        }
    });
    if !o.quiet {
        eprintln!(
            "evac: dry run of {}: would relocate {files} files ({}) in {dirs} directories; {linked} already relocated; {skipped} left as they are (symlinks, special files); {errors} errors; nothing was changed",
            q(&source),
            human_bytes(bytes as f64)
        );
    }
    Ok(if errors > 0 { EXIT_LEFT } else { EXIT_OK })
}

/// Lets tests hold a run between a batch's swaps and their record in the journal (milliseconds),
/// the window in which a user may rename, delete or replace a fresh link before a crash.
fn pause_after_swap() -> Option<Duration> {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| {
        std::env::var("EVAC_TEST_PAUSE_AFTER_SWAP")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

/// Apply what changed in the control table's caps and targets (on the governor's thread).
fn apply_controls(
    c: &std::collections::BTreeMap<String, String>,
    before: &std::collections::BTreeMap<String, String>,
    limiter: &crate::pace::throttle::Limiter,
    gov: &mut crate::pace::governor::Governor,
) {
    let changed = |k: &str| c.get(k) != before.get(k);
    let given = |k: &str| c.get(k).filter(|v| !v.is_empty() && changed(k));
    if let Some(v) = given("bwlimit") {
        if let Ok(s) = v.parse::<crate::pace::throttle::Schedule>() {
            limiter.set(Some(s), None);
            crate::util::notice::say(format!("evac: --bwlimit now {v}"));
        }
    }
    if let Some(v) = given("files_per_sec") {
        if let Ok(f) = v.parse::<f64>() {
            limiter.set(None, Some(Some(f)));
            crate::util::notice::say(format!("evac: --files-per-sec now {f}"));
        }
    }
    if let Some(v) = given("workers") {
        if let Ok(n) = v.parse::<usize>() {
            gov.set_max(n);
            crate::util::notice::say(format!("evac: at most {} copy workers now", gov.max()));
        }
    }
    for k in [
        "governor",
        "max_load",
        "max_io_pressure",
        "max_util",
        "max_latency",
    ] {
        if let Some(v) = given(k) {
            if gov.settings.apply(k, v) {
                crate::util::notice::say(format!("evac: --{} now {v}", k.replace('_', "-")));
            }
        }
    }
}

/// The governor's state for `status` (a line and a JSON object) and the progress display.
struct GovState {
    line: String,
    json: String,
    short: String,
}

fn governor_state(
    gov: &crate::pace::governor::Governor,
    d: &crate::pace::governor::Decision,
    active: usize,
    window: Option<&str>,
) -> GovState {
    use crate::util::json::json_str;
    let (bps, fps) = gov.rate();
    let on = gov.settings.enabled;
    let allowed = d.allowed;
    let duty = if d.duty < 1.0 {
        format!(" at {:.0}% of the time", d.duty * 100.0)
    } else {
        String::new()
    };
    let paused = crate::sys::signals::paused();
    let over = d.worst.as_ref().filter(|w| w.ratio() > 1.0);
    let why = match (&d.worst, over) {
        (_, Some(w)) => format!("limited by {}", w.describe()),
        (Some(w), None) => format!("highest {}", w.describe()),
        (None, None) => "nothing measured".into(),
    };
    let line =
        format!(
        "{}{allowed} of {} workers allowed{duty}, {active} active, {}/s, {fps:.1} files/s; {why}",
        if paused { "paused; " } else if on { "" } else { "off; " },
        gov.max(),
        crate::util::units::human_bytes(bps),
    );
    let short = format!(
        "gov {allowed}/{}{}{}",
        gov.max(),
        if d.duty < 1.0 {
            format!("@{:.0}%", d.duty * 100.0)
        } else {
            String::new()
        },
        over.map(|w| format!(" {} {}", w.signal.name(), w.signal.fmt(w.value)))
            .unwrap_or_default()
    );
    let reading = |w: &crate::pace::governor::Reading| {
        format!(
            "{{\"signal\":{},\"value\":{:.3},\"target\":{},\"device\":{}}}",
            json_str(w.signal.name()),
            w.value,
            w.target,
            w.device.as_deref().map_or("null".into(), json_str)
        )
    };
    let s = &gov.last_signals;
    let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.3}"));
    let json = format!(
        "{{\"enabled\":{on},\"paused\":{paused},\"allowed\":{allowed},\"max\":{},\"duty\":{:.2},\"active\":{active},\"bytes_per_sec\":{bps:.0},\"files_per_sec\":{fps:.2},\"limiting\":{},\"highest\":{},\"signals\":{{\"load\":{},\"io_some\":{},\"io_full\":{},\"util\":{},\"latency_ms\":{}}},\"source\":{},\"dest\":{},\"window\":{}}}",
        gov.max(),
        d.duty,
        over.map_or("null".into(), reading),
        d.worst.as_ref().map_or("null".into(), reading),
        num(s.load),
        num(s.io_some),
        num(s.io_full),
        num(s.util.as_ref().map(|u| u.0)),
        num(s.latency.as_ref().map(|u| u.0)),
        json_str(&gov.sampler.source.describe()),
        json_str(&gov.sampler.dest.describe()),
        window.map_or("null".into(), json_str),
    );
    GovState { line, json, short }
}

/// "inside a window until HH:MM" / "outside the windows: …", for the run log and `status`.
fn window_state(ws: &[crate::pace::throttle::Window]) -> String {
    let m = crate::pace::throttle::local_minute();
    let next = crate::pace::throttle::next_window_change(ws, m)
        .map(crate::pace::throttle::fmt_minute)
        .unwrap_or_else(|| "never".into());
    if crate::pace::throttle::in_windows(ws, m) {
        format!("inside a window until {next}")
    } else {
        format!("outside the windows: no new file starts before {next}")
    }
}
