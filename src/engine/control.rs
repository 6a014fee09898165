//! Commands from another terminal (`evac pause`, `resume`, `throttle`), read from the journal's
//! control table by a thread of the run's own, and the load governor's thread and its state for
//! `status`.

use super::*;

impl Runner {
    /// Commands from another terminal (`evac pause`, `resume`, `throttle`), read from the
    /// journal's control table by a thread with its own connection, which also runs the load
    /// governor four times a second. The command line's caps win over an earlier `evac
    /// throttle`; a pause lasts until resumed.
    pub(super) fn start_control(&mut self, done: Arc<AtomicBool>, workers: usize) -> Result<()> {
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
                        if d.change != crate::pace::governor::Change::None {
                            stats.note_decision(decided(&gov, &d));
                        }
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
                                crate::util::notice::say(format!(
                                    "evac: {}",
                                    if p {
                                        "paused (evac pause)"
                                    } else {
                                        "resumed (evac resume)"
                                    }
                                ));
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
}

/// Apply what changed in the control table's caps and targets (on the governor's thread).
pub(super) fn apply_controls(
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

/// A change of the governor's (fewer or more workers, or a share of the time), for the run log.
pub(super) fn decided(
    gov: &crate::pace::governor::Governor,
    d: &crate::pace::governor::Decision,
) -> crate::engine::stats::Decided {
    use crate::pace::governor::Change;
    let change = match d.change {
        Change::Down => "down",
        Change::Undo => "undo",
        Change::Up | Change::None => "up",
    };
    let duty = if d.duty < 1.0 {
        format!(" at {:.0}% of the time", d.duty * 100.0)
    } else {
        String::new()
    };
    let over = d.worst.as_ref().filter(|w| w.ratio() > 1.0);
    let why = match (&d.worst, over) {
        (_, Some(w)) => format!("limited by {}", w.describe()),
        (Some(w), None) => format!("highest {}", w.describe()),
        (None, None) => "nothing measured".into(),
    };
    let reading = |w: &crate::pace::governor::Reading| {
        serde_json::json!({
            "signal": w.signal.name(),
            "value": (w.value * 1000.0).round() / 1000.0,
            "target": w.target,
            "device": w.device,
        })
    };
    crate::engine::stats::Decided {
        at: crate::util::time::now(),
        message: format!(
            "governor {change}: {} of {} workers allowed{duty}; {why}",
            d.allowed,
            gov.max()
        ),
        fields: serde_json::json!({
            "change": change,
            "allowed": d.allowed,
            "max": gov.max(),
            "duty": (d.duty * 100.0).round() / 100.0,
            "limiting": over.map(reading),
            "highest": d.worst.as_ref().map(reading),
        })
        .to_string(),
    }
}

/// The governor's state for `status` (a line and a JSON object) and the progress display.
pub(super) struct GovState {
    line: String,
    json: String,
    short: String,
}

pub(super) fn governor_state(
    gov: &crate::pace::governor::Governor,
    d: &crate::pace::governor::Decision,
    active: usize,
    window: Option<&str>,
) -> GovState {
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
    let round = |v: f64, places: i32| {
        let k = 10f64.powi(places);
        (v * k).round() / k
    };
    let reading = |w: &crate::pace::governor::Reading| {
        serde_json::json!({
            "signal": w.signal.name(),
            "value": round(w.value, 3),
            "target": w.target,
            "device": w.device,
        })
    };
    let s = &gov.last_signals;
    let num = |v: Option<f64>| v.map(|v| round(v, 3));
    let json = serde_json::json!({
        "enabled": on,
        "paused": paused,
        "allowed": allowed,
        "max": gov.max(),
        "duty": round(d.duty, 2),
        "active": active,
        "bytes_per_sec": bps.round(),
        "files_per_sec": round(fps, 2),
        "limiting": over.map(reading),
        "highest": d.worst.as_ref().map(reading),
        "signals": {
            "load": num(s.load),
            "io_some": num(s.io_some),
            "io_full": num(s.io_full),
            "util": num(s.util.as_ref().map(|u| u.0)),
            "latency_ms": num(s.latency.as_ref().map(|u| u.0)),
        },
        "source": gov.sampler.source.describe(),
        "dest": gov.sampler.dest.describe(),
        "window": window,
    })
    .to_string();
    GovState { line, json, short }
}

/// "inside a window until HH:MM" / "outside the windows: …", for the run log and `status`.
pub(super) fn window_state(ws: &[crate::pace::throttle::Window]) -> String {
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
