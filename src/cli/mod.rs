//! Command-line parsing only: clap definitions and their conversion into validated requests.

pub mod dispatch;

pub use dispatch::main;

use crate::util::units::{parse_bytes, parse_duration};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "evac",
    version,
    about = "Move a live filesystem to new storage, replacing each file with a symlink to its durable copy",
    long_about = None
)]
/// evac's command line (`about` above is what `--help` shows).
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// evac's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Relocate SOURCE to DEST (or resume the run recorded in the journal).
    Run(Box<RunArgs>),
    /// Show progress and what is left; works while a run is going.
    Status(StatusArgs),
    /// Re-read every relocated file at DEST and check it against the journal.
    Verify(VerifyArgs),
    /// Print the journal's events (relocated, deferred, failed, START, FINISH, governor, ...),
    /// one a line, oldest first; works while a run is going, and follows it with --follow.
    Events(EventsArgs),
    /// Write the run history as one self-contained HTML page (no script, nothing fetched):
    /// progress and ETA over time, rate per run, the governor, deferrals and failures by cause,
    /// phase 2, the directories left and cutover readiness. Works while a run is going.
    Report(ReportArgs),
    /// List the processes that still use SOURCE: files open under it, cwd or root in it, a
    /// program run from it, a file mapped from it. Exit 0 when there are none, 3 when there are.
    Holders(HoldersArgs),
    /// Build an example tree in a temporary directory and relocate it.
    Demo(DemoArgs),
    /// The HSM's database: import its listing of managed files.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// Pause a running evac (in-flight copies stop within a fraction of a second; it stays
    /// paused, also across restarts, until `evac resume`). SIGUSR1 does the same.
    Pause(ControlArgs),
    /// Let a paused evac go on. SIGUSR2 does the same.
    Resume(ControlArgs),
    /// Change the caps of a running evac (they hold for the rest of the run and the next ones,
    /// until a run is given its own on the command line).
    Throttle(ThrottleArgs),
    /// Phase 2: recall the staged-out files of the imported HSM listing in tape order through
    /// your stage command, and relocate each batch as soon as it is resident.
    Stage(StageArgs),
    /// Phase 3: fingerprint the leftovers (without a recall) and find candidate copies of them
    /// under the --search directories, each with a confidence: exact, probable, weak or none.
    /// Exit 0 when every leftover has an exact candidate, 3 when some do not.
    Fingerprint(FingerprintArgs),
    /// Phase 3: relocate a leftover with the data of a copy found elsewhere (PATH --from
    /// CANDIDATE, or every leftover with an exact candidate: --all-exact), checked against the
    /// leftover's fingerprint first, through the normal protocol. Without PATH or --all-exact,
    /// goes on with the recoveries an interrupted `evac recover` left.
    Recover(RecoverArgs),
    /// Copy every file under SOURCE that was deleted while a process still holds it open or
    /// mapped (read back through /proc, never signalling the process) into DIR, with its
    /// metadata and a manifest. Exit 0 when every such file was rescued (or there was none),
    /// 3 when some could not be.
    Rescue(RescueArgs),
    /// Print a shell completion script for bash, zsh or fish on stdout.
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout, or write one per subcommand into a directory.
    Man(ManArgs),
}

/// The arguments of `evac rescue`.
#[derive(Args, Debug)]
pub struct RescueArgs {
    /// The old tree whose deleted-but-held files are to be saved.
    pub source: PathBuf,
    /// Where the rescued files go, each under its last path with a `.rescued` suffix (created
    /// if missing; must not be inside SOURCE; nothing in it is ever overwritten).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The journal of the evacuation: names the SOURCE path of an original that evac swapped
    /// out while a process held it (its last name is evac's temporary).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Machine-readable manifest (on stdout and in DIR).
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `evac completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh or fish (elvish and powershell work too).
    pub shell: clap_complete::Shell,
}

/// The arguments of `evac man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write evac.1 and one evac-SUBCOMMAND.1 page per subcommand into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The arguments of `evac recover`.
#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// The leftover: absolute under SOURCE, or relative to it.
    #[arg(requires = "from", conflicts_with = "all_exact")]
    pub path: Option<PathBuf>,
    /// The copy whose data the leftover gets (a candidate of `evac fingerprint`, or any file).
    #[arg(long, value_name = "CANDIDATE", requires = "path")]
    pub from: Option<PathBuf>,
    /// Every leftover whose best candidate in the last `evac fingerprint` is exact.
    #[arg(long)]
    pub all_exact: bool,
    /// Take a candidate that does not match the fingerprint, or one that cannot be checked.
    #[arg(long)]
    pub force: bool,
    /// Copy workers.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// The arguments of `evac pause` and `evac resume`.
#[derive(Args, Debug)]
pub struct ControlArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
}

/// The arguments of `evac throttle`.
#[derive(Args, Debug)]
pub struct ThrottleArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// New --bwlimit: a rate, a timetable, or `off`. Checked here, kept as given: the running
    /// evac reads the text from the journal.
    #[arg(long, value_name = "RATE|TIMETABLE", value_parser = bwlimit_text)]
    pub bwlimit: Option<String>,
    /// New --files-per-sec (0: no cap).
    #[arg(long, value_name = "N")]
    pub files_per_sec: Option<f64>,
    /// Most copy workers active at once (at most the run's --workers; 0: all of them).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// The load governor's settings.
    #[command(flatten)]
    pub governor: GovernorArgs,
}

/// The arguments of `evac stage`.
#[derive(Args, Debug)]
pub struct StageArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// Batches (one volume each) staged at once: the tape drives evac may keep busy.
    #[arg(long, default_value_t = 1)]
    pub drives: usize,
    /// Only these tiers (comma-separated), e.g. the disk tier first on a wedged HSM.
    #[arg(long, value_delimiter = ',')]
    pub tiers: Option<Vec<i64>>,
    /// Give the stage command the paths NUL-separated on its stdin instead of as arguments.
    #[arg(long)]
    pub stdin0: bool,
    /// How long one run of the stage command may take (e.g. 90s, 30m, 2h; a bare number is
    /// seconds); then it is killed with its process group and its files are tried again later.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = positive_duration)]
    pub stage_timeout: Duration,
    /// Most bytes staged at once and not yet relocated (suffixes K, M, G, T): a full first tier
    /// is how an HSM wedges.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub stage_budget: Option<u64>,
    /// Tries per file before it is left over with the reason.
    #[arg(long, default_value_t = 3)]
    pub max_tries: i64,
    /// How long before a failed file is tried again (doubling with each try).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub stage_backoff: Duration,
    /// How long to wait, after the stage command returns, for its files to be resident.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub resident_wait: Duration,
    /// Files per run of the stage command (a volume with more is split, in position order).
    #[arg(long, default_value_t = 256)]
    pub batch_files: usize,
    /// Copy workers for the relocation of staged files.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Try again the files earlier runs gave up on (once the HSM is repaired).
    #[arg(long)]
    pub retry_leftovers: bool,
    /// No progress output; START/FINISH and errors only.
    #[arg(long, short)]
    pub quiet: bool,
    /// The stage command and its arguments (last on the command line: everything after it is
    /// passed to it); the batch's absolute paths follow them.
    #[arg(long, required = true, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM [ARGS...]")]
    pub stage_cmd: Vec<std::ffi::OsString>,
}

/// `evac hsm …`.
#[derive(Subcommand, Debug)]
pub enum HsmCommand {
    /// Import the HSM's listing of the files it manages (state, tier, volume, position, size,
    /// checksum) into the journal, for `evac stage` to recall in tape order. All or nothing;
    /// importing again updates. Malformed lines are reported by number and skipped; entries
    /// not under SOURCE, not in SOURCE, or already relocated are reported and not imported.
    Import(HsmImportArgs),
}

/// The arguments of `evac hsm import`.
#[derive(Args, Debug)]
pub struct HsmImportArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// The listing's format: tsv (evac's own), tsv0 (the same, NUL-separated), lfs, or dmls.
    #[arg(long, value_enum)]
    pub format: crate::hsm::import::Format,
    /// Where relative paths in the listing start [default: SOURCE].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Only the summary line.
    #[arg(long, short)]
    pub quiet: bool,
    /// The listing file.
    pub listing: PathBuf,
}

/// The arguments of `evac run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The old tree. Omit SOURCE and DEST to resume from the journal.
    pub source: Option<PathBuf>,
    /// The new storage.
    pub dest: Option<PathBuf>,
    /// The SQLite journal (created on the first run; must not lie inside SOURCE).
    #[arg(long)]
    pub journal: PathBuf,
    /// What the symlinks point at instead of DEST's absolute path (e.g. the path clients mount DEST on).
    #[arg(long)]
    pub link_prefix: Option<PathBuf>,
    /// Copy workers (default: number of CPUs, at least 2, at most 16).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Report what would be done; change nothing on either side and write no journal.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: print each path that would be relocated, escaped, one a line.
    #[arg(long)]
    pub list: bool,
    /// With --list: NUL-separated raw paths instead of escaped lines.
    #[arg(short = '0', long = "null")]
    pub null: bool,
    /// No progress output; START/FINISH and errors only.
    #[arg(long, short)]
    pub quiet: bool,
    /// Time between plain progress lines when stderr is not a terminal (e.g. 30s, 5m; a bare
    /// number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub progress_interval: Duration,
    /// Files per durability batch (one syncfs and one journal commit per batch).
    #[arg(long, default_value_t = 512)]
    pub batch_files: usize,
    /// Rounds of retrying deferred files at the end of the pass.
    #[arg(long, default_value_t = 1)]
    pub retry_rounds: u32,
    /// How long to wait before each retry round.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub retry_delay: Duration,
    /// How long one filesystem operation may block before evac gives up on it (e.g. 90s, 10m; a
    /// bare number is seconds): the file is deferred, and storage that stops answering
    /// altogether ends the run (exit 1).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = positive_duration)]
    pub op_timeout: Duration,
    /// Relocate files that a process is running or has mapped (default: defer them).
    #[arg(long)]
    pub relocate_mapped: bool,
    /// How to tell HSM stubs (staged-out files, never opened) from resident files, from
    /// metadata alone: none, auto (Lustre's trusted.hsm, then the blocks rule), blocks (size
    /// above zero, no data blocks), xattr:NAME=VALUE, lustre, or cmd:PROGRAM (paths
    /// NUL-separated on its stdin, one state per line back: resident, premigrated, staged_out,
    /// lost). Kept in the journal for later runs. [default: auto]
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<crate::hsm::detect::Mode>())]
    pub hsm: Option<crate::hsm::detect::Mode>,
    /// Most bytes per second read from SOURCE (K, M, G, T), or a timetable by local time:
    /// `08:00,10M 19:00,off` (each rate holds until the next time; `off` is unlimited). The cap
    /// applies inside each file's copy.
    #[arg(long, value_name = "RATE|TIMETABLE", value_parser = |s: &str| s.parse::<crate::pace::throttle::Schedule>())]
    pub bwlimit: Option<crate::pace::throttle::Schedule>,
    /// Most files started per second (metadata operations on the old server).
    #[arg(long, value_name = "N")]
    pub files_per_sec: Option<f64>,
    /// Start new files only inside this window of local time, e.g. 19:00-07:00 (repeatable).
    /// Outside, files in flight finish and evac idles until the next window opens.
    #[arg(long, value_name = "HH:MM-HH:MM", value_parser = |s: &str| s.parse::<crate::pace::throttle::Window>())]
    pub window: Vec<crate::pace::throttle::Window>,
    /// Outside the windows, exit with status 4 instead of idling (for cron).
    #[arg(long)]
    pub exit_outside_window: bool,
    /// Leave what matches PATTERN as it is (never relocated, never linked; a directory is not
    /// entered) and report it in `status --list excluded`. rsync's rules: a leading / anchors at
    /// SOURCE, a trailing / matches directories only, * stays within a name, ** crosses /, ?
    /// and [...] match one byte. Repeatable. Kept in the journal: a resume may repeat the same
    /// patterns or give none, never others.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<std::ffi::OsString>,
    /// Read exclude patterns from FILE (`-`: standard input), one a line; empty lines and lines
    /// starting with # or ; are ignored. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// With --exclude-from: patterns are NUL-separated (any byte but NUL in a name).
    #[arg(long, requires = "exclude_from")]
    pub from0: bool,
    /// Relocate version-control trees (a directory holding .git, .hg, .svn, .bzr, _darcs or CVS,
    /// or a bare git repository) file by file like any other. Without it they are left whole
    /// and listed (`status --list excluded`): links inside a repository break git. Kept in the
    /// journal for later runs.
    #[arg(long)]
    pub no_default_units: bool,
    /// How long an --hsm cmd:PROGRAM may take for one batch of paths before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = positive_duration)]
    pub hsm_timeout: Duration,
    /// The load governor's settings.
    #[command(flatten)]
    pub governor: GovernorArgs,
    /// Write each governor tick (signals, workers allowed, rate) to FILE, tab-separated.
    #[arg(long, value_name = "FILE")]
    pub governor_log: Option<PathBuf>,
    /// Keep Prometheus metrics in FILE (for node_exporter's textfile collector): replaced whole
    /// (a temporary in the same directory renamed over it) every few seconds and at the finish.
    #[arg(long, value_name = "FILE", conflicts_with = "dry_run")]
    pub metrics_file: Option<PathBuf>,
    /// Time between two writes of the --metrics-file.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = positive_duration, requires = "metrics_file")]
    pub metrics_interval: Duration,
    /// Write every event the run records in the journal (START, FINISH, relocated, deferred and
    /// failed with their cause, unlinked, renamed, governor decisions, ...) to FILE as one JSON
    /// object a line, flushed as they are committed; `-` for stderr. FILE is appended to.
    #[arg(long, value_name = "FILE", conflicts_with = "dry_run")]
    pub log_json: Option<PathBuf>,
}

/// The load governor's options (`evac run`, and live through `evac throttle`).
#[derive(Args, Debug, Clone, Default)]
pub struct GovernorArgs {
    /// The load governor: `on` lets fewer copy workers work (down to one, then one part of the
    /// time) while the machine or its disks are over a target below; `off` keeps --workers busy.
    #[arg(long, value_name = "on|off", value_enum)]
    pub governor: Option<Switch>,
    /// Most tasks running or waiting for I/O per CPU, averaged over 5 s, or `off`. [default: 2]
    #[arg(long, value_name = "N|off")]
    pub max_load: Option<crate::pace::governor::Target>,
    /// Most share of the time some task waits for I/O (/proc/pressure/io "some"), percent, or
    /// `off`. [default: 60]
    #[arg(long, value_name = "PCT|off")]
    pub max_io_pressure: Option<crate::pace::governor::Target>,
    /// Most share of the time a disk behind SOURCE or DEST is busy (/proc/diskstats), percent,
    /// or `off`. [default: 90]
    #[arg(long, value_name = "PCT|off")]
    pub max_util: Option<crate::pace::governor::Target>,
    /// Most average time an I/O request takes on those disks (or an NFS mount's round trip),
    /// milliseconds (or with `s`), or `off`. [default: 50]
    #[arg(long, value_name = "MS|off")]
    pub max_latency: Option<crate::pace::governor::Target>,
}

impl GovernorArgs {
    /// The options given, as control-table entries (key, value).
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let t =
            |v: &crate::pace::governor::Target| v.0.map_or("off".to_string(), |x| x.to_string());
        let mut v = Vec::new();
        if let Some(g) = self.governor {
            v.push((
                "governor",
                match g {
                    Switch::On => "on",
                    Switch::Off => "off",
                }
                .to_string(),
            ));
        }
        for (k, x) in [
            ("max_load", &self.max_load),
            ("max_io_pressure", &self.max_io_pressure),
            ("max_util", &self.max_util),
            ("max_latency", &self.max_latency),
        ] {
            if let Some(x) = x {
                v.push((k, t(x)));
            }
        }
        v
    }

    /// The governor's settings for a run: the defaults, then what was given.
    pub fn settings(&self) -> crate::pace::governor::Settings {
        let mut s = crate::pace::governor::Settings::default();
        for (k, v) in self.entries() {
            s.apply(k, &v);
        }
        s
    }
}

/// An option that is on or off.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// On (also `yes`, `true`).
    #[value(alias = "yes", alias = "true")]
    On,
    /// Off (also `no`, `false`).
    #[value(alias = "no", alias = "false")]
    Off,
}

/// `throttle --bwlimit` as given, once it parses as a rate or a timetable.
fn bwlimit_text(s: &str) -> Result<String, String> {
    s.parse::<crate::pace::throttle::Schedule>()?;
    Ok(s.to_string())
}

/// The arguments of `evac status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// Machine-readable output (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// How to print: text, json, or prometheus (the metrics `run --metrics-file` writes, once).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<crate::app::status::Format>,
    /// List the paths in this state (pending, relocated, deferred, failed, skipped, gone,
    /// staged_out), or those of a view: cutover (what keeps DEST from mirroring SOURCE, and why),
    /// excluded (what --exclude left in SOURCE), links (every link evac made, with what it names).
    #[arg(long, value_enum, value_name = "STATE")]
    pub list: Option<crate::app::status::List>,
    /// With --list: NUL-separated raw paths.
    #[arg(short = '0', long = "null", alias = "print0")]
    pub null: bool,
}

/// The arguments of `evac events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// Only events at or after this time: RFC 3339 (2026-12-03T20:00:00Z; without a zone, UTC),
    /// a date, @EPOCH-SECONDS, or an age (90s, 15m, 2h, 3d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Keep printing new events as runs record them, until interrupted (without --since, only
    /// new ones). Reads only: a running evac never waits for it.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// One JSON object a line, the same as `evac run --log-json` writes.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `evac report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// The HTML file to write (replaced whole if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// The arguments of `evac verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Hashing threads (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// The arguments of `evac holders`.
#[derive(Args, Debug)]
pub struct HoldersArgs {
    /// The tree to look at (the old tree; a relocated file's link there does not count, the
    /// copy it points to is elsewhere).
    pub source: PathBuf,
    /// Machine-readable output: an array of objects.
    #[arg(long, conflicts_with = "null")]
    pub json: bool,
    /// NUL-separated raw paths (relative to SOURCE) of what is held, each once.
    #[arg(short = '0', long = "null")]
    pub null: bool,
}

/// The arguments of `evac demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Build the demo under this directory instead of a new temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of regular files in the generated tree.
    #[arg(long, default_value_t = 3000)]
    pub files: usize,
}

/// A duration that must not be zero: a timeout or an interval of zero would give up at once or
/// spin.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("expected a duration above 0".into()),
        d => Ok(d),
    }
}

/// The arguments of `evac fingerprint`.
#[derive(Args, Debug)]
pub struct FingerprintArgs {
    /// The evacuation's journal (a SQLite file).
    #[arg(long)]
    pub journal: PathBuf,
    /// A directory to look for copies in (repeatable): backup restores, an old snapshot, files
    /// salvaged from tape, DEST. Read only; symlinks are not followed, other filesystems and
    /// DEST (unless given) are not entered.
    #[arg(long, value_name = "DIR")]
    pub search: Vec<PathBuf>,
    /// Write the leftovers and their candidates to this file: .csv, .json, or .html (a
    /// self-contained worksheet), by extension.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Threads that walk and hash (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// No progress and only the summary's counts.
    #[arg(long, short)]
    pub quiet: bool,
    /// Time between plain progress lines when stderr is not a terminal (e.g. 30s, 5m; a bare
    /// number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub progress_interval: Duration,
}
