//! Directories that tools own as a whole ("units"): version-control working trees and
//! repositories, told by their markers. Per-file links inside one break the tool that owns it
//! (git refuses a symlinked `HEAD`, reads `.gitignore` with O_NOFOLLOW, and `git commit -a`
//! records every linked file as a symlink), so the walk leaves a unit in place, whole, and
//! reports it, until whole-directory relocation is built.

use crate::sys::fsx;
use rustix::fd::BorrowedFd;
use rustix::fs::FileType;

/// What makes a directory a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// A git working tree (`.git` a directory, or a gitfile naming one elsewhere).
    Git,
    /// A bare git repository (`HEAD`, `objects/` and `refs/`).
    GitBare,
    /// A Mercurial working tree (`.hg/`).
    Mercurial,
    /// A Subversion working copy (`.svn/`).
    Subversion,
    /// A Bazaar branch or checkout (`.bzr/`).
    Bazaar,
    /// A darcs repository (`_darcs/`).
    Darcs,
    /// A CVS checkout (`CVS/` holding `Root`).
    Cvs,
}

impl UnitKind {
    /// How the operator reads it in `status` (and in the journal's record of the entry).
    pub fn describe(self) -> &'static str {
        match self {
            UnitKind::Git => "git working tree",
            UnitKind::GitBare => "bare git repository",
            UnitKind::Mercurial => "Mercurial working tree",
            UnitKind::Subversion => "Subversion working copy",
            UnitKind::Bazaar => "Bazaar branch",
            UnitKind::Darcs => "darcs repository",
            UnitKind::Cvs => "CVS checkout",
        }
    }
}

fn type_at(dir: BorrowedFd<'_>, name: &[u8]) -> Option<FileType> {
    fsx::stat_at(dir, name).ok().map(|s| fsx::file_type(&s))
}

/// Whether the directory open as `dir` is a unit, and of which kind. Its own entries only
/// (a handful of `fstatat` calls that fail fast on ordinary directories); never follows a
/// symlink.
pub fn unit_kind(dir: BorrowedFd<'_>) -> Option<UnitKind> {
    match type_at(dir, b".git") {
        Some(FileType::Directory) | Some(FileType::RegularFile) => return Some(UnitKind::Git),
        _ => {}
    }
    for (name, kind) in [
        (&b".hg"[..], UnitKind::Mercurial),
        (b".svn", UnitKind::Subversion),
        (b".bzr", UnitKind::Bazaar),
        (b"_darcs", UnitKind::Darcs),
    ] {
        if type_at(dir, name) == Some(FileType::Directory) {
            return Some(kind);
        }
    }
    if type_at(dir, b"CVS") == Some(FileType::Directory)
        && type_at(dir, b"CVS/Root") == Some(FileType::RegularFile)
    {
        return Some(UnitKind::Cvs);
    }
    if type_at(dir, b"HEAD") == Some(FileType::RegularFile)
        && type_at(dir, b"objects") == Some(FileType::Directory)
        && type_at(dir, b"refs") == Some(FileType::Directory)
    {
        return Some(UnitKind::GitBare);
    }
    None
}
