//! The layers of the code (README, "Code layout") hold: every module uses only modules of a
//! lower layer or its own, so no cycle between modules can come back. Read from the sources:
//! every `crate::` path in a file is an edge from the file's module to the module it names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The modules, lowest first. A module may use modules of a strictly lower rank, and itself.
const LAYERS: &[(&str, u32)] = &[
    ("util", 0),
    ("error", 1),
    ("sys", 2),
    ("hsm", 3),
    ("hsm::detect", 3),
    ("journal", 4),
    ("pace", 5),
    ("protocol", 6),
    ("hsm::import", 6),
    ("engine", 7),
    ("fingerprint", 7),
    ("hsm::stage", 8),
    ("ui", 9),
    ("app", 10),
    ("cli", 11),
];

/// The layer node a module path belongs to (the longest declared prefix).
fn node(path: &str) -> Option<&'static str> {
    LAYERS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| path == *n || path.starts_with(&format!("{n}::")))
        .max_by_key(|n| n.len())
}

fn rank(n: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == n)
        .map(|(_, r)| *r)
        .unwrap()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file under src/ ("engine::resync" for src/engine/resync.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != "mod")
        .collect();
    parts.join("::")
}

/// Source text without comments (doc comments cite paths too).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn modules_use_only_lower_layers() {
    let _gate = suite_gate!();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut edges = 0;
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        if rel.starts_with("bin") || rel == Path::new("main.rs") || rel == Path::new("lib.rs") {
            continue;
        }
        let from_mod = module_of(&src, f);
        let Some(from) = node(&from_mod) else {
            bad.entry(from_mod.clone())
                .or_default()
                .push("belongs to no layer".into());
            continue;
        };
        let text = code(&std::fs::read_to_string(f).unwrap());
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            let Some(to) = node(path) else {
                bad.entry(from_mod.clone())
                    .or_default()
                    .push(format!("uses crate::{path}, which belongs to no layer"));
                continue;
            };
            edges += 1;
            if to != from && rank(to) >= rank(from) {
                bad.entry(format!("{from_mod} (layer {from})"))
                    .or_default()
                    .push(format!("uses crate::{path} (layer {to})"));
            }
        }
    }
    assert!(
        edges > 100,
        "the scan found only {edges} edges: it reads nothing"
    );
    if !bad.is_empty() {
        let mut msg = String::new();
        for (m, v) in &bad {
            let mut v = v.clone();
            v.sort();
            v.dedup();
            msg.push_str(&format!("{m}:\n  {}\n", v.join("\n  ")));
        }
        panic!("modules that use a module of their own layer or above:\n{msg}");
    }
}

/// Only `ui` writes to the terminal: the core says things through `util::notice`, the commands
/// hand their results to `ui`, so `--quiet` and the progress display see every line. (Unit
/// tests at the end of a file may print why they skip.)
#[test]
fn only_ui_prints() {
    let _gate = suite_gate!();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut bad = Vec::new();
    let mut checked = 0;
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        if rel.starts_with("bin") || rel.starts_with("ui") || rel == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let text = code(text.split("#[cfg(test)]").next().unwrap());
        checked += 1;
        for (n, l) in text.lines().enumerate() {
            for w in [
                "println!",
                "eprintln!",
                "print!",
                "eprint!",
                "stdout()",
                "stderr()",
            ] {
                let hit = l.match_indices(w).any(|(i, _)| {
                    // `print!` inside `eprint!`/`println!` is counted once, by its own name.
                    i == 0 || !l.as_bytes()[i - 1].is_ascii_alphanumeric()
                });
                if hit {
                    bad.push(format!("src/{}:{}: {}", rel.display(), n + 1, l.trim()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} files read");
    assert!(
        bad.is_empty(),
        "writes to the terminal outside ui/:\n{}",
        bad.join("\n")
    );
}

/// The journal's interface is its types and methods: SQL and the SQLite driver stay inside
/// `journal/`, so a second backend replaces one module, not the engine.
#[test]
fn only_the_journal_speaks_sql() {
    let _gate = suite_gate!();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let bad: Vec<String> = all
        .iter()
        .filter(|f| !f.strip_prefix(&src).unwrap().starts_with("journal"))
        .filter(|f| {
            let text = code(&std::fs::read_to_string(f).unwrap());
            text.contains("rusqlite") || text.contains("execute_batch")
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert!(all.len() > 50, "only {} files read", all.len());
    assert!(bad.is_empty(), "SQL outside journal/: {bad:?}");
}

/// Every test of this binary enters the gate first (`common::gate`), or a suite that measures
/// time could run beside one that loads the machine.
#[test]
fn every_test_enters_the_gate() {
    let _gate = suite_gate!();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut bad = Vec::new();
    let mut tests = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let f = e.unwrap().path();
        if f.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim() != "#[test]" {
                continue;
            }
            let Some(k) = (i + 1..lines.len()).find(|&k| lines[k].trim_start().starts_with("fn "))
            else {
                continue;
            };
            tests += 1;
            if !lines
                .get(k + 1)
                .is_some_and(|n| n.contains("suite_gate!()"))
            {
                bad.push(format!("{}: {}", f.display(), lines[k].trim()));
            }
        }
    }
    assert!(tests > 100, "only {tests} tests found");
    assert!(
        bad.is_empty(),
        "tests that do not enter the gate:\n{}",
        bad.join("\n")
    );
}
