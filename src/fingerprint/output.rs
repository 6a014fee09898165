//! What `evac fingerprint` gives the operator: the report file (`.csv`, `.json`, or a
//! self-contained `.html` worksheet, by extension) and the summary on the terminal. Paths are
//! escaped as everywhere in evac (one path, one unambiguous line), then quoted for the format.

use super::hashing::hex;
use crate::error::{Error, Result};
use crate::journal::fingerprint::{FpLeftover, FpMatch, FpRun};
use crate::util::escape::{escape, html, quoted};
use crate::util::units::human_bytes;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Html,
}

impl Format {
    /// The format a report file's extension asks for.
    pub fn of(p: &Path) -> Result<Format> {
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("json") => Ok(Format::Json),
            Some("html") | Some("htm") => Ok(Format::Html),
            other => Err(Error::Setup(format!(
                "--report {}: {}; the extension says the format: .csv, .json or .html",
                quoted(p.as_os_str().as_encoded_bytes()),
                match other {
                    Some(e) => format!("unknown extension .{e}"),
                    None => "no extension".into(),
                }
            ))),
        }
    }
}

/// Everything a report shows.
pub struct Results<'a> {
    pub source: &'a [u8],
    pub search: &'a [Vec<u8>],
    pub leftovers: &'a [FpLeftover],
    /// By leftover, best first.
    pub matches: &'a [FpMatch],
    pub run: &'a FpRun,
    /// Same-size files whose content differs from a leftover's (not candidates).
    pub decoys: u64,
}

impl Results<'_> {
    fn abs(&self, rel: &[u8]) -> Vec<u8> {
        crate::sys::fsx::join(self.source, rel)
    }

    /// Each leftover with its candidates.
    fn rows(&self) -> Vec<(&FpLeftover, &[FpMatch])> {
        let mut out = Vec::with_capacity(self.leftovers.len());
        let mut i = 0;
        for l in self.leftovers {
            let start = i;
            while i < self.matches.len() && self.matches[i].leftover == l.path {
                i += 1;
            }
            out.push((l, &self.matches[start..i]));
        }
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC) for nanoseconds since the epoch.
pub fn iso_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = crate::util::time::civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        y,
        m,
        d,
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        nanos
    )
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn opt_hex(v: &Option<Vec<u8>>) -> String {
    v.as_deref().map(hex).unwrap_or_default()
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub const CSV_HEADER: &str = "leftover,state,reason,size,mtime,uid,gid,mode,hsm_state,hsm_volume,hsm_checksum,content,content_note,leftover_blake3,confidence,rank,candidate,matched_by,candidate_size,candidate_mtime,candidate_uid,candidate_gid,candidate_mode,candidate_blake3,candidate_md5,candidate_sha1,candidate_sha256";

fn write_csv(r: &Results<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{CSV_HEADER}")?;
    for (l, ms) in r.rows() {
        let left = [
            csv(&escape(&r.abs(&l.path))),
            csv(&opt(l.state.as_deref())),
            csv(&opt(l.reason.as_deref())),
            l.size.to_string(),
            l.mtime_ns.map(iso_time).unwrap_or_default(),
            opt(l.uid),
            opt(l.gid),
            l.mode
                .map(|m| format!("{:o}", m & 0o7777))
                .unwrap_or_default(),
            csv(&opt(l.hsm_state.as_deref())),
            csv(&opt(l.hsm_volume.as_deref())),
            csv(&opt(l.hsm_checksum.as_deref())),
            l.content.clone(),
            csv(&opt(l.content_note.as_deref())),
            opt_hex(&l.blake3),
        ]
        .join(",");
        if ms.is_empty() {
            writeln!(out, "{left},none{}", ",".repeat(12))?;
        }
        for m in ms {
            writeln!(
                out,
                "{left},{},{},{},{},{},{},{},{},{:o},{},{},{},{}",
                m.confidence,
                m.rank,
                csv(&escape(&m.candidate)),
                m.matched_by,
                m.size,
                iso_time(m.mtime_ns),
                m.uid,
                m.gid,
                m.mode & 0o7777,
                opt_hex(&m.blake3),
                opt_hex(&m.md5),
                opt_hex(&m.sha1),
                opt_hex(&m.sha256)
            )?;
        }
    }
    Ok(())
}

fn jhex(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_deref().map(hex)
}

/// The JSON report: one object, its leftovers one a line (streamed: there may be millions).
fn write_json(r: &Results<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    let run = r.run;
    let head = serde_json::json!({
        "source": escape(r.source),
        "search": r.search.iter().map(|s| escape(s)).collect::<Vec<_>>(),
        "summary": {
            "leftovers": run.leftovers,
            "exact": run.exact,
            "probable": run.probable,
            "weak": run.weak,
            "none": run.none,
            "files_indexed": run.files_indexed,
            "files_read": run.files_read,
            "bytes_read": run.bytes_read,
            "from_cache": run.from_cache,
            "decoys": r.decoys,
        },
    })
    .to_string();
    // The same object with the list of leftovers last, written as it is built.
    write!(out, "{},\"leftovers\":[", &head[..head.len() - 1])?;
    for (i, (l, ms)) in r.rows().into_iter().enumerate() {
        if i > 0 {
            write!(out, ",")?;
        }
        let candidates: Vec<serde_json::Value> = ms
            .iter()
            .map(|m| {
                serde_json::json!({
                    "rank": m.rank,
                    "path": escape(&m.candidate),
                    "confidence": m.confidence,
                    "matched_by": m.matched_by,
                    "size": m.size,
                    "mtime": iso_time(m.mtime_ns),
                    "mtime_ns": m.mtime_ns,
                    "uid": m.uid,
                    "gid": m.gid,
                    "mode": m.mode,
                    "dev": m.dev,
                    "ino": m.ino,
                    "blake3": jhex(&m.blake3),
                    "md5": jhex(&m.md5),
                    "sha1": jhex(&m.sha1),
                    "sha256": jhex(&m.sha256),
                })
            })
            .collect();
        let hsm = (l.hsm_state.is_some() || l.hsm_checksum.is_some()).then(|| {
            serde_json::json!({
                "state": l.hsm_state,
                "volume": l.hsm_volume,
                "checksum": l.hsm_checksum,
            })
        });
        let item = serde_json::json!({
            "path": escape(&r.abs(&l.path)),
            "relative": escape(&l.path),
            "file_id": l.file_id,
            "state": l.state,
            "reason": l.reason,
            "size": l.size,
            "mtime": l.mtime_ns.map(iso_time),
            "mtime_ns": l.mtime_ns,
            "uid": l.uid,
            "gid": l.gid,
            "mode": l.mode,
            "hsm": hsm,
            "content": l.content,
            "content_note": l.content_note,
            "blake3": jhex(&l.blake3),
            "confidence": l.confidence,
            "candidates": candidates,
        });
        write!(out, "\n{item}")?;
    }
    writeln!(out, "\n]}}")
}

const HTML_HEAD: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>evac fingerprint: leftovers and their candidates</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}
p.meta{color:#555;margin:.2em 0}
.controls{margin:1em 0;display:flex;gap:1em;align-items:center;flex-wrap:wrap}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f2f2f2;position:sticky;top:0}
td.path{font-family:ui-monospace,monospace;overflow-wrap:anywhere;min-width:16em}
td.num{text-align:right;white-space:nowrap}
td.time{white-space:nowrap}
td.hash{font-family:ui-monospace,monospace;font-size:.8em;word-break:break-all;min-width:12em;max-width:20em}
td.note{font-size:.9em;min-width:10em}
.c{font-weight:600;padding:.1em .4em;border-radius:.3em;white-space:nowrap}
.c-exact{background:#cfeccf}.c-probable{background:#fdf1c4}.c-weak{background:#fde0c4}.c-none{background:#f6caca}
tr.done td{opacity:.45}
</style></head><body>
"#;

const HTML_SCRIPT: &str = r#"<script>
(function(){
  var q=document.getElementById('q'),c=document.getElementById('conf'),rows=document.querySelectorAll('tbody tr');
  function apply(){
    var t=q.value.toLowerCase(),k=c.value;
    rows.forEach(function(r){
      var ok=(!k||r.getAttribute('data-confidence')===k)&&(!t||r.textContent.toLowerCase().indexOf(t)>=0);
      r.style.display=ok?'':'none';
    });
  }
  q.addEventListener('input',apply);c.addEventListener('change',apply);
  document.querySelectorAll('input.done').forEach(function(b){
    b.addEventListener('change',function(){b.closest('tr').classList.toggle('done',b.checked);});
  });
})();
</script>
"#;

/// A time to the second, the nanoseconds in its tooltip.
fn time_cell(ns: Option<i64>) -> String {
    match ns {
        Some(t) => {
            let full = iso_time(t);
            format!(
                "<td class=\"time\" title=\"{full}\">{}</td>",
                full[..19].replace('T', " ")
            )
        }
        None => "<td></td>".into(),
    }
}

fn write_html(r: &Results<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    let run = r.run;
    out.write_all(HTML_HEAD.as_bytes())?;
    writeln!(
        out,
        "<h1>evac fingerprint: leftovers and their candidates</h1>\n<p class=\"meta\">SOURCE {}; searched {}</p>\n<p class=\"meta\">{} leftovers: {} exact, {} probable, {} weak, {} none. {} files indexed, {} read ({}), {} from the cache; {} same-size files with other content set aside.</p>",
        html(&quoted(r.source)),
        if r.search.is_empty() {
            "nothing (no --search)".to_string()
        } else {
            r.search
                .iter()
                .map(|s| html(&quoted(s)))
                .collect::<Vec<_>>()
                .join(", ")
        },
        run.leftovers,
        run.exact,
        run.probable,
        run.weak,
        run.none,
        run.files_indexed,
        run.files_read,
        html(&human_bytes(run.bytes_read as f64)),
        run.from_cache,
        r.decoys
    )?;
    writeln!(
        out,
        "<div class=\"controls\"><label>Filter <input id=\"q\" type=\"search\" placeholder=\"path, hash, volume…\"></label>\n<label>Confidence <select id=\"conf\"><option value=\"\">all</option><option>exact</option><option>probable</option><option>weak</option><option>none</option></select></label></div>"
    )?;
    writeln!(
        out,
        "<table>\n<thead><tr><th>done</th><th>confidence</th><th>leftover</th><th>state</th><th>size</th><th>mtime (UTC)</th><th>owner</th><th>HSM</th><th>content</th><th>rank</th><th>candidate</th><th>matched by</th><th>candidate mtime (UTC)</th><th>candidate blake3</th></tr></thead>\n<tbody>"
    )?;
    for (l, ms) in r.rows() {
        let left = format!(
            "<td class=\"path\">{}</td><td class=\"note\">{}</td><td class=\"num\">{}</td>{}<td>{}</td><td class=\"hash\">{}</td><td class=\"hash\">{}</td>",
            html(&escape(&r.abs(&l.path))),
            html(&format!(
                "{}{}",
                l.state.as_deref().unwrap_or("(HSM listing only)"),
                l.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
            l.size,
            time_cell(l.mtime_ns),
            match (l.uid, l.gid) {
                (Some(u), Some(g)) => format!("{u}:{g}"),
                _ => String::new(),
            },
            html(
                &[
                    l.hsm_state.clone(),
                    l.hsm_volume.as_ref().map(|v| format!("volume {v}")),
                    l.hsm_checksum.clone()
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
            ),
            html(&format!(
                "{}{}{}",
                l.content,
                l.content_note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                l.blake3
                    .as_deref()
                    .map(|b| format!(" blake3 {}", hex(b)))
                    .unwrap_or_default()
            )),
        );
        let row = |conf: &str, rest: String| {
            format!(
                "<tr data-confidence=\"{conf}\"><td><input type=\"checkbox\" class=\"done\"></td><td><span class=\"c c-{conf}\">{conf}</span></td>{left}{rest}</tr>"
            )
        };
        if ms.is_empty() {
            writeln!(
                out,
                "{}",
                row(
                    "none",
                    "<td></td><td></td><td></td><td></td><td></td>".into()
                )
            )?;
        }
        for m in ms {
            writeln!(
                out,
                "{}",
                row(
                    &html(&m.confidence),
                    format!(
                        "<td class=\"num\">{}</td><td class=\"path\">{}</td><td>{}</td>{}<td class=\"hash\">{}</td>",
                        m.rank,
                        html(&escape(&m.candidate)),
                        html(&m.matched_by),
                        time_cell(Some(m.mtime_ns)),
                        opt_hex(&m.blake3)
                    )
                )
            )?;
        }
    }
    writeln!(out, "</tbody></table>")?;
    out.write_all(HTML_SCRIPT.as_bytes())?;
    writeln!(out, "</body></html>")
}

/// Write the report to `path` in `format` (through a temporary name, renamed into place).
pub fn write_report(path: &Path, format: Format, r: &Results<'_>) -> Result<()> {
    let pb = path.as_os_str().as_encoded_bytes();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".evac-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        match format {
            Format::Csv => write_csv(r, &mut w)?,
            Format::Json => write_json(r, &mut w)?,
            Format::Html => write_html(r, &mut w)?,
        }
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write report", pb, e)
    })
}

/// The summary for the terminal: counts, then the leftovers (those least matched first),
/// at most `top` of them.
pub fn summary(r: &Results<'_>, mounts: &[Vec<u8>], top: usize) -> String {
    let run = r.run;
    let mut s = format!(
        "fingerprint: {} leftovers: {} exact, {} probable, {} weak, {} none\n",
        run.leftovers, run.exact, run.probable, run.weak, run.none
    );
    s.push_str(&format!(
        "  searched {} ({} files indexed); read {} candidate files ({}), {} from the cache; {} same-size files with other content set aside\n",
        if r.search.is_empty() {
            "nothing (no --search given)".to_string()
        } else {
            r.search.iter().map(|p| quoted(p)).collect::<Vec<_>>().join(", ")
        },
        run.files_indexed,
        run.files_read,
        human_bytes(run.bytes_read as f64),
        run.from_cache,
        r.decoys
    ));
    if !mounts.is_empty() {
        s.push_str(&format!(
            "  not entered (other filesystems; give them as --search to include them): {}\n",
            mounts
                .iter()
                .take(5)
                .map(|m| quoted(m))
                .collect::<Vec<_>>()
                .join(", ")
                + &if mounts.len() > 5 {
                    format!(" and {} more", mounts.len() - 5)
                } else {
                    String::new()
                }
        ));
    }
    let mut rows = r.rows();
    let order = |c: &str| match c {
        "none" => 0,
        "weak" => 1,
        "probable" => 2,
        _ => 3,
    };
    rows.sort_by_key(|(l, _)| order(&l.confidence));
    for (l, ms) in rows.iter().take(top) {
        match ms.first() {
            Some(m) => s.push_str(&format!(
                "  {:<8} {} <- {} ({}{})\n",
                l.confidence,
                quoted(&l.path),
                quoted(&m.candidate),
                m.matched_by,
                if ms.len() > 1 {
                    format!("; {} candidates", ms.len())
                } else {
                    String::new()
                }
            )),
            None => s.push_str(&format!(
                "  {:<8} {} ({}{})\n",
                "none",
                quoted(&l.path),
                l.content,
                l.content_note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            )),
        }
    }
    if top > 0 && rows.len() > top {
        s.push_str(&format!(
            "  … and {} more (--report FILE lists them all)\n",
            rows.len() - top
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_quoting() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            iso_time(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(iso_time(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("q\\\"x"), "\"q\\\"\"x\"");
        assert_eq!(csv("plain"), "plain");
        assert_eq!(
            html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::of(Path::new("r.CSV")).unwrap(), Format::Csv);
        assert_eq!(Format::of(Path::new("r.html")).unwrap(), Format::Html);
        assert_eq!(Format::of(Path::new("/x/r.json")).unwrap(), Format::Json);
        let e = Format::of(Path::new("r.txt")).unwrap_err().to_string();
        assert!(e.contains(".txt") && e.contains(".csv"), "{e}");
        assert!(Format::of(Path::new("report")).is_err());
    }
}
