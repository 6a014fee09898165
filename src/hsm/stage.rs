//! Phase 2, `evac stage`: recall the staged-out files of the imported HSM listing through the
//! operator's stage command, in tape order (tier, volume, position; one volume per batch, at
//! most `--drives` batches at once), and relocate each batch through the normal protocol as
//! soon as its files are resident, before the HSM can release them again. A hung stage command
//! is killed with its process group after `--stage-timeout` and its files tried again later
//! with backoff; files that cannot be staged end as leftovers with the reason.

use crate::engine::{self, RunOpts};
use crate::error::{Error, Result};
use crate::hsm::detect as hsm;
use crate::hsm::detect::Mode;
use crate::journal::{self, Cause, FileState, Journal, StageRow, Why};
use crate::sys::fsx;
use crate::sys::lock::JournalLock;
use crate::util::escape::quoted;
use crate::util::units::human_bytes;
use rustix::fd::{AsFd, OwnedFd};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub struct StageOpts {
    pub journal: PathBuf,
    /// The stage command and its first arguments; paths follow (or go to its stdin).
    pub program: Vec<OsString>,
    pub drives: usize,
    pub tiers: Option<Vec<i64>>,
    pub stdin0: bool,
    pub stage_timeout: Duration,
    pub budget: Option<u64>,
    pub max_tries: i64,
    pub backoff: Duration,
    pub resident_wait: Duration,
    pub batch_files: usize,
    pub workers: Option<usize>,
    /// Try again the files earlier runs left over (the HSM was repaired, a tape was found).
    pub retry_leftovers: bool,
    pub quiet: bool,
}

/// Files of one volume recalled by one run of the stage command.
struct Batch {
    rows: Vec<StageRow>,
    bytes: u64,
}

/// What became of a batch: the stage command's verdict, and which files are resident now.
struct Done {
    rows: Vec<StageRow>,
    bytes: u64,
    command: std::result::Result<(), String>,
    resident: Vec<bool>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whether the file at SOURCE `rel` holds its data here again (metadata only: never opened).
fn resident(mode: &Mode, src: &OwnedFd, rel: &[u8]) -> bool {
    let (pd, name) = fsx::split_parent(rel);
    let Ok(dir) = fsx::resolve_dir(src.as_fd(), pd) else {
        return false;
    };
    let Ok(st) = fsx::stat_at(dir.as_fd(), name) else {
        return false;
    };
    fsx::file_type(&st) == rustix::fs::FileType::RegularFile
        && hsm::classify(mode, dir.as_fd(), name, &st).is_ok_and(|c| c.openable())
}

/// Run the stage command on one batch (argv, or NUL-separated on stdin), killing its process
/// group after `timeout`.
fn run_command(o: &StageOpts, paths: &[Vec<u8>]) -> std::result::Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&o.program[0]);
    cmd.args(&o.program[1..]).process_group(0);
    if o.stdin0 {
        cmd.stdin(std::process::Stdio::piped());
    } else {
        cmd.stdin(std::process::Stdio::null());
        cmd.args(paths.iter().map(|p| std::ffi::OsStr::from_bytes(p)));
    }
    let name = o.program[0].to_string_lossy().into_owned();
    let mut child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
    let writer = child.stdin.take().map(|mut stdin| {
        let mut input = Vec::new();
        for p in paths {
            input.extend_from_slice(p);
            input.push(0);
        }
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {name}: {e}")),
        }
        if start.elapsed() > o.stage_timeout {
            // SAFETY: kill(2) on the process group the child leads.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(format!(
                "the stage command gave no answer within {:?} (killed with its process group)",
                o.stage_timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("the stage command exited with {status}"))
    }
}

/// Stage one batch and wait (bounded) for its files to be resident.
fn stage_batch(o: &StageOpts, mode: &Mode, src: &OwnedFd, source: &[u8], b: Batch) -> Done {
    let paths: Vec<Vec<u8>> = b.rows.iter().map(|r| fsx::join(source, &r.path)).collect();
    let command = run_command(o, &paths);
    // A command that failed or was killed will not make more files resident: look once.
    let wait = if command.is_ok() {
        o.resident_wait
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    let mut resident_now: Vec<bool> = b
        .rows
        .iter()
        .map(|r| resident(mode, src, &r.path))
        .collect();
    while resident_now.iter().any(|r| !r) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        for (i, r) in b.rows.iter().enumerate() {
            if !resident_now[i] {
                resident_now[i] = resident(mode, src, &r.path);
            }
        }
    }
    Done {
        rows: b.rows,
        bytes: b.bytes,
        command,
        resident: resident_now,
    }
}

/// The batches to start: consecutive files of one (tier, volume), at most `max` each.
fn batches(rows: Vec<StageRow>, max: usize) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for r in rows {
        let same = out.last().is_some_and(|b| {
            let f = &b.rows[0];
            f.tier == r.tier && f.volume == r.volume && b.rows.len() < max
        });
        if !same {
            out.push(Batch {
                rows: Vec::new(),
                bytes: 0,
            });
        }
        let b = out.last_mut().expect("pushed");
        b.bytes += r.size;
        b.rows.push(r);
    }
    out
}

pub fn stage(mut o: StageOpts) -> Result<i32> {
    if o.program.is_empty() {
        return Err(Error::Setup("--stage-cmd needs a program".into()));
    }
    if !o.journal.is_absolute() {
        o.journal = std::env::current_dir()
            .map_err(|e| Error::Setup(format!("current directory: {e}")))?
            .join(&o.journal);
    }
    let (_, stop) = crate::sys::signals::process()
        .map_err(|e| Error::Setup(format!("set up signal handling: {e}")))?;
    let lock = JournalLock::acquire(&o.journal)?;
    let j = Journal::open(&o.journal, false)?;
    let plan = j.plan()?.ok_or_else(|| {
        Error::Setup(format!(
            "journal {} has no plan yet: run `evac run SOURCE DEST --journal FILE` first",
            quoted(o.journal.as_os_str().as_encoded_bytes())
        ))
    })?;
    // Residency is judged from metadata; a program-based mode cannot be asked per poll.
    let mode = match Mode::recorded(j.plan_option("hsm")?.as_deref()) {
        Ok(Mode::None) | Ok(Mode::Cmd { .. }) | Err(_) => Mode::Blocks,
        Ok(m) => m,
    };
    let source = journal::path_bytes(&plan.source);
    let src = fsx::open_root(&plan.source).map_err(|e| Error::io("open SOURCE", &source, e))?;
    let say = |m: String| {
        if !o.quiet {
            crate::util::notice::say(format!("evac: {m}"));
        }
    };

    let mut todo: Vec<StageRow> = j
        .stage_candidates(o.retry_leftovers)?
        .into_iter()
        .filter(|r| {
            o.tiers
                .as_ref()
                .map_or(true, |t| r.tier.is_some_and(|x| t.contains(&x)))
        })
        .collect();
    let total = todo.len();
    say(format!(
        "stage: {total} staged-out files to recall ({} in tiers {})",
        human_bytes(todo.iter().map(|r| r.size as f64).sum()),
        o.tiers
            .as_ref()
            .map(|t| t
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_else(|| "all".into())
    ));
    // Files that are resident already (staged by a run that was interrupted, or recalled by a
    // user) need no recall: they are relocated first.
    let mut ready: Vec<StageRow> = Vec::new();
    todo.retain(|r| {
        if resident(&mode, &src, &r.path) {
            ready.push(r.clone());
            false
        } else {
            true
        }
    });
    for r in &todo {
        if r.file_id.is_none() {
            say(format!(
                "stage: {} is not in the journal's inventory yet (run `evac run` first); recalled but relocated by the next run",
                quoted(&r.path)
            ));
        }
    }
    let mut waiting: Vec<Batch> = batches(todo, o.batch_files.max(1));
    let (tx, rx) = crossbeam_channel::unbounded::<Done>();
    let mut running = 0usize;
    let mut bytes_in_flight = 0u64;
    let mut left = 0usize;
    let mut relocated_total = 0usize;
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        loop {
            if !ready.is_empty() {
                let batch = std::mem::take(&mut ready);
                relocated_total += relocate(&o, &j, &batch, &say)?;
            }
            if stop.load(Ordering::Relaxed) {
                waiting.clear();
            }
            // Start what the drives and the budget allow, in tape order, once its backoff is over.
            let t = now();
            let mut i = 0;
            while running < o.drives.max(1) && i < waiting.len() {
                let b = &waiting[i];
                let due = b.rows.iter().all(|r| r.after.map_or(true, |a| a <= t));
                let fits = o
                    .budget
                    .map_or(true, |cap| running == 0 || bytes_in_flight + b.bytes <= cap);
                if !due || !fits {
                    i += 1;
                    continue;
                }
                let b = waiting.remove(i);
                let said = format!(
                    "stage: recalling {} files ({}) from volume {} (tier {})",
                    b.rows.len(),
                    human_bytes(b.bytes as f64),
                    b.rows[0].volume.as_deref().unwrap_or("?"),
                    b.rows[0]
                        .tier
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "?".into())
                );
                let t = j.tx()?;
                for r in &b.rows {
                    j.stage_mark(&r.path, "staging", None)?;
                }
                let fields = serde_json::json!({
                    "outcome": "started",
                    "volume": b.rows[0].volume,
                    "tier": b.rows[0].tier,
                    "files": b.rows.len(),
                    "bytes": b.bytes,
                });
                j.log_event(
                    None,
                    now(),
                    "info",
                    Some("stage_batch"),
                    &said,
                    Some(&fields.to_string()),
                )?;
                t.commit()?;
                say(said);
                running += 1;
                bytes_in_flight += b.bytes;
                let (tx, o, mode, src, source) = (tx.clone(), &o, &mode, &src, &source);
                scope.spawn(move || {
                    let _ = tx.send(stage_batch(o, mode, src, source, b));
                });
            }
            if running == 0 {
                if waiting.is_empty() {
                    break;
                }
                // Everything left is backing off: sleep until the earliest may go.
                let next = waiting
                    .iter()
                    .flat_map(|b| b.rows.iter().filter_map(|r| r.after))
                    .fold(f64::INFINITY, f64::min);
                let wait = (next - now()).clamp(0.01, 5.0);
                std::thread::sleep(Duration::from_secs_f64(wait));
                continue;
            }
            let Ok(d) = rx.recv() else { break };
            running -= 1;
            bytes_in_flight -= d.bytes;
            let mut again: Vec<StageRow> = Vec::new();
            let t = j.tx()?;
            for (r, res) in d.rows.iter().zip(&d.resident) {
                if *res {
                    j.stage_mark(&r.path, "staged", None)?;
                    ready.push(r.clone());
                    continue;
                }
                let why = match &d.command {
                    Err(e) => e.clone(),
                    Ok(()) => format!(
                        "the stage command succeeded but the file was not resident within {:?}",
                        o.resident_wait
                    ),
                };
                if r.tries + 1 >= o.max_tries {
                    j.stage_mark(&r.path, "given_up", Some((&why, now())))?;
                    if let Some(id) = r.file_id {
                        j.set_state(
                            id,
                            FileState::Failed,
                            Some(&Why::new(
                                Cause::Hsm,
                                format!("could not be staged ({} tries): {why}", r.tries + 1),
                            )),
                        )?;
                    }
                    left += 1;
                    say(format!("stage: {}: given up: {why}", quoted(&r.path)));
                } else {
                    let after = now() + o.backoff.as_secs_f64() * 2f64.powi(r.tries as i32);
                    j.stage_mark(&r.path, "staging", Some((&why, after)))?;
                    let mut r = r.clone();
                    r.tries += 1;
                    r.after = Some(after);
                    again.push(r);
                }
            }
            let resident = d.resident.iter().filter(|r| **r).count();
            let fields = serde_json::json!({
                "outcome": "done",
                "volume": d.rows.first().and_then(|r| r.volume.clone()),
                "tier": d.rows.first().and_then(|r| r.tier),
                "files": d.rows.len(),
                "bytes": d.bytes,
                "resident": resident,
                "retried": again.len(),
                "given_up": d.rows.len().saturating_sub(resident + again.len()),
                "error": d.command.as_ref().err(),
            });
            j.log_event(
                None,
                now(),
                if d.command.is_ok() { "info" } else { "warn" },
                Some("stage_batch"),
                &format!(
                    "stage: volume {}: {resident} of {} files resident{}",
                    d.rows
                        .first()
                        .and_then(|r| r.volume.as_deref())
                        .unwrap_or("?"),
                    d.rows.len(),
                    d.command
                        .as_ref()
                        .err()
                        .map(|e| format!("; {e}"))
                        .unwrap_or_default()
                ),
                Some(&fields.to_string()),
            )?;
            t.commit()?;
            if !again.is_empty() {
                waiting.extend(batches(again, o.batch_files.max(1)));
            }
        }
        Ok(())
    })?;
    if !ready.is_empty() {
        relocated_total += relocate(&o, &j, &ready, &say)?;
    }
    let p = j.stage_progress()?;
    drop(lock);
    say(format!(
        "stage: {relocated_total} files relocated, {left} given up this run, in {:.1?}; all phase 2: {}/{} volumes done, {} staged, {} relocated, {} given up",
        started.elapsed(),
        p.volumes_done,
        p.volumes,
        p.staged,
        p.relocated,
        p.given_up
    ));
    if stop.load(Ordering::Relaxed) {
        return Ok(engine::EXIT_INTERRUPTED);
    }
    let remaining = j.stage_candidates(false)?.len();
    Ok(if remaining == 0 && left == 0 && p.given_up == 0 {
        engine::EXIT_OK
    } else {
        engine::EXIT_LEFT
    })
}

/// Relocate staged files at once, through the normal protocol (a run over the journal's
/// waiting files, without a walk); record which made it.
fn relocate(o: &StageOpts, j: &Journal, rows: &[StageRow], say: &dyn Fn(String)) -> Result<usize> {
    let tx = j.tx()?;
    for r in rows {
        if let Some(id) = r.file_id {
            if r.file_state != Some(FileState::Relocated) {
                j.set_state(id, FileState::Pending, None)?;
            }
        }
    }
    tx.commit()?;
    let code = engine::run_locked(RunOpts::waiting_only(
        o.journal.clone(),
        o.workers,
        "stage (relocating staged files)",
    ))?;
    let mut n = 0;
    let tx = j.tx()?;
    for r in rows {
        let state = match r.file_id {
            Some(id) => j.file_state(id)?.map(|s| s.0),
            None => None,
        };
        if state == Some(FileState::Relocated) {
            j.stage_mark(&r.path, "done", None)?;
            n += 1;
        } else {
            // Recalled but not relocated (busy, changed, released again): the next stage run
            // or `evac run` takes it up.
            say(format!(
                "stage: {} recalled but not relocated now ({}); left for the next run",
                quoted(&r.path),
                state.map_or("not in the inventory", FileState::as_str)
            ));
        }
    }
    tx.commit()?;
    if code == engine::EXIT_INTERRUPTED {
        say("stage: stopped while relocating; run again to go on".into());
    }
    Ok(n)
}
