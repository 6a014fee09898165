//! Typed errors that name the operation and the (escaped) path they concern.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A filesystem operation on one path failed.
    #[error("{op} {}: {source}", crate::util::escape::quoted(path))]
    Io {
        op: &'static str,
        path: Vec<u8>,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {}: {op}: {msg}", crate::util::escape::quoted(path.as_os_str().as_encoded_bytes()))]
    Journal {
        path: PathBuf,
        op: &'static str,
        msg: String,
    },
    /// The run cannot start: bad arguments, a journal that does not fit, and the like.
    #[error("{0}")]
    Setup(String),
    /// Another run holds the journal.
    #[error("journal {} is in use by another evac run (pid {pid}); wait for it or stop it", crate::util::escape::quoted(path.as_os_str().as_encoded_bytes()))]
    Locked { path: PathBuf, pid: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
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

    /// Process exit code for this error (DESIGN.md: 5 = journal held, 1 = everything else).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Locked { .. } => 5,
            _ => 1,
        }
    }
}

/// Attach an operation and a path to an io::Result.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &[u8]) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &[u8]) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
