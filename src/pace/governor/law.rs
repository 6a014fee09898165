//! The governor's law, pure: from the signals read and the targets, how many workers may be
//! active and at what duty; backs off at once, comes back slowly (unit-tested without a machine).

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Load,
    IoPressure,
    Util,
    Latency,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Load => "load",
            Signal::IoPressure => "io-pressure",
            Signal::Util => "util",
            Signal::Latency => "latency",
        }
    }

    /// Seconds after a change of the worker count before this signal shows its effect: the
    /// window it is averaged over, and a little.
    fn settle(self) -> f64 {
        match self {
            Signal::Load => LOAD_WINDOW + 0.5,
            _ => FAST_WINDOW + 0.5,
        }
    }

    pub fn fmt(self, v: f64) -> String {
        match self {
            Signal::Load => format!("{v:.2} per CPU"),
            Signal::IoPressure | Signal::Util => format!("{v:.0}%"),
            Signal::Latency => format!("{v:.1} ms"),
        }
    }
}

/// One measured signal against its target.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub signal: Signal,
    pub value: f64,
    pub target: f64,
    /// The disk it was measured on (util, latency).
    pub device: Option<String>,
}

impl Reading {
    pub fn ratio(&self) -> f64 {
        self.value / self.target
    }

    pub fn describe(&self) -> String {
        let on = self
            .device
            .as_deref()
            .map(|d| format!(" of {d}"))
            .unwrap_or_default();
        format!(
            "{}{on} {} (target {})",
            self.signal.name(),
            self.signal.fmt(self.value),
            self.signal.fmt(self.target)
        )
    }
}

/// The signals at one instant (None: not measurable here, or not yet).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    pub load: Option<f64>,
    pub io_some: Option<f64>,
    pub io_full: Option<f64>,
    pub util: Option<(f64, String)>,
    pub latency: Option<(f64, String)>,
}

impl Signals {
    pub fn readings(&self, t: &Targets) -> Vec<Reading> {
        let mut v = Vec::new();
        let mut add = |signal, value: Option<f64>, target: Option<f64>, device: Option<&String>| {
            if let (Some(value), Some(target)) = (value, target) {
                v.push(Reading {
                    signal,
                    value,
                    target,
                    device: device.cloned(),
                });
            }
        };
        add(Signal::Load, self.load, t.load, None);
        add(Signal::IoPressure, self.io_some, t.io_pressure, None);
        add(
            Signal::Util,
            self.util.as_ref().map(|u| u.0),
            t.util,
            self.util.as_ref().map(|u| &u.1),
        );
        add(
            Signal::Latency,
            self.latency.as_ref().map(|u| u.0),
            t.latency_ms,
            self.latency.as_ref().map(|u| &u.1),
        );
        v
    }

    /// The signal closest to (or furthest over) its target.
    pub fn worst(&self, t: &Targets) -> Option<Reading> {
        self.readings(t)
            .into_iter()
            .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
    }
}

/// Under this share of every target the governor may add a worker; between it and the target
/// it holds: the band that keeps a steady load from making it swing.
pub const HOLD: f64 = 0.85;
/// Seconds all signals must stay under HOLD before a worker is added.
pub const CALM: f64 = 2.0;
/// Longest wait before trying again a worker count that was once too many.
pub const MAX_PROBE_WAIT: f64 = 300.0;
/// Under this share of every target for CLEAR_FOR seconds, the load that forced a backoff is
/// taken to have gone, and the governor forgets where it was too many.
pub const CLEAR: f64 = 0.5;
pub const CLEAR_FOR: f64 = 30.0;
/// Below one worker, the one works at least this share of the time: evac always progresses.
pub const MIN_DUTY: f64 = 0.1;
pub(super) const DUTY_STEP: f64 = 0.1;

/// What the control law decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: usize,
    /// Below 1: the share of the time the single worker may work.
    pub duty: f64,
    /// The signal nearest or over its target.
    pub worst: Option<Reading>,
    pub change: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Down,
    /// A step up just made a signal go over: back to the count before it.
    Undo,
    Up,
}

/// The control law: additive increase, multiplicative decrease, with a hold band and a growing
/// wait before retrying a worker count that was too many.
pub struct Law {
    pub(super) max: usize,
    /// Workers when at least 1, else the duty of the one.
    pub(super) level: f64,
    pub(super) last_change: f64,
    /// When and from what level the last step up was made.
    pub(super) last_up: Option<(f64, f64)>,
    pub(super) calm_since: Option<f64>,
    pub(super) clear_since: Option<f64>,
    /// The lowest level that was too many, until the load that made it so is gone.
    pub(super) ceiling: Option<f64>,
    pub(super) probe_wait: f64,
}

impl Law {
    pub fn new(max: usize) -> Law {
        Law {
            max: max.max(1),
            level: max.max(1) as f64,
            last_change: f64::NEG_INFINITY,
            last_up: None,
            calm_since: None,
            clear_since: None,
            ceiling: None,
            probe_wait: CALM,
        }
    }

    /// A new cap from `evac throttle --workers` (the pool size at most).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        self.level = self.level.min(self.max as f64);
    }

    /// The current level (the tests follow the law through a trace).
    #[cfg(test)]
    pub fn level(&self) -> f64 {
        self.level
    }

    fn down(level: f64) -> f64 {
        if level > 1.0 {
            (level * 0.5).floor().max(1.0)
        } else {
            (level * 0.5).max(MIN_DUTY)
        }
    }

    fn up(&self) -> f64 {
        if self.level < 1.0 {
            (((self.level + DUTY_STEP) * 100.0).round() / 100.0).min(1.0)
        } else {
            (self.level.floor() + 1.0).min(self.max as f64)
        }
    }

    /// One step at time `t` (seconds, increasing) with the signals measured then.
    pub fn step(&mut self, t: f64, s: &Signals, targets: &Targets) -> Decision {
        let readings = s.readings(targets);
        let worst = readings
            .iter()
            .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
            .cloned();
        let ratio = worst.as_ref().map_or(0.0, Reading::ratio);
        let mut change = Change::None;
        if ratio > 1.0 {
            self.calm_since = None;
            self.clear_since = None;
            // A fast signal over its target shows the effect of a step sooner than the load
            // average does: go by the fastest of those over.
            let settle = readings
                .iter()
                .filter(|r| r.ratio() > 1.0)
                .map(|r| r.signal.settle())
                .fold(f64::INFINITY, f64::min);
            if t - self.last_change >= settle {
                match self.last_up {
                    // The last step up did it: back to the count before, and a longer wait
                    // before that count is tried again.
                    Some((at, before)) if t - at <= settle + CALM => {
                        self.ceiling = Some(self.level);
                        self.level = before.min(self.max as f64);
                        self.probe_wait = (self.probe_wait * 2.0).min(MAX_PROBE_WAIT);
                        change = Change::Undo;
                    }
                    _ => {
                        self.ceiling = Some(self.level);
                        self.level = Law::down(self.level);
                        change = Change::Down;
                    }
                }
                self.last_up = None;
                self.last_change = t;
            }
        } else if ratio < HOLD {
            let calm = *self.calm_since.get_or_insert(t);
            if ratio < CLEAR {
                let clear = *self.clear_since.get_or_insert(t);
                if t - clear >= CLEAR_FOR {
                    self.ceiling = None;
                    self.probe_wait = CALM;
                }
            } else {
                self.clear_since = None;
            }
            let next = self.up();
            if next > self.level {
                // Standing at or above the old ceiling since the last step: it holds now.
                if self.ceiling.is_some_and(|c| self.level >= c) {
                    self.ceiling = None;
                    self.probe_wait = CALM;
                }
                let wait = match self.ceiling {
                    Some(c) if next >= c => self.probe_wait,
                    _ => CALM,
                };
                if t - calm >= wait && t - self.last_change >= wait {
                    self.last_up = Some((t, self.level));
                    self.level = next;
                    self.last_change = t;
                    self.calm_since = Some(t);
                    change = Change::Up;
                }
            }
        } else {
            self.calm_since = None;
            self.clear_since = None;
        }
        Decision {
            allowed: if self.level >= 1.0 {
                self.level as usize
            } else {
                1
            },
            duty: self.level.min(1.0),
            worst,
            change,
        }
    }
}

/// Seconds the fast signals (pressure, disks) are averaged over.
pub(super) const FAST_WINDOW: f64 = 1.0;
/// Seconds the task count is averaged over: the kernel's load average reacts in a minute, too
/// slowly to steer by.
pub(super) const LOAD_WINDOW: f64 = 5.0;
