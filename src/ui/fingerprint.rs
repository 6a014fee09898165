//! Progress of `evac fingerprint` for the operator: the workers count in atomics; one thread
//! draws an indexing line and a hashing bar (files and bytes read, rate) on a terminal, or
//! prints a plain line per interval otherwise, and prints messages above them. `--quiet`
//! leaves only the messages.

use crate::fingerprint::stats::Stats;
use crate::ui::progress::{Done, Ui};
use crate::util::units::human_bytes;
use crossbeam_channel::Receiver;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The indexing and hashing progress, drawn by its own thread until the returned Ui is
/// finished or dropped.
pub fn start(stats: Arc<Stats>, quiet: bool, interval: Duration) -> Ui {
    let tty = std::io::stderr().is_terminal();
    Ui::spawn("evac-fp-progress", move |rx, done| {
        draw(stats, rx, done, quiet, tty, interval)
    })
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn index_line(s: &Stats) -> String {
    format!(
        "{} dirs, {} files ({}), {} of a leftover's size{}",
        Stats::get(&s.dirs),
        Stats::get(&s.files),
        human_bytes(Stats::get(&s.bytes) as f64),
        Stats::get(&s.candidates),
        match Stats::get(&s.errors) {
            0 => String::new(),
            n => format!(", {n} errors"),
        }
    )
}

fn draw(
    stats: Arc<Stats>,
    rx: Receiver<String>,
    done: Arc<Done>,
    quiet: bool,
    tty: bool,
    interval: Duration,
) {
    let bars = (tty && !quiet).then(|| {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let index = mp.add(ProgressBar::new_spinner());
        index.set_style(style("{prefix:>8} {spinner} {msg}"));
        index.set_prefix("index");
        let hash = mp.add(ProgressBar::new(0));
        hash.set_style(style("{prefix:>8} [{bar:30}] {pos}/{len} files, {msg}"));
        hash.set_prefix("hash");
        (mp, index, hash)
    });
    let mut last_line = Instant::now();
    let mut hashing_since: Option<Instant> = None;
    loop {
        let finished = done.is_set();
        while let Ok(line) = rx.try_recv() {
            match &bars {
                Some((mp, _, _)) => {
                    let _ = mp.println(&line);
                }
                None => eprintln!("evac: {line}"),
            }
        }
        let indexed = stats.indexed.load(Ordering::Relaxed);
        if indexed && hashing_since.is_none() {
            hashing_since = Some(Instant::now());
        }
        let rate = |rb: u64| {
            let el = hashing_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            human_bytes(if el > 0.0 { rb as f64 / el } else { 0.0 })
        };
        let (read, to_read) = (Stats::get(&stats.done), Stats::get(&stats.to_read));
        let (rb, trb) = (
            Stats::get(&stats.read_bytes),
            Stats::get(&stats.to_read_bytes),
        );
        if let Some((_, index, hash)) = &bars {
            index.set_message(format!(
                "{}{}",
                index_line(&stats),
                if indexed { " — done" } else { "" }
            ));
            index.tick();
            hash.set_length(to_read);
            hash.set_position(read);
            // The rate is of bytes (what the disks see), not of files.
            hash.set_message(format!(
                "{}/{}, {}/s",
                human_bytes(rb as f64),
                human_bytes(trb as f64),
                rate(rb)
            ));
        } else if !quiet && !finished && last_line.elapsed() >= interval {
            if indexed {
                eprintln!(
                    "evac: fingerprint: hashing {read}/{to_read} files, {}/{}, {}/s",
                    human_bytes(rb as f64),
                    human_bytes(trb as f64),
                    rate(rb)
                );
            } else {
                eprintln!("evac: fingerprint: indexing {}", index_line(&stats));
            }
            last_line = Instant::now();
        }
        if finished {
            if let Some((mp, index, hash)) = &bars {
                crate::ui::progress::clear_bars(mp, &[index, hash]);
            }
            return;
        }
        done.wait(Duration::from_millis(100));
    }
}

/// The summary `evac fingerprint` ends with, on stdout, and where its report went.
pub fn show_results(summary: &str, report: Option<&[u8]>) {
    super::out(summary.trim_end_matches('\n'));
    if let Some(p) = report {
        super::out(format!("report: {}", crate::util::escape::quoted(p)));
    }
}
