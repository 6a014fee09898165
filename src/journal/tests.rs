//! The journal's own tests: the embedded migrations apply in order to an empty database (and
//! to journals of earlier versions, whose rows they carry over), reopening is a no-op, and a
//! transaction not committed is rolled back. Real SQLite files in temporary directories.

use super::{Journal, MIGRATIONS};

#[test]
fn all_migrations_apply_to_an_empty_database() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    let j = Journal::open(&p, true).unwrap();
    assert_eq!(j.schema_version().unwrap() as usize, MIGRATIONS.len());
    assert!(j.plan().unwrap().is_none());
    drop(j);
    // Reopening applies nothing twice.
    let j = Journal::open(&p, false).unwrap();
    assert_eq!(j.schema_version().unwrap() as usize, MIGRATIONS.len());
    let c = j.counts().unwrap();
    assert_eq!(c.bytes_total, 0);
}

#[test]
fn migration_files_are_numbered_in_order() {
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
    names.sort();
    let embedded: Vec<String> = MIGRATIONS.iter().map(|(n, _)| format!("{n}.sql")).collect();
    assert_eq!(
        names, embedded,
        "every migrations/*.sql is embedded, in order"
    );
}

#[test]
fn a_journal_from_a_newer_evac_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    drop(Journal::open(&p, true).unwrap());
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch("PRAGMA user_version = 999").unwrap();
    drop(c);
    let e = Journal::open(&p, false)
        .err()
        .expect("newer schema must be refused");
    assert!(e.to_string().contains("newer"), "{e}");
}

#[test]
fn a_journal_of_the_previous_version_gains_the_fingerprint_tables() {
    use super::fingerprint::{CachedFp, FpLeftover, FpMatch, FpRun};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    // A journal as the evac before phase 3 left it: every migration but the last.
    let c = rusqlite::Connection::open(&p).unwrap();
    for (i, (_, sql)) in MIGRATIONS[..MIGRATIONS.len() - 1].iter().enumerate() {
        c.execute_batch(sql).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .unwrap();
    }
    drop(c);
    let j = Journal::open(&p, false).unwrap();
    assert_eq!(j.schema_version().unwrap() as usize, MIGRATIONS.len());
    assert!(j.fp_last_run().unwrap().is_none());
    // The tables hold what `evac recover` reads back.
    let cached = CachedFp {
        dev: 1,
        ino: 2,
        size: 3,
        mtime_ns: 4,
        ctime_ns: 5,
        path: b"/b/\xffx".to_vec(),
        md5: Some(vec![7; 16]),
        ..CachedFp::default()
    };
    j.fp_cache_put(&cached).unwrap();
    assert_eq!(j.fp_cached(1, 2).unwrap(), Some(cached));
    let id = j.fp_start_run("/b").unwrap();
    let l = FpLeftover {
        path: b"d/l\n".to_vec(),
        size: 3,
        content: "stub".into(),
        confidence: "exact".into(),
        candidates: 1,
        hsm_checksum: Some("md5:07070707070707070707070707070707".into()),
        ..FpLeftover::default()
    };
    let m = FpMatch {
        leftover: l.path.clone(),
        rank: 1,
        candidate: b"/b/\xffx".to_vec(),
        confidence: "exact".into(),
        matched_by: "md5".into(),
        size: 3,
        md5: Some(vec![7; 16]),
        ..FpMatch::default()
    };
    let run = FpRun {
        id,
        leftovers: 1,
        exact: 1,
        ..FpRun::default()
    };
    let tx = j.tx().unwrap();
    j.fp_store_results(&run, std::slice::from_ref(&l), std::slice::from_ref(&m))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(j.fp_last_run().unwrap().map(|r| r.exact), Some(1));
    assert_eq!(
        j.fp_leftover(&l.path).unwrap().unwrap().hsm_checksum,
        l.hsm_checksum
    );
    let got = j.fp_matches(&l.path).unwrap();
    assert_eq!((got.len(), &got[0].candidate), (1, &m.candidate));
    let exact = j.fp_exact().unwrap();
    assert_eq!(exact.len(), 1);
    assert_eq!((&exact[0].0.path, &exact[0].1.md5), (&l.path, &m.md5));
    // A later run replaces the results; the cache stays.
    let tx = j.tx().unwrap();
    j.fp_store_results(&run, &[], &[]).unwrap();
    tx.commit().unwrap();
    assert!(j.fp_leftovers().unwrap().is_empty() && j.fp_exact().unwrap().is_empty());
    assert!(j.fp_cached(1, 2).unwrap().is_some());
}

/// A journal written before causes had a column (migration 0009) gains them from the reasons its
/// rows hold; from then on the journal refuses a state or cause that is not one of the words.
#[test]
fn a_journal_before_causes_gains_them_and_refuses_unknown_states() {
    use super::{Cause, FileState};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    let c = rusqlite::Connection::open(&p).unwrap();
    let before = MIGRATIONS
        .iter()
        .position(|(n, _)| *n == "0009_cause")
        .expect("migration 0009_cause");
    for (i, (_, sql)) in MIGRATIONS[..before].iter().enumerate() {
        c.execute_batch(sql).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .unwrap();
    }
    let rows: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "a",
            "file",
            "deferred",
            Some("open for writing by another process (pid 7 vi)"),
        ),
        (
            "b",
            "file",
            "deferred",
            Some("destination full: write DEST: No space left on device (os error 28)"),
        ),
        (
            "c",
            "file",
            "deferred",
            Some("destination full (quota): write DEST: Disk quota exceeded (os error 122)"),
        ),
        (
            "d",
            "file",
            "failed",
            Some("write DEST: Input/output error (os error 5)"),
        ),
        (
            "e",
            "file",
            "staged_out",
            Some("staged out (blocks rule: size above zero, no data blocks)"),
        ),
        ("f", "fifo", "skipped", Some("FIFO (never opened)")),
        (
            "g",
            "file",
            "deferred",
            Some("storage not answering: gave up after 30 s blocked in write"),
        ),
        ("h", "file", "relocated", None),
        ("i", "file", "swapped", None),
    ];
    for (path, kind, state, reason) in rows {
        c.execute(
            "INSERT INTO files (path, kind, state, reason) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![path.as_bytes(), kind, state, reason],
        )
        .unwrap();
    }
    drop(c);
    drop(Journal::open(&p, false).unwrap());
    let c = rusqlite::Connection::open(&p).unwrap();
    let got = |path: &str| -> (FileState, Option<Cause>) {
        c.query_row(
            "SELECT state, cause FROM files WHERE path = ?1",
            [path.as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(got("a"), (FileState::Deferred, Some(Cause::Busy)));
    assert_eq!(got("b"), (FileState::Deferred, Some(Cause::DestFull)));
    assert_eq!(got("c"), (FileState::Deferred, Some(Cause::DestQuota)));
    assert_eq!(got("d"), (FileState::Failed, Some(Cause::Error)));
    assert_eq!(got("e"), (FileState::StagedOut, Some(Cause::Hsm)));
    assert_eq!(got("f"), (FileState::Skipped, Some(Cause::NotAFile)));
    assert_eq!(got("g"), (FileState::Deferred, Some(Cause::Abandoned)));
    assert_eq!(got("h"), (FileState::Relocated, None));
    // Never written by any evac; in flight if it were.
    assert_eq!(got("i"), (FileState::Placed, None));
    for bad in [
        "UPDATE files SET state = 'swapped' WHERE path = x'61'",
        "UPDATE files SET cause = 'whatever' WHERE path = x'61'",
        "INSERT INTO files (path, kind, state) VALUES (x'7a', 'file', 'done')",
    ] {
        let e = c.execute_batch(bad).expect_err(bad);
        assert!(
            e.to_string().contains("no such state or cause"),
            "{bad}: {e}"
        );
    }
}

/// A transaction guard dropped without its commit (an error on the way) leaves nothing behind;
/// one opened inside another joins it, and only the outer one commits.
#[test]
fn a_transaction_not_committed_is_rolled_back() {
    use super::FileState;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    let j = Journal::open(&p, true).unwrap();
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute(
        "INSERT INTO files (id, path, kind, state) VALUES (1, x'61', 'file', 'pending')",
        [],
    )
    .unwrap();
    let state = || -> String {
        c.query_row("SELECT state FROM files WHERE id = 1", [], |r| r.get(0))
            .unwrap()
    };
    {
        let _tx = j.tx().unwrap();
        j.mark_copying(1).unwrap();
        assert!(j.in_transaction());
    }
    assert!(!j.in_transaction());
    assert_eq!(state(), "pending", "an uncommitted guard's write survived");
    let outer = j.tx().unwrap();
    {
        let inner = j.tx().unwrap();
        j.set_state(1, FileState::Copying, None).unwrap();
        inner.commit().unwrap();
    }
    assert!(
        j.in_transaction(),
        "the inner guard ended the outer transaction"
    );
    outer.commit().unwrap();
    assert_eq!(state(), "copying");
}

/// A journal written before the counters (migration 0010) gains them from its rows; from then on
/// every insert, change of state, kind, size, link or walk, and delete keeps them equal to a full
/// count, whoever makes it (here plain SQL, as an operator's hand edit would).
#[test]
fn a_journal_before_the_counters_gains_them_and_they_follow_every_change() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    let c = rusqlite::Connection::open(&p).unwrap();
    let before = MIGRATIONS
        .iter()
        .position(|(n, _)| *n == "0011_counts")
        .expect("migration 0011_counts");
    for (i, (_, sql)) in MIGRATIONS[..before].iter().enumerate() {
        c.execute_batch(sql).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .unwrap();
    }
    c.execute_batch(
        "INSERT INTO runs (pid, args, started_at, heartbeat_at) VALUES (1, '', 0, 0), (2, '', 1, 1);
         INSERT INTO files (path, kind, state, size, seen_run, linked_ino) VALUES
            (x'61', 'file', 'relocated', 100, 1, 5),
            (x'62', 'file', 'relocated', 200, 2, 6),
            (x'63', 'file', 'pending', 300, 2, NULL),
            (x'64', 'file', 'deferred', NULL, NULL, NULL),
            (x'65', 'fifo', 'skipped', 0, 2, NULL),
            (x'66', 'symlink', 'skipped', NULL, 1, NULL);
         INSERT INTO dirs (path, depth, mode, uid, gid, atime_ns, mtime_ns, seen_run) VALUES
            (x'64', 0, 493, 0, 0, 0, 0, 1), (x'65', 0, 493, 0, 0, 0, 0, NULL);",
    )
    .unwrap();
    drop(c);
    let j = Journal::open(&p, false).unwrap();
    assert_eq!(j.check_counters().unwrap(), vec![], "after the backfill");
    let n = j.counts().unwrap();
    assert_eq!(
        (n.bytes_total, n.bytes_relocated),
        (600, 300),
        "bytes from the backfilled counters"
    );
    assert_eq!(n.of(super::FileState::Relocated), 2);
    let cut = j.cutover().unwrap();
    assert_eq!(
        cut.not_carried,
        vec![("fifo".to_string(), 1), ("symlink".to_string(), 1)]
    );

    let c = rusqlite::Connection::open(&p).unwrap();
    for (what, sql) in [
        (
            "insert",
            "INSERT INTO files (path, kind, state, size, seen_run) VALUES (x'67', 'file', 'pending', 7, 2)",
        ),
        (
            "state",
            "UPDATE files SET state = 'relocated', linked_ino = 9 WHERE path = x'63'",
        ),
        ("size", "UPDATE files SET size = 301 WHERE path = x'63'"),
        ("size from none", "UPDATE files SET size = 5 WHERE path = x'64'"),
        ("walk", "UPDATE files SET seen_run = 2"),
        (
            "kind",
            "UPDATE files SET kind = 'symlink', linked_ino = NULL WHERE path = x'61'",
        ),
        ("unchanged", "UPDATE files SET state = state, size = size"),
        ("delete", "DELETE FROM files WHERE path = x'62'"),
        (
            "busy",
            "UPDATE files SET state = 'deferred', cause = 'busy', reason = 'open for writing (pid 7 vi)' WHERE path = x'63';
             UPDATE files SET cause = 'busy', reason = 'open for writing (pid 8 emacs)' WHERE path = x'64'",
        ),
        (
            "reason",
            "UPDATE files SET reason = 'open for writing (pid 9 ed)' WHERE path = x'64';
             UPDATE files SET cause = 'error', reason = 'read SOURCE: EIO' WHERE path = x'63'",
        ),
        ("left behind no more", "UPDATE files SET state = 'pending', cause = NULL WHERE path = x'63'"),
        (
            "dirs",
            "UPDATE dirs SET seen_run = 2; INSERT INTO dirs (path, depth, mode, uid, gid, atime_ns, mtime_ns) VALUES (x'66', 0, 493, 0, 0, 0, 0); DELETE FROM dirs WHERE path = x'64'",
        ),
    ] {
        c.execute_batch(sql).unwrap();
        assert_eq!(j.check_counters().unwrap(), vec![], "after {what}: {sql}");
    }
    // A busy file's reason is counted without the processes it names.
    let top = j.top_reasons(10).unwrap();
    assert!(
        top.iter()
            .any(|r| r.1 == Some(super::Cause::Busy) && r.2 == "open for writing" && r.3 == 1),
        "{top:?}"
    );
    // And a counter changed behind the triggers' back is found.
    c.execute_batch("UPDATE dir_counts SET dirs = dirs + 1 WHERE seen_run = 2")
        .unwrap();
    let m = j.check_counters().unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].kept.0, m[0].counted.0), (2, 1), "{m:?}");
}

/// Events written before migration 0012 read back with their file's path and START/FINISH named;
/// `--since` starts near its time on a long history (bisecting, not scanning) and loses nothing.
#[test]
fn events_before_the_event_log_read_back_and_since_bisects() {
    use super::{EventCursor, EventTable};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.sqlite");
    let before = MIGRATIONS
        .iter()
        .position(|(n, _)| *n == "0012_event_log")
        .unwrap();
    let c = rusqlite::Connection::open(&p).unwrap();
    for (i, (_, sql)) in MIGRATIONS[..before].iter().enumerate() {
        c.execute_batch(sql).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .unwrap();
    }
    c.execute_batch(
        "INSERT INTO files (id, path, kind, state) VALUES (7, X'612FFF', 'file', 'relocated');
         INSERT INTO events (file_id, run_id, at, event, detail) VALUES (7, 1, 100.0, 'relocated', 'abc');
         INSERT INTO log (run_id, at, level, message) VALUES (1, 99.0, 'info', 'START run 1 pid 5: ...');
         INSERT INTO log (run_id, at, level, message) VALUES (1, 99.5, 'warn', 'a warning');",
    )
    .unwrap();
    drop(c);
    let j = Journal::open(&p, false).unwrap();
    let (rows, next) = j.events_page(EventCursor::default(), None, 10).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(names, ["START", "log", "relocated"], "in time order");
    assert_eq!(rows[2].path.as_deref(), Some(&b"a/\xff"[..]));
    assert_eq!(rows[2].table, EventTable::File);
    assert_eq!(next, EventCursor { file: 1, log: 2 });
    assert!(j.events_page(next, None, 10).unwrap().0.is_empty());

    // A day of events, one every 10 s in each table (with new rows' own paths).
    let t0 = 1_000_000.0;
    let tx = j.tx().unwrap();
    for i in 0..8640 {
        let at = t0 + f64::from(i) * 10.0;
        j.conn
            .execute(
                "INSERT INTO events (file_id, run_id, at, event, detail, path) VALUES (7, 2, ?1, 'deferred', 'x', X'62')",
                [at],
            )
            .unwrap();
        j.log_event(Some(2), at + 5.0, "info", Some("governor"), "g", Some("{}"))
            .unwrap();
    }
    tx.commit().unwrap();
    let since = t0 + 86_400.0 - 3600.0 - 2.5;
    let mut cur = j.events_cursor_at(since).unwrap();
    assert!(
        cur.file > 8000,
        "the start is found near the time, not at the first row: {cur:?}"
    );
    let mut got = Vec::new();
    loop {
        let (rows, next) = j.events_page(cur, Some(since), 100).unwrap();
        got.extend(rows);
        if next == cur {
            break;
        }
        cur = next;
    }
    assert_eq!(got.len(), 720, "an hour of both tables");
    assert!(got.iter().all(|r| r.at >= since));
    assert!(got.windows(2).all(|w| w[0].at <= w[1].at), "in time order");
    assert_eq!(got[0].path.as_deref(), Some(&b"b"[..]));
    assert_eq!(
        j.events_cursor_at(t0 * 10.0).unwrap().file,
        j.events_end().unwrap().file
    );
    // A governor decision recorded long after it was made (no commit during a pause) is found.
    j.log_event(
        Some(2),
        since + 1.0,
        "info",
        Some("governor"),
        "late",
        Some("{}"),
    )
    .unwrap();
    let cur = j.events_cursor_at(since).unwrap();
    let (rows, _) = j.events_page(cur, Some(since), 100_000).unwrap();
    assert_eq!(rows.len(), 721);
    assert!(rows.iter().any(|r| r.detail.as_deref() == Some("late")));
}
