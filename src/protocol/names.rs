//! The names evac gives things: temporaries in SOURCE and DEST (they carry the journal's id and
//! the file's id, so recovery recognises its own and nothing else), the link's target, and the
//! dated trash at DEST.

use super::Ctx;
use crate::sys::fsx;
use crate::sys::steps::{self, Step};
use rustix::fd::AsFd;
use std::io;

fn trash_date_dir() -> Vec<u8> {
    format!(".evac-trash/{}", crate::util::time::today()).into_bytes()
}

/// A free name in today's trash for the copy that stood at `rel` (its relative path is kept, so
/// the operator can find it): `DEST/.evac-trash/YYYY-MM-DD/<rel>`, with `.~N~` if taken.
pub fn trash_name(ctx: &Ctx, rel: &[u8]) -> io::Result<Vec<u8>> {
    let base = fsx::join(&trash_date_dir(), rel);
    let (pd, name) = fsx::split_parent(&base);
    steps::at(Step::DestMkdir, rel);
    let dir = fsx::ensure_dir(ctx.dst_root.as_fd(), pd)?;
    for k in 0..10_000u32 {
        let mut n = name.to_vec();
        if k > 0 {
            n.extend_from_slice(format!(".~{k}~").as_bytes());
        }
        match fsx::stat_at(dir.as_fd(), &n) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(fsx::join(pd, &n)),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}
