//! From the command line's arguments (as clap parsed them) to each command's typed options, and
//! the call of the command: the binary's `main` only parses, installs the terminal and exits with
//! what this returns.

use super::{Cli, Command, HsmCommand, StatusFormat};
use crate::engine::RunOpts;
use crate::error::Result;

/// Run the command `cli` names. `args_text` is the command line as the journal records it.
pub fn dispatch(cli: Cli, args_text: String) -> Result<i32> {
    match cli.command {
        Command::Run(a) => crate::app::run::run(
            RunOpts {
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
            },
            a.metrics_file
                .map(|f| (f, std::time::Duration::from_secs_f64(a.metrics_interval))),
        ),
        Command::Status(a) => {
            use crate::app::status::Format;
            let format = match (a.json, a.format) {
                (true, _) | (_, Some(StatusFormat::Json)) => Format::Json,
                (_, Some(StatusFormat::Prometheus)) => Format::Prometheus,
                _ => Format::Text,
            };
            crate::app::status::status(&a.journal, format, a.list.as_deref(), a.null)
        }
        Command::Verify(a) => crate::app::verify::verify(&a.journal, a.json, a.workers),
        Command::Holders(a) => crate::app::verify::holders(&a.source, a.json, a.null),
        Command::Demo(a) => crate::app::demo::demo(a.dir, a.files),
        Command::Pause(a) => crate::app::status::control(&a.journal, &[("paused", "1".into())]),
        Command::Resume(a) => crate::app::status::control(&a.journal, &[("paused", "0".into())]),
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
            crate::app::status::control(&a.journal, &v)
        }
        Command::Stage(a) => crate::hsm::stage::stage(crate::hsm::stage::StageOpts {
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
            crate::app::fingerprint::fingerprint(crate::app::fingerprint::FingerprintOpts {
                journal: a.journal,
                search: a.search,
                report: a.report,
                workers: a.workers,
                quiet: a.quiet,
                progress_interval: std::time::Duration::from_secs(a.progress_interval.max(1)),
                args_text,
            })
        }
        Command::Recover(a) => crate::app::recover::recover(crate::app::recover::RecoverOpts {
            journal: a.journal,
            path: a.path,
            from: a.from,
            all_exact: a.all_exact,
            force: a.force,
            workers: a.workers,
        }),
        Command::Rescue(a) => crate::app::rescue::rescue(&crate::app::rescue::RescueOpts {
            source: a.source,
            to: a.to,
            journal: a.journal,
            json: a.json,
        }),
        Command::Completions(a) => {
            crate::app::docs::completions(<super::Cli as clap::CommandFactory>::command(), a.shell)
        }
        Command::Man(a) => crate::app::docs::man(
            <super::Cli as clap::CommandFactory>::command(),
            a.out_dir.as_deref(),
        ),
        Command::Hsm(HsmCommand::Import(a)) => match a.format.parse() {
            Ok(f) => crate::app::hsm::import(&a.journal, f, &a.listing, a.root.as_deref(), a.quiet),
            Err(e) => Err(crate::error::Error::Setup(e)),
        },
    }
}
