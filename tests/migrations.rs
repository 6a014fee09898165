//! The embedded migrations apply in order to an empty database, and reopening is a no-op.

use evac::journal::{Journal, MIGRATIONS};

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
