//! Reading the signals: load and I/O pressure from /proc, and the utilisation and latency of the
//! disks behind SOURCE and DEST from their counters.

use super::*;

/// Counters read at one instant.
pub(super) struct Raw {
    pub(super) t: f64,
    pub(super) some_us: Option<u64>,
    pub(super) full_us: Option<u64>,
    pub(super) tasks: Option<f64>,
    pub(super) disks: HashMap<String, Counters>,
}

/// /proc/pressure/io's cumulative stall microseconds (some, full).
pub(super) fn parse_psi(text: &str) -> (Option<u64>, Option<u64>) {
    let total = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
            .and_then(|v| v.parse().ok())
    };
    (total("some "), total("full "))
}

/// Tasks running or waiting for I/O now, from /proc/stat (less the one reading it).
pub(super) fn parse_tasks(text: &str) -> Option<f64> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((get("procs_running ")? + get("procs_blocked ")? - 1.0).max(0.0))
}

/// Reads the signals from /proc for the disks behind SOURCE and DEST.
pub struct Sampler {
    pub(super) roots: Roots,
    pub source: Backing,
    pub dest: Backing,
    pub(super) hist: VecDeque<Raw>,
    pub(super) cpus: f64,
    pub(super) start: Instant,
}

impl Sampler {
    pub fn new(roots: Roots, source: &Path, dest: &Path) -> Sampler {
        let source_b = disks::backing_of(&roots, source);
        let dest_b = disks::backing_of(&roots, dest);
        // SAFETY: sysconf has no memory effects.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
        Sampler {
            roots,
            source: source_b,
            dest: dest_b,
            hist: VecDeque::new(),
            cpus,
            start: Instant::now(),
        }
    }

    /// "SOURCE on vda, DEST on loop2+vda", for the run log.
    pub fn describe(&self) -> String {
        format!(
            "SOURCE on {}, DEST on {}",
            self.source.describe(),
            self.dest.describe()
        )
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Read the counters now and return the signals over their windows.
    pub fn sample(&mut self) -> Signals {
        let t = self.elapsed();
        let read = |p: &str| std::fs::read_to_string(self.roots.proc_.join(p)).ok();
        let (some_us, full_us) = read("pressure/io")
            .map(|s| parse_psi(&s))
            .unwrap_or((None, None));
        let tasks = read("stat").and_then(|s| parse_tasks(&s));
        let mut disks_now = HashMap::new();
        for b in [&self.source, &self.dest] {
            for (n, c) in disks::read(&self.roots, b) {
                disks_now.insert(n, c);
            }
        }
        self.hist.push_back(Raw {
            t,
            some_us,
            full_us,
            tasks,
            disks: disks_now,
        });
        while self
            .hist
            .front()
            .is_some_and(|r| t - r.t > LOAD_WINDOW + 1.0)
        {
            self.hist.pop_front();
        }
        self.signals()
    }

    fn signals(&self) -> Signals {
        let Some(now) = self.hist.back() else {
            return Signals::default();
        };
        // The latest sample at least FAST_WINDOW old, else the oldest there is.
        let then = self
            .hist
            .iter()
            .rev()
            .find(|r| now.t - r.t >= FAST_WINDOW)
            .or_else(|| self.hist.front().filter(|r| r.t < now.t));
        let mut s = Signals::default();
        let load: Vec<f64> = self
            .hist
            .iter()
            .filter(|r| now.t - r.t <= LOAD_WINDOW)
            .filter_map(|r| r.tasks)
            .collect();
        if !load.is_empty() {
            s.load = Some(load.iter().sum::<f64>() / load.len() as f64 / self.cpus);
        }
        let Some(then) = then else {
            return s;
        };
        let dt = now.t - then.t;
        let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if a >= b => Some(((a - b) as f64 / (dt * 1e6) * 100.0).min(100.0)),
            _ => None,
        };
        s.io_some = pct(now.some_us, then.some_us);
        s.io_full = pct(now.full_us, then.full_us);
        for (name, c) in &now.disks {
            let Some(p) = then.disks.get(name) else {
                continue;
            };
            if let (Some(a), Some(b)) = (c.busy_ms, p.busy_ms) {
                let u = (a.saturating_sub(b) as f64 / (dt * 1000.0) * 100.0).min(100.0);
                if s.util.as_ref().map_or(true, |x| u > x.0) {
                    s.util = Some((u, name.clone()));
                }
            }
            let ios = c.ios.saturating_sub(p.ios);
            let l = if ios > 0 {
                c.ticks_ms.saturating_sub(p.ticks_ms) as f64 / ios as f64
            } else {
                0.0
            };
            if s.latency.as_ref().map_or(true, |x| l > x.0) {
                s.latency = Some((l, name.clone()));
            }
        }
        s
    }
}
