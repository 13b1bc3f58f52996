//! The README and docs/ stay true to the code: every `vaxpulse` command in their shell blocks
//! is one the CLI has (`--help` of it succeeds), every script they name exists, and every link
//! between them points at a file that exists.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files
}

/// The lines of the ```sh blocks of `text`.
fn shell_lines(text: &str) -> Vec<String> {
    let (mut out, mut inside) = (Vec::new(), false);
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            inside = !inside && (t == "```sh" || t == "```bash" || t == "```shell");
            continue;
        }
        if inside {
            out.push(line.to_string());
        }
    }
    out
}

/// The subcommand words after each `vaxpulse` (or `$V`, the docs' short form of it) on `line`,
/// global options skipped: `models deploy`, `run`, ...
fn commands(line: &str) -> Vec<Vec<String>> {
    let code = line.split(" #").next().unwrap_or("");
    let words: Vec<&str> = code.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let is_cli = w.ends_with("/vaxpulse") || *w == "vaxpulse" || *w == "$V";
        if !is_cli {
            continue;
        }
        let mut rest = words[i + 1..].iter().peekable();
        while rest
            .peek()
            .is_some_and(|w| **w == "-c" || **w == "--config")
        {
            rest.next();
            rest.next();
        }
        let sub: Vec<String> = rest
            .take_while(|w| {
                w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
            })
            .take(2)
            .map(|w| w.to_string())
            .collect();
        if !sub.is_empty() {
            out.push(sub);
        }
    }
    out
}

#[test]
fn every_vaxpulse_command_in_the_docs_exists() {
    let bin = env!("CARGO_BIN_EXE_vaxpulse");
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in shell_lines(&text) {
            for sub in commands(&line) {
                // `models deploy` has a second word; `run` alone does not (its next word, if
                // any, is an argument): try both, the longest that the CLI knows wins.
                let two = Command::new(bin).args(&sub).arg("--help").output().unwrap();
                let ok = two.status.success()
                    || Command::new(bin)
                        .arg(&sub[0])
                        .arg("--help")
                        .output()
                        .unwrap()
                        .status
                        .success();
                assert!(
                    ok,
                    "{}: `vaxpulse {}` is not a command (line: {line})",
                    file.display(),
                    sub.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} commands: is the parser still right?"
    );
}

#[test]
fn scripts_and_links_named_in_the_docs_exist() {
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for (i, _) in text.match_indices("scripts/") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/_.-".contains(*c))
                .collect();
            let name = name.trim_end_matches('.');
            if name.ends_with(".sh") || name.ends_with(".py") {
                assert!(
                    root().join(name).exists(),
                    "{} names {name}, which does not exist",
                    file.display()
                );
            }
        }
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            let path = target.split('#').next().unwrap();
            if path.is_empty() || path.contains("://") {
                continue;
            }
            assert!(
                dir.join(path).exists(),
                "{} links to {target}, which does not exist",
                file.display()
            );
        }
    }
}

#[test]
fn the_parser_finds_commands_behind_options_and_in_short_forms() {
    assert_eq!(
        commands("target/release/vaxpulse -c config/local.toml models deploy mine@2 # shadow"),
        vec![vec!["models".to_string(), "deploy".to_string()]]
    );
    assert_eq!(commands("$V run"), vec![vec!["run".to_string()]]);
    assert!(commands("cargo build --release --bin vaxpulse").is_empty());
}
