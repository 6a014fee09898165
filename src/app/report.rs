//! What the operator reads: `status` (also while a run is going) and `verify` (I5: re-hash every
//! relocated copy against the journal and check every source link).

use crate::error::{Error, IoContext, Result};
use crate::journal::{self, Journal, Plan};
use crate::sys::fsx;
use crate::util::escape::{escape, quoted};
use crate::util::json::json_str;
use crate::util::units::human_bytes;
use rayon::prelude::*;
use rustix::fd::AsFd;
use std::io::Write;
use std::path::Path;

fn pathstr(p: &Path) -> String {
    escape(p.as_os_str().as_encoded_bytes())
}

fn need_plan(j: &Journal) -> Result<Plan> {
    j.plan()?.ok_or_else(|| {
        Error::Setup(format!(
            "journal {} has no plan yet (no run has started with it)",
            quoted(j.path().as_os_str().as_encoded_bytes())
        ))
    })
}

const STATES: [&str; 7] = [
    "pending",
    "relocated",
    "deferred",
    "failed",
    "staged_out",
    "skipped",
    "gone",
];

/// Map internal states onto the ones operators see.
fn public_state(s: &str) -> &str {
    match s {
        "copying" | "placed" => "pending",
        "swapped" => "relocated",
        other => other,
    }
}

/// `evac pause`, `resume`, `throttle`: record the command for the running evac (and the next).
pub fn control(journal: &Path, set: &[(&str, String)]) -> Result<i32> {
    if set.is_empty() {
        return Err(Error::Setup(
            "evac throttle: give one or more of --bwlimit, --files-per-sec, --workers, --governor, --max-load, --max-io-pressure, --max-util, --max-latency".into(),
        ));
    }
    for (k, v) in set {
        if *k == "bwlimit" {
            v.parse::<crate::pace::throttle::Schedule>()
                .map_err(Error::Setup)?;
        }
    }
    let j = Journal::open(journal, false)?;
    need_plan(&j)?;
    for (k, v) in set {
        j.set_control(k, v)?;
    }
    let running = crate::sys::lock::running_pid(journal);
    let what = set
        .iter()
        .map(|(k, v)| match (*k, v.as_str()) {
            ("paused", "1") => "paused".to_string(),
            ("paused", _) => "resumed".to_string(),
            (k, v) => format!("{} {v}", k.replace('_', "-")),
        })
        .collect::<Vec<_>>()
        .join(", ");
    match running {
        Some(pid) => println!("{what}: the run (pid {pid}) applies it within a second"),
        None => println!("{what}: no run is going; the next run starts with it"),
    }
    Ok(0)
}

pub fn status(journal: &Path, json: bool, list: Option<&str>, null: bool) -> Result<i32> {
    let j = Journal::open_read(journal)?;
    let plan = need_plan(&j)?;
    let mut out = std::io::stdout().lock();
    if let Some(state) = list {
        let sink = &mut |p: &[u8], reason: Option<&str>| {
            if null {
                out.write_all(p)?;
                out.write_all(b"\0")
            } else {
                match reason {
                    Some(r) => writeln!(out, "{}\t{}", escape(p), r),
                    None => writeln!(out, "{}", escape(p)),
                }
            }
        };
        if state == "cutover" {
            j.for_each_cutover_difference(sink)?;
            return Ok(0);
        }
        if !STATES.contains(&state) {
            return Err(Error::Setup(format!(
                "--list {state}: not a state; one of {}, or cutover",
                STATES.join(", ")
            )));
        }
        let states: Vec<&str> = match state {
            "pending" => vec!["pending", "copying", "placed"],
            "relocated" => vec!["relocated", "swapped"],
            s => vec![s],
        };
        j.for_each_in_states(&states, sink)?;
        return Ok(0);
    }
    let counts = j.counts()?;
    let mut by = std::collections::BTreeMap::new();
    for s in STATES {
        by.insert(s, 0i64);
    }
    for (s, n) in &counts.by_state {
        *by.entry(public_state(s)).or_insert(0) += n;
    }
    let running_pid = crate::sys::lock::running_pid(journal);
    let last = j.last_run()?;
    let running = running_pid.is_some();
    let rate = match (&last, running) {
        (Some(r), true) => r.rate_bps,
        _ => 0.0,
    };
    let remaining = (counts.bytes_total - counts.bytes_relocated).max(0) as f64;
    let eta = if running && rate > 0.0 {
        Some(remaining / rate)
    } else {
        None
    };
    let throttle = last
        .as_ref()
        .map(|r| r.throttle.clone())
        .unwrap_or_else(|| "none".into());
    let reasons = j.top_reasons(10)?;
    let cut = j.cutover()?;
    let hsm_mode = j.plan_option("hsm")?.unwrap_or_else(|| "auto".into());
    let by_blocks = j.count_reason_prefix("staged_out", crate::hsm::detect::BLOCKS_RULE)?;
    let (hsm_n, hsm_out, hsm_vols) = j.hsm_db_counts()?;
    let sp = j.stage_progress()?;
    let fp = j.fp_last_run()?;
    let controls = j.controls()?;
    let paused = controls.get("paused").is_some_and(|v| v == "1");
    let caps: Vec<String> = [
        "bwlimit",
        "files_per_sec",
        "workers",
        "governor",
        "max_load",
        "max_io_pressure",
        "max_util",
        "max_latency",
    ]
    .iter()
    .filter_map(|k| {
        controls
            .get(*k)
            .filter(|v| !v.is_empty())
            .map(|v| format!("--{} {v}", k.replace('_', "-")))
    })
    .collect();
    let recall_rate = match (sp.first, sp.last) {
        (Some(a), Some(b)) if b > a && sp.staged > 1 => (sp.staged - 1) as f64 * 60.0 / (b - a),
        _ => 0.0,
    };
    // The governor's state, written by the run every second (in memory) while it runs.
    let gov = crate::pace::governor::read_state(&plan.journal_id).filter(|_| running_pid.is_some());
    let governor = gov.as_ref().map(|g| &g.0);
    let governor_j = gov
        .as_ref()
        .map_or_else(|| "null".to_string(), |g| g.1.clone());
    if json {
        let pairs = |v: &[(String, i64)]| {
            v.iter()
                .map(|(k, n)| format!("{}:{n}", json_str(k)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let cutover_j = format!(
            "{{\"ready\":{},\"as_of_run\":{},\"as_of\":{},\"differences\":{{{}}},\"not_carried_over\":{{{}}}}}",
            cut.ready(),
            cut.as_of.map(|a| a.0.to_string()).unwrap_or("null".into()),
            cut.as_of.map(|a| a.1.to_string()).unwrap_or("null".into()),
            pairs(&cut.differences),
            pairs(&cut.not_carried)
        );
        let files = by
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect::<Vec<_>>()
            .join(",");
        let reasons_j = reasons
            .iter()
            .map(|(s, r, n)| {
                format!(
                    "{{\"state\":{},\"reason\":{},\"count\":{n}}}",
                    json_str(s),
                    json_str(r)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let last_j = match &last {
            Some(r) => format!(
                "{{\"id\":{},\"pid\":{},\"started_at\":{},\"heartbeat_at\":{},\"finished_at\":{},\"exit_code\":{},\"files_relocated\":{},\"bytes_relocated\":{}}}",
                r.id,
                r.pid,
                r.started_at,
                r.heartbeat_at,
                r.finished_at.map(|v| v.to_string()).unwrap_or("null".into()),
                r.exit_code.map(|v| v.to_string()).unwrap_or("null".into()),
                r.files_relocated,
                r.bytes_relocated
            ),
            None => "null".into(),
        };
        writeln!(
            out,
            "{{\"source\":{},\"dest\":{},\"link_prefix\":{},\"journal_id\":{},\"files\":{{{files}}},\"bytes_relocated\":{},\"bytes_total\":{},\"rate_bytes_per_sec\":{rate},\"eta_seconds\":{},\"running\":{running},\"pid\":{},\"throttle\":{},\"reasons\":[{reasons_j}],\"last_run\":{last_j},\"cutover\":{cutover_j},\"hsm\":{{\"mode\":{},\"staged_out_by_blocks_rule\":{by_blocks},\"db_files\":{hsm_n},\"db_staged_out\":{hsm_out},\"db_volumes\":{hsm_vols}}},\"paused\":{paused},\"governor\":{},\"stage\":{{\"volumes\":{},\"volumes_done\":{},\"staged\":{},\"relocated\":{},\"given_up\":{},\"bytes_waiting\":{},\"files_per_minute\":{recall_rate:.1}}},\"fingerprint\":{}}}",
            json_str(&pathstr(&plan.source)),
            json_str(&pathstr(&plan.dest)),
            json_str(&pathstr(&plan.link_prefix)),
            json_str(&plan.journal_id),
            counts.bytes_relocated,
            counts.bytes_total,
            eta.map(|e| format!("{e:.0}")).unwrap_or("null".into()),
            running_pid.as_deref().map(json_str).unwrap_or("null".into()),
            json_str(&throttle),
            json_str(&hsm_mode),
            governor_j,
            sp.volumes,
            sp.volumes_done,
            sp.staged,
            sp.relocated,
            sp.given_up,
            sp.bytes_waiting,
            fingerprint_json(fp.as_ref()),
        )
        .map_err(|e| Error::Setup(format!("write output: {e}")))?;
        return Ok(0);
    }
    let w = |out: &mut std::io::StdoutLock, s: String| {
        writeln!(out, "{s}").map_err(|e| Error::Setup(format!("write output: {e}")))
    };
    w(
        &mut out,
        format!(
            "SOURCE  {}",
            quoted(plan.source.as_os_str().as_encoded_bytes())
        ),
    )?;
    w(
        &mut out,
        format!(
            "DEST    {}",
            quoted(plan.dest.as_os_str().as_encoded_bytes())
        ),
    )?;
    w(
        &mut out,
        format!(
            "links   {}/…",
            quoted(plan.link_prefix.as_os_str().as_encoded_bytes())
        ),
    )?;
    w(
        &mut out,
        match (&running_pid, &last) {
            (Some(pid), _) => format!("run     going (pid {pid}), throttle: {throttle}"),
            (None, Some(r)) => format!(
                "run     not running; last run {} ended with exit {}",
                r.id,
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none (interrupted: the next run recovers)".into())
            ),
            (None, None) => "run     never started".into(),
        },
    )?;
    w(
        &mut out,
        format!(
            "files   {}",
            by.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    if hsm_n > 0 {
        w(
            &mut out,
            format!(
                "hsm db  {hsm_n} files in the imported HSM listing, {hsm_out} staged out on {hsm_vols} volumes"
            ),
        )?;
    }
    if let Some(wst) = controls.get("window").filter(|v| !v.is_empty()) {
        w(&mut out, format!("window  {wst}"))?;
    }
    if let Some(g) = governor {
        w(&mut out, format!("governor {g}"))?;
    }
    if paused || !caps.is_empty() {
        w(
            &mut out,
            format!(
                "control {}{}",
                if paused {
                    "PAUSED by `evac pause` or SIGUSR1 (`evac resume` goes on)"
                } else {
                    "running"
                },
                if caps.is_empty() {
                    String::new()
                } else {
                    format!("; caps set by `evac throttle`: {}", caps.join(", "))
                }
            ),
        )?;
    }
    if sp.staged > 0 || sp.given_up > 0 {
        w(
            &mut out,
            format!(
                "stage   phase 2: {}/{} volumes done, {} files staged ({} relocated, {} given up), {recall_rate:.1} files/min, {} staged and waiting",
                sp.volumes_done,
                sp.volumes,
                sp.staged,
                sp.relocated,
                sp.given_up,
                human_bytes(sp.bytes_waiting as f64)
            ),
        )?;
    }
    if let Some(f) = &fp {
        w(
            &mut out,
            format!(
                "fprint  phase 3 ({}): {} leftovers: {} exact, {} probable, {} weak, {} none{}",
                crate::fingerprint::output::iso_time((f.started_at * 1e9) as i64)
                    .split('.')
                    .next()
                    .unwrap_or_default(),
                f.leftovers,
                f.exact,
                f.probable,
                f.weak,
                f.none,
                f.report
                    .as_deref()
                    .map(|r| format!("; report {}", quoted(r)))
                    .unwrap_or_default()
            ),
        )?;
    }
    if by_blocks > 0 {
        w(
            &mut out,
            format!(
                "hsm     {by_blocks} files taken for HSM stubs by the blocks rule (size above zero, no data blocks; --hsm {hsm_mode}): never opened. On a filesystem without an HSM these are sparse files: rerun with --hsm none"
            ),
        )?;
    }
    let pct = if counts.bytes_total > 0 {
        100.0 * counts.bytes_relocated as f64 / counts.bytes_total as f64
    } else {
        100.0
    };
    w(
        &mut out,
        format!(
            "bytes   {} of {} relocated ({pct:.1}%){}",
            human_bytes(counts.bytes_relocated as f64),
            human_bytes(counts.bytes_total as f64),
            match eta {
                Some(e) => format!(", {}/s, ETA {:.0}s", human_bytes(rate), e),
                None => String::new(),
            }
        ),
    )?;
    let listing = |v: &[(String, i64)]| {
        v.iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    w(
        &mut out,
        match cut.as_of {
            None => "cutover not ready: no run has walked all of SOURCE yet".into(),
            Some((run, _)) if cut.ready() => {
                format!("cutover ready: DEST mirrors SOURCE (as of run {run}'s complete walk)")
            }
            Some((run, _)) => format!(
                "cutover not ready (as of run {run}): {}; list them with --list cutover",
                listing(&cut.differences)
            ),
        },
    )?;
    if !cut.not_carried.is_empty() {
        w(
            &mut out,
            format!(
                "        left in SOURCE, not carried over to DEST: {} (recreate by hand if needed)",
                listing(&cut.not_carried)
            ),
        )?;
    }
    if !reasons.is_empty() {
        w(&mut out, "why files are left (top reasons):".into())?;
        for (s, r, n) in reasons {
            w(&mut out, format!("  {n:>8}  {s:<10} {r}"))?;
        }
        w(
            &mut out,
            "list them with: evac status --journal J --list STATE".into(),
        )?;
    }
    Ok(0)
}

/// The last `evac fingerprint`'s counts for `status --json` (null if none has completed).
fn fingerprint_json(f: Option<&journal::fingerprint::FpRun>) -> String {
    match f {
        None => "null".into(),
        Some(f) => format!(
            "{{\"at\":{},\"leftovers\":{},\"exact\":{},\"probable\":{},\"weak\":{},\"none\":{},\"report\":{}}}",
            f.finished_at.unwrap_or(f.started_at),
            f.leftovers,
            f.exact,
            f.probable,
            f.weak,
            f.none,
            f.report
                .as_deref()
                .map(|r| json_str(&escape(r)))
                .unwrap_or_else(|| "null".into())
        ),
    }
}

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
    let mut out = std::io::stdout().lock();
    let res = if json {
        let ps = problems
            .iter()
            .map(|p| {
                format!(
                    "{{\"path\":{},\"problem\":{}}}",
                    json_str(&escape(&p.path)),
                    json_str(&p.what)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let notes = meta_changed
            .iter()
            .map(|p| {
                format!(
                    "{{\"path\":{},\"change\":{}}}",
                    json_str(&escape(&p.path)),
                    json_str(&p.what[META_CHANGED.len()..])
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        writeln!(
            out,
            "{{\"checked\":{checked},\"ok\":{},\"problems\":[{ps}],\"written_since\":{changed},\"metadata_changed\":[{notes}]}}",
            problems.is_empty()
        )
    } else {
        let mut r = Ok(());
        for p in &problems {
            r = r.and(writeln!(out, "PROBLEM {}: {}", quoted(&p.path), p.what));
        }
        for p in &meta_changed {
            r = r.and(writeln!(out, "NOTE {}: {}", quoted(&p.path), p.what));
        }
        r.and(writeln!(
            out,
            "verify: {checked} relocated files checked (content hash, size, mode, owner, mtime at DEST; link in SOURCE): {}{}",
            if problems.is_empty() { "all good".to_string() } else { format!("{} problems", problems.len()) },
            if changed > 0 {
                format!("; {changed} written through their links since relocation (links checked, content not comparable)")
            } else {
                String::new()
            },
        ).and(if meta_changed.is_empty() {
            Ok(())
        } else {
            writeln!(
                out,
                "verify: {} copies intact whose mode or owner users changed through their links since relocation (NOTE lines)",
                meta_changed.len()
            )
        }))
    };
    res.map_err(|e| Error::Setup(format!("write output: {e}")))?;
    Ok(if problems.is_empty() { 0 } else { 3 })
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

/// `evac holders`: the processes that still use SOURCE, one line each (tab-separated: pid,
/// user, command, what, path relative to SOURCE), or as JSON, or the held paths NUL-separated.
/// Exit 0 when nothing holds SOURCE, 3 when something does (like a run that left files).
pub fn holders(source: &Path, json: bool, null: bool) -> Result<i32> {
    let scan = crate::sys::proc::scan(source)?;
    let mut out = std::io::stdout().lock();
    let written = if json {
        let items = scan
            .holdings
            .iter()
            .map(|h| {
                format!(
                    "{{\"pid\":{},\"uid\":{},\"user\":{},\"command\":{},\"cmdline\":[{}],\"what\":{},\"mode\":{},\"path\":{},\"deleted\":{}}}",
                    h.pid,
                    h.uid.map(|u| u.to_string()).unwrap_or("null".into()),
                    json_str(&h.user),
                    json_str(&escape(&h.command)),
                    h.cmdline
                        .iter()
                        .map(|a| json_str(&escape(a)))
                        .collect::<Vec<_>>()
                        .join(","),
                    json_str(h.how.kind()),
                    h.how
                        .mode()
                        .map(|m| json_str(m.as_str()))
                        .unwrap_or("null".into()),
                    json_str(&escape(&h.path)),
                    h.deleted
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        writeln!(out, "[{items}]")
    } else if null {
        let paths: std::collections::BTreeSet<&[u8]> =
            scan.holdings.iter().map(|h| h.path.as_slice()).collect();
        paths
            .into_iter()
            .try_for_each(|p| out.write_all(p).and_then(|()| out.write_all(b"\0")))
    } else {
        scan.holdings.iter().try_for_each(|h| {
            writeln!(
                out,
                "{}\t{}\t{}\t{}{}\t{}",
                h.pid,
                h.user,
                escape(&h.command),
                h.how,
                if h.deleted { " (deleted)" } else { "" },
                escape(&h.path)
            )
        })
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Error::Setup(format!("write output: {e}")))?;
    let shown = quoted(scan.source.as_os_str().as_encoded_bytes());
    if !json && !null {
        match scan.processes() {
            0 => eprintln!("evac: no process uses anything under {shown}"),
            n => eprintln!(
                "evac: {n} process{} use{} {shown}",
                if n == 1 { "" } else { "es" },
                if n == 1 { "s" } else { "" }
            ),
        }
    }
    if scan.unreadable > 0 {
        eprintln!(
            "evac: note: {} process{} could not be inspected{}; they may use {shown} too",
            scan.unreadable,
            if scan.unreadable == 1 { "" } else { "es" },
            if fsx::is_root() {
                ""
            } else {
                " (not root: only your own processes can be)"
            }
        );
    }
    Ok(if scan.holdings.is_empty() { 0 } else { 3 })
}
