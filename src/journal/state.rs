//! A file's state and, for a file left behind, its cause: the per-file state machine's values as
//! types, stored as the short words the `files` table has always held (`migrations/0009_cause.sql`
//! refuses any other word), so that code and SQL never tell states or causes apart by prose.
//!
//! The transitions, and the record written before each effect, are drawn in `protocol`'s docs.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use std::fmt;

/// Where one regular file stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileState {
    /// Seen by a walk, to be relocated.
    Pending,
    /// Dispatched: a DEST temporary may exist.
    Copying,
    /// The DEST copy has its final name; the swap may be under way (its link recorded).
    Placed,
    /// The path is evac's link to a complete, durable copy; the original is gone or going.
    Relocated,
    /// Left for now (busy, changed, no room): a later run tries again.
    Deferred,
    /// An error that needs the operator.
    Failed,
    /// Not relocated on purpose (the reason says why).
    Skipped,
    /// No longer in SOURCE.
    Gone,
    /// An HSM stub: its data is on tape (phase 2 stages it).
    StagedOut,
}

impl FileState {
    pub const ALL: [FileState; 9] = [
        FileState::Pending,
        FileState::Copying,
        FileState::Placed,
        FileState::Relocated,
        FileState::Deferred,
        FileState::Failed,
        FileState::Skipped,
        FileState::Gone,
        FileState::StagedOut,
    ];

    /// The word the journal stores (and `status` shows).
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Copying => "copying",
            FileState::Placed => "placed",
            FileState::Relocated => "relocated",
            FileState::Deferred => "deferred",
            FileState::Failed => "failed",
            FileState::Skipped => "skipped",
            FileState::Gone => "gone",
            FileState::StagedOut => "staged_out",
        }
    }

    pub fn parse(s: &str) -> Option<FileState> {
        FileState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Between dispatch and a recorded relocation: recovery looks at it after a crash.
    pub fn in_flight(self) -> bool {
        matches!(self, FileState::Copying | FileState::Placed)
    }

    /// Still to be done by some run (what `status` counts as pending).
    pub fn unfinished(self) -> bool {
        matches!(
            self,
            FileState::Pending | FileState::Copying | FileState::Placed
        )
    }
}

/// Why a file was left behind: what the operator can do about it. The reason's text says the
/// particulars (which process, which error); the cause is what `status`, the retry rounds and
/// the cutover readiness group and choose by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// Open for writing, leased, mapped or running.
    Busy,
    /// Written, truncated, renamed or relinked while evac was copying or swapping it.
    Changed,
    /// DEST had no room (ENOSPC): no further copy is worth trying.
    DestFull,
    /// The owner's or project's quota at DEST (EDQUOT): other files may still fit.
    DestQuota,
    /// The kernel refuses to replace it (immutable, append-only).
    Refused,
    /// An HSM stub, or a file whose HSM state is unknown.
    Hsm,
    /// A hard-link group that crosses SOURCE's edge.
    HardLinks,
    /// A link into DEST that evac did not make.
    ForeignLink,
    /// A user's rename or replacement of a link that resync could not follow (yet).
    Renamed,
    /// An I/O or system error.
    Error,
    /// Phase 3: to be recovered from another copy, or a recovery that failed.
    Recovery,
    /// DEST has a file at the path that evac did not write.
    Conflict,
    /// Not tried: storage stopped answering during this run.
    Stalled,
    /// Its copy worker was given up on while blocked in storage: a DEST temporary may be left,
    /// which the next run removes before anything else.
    Abandoned,
    /// Not a regular file (a symlink evac did not make, a FIFO, a device, a mount point, a
    /// name reserved for evac's temporaries): left as it is.
    NotAFile,
}

impl Cause {
    pub const ALL: [Cause; 15] = [
        Cause::Busy,
        Cause::Changed,
        Cause::DestFull,
        Cause::DestQuota,
        Cause::Refused,
        Cause::Hsm,
        Cause::HardLinks,
        Cause::ForeignLink,
        Cause::Renamed,
        Cause::Error,
        Cause::Recovery,
        Cause::Conflict,
        Cause::Stalled,
        Cause::Abandoned,
        Cause::NotAFile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Busy => "busy",
            Cause::Changed => "changed",
            Cause::DestFull => "dest_full",
            Cause::DestQuota => "dest_quota",
            Cause::Refused => "refused",
            Cause::Hsm => "hsm",
            Cause::HardLinks => "hard_links",
            Cause::ForeignLink => "foreign_link",
            Cause::Renamed => "renamed",
            Cause::Error => "error",
            Cause::Recovery => "recovery",
            Cause::Conflict => "conflict",
            Cause::Stalled => "stalled",
            Cause::Abandoned => "abandoned",
            Cause::NotAFile => "not_a_file",
        }
    }

    pub fn parse(s: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A cause with the particulars the operator reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Why {
    pub cause: Cause,
    pub text: String,
}

impl Why {
    pub fn new(cause: Cause, text: impl Into<String>) -> Why {
        Why {
            cause,
            text: text.into(),
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

macro_rules! sql_word {
    ($t:ty) => {
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                <$t>::parse(s).ok_or_else(|| {
                    FromSqlError::Other(format!("not a {}: {s:?}", stringify!($t)).into())
                })
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
sql_word!(FileState);
sql_word!(Cause);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_match_the_migration() {
        let sql = include_str!("../../migrations/0009_cause.sql");
        for s in FileState::ALL {
            assert_eq!(FileState::parse(s.as_str()), Some(s));
            assert!(
                sql.contains(&format!("'{}'", s.as_str())),
                "{s} not allowed"
            );
        }
        for c in Cause::ALL {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
            assert!(
                sql.contains(&format!("'{}'", c.as_str())),
                "{c} not allowed"
            );
        }
        assert_eq!(FileState::parse("swapped"), None);
    }
}
