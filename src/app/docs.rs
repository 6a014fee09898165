//! `evac completions` and `evac man`: shell completion scripts and manual pages, generated from
//! the command line's own definitions (handed over by `cli`), so that they cannot drift from
//! what evac accepts.

use crate::error::{Error, Result};
use crate::util::escape::quoted;
use std::path::Path;

/// The completion script for `shell`, on stdout. `cmd` is evac's command line as clap knows it.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> Result<i32> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "evac", &mut out);
    crate::ui::out_bytes(&out)?;
    Ok(0)
}

/// The manual page on stdout; with `out_dir`, `evac.1` and an `evac-SUBCOMMAND.1` per
/// subcommand (nested ones too: `evac-hsm-import.1`) written there.
pub fn man(cmd: clap::Command, out_dir: Option<&Path>) -> Result<i32> {
    match out_dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| Error::Setup(format!("render manual page: {e}")))?;
            crate::ui::out_bytes(&out)?;
        }
        Some(dir) => {
            let shown = dir.as_os_str().as_encoded_bytes();
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", shown, e))?;
            // clap names each subcommand's page after its path (evac-run, evac-hsm-import).
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| Error::io("write manual pages into", shown, e))?;
            crate::ui::err(format!(
                "evac: wrote the manual pages into {}",
                quoted(shown)
            ));
        }
    }
    Ok(0)
}
