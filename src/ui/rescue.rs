//! What `evac rescue` shows and writes as its manifest: one line per holder of each deleted file
//! (tab-separated), or one JSON object (serde), built by `app::rescue`.

use crate::error::Result;
use serde::Serialize;

/// The rescue of one SOURCE: every deleted file found held, and what became of it.
#[derive(Serialize)]
pub struct Rescue {
    /// Escaped, as every path shown.
    pub source: String,
    pub to: String,
    pub manifest: String,
    pub rescued: usize,
    pub failed: usize,
    pub files: Vec<RescuedFile>,
}

#[derive(Serialize)]
pub struct RescuedFile {
    /// `rescued` or `failed`.
    pub result: &'static str,
    /// Its last path under SOURCE, relative (" (deleted)" removed).
    pub path: String,
    /// The copy, relative to DIR.
    pub rescued_as: Option<String>,
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime_ns: Option<i64>,
    pub blake3: Option<String>,
    /// When its last name is one of evac's temporaries: the original a swap moved aside.
    pub evac_temp: Option<EvacTemp>,
    /// Why it was not rescued, or a remark on the copy.
    pub note: Option<String>,
    pub holders: Vec<Holder>,
}

#[derive(Serialize)]
pub struct EvacTemp {
    pub journal_id: String,
    pub file_id: i64,
    /// The SOURCE path the journal records for the file id (escaped).
    pub original: Option<String>,
    /// Why `original` is not known.
    pub unknown: Option<String>,
}

#[derive(Serialize)]
pub struct Holder {
    pub pid: u32,
    pub user: String,
    /// Escaped.
    pub command: String,
    pub cmdline: Vec<String>,
    /// How it holds the file: `open r`, `open rw`, `mmap`, `exe`.
    pub what: String,
    /// The /proc/PID entry (`fd/3`, `map_files/…`).
    pub via: Option<String>,
    /// The file was read back through this holder's entry.
    pub read: bool,
}

const TSV_HEADER: &str =
    "result\tpid\tcommand\twhat\tvia\tpath\trescued_as\tsize\tblake3\tevac_temp\toriginal\tnote\n";

fn dash(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

/// The manifest as tab-separated lines: one per holder of each deleted file, `rescued` on the
/// line it was read through, `same-file` on its other holders' lines, `failed` on every line of
/// a file not rescued.
pub fn tsv(r: &Rescue) -> String {
    let mut s = String::from(TSV_HEADER);
    for f in &r.files {
        for h in &f.holders {
            let result = match (f.result, h.read) {
                ("rescued", true) => "rescued",
                ("rescued", false) => "same-file",
                _ => "failed",
            };
            let note = [
                f.note.clone(),
                f.evac_temp.as_ref().and_then(|e| e.unknown.clone()),
            ]
            .into_iter()
            .flatten()
            .map(|n| n.replace(['\t', '\n'], " "))
            .reduce(|a, b| format!("{a}; {b}"));
            let fields = [
                result.to_string(),
                h.pid.to_string(),
                dash(Some(h.command.clone())),
                h.what.clone(),
                dash(h.via.clone()),
                f.path.clone(),
                dash(f.rescued_as.clone()),
                dash(
                    f.size
                        .filter(|_| f.result == "rescued")
                        .map(|s| s.to_string()),
                ),
                dash(f.blake3.clone()),
                dash(
                    f.evac_temp
                        .as_ref()
                        .map(|e| format!("{}-{}", e.journal_id, e.file_id)),
                ),
                dash(f.evac_temp.as_ref().and_then(|e| e.original.clone())),
                dash(note),
            ];
            s.push_str(&fields.join("\t"));
            s.push('\n');
        }
    }
    s
}

/// The manifest as one JSON object.
pub fn json(r: &Rescue) -> Result<String> {
    super::json_line(r)
}

/// The manifest on stdout, and what was done on stderr.
pub fn show(r: &Rescue, as_json: bool, unreadable: usize, root: bool) -> Result<()> {
    let text = if as_json { json(r)? } else { tsv(r) };
    super::out_bytes(text.as_bytes())?;
    let bytes: u64 = r
        .files
        .iter()
        .filter(|f| f.result == "rescued")
        .filter_map(|f| f.size)
        .sum();
    if r.files.is_empty() {
        eprintln!(
            "evac: no process holds a deleted file under \"{}\"; nothing to rescue",
            r.source
        );
    } else {
        eprintln!(
            "evac: rescued {} of {} deleted files held open under \"{}\" ({}) into \"{}\"; manifest \"{}\"",
            r.rescued,
            r.files.len(),
            r.source,
            crate::util::units::human_bytes(bytes as f64),
            r.to,
            r.manifest
        );
    }
    for f in r.files.iter().filter(|f| f.result != "rescued") {
        eprintln!(
            "evac: could not rescue \"{}\": {}",
            f.path,
            f.note.as_deref().unwrap_or("unknown error")
        );
    }
    if unreadable > 0 {
        eprintln!(
            "evac: note: {unreadable} process{} could not be inspected{}; they may hold deleted files too",
            if unreadable == 1 { "" } else { "es" },
            if root {
                ""
            } else {
                " (not root: only your own processes can be)"
            }
        );
    }
    Ok(())
}
