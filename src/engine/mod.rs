//! `evac run`: set up (or resume) the plan, recover what a previous run left in flight, then walk,
//! copy in parallel and commit in durable batches, with one thread owning the journal.

// Copies stay boxed: they move between worker threads, the batch and rayon, and a box moves as a
// pointer where the struct (stat buffers, fds, names) would be copied.
#![allow(clippy::vec_box)]

use crate::error::{Error, IoContext, Result};
use crate::journal::{self, Cause, FileRec, FileState, Journal, Kind, Plan, Why};
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

mod batch;
mod control;
pub mod dryrun;
mod finishing;
mod pipeline;
mod recovery;
pub mod resync;
mod setup;
pub mod stats;
mod storage;
pub mod units;
pub mod walk;

use control::*;
use dryrun::*;
use setup::*;

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
    pub progress_interval: Duration,
    pub batch_files: usize,
    pub retry_rounds: u32,
    pub retry_delay: Duration,
    /// How long one storage operation may block before the storage counts as not answering.
    pub op_timeout: Duration,
    pub relocate_mapped: bool,
    /// `--hsm` as given (None: the journal's, else auto).
    pub hsm: Option<crate::hsm::detect::Mode>,
    pub hsm_timeout: Duration,
    /// Relocate the files waiting in the journal without walking SOURCE (`evac stage`).
    pub skip_walk: bool,
    /// `--exclude` and `--exclude-from` as given (None: the journal's; a journal keeps the set it
    /// was started with).
    pub exclude: Option<crate::util::filter::Filters>,
    /// `--no-default-units`: version-control trees are relocated file by file like any other
    /// (recorded with the plan: later runs keep to it).
    pub no_default_units: bool,
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
            progress_interval: Duration::from_secs(10),
            batch_files: 512,
            retry_rounds: 1,
            retry_delay: Duration::from_millis(200),
            op_timeout: Duration::from_secs(600),
            relocate_mapped: false,
            hsm: None,
            hsm_timeout: Duration::from_secs(60),
            skip_walk: true,
            exclude: None,
            no_default_units: false,
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

pub fn run(mut o: RunOpts) -> Result<i32> {
    o.journal = absolute(&o.journal)?;
    if o.batch_files == 0 {
        return Err(Error::Setup("--batch-files must be at least 1".into()));
    }
    if o.dry_run {
        return dry_run(&o, &mut |_| Ok(()));
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
pub fn run_locked(mut o: RunOpts) -> Result<i32> {
    let j = Journal::open(&o.journal, true)?;
    j.check_integrity()?;
    let existing = j.plan()?;
    let recorded = match existing {
        Some(_) => Some(j.excludes()?),
        None => None,
    };
    let (plan, fresh) = settle_plan(&o, existing)?;
    refuse_journal_in_source(&o.journal, &plan.source)?;
    let filters = settle_filters(&o, recorded)?;
    if fresh {
        let options = format!(
            "{{\"workers\":{},\"batch_files\":{},\"relocate_mapped\":{}}}",
            o.workers.unwrap_or(0),
            o.batch_files,
            o.relocate_mapped
        );
        // One transaction: a plan is never without the patterns it was started with.
        let tx = j.tx()?;
        j.create_plan(&plan, &options)?;
        j.set_excludes(&filters.patterns())?;
        tx.commit()?;
    }
    o.exclude = Some(filters);
    if o.no_default_units {
        j.set_plan_option("units", "off")?;
    }
    o.no_default_units = j.plan_option("units")?.as_deref() == Some("off");
    Runner::new(o, plan, j)?.go()
}

/// The channels between the coordinator and the copy workers.
struct Channels {
    job_tx: Option<Sender<Job>>,
    res_rx: Receiver<(Vec<i64>, Outcome)>,
    res_tx: Sender<(Vec<i64>, Outcome)>,
    job_rx: Receiver<Job>,
}

/// The jobs out with the copy workers.
struct InFlight {
    in_flight: usize,
    /// Jobs sent to workers this run.
    dispatched: u64,
    max_in_flight: usize,
    inflight_ids: HashSet<i64>,
}

/// What the coordinator has decided and the next journal commit records.
#[derive(Default)]
struct ToRecord {
    /// Outcomes: (ids, state, why).
    outcomes: Vec<(Vec<i64>, FileState, Option<Why>)>,
    /// Originals of relocations recovery completed: (path, temporary name, inode), removed
    /// once the journal has committed them relocated.
    held_originals: Vec<(Vec<u8>, Vec<u8>, u64)>,
    /// Copies left at DEST by undone swaps whose link a user moved: (ids, DEST inode).
    kept_copies: Vec<(Vec<i64>, u64)>,
    /// Copies of recorded relocations undone and removed from DEST: (ids, DEST inode).
    dropped_copies: Vec<(Vec<i64>, u64)>,
}

struct Runner {
    o: RunOpts,
    plan: Plan,
    /// Shared with the transactions the runner holds open (`Tx` borrows it) while it works.
    j: std::rc::Rc<Journal>,
    ctx: Arc<Ctx>,
    run_id: i64,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    storage: storage::Storage,
    chan: Channels,
    flight: InFlight,
    batch: Vec<Box<Copied>>,
    /// Swapped and recorded; originals removed after the next syncfs.
    unfinished: Vec<Box<Copied>>,
    batch_started: Instant,
    /// What the next journal commit records.
    to_record: ToRecord,
    reserved_seen: Vec<(i64, Vec<u8>)>,
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
        // --hsm as given is kept in the journal (as its text), so that a resume decides the same
        // way.
        let hsm_mode = match &o.hsm {
            Some(m) => {
                j.set_plan_option("hsm", &m.to_string())?;
                m.clone()
            }
            None => crate::hsm::detect::Mode::recorded(j.plan_option("hsm")?.as_deref())
                .map_err(Error::Setup)?,
        };
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
            j: std::rc::Rc::new(j),
            ctx,
            run_id,
            stats,
            stop,
            storage,
            chan: Channels {
                job_tx: Some(job_tx),
                res_rx,
                res_tx,
                job_rx,
            },
            flight: InFlight {
                in_flight: 0,
                dispatched: 0,
                max_in_flight,
                inflight_ids: HashSet::new(),
            },
            batch: Vec::new(),
            unfinished: Vec::new(),
            batch_started: Instant::now(),
            to_record: ToRecord::default(),
            reserved_seen: Vec::new(),
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

    /// A run-level event (START, FINISH) in the run log with its fields, and on the terminal.
    fn log_event(&self, event: &str, msg: &str, fields: &serde_json::Value) -> Result<()> {
        self.j.log_event(
            Some(self.run_id),
            crate::util::time::now(),
            "info",
            Some(event),
            msg,
            Some(&fields.to_string()),
        )?;
        self.say(format!("evac: {msg}"));
        Ok(())
    }

    /// The governor's decisions since the last call, into the run log (inside the caller's
    /// transaction, if any: the governor's thread has no journal of its own to wait on).
    fn record_decisions(&self) -> Result<()> {
        for d in self.stats.take_decisions() {
            self.j.log_event(
                Some(self.run_id),
                d.at,
                "info",
                Some("governor"),
                &d.message,
                Some(&d.fields),
            )?;
        }
        Ok(())
    }

    fn go(mut self) -> Result<i32> {
        let started = Instant::now();
        let workers = self.o.workers.unwrap_or_else(default_workers).max(1);
        let e = |p: &Path| crate::util::escape::escape(p.as_os_str().as_encoded_bytes());
        let fields = serde_json::json!({
            "pid": std::process::id(),
            "source": e(&self.plan.source),
            "dest": e(&self.plan.dest),
            "link_prefix": e(&self.plan.link_prefix),
            "workers": workers,
            "journal": e(&self.o.journal),
            "args": self.o.args_text,
        });
        self.log_event(
            "START",
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
            &fields,
        )?;
        // A resume takes them from the journal, not its command line: say which hold.
        if let Some(f) = self.o.exclude.as_ref().filter(|f| !f.is_empty()) {
            let shown: Vec<String> = f.patterns().iter().map(|p| quoted(p)).collect();
            self.log(
                "info",
                &format!("exclude patterns of this journal: {}", shown.join(" ")),
            )?;
        }
        let code = match self.body(workers) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.j.log(Some(self.run_id), "error", &e.to_string());
                let _ = self.j.finish_run(self.run_id, 1, "{}");
                // Every START has its FINISH in the event log, an error's included.
                let _ = self.j.log_event(
                    Some(self.run_id),
                    crate::util::time::now(),
                    "error",
                    Some("FINISH"),
                    &format!("FINISH run {} exit 1: {e}", self.run_id),
                    Some(&serde_json::json!({ "exit_code": 1 }).to_string()),
                );
                return Err(e);
            }
        };
        let code = self.storage_exit_code(code);
        let counts = self.j.counts()?;
        let get = |s: FileState| counts.of(s);
        let totals = serde_json::json!({
            "relocated": get(FileState::Relocated),
            "deferred": get(FileState::Deferred),
            "failed": get(FileState::Failed),
            "skipped": get(FileState::Skipped),
            "pending": counts.unfinished(),
            "gone": get(FileState::Gone),
            "bytes_relocated_this_run": self.stats.bytes_done.load(Ordering::Relaxed),
            "files_relocated_this_run": self.stats.files_done.load(Ordering::Relaxed),
            "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        });
        self.record_decisions()?;
        self.j.finish_run(self.run_id, code, &totals.to_string())?;
        let el = started.elapsed().as_secs_f64();
        let bytes = self.stats.bytes_done.load(Ordering::Relaxed);
        let mut fields = totals;
        fields["exit_code"] = serde_json::json!(code);
        self.log_event(
            "FINISH",
            &format!(
                "FINISH run {} exit {code}: relocated {} files ({}) this run in {el:.1}s ({}/s); journal totals: {} relocated, {} deferred, {} failed, {} skipped, {} pending",
                self.run_id,
                self.stats.files_done.load(Ordering::Relaxed),
                human_bytes(bytes as f64),
                human_bytes(bytes as f64 / el.max(0.001)),
                get(FileState::Relocated),
                get(FileState::Deferred),
                get(FileState::Failed),
                get(FileState::Skipped),
                counts.unfinished(),
            ),
            &fields,
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
            hsm_timeout: self.o.hsm_timeout,
            source_abs: self.plan.source.clone(),
            filters: self.o.exclude.clone().unwrap_or_default(),
            units: (!self.o.no_default_units).then(|| Some(self.o.journal.clone())),
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
            self.j.forget_unseen_excluded(self.run_id)?;
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
        let left = c.unfinished()
            + c.of(FileState::Deferred)
            + c.of(FileState::Failed)
            + c.of(FileState::StagedOut);
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
        self.chan.job_tx = None;
        self.join_workers();
        done.store(true, Ordering::Relaxed);
        self.flush_outcomes()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}
