//! Progress for the operator: the core counts in atomics; one thread draws indicatif bars on a
//! terminal, or prints a plain line per interval otherwise, and prints the core's messages.

use crate::engine::stats::Stats;
use crate::util::units::human_bytes;
use crossbeam_channel::{Receiver, Sender};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Ui {
    tx: Sender<String>,
    done: Arc<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The flag that says the display is over, with a wait that ends as soon as it is set: a run's
/// exit must not wait out a drawing thread's sleep (short runs, such as a resume with little
/// left, are most of their time in that sleep otherwise).
#[derive(Default)]
pub struct Done {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    pub fn is_set(&self) -> bool {
        self.set.lock().map(|g| *g).unwrap_or(true)
    }

    fn set(&self) {
        if let Ok(mut g) = self.set.lock() {
            *g = true;
        }
        self.cv.notify_all();
    }

    /// Wait up to `d`, or until set.
    pub fn wait(&self, d: Duration) {
        if let Ok(g) = self.set.lock() {
            let _ = self.cv.wait_timeout_while(g, d, |set| !*set);
        }
    }
}

/// Finish the bars and take them off the terminal (the summary lines that follow stand alone).
pub fn clear_bars(mp: &MultiProgress, bars: &[&ProgressBar]) {
    for b in bars {
        b.finish();
    }
    let _ = mp.clear();
}

impl Ui {
    pub fn start(stats: Arc<Stats>, quiet: bool, interval: Duration) -> Ui {
        let tty = std::io::stderr().is_terminal();
        Ui::spawn("evac-progress", move |rx, done| {
            draw(stats, rx, done, quiet, tty, interval)
        })
    }

    /// A drawing thread: `draw` gets the operator's messages and the flag that says it is over
    /// (set by `finish`, or when the Ui is dropped).
    pub fn spawn(
        name: &str,
        draw: impl FnOnce(Receiver<String>, Arc<Done>) + Send + 'static,
    ) -> Ui {
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        let done = Arc::new(Done::default());
        let d2 = done.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || draw(rx, d2))
            .ok();
        // Notices from the core go above the bars while this draws.
        super::set_drawing(Some(tx.clone()));
        Ui { tx, done, thread }
    }

    pub fn sender(&self) -> Sender<String> {
        self.tx.clone()
    }

    pub fn finish(self) {}
}

impl Drop for Ui {
    fn drop(&mut self) {
        super::set_drawing(None);
        self.done.set();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn draw(
    stats: Arc<Stats>,
    rx: Receiver<String>,
    done: Arc<Done>,
    quiet: bool,
    tty: bool,
    interval: Duration,
) {
    let start = Instant::now();
    let bars = if tty && !quiet {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let files = mp.add(ProgressBar::new(0));
        files.set_style(
            ProgressStyle::with_template("{prefix:>6} [{bar:40}] {pos}/{len} files {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        files.set_prefix("files");
        let bytes = mp.add(ProgressBar::new(0));
        bytes.set_style(
            ProgressStyle::with_template(
                "{prefix:>6} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bytes.set_prefix("bytes");
        Some((mp, files, bytes))
    } else {
        None
    };
    let mut last_line = Instant::now();
    loop {
        let finished = done.is_set();
        while let Ok(line) = rx.try_recv() {
            match &bars {
                Some((mp, _, _)) => {
                    let _ = mp.println(&line);
                }
                None => eprintln!("{line}"),
            }
        }
        let seen = get(&stats.files_seen);
        let bseen = get(&stats.bytes_seen);
        let fdone = get(&stats.files_done);
        let bdone = get(&stats.bytes_done);
        let walking = if stats.walk_done.load(Ordering::Relaxed) {
            ""
        } else {
            " (still counting)"
        };
        let gov = stats
            .governor
            .lock()
            .map(|g| {
                if g.is_empty() {
                    String::new()
                } else {
                    format!(" {g}")
                }
            })
            .unwrap_or_default();
        let busy = format!(
            "workers {}/{}{gov} deferred {} failed {}",
            get(&stats.busy_workers),
            get(&stats.workers),
            get(&stats.deferred),
            get(&stats.failed)
        );
        if let Some((_, f, b)) = &bars {
            f.set_length(seen);
            f.set_position(fdone);
            f.set_message(format!("{busy}{walking}"));
            b.set_length(bseen);
            b.set_position(bdone);
        } else if !quiet && !finished && last_line.elapsed() >= interval {
            let el = start.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "evac: {fdone}/{seen} files, {}/{}{walking}, {}/s, {busy}",
                human_bytes(bdone as f64),
                human_bytes(bseen as f64),
                human_bytes(bdone as f64 / el)
            );
            last_line = Instant::now();
        }
        if finished {
            if let Some((mp, f, b)) = &bars {
                clear_bars(mp, &[f, b]);
            }
            return;
        }
        done.wait(Duration::from_millis(100));
    }
}
