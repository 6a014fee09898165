//! `evac hsm import`: the HSM's own listing of the files it manages (state, tier, volume,
//! position, size, checksum) into the journal, for phase 2 to recall staged-out files in tape
//! order. Formats: evac's TSV (and a NUL-separated variant for any name), Lustre's
//! `lfs hsm_state` output, and DMF's `dmls -l` (or `-lR`) output.

use crate::error::{Error, Result};
use crate::hsm::detect::{Record, State};
use crate::journal::{self, Journal};
use crate::sys::fsx;
use crate::util::escape::quoted;
use rustix::fd::AsFd;
use std::path::{Path, PathBuf};

/// A line the parser could not read, by number (1-based), with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub line: usize,
    pub why: String,
}

/// The listing's format (`evac hsm import --format`; clap parses the name, so an unknown one is
/// refused with the command line's other usage errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// evac's own: path, state, tier, volume, position, size, checksum, tab-separated, one a
    /// line, path escaped.
    Tsv,
    /// The same seven fields, each NUL-terminated, raw path bytes (any name).
    Tsv0,
    /// `lfs hsm_state` output: `PATH: (0xFLAGS) released exists archived, archive_id:N`.
    #[value(alias = "lfs-hsm-state")]
    Lfs,
    /// DMF `dmls -l` or `dmls -lR` output: `ls -l` lines with `(OFL)` etc. before the name.
    Dmls,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Tsv => "tsv",
            Format::Tsv0 => "tsv0",
            Format::Lfs => "lfs",
            Format::Dmls => "dmls",
        }
    }
}

fn state_word(s: &str) -> Option<State> {
    Some(match s {
        "resident" => State::Resident,
        "premigrated" => State::Premigrated,
        "staged_out" | "staged-out" | "released" | "offline" => State::StagedOut,
        "lost" => State::Lost,
        _ => return None,
    })
}

pub fn state_name(s: State) -> &'static str {
    match s {
        State::Resident => "resident",
        State::Premigrated => "premigrated",
        State::StagedOut => "staged_out",
        State::Lost => "lost",
        State::Unknown => "unknown",
    }
}

/// Undo the TSV path escapes: `\\`, `\t`, `\n`, `\r`, `\xHH`.
fn unescape(s: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        match s.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                let h = s
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("bad \\x escape in the path")?;
                out.push(h);
                i += 4;
                continue;
            }
            _ => return Err("bad escape in the path".into()),
        }
        i += 2;
    }
    Ok(out)
}

fn opt_int(field: &[u8], what: &str) -> std::result::Result<Option<i64>, String> {
    if field.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| format!("{what} is not a number"))
}

fn opt_text(field: &[u8]) -> Option<String> {
    (!field.is_empty()).then(|| String::from_utf8_lossy(field).into_owned())
}

fn record_of(fields: &[&[u8]], escaped: bool) -> std::result::Result<Record, String> {
    if fields.len() != 7 {
        return Err(format!("{} fields, want 7", fields.len()));
    }
    let path = if escaped {
        unescape(fields[0])?
    } else {
        fields[0].to_vec()
    };
    if path.is_empty() {
        return Err("empty path".into());
    }
    let st = std::str::from_utf8(fields[1]).unwrap_or("");
    let state = state_word(st).ok_or_else(|| format!("unknown state {st:?}"))?;
    let checksum = opt_text(fields[6]);
    if let Some(c) = &checksum {
        if !c.contains(':') {
            return Err(format!("checksum {c:?} is not ALGORITHM:HEX"));
        }
    }
    Ok(Record {
        path,
        state,
        tier: opt_int(fields[2], "tier")?,
        volume: opt_text(fields[3]),
        position: opt_int(fields[4], "position")?,
        size: opt_int(fields[5], "size")?,
        checksum,
    })
}

fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

fn parse_tsv(data: &[u8]) -> (Vec<Record>, Vec<Malformed>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (n, l) in lines(data) {
        if l.is_empty() || l.starts_with(b"#") {
            continue;
        }
        let fields: Vec<&[u8]> = l.split(|&b| b == b'\t').collect();
        match record_of(&fields, true) {
            Ok(r) => out.push(r),
            Err(why) => bad.push(Malformed { line: n, why }),
        }
    }
    (out, bad)
}

/// NUL variant: records of seven NUL-terminated fields; "line" numbers count records.
fn parse_tsv0(data: &[u8]) -> (Vec<Record>, Vec<Malformed>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut fields: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let tail = fields.pop().unwrap_or_default();
    for (i, rec) in fields.chunks(7).enumerate() {
        match record_of(rec, false) {
            Ok(r) => out.push(r),
            Err(why) => bad.push(Malformed { line: i + 1, why }),
        }
    }
    if !tail.is_empty() {
        bad.push(Malformed {
            line: fields.len() / 7 + 1,
            why: "last field not NUL-terminated".into(),
        });
    }
    (out, bad)
}

/// `PATH: (0x0000000d) released exists archived, archive_id:1`; words may be absent.
fn parse_lfs(data: &[u8]) -> (Vec<Record>, Vec<Malformed>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (n, l) in lines(data) {
        if l.is_empty() {
            continue;
        }
        let Some(at) = find(l, b": (0x") else {
            bad.push(Malformed {
                line: n,
                why: "no \": (0x\" after the path".into(),
            });
            continue;
        };
        let path = l[..at].to_vec();
        let rest = String::from_utf8_lossy(&l[at + 2..]).into_owned();
        let Some(close) = rest.find(')') else {
            bad.push(Malformed {
                line: n,
                why: "unclosed flags".into(),
            });
            continue;
        };
        let Ok(flags) = u32::from_str_radix(&rest[3..close], 16) else {
            bad.push(Malformed {
                line: n,
                why: format!("flags {:?} are not hex", &rest[3..close]),
            });
            continue;
        };
        let tier = rest
            .split("archive_id:")
            .nth(1)
            .and_then(|s| s.trim().parse::<i64>().ok());
        // The flags are authoritative; the words only repeat them.
        let state = if flags & 0x40 != 0 {
            State::Lost
        } else if flags & 0x4 != 0 {
            State::StagedOut
        } else if flags & 0x8 != 0 && flags & 0x2 == 0 {
            State::Premigrated
        } else {
            State::Resident
        };
        out.push(Record {
            path,
            state,
            tier,
            volume: None,
            position: None,
            size: None,
            checksum: None,
        });
    }
    (out, bad)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// `dmls -l`: `-rw-r--r-- 1 kfr sys 16373855 Jul 22 15:01 (OFL) name`; with -R, `dir:` headers.
fn parse_dmls(data: &[u8]) -> (Vec<Record>, Vec<Malformed>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let mut dir: Vec<u8> = Vec::new();
    for (n, l) in lines(data) {
        if l.is_empty() || l.starts_with(b"total ") {
            continue;
        }
        if l.ends_with(b":") && !l.starts_with(b"-") {
            dir = l[..l.len() - 1].to_vec();
            continue;
        }
        if !l.starts_with(b"-") {
            // Directories, links and devices are not HSM-managed files.
            if l.first().is_some_and(|c| b"dlcbpsSm".contains(c)) {
                continue;
            }
            bad.push(Malformed {
                line: n,
                why: "not a dmls -l line".into(),
            });
            continue;
        }
        let Some(open) = find(l, b" (") else {
            bad.push(Malformed {
                line: n,
                why: "no (STATE) before the name".into(),
            });
            continue;
        };
        let Some(close) = find(&l[open..], b") ").map(|c| open + c) else {
            bad.push(Malformed {
                line: n,
                why: "unclosed (STATE)".into(),
            });
            continue;
        };
        let code = String::from_utf8_lossy(&l[open + 2..close]).into_owned();
        let state = match code.as_str() {
            "OFL" | "PAR" | "UNM" => State::StagedOut,
            "DUL" | "MIG" => State::Premigrated,
            "REG" | "NMG" => State::Resident,
            "INV" => State::Lost,
            other => {
                bad.push(Malformed {
                    line: n,
                    why: format!("unknown DMF state ({other})"),
                });
                continue;
            }
        };
        let head = String::from_utf8_lossy(&l[..open]).into_owned();
        let cols: Vec<&str> = head.split_whitespace().collect();
        // perms, links, owner, group, size, month, day, time-or-year
        let size = cols.get(4).and_then(|s| s.parse::<i64>().ok());
        if cols.len() < 8 || size.is_none() {
            bad.push(Malformed {
                line: n,
                why: "expected permissions, links, owner, group, size and date".into(),
            });
            continue;
        }
        let name = &l[close + 2..];
        let path = if dir.is_empty() {
            name.to_vec()
        } else {
            fsx::join(&dir, name)
        };
        out.push(Record {
            path,
            state,
            tier: None,
            volume: None,
            position: None,
            size,
            checksum: None,
        });
    }
    (out, bad)
}

pub fn parse(format: Format, data: &[u8]) -> (Vec<Record>, Vec<Malformed>) {
    match format {
        Format::Tsv => parse_tsv(data),
        Format::Tsv0 => parse_tsv0(data),
        Format::Lfs => parse_lfs(data),
        Format::Dmls => parse_dmls(data),
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Summary {
    pub records: usize,
    pub staged_out: usize,
    pub malformed: Vec<Malformed>,
    pub outside: Vec<Vec<u8>>,
    pub missing: Vec<Vec<u8>>,
    pub relocated: Vec<Vec<u8>>,
    /// Under an `--exclude` pattern of the journal: never to be recalled for relocation.
    pub excluded: Vec<Vec<u8>>,
}

/// The path relative to SOURCE, or None if it is not under it. `root` resolves relative paths.
fn relative(p: &[u8], source: &[u8], root: &[u8]) -> Option<Vec<u8>> {
    let abs = if p.starts_with(b"/") {
        p.to_vec()
    } else {
        fsx::join(root, p)
    };
    // Lexically: "." and "//" dropped, ".." refused (a listing has no business with it).
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in abs.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => parts.push(c),
        }
    }
    let src: Vec<&[u8]> = source
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if parts.len() <= src.len() || parts[..src.len()] != src[..] {
        return None;
    }
    Some(parts[src.len()..].join(&b'/'))
}

/// `evac hsm import`: all or nothing, and idempotent (a record for a path replaces the last).
/// Returns the summary line for the operator.
pub fn import(
    journal: &Path,
    format: Format,
    listing: &Path,
    root: Option<&Path>,
    quiet: bool,
) -> Result<String> {
    let say = crate::util::notice::say;
    let lock = crate::sys::lock::JournalLock::acquire(journal)?;
    let j = Journal::open(journal, false)?;
    let plan = j.plan()?.ok_or_else(|| {
        Error::Setup(format!(
            "journal {} has no plan yet: run `evac run SOURCE DEST --journal {}` first",
            quoted(journal.as_os_str().as_encoded_bytes()),
            journal.display()
        ))
    })?;
    let data = std::fs::read(listing).map_err(|e| {
        Error::io(
            "read the listing",
            listing.as_os_str().as_encoded_bytes(),
            e,
        )
    })?;
    let source = journal::path_bytes(&plan.source);
    let root: Vec<u8> = match root {
        Some(r) => journal::path_bytes(&absolute(r)?),
        None => source.clone(),
    };
    let src_root =
        fsx::open_root(&plan.source).map_err(|e| Error::io("open SOURCE", &source, e))?;
    let (records, malformed) = parse(format, &data);
    let filters = crate::util::filter::Filters::new(&j.excludes()?).map_err(|e| {
        Error::Setup(format!(
            "journal {}: recorded {e}",
            quoted(journal.as_os_str().as_encoded_bytes())
        ))
    })?;
    let mut sum = Summary {
        malformed,
        ..Summary::default()
    };
    let tx = j.tx()?;
    let import_id = j.start_hsm_import(format.name(), &journal::path_bytes(listing))?;
    for r in &records {
        let Some(rel) = relative(&r.path, &source, &root) else {
            sum.outside.push(r.path.clone());
            continue;
        };
        if filters.excluded_path(&rel, false).is_some() {
            sum.excluded.push(rel);
            continue;
        }
        let (pd, name) = fsx::split_parent(&rel);
        let present = fsx::resolve_dir(src_root.as_fd(), pd)
            .and_then(|d| fsx::stat_at(d.as_fd(), name))
            .is_ok_and(|st| {
                matches!(
                    fsx::file_type(&st),
                    rustix::fs::FileType::RegularFile | rustix::fs::FileType::Symlink
                )
            });
        if !present {
            sum.missing.push(rel);
            continue;
        }
        if j.path_row(&rel)?
            .is_some_and(|p| p.state == crate::journal::FileState::Relocated && p.kind == "file")
        {
            sum.relocated.push(rel);
            continue;
        }
        j.upsert_hsm_file(&rel, state_name(r.state), r, import_id)?;
        sum.records += 1;
        if r.state == State::StagedOut {
            sum.staged_out += 1;
        }
    }
    j.finish_hsm_import(
        import_id,
        sum.records,
        sum.malformed.len(),
        (sum.outside.len(), sum.missing.len(), sum.relocated.len()),
    )?;
    tx.commit()?;
    drop(lock);
    if !quiet {
        for m in &sum.malformed {
            say(format!(
                "evac: {}: line {}: {} (skipped)",
                listing.display(),
                m.line,
                m.why
            ));
        }
        for (what, v) in [
            ("not under SOURCE", &sum.outside),
            ("not in SOURCE", &sum.missing),
            ("already relocated, nothing to stage", &sum.relocated),
            ("excluded by --exclude", &sum.excluded),
        ] {
            for p in v.iter().take(20) {
                say(format!("evac: {}: {what} (not imported)", quoted(p)));
            }
            if v.len() > 20 {
                say(format!("evac: … and {} more {what}", v.len() - 20));
            }
        }
    }
    let excluded = if sum.excluded.is_empty() {
        String::new()
    } else {
        format!(", {} excluded by --exclude", sum.excluded.len())
    };
    Ok(format!(
        "imported {} records ({} staged out) from {} ({} format); {} malformed lines skipped, {} not under SOURCE, {} not in SOURCE, {} already relocated{excluded}",
        sum.records,
        sum.staged_out,
        listing.display(),
        format.name(),
        sum.malformed.len(),
        sum.outside.len(),
        sum.missing.len(),
        sum.relocated.len()
    ))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .map_err(|e| Error::Setup(format!("current directory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_escapes_and_bad_lines() {
        let data = b"#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n/s/a\\tb\\n\\xff\tstaged_out\t1\tV1\t3\t10\tblake3:ab\n/s/c\tweird\t\t\t\t\t\n/s/d\tlost\tx\t\t\t\t\n/s/e\tpremigrated\t\t\t\t\t\n";
        let (r, bad) = parse(Format::Tsv, data);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].path, b"/s/a\tb\n\xff");
        assert_eq!(r[0].volume.as_deref(), Some("V1"));
        assert_eq!(r[0].position, Some(3));
        assert_eq!(bad.iter().map(|m| m.line).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn lfs_and_dmls() {
        let lfs = b"/m/x: (0x0000000d) released exists archived, archive_id:2\n/m/y: (0x00000009) exists archived, archive_id:1\n/m/z: (0x00000000)\ngarbage\n";
        let (r, bad) = parse(Format::Lfs, lfs);
        assert_eq!(
            r.iter().map(|r| r.state).collect::<Vec<_>>(),
            vec![State::StagedOut, State::Premigrated, State::Resident]
        );
        assert_eq!(r[0].tier, Some(2));
        assert_eq!(bad.len(), 1);
        let dmls = b"/dmi/kfr:\ntotal 68584\n-rw-r--r-- 1 kfr sys 16373855 Jul 22 15:01 (OFL) dmf_tst.00005\n-rw-r--r-- 1 kfr sys 27294750 Jul 22 17:12 (DUL) a name\ndrwxr-xr-x 2 kfr sys 4096 Jul 22 17:12 sub\n-rw-r--r-- 1 kfr sys 12 Jul 22 17:12 (XYZ) odd\n";
        let (r, bad) = parse(Format::Dmls, dmls);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].path, b"/dmi/kfr/dmf_tst.00005");
        assert_eq!(r[0].size, Some(16373855));
        assert_eq!(r[1].path, b"/dmi/kfr/a name");
        assert_eq!(r[1].state, State::Premigrated);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn paths_under_source_only() {
        assert_eq!(relative(b"/s/a/b", b"/s", b"/s"), Some(b"a/b".to_vec()));
        assert_eq!(relative(b"a/b", b"/s", b"/s"), Some(b"a/b".to_vec()));
        assert_eq!(relative(b"/s2/a", b"/s", b"/s"), None);
        assert_eq!(relative(b"/s/../etc/shadow", b"/s", b"/s"), None);
        assert_eq!(relative(b"/s", b"/s", b"/s"), None);
    }
}
