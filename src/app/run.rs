//! `evac run`: the engine's run with the terminal's progress display around it.

use crate::engine::{self, RunOpts};
use crate::error::Result;
use crate::ui::progress::Ui;
use std::time::Duration;

/// Run (or resume) a relocation, drawing its progress on the terminal.
pub fn run(o: RunOpts) -> Result<i32> {
    // Before any other thread exists: the signal mask is inherited.
    crate::sys::signals::process()
        .map_err(|e| crate::error::Error::Setup(format!("set up signal handling: {e}")))?;
    if o.dry_run {
        let mut list = crate::ui::status::PathList::new(o.null);
        let code = engine::dryrun::dry_run(&o, &mut |p| list.item(p, None))?;
        // As while listing: a reader that went away (`| head`) ends the list, not the count.
        let _ = list.done();
        return Ok(code);
    }
    let ui = Ui::start(
        o.stats.clone(),
        o.quiet,
        Duration::from_secs(o.progress_interval.max(1)),
    );
    let r = engine::run(o);
    drop(ui);
    r
}
