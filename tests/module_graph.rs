//! The layering of the crate, checked from the source: the top-level modules of `src/` import
//! each other without a cycle, and the ground floor (telemetry, config, output, the pipeline's
//! types) imports no domain module. An import is a `crate::X` path in code outside comments and
//! test modules (`#[cfg(test)] mod tests` and `tests.rs` files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it imports, with one file that does.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `text` without `//` comments and without its `#[cfg(test)] mod tests { … }` block.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string (a URL) is rare in this crate's `use` lines; cut anyway:
            // what follows it on that line is not an import either way.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `X` of every `crate::X` in `code`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `vaxpulse_crate::`
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" || rel.ends_with("tests.rs") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        let entry = g.entry(top.clone()).or_default();
        for m in imports(&code) {
            if m != top {
                entry.entry(m).or_insert_with(|| rel.display().to_string());
            }
        }
    }
    g
}

/// One cycle of `g`, if any, as the modules along it.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| p == n).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(g, m, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut state, &mut Vec::new()))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let g = graph(&src());
    assert!(g.len() > 10, "read too few modules: {g:?}");
    if let Some(cycle) = find_cycle(&g) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} (in {})", w[0], w[1], g[&w[0]][&w[1]]))
            .collect();
        panic!(
            "module cycle: {}\nbreak it by moving the shared item down a layer",
            steps.join(", ")
        );
    }
}

#[test]
fn the_ground_floor_imports_no_domain_module() {
    let g = graph(&src());
    // What each low module may import (nothing else of the crate).
    let allowed: &[(&str, &[&str])] = &[
        ("alloc", &[]),
        // Memory gauges read at scrape time.
        ("telemetry", &["alloc"]),
        ("output", &[]),
        ("stats", &[]),
        ("relevance", &[]),
        // The keyword filter is compiled once at validation, so a bad pattern fails start-up.
        ("config", &["relevance"]),
        ("kafka", &["config"]),
        ("batch", &["config"]),
        ("tweet", &["config", "relevance"]),
        ("work", &["batch", "tweet"]),
    ];
    for (module, may) in allowed {
        let got: Vec<&String> = g
            .get(*module)
            .unwrap_or_else(|| panic!("no module {module} in src/"))
            .keys()
            .filter(|m| !may.contains(&m.as_str()))
            .collect();
        assert!(
            got.is_empty(),
            "{module} imports {got:?} ({:?}); it must stay below the domain modules",
            g[*module]
        );
    }
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let mut g = Graph::new();
    g.entry("a".into())
        .or_default()
        .insert("b".into(), "a.rs".into());
    g.entry("b".into())
        .or_default()
        .insert("c".into(), "b.rs".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into())
        .or_default()
        .insert("a".into(), "c.rs".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let code = code_of(
        "use crate::x::Y;\n// crate::comment\nfn f() { crate::z::f() }\n#[cfg(test)]\nmod tests { use crate::t; }",
    );
    assert_eq!(
        imports(&code),
        ["x".to_string(), "z".to_string()].into_iter().collect()
    );
}
