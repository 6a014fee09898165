//! The `evac` binary: `evac::cli::main` does the work (and `evac hsm-sim` runs the simulator).

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
    std::process::exit(evac::cli::main());
}
