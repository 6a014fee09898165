//! Shared harness for evac's integration tests, split by concern:
//!
//! * `run`: the real binary, in the foreground with a timeout (`Out`) or in the background
//!   (`Bg`), and a test's workspace (`Env`);
//! * `status`: `evac status --json` and its counts, lists and waits;
//! * `json`: the JSON evac prints;
//! * `names`: escaping, awkward names, deterministic data;
//! * `dirfd`: directory handles, every call relative to a directory fd;
//! * `tree`: the deterministic tree builder;
//! * `manifest`: a tree's manifest and the differences between two;
//! * `oracle`: the relocation oracle and the suites' figures;
//! * `busy`: busy files and a run held while one keeps it from finishing;
//! * `gate`: which suites' tests may run at the same time in this one binary;
//! * `mounts`, `opens`: filesystems of a test's own, and counting opens with inotify;
//! * here: root detection and the skip macros.
//!
//! Every fd opened here is O_CLOEXEC: tests run in parallel threads and spawn
//! children, and an inherited write fd would make another test's file "busy".
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use json::Json;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `let _gate = suite_gate!();`, first in every test: waits until this test's suite may run
/// (see `gate`) and holds its place while the test runs.
macro_rules! suite_gate {
    () => {
        crate::common::gate::enter(module_path!())
    };
}

/// `skip!("test_name", "reason {}", x)`: print `SKIP test_name: reason` to stderr and return.
macro_rules! skip {
    ($test:expr, $($reason:tt)+) => {{
        eprintln!("SKIP {}: {}", $test, format!($($reason)+));
        return;
    }};
}

/// `skip_unless_root!("test_name", "it chowns files")`: when not root, print
/// `SKIP test_name: needs root because it chowns files` and return.
macro_rules! skip_unless_root {
    ($test:expr, $why:expr) => {
        if !crate::common::is_root() {
            eprintln!("SKIP {}: needs root because {}", $test, $why);
            return;
        }
    };
}

pub mod busy;
pub mod dirfd;
pub mod gate;
pub mod json;
pub mod manifest;
pub mod mounts;
pub mod names;
pub mod opens;
pub mod oracle;
pub mod run;
pub mod status;
pub mod tree;

pub use busy::*;
pub use dirfd::*;
pub use manifest::*;
pub use names::*;
pub use oracle::*;
pub use run::*;
pub use status::*;
pub use tree::*;
