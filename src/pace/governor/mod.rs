//! The load governor: several times a second it reads the machine's load, its I/O pressure and
//! the utilisation and latency of the disks behind SOURCE and DEST, and sets how many copy
//! workers may be active (and, below one, what share of the time the last one may work), backing
//! off fast when a signal is over its target and coming back slowly when all are under.

use crate::sys::disks::{self, Backing, Counters, Roots};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod law;
mod record;
mod sampler;

pub use law::*;
pub use record::*;
pub use sampler::*;

/// What the governor keeps under: each `None` is not watched.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets {
    /// Runnable and I/O-waiting tasks per CPU.
    pub load: Option<f64>,
    /// Percent of the time some task waited for I/O (/proc/pressure/io "some").
    pub io_pressure: Option<f64>,
    /// Percent of the time a disk behind SOURCE or DEST was busy.
    pub util: Option<f64>,
    /// Average milliseconds an I/O request took on those disks.
    pub latency_ms: Option<f64>,
}

impl Default for Targets {
    fn default() -> Targets {
        Targets {
            load: Some(DEFAULT_LOAD),
            io_pressure: Some(DEFAULT_IO_PRESSURE),
            util: Some(DEFAULT_UTIL),
            latency_ms: Some(DEFAULT_LATENCY_MS),
        }
    }
}

pub const DEFAULT_LOAD: f64 = 2.0;
pub const DEFAULT_IO_PRESSURE: f64 = 60.0;
pub const DEFAULT_UTIL: f64 = 90.0;
pub const DEFAULT_LATENCY_MS: f64 = 50.0;

/// A target as given on the command line (`off`: not watched).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target(pub Option<f64>);

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        parse_target(s).map(Target)
    }
}

/// A target from the command line: a number, or `off`.
pub fn parse_target(s: &str) -> Result<Option<f64>, String> {
    let t = s.trim();
    if matches!(t, "off" | "none") {
        return Ok(None);
    }
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('%') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Some(v * scale)),
        _ => Err(format!("{s:?} is not a target above 0 (or `off`)")),
    }
}

/// The governor's options for a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    pub targets: Targets,
    /// Where to write every sample and decision (tab-separated), for the operator to look at
    /// and for the control law's tests to replay.
    pub log: Option<PathBuf>,
}

impl Settings {
    /// Apply one control-table entry (`governor`, `max_load`, ...); false if `key` is not the
    /// governor's or `value` does not parse.
    pub fn apply(&mut self, key: &str, value: &str) -> bool {
        let target = || parse_target(value).ok();
        match key {
            "governor" => match value {
                "on" => self.enabled = true,
                "off" => self.enabled = false,
                _ => return false,
            },
            "max_load" => match target() {
                Some(t) => self.targets.load = t,
                None => return false,
            },
            "max_io_pressure" => match target() {
                Some(t) => self.targets.io_pressure = t,
                None => return false,
            },
            "max_util" => match target() {
                Some(t) => self.targets.util = t,
                None => return false,
            },
            "max_latency" => match target() {
                Some(t) => self.targets.latency_ms = t,
                None => return false,
            },
            _ => return false,
        }
        true
    }

    /// "util 90%, latency 50.0 ms, ..." (the targets watched).
    pub fn describe_targets(&self) -> String {
        let t = &self.targets;
        let v: Vec<String> = [
            (Signal::Load, t.load),
            (Signal::IoPressure, t.io_pressure),
            (Signal::Util, t.util),
            (Signal::Latency, t.latency_ms),
        ]
        .iter()
        .filter_map(|(s, v)| v.map(|v| format!("{} {}", s.name(), s.fmt(v))))
        .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            // The test suites start evac with EVAC_TEST_GOVERNOR=off unless a test turns the
            // governor on: they load the machine themselves, and tests of other things must not
            // be slowed down by it. `--governor on` wins.
            enabled: std::env::var_os("EVAC_TEST_GOVERNOR").map_or(true, |v| v != "off"),
            targets: Targets::default(),
            log: None,
        }
    }
}

/// The governor of one run: the sampler, the law, the log, and the measured copy rate.
pub struct Governor {
    pub sampler: Sampler,
    law: Law,
    pub settings: Settings,
    pool: usize,
    log: Option<std::fs::File>,
    last: Option<(f64, u64, u64)>,
    rate: (f64, f64),
    pub last_signals: Signals,
}

impl Governor {
    pub fn new(settings: &Settings, pool: usize, source: &Path, dest: &Path) -> Governor {
        let log = settings.log.as_ref().and_then(|p| {
            let mut f = std::fs::File::create(p)
                .map_err(|e| {
                    crate::util::notice::say(format!(
                        "evac: governor log {}: {e}",
                        crate::util::escape::quoted(p.as_os_str().as_encoded_bytes())
                    ))
                })
                .ok()?;
            let _ = writeln!(f, "{LOG_HEADER}");
            Some(f)
        });
        Governor {
            sampler: Sampler::new(Roots::default(), source, dest),
            law: Law::new(pool),
            settings: settings.clone(),
            pool: pool.max(1),
            log,
            last: None,
            rate: (0.0, 0.0),
            last_signals: Signals::default(),
        }
    }

    /// `evac throttle --workers N` (0: the whole pool).
    pub fn set_max(&mut self, n: usize) {
        self.law
            .set_max(if n == 0 { self.pool } else { n.min(self.pool) });
    }

    pub fn max(&self) -> usize {
        self.law.max
    }

    /// One tick: sample, decide, log. `bytes` and `files` are the cumulative counts copied and
    /// started; `active` the workers copying now.
    pub fn tick(&mut self, bytes: u64, files: u64, active: usize) -> Decision {
        let s = self.sampler.sample();
        let t = self.sampler.elapsed();
        if let Some((t0, b0, f0)) = self.last {
            let dt = (t - t0).max(1e-3);
            let a = 0.3;
            self.rate.0 = (1.0 - a) * self.rate.0 + a * (bytes.saturating_sub(b0) as f64 / dt);
            self.rate.1 = (1.0 - a) * self.rate.1 + a * (files.saturating_sub(f0) as f64 / dt);
        }
        self.last = Some((t, bytes, files));
        let d = if self.settings.enabled {
            self.law.step(t, &s, &self.settings.targets)
        } else {
            Decision {
                allowed: self.law.max,
                duty: 1.0,
                worst: s.worst(&self.settings.targets),
                change: Change::None,
            }
        };
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{}", log_line(t, &s, &d, active, self.rate));
        }
        self.last_signals = s;
        d
    }

    pub fn rate(&self) -> (f64, f64) {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn util(v: f64) -> Signals {
        Signals {
            util: Some((v, "sda".into())),
            ..Default::default()
        }
    }

    /// Step the law every 0.25 s for `secs` with signals from `f(t, allowed, duty)`; the
    /// (time, allowed, duty) after each step.
    fn drive(
        law: &mut Law,
        t0: f64,
        secs: f64,
        targets: &Targets,
        mut f: impl FnMut(f64, usize, f64) -> Signals,
    ) -> Vec<(f64, usize, f64)> {
        let mut out = Vec::new();
        let (mut allowed, mut duty) = (law.level().max(1.0) as usize, law.level().min(1.0));
        let mut t = t0;
        while t < t0 + secs {
            let d = law.step(t, &f(t, allowed, duty), targets);
            allowed = d.allowed;
            duty = d.duty;
            out.push((t, allowed, duty));
            t += 0.25;
        }
        out
    }

    fn changes(v: &[(f64, usize, f64)]) -> usize {
        v.windows(2)
            .filter(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2))
            .count()
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("off"), Ok(None));
        assert_eq!(parse_target("2.5"), Ok(Some(2.5)));
        assert_eq!(parse_target("80%"), Ok(Some(80.0)));
        assert_eq!(parse_target("20ms"), Ok(Some(20.0)));
        assert_eq!(parse_target("0.1s"), Ok(Some(100.0)));
        assert!(parse_target("0").is_err());
        assert!(parse_target("fast").is_err());
    }

    #[test]
    fn a_step_over_target_halves_at_once_and_recovery_is_one_worker_at_a_time() {
        let t = Targets::default();
        let mut law = Law::new(16);
        // Quiet, then the disk jumps to 100% busy at t=10 s, then quiet again at t=30 s.
        let run = drive(&mut law, 0.0, 60.0, &t, |t, _, _| {
            util(if (10.0..30.0).contains(&t) {
                100.0
            } else {
                20.0
            })
        });
        let at = |x: f64| run.iter().rev().find(|r| r.0 <= x).unwrap();
        assert_eq!(at(9.75).1, 16, "full pool while quiet");
        assert_eq!(at(10.0).1, 8, "halved on the first sample over target");
        // Every FAST settle time it halves again, down to one worker and then the duty floor.
        assert_eq!(at(11.5).1, 4);
        assert_eq!(at(13.0).1, 2);
        assert_eq!(at(14.5).1, 1);
        assert_eq!(
            at(29.9).2,
            MIN_DUTY,
            "floor: one worker at {MIN_DUTY} of the time"
        );
        assert!(
            run.iter().all(|r| r.1 >= 1 && r.2 >= MIN_DUTY),
            "never below the floor"
        );
        // Recovery: one step per CALM seconds, never two at once.
        let rec: Vec<_> = run.iter().filter(|r| r.0 >= 30.0).collect();
        for w in rec.windows(2) {
            let (a, b) = (w[0], w[1]);
            let level = |r: &(f64, usize, f64)| if r.2 < 1.0 { r.2 } else { r.1 as f64 };
            let step = level(b) - level(a);
            assert!((0.0..=1.0 + 1e-9).contains(&step), "{a:?} -> {b:?}");
        }
        let ups = changes(
            &run.iter()
                .filter(|r| r.0 >= 30.0)
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(
            ups >= 9,
            "duty 0.1..1 then workers 1..: {ups} steps in 30 s"
        );
        assert!(
            run.last().unwrap().1 < 16,
            "slow: not back to 16 within 30 s"
        );
    }

    #[test]
    fn the_pool_size_caps_and_a_lower_cap_applies_at_once() {
        let t = Targets::default();
        let mut law = Law::new(4);
        let run = drive(&mut law, 0.0, 20.0, &t, |_, _, _| util(1.0));
        assert!(run.iter().all(|r| r.1 == 4));
        law.set_max(2);
        let run = drive(&mut law, 20.0, 10.0, &t, |_, _, _| util(1.0));
        assert!(run.iter().all(|r| r.1 == 2));
    }

    #[test]
    fn nothing_measured_means_full_pool() {
        let t = Targets::default();
        let mut law = Law::new(8);
        let run = drive(&mut law, 0.0, 10.0, &t, |_, _, _| Signals::default());
        assert!(run.iter().all(|r| r.1 == 8 && r.2 == 1.0));
    }

    /// A disk whose utilisation is an outside load plus what each evac worker adds: the law
    /// must settle and then keep still, not saw up and down.
    #[test]
    fn no_oscillation_on_a_steady_load() {
        let t = Targets::default();
        // 30% from others, 17% per worker: 3 workers give 81% (under target, in the hold band
        // from 76.5%), 4 give 98% (over). Hold band keeps 3.
        let mut law = Law::new(16);
        let run = drive(&mut law, 0.0, 600.0, &t, |_, w, d| {
            util(30.0 + 17.0 * w as f64 * d)
        });
        let settled: Vec<_> = run.iter().filter(|r| r.0 >= 60.0).cloned().collect();
        assert_eq!(changes(&settled), 0, "{:?}", &settled[..8]);
        assert_eq!(settled[0].1, 3);

        // 30% + 21% per worker: 2 give 72% (calm, under the band), 3 give 93% (over): the
        // classic sawtooth. The law must go back to 2 after each failed try of 3 and wait
        // twice as long each time before trying again.
        let mut law = Law::new(16);
        let run = drive(&mut law, 0.0, 1200.0, &t, |_, w, d| {
            util(30.0 + 21.0 * w as f64 * d)
        });
        let settled: Vec<_> = run.iter().filter(|r| r.0 >= 60.0).cloned().collect();
        assert!(
            settled.iter().all(|r| r.1 == 2 || r.1 == 3),
            "never lower than 2"
        );
        let tries = settled
            .windows(2)
            .filter(|w| w[0].1 == 2 && w[1].1 == 3)
            .count();
        // Waits 4, 8, ..., 256, then 300 s: about 9 tries in 1140 s instead of ~250.
        assert!(tries <= 10, "{tries} tries of 3 workers in 19 minutes");
        let at3: f64 = settled.iter().filter(|r| r.1 == 3).count() as f64 * 0.25;
        assert!(at3 < 60.0, "{at3} s spent over target");
    }

    #[test]
    fn noise_inside_the_hold_band_changes_nothing() {
        let t = Targets::default();
        let mut law = Law::new(6);
        let mut x: u64 = 12345;
        let run = drive(&mut law, 0.0, 300.0, &t, |_, _, _| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 78..89.9% busy: within the hold band of the 90% target.
            util(78.0 + ((x >> 33) % 119) as f64 / 10.0)
        });
        assert_eq!(changes(&run), 0);
    }

    #[test]
    fn a_slow_signal_is_not_backed_off_from_twice_before_it_can_show_the_first() {
        let targets = Targets::default();
        let mut law = Law::new(8);
        // Load over target for 3 s; it takes its LOAD window to show a change, so one halving.
        let run = drive(&mut law, 0.0, 3.0, &targets, |_, _, _| Signals {
            load: Some(3.0),
            ..Default::default()
        });
        assert_eq!(run.last().unwrap().1, 4);
    }

    #[test]
    fn the_limiting_signal_is_named() {
        let targets = Targets::default();
        let s = Signals {
            load: Some(1.0),
            io_some: Some(70.0),
            io_full: Some(10.0),
            util: Some((50.0, "sdb".into())),
            latency: Some((80.0, "sdb".into())),
        };
        let w = s.worst(&targets).unwrap();
        assert_eq!(w.signal, Signal::Latency);
        assert_eq!(w.describe(), "latency of sdb 80.0 ms (target 50.0 ms)");
        let off = Targets {
            latency_ms: None,
            ..targets
        };
        assert_eq!(s.worst(&off).unwrap().signal, Signal::IoPressure);
    }

    #[test]
    fn psi_and_stat_parse() {
        let psi = "some avg10=1.00 avg60=2.68 avg300=4.69 total=2467738553\n\
                   full avg10=0.00 avg60=1.90 avg300=3.15 total=1120870412\n";
        assert_eq!(parse_psi(psi), (Some(2467738553), Some(1120870412)));
        let stat = "cpu  1 2 3\nprocs_running 3\nprocs_blocked 2\n";
        assert_eq!(parse_tasks(stat), Some(4.0));
    }

    #[test]
    fn log_lines_replay() {
        let s = Signals {
            load: Some(0.5),
            io_some: Some(12.0),
            io_full: None,
            util: Some((40.0, "vda".into())),
            latency: Some((3.5, "vda".into())),
        };
        let d = Law::new(4).step(0.0, &s, &Targets::default());
        let l = log_line(1.5, &s, &d, 2, (1e6, 10.0));
        assert_eq!(LOG_HEADER.split('\t').count(), l.split('\t').count());
        assert_eq!(parse_log_line(&l), Some((1.5, s)));
    }

    /// A recorded trace: (time, signals) per tick.
    fn trace(text: &str) -> Vec<(f64, Signals)> {
        text.lines().filter_map(parse_log_line).collect()
    }

    /// Signals recorded on a real machine while evac copied flat out with the governor off
    /// (`--governor-log`, bench/governor.sh) and a reader measured its latency: replayed, the
    /// law must back off at the first sample over a target, keep halving while over, never go
    /// up while any signal is over, and never under one worker at MIN_DUTY.
    #[test]
    fn replay_of_a_recorded_full_speed_run() {
        let tr = trace(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/governor/full_speed.tsv"
        )));
        assert!(tr.len() > 50, "the trace has {} ticks", tr.len());
        let targets = Targets::default();
        let mut law = Law::new(8);
        let mut first_over = None;
        let mut first_down = None;
        let mut prev = (8usize, 1.0f64);
        for (t, s) in &tr {
            let over = s.readings(&targets).iter().any(|r| r.ratio() > 1.0);
            if over && first_over.is_none() {
                first_over = Some(*t);
            }
            let d = law.step(*t, s, &targets);
            if d.change == Change::Down && first_down.is_none() {
                first_down = Some(*t);
            }
            assert!(d.allowed >= 1 && d.duty >= MIN_DUTY);
            if over {
                assert!(
                    (d.allowed, d.duty) <= prev,
                    "went up at {t} while over: {prev:?} -> {:?}",
                    (d.allowed, d.duty)
                );
            }
            prev = (d.allowed, d.duty);
        }
        assert_eq!(
            first_down, first_over,
            "backs off on the first sample over target"
        );
        assert!(prev.0 < 8, "ends below the full pool: {prev:?}");
    }

    /// An idle machine, recorded: nothing changes, the whole pool stays allowed.
    #[test]
    fn replay_of_a_recorded_idle_machine() {
        let tr = trace(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/governor/idle.tsv"
        )));
        assert!(tr.len() > 100);
        let mut law = Law::new(8);
        for (t, s) in &tr {
            let d = law.step(*t, s, &Targets::default());
            assert_eq!(
                (d.allowed, d.duty, d.change),
                (8, 1.0, Change::None),
                "at {t}"
            );
        }
    }

    /// The recorded full-speed run, then the recorded idle machine: recovery is slow (one step
    /// per CALM) and reaches the full pool again.
    #[test]
    fn replay_of_load_then_quiet_recovers_slowly() {
        let busy = trace(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/governor/full_speed.tsv"
        )));
        let idle = trace(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/governor/idle.tsv"
        )));
        let targets = Targets::default();
        let mut law = Law::new(8);
        let mut t_end = 0.0;
        for (t, s) in &busy {
            law.step(*t, s, &targets);
            t_end = *t;
        }
        let low = law.level();
        assert!(low < 8.0);
        let mut ups = Vec::new();
        // The idle trace, looped to a minute.
        let mut t0 = t_end + 0.25;
        while t0 < t_end + 90.0 {
            for (t, s) in &idle {
                let d = law.step(t0 + t, s, &targets);
                if d.change == Change::Up {
                    ups.push(t0 + t);
                }
                assert_ne!(d.change, Change::Down);
            }
            t0 += idle.last().unwrap().0 + 0.25;
        }
        assert_eq!(law.level(), 8.0, "back to the full pool");
        for w in ups.windows(2) {
            assert!(w[1] - w[0] >= CALM - 1e-9, "steps {} s apart", w[1] - w[0]);
        }
    }
}
