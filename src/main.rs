//! The `evac` binary: parse the command line, call the library, turn errors into exit codes.

use clap::Parser as _;
use evac::cli::Cli;

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
    let result = evac::cli::dispatch::dispatch(cli, args_text);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            evac::ui::err(format!("evac: error: {e}"));
            std::process::exit(e.exit_code());
        }
    }
}
