//! The journal's counters (`migrations/0011_counts.sql`): what `status` reads instead of
//! counting the files table. They must equal a full count after runs that move files through
//! every state, and `evac verify` must name a counter that does not.

use crate::common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

fn db(journal: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(journal).expect("open journal with rusqlite")
}

/// Files by state: (as the counters keep them, as a full count of the files table finds them).
fn by_state(journal: &Path) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let c = db(journal);
    let q = |sql: &str| -> BTreeMap<String, i64> {
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<BTreeMap<String, i64>>>()
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .collect()
    };
    (
        q("SELECT state, sum(files) FROM counts GROUP BY state"),
        q("SELECT state, count(*) FROM files GROUP BY state"),
    )
}

/// (bytes of all files to relocate, bytes relocated), counted over the files table.
fn bytes_counted(journal: &Path) -> (i64, i64) {
    db(journal)
        .query_row(
            "SELECT coalesce(sum(size), 0), coalesce(sum(CASE WHEN state = 'relocated' THEN size ELSE 0 END), 0)
               FROM files WHERE kind = 'file' AND state NOT IN ('gone', 'skipped')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// The cutover readiness as a full scan finds it (the query status ran before the counters):
/// (differences, entries not carried over), by what.
fn cutover_counted(journal: &Path) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let c = db(journal);
    let run: i64 = c
        .query_row(
            "SELECT coalesce(max(id), -1) FROM runs WHERE resynced_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut st = c
        .prepare(
            "SELECT what, count(*) FROM (
                SELECT 'files not relocated' AS what FROM files
                 WHERE kind = 'file' AND state IN ('pending', 'copying', 'placed', 'deferred', 'failed', 'staged_out', 'skipped')
                UNION ALL
                SELECT 'renamed links not followed at DEST' FROM files
                 WHERE kind = 'symlink' AND target IS NOT NULL AND state IN ('failed', 'deferred')
                UNION ALL
                SELECT 'copies at DEST whose link is gone' FROM files
                 WHERE linked_ino IS NOT NULL AND (seen_run IS NULL OR seen_run != ?1 OR state != 'relocated' OR kind != 'file')
                   AND state NOT IN ('copying', 'placed')
                UNION ALL
                SELECT 'DEST directories gone from SOURCE' FROM dirs
                 WHERE seen_run IS NULL OR seen_run != ?1
                UNION ALL
                SELECT 'left:' || kind FROM files
                 WHERE state = 'skipped' AND kind != 'file' AND kind != 'reserved'
             ) GROUP BY what",
        )
        .unwrap();
    let rows = st
        .query_map([run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    let (mut diff, mut left) = (BTreeMap::new(), BTreeMap::new());
    for r in rows {
        let (what, n) = r.unwrap();
        match what.strip_prefix("left:") {
            Some(k) => left.insert(k.to_string(), n),
            None => diff.insert(what, n),
        };
    }
    (diff, left)
}

fn verify(journal: &Path, json: bool) -> Out {
    let mut args = vec![
        OsStr::new("verify"),
        OsStr::new("--journal"),
        journal.as_os_str(),
    ];
    if json {
        args.push(OsStr::new("--json"));
    }
    evac(args)
}

/// The counters, status and a full count agree, as `verify` says too.
#[track_caller]
fn assert_agree(journal: &Path, when: &str) {
    let (kept, counted) = by_state(journal);
    assert_eq!(kept, counted, "{when}: counters against a full count");
    let st = status(journal);
    let pending: i64 = ["pending", "copying", "placed"]
        .iter()
        .map(|s| counted.get(*s).copied().unwrap_or(0))
        .sum();
    assert_eq!(count(&st, "pending"), pending, "{when}: status pending");
    for s in [
        "relocated",
        "deferred",
        "failed",
        "skipped",
        "gone",
        "staged_out",
    ] {
        assert_eq!(
            count(&st, s),
            counted.get(s).copied().unwrap_or(0),
            "{when}: status files.{s}: {st:?}"
        );
    }
    let (total, done) = bytes_counted(journal);
    assert_eq!(
        st.get("bytes_total").and_then(|v| v.as_i64()),
        Some(total),
        "{when}: bytes_total"
    );
    assert_eq!(
        st.get("bytes_relocated").and_then(|v| v.as_i64()),
        Some(done),
        "{when}: bytes_relocated"
    );
    let (diff, left) = cutover_counted(journal);
    let cut = st
        .get("cutover")
        .unwrap_or_else(|| panic!("no cutover: {st:?}"));
    let map = |k: &str| -> BTreeMap<String, i64> {
        cut.get(k)
            .and_then(|m| m.as_object())
            .unwrap_or_else(|| panic!("no cutover.{k}: {st:?}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
            .collect()
    };
    assert_eq!(map("differences"), diff, "{when}: cutover differences");
    assert_eq!(
        map("not_carried_over"),
        left,
        "{when}: cutover not carried over"
    );
    let v = verify(journal, false);
    assert!(
        v.stdout_str()
            .contains("counters (what status reads) agree with a full count"),
        "{when}: verify does not say the counters agree\n{}",
        v.dump()
    );
}

#[test]
fn counters_follow_runs_that_move_files_through_their_states() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(
        &e.src,
        &TreeSpec {
            symlinks: true,
            specials: true,
            hardlinks: true,
            sparse: true,
            ..TreeSpec::plain(60, 421)
        },
    );
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "first run");
    assert_agree(&e.journal, "after the first run");
    let relocated = count(&status(&e.journal), "relocated");
    assert!(relocated >= 60, "relocated {relocated}");

    // Users work between runs: links deleted (gone, their copies to the trash), a directory
    // renamed (resync follows it), new files, and one relocated link replaced by a new file.
    let t = e.src.join("t");
    let mut links: Vec<_> = walk_files(&t)
        .into_iter()
        .filter(|p| p.symlink_metadata().unwrap().file_type().is_symlink())
        .collect();
    links.sort();
    assert!(links.len() > 10, "links {}", links.len());
    for p in &links[..5] {
        std::fs::remove_file(p).unwrap();
    }
    std::fs::remove_file(&links[5]).unwrap();
    std::fs::write(&links[5], b"a new version where the link was").unwrap();
    std::fs::create_dir_all(e.src.join("new/sub")).unwrap();
    for i in 0..7 {
        std::fs::write(e.src.join(format!("new/sub/n{i}")), vec![b'x'; 1000 + i]).unwrap();
    }
    let dirs: Vec<_> = std::fs::read_dir(&t)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    std::fs::rename(&dirs[0], t.join("renamed-by-a-user")).unwrap();

    // The file where a link was waits for a second walk (resync must first see that no renamed
    // link still names the old copy): exit 3 with it deferred, then the third run takes it.
    evac_resume(&e.journal, &[]).expect(3, "second run");
    assert_agree(&e.journal, "after the second run");
    let (_, counted) = by_state(&e.journal);
    assert_eq!(counted.get("deferred"), Some(&1), "{counted:?}");
    assert!(
        counted.get("gone").copied().unwrap_or(0) >= 5,
        "the deleted links are not gone: {counted:?}"
    );
    evac_resume(&e.journal, &[]).expect(0, "third run");
    assert_agree(&e.journal, "after the third run");
    assert_eq!(
        count(&status(&e.journal), "relocated"),
        relocated + 7 + 1 - 6
    );
    verify(&e.journal, false).expect(0, "verify after the third run");
}

/// A list of the regular files and symlinks under `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d).unwrap() {
            let p = ent.unwrap().path();
            let ft = p.symlink_metadata().unwrap().file_type();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() || ft.is_symlink() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn verify_names_a_counter_that_differs_from_a_full_count() {
    let _gate = suite_gate!();
    let e = env();
    build_tree(&e.src, &TreeSpec::plain(25, 422));
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run");
    verify(&e.journal, false).expect(0, "verify before the damage");
    let before = count(&status(&e.journal), "relocated");

    // A counter wrong by 7 files and 4096 bytes, as a bug or a hand edit would leave it.
    let n = db(&e.journal)
        .execute(
            "UPDATE counts SET files = files + 7, bytes = bytes + 4096
              WHERE (state, kind, linked, seen_run) =
                    (SELECT state, kind, linked, seen_run FROM counts
                      WHERE state = 'relocated' AND kind = 'file' AND files > 0 LIMIT 1)",
            [],
        )
        .unwrap();
    assert_eq!(n, 1, "no counter of relocated files to damage");

    // status reads the counters (it is not counting the table behind them)...
    assert_eq!(count(&status(&e.journal), "relocated"), before + 7);
    // ...and verify tells them apart from a full count.
    let out = verify(&e.journal, false);
    out.expect(3, "verify with a damaged counter");
    let text = out.stdout_str();
    assert!(
        text.contains("PROBLEM journal counters: relocated files")
            && text.contains(&format!("{} files", before + 7))
            && text.contains("1 of the journal's counters differ from a full count"),
        "verify does not name the damaged counter\n{}",
        out.dump()
    );
    let out = verify(&e.journal, true);
    out.expect(3, "verify --json with a damaged counter");
    let v = json_parse(&out);
    assert_eq!(v.get("ok").and_then(|x| x.as_bool()), Some(false));
    let c = v
        .get("counters")
        .and_then(|c| c.as_array())
        .unwrap_or_else(|| panic!("no counters in {v:?}"));
    assert_eq!(c.len(), 1, "{v:?}");
    let f = |k: &str| c[0].get(k).and_then(|x| x.as_i64()).unwrap();
    assert_eq!(
        (
            f("kept_files") - f("counted_files"),
            f("kept_bytes") - f("counted_bytes")
        ),
        (7, 4096)
    );
}

fn json_parse(out: &Out) -> Json {
    json::parse(out.stdout_str().trim())
        .unwrap_or_else(|e| panic!("invalid JSON ({e})\n{}", out.dump()))
}
