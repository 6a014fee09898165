//! The `evac` binary: parse the command line, call the library, turn errors into exit codes.

use clap::Parser as _;
use evac::cli::{Cli, Command};
use evac::engine::RunOpts;

/// The simulated HSM of `src/bin/evac-hsm-sim.rs`, also reachable as `evac hsm-sim …` so that
/// `evac demo` finds it in the binary it runs from.
#[path = "bin/evac-hsm-sim.rs"]
#[allow(dead_code)]
mod hsm_sim;

fn main() {
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("hsm-sim")) {
        let _ = args.next();
        let rest = args.skip(1);
        std::process::exit(hsm_sim::main_with(
            std::iter::once(std::ffi::OsString::from("evac hsm-sim")).chain(rest),
        ));
    }
    // Usage errors exit 1 like every other error (DESIGN.md exit codes), not clap's 2.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    evac::ui::install();
    let args_text = std::env::args_os()
        .skip(1)
        .map(|a| evac::util::escape::escape(a.as_encoded_bytes()))
        .collect::<Vec<_>>()
        .join(" ");
    let result = match cli.command {
        Command::Run(a) => evac::app::run::run(RunOpts {
            source: a.source,
            dest: a.dest,
            journal: a.journal,
            link_prefix: a.link_prefix,
            workers: a.workers,
            dry_run: a.dry_run,
            list: a.list,
            null: a.null,
            quiet: a.quiet,
            progress_interval: a.progress_interval,
            batch_files: a.batch_files,
            retry_rounds: a.retry_rounds,
            retry_delay: a.retry_delay,
            op_timeout: a.op_timeout,
            relocate_mapped: a.relocate_mapped,
            hsm: a.hsm,
            hsm_timeout: a.hsm_timeout,
            skip_walk: false,
            bwlimit: a.bwlimit,
            files_per_sec: a.files_per_sec,
            windows: a.window,
            exit_outside_window: a.exit_outside_window,
            governor: a.governor.settings(),
            governor_given: a.governor.entries(),
            governor_log: a.governor_log,
            args_text,
            stats: Default::default(),
        }),
        Command::Status(a) => {
            evac::app::status::status(&a.journal, a.json, a.list.as_deref(), a.null)
        }
        Command::Verify(a) => evac::app::verify::verify(&a.journal, a.json, a.workers),
        Command::Holders(a) => evac::app::verify::holders(&a.source, a.json, a.null),
        Command::Demo(a) => evac::app::demo::demo(a.dir, a.files),
        Command::Pause(a) => evac::app::status::control(&a.journal, &[("paused", "1".into())]),
        Command::Resume(a) => evac::app::status::control(&a.journal, &[("paused", "0".into())]),
        Command::Throttle(a) => {
            let mut v = Vec::new();
            if let Some(b) = a.bwlimit {
                v.push(("bwlimit", b));
            }
            if let Some(f) = a.files_per_sec {
                v.push(("files_per_sec", f.to_string()));
            }
            if let Some(n) = a.workers {
                v.push(("workers", n.to_string()));
            }
            v.extend(a.governor.entries());
            evac::app::status::control(&a.journal, &v)
        }
        Command::Stage(a) => evac::hsm::stage::stage(evac::hsm::stage::StageOpts {
            journal: a.journal,
            program: a.stage_cmd,
            drives: a.drives,
            tiers: a.tiers,
            stdin0: a.stdin0,
            stage_timeout: std::time::Duration::from_secs_f64(a.stage_timeout),
            budget: a.stage_budget,
            max_tries: a.max_tries.max(1),
            backoff: std::time::Duration::from_secs_f64(a.stage_backoff.max(0.0)),
            resident_wait: std::time::Duration::from_secs_f64(a.resident_wait.max(0.0)),
            batch_files: a.batch_files,
            workers: a.workers,
            retry_leftovers: a.retry_leftovers,
            quiet: a.quiet,
        }),
        Command::Fingerprint(a) => {
            evac::app::fingerprint::fingerprint(evac::app::fingerprint::FingerprintOpts {
                journal: a.journal,
                search: a.search,
                report: a.report,
                workers: a.workers,
                quiet: a.quiet,
                progress_interval: std::time::Duration::from_secs(a.progress_interval.max(1)),
                args_text,
            })
        }
        Command::Recover(a) => evac::app::recover::recover(evac::app::recover::RecoverOpts {
            journal: a.journal,
            path: a.path,
            from: a.from,
            all_exact: a.all_exact,
            force: a.force,
            workers: a.workers,
        }),
        Command::Hsm(evac::cli::HsmCommand::Import(a)) => match a.format.parse() {
            Ok(f) => evac::app::hsm::import(&a.journal, f, &a.listing, a.root.as_deref(), a.quiet),
            Err(e) => Err(evac::error::Error::Setup(e)),
        },
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            evac::ui::err(format!("evac: error: {e}"));
            std::process::exit(e.exit_code());
        }
    }
}
