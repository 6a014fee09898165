//! From the command line's arguments (as clap parsed them) to each command's typed options, and
//! the call of the command: the binary's `main` only parses, installs the terminal and exits with
//! what this returns.

use super::{Cli, Command, HsmCommand};
use crate::engine::RunOpts;
use crate::error::{Error, Result};
use crate::util::escape::quoted;
use crate::util::filter::{self, Filters};
use clap::{error::ErrorKind, Parser as _};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The whole command line, from the process's arguments to its exit status: parse, install
/// the terminal, run the command, and turn an error into its message and exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Usage errors exit 1 like every other error (README "Exit codes"), not clap's 2;
            // --help and --version are answers, not errors: stdout, exit 0.
            let text = e.render().to_string();
            return if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                crate::ui::out(text.trim_end());
                0
            } else {
                crate::ui::err(text.trim_end());
                1
            };
        }
    };
    crate::ui::install();
    let args_text = std::env::args_os()
        .skip(1)
        .map(|a| crate::util::escape::escape(a.as_encoded_bytes()))
        .collect::<Vec<_>>()
        .join(" ");
    match dispatch(cli, args_text) {
        Ok(code) => code,
        Err(e) => {
            crate::ui::err(format!("evac: error: {e}"));
            e.exit_code()
        }
    }
}

/// `--exclude` and `--exclude-from` as one checked set of patterns (None when neither is given:
/// a resume then uses the journal's). A pattern that cannot be used, or a list that cannot be
/// read, stops the run before it starts.
fn exclude_filters(
    given: &[std::ffi::OsString],
    files: &[PathBuf],
    from0: bool,
) -> Result<Option<Filters>> {
    if given.is_empty() && files.is_empty() {
        return Ok(None);
    }
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    for g in given {
        let g = g.as_bytes().to_vec();
        Filters::new(&[&g]).map_err(|e| Error::Setup(format!("--exclude: {e}")))?;
        patterns.push(g);
    }
    for f in files {
        let name = f.as_os_str().as_bytes();
        let data = if name == b"-" {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)
                .map_err(|e| Error::io("read --exclude-from", b"-", e))?;
            v
        } else {
            std::fs::read(f).map_err(|e| Error::io("read --exclude-from", name, e))?
        };
        for p in filter::read_list(&data, from0) {
            Filters::new(&[&p])
                .map_err(|e| Error::Setup(format!("--exclude-from {}: {e}", quoted(name))))?;
            patterns.push(p);
        }
    }
    // The same pattern twice (also once with rsync's `- ` before it) is one rule.
    let mut patterns = Filters::new(&patterns)
        .map_err(|e| Error::Setup(e.to_string()))?
        .patterns();
    let mut seen = std::collections::HashSet::new();
    patterns.retain(|p| seen.insert(p.clone()));
    Filters::new(&patterns)
        .map(Some)
        .map_err(|e| Error::Setup(e.to_string()))
}

/// Run the command `cli` names. `args_text` is the command line as the journal records it.
pub fn dispatch(cli: Cli, args_text: String) -> Result<i32> {
    match cli.command {
        Command::Run(a) => {
            let a = *a;
            crate::app::run::run(
                RunOpts {
                    exclude: exclude_filters(&a.exclude, &a.exclude_from, a.from0)?,
                    no_default_units: a.no_default_units,
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
                a.metrics_file.map(|f| (f, a.metrics_interval)),
                a.log_json,
            )
        }
        Command::Status(a) => {
            use crate::app::status::Format;
            let format = match a.json {
                true => Format::Json,
                false => a.format.unwrap_or(Format::Text),
            };
            crate::app::status::status(&a.journal, format, a.list, a.null)
        }
        Command::Events(a) => {
            crate::app::events::events(&a.journal, a.since.as_deref(), a.follow, a.json)
        }
        Command::Report(a) => crate::app::report::report(&a.journal, &a.out),
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
            stage_timeout: a.stage_timeout,
            budget: a.stage_budget,
            max_tries: a.max_tries.max(1),
            backoff: a.stage_backoff,
            resident_wait: a.resident_wait,
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
                progress_interval: a.progress_interval,
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
        Command::Hsm(HsmCommand::Import(a)) => {
            crate::app::hsm::import(&a.journal, a.format, &a.listing, a.root.as_deref(), a.quiet)
        }
    }
}
