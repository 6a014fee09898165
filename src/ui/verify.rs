//! What `evac verify` shows: the findings it builds about each relocated file, as values, and
//! their rendering as text (PROBLEM and NOTE lines, then the summary) or as one JSON object.

use crate::error::Result;
use crate::util::escape::{escape, quoted};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;
use std::fmt;

/// What `verify` found about one relocated file that is not as the journal recorded it. Two are
/// not problems: a file users wrote to through its link since (`ChangedSince`), and a copy with
/// its content intact whose mode or owner they changed (`MetadataChanged`).
#[derive(Debug)]
pub enum Finding {
    /// The SOURCE path is a link, but not to the copy (`found`, `want`: the link targets).
    LinkElsewhere {
        /// What the link holds.
        found: Vec<u8>,
        /// What evac's link holds.
        want: Vec<u8>,
    },
    /// The SOURCE path is not a link that can be read (gone, a file again, its directory gone).
    NotOurLink(std::io::Error),
    /// The DEST copy cannot be opened.
    DestUnopenable(std::io::Error),
    /// The DEST copy cannot be stat'ed.
    DestUnstatable(std::io::Error),
    /// Written through its link since relocation (its mtime moved): the journal's hash is of the
    /// copy as made, so its content can no longer be held to it. Not a problem.
    ChangedSince,
    /// The copy's size differs from the journal's with its mtime unchanged.
    SizeDiffers {
        /// The copy's size.
        dest: i64,
        /// The size recorded.
        journal: u64,
    },
    /// The file at DEST is another inode than the copy evac made.
    InodeDiffers,
    /// The copy's content hash differs from the journal's.
    HashDiffers {
        /// The copy's blake3, in hex.
        dest: String,
        /// The recorded blake3, in hex.
        journal: String,
    },
    /// The journal has no hash for this file (an adopted link not yet hashed).
    NoHash,
    /// Reading the copy failed.
    Unreadable(std::io::Error),
    /// Content intact, but mode or owner changed through the link since. Not a problem.
    MetadataChanged(Vec<MetaDiff>),
}

/// One attribute of a copy that users changed since relocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaDiff {
    /// Permission bits now and as relocated.
    Mode {
        /// Now.
        now: u32,
        /// As relocated.
        was: u32,
    },
    /// Owner and group now and as relocated.
    Owner {
        /// Now (uid, gid).
        now: (u32, u32),
        /// As relocated (uid, gid).
        was: (u32, u32),
    },
}

impl Finding {
    /// A stable word for scripts (`kind` in the JSON), where the text is for people.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::LinkElsewhere { .. } => "link_elsewhere",
            Finding::NotOurLink(_) => "not_our_link",
            Finding::DestUnopenable(_) => "dest_unopenable",
            Finding::DestUnstatable(_) => "dest_unstatable",
            Finding::ChangedSince => "changed_since",
            Finding::SizeDiffers { .. } => "size_differs",
            Finding::InodeDiffers => "inode_differs",
            Finding::HashDiffers { .. } => "hash_differs",
            Finding::NoHash => "no_hash",
            Finding::Unreadable(_) => "unreadable",
            Finding::MetadataChanged(_) => "metadata_changed",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::LinkElsewhere { found, want } => write!(
                f,
                "SOURCE link points to {} instead of {}",
                quoted(found),
                quoted(want)
            ),
            Finding::NotOurLink(e) => write!(f, "SOURCE path is not our link: {e}"),
            Finding::DestUnopenable(e) => write!(f, "DEST copy cannot be opened: {e}"),
            Finding::DestUnstatable(e) => write!(f, "DEST copy cannot be stat'ed: {e}"),
            Finding::ChangedSince => f.write_str("changed since relocation"),
            Finding::SizeDiffers { dest, journal } => write!(
                f,
                "DEST size {dest} differs from the journal's {journal} (mtime unchanged)"
            ),
            Finding::InodeDiffers => {
                f.write_str("DEST file is not the copy evac made (inode differs)")
            }
            Finding::HashDiffers { dest, journal } => write!(
                f,
                "DEST content hash {dest} differs from the journal's {journal}"
            ),
            Finding::NoHash => {
                f.write_str("no content hash on record (adopted link not yet hashed)")
            }
            Finding::Unreadable(e) => write!(f, "read DEST copy: {e}"),
            Finding::MetadataChanged(d) => {
                write!(f, "metadata changed since relocation: {}", MetaDiffs(d))
            }
        }
    }
}

/// The changes of one copy, comma-separated: `mode 644 (was 600), owner 0:0 (was 1000:1000)`.
struct MetaDiffs<'a>(&'a [MetaDiff]);

impl fmt::Display for MetaDiffs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match d {
                MetaDiff::Mode { now, was } => write!(f, "mode {now:o} (was {was:o})")?,
                MetaDiff::Owner { now, was } => {
                    write!(f, "owner {}:{} (was {}:{})", now.0, now.1, was.0, was.1)?
                }
            }
        }
        Ok(())
    }
}

/// A relocated file `verify` found wrong (`path` raw, relative to SOURCE).
pub struct Problem {
    /// The file's path, raw.
    pub path: Vec<u8>,
    /// What is wrong.
    pub finding: Finding,
}

impl Serialize for Problem {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Problem", 3)?;
        st.serialize_field("path", &escape(&self.path))?;
        st.serialize_field("problem", &self.finding.to_string())?;
        st.serialize_field("kind", self.finding.kind())?;
        st.end()
    }
}

/// A copy whose mode or owner users changed since relocation, its content intact.
pub struct MetaChange {
    /// The file's path, raw.
    pub path: Vec<u8>,
    /// What changed.
    pub changes: Vec<MetaDiff>,
}

impl Serialize for MetaChange {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("MetaChange", 2)?;
        st.serialize_field("path", &escape(&self.path))?;
        st.serialize_field("change", &MetaDiffs(&self.changes).to_string())?;
        st.end()
    }
}

/// What `verify` found.
#[derive(Serialize)]
pub struct Verified {
    /// Relocated files checked.
    pub checked: u64,
    /// No problem and the counters agree.
    pub ok: bool,
    /// The files found wrong.
    pub problems: Vec<Problem>,
    /// Files written through their links since relocation (not problems).
    pub written_since: u64,
    /// Copies whose mode or owner users changed (not problems).
    pub metadata_changed: Vec<MetaChange>,
    /// The journal's counters that differ from a full count (empty when they agree).
    pub counters: Vec<CounterProblem>,
}

/// A counter of the journal that differs from a full count of its files.
#[derive(Serialize)]
pub struct CounterProblem {
    /// Which counter.
    pub what: String,
    /// Files the counter keeps.
    pub kept_files: i64,
    /// Bytes the counter keeps.
    pub kept_bytes: i64,
    /// Files counted.
    pub counted_files: i64,
    /// Bytes counted.
    pub counted_bytes: i64,
}

/// Print what `verify` found: PROBLEM and NOTE lines and the summary, or one JSON object.
pub fn show_verified(v: &Verified, json: bool) -> Result<()> {
    if json {
        return super::out_bytes(super::json_line(v)?.as_bytes());
    }
    let mut s = String::new();
    for p in &v.problems {
        s.push_str(&format!("PROBLEM {}: {}\n", quoted(&p.path), p.finding));
    }
    for c in &v.counters {
        s.push_str(&format!(
            "PROBLEM journal counters: {}: {} files, {} bytes kept, {} files, {} bytes counted\n",
            c.what, c.kept_files, c.kept_bytes, c.counted_files, c.counted_bytes
        ));
    }
    for p in &v.metadata_changed {
        s.push_str(&format!(
            "NOTE {}: metadata changed since relocation: {}\n",
            quoted(&p.path),
            MetaDiffs(&p.changes)
        ));
    }
    s.push_str(&format!(
        "verify: {} relocated files checked (content hash, size, mode, owner, mtime at DEST; link in SOURCE): {}{}\n",
        v.checked,
        if v.problems.is_empty() { "all good".to_string() } else { format!("{} problems", v.problems.len()) },
        if v.written_since > 0 {
            format!("; {} written through their links since relocation (links checked, content not comparable)", v.written_since)
        } else {
            String::new()
        },
    ));
    if !v.metadata_changed.is_empty() {
        s.push_str(&format!(
            "verify: {} copies intact whose mode or owner users changed through their links since relocation (NOTE lines)\n",
            v.metadata_changed.len()
        ));
    }
    s.push_str(&if v.counters.is_empty() {
        "verify: the journal's counters (what status reads) agree with a full count\n".to_string()
    } else {
        format!(
            "verify: {} of the journal's counters differ from a full count (PROBLEM lines): status and metrics read them, so their figures are off by the difference\n",
            v.counters.len()
        )
    });
    super::out_bytes(s.as_bytes())
}
