//! Hard-link groups are relocated once the walk has found every name; groups larger than a
//! journal page and groups that straddle page boundaries keep all their names.

use crate::common::*;
use std::os::unix::fs::MetadataExt;

#[test]
fn groups_larger_than_a_page_and_across_pages_keep_every_name() {
    let _gate = suite_gate!();
    let e = env();
    let big = e.src.join("big");
    let pairs = e.src.join("pairs");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::create_dir_all(&pairs).unwrap();
    // One inode with more names than a page (1024) holds.
    std::fs::write(big.join("n0000"), b"one inode, many names\n").unwrap();
    for i in 1..1500 {
        std::fs::hard_link(big.join("n0000"), big.join(format!("n{i:04}"))).unwrap();
    }
    // Many two-name groups, so page boundaries fall inside groups.
    for i in 0..700 {
        let a = pairs.join(format!("p{i:04}a"));
        std::fs::write(&a, format!("pair {i}\n")).unwrap();
        std::fs::hard_link(&a, pairs.join(format!("p{i:04}b"))).unwrap();
    }
    let before = Manifest::scan(&e.src);
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "run over large hard-link groups");
    check_relocated(&before, &e.src, &e.dst, None);
    let st = status(&e.journal);
    assert_eq!(
        count(&st, "relocated"),
        1500 + 1400,
        "every name relocated: {st:?}"
    );
    assert_eq!(
        count(&st, "skipped"),
        0,
        "no group mistaken for one linked from outside: {st:?}"
    );
    let m = std::fs::metadata(e.dst.join("big/n0000")).unwrap();
    assert_eq!(m.nlink(), 1500, "the DEST inode carries all 1500 names");
}

#[test]
fn a_group_with_a_name_outside_source_is_skipped_and_left_intact() {
    let _gate = suite_gate!();
    let e = env();
    std::fs::create_dir_all(&e.src).unwrap();
    let outside = e.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("shared"),
        b"also reachable from outside SOURCE\n",
    )
    .unwrap();
    std::fs::hard_link(outside.join("shared"), e.src.join("inside")).unwrap();
    std::fs::write(e.src.join("plain"), b"plain\n").unwrap();
    evac_run(&e.src, &e.dst, &e.journal, &[]).expect(0, "skipped files are not eligible");
    let m = std::fs::symlink_metadata(e.src.join("inside")).unwrap();
    assert!(m.file_type().is_file(), "the shared inode is left as it is");
    assert_eq!(m.nlink(), 2);
    assert!(!e.dst.join("inside").exists(), "no byte of it at DEST");
    let skipped = status_list(&e.journal, "skipped");
    assert_eq!(skipped, vec![b"inside".to_vec()]);
}
