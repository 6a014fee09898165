//! `evac fingerprint` (phase 3) on real files with the real binary: leftovers (stubs known only
//! by the HSM's checksum in blake3, md5 or sha256, a busy file deferred and readable, stubs with
//! no checksum, pathological names) whose copies are planted under --search directories
//! renamed, moved, with other mtimes and hard-linked, among same-size decoys; each classified
//! exactly; decoys never exact; no stub opened (inotify on SOURCE, the simulator's access log);
//! candidates read exactly once and a rerun over unchanged trees reading none (inotify on the
//! search trees, and the run's own counts); the three report formats parse; DEST and other
//! filesystems not entered; an unreadable candidate does not stop the run; a held journal is
//! refused.

use crate::common::opens::Opens;
use crate::common::*;
use md5::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const XATTR: &str = "user.evacfp";
const HSM: &str = "--hsm=xattr:user.evacfp=released";
const EDGE: u64 = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Mark `p` a stub for `--hsm xattr:user.evacfp=released` (its data stays: evac must not read
/// it anyway, and inotify tells whether it did). None if user xattrs are unsupported here.
fn release(p: &Path) -> Option<()> {
    let name = CString::new(XATTR).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            name.as_ptr(),
            b"released".as_ptr().cast(),
            8,
            0,
        )
    };
    (r == 0).then_some(())
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        },
    ];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A listing path as evac's TSV wants it.
fn tsv_path(p: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    for &b in p {
        match b {
            b'\\' => o.extend_from_slice(b"\\\\"),
            b'\t' => o.extend_from_slice(b"\\t"),
            b'\n' => o.extend_from_slice(b"\\n"),
            b'\r' => o.extend_from_slice(b"\\r"),
            b => o.push(b),
        }
    }
    o
}

fn tsv_line(abs: &Path, size: usize, checksum: &str) -> Vec<u8> {
    let mut l = tsv_path(abs.as_os_str().as_bytes());
    l.extend_from_slice(format!("\tstaged_out\t1\tVOL7\t3\t{size}\t{checksum}\n").as_bytes());
    l
}

fn import(journal: &Path, listing: &Path) {
    evac([
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("tsv"),
        listing.as_os_str(),
    ])
    .expect(0, "hsm import");
}

fn fingerprint(journal: &Path, search: &[&Path], extra: &[&OsStr]) -> Out {
    let mut a: Vec<OsString> = vec!["fingerprint".into(), "--journal".into(), journal.into()];
    for s in search {
        a.push("--search".into());
        a.push((*s).into());
    }
    a.extend(extra.iter().map(|x| (*x).to_os_string()));
    evac(a)
}

/// The last complete run's classification from the journal: leftover (relative to SOURCE) ->
/// (confidence, content, [(candidate, confidence, matched_by)] best first).
type Class = BTreeMap<Vec<u8>, (String, String, Vec<(Vec<u8>, String, String)>)>;

fn classes(journal: &Path) -> Class {
    let c = rusqlite::Connection::open(journal).unwrap();
    let mut out = Class::new();
    let mut st = c
        .prepare("SELECT path, confidence, content, candidates FROM fp_leftovers")
        .unwrap();
    let rows: Vec<(Vec<u8>, String, String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    for (p, conf, content, n) in rows {
        let mut m = c
            .prepare(
                "SELECT candidate, confidence, matched_by FROM fp_matches WHERE leftover = ?1 ORDER BY rank",
            )
            .unwrap();
        let cands: Vec<(Vec<u8>, String, String)> = m
            .query_map([&p], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(cands.len() as i64, n, "candidates count of {}", esc(&p));
        out.insert(p, (conf, content, cands));
    }
    out
}

/// The last complete run's (files_read, bytes_read, from_cache).
fn run_counts(journal: &Path) -> (i64, i64, i64) {
    let c = rusqlite::Connection::open(journal).unwrap();
    c.query_row(
        "SELECT files_read, bytes_read, from_cache FROM fp_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

fn b(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// RFC 4180 records.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "CSV ends mid-record"
    );
    rows
}

// ---------------------------------------------------------------------------------------------
// The planted tree
// ---------------------------------------------------------------------------------------------

struct Planted {
    e: Env,
    /// Canonical search directories.
    a: PathBuf,
    b: PathBuf,
    /// What each leftover must come out as: (confidence, content, [(candidate, conf, by)]).
    want: Class,
    /// Files that must be opened in the search trees on the first run, and bytes read.
    reads: BTreeSet<Vec<u8>>,
    bytes: i64,
    /// Stubs in SOURCE (never to be opened).
    stubs: Vec<PathBuf>,
    /// The deferred leftover (readable).
    busy: PathBuf,
    /// Exact numbers for the summary: decoys set aside.
    decoys: u64,
    weird: Vec<Vec<u8>>,
}

fn plant(test: &str) -> Option<Planted> {
    let e = env();
    let src = e.src.clone();
    let a = e.tmp.path().join("restore-a");
    let bdir = e.tmp.path().join("salvage-b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&bdir).unwrap();
    let a = a.canonicalize().unwrap();
    let bdir = bdir.canonicalize().unwrap();
    let mut want = Class::new();
    let mut reads = BTreeSet::new();
    let mut bytes = 0i64;
    let mut listing: Vec<u8> = b"#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n".to_vec();
    let mut stubs = Vec::new();
    let cand = |p: &Path, conf: &str, by: &str| (b(p), conf.to_string(), by.to_string());

    // 1. A stub known only by the HSM's blake3; its copy renamed, another mtime.
    let d1 = content(11, 40_000);
    let l1 = src.join("proj/renamed.dat");
    write(&l1, &d1);
    let c1 = a.join("restore/x/other-name.bin");
    write(&c1, &d1);
    set_mtime(&c1, 1_000_000_000, 0);
    listing.extend(tsv_line(
        &l1,
        d1.len(),
        &format!("blake3:{}", hex(blake3::hash(&d1).as_bytes())),
    ));
    want.insert(
        b"proj/renamed.dat".to_vec(),
        (
            "exact".into(),
            "stub".into(),
            vec![cand(&c1, "exact", "blake3")],
        ),
    );
    reads.insert(b(&c1));
    // HSM-only: partial, then the whole file.
    bytes += 2 * EDGE as i64 + d1.len() as i64;
    stubs.push(l1);

    // 2. A busy file, deferred, readable: its copy moved deep, another mtime; two same-size
    //    decoys named like it, one even with its mtime, differing only in the middle (the
    //    partial hash agrees: only the full hash tells), one differing at the start.
    let d2 = content(22, 100_000);
    let l2 = src.join("proj/moved.dat");
    write(&l2, &d2);
    set_mtime(&l2, 1_150_000_000, 0);
    let c2 = bdir.join("deep/er/moved.dat");
    write(&c2, &d2);
    set_mtime(&c2, 1_100_000_000, 5);
    let mut mid = d2.clone();
    mid[50_000] ^= 0xff;
    let decoy_mid = bdir.join("deep/moved.dat");
    write(&decoy_mid, &mid);
    set_mtime(&decoy_mid, 1_150_000_000, 0);
    let mut head = d2.clone();
    head[10] ^= 0xff;
    let decoy_head = a.join("moved.dat");
    write(&decoy_head, &head);
    want.insert(
        b"proj/moved.dat".to_vec(),
        (
            "exact".into(),
            "hashed".into(),
            vec![cand(&c2, "exact", "blake3")],
        ),
    );
    for p in [&c2, &decoy_mid, &decoy_head] {
        reads.insert(b(p));
        bytes += 2 * EDGE as i64;
    }
    // The copy and the middle decoy have the leftover's partial hash: read whole.
    bytes += 2 * d2.len() as i64;

    // 3. A stub known only by the HSM's md5; its copy hard-linked under two names.
    let d3 = content(33, 5_000);
    let l3 = src.join("proj/linked.txt");
    write(&l3, &d3);
    let c3 = a.join("links/one");
    write(&c3, &d3);
    let c3b = a.join("links/two");
    std::fs::hard_link(&c3, &c3b).unwrap();
    listing.extend(tsv_line(
        &l3,
        d3.len(),
        &format!("md5:{}", hex(&md5::Md5::digest(&d3))),
    ));
    want.insert(
        b"proj/linked.txt".to_vec(),
        (
            "exact".into(),
            "stub".into(),
            vec![cand(&c3, "exact", "md5"), cand(&c3b, "exact", "md5")],
        ),
    );
    bytes += d3.len() as i64; // one inode, read once (either name)
    stubs.push(l3);

    // 4. A stub known by sha256; a decoy with its name and size.
    let d4 = content(44, 3_000);
    let l4 = src.join("proj/sha.bin");
    write(&l4, &d4);
    let c4 = bdir.join("s/sha-copy");
    write(&c4, &d4);
    let decoy4 = bdir.join("s/sha.bin");
    write(&decoy4, &content(45, 3_000));
    listing.extend(tsv_line(
        &l4,
        d4.len(),
        &format!("SHA256:{}", hex(&sha2::Sha256::digest(&d4))),
    ));
    want.insert(
        b"proj/sha.bin".to_vec(),
        (
            "exact".into(),
            "stub".into(),
            vec![cand(&c4, "exact", "sha256")],
        ),
    );
    reads.insert(b(&c4));
    reads.insert(b(&decoy4));
    bytes += 2 * d4.len() as i64;
    stubs.push(l4);

    // 5. A stub whose content nobody knows: name and mtime decide; nothing is read.
    let d5 = content(55, 7_000);
    let l5 = src.join("proj/probable.doc");
    write(&l5, &d5);
    set_mtime(&l5, 1_200_000_000, 123_456_789);
    let c5 = a.join("p/probable.doc");
    write(&c5, &content(56, 7_000));
    set_mtime(&c5, 1_200_000_000, 900_000_000); // same second
    let c5w = a.join("q/probable.doc");
    write(&c5w, &d5);
    set_mtime(&c5w, 1_200_000_100, 0);
    write(&a.join("r/unrelated"), &d5);
    want.insert(
        b"proj/probable.doc".to_vec(),
        (
            "probable".into(),
            "stub".into(),
            vec![
                cand(&c5, "probable", "name+mtime"),
                cand(&c5w, "weak", "name"),
            ],
        ),
    );
    stubs.push(l5);

    // 6. A stub with no copy anywhere.
    let l6 = src.join("proj/nothing.bin");
    write(&l6, &content(66, 9_999));
    want.insert(
        b"proj/nothing.bin".to_vec(),
        ("none".into(), "stub".into(), vec![]),
    );
    stubs.push(l6);

    // 7. Pathological names, each a stub known by blake3, its copy under the same name.
    let weird = weird_names();
    for (i, name) in weird.iter().enumerate() {
        let d = content(700 + i as u64, 1_000 + 7 * i);
        let rel = join_rel(b"w", name);
        let l = path_of(&src, &rel);
        write(&l, &d);
        let c = path_of(&bdir, &join_rel(b"weird", name));
        write(&c, &d);
        listing.extend(tsv_line(
            &l,
            d.len(),
            &format!("blake3:{}", hex(blake3::hash(&d).as_bytes())),
        ));
        want.insert(
            rel,
            (
                "exact".into(),
                "stub".into(),
                vec![cand(&c, "exact", "blake3")],
            ),
        );
        reads.insert(b(&c));
        bytes += d.len() as i64;
        stubs.push(l);
    }

    // Files of no leftover's size: never opened.
    for i in 0..150 {
        write(
            &a.join(format!("noise/{}/n{i}", i % 7)),
            &content(9000 + i, 20_000 + i as usize),
        );
    }
    // Symlinks out of the search tree are not followed.
    std::os::unix::fs::symlink(&bdir, a.join("link-to-b")).unwrap();

    for s in &stubs {
        if release(s).is_none() {
            eprintln!("SKIP {test}: no user xattrs on this filesystem");
            return None;
        }
    }
    let busy = src.join("proj/moved.dat");
    let holder = Holder::hold_for_write(&busy);
    evac_run(&src, &e.dst, &e.journal, &[HSM, "--retry-rounds", "0"])
        .expect(3, "phase 1 leaves the stubs and the busy file");
    holder.release();
    let lp = e.tmp.path().join("listing.tsv");
    std::fs::write(&lp, &listing).unwrap();
    import(&e.journal, &lp);
    Some(Planted {
        e,
        a,
        b: bdir,
        want,
        reads,
        bytes,
        stubs,
        busy,
        decoys: 3,
        weird,
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn planted_copies_are_classified_decoys_rejected_and_a_rerun_reads_nothing() {
    let _gate = suite_gate!();
    const T: &str = "planted_copies_are_classified_decoys_rejected_and_a_rerun_reads_nothing";
    let Some(p) = plant(T) else { return };
    let src_canon = p.e.src.canonicalize().unwrap();
    let search = Opens::watch(&[&p.a, &p.b]);
    let source = Opens::watch(&[&p.e.src]);
    let csv = p.e.tmp.path().join("report.csv");

    // First run: exactly the candidates that decide something are read, each once.
    let out = fingerprint(
        &p.e.journal,
        &[&p.a, &p.b],
        &[OsStr::new("--report"), csv.as_os_str()],
    );
    out.expect(3, "some leftovers have no exact candidate");
    let got = classes(&p.e.journal);
    assert_eq!(got, p.want, "classification\n{}", out.dump());
    let opened = search.take();
    let hard = [b(&p.a.join("links/one")), b(&p.a.join("links/two"))];
    let hard_opens: usize = hard
        .iter()
        .map(|h| opened.get(h).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        hard_opens, 1,
        "the hard-linked copy is read once: {opened:?}"
    );
    let others: BTreeMap<Vec<u8>, usize> = opened
        .into_iter()
        .filter(|(k, _)| !hard.contains(k))
        .collect();
    let want_reads: BTreeMap<Vec<u8>, usize> = p.reads.iter().map(|r| (r.clone(), 1)).collect();
    assert_eq!(others, want_reads, "files opened in the search trees");
    let (files, bytes, cached) = run_counts(&p.e.journal);
    assert_eq!(
        (files, bytes, cached),
        (p.reads.len() as i64 + 1, p.bytes, 0),
        "files read, bytes read, from the cache"
    );
    // I4: no stub was opened; the deferred file was (it is resident).
    let src_opens = source.take();
    assert_eq!(
        src_opens,
        BTreeMap::from([(b(&p.busy), 1)]),
        "files opened in SOURCE"
    );
    assert!(
        out.stdout_str().contains(&format!(
            "fingerprint: {} leftovers: {} exact, 1 probable, 0 weak, 1 none",
            p.want.len(),
            p.want.len() - 2
        )),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout_str()
            .contains("3 same-size files with other content set aside"),
        "{}",
        out.dump()
    );

    // The CSV: one record per candidate (or per leftover without one), paths escaped.
    let rows = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    let header = &rows[0];
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let records: usize = p.want.values().map(|w| w.2.len().max(1)).sum();
    assert_eq!(rows.len() - 1, records, "CSV records");
    let mut from_csv: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for r in &rows[1..] {
        assert_eq!(r.len(), header.len(), "CSV record {r:?}");
        let e = from_csv.entry(r[col("leftover")].clone()).or_default();
        if !r[col("candidate")].is_empty() {
            e.push((
                r[col("candidate")].clone(),
                r[col("confidence")].clone(),
                r[col("matched_by")].clone(),
            ));
        } else {
            assert_eq!(r[col("confidence")], "none");
        }
    }
    let want_csv: BTreeMap<String, Vec<(String, String, String)>> = p
        .want
        .iter()
        .map(|(rel, w)| {
            (
                esc(&join_rel(&b(&src_canon), rel)),
                w.2.iter()
                    .map(|(c, conf, by)| (esc(c), conf.clone(), by.clone()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(from_csv, want_csv, "the CSV says what the journal says");

    // Second run, nothing changed: no file is read at all, same answers, JSON report.
    let json = p.e.tmp.path().join("report.json");
    let out = fingerprint(
        &p.e.journal,
        &[&p.a, &p.b],
        &[
            OsStr::new("--report"),
            json.as_os_str(),
            OsStr::new("--quiet"),
        ],
    );
    out.expect(3, "rerun");
    assert_eq!(search.take(), BTreeMap::new(), "a rerun opened candidates");
    assert_eq!(run_counts(&p.e.journal), (0, 0, p.reads.len() as i64 + 1));
    assert_eq!(classes(&p.e.journal), p.want, "rerun classification");
    let j = json::parse(std::fs::read_to_string(&json).unwrap().trim()).expect("JSON report");
    let ls = j.get("leftovers").and_then(|v| v.as_array()).unwrap();
    assert_eq!(ls.len(), p.want.len());
    for l in ls {
        let path = l.get("path").and_then(|v| v.as_str()).unwrap();
        let rel = l.get("relative").and_then(|v| v.as_str()).unwrap();
        let (rel_raw, w) = p
            .want
            .iter()
            .find(|(r, _)| esc(r) == rel)
            .unwrap_or_else(|| panic!("JSON leftover {rel:?} unknown"));
        assert_eq!(path, esc(&join_rel(&b(&src_canon), rel_raw)));
        assert_eq!(
            l.get("confidence").and_then(|v| v.as_str()),
            Some(w.0.as_str())
        );
        let cands: Vec<String> = l
            .get("candidates")
            .and_then(|v| v.as_array())
            .unwrap()
            .iter()
            .map(|c| c.get("path").and_then(|v| v.as_str()).unwrap().to_string())
            .collect();
        assert_eq!(cands, w.2.iter().map(|c| esc(&c.0)).collect::<Vec<_>>());
    }
    let sum = j.get("summary").unwrap();
    assert_eq!(
        sum.get("decoys").and_then(|v| v.as_i64()),
        Some(p.decoys as i64)
    );
    assert_eq!(sum.get("files_read").and_then(|v| v.as_i64()), Some(0));

    // Third run after one copy changed its mtime: that file alone is read again; HTML report.
    let c2 = p.b.join("deep/er/moved.dat");
    set_mtime(&c2, 1_300_000_000, 0);
    let html = p.e.tmp.path().join("sheet.html");
    let out = fingerprint(
        &p.e.journal,
        &[&p.a, &p.b],
        &[OsStr::new("--report"), html.as_os_str()],
    );
    out.expect(3, "after a change");
    assert_eq!(search.take(), BTreeMap::from([(b(&c2), 1)]));
    assert_eq!(classes(&p.e.journal), p.want);
    assert_eq!(
        source.take(),
        BTreeMap::from([(b(&p.busy), 2)]),
        "SOURCE opens over runs 2 and 3"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<table").count(), 1, "one table");
    for external in ["http:", "https:", "<link", "src=", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the worksheet refers to {external}"
        );
    }
    assert_eq!(
        page.matches("<tr data-confidence=").count(),
        records,
        "HTML rows"
    );
    let raw = "$(echo pwned);`id`|&<>";
    assert!(!page.contains(raw), "a name went into the HTML unescaped");
    assert!(
        page.contains("$(echo pwned);`id`|&amp;&lt;&gt;"),
        "escaped name missing"
    );
    for w in &p.weird {
        let rel = join_rel(b"w", w);
        let shown = esc(&join_rel(&b(&src_canon), &rel))
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;");
        assert!(page.contains(&shown), "{} not in the worksheet", esc(&rel));
    }

    // status shows the counts.
    let st = status(&p.e.journal);
    let f = st
        .get("fingerprint")
        .expect("status --json has fingerprint");
    assert_eq!(
        f.get("exact").and_then(|v| v.as_i64()),
        Some(p.want.len() as i64 - 2)
    );
    assert_eq!(f.get("none").and_then(|v| v.as_i64()), Some(1));
    assert_eq!(
        source.take(),
        BTreeMap::new(),
        "status opened files in SOURCE"
    );
    assert!(p.stubs.len() > 20);
    let indexed = sum.get("files_indexed").and_then(|v| v.as_i64()).unwrap();
    figures(
        "fingerprint",
        &format!(
            "{} leftovers ({} stubs, never opened): {} exact, 1 probable, 1 none; {} same-size decoys set aside; of {indexed} files indexed, the first run read {} ({} bytes), a rerun 0, a rerun after one change 1",
            p.want.len(),
            p.stubs.len(),
            p.want.len() - 2,
            p.decoys,
            p.reads.len() + 1,
            p.bytes,
        ),
    );
}

#[test]
fn dest_and_other_filesystems_are_not_entered_and_candidate_stubs_not_opened() {
    let _gate = suite_gate!();
    const T: &str = "dest_and_other_filesystems_are_not_entered_and_candidate_stubs_not_opened";
    let e = env();
    let d = content(5, 50_000);
    let l = e.src.join("data/report.pdf");
    write(&l, &d);
    write(&e.src.join("data/ok"), b"resident");
    if release(&l).is_none() {
        skip!(T, "no user xattrs on this filesystem");
    }
    evac_run(&e.src, &e.dst, &e.journal, &[HSM]).expect(3, "phase 1");
    let lp = e.tmp.path().join("listing.tsv");
    let mut listing = b"#h\n".to_vec();
    listing.extend(tsv_line(
        &l,
        d.len(),
        &format!("blake3:{}", hex(blake3::hash(&d).as_bytes())),
    ));
    std::fs::write(&lp, listing).unwrap();
    import(&e.journal, &lp);
    // A copy planted in DEST, one elsewhere, and a stub of the same name and size (an HSM stub
    // in the searched tree is not opened either).
    let in_dest = e.dst.join("planted/report.pdf");
    write(&in_dest, &d);
    let other = e.tmp.path().join("other");
    let copy = other.join("keep/copy.pdf");
    write(&copy, &d);
    let stub = other.join("stubs/report.pdf");
    write(&stub, &d);
    set_mtime(&stub, 1_000_000_000, 0);
    release(&stub).unwrap();
    let top = e.tmp.path().canonicalize().unwrap();
    let watch = Opens::watch(&[&top]);

    // The whole workspace, SOURCE and DEST included: DEST is not entered, SOURCE's stub is the
    // leftover itself, the stub elsewhere is judged by its name only.
    let out = fingerprint(&e.journal, &[&top], &[]);
    out.expect(0, "every leftover has an exact candidate");
    let got = classes(&e.journal);
    let other_c = other.canonicalize().unwrap();
    assert_eq!(
        got[&b"data/report.pdf".to_vec()].2,
        vec![
            (
                b(&other_c.join("keep/copy.pdf")),
                "exact".into(),
                "blake3".into()
            ),
            (
                b(&other_c.join("stubs/report.pdf")),
                "weak".into(),
                "name".into()
            ),
        ],
        "{}",
        out.dump()
    );
    let journal = b(&top.join("journal.db"));
    let opened: Vec<Vec<u8>> = watch
        .take()
        .into_keys()
        .filter(|k| !k.starts_with(&journal))
        .collect();
    assert_eq!(
        opened,
        vec![b(&other_c.join("keep/copy.pdf"))],
        "only the readable copy outside DEST is opened (the journal aside)"
    );

    // DEST given as a search directory is searched.
    let out = fingerprint(&e.journal, &[&top, &e.dst], &[]);
    out.expect(0, "with DEST");
    let dst_c = e.dst.canonicalize().unwrap();
    let cands: Vec<Vec<u8>> = classes(&e.journal)[&b"data/report.pdf".to_vec()]
        .2
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert!(
        cands.contains(&b(&dst_c.join("planted/report.pdf"))),
        "{cands:?}"
    );
    assert_eq!(cands.len(), 3, "{cands:?}");

    // Another filesystem under a search directory is not entered (root: a tmpfs).
    if is_root() {
        let mp = other.join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        if let Ok(_m) = crate::common::mounts::tmpfs(&mp, "8m") {
            write(&mp.join("report.pdf"), &d);
            set_mtime(&mp.join("report.pdf"), 1_000_000_000, 0);
            let out = fingerprint(&e.journal, &[&other], &[]);
            out.expect(0, "a mount inside");
            let cands = &classes(&e.journal)[&b"data/report.pdf".to_vec()].2;
            assert_eq!(cands.len(), 2, "{cands:?}");
            assert!(
                out.stdout_str().contains("not entered (other filesystems"),
                "{}",
                out.dump()
            );
            let out = fingerprint(&e.journal, &[&other, &mp], &[]);
            out.expect(0, "the mount given");
            assert_eq!(classes(&e.journal)[&b"data/report.pdf".to_vec()].2.len(), 3);
        }
    }
}

/// A fanotify listener denying every open of one file (root), so that reading it fails.
struct DenyOpens {
    /// The fanotify group, closed (after the thread stops) when this is dropped.
    _fd: OwnedFd,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DenyOpens {
    fn start(p: &Path) -> Result<DenyOpens, String> {
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
                libc::O_RDONLY as u32,
            )
        };
        if fd < 0 {
            return Err(format!(
                "fanotify_init: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let r = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM,
                libc::AT_FDCWD,
                cpath(p).as_ptr(),
            )
        };
        if r < 0 {
            return Err(format!(
                "fanotify_mark: {}",
                std::io::Error::last_os_error()
            ));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, raw) = (stop.clone(), fd.as_raw_fd());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd: raw,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 {
                    continue;
                }
                let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
                let mut off = 0usize;
                while n > 0 && off + 24 <= n as usize {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                    let efd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    if efd >= 0 {
                        let resp = libc::fanotify_response {
                            fd: efd,
                            response: libc::FAN_DENY,
                        };
                        unsafe {
                            libc::write(
                                raw,
                                (&resp as *const libc::fanotify_response).cast(),
                                std::mem::size_of::<libc::fanotify_response>(),
                            );
                            libc::close(efd);
                        }
                    }
                    off += len.max(24);
                }
            }
        });
        Ok(DenyOpens {
            _fd: fd,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DenyOpens {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_unreadable_candidate_does_not_stop_the_run_and_a_held_journal_is_refused() {
    let _gate = suite_gate!();
    const T: &str = "an_unreadable_candidate_does_not_stop_the_run_and_a_held_journal_is_refused";
    let e = env();
    let d = content(8, 70_000);
    let l = e.src.join("x/thesis.tex");
    write(&l, &d);
    if release(&l).is_none() {
        skip!(T, "no user xattrs on this filesystem");
    }
    evac_run(&e.src, &e.dst, &e.journal, &[HSM]).expect(3, "phase 1");
    let lp = e.tmp.path().join("listing.tsv");
    let mut listing = b"#h\n".to_vec();
    listing.extend(tsv_line(
        &l,
        d.len(),
        &format!("md5:{}", hex(&md5::Md5::digest(&d))),
    ));
    std::fs::write(&lp, listing).unwrap();
    import(&e.journal, &lp);
    std::fs::create_dir_all(e.tmp.path().join("s")).unwrap();
    let s = e.tmp.path().join("s").canonicalize().unwrap();
    let bad = s.join("bad\nname/thesis.tex");
    write(&bad, &d);
    set_mtime(&bad, 1_000_000_000, 0);
    let good = s.join("good/thesis-copy.tex");
    write(&good, &d);
    // Root reads anything: a fanotify listener denies the opens; otherwise mode 000 does.
    let (_deny, why) = if is_root() {
        match DenyOpens::start(&bad) {
            Ok(f) => (Some(f), "Operation not permitted"),
            Err(m) => skip!(T, "no fanotify permission events here: {m}"),
        }
    } else {
        std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        (None, "Permission denied")
    };
    let out = fingerprint(&e.journal, &[&s], &[]);
    out.expect(0, "the readable copy is exact");
    assert!(
        out.stderr_str()
            .contains(&format!("\"{}\": open: {why}", esc(&b(&bad)))),
        "the error names the escaped path and the operation\n{}",
        out.dump()
    );
    let got = &classes(&e.journal)[&b"x/thesis.tex".to_vec()].2;
    assert_eq!(
        got,
        &vec![
            (b(&good), "exact".to_string(), "md5".to_string()),
            (b(&bad), "weak".to_string(), "name".to_string()),
        ],
        "the unreadable copy is a candidate by name only"
    );

    // A run holding the journal: fingerprint refuses with 5 and names it.
    let lock = common_lock(&e.journal);
    let out = fingerprint(&e.journal, &[&s], &[]);
    out.expect(5, "journal held");
    assert!(
        out.stderr_str()
            .contains("in use by another evac run (pid 4242)"),
        "{}",
        out.dump()
    );
    drop(lock);

    // An unknown report extension: exit 1 before any work.
    let before = run_counts(&e.journal);
    let out = fingerprint(
        &e.journal,
        &[&s],
        &[OsStr::new("--report"), OsStr::new("r.txt")],
    );
    out.expect(1, "unknown report extension");
    assert!(
        out.stderr_str().contains("unknown extension .txt")
            && out.stderr_str().contains(".csv, .json or .html"),
        "{}",
        out.dump()
    );
    assert_eq!(run_counts(&e.journal), before);
    let out = fingerprint(&e.journal, &[&e.tmp.path().join("nope")], &[]);
    out.expect(1, "a missing search directory");
    assert!(out.stderr_str().contains("--search"), "{}", out.dump());
}

/// Hold the journal's run lock as a run would (pid 4242 written in it).
fn common_lock(journal: &Path) -> std::fs::File {
    use std::io::Write;
    let mut p = journal.as_os_str().to_owned();
    p.push(".lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(PathBuf::from(p))
        .unwrap();
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    f.write_all(b"4242\n").unwrap();
    f
}

// ---------------------------------------------------------------------------------------------
// Against the simulated HSM: real stubs, reads answered (and logged) by the simulator.
// ---------------------------------------------------------------------------------------------

const SIM: &str = env!("CARGO_BIN_EXE_evac-hsm-sim");

fn sim(args: &[&OsStr]) {
    let out = std::process::Command::new(SIM).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "evac-hsm-sim {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn real_stubs_are_matched_by_the_hsm_checksum_without_a_recall() {
    let _gate = suite_gate!();
    const T: &str = "real_stubs_are_matched_by_the_hsm_checksum_without_a_recall";
    skip_unless_root!(
        T,
        "it loop-mounts ext4 and runs the simulated HSM (fanotify)"
    );
    let e = env();
    let mp = e.tmp.path().join("mnt");
    let _fs = match crate::common::mounts::loop_fs(&e.tmp.path().join("fs.img"), &mp, "ext4", 64) {
        Ok(m) => m,
        Err(m) => skip!(T, "cannot loop-mount an ext4 image: {m}"),
    };
    let src = mp.join("src");
    let tape = e.tmp.path().join("tape");
    std::fs::create_dir_all(&tape).unwrap();
    let search = e.tmp.path().join("restored");
    // Four stubs: one the listing knows by blake3 (as the simulator writes it), one by md5
    // only, one by sha1 only, one not at all; and, on the HSM filesystem, a released copy of
    // the md5 one under its own name (a stub among the candidates).
    let names = ["by-blake3", "by-md5", "by-sha1", "unknown"];
    let mut data = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let d = content(300 + i as u64, 30_000 + 1_000 * i);
        write(&src.join("d").join(n), &d);
        write(&search.join("got").join(format!("{n}.restored")), &d);
        data.insert(*n, d);
    }
    write(&src.join("d/resident"), b"stays");
    let stub_copy = mp.join("elsewhere/by-md5");
    write(&stub_copy, &data["by-md5"]);
    set_mtime(&stub_copy, 1_000_000_000, 0);
    let mut rel: Vec<OsString> = vec!["release".into(), "--tape".into(), tape.clone().into()];
    rel.extend(["--volume".into(), "T1".into()]);
    for n in names {
        rel.push(src.join("d").join(n).into());
    }
    rel.push(stub_copy.clone().into());
    sim(&rel.iter().map(|s| s.as_os_str()).collect::<Vec<_>>());
    let ready = e.tmp.path().join("serve.ready");
    let mut serve = std::process::Command::new(SIM)
        .args([OsStr::new("serve"), OsStr::new("--tape"), tape.as_os_str()])
        .args([OsStr::new("--mount"), mp.as_os_str()])
        .args([OsStr::new("--ready"), ready.as_os_str()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(e.tmp.path().join("serve.err")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        if let Ok(Some(st)) = serve.try_wait() {
            let err = std::fs::read_to_string(e.tmp.path().join("serve.err")).unwrap_or_default();
            skip!(T, "the simulator cannot serve here ({st}): {err}");
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "serve not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _serve = Kill(serve);
    evac_run(&src, &e.dst, &e.journal, &[]).expect(3, "phase 1 leaves the stubs");
    // The simulator's listing, its checksums rewritten as other HSMs keep them.
    let listing = std::fs::read_to_string(tape.join("listing.tsv")).unwrap();
    let mut out = String::new();
    for line in listing.lines() {
        let mut f: Vec<String> = line.split('\t').map(str::to_string).collect();
        if !line.starts_with('#') {
            if f[0].ends_with("/by-md5") && f[0].contains("/src/") {
                f[6] = format!("md5:{}", hex(&md5::Md5::digest(&data["by-md5"])));
            } else if f[0].ends_with("/by-sha1") {
                f[6] = format!("sha1:{}", hex(&sha1::Sha1::digest(&data["by-sha1"])));
            } else if f[0].ends_with("/unknown") {
                f[6] = String::new();
            }
        }
        out.push_str(&f.join("\t"));
        out.push('\n');
    }
    let lp = e.tmp.path().join("listing.tsv");
    std::fs::write(&lp, out).unwrap();
    import(&e.journal, &lp);
    let r = fingerprint(&e.journal, &[&search, &mp], &[]);
    let log = std::fs::read_to_string(tape.join("access.log")).unwrap_or_default();
    assert_eq!(
        log.lines().skip(1).collect::<Vec<_>>(),
        Vec::<&str>::new(),
        "a stub was opened or read (I4)\n{}",
        r.dump()
    );
    r.expect(3, "the unknown stub has no exact candidate");
    let got = classes(&e.journal);
    let sc = search.canonicalize().unwrap();
    for (n, by) in [
        ("by-blake3", "blake3"),
        ("by-md5", "md5"),
        ("by-sha1", "sha1"),
    ] {
        let (conf, content, cands) = &got[&format!("d/{n}").into_bytes()];
        assert_eq!((conf.as_str(), content.as_str()), ("exact", "stub"), "{n}");
        assert_eq!(
            cands[0],
            (
                b(&sc.join(format!("got/{n}.restored"))),
                "exact".into(),
                by.into()
            ),
            "{n}"
        );
    }
    // The released copy has the md5 leftover's name and size: a candidate by name only.
    let md5_cands = &got[&b"d/by-md5".to_vec()].2;
    assert_eq!(
        md5_cands[1],
        (
            b(&mp.canonicalize().unwrap().join("elsewhere/by-md5")),
            "weak".into(),
            "name".into()
        )
    );
    assert_eq!(got[&b"d/unknown".to_vec()].0, "none");
}
