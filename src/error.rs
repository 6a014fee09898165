//! Typed errors that name the operation and the (escaped) path they concern.

use std::path::PathBuf;

/// Every error evac reports: what it was doing, on what, and why.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A filesystem operation on one path failed.
    #[error("{op} {}: {source}", crate::util::escape::quoted(path))]
    Io {
        /// The operation, as a verb phrase ("open the SOURCE directory of").
        op: &'static str,
        /// The path, raw bytes (escaped when shown).
        path: Vec<u8>,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The journal could not be read or written.
    #[error("journal {}: {op}: {msg}", crate::util::escape::quoted(path.as_os_str().as_encoded_bytes()))]
    Journal {
        /// The journal's file.
        path: PathBuf,
        /// What evac was doing with it.
        op: &'static str,
        /// SQLite's message.
        msg: String,
    },
    /// The run cannot start: bad arguments, a journal that does not fit, and the like.
    #[error("{0}")]
    Setup(String),
    /// Another run holds the journal.
    #[error("journal {} is in use by another evac run (pid {pid}); wait for it or stop it", crate::util::escape::quoted(path.as_os_str().as_encoded_bytes()))]
    Locked {
        /// The journal's file.
        path: PathBuf,
        /// The process that holds it, as its lock file says.
        pid: String,
    },
}

/// evac's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failed filesystem operation on `path`.
    pub fn io(op: &'static str, path: &[u8], source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_vec(),
            source,
        }
    }

    /// The error without its path, for the journal's per-file reason (the row holds the path,
    /// and top-reason summaries must group equal causes together).
    pub fn reason(&self) -> String {
        match self {
            Error::Io { op, source, .. } => format!("{op}: {source}"),
            other => other.to_string(),
        }
    }

    /// Process exit code for this error (README, "Exit codes": 5 = journal held, 1 = everything else).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Locked { .. } => crate::util::exit::EXIT_LOCKED,
            _ => crate::util::exit::EXIT_ERROR,
        }
    }
}

/// Attach an operation and a path to an io::Result.
pub trait IoContext<T> {
    /// The error, if any, as an `Error::Io` naming `op` and `path`.
    fn ctx(self, op: &'static str, path: &[u8]) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &[u8]) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
