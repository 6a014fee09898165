//! `evac fingerprint` (phase 3): fingerprint what the passes left (failed, deferred, staged-out
//! files, and files the HSM lost or phase 2 gave up on) without triggering a recall (I4), and
//! find candidate copies of them under `--search` directories the way duplicate finders do:
//! files of a leftover's size only, then a partial hash of their ends, then the full content
//! hash only where that still decides something. Each candidate gets a confidence; the results
//! go to the journal (for `evac recover`), a report file and the terminal. Candidates' hashes
//! are cached in the journal by inode, so a rerun over unchanged trees reads no file.

use crate::fingerprint::matching::*;
use crate::fingerprint::{hashing, index, leftovers, output};
use crate::ui::fingerprint as ui;

pub use hashing::Hashes;
pub use output::Format;

use crate::error::{Error, Result};
use crate::fingerprint::stats::Stats;
use crate::journal::fingerprint::{CachedFp, FpLeftover, FpMatch, FpRun};
use crate::journal::{self, FileState, Journal};
use crate::sys::fsx;
use crate::sys::lock::JournalLock;
use crate::util::escape::{escape, quoted};
use index::Found;
use leftovers::Leftover;
use rayon::prelude::*;
use rustix::fd::{AsFd, OwnedFd};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct FingerprintOpts {
    pub journal: PathBuf,
    pub search: Vec<PathBuf>,
    pub report: Option<PathBuf>,
    pub workers: Option<usize>,
    pub quiet: bool,
    pub progress_interval: Duration,
    /// The command line, for the journal's log.
    pub args_text: String,
}

fn setup(e: impl std::fmt::Display) -> Error {
    Error::Setup(e.to_string())
}

/// The leftover states: failed, deferred and staged-out files, and files still pending after a
/// run that finished (a run that was interrupted will take them up: they are not left over).
fn leftover_states(j: &Journal) -> Result<(Vec<FileState>, i64)> {
    let mut states = vec![FileState::StagedOut, FileState::Failed, FileState::Deferred];
    let finished = j
        .last_run()?
        .is_some_and(|r| matches!(r.exit_code, Some(0) | Some(3)));
    let pending = j.counts()?.unfinished();
    if finished {
        states.extend([FileState::Pending, FileState::Copying, FileState::Placed]);
        return Ok((states, 0));
    }
    Ok((states, pending))
}

pub fn fingerprint(mut o: FingerprintOpts) -> Result<i32> {
    let format = o.report.as_deref().map(Format::of).transpose()?;
    let cwd = std::env::current_dir().map_err(|e| setup(format!("current directory: {e}")))?;
    o.journal = cwd.join(&o.journal);
    o.report = o.report.map(|r| cwd.join(r));
    let (_, stop) = crate::sys::signals::process()
        .map_err(|e| setup(format!("set up signal handling: {e}")))?;
    let lock = JournalLock::acquire(&o.journal)?;
    let j = Journal::open(&o.journal, false)?;
    let plan = j.plan()?.ok_or_else(|| {
        setup(format!(
            "journal {} has no plan yet: run `evac run SOURCE DEST --journal FILE` first",
            quoted(o.journal.as_os_str().as_encoded_bytes())
        ))
    })?;
    let mode =
        crate::hsm::detect::Mode::recorded(j.plan_option("hsm")?.as_deref()).map_err(setup)?;

    // The search directories, absolute and symlink-free (candidates are reopened through them
    // component by component), each once.
    let mut roots: Vec<Vec<u8>> = Vec::new();
    let mut root_ids: Vec<(u64, u64)> = Vec::new();
    let mut root_fds: Vec<OwnedFd> = Vec::new();
    for s in &o.search {
        let sb = s.as_os_str().as_encoded_bytes();
        let c = std::fs::canonicalize(s).map_err(|e| Error::io("--search", sb, e))?;
        let fd = fsx::open_root(&c).map_err(|e| Error::io("open --search directory", sb, e))?;
        let st = fsx::fstat(fd.as_fd()).map_err(|e| Error::io("stat --search directory", sb, e))?;
        if root_ids.contains(&(st.st_dev, st.st_ino)) {
            continue;
        }
        roots.push(journal::path_bytes(&c));
        root_ids.push((st.st_dev, st.st_ino));
        root_fds.push(fd);
    }
    // Not entered: DEST, unless it is searched itself, and a search directory inside another
    // (it is walked on its own).
    let mut skip = root_ids.clone();
    let mut dest_ids = vec![(plan.dest_dev, plan.dest_ino)];
    if let Ok(st) = fsx::open_root(&plan.dest).and_then(|fd| fsx::fstat(fd.as_fd())) {
        dest_ids.push((st.st_dev, st.st_ino));
    }
    for d in dest_ids {
        if !root_ids.contains(&d) {
            skip.push(d);
        }
    }

    let workers = o
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("evac-fp-{i}"))
        .build()
        .map_err(|e| setup(format!("start {workers} workers: {e}")))?;
    let source = journal::path_bytes(&plan.source);
    let src = fsx::open_root(&plan.source).map_err(|e| Error::io("open SOURCE", &source, e))?;
    let _ = fsx::raise_nofile();

    let search_text = roots
        .iter()
        .map(|r| escape(r))
        .collect::<Vec<_>>()
        .join("\n");
    let run_id = j.fp_start_run(&search_text)?;
    // START and FINISH go to the journal's log and to stderr, --quiet or not (as for runs).
    let note = |msg: String| -> Result<()> {
        j.log(None, "info", &msg)?;
        crate::util::notice::say(format!("evac: {msg}"));
        Ok(())
    };
    note(format!(
        "START fingerprint {run_id} pid {}: SOURCE {} journal {} search {} workers {workers} args: {}",
        std::process::id(),
        quoted(&source),
        quoted(o.journal.as_os_str().as_encoded_bytes()),
        if roots.is_empty() {
            "nothing".to_string()
        } else {
            roots.iter().map(|r| quoted(r)).collect::<Vec<_>>().join(", ")
        },
        o.args_text
    ))?;

    let stats = Arc::new(Stats::default());
    let ui = ui::start(stats.clone(), o.quiet, o.progress_interval);
    let tx = ui.sender();
    let say = move |m: String| {
        let _ = tx.send(m);
    };

    // 1. The leftovers' own fingerprints.
    let (states, not_yet) = leftover_states(&j)?;
    if not_yet > 0 {
        say(format!(
            "fingerprint: {not_yet} files are still pending because the last run did not finish; resume it (`evac run --journal FILE`) first: they are not fingerprinted"
        ));
    }
    let rows = j.fp_leftover_rows(&states)?;
    let left: Vec<Leftover> = pool.install(|| leftovers::build(rows, &src, &mode));
    for l in &left {
        if l.fp.content == "unreadable" {
            say(format!(
                "fingerprint: {}: {}",
                quoted(&fsx::join(&source, &l.fp.path)),
                l.fp.content_note.as_deref().unwrap_or("unreadable")
            ));
        }
    }

    // 2. The index: files of a leftover's size under the search directories.
    let sizes: HashSet<u64> = left.iter().map(|l| l.fp.size).collect();
    // Candidates are judged from metadata too; a program-based mode answers only during a
    // run's walk, so the blocks rule stands in for it (as in `evac stage`).
    let candidate_mode = match &mode {
        crate::hsm::detect::Mode::Cmd { .. } => crate::hsm::detect::Mode::Blocks,
        m => m.clone(),
    };
    let (found, mounts) = if roots.is_empty() || left.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        pool.install(|| {
            index::index(&index::IndexOpts {
                roots: &roots,
                sizes: &sizes,
                skip: &skip,
                hsm: &candidate_mode,
                stats: &stats,
                stop: &stop,
                say: &say,
            })
        })
    };

    // 3. What each size asks of its candidates, answered from the cache or by reading.
    let mut needs: HashMap<u64, Needs> = HashMap::new();
    for l in left.iter().filter(|l| !l.known.is_empty() && l.fp.size > 0) {
        let n = needs.entry(l.fp.size).or_default();
        if l.fp.content == "hashed" {
            n.readable = true;
            if let Some(p) = &l.fp.partial {
                n.partials.insert(p.clone());
            }
        } else {
            n.algos.extend(l.known.iter().map(|k| k.0));
        }
    }
    let own: HashSet<(u64, u64)> = left.iter().filter_map(|l| l.id).collect();
    let mut hashes: HashMap<(u64, u64), Hashes> = HashMap::new();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut from_cache = 0i64;
    let empty = Hashes::of_empty();
    for f in &found {
        let key = (f.dev, f.ino);
        if f.stub.is_some() || own.contains(&key) || !seen.insert(key) {
            continue;
        }
        if f.size == 0 {
            hashes.insert(key, empty.clone());
            continue;
        }
        let Some(n) = needs.get(&f.size) else {
            continue;
        };
        let cached = j
            .fp_cached(f.dev, f.ino)?
            .filter(|c| (c.size, c.mtime_ns, c.ctime_ns) == (f.size, f.mtime_ns, f.ctime_ns));
        let cached = cached.map(|c| Hashes {
            partial: c.partial,
            blake3: c.blake3,
            md5: c.md5,
            sha1: c.sha1,
            sha256: c.sha256,
        });
        match cached {
            Some(h) if n.answered_by(f.size, &h) => {
                from_cache += 1;
                hashes.insert(key, h);
            }
            cached => jobs.push(Job {
                found: f,
                needs: n,
                cached,
            }),
        }
    }
    // Inode order approximates on-disk order on most filesystems: fewer seeks on old disks.
    jobs.sort_by_key(|jb| (jb.found.dev, jb.found.ino));
    Stats::add(&stats.to_read, jobs.len() as u64);
    Stats::add(
        &stats.to_read_bytes,
        jobs.iter().map(|jb| estimate(jb.found.size)).sum::<u64>(),
    );
    stats.indexed.store(true, Ordering::Relaxed);

    let abs = |f: &Found| fsx::join(&roots[f.root], &f.rel);
    let mut read_errors = 0u64;
    let (rtx, rrx) =
        crossbeam_channel::bounded::<(usize, std::result::Result<Hashes, String>)>(256);
    let store: Result<()> = std::thread::scope(|sc| {
        let (jobs, root_fds, stats, stop) = (&jobs, &root_fds, &stats, &stop);
        sc.spawn(|| {
            pool.install(|| {
                jobs.par_iter().enumerate().for_each_init(
                    || (rtx.clone(), vec![0u8; 1 << 20]),
                    |(tx, buf), (i, job)| {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let mut bytes = 0;
                        let r = read_job(root_fds, job, buf, stats, &mut bytes);
                        finished(stats, job.found.size, bytes);
                        if tx.send((i, r)).is_err() {
                            // The journal could not take it: read nothing more.
                            stop.store(true, Ordering::Relaxed);
                        }
                    },
                )
            });
            drop(rtx);
        });
        // The journal is written here only, in batches: an interrupted run keeps what it read.
        // Should that fail, the channel goes with this closure, so no worker waits on it.
        let rrx = rrx;
        let mut batch = 0;
        let mut tx = j.tx()?;
        for (i, r) in rrx.iter() {
            let f = jobs[i].found;
            match r {
                Ok(h) => {
                    j.fp_cache_put(&CachedFp {
                        dev: f.dev,
                        ino: f.ino,
                        size: f.size,
                        mtime_ns: f.mtime_ns,
                        ctime_ns: f.ctime_ns,
                        path: abs(f),
                        partial: h.partial.clone(),
                        blake3: h.blake3.clone(),
                        md5: h.md5.clone(),
                        sha1: h.sha1.clone(),
                        sha256: h.sha256.clone(),
                    })?;
                    hashes.insert((f.dev, f.ino), h);
                }
                Err(e) => {
                    read_errors += 1;
                    say(format!(
                        "fingerprint: {}: {e} (its content is unknown; the other candidates go on)",
                        quoted(&abs(f))
                    ));
                }
            }
            batch += 1;
            if batch >= 256 {
                tx.commit()?;
                tx = j.tx()?;
                batch = 0;
            }
        }
        tx.commit()
    });
    store?;
    let files_read = Stats::get(&stats.read) as i64;
    let bytes_read = Stats::get(&stats.read_bytes) as i64;
    ui.finish();
    if stop.load(Ordering::Relaxed) {
        note(format!(
            "FINISH fingerprint {run_id}: interrupted after reading {files_read} candidate files; what was read is cached: run it again to go on; exit 4"
        ))?;
        drop(lock);
        return Ok(crate::util::exit::EXIT_INTERRUPTED);
    }

    // 4. Each leftover's candidates, best first.
    let mut by_size: HashMap<u64, Vec<&Found>> = HashMap::new();
    for f in &found {
        if !own.contains(&(f.dev, f.ino)) {
            by_size.entry(f.size).or_default().push(f);
        }
    }
    let mut decoys = 0u64;
    let mut fps: Vec<FpLeftover> = Vec::with_capacity(left.len());
    let mut matches: Vec<FpMatch> = Vec::new();
    let mut run = FpRun {
        id: run_id,
        leftovers: left.len() as i64,
        files_indexed: Stats::get(&stats.files) as i64,
        files_read,
        bytes_read,
        from_cache,
        ..FpRun::default()
    };
    for l in &left {
        let mut cands: Vec<Cand<'_>> = Vec::new();
        for f in by_size.get(&l.fp.size).into_iter().flatten() {
            match judge(l, f, hashes.get(&(f.dev, f.ino))) {
                Verdict::Candidate(conf, by) => cands.push(Cand {
                    conf,
                    by,
                    same_name: name_of(&f.rel) == l.name.as_slice(),
                    same_time: l.fp.mtime_ns.is_some_and(|t| same_second(t, f.mtime_ns)),
                    path: abs(f),
                    f,
                }),
                Verdict::Decoy => decoys += 1,
                Verdict::Unrelated => {}
            }
        }
        // Best first: confidence, then the name, then the mtime agreeing; then path order.
        cands.sort_by(|a, b| {
            (b.conf, b.same_name, b.same_time)
                .cmp(&(a.conf, a.same_name, a.same_time))
                .then_with(|| a.path.cmp(&b.path))
        });
        let best = cands.first().map_or(Confidence::None, |c| c.conf);
        match best {
            Confidence::Exact => run.exact += 1,
            Confidence::Probable => run.probable += 1,
            Confidence::Weak => run.weak += 1,
            Confidence::None => run.none += 1,
        }
        let mut fp = l.fp.clone();
        fp.confidence = best.as_str().into();
        fp.candidates = cands.len() as i64;
        for (k, c) in cands.into_iter().enumerate() {
            let f = c.f;
            let h = hashes.get(&(f.dev, f.ino));
            matches.push(FpMatch {
                leftover: l.fp.path.clone(),
                rank: k as i64 + 1,
                candidate: c.path,
                confidence: c.conf.as_str().into(),
                matched_by: c.by.into(),
                dev: f.dev,
                ino: f.ino,
                size: f.size,
                mtime_ns: f.mtime_ns,
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
                blake3: h.and_then(|h| h.blake3.clone()),
                md5: h.and_then(|h| h.md5.clone()),
                sha1: h.and_then(|h| h.sha1.clone()),
                sha256: h.and_then(|h| h.sha256.clone()),
            });
        }
        fps.push(fp);
    }

    // 5. The report, the journal, the terminal.
    let mut report_err = None;
    if let (Some(p), Some(fmt)) = (&o.report, format) {
        let r = output::Results {
            source: &source,
            search: &roots,
            leftovers: &fps,
            matches: &matches,
            run: &run,
            decoys,
        };
        match output::write_report(p, fmt, &r) {
            Ok(()) => run.report = Some(journal::path_bytes(p)),
            Err(e) => report_err = Some(e),
        }
    }
    let tx = j.tx()?;
    j.fp_store_results(&run, &fps, &matches)?;
    tx.commit()?;
    let r = output::Results {
        source: &source,
        search: &roots,
        leftovers: &fps,
        matches: &matches,
        run: &run,
        decoys,
    };
    let text = output::summary(&r, &mounts, if o.quiet { 0 } else { 20 });
    ui::show_results(&text, run.report.as_deref());
    let code = if report_err.is_some() {
        1
    } else if run.exact == run.leftovers {
        crate::util::exit::EXIT_OK
    } else {
        crate::util::exit::EXIT_LEFT
    };
    note(format!(
            "FINISH fingerprint {run_id}: {} leftovers: {} exact, {} probable, {} weak, {} none; {} files indexed, {} read ({} bytes), {} from the cache, {} unreadable; exit {code}",
            run.leftovers,
            run.exact,
            run.probable,
            run.weak,
            run.none,
            run.files_indexed,
            run.files_read,
            run.bytes_read,
            run.from_cache,
            read_errors
    ))?;
    drop(lock);
    match report_err {
        Some(e) => Err(e),
        None => Ok(code),
    }
}
