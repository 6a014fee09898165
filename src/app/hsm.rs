//! `evac hsm import`: load an HSM's listing into the journal and say what was imported.

use crate::error::Result;
use crate::hsm::import::{self, Format};
use std::path::Path;

pub fn import(
    journal: &Path,
    format: Format,
    listing: &Path,
    root: Option<&Path>,
    quiet: bool,
) -> Result<i32> {
    let summary = import::import(journal, format, listing, root, quiet)?;
    crate::ui::out(summary);
    Ok(crate::util::exit::EXIT_OK)
}
