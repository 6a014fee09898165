//! HSM state from metadata alone (I4): which files are stubs whose data an HSM has moved to a
//! lower tier. Nothing here opens or reads a file: stat fields, and extended attributes read
//! through the path (the final component never followed), or an operator's program.

use crate::sys::fsx::Stat;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How `--hsm` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No HSM: every regular file is resident.
    None,
    /// Known markers first (Lustre's `trusted.hsm`), then the blocks rule.
    Auto,
    /// Size above zero with no data blocks allocated is a stub.
    Blocks,
    /// An attribute with this value marks a stub.
    Xattr {
        /// The attribute's name (`user.…`, `trusted.…`).
        name: String,
        /// The value that marks a stub.
        value: Vec<u8>,
    },
    /// Lustre's binary `trusted.hsm` attribute.
    Lustre,
    /// An operator's program answers, in batches.
    Cmd {
        /// The program and its arguments, as given to `--hsm cmd:`.
        program: String,
    },
}

impl Mode {
    /// The mode a journal's plan keeps (`auto` when it keeps none): the text of `--hsm` as the
    /// first run was given it, so that every later run and command decides the same way.
    pub fn recorded(text: Option<&str>) -> Result<Mode, String> {
        let text = text.unwrap_or("auto");
        text.parse()
            .map_err(|e| format!("the journal's --hsm {text}: {e}"))
    }
}

/// The canonical text of a mode, as `--hsm` takes it and the journal keeps it: parsing it gives
/// the same mode back.
impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::None => f.write_str("none"),
            Mode::Auto => f.write_str("auto"),
            Mode::Blocks => f.write_str("blocks"),
            Mode::Lustre => f.write_str("lustre"),
            // The value came from the command line's text, so it is UTF-8.
            Mode::Xattr { name, value } => {
                write!(f, "xattr:{name}={}", String::from_utf8_lossy(value))
            }
            Mode::Cmd { program } => write!(f, "cmd:{program}"),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "none" => Mode::None,
            "auto" => Mode::Auto,
            "blocks" => Mode::Blocks,
            "lustre" => Mode::Lustre,
            _ => {
                if let Some(rest) = s.strip_prefix("xattr:") {
                    let (name, value) = rest.split_once('=').ok_or_else(|| {
                        "expected xattr:NAME=VALUE (e.g. xattr:user.hsm=released)".to_string()
                    })?;
                    if name.is_empty() {
                        return Err("the attribute name is empty".into());
                    }
                    Mode::Xattr {
                        name: name.to_string(),
                        value: value.as_bytes().to_vec(),
                    }
                } else if let Some(p) = s.strip_prefix("cmd:") {
                    if p.is_empty() {
                        return Err("the program is empty".into());
                    }
                    Mode::Cmd {
                        program: p.to_string(),
                    }
                } else {
                    return Err(
                        "expected none, auto, blocks, xattr:NAME=VALUE, lustre or cmd:PROGRAM"
                            .into(),
                    );
                }
            }
        })
    }
}

/// A file's HSM state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The data is on disk: relocated like any file.
    Resident,
    /// Data on disk and on the lower tier: relocated as resident.
    Premigrated,
    /// A stub: its data is elsewhere; opening it would trigger a recall.
    StagedOut,
    /// The HSM says the data is lost.
    Lost,
    /// The state could not be told (an attribute unreadable, the program failed): treated as
    /// a stub this run, never opened.
    Unknown,
}

/// A state and the rule that gave it (for the journal's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The state.
    pub state: State,
    /// Which rule said so, for the journal (empty for resident files).
    pub why: String,
}

impl Classified {
    fn resident() -> Classified {
        Classified {
            state: State::Resident,
            why: String::new(),
        }
    }

    /// A state that could not be told, with the reason.
    pub fn unknown(err: &str) -> Classified {
        Classified {
            state: State::Unknown,
            why: format!("HSM state unknown ({err}); not opened, asked again next run"),
        }
    }

    /// Whether evac may open the file (resident or premigrated).
    pub fn openable(&self) -> bool {
        matches!(self.state, State::Resident | State::Premigrated)
    }
}

/// The start of the reason of files the blocks rule classified, which `status` counts to warn
/// that on a filesystem without an HSM a sparse file looks like a stub.
pub const BLOCKS_RULE: &str = "staged out (blocks rule: size above zero, no data blocks)";

/// Lustre's `struct hsm_attrs` flags (lustre_user.h).
const HS_RELEASED: u32 = 0x4;
const HS_ARCHIVED: u32 = 0x8;
const HS_LOST: u32 = 0x40;
const HS_DIRTY: u32 = 0x2;

/// Decode Lustre's `trusted.hsm` (little-endian `{u32 compat; u32 flags; u64 arch_id; u64
/// arch_ver}`), or None if it is not that.
pub fn lustre_state(attr: &[u8]) -> Option<Classified> {
    if attr.len() < 8 {
        return None;
    }
    let flags = u32::from_le_bytes(attr[4..8].try_into().ok()?);
    let arch = if attr.len() >= 16 {
        u64::from_le_bytes(attr[8..16].try_into().ok()?)
    } else {
        0
    };
    Some(if flags & HS_LOST != 0 {
        Classified {
            state: State::Lost,
            why: format!("HSM: data lost (Lustre hsm flags {flags:#x}, archive {arch})"),
        }
    } else if flags & HS_RELEASED != 0 {
        Classified {
            state: State::StagedOut,
            why: format!("staged out (Lustre: released, archive {arch})"),
        }
    } else if flags & HS_ARCHIVED != 0 && flags & HS_DIRTY == 0 {
        Classified {
            state: State::Premigrated,
            why: format!("premigrated (Lustre: archived, archive {arch})"),
        }
    } else {
        Classified::resident()
    })
}

/// An attribute of `name` in `dir`, read through the path without following a final symlink
/// and without opening the file. None if absent or unsupported.
fn lgetxattr_at(dir: BorrowedFd<'_>, name: &[u8], attr: &str) -> io::Result<Option<Vec<u8>>> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&p);
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The blocks rule: a regular file with a size but no data blocks holds no data here.
fn blocks_rule(st: &Stat) -> Option<Classified> {
    (st.st_size > 0 && st.st_blocks == 0).then(|| Classified {
        state: State::StagedOut,
        why: BLOCKS_RULE.into(),
    })
}

/// Classify regular file `name` in `dir` (stat'ed as `st`) by the metadata modes. `Cmd` mode
/// is answered in batches by `Oracle`; here it says resident.
pub fn classify(
    mode: &Mode,
    dir: BorrowedFd<'_>,
    name: &[u8],
    st: &Stat,
) -> io::Result<Classified> {
    match mode {
        Mode::None | Mode::Cmd { .. } => Ok(Classified::resident()),
        Mode::Blocks => Ok(blocks_rule(st).unwrap_or_else(Classified::resident)),
        Mode::Xattr { name: attr, value } => Ok(match lgetxattr_at(dir, name, attr)? {
            Some(v) if &v == value => Classified {
                state: State::StagedOut,
                why: format!("staged out ({attr}={})", String::from_utf8_lossy(value)),
            },
            _ => Classified::resident(),
        }),
        Mode::Lustre => Ok(lgetxattr_at(dir, name, "trusted.hsm")?
            .and_then(|a| lustre_state(&a))
            .unwrap_or_else(Classified::resident)),
        Mode::Auto => {
            // Only a file with fewer blocks than its size needs is worth an attribute read: a
            // file with all its data blocks is resident whatever a marker says (premigrated).
            // A stub may keep a block or two (an attribute block, a resident head), so the
            // marker is looked for in every such file, and the blocks rule applied after.
            #[allow(clippy::unnecessary_cast)] // blkcnt_t and off_t are not i64 everywhere
            let whole = (st.st_blocks as i64).saturating_mul(512) >= st.st_size as i64;
            if whole {
                return Ok(Classified::resident());
            }
            if let Some(c) = lgetxattr_at(dir, name, "trusted.hsm")?.and_then(|a| lustre_state(&a))
            {
                return Ok(c);
            }
            Ok(blocks_rule(st).unwrap_or_else(Classified::resident))
        }
    }
}

/// Parse one answer line of an operator's program.
pub fn parse_answer(line: &str) -> Option<State> {
    Some(match line.trim().to_ascii_lowercase().as_str() {
        "resident" | "r" | "regular" | "dual" => State::Resident,
        "premigrated" | "p" => State::Premigrated,
        "staged_out" | "staged-out" | "released" | "offline" | "migrated" | "s" => State::StagedOut,
        "lost" | "l" => State::Lost,
        _ => return None,
    })
}

/// Ask `program` (run without a shell) about `paths`: NUL-separated on its stdin, one state per
/// line back, in order. A program that does not finish within `timeout` is killed with its
/// process group, and the batch is an error.
pub fn ask_program(program: &str, paths: &[Vec<u8>], timeout: Duration) -> io::Result<Vec<State>> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("start {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut input = Vec::new();
    for p in paths {
        input.extend_from_slice(p);
        input.push(0);
    }
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) on the child's process group, which it leads.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            let _ = writer.join();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{program} gave no answer within {timeout:?} (killed)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(io::Error::other(format!("{program} exited with {status}")));
    }
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != paths.len() {
        return Err(io::Error::other(format!(
            "{program} answered {} lines for {} paths",
            lines.len(),
            paths.len()
        )));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            parse_answer(l).ok_or_else(|| {
                io::Error::other(format!("{program}: line {}: unknown state {l:?}", i + 1))
            })
        })
        .collect()
}

/// The reason recorded for a state the program gave.
pub fn program_reason(program: &str, s: State) -> Classified {
    let why = match s {
        State::Resident => String::new(),
        State::Premigrated => format!("premigrated ({program})"),
        State::StagedOut => format!("staged out ({program})"),
        State::Lost => format!("HSM: data lost ({program})"),
        State::Unknown => format!("HSM state unknown ({program})"),
    };
    Classified { state: s, why }
}

/// Whether attribute `name` is the HSM's bookkeeping (the stub marker `mode` reads, Lustre's
/// layout and HSM state, DMAPI's regions): not part of a file's data or metadata, and not to be
/// carried to a copy recovered from elsewhere.
pub fn is_hsm_attribute(mode: &Mode, name: &[u8]) -> bool {
    if let Mode::Xattr { name: marker, .. } = mode {
        if name == marker.as_bytes() {
            return true;
        }
    }
    matches!(
        name,
        b"trusted.hsm" | b"trusted.lov" | b"trusted.lma" | b"trusted.link" | b"trusted.som"
    ) || name.starts_with(b"lustre.")
        || name.starts_with(b"trusted.SGI_DMI")
        || name.starts_with(b"trusted.dmapi")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hsm_attrs(flags: u32, arch: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&arch.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v
    }

    #[test]
    fn lustre_flags() {
        let s = |f| lustre_state(&hsm_attrs(f, 3)).unwrap().state;
        assert_eq!(s(HS_RELEASED | HS_ARCHIVED | 0x1), State::StagedOut);
        assert_eq!(s(HS_ARCHIVED | 0x1), State::Premigrated);
        assert_eq!(s(HS_ARCHIVED | HS_DIRTY | 0x1), State::Resident);
        assert_eq!(s(HS_LOST | HS_RELEASED | HS_ARCHIVED), State::Lost);
        assert_eq!(s(0), State::Resident);
        assert!(lustre_state(b"abc").is_none());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<Mode>().unwrap(), Mode::Auto);
        assert_eq!(
            "xattr:user.hsm=off".parse::<Mode>().unwrap(),
            Mode::Xattr {
                name: "user.hsm".into(),
                value: b"off".to_vec()
            }
        );
        assert!("xattr:user.hsm".parse::<Mode>().is_err());
        assert!("cmd:".parse::<Mode>().is_err());
        assert!("tape".parse::<Mode>().is_err());
    }

    /// The journal keeps a mode as its text: what `--hsm` was given must come back unchanged,
    /// so that a journal written before the mode was parsed up front reads the same.
    #[test]
    fn modes_keep_their_text() {
        for t in [
            "none",
            "auto",
            "blocks",
            "lustre",
            "xattr:user.hsm=released",
            "xattr:user.a=b=c",
            "xattr:trusted.x=",
            "cmd:/usr/local/bin/hsm-state --batch",
        ] {
            assert_eq!(t.parse::<Mode>().unwrap().to_string(), t);
        }
        assert_eq!(Mode::recorded(None), Ok(Mode::Auto));
        assert!(Mode::recorded(Some("tape")).unwrap_err().contains("tape"));
    }
}

/// One managed file as the HSM's listing gives it (`evac hsm import`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// As written in the listing: absolute, or relative to the listing's root.
    pub path: Vec<u8>,
    /// The HSM's state of the file.
    pub state: State,
    /// The storage tier holding the data (lower is faster), if the listing says.
    pub tier: Option<i64>,
    /// The tape or volume holding the data: recalls are grouped by it.
    pub volume: Option<String>,
    /// The position on that volume: recalls are ordered by it.
    pub position: Option<i64>,
    /// The file's size as the HSM knows it.
    pub size: Option<i64>,
    /// The HSM's checksum of the data (`algo:hex`), if it keeps one.
    pub checksum: Option<String>,
}
