//! What the governor leaves for others: its state for `evac status` (one file per journal, in
//! memory) and its log lines, which benchmarks read back.

use super::*;

/// Where a run keeps its governor's state for `status`: in memory (/dev/shm), by journal id, not
/// in the journal nor beside it. A write to the journal every second contends with the run's
/// own commits, and a file on the old server's disks is I/O a user's open() of a leased file can
/// end up waiting behind.
pub fn state_path(journal_id: &str) -> PathBuf {
    let dir = ["/dev/shm", "/run"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("evac-{journal_id}.governor"))
}

/// Replace the state file (a line for `status`, then a JSON object), atomically.
pub fn write_state(journal_id: &str, line: &str, json: &str) {
    let p = state_path(journal_id);
    let mut tmp = p.clone().into_os_string();
    tmp.push(".tmp");
    if std::fs::write(&tmp, format!("{line}\n{json}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, &p);
    }
}

/// The state a running evac wrote: (line, JSON).
pub fn read_state(journal_id: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(state_path(journal_id)).ok()?;
    let mut it = text.lines();
    Some((it.next()?.to_string(), it.next()?.to_string()))
}

pub fn clear_state(journal_id: &str) {
    let _ = std::fs::remove_file(state_path(journal_id));
}

/// The header of a governor log; each later line is one tick.
pub const LOG_HEADER: &str = "t\tload\tio_some\tio_full\tutil\tutil_dev\tlatency_ms\tlatency_dev\tallowed\tduty\tactive\tlimiting\tbytes_per_s\tfiles_per_s";

pub(super) fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

/// One log line: the signals, then what was decided and done.
pub fn log_line(t: f64, s: &Signals, d: &Decision, active: usize, rate: (f64, f64)) -> String {
    let dev = |x: &Option<(f64, String)>| x.as_ref().map_or("-".into(), |x| x.1.clone());
    format!(
        "{t:.3}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.2}\t{active}\t{}\t{:.0}\t{:.1}",
        opt(s.load),
        opt(s.io_some),
        opt(s.io_full),
        opt(s.util.as_ref().map(|u| u.0)),
        dev(&s.util),
        opt(s.latency.as_ref().map(|u| u.0)),
        dev(&s.latency),
        d.allowed,
        d.duty,
        match &d.worst {
            Some(w) if w.ratio() > 1.0 => w.signal.name(),
            _ => "-",
        },
        rate.0,
        rate.1,
    )
}

/// The time and signals of one log line (the tests replay recorded traces).
#[cfg(test)]
pub fn parse_log_line(l: &str) -> Option<(f64, Signals)> {
    let f: Vec<&str> = l.split('\t').collect();
    if f.len() < 8 || f[0] == "t" {
        return None;
    }
    let num = |i: usize| f[i].parse::<f64>().ok();
    let with = |i: usize, d: usize| num(i).map(|v| (v, f[d].to_string()));
    Some((
        num(0)?,
        Signals {
            load: num(1),
            io_some: num(2),
            io_full: num(3),
            util: with(4, 5),
            latency: with(6, 7),
        },
    ))
}
