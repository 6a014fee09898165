//! `evac hsm import`: the HSM's listing into the journal, in evac's TSV (and NUL) format, Lustre's
//! `lfs hsm_state` output and DMF's `dmls -l`; malformed lines reported by number and skipped;
//! entries outside SOURCE, missing or already relocated reported and not imported; importing
//! again updates; a journal without a plan is refused.

use crate::common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

type Row = (
    String,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn hsm_rows(journal: &Path) -> std::collections::BTreeMap<Vec<u8>, Row> {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = c
        .prepare("SELECT path, state, tier, volume, position, size, checksum FROM hsm_files")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                (
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ),
            ))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

fn import(journal: &Path, format: &str, listing: &Path, extra: &[&str]) -> Out {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("hsm"),
        OsStr::new("import"),
        OsStr::new("--journal"),
        journal.as_os_str(),
        OsStr::new("--format"),
        OsStr::new(format),
    ];
    args.extend(extra.iter().map(OsStr::new));
    args.push(listing.as_os_str());
    evac(args)
}

/// A tree already relocated once (so the journal has its plan), with stubs the run left.
fn setup() -> (Env, Vec<u8>) {
    let e = env();
    for (rel, len) in [("t/s1", 5000u64), ("t/s2", 70000), ("u/deep/s3", 123)] {
        let p = e.src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    }
    let weird: Vec<u8> = b"t/we\tird\nname\xff".to_vec();
    let wp = e.src.join(OsStr::from_bytes(&weird));
    std::fs::File::create(&wp).unwrap().set_len(10).unwrap();
    std::fs::write(e.src.join("t/resident"), b"data").unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(3, "first run leaves the stubs");
    (e, weird)
}

#[test]
fn tsv_listing_imports_reports_and_updates() {
    let _gate = suite_gate!();
    let (e, weird) = setup();
    let src = e.src.to_str().unwrap();
    let listing = e.tmp.path().join("listing.tsv");
    let body = format!(
        "#path\tstate\ttier\tvolume\tposition\tsize\tchecksum\n\
         {src}/t/s1\tstaged_out\t1\tVOL001\t7\t5000\tmd5:0123456789abcdef0123456789abcdef\n\
         {src}/t/s2\tstaged_out\t2\tVOL002\t1\t70000\t\n\
         u/deep/s3\tstaged_out\t1\tVOL001\t2\t123\tsha256:00\n\
         {src}/t/we\\tird\\nname\\xff\tstaged_out\t1\tVOL001\t3\t10\t\n\
         {src}/t/missing\tstaged_out\t1\tVOL001\t4\t1\t\n\
         /etc/passwd\tstaged_out\t1\tVOL001\t5\t1\t\n\
         {src}/../etc/shadow\tstaged_out\t1\tVOL001\t6\t1\t\n\
         {src}/t/resident\tpremigrated\t1\tVOL003\t1\t4\t\n\
         {src}/t/s1\tbogus\t1\tVOL001\t7\t5000\t\n\
         {src}/t/s2\tstaged_out\tone\tVOL002\t1\t70000\t\n\
         only\tthree\tfields\n"
    );
    std::fs::write(&listing, body).unwrap();
    let out = import(&e.journal, "tsv", &listing, &[]);
    out.expect(0, "import");
    let text = out.text();
    for line in [10, 11, 12] {
        assert!(
            text.contains(&format!("line {line}:")),
            "malformed line {line} not reported:\n{text}"
        );
    }
    assert!(text.contains("imported 4 records (4 staged out)"), "{text}");
    assert!(
        text.contains(
            "3 malformed lines skipped, 2 not under SOURCE, 1 not in SOURCE, 1 already relocated"
        ),
        "{text}"
    );
    assert!(text.contains("\"/etc/passwd\": not under SOURCE"), "{text}");
    assert!(text.contains("\"t/missing\": not in SOURCE"), "{text}");
    let rows = hsm_rows(&e.journal);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        rows[b"t/s1".as_slice()],
        (
            "staged_out".to_string(),
            Some(1),
            Some("VOL001".to_string()),
            Some(7),
            Some(5000),
            Some("md5:0123456789abcdef0123456789abcdef".to_string())
        )
    );
    assert!(
        rows.contains_key(&weird),
        "the escaped name was not matched: {rows:?}"
    );
    assert!(rows.contains_key(b"u/deep/s3".as_slice()), "relative path");
    let st = status(&e.journal);
    let h = st.get("hsm").unwrap();
    assert_eq!(
        h.get("db_staged_out").and_then(|v| v.as_i64()),
        Some(4),
        "{st:?}"
    );
    assert_eq!(
        h.get("db_volumes").and_then(|v| v.as_i64()),
        Some(2),
        "{st:?}"
    );

    // Again, with a record changed: updated, nothing duplicated.
    std::fs::write(
        &listing,
        format!("{src}/t/s1\tstaged_out\t1\tVOL009\t1\t5000\t\n"),
    )
    .unwrap();
    import(&e.journal, "tsv", &listing, &["--quiet"]).expect(0, "import again");
    let rows = hsm_rows(&e.journal);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[b"t/s1".as_slice()].2.as_deref(), Some("VOL009"));
    assert_eq!(
        rows[b"t/s1".as_slice()].5,
        None,
        "the new record replaces the old one"
    );
}

#[test]
fn nul_lfs_and_dmls_listings() {
    let _gate = suite_gate!();
    let (e, weird) = setup();
    let src = e.src.as_os_str().as_bytes().to_vec();
    // tsv0: raw bytes, seven NUL-terminated fields per record.
    let mut l0 = Vec::new();
    for (rel, vol) in [(weird.as_slice(), "V1"), (b"t/s2".as_slice(), "V2")] {
        let mut abs = src.clone();
        abs.push(b'/');
        abs.extend_from_slice(rel);
        for f in [
            abs.as_slice(),
            b"staged_out",
            b"1",
            vol.as_bytes(),
            b"1",
            b"10",
            b"",
        ] {
            l0.extend_from_slice(f);
            l0.push(0);
        }
    }
    l0.extend_from_slice(b"dangling");
    let p0 = e.tmp.path().join("l.tsv0");
    std::fs::write(&p0, &l0).unwrap();
    let out = import(&e.journal, "tsv0", &p0, &[]);
    out.expect(0, "tsv0");
    assert!(
        out.text().contains("imported 2 records (2 staged out)"),
        "{}",
        out.text()
    );
    assert!(out.text().contains("not NUL-terminated"), "{}", out.text());
    assert!(hsm_rows(&e.journal).contains_key(&weird));

    // lfs hsm_state, as `find SOURCE -type f | xargs lfs hsm_state` prints it.
    let s = e.src.to_str().unwrap();
    let lfs = format!(
        "{s}/t/s1: (0x0000000d) released exists archived, archive_id:3\n\
         {s}/t/resident: (0x00000009) exists archived, archive_id:1\n\
         {s}/u/deep/s3: (0x0000004d) released exists archived lost, archive_id:1\n\
         not an lfs line\n"
    );
    let pl = e.tmp.path().join("l.lfs");
    std::fs::write(&pl, lfs).unwrap();
    let out = import(&e.journal, "lfs", &pl, &[]);
    out.expect(0, "lfs");
    assert!(out.text().contains("line 4:"), "{}", out.text());
    let rows = hsm_rows(&e.journal);
    assert_eq!(rows[b"t/s1".as_slice()].0, "staged_out");
    assert_eq!(
        rows[b"t/s1".as_slice()].1,
        Some(3),
        "archive_id is the tier"
    );
    assert_eq!(rows[b"u/deep/s3".as_slice()].0, "lost");
    assert!(
        !rows.contains_key(b"t/resident".as_slice()),
        "already relocated"
    );

    // dmls -lR: directory headers, then ls -l lines with the DMF state.
    let dmls = format!(
        "{s}/t:\ntotal 80\n-rw-r--r-- 1 root root 70000 Jul 22 15:01 (OFL) s2\n\
         -rw-r--r-- 1 root root 4 Jul 22 15:01 (DUL) resident\n\
         drwxr-xr-x 2 root root 4096 Jul 22 15:01 sub\n\n{s}/u/deep:\n\
         -rw-r--r-- 1 root root 123 Jul 22 15:01 (PAR) s3\n\
         -rw-r--r-- 1 root root 123 Jul 22 15:01 (XXX) s3\n"
    );
    let pd = e.tmp.path().join("l.dmls");
    std::fs::write(&pd, dmls).unwrap();
    let out = import(&e.journal, "dmls", &pd, &[]);
    out.expect(0, "dmls");
    assert!(
        out.text().contains("unknown DMF state (XXX)"),
        "{}",
        out.text()
    );
    let rows = hsm_rows(&e.journal);
    assert_eq!(rows[b"t/s2".as_slice()].4, Some(70000));
    assert_eq!(rows[b"u/deep/s3".as_slice()].0, "staged_out");
}

#[test]
fn import_needs_a_planned_journal_and_a_known_format() {
    let _gate = suite_gate!();
    let e = env();
    let listing = e.tmp.path().join("l.tsv");
    std::fs::write(&listing, "").unwrap();
    // The journal must exist with a plan: a missing or empty one is an error naming it.
    let out = import(&e.journal, "tsv", &listing, &[]);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(
        out.text().contains(e.journal.to_str().unwrap()),
        "{}",
        out.dump()
    );
    let (e2, _) = setup();
    let out = import(&e2.journal, "csv", &listing, &[]);
    assert_eq!(out.code(), 1, "{}", out.dump());
    // Refused by the command line's parser, which names the option and the formats.
    assert!(
        out.text().contains("'--format <FORMAT>'")
            && out.text().contains("possible values: tsv, tsv0, lfs, dmls"),
        "{}",
        out.dump()
    );
    let out = import(&e2.journal, "tsv", &e2.tmp.path().join("nope"), &[]);
    assert_eq!(out.code(), 1, "{}", out.dump());
    assert!(out.text().contains("read the listing"), "{}", out.dump());
}
