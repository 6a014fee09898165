//! Which suites' tests may run at the same time, now that every suite is a module of one test
//! binary and all of them share one process and one pool of test threads.
//!
//! When each suite was a binary of its own, cargo ran the binaries one after another, so a test
//! only ever ran beside tests of its own suite. The suites in [`ALONE`] depend on that: they
//! measure time (writers' `open()` latencies, throttled rates, the governor's reactions, watchdog
//! deadlines) or load the machine for minutes (the enumeration, loop-mounted power cuts). Every
//! test enters the gate first (`let _gate = suite_gate!();`): a test of a suite in [`ALONE`]
//! runs only beside tests of that same suite, as before; the other suites' tests run beside one
//! another, and never beside a test of a suite in [`ALONE`]. Exclusivity inside a suite (such as
//! `swap_race`'s `heavy()` or `live_users`' `SERIAL`) is the suite's own, as before.

use std::sync::{Condvar, Mutex, MutexGuard};

/// The suites whose tests run only beside tests of the same suite.
pub const ALONE: &[&str] = &[
    "enumerate",
    "failing_storage",
    "governor",
    "live_users",
    "power_loss",
    "swap_race",
    "throttle",
];

/// Who holds the gate: nobody, tests of the shared suites, or tests of one suite in [`ALONE`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Holders {
    Nobody,
    Shared,
    Alone(&'static str),
}

struct State {
    holders: Holders,
    count: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    holders: Holders::Nobody,
    count: 0,
});
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, State> {
    // A test that panics holds no lock on STATE (it is taken only inside enter and drop).
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A test's place in the gate, given back when the test ends (passing or panicking).
#[must_use = "the gate is held only while this lives"]
pub struct Entered(());

/// Waits until a test of the suite `module` (a `module_path!()` such as `it::swap_race`, or the
/// suite's own name) may run, and holds the gate for it while the returned value lives.
pub fn enter(module: &str) -> Entered {
    let suite = module.split("::").nth(1).unwrap_or(module);
    let want = match ALONE.iter().find(|s| **s == suite) {
        Some(s) => Holders::Alone(s),
        None => Holders::Shared,
    };
    let mut st = lock();
    while !(st.holders == Holders::Nobody || st.holders == want) {
        st = CHANGED.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    st.holders = want;
    st.count += 1;
    Entered(())
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut st = lock();
        st.count -= 1;
        if st.count == 0 {
            st.holders = Holders::Nobody;
            CHANGED.notify_all();
        }
    }
}
