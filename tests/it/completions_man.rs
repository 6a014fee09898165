//! `evac completions` and `evac man`: each completion script parses in its own shell and
//! completes evac's subcommands (bash and fish are asked to complete `evac re`), and the manual
//! pages render with groff or man and name every subcommand. The subcommands are read from
//! `evac --help`, so a new one that the generators missed fails here. A shell or renderer that is
//! not installed skips its part with a printed reason.

use crate::common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

/// The subcommands `evac --help` lists (without clap's `help`).
fn subcommands() -> Vec<String> {
    let o = evac(["--help"]);
    o.expect(0, "evac --help");
    let text = o.stdout_str();
    let list: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    for must in ["run", "status", "verify", "completions", "man"] {
        assert!(
            list.iter().any(|c| c == must),
            "{must} not in --help\n{text}"
        );
    }
    list
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn script(shell: &str, dir: &Path) -> std::path::PathBuf {
    let o = evac(["completions", shell]);
    o.expect(0, &format!("completions {shell}"));
    let p = dir.join(format!("evac.{shell}"));
    std::fs::write(&p, &o.stdout).unwrap();
    let text = o.stdout_str();
    for c in subcommands() {
        assert!(text.contains(&c), "the {shell} script does not mention {c}");
    }
    p
}

/// The subcommands starting with `re`, as the shell completes `evac re`.
fn re_commands() -> BTreeSet<String> {
    subcommands()
        .into_iter()
        .filter(|c| c.starts_with("re"))
        .collect()
}

#[test]
fn bash_completion_parses_and_completes_subcommands() {
    let _gate = suite_gate!();
    let tmp = tempfile::tempdir().unwrap();
    let p = script("bash", tmp.path());
    let path = p.to_str().unwrap();
    let (ok, _, err) = run("bash", &["-n", path]);
    assert!(ok, "bash -n: {err}");
    // As a user's shell loads it: from evac itself, and evac's completion is registered.
    let (ok, out, err) = run(
        "bash",
        &[
            "-c",
            r#"source <("$1" completions bash) && complete -p evac"#,
            "bash",
            evac_bin(),
        ],
    );
    assert!(ok, "source <(evac completions bash): {err}");
    assert!(
        out.starts_with("complete ")
            && out.contains("-F _evac")
            && out.trim_end().ends_with(" evac"),
        "complete -p evac: {out}"
    );
    // What a user gets on `evac re<TAB>`, and on `evac run --<TAB>`.
    let (ok, out, err) = run(
        "bash",
        &[
            "-c",
            r#"source "$1"; COMP_WORDS=(evac re); COMP_CWORD=1; COMP_LINE="evac re"; COMP_POINT=7; _evac evac re evac; printf '%s\n' "${COMPREPLY[@]}""#,
            "bash",
            path,
        ],
    );
    assert!(ok, "bash completion: {err}");
    let got: BTreeSet<String> = out.lines().map(str::to_string).collect();
    assert_eq!(got, re_commands(), "completions of `evac re`");
    let (ok, out, err) = run(
        "bash",
        &[
            "-c",
            r#"source "$1"; COMP_WORDS=(evac run --); COMP_CWORD=2; COMP_LINE="evac run --"; COMP_POINT=11; _evac evac -- run; printf '%s\n' "${COMPREPLY[@]}""#,
            "bash",
            path,
        ],
    );
    assert!(ok, "bash completion: {err}");
    for opt in ["--journal", "--link-prefix", "--dry-run"] {
        assert!(
            out.lines().any(|l| l == opt),
            "{opt} not offered after `evac run --`: {out}"
        );
    }
}

#[test]
fn zsh_completion_parses() {
    let _gate = suite_gate!();
    let tmp = tempfile::tempdir().unwrap();
    let p = script("zsh", tmp.path());
    if !have("zsh") {
        skip!(
            "zsh_completion_parses",
            "zsh is not installed (the script was generated and names every subcommand)"
        );
    }
    let (ok, _, err) = run("zsh", &["-n", p.to_str().unwrap()]);
    assert!(ok, "zsh -n: {err}");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.starts_with("#compdef evac"),
        "not a zsh completion function"
    );
}

#[test]
fn fish_completion_parses_and_completes_subcommands() {
    let _gate = suite_gate!();
    let tmp = tempfile::tempdir().unwrap();
    let p = script("fish", tmp.path());
    if !have("fish") {
        skip!(
            "fish_completion_parses_and_completes_subcommands",
            "fish is not installed (the script was generated and names every subcommand)"
        );
    }
    let path = p.to_str().unwrap();
    let (ok, _, err) = run("fish", &["--no-execute", path]);
    assert!(ok, "fish --no-execute: {err}");
    let (ok, out, err) = run(
        "fish",
        &["-c", "source $argv[1]; complete -C 'evac re'", path],
    );
    assert!(ok, "fish complete: {err}");
    let got: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect();
    assert_eq!(got, re_commands(), "completions of `evac re`");
}

#[test]
fn the_manual_page_renders_and_names_every_subcommand() {
    let _gate = suite_gate!();
    let o = evac(["man"]);
    o.expect(0, "evac man");
    let roff = o.stdout_str();
    assert!(roff.contains(".TH evac 1"), "not a section 1 manual page");
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("evac.1");
    std::fs::write(&page, &o.stdout).unwrap();
    let rendered = if have("man") {
        let (ok, out, err) = run("man", &["-P", "cat", "-l", page.to_str().unwrap()]);
        assert!(ok, "man -l: {err}");
        out
    } else if have("groff") {
        let (ok, out, err) = run(
            "groff",
            &[
                "-man",
                "-Tutf8",
                "-P",
                "-c",
                "-P",
                "-b",
                "-P",
                "-u",
                page.to_str().unwrap(),
            ],
        );
        assert!(ok, "groff: {err}");
        out
    } else {
        skip!(
            "the_manual_page_renders_and_names_every_subcommand",
            "neither man nor groff is installed to render the page"
        );
    };
    for c in subcommands() {
        assert!(
            rendered.contains(&format!("evac-{c}(1)")),
            "evac-{c}(1) not in the rendered page:\n{rendered}"
        );
    }

    // One page per subcommand, nested ones too, each rendering with its own options.
    let dir = tmp.path().join("man1");
    evac(["man".as_ref(), "--out-dir".as_ref(), dir.as_os_str()]).expect(0, "evac man --out-dir");
    for c in subcommands() {
        assert!(dir.join(format!("evac-{c}.1")).exists(), "no page for {c}");
    }
    assert!(dir.join("evac.1").exists() && dir.join("evac-hsm-import.1").exists());
    if have("groff") {
        let (ok, out, err) = run(
            "groff",
            &[
                "-man",
                "-Tutf8",
                "-P",
                "-c",
                "-P",
                "-b",
                "-P",
                "-u",
                dir.join("evac-run.1").to_str().unwrap(),
            ],
        );
        assert!(ok, "groff evac-run.1: {err}");
        for opt in ["--journal", "--link-prefix", "--dry-run", "SOURCE"] {
            assert!(out.contains(opt), "{opt} not in evac-run(1):\n{out}");
        }
    }
}
