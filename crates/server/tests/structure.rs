//! The server's structure, checked (issue 13, acceptance 1): no source file over 1,000
//! lines; no import cycle between the crate's top-level modules, nor between sibling
//! files of one module; and no clock in apply (clippy enforces it through the module's
//! `#![deny(clippy::disallowed_methods)]`; this checks the attribute is there and, belt
//! and braces, that no source of apply names a clock).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 1_000;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src/`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(src()).expect("under src").to_path_buf());
        }
    }
    out.sort();
    out
}

/// The code of a file without comments (doc comments name modules freely).
fn code(file: &Path) -> String {
    std::fs::read_to_string(src().join(file))
        .expect("read source")
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers that follow `prefix` in `code` (`crate::apply::X` gives `apply`), also
/// inside a braced use list (`use crate::{apply, node}`).
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            for item in list[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// A cycle in `graph`, if any (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The module a file is (`apply/kv.rs` -> `apply`, `apply/mod.rs` -> `apply`,
/// `lib.rs` -> none).
fn top_module(file: &Path) -> Option<String> {
    let first = file.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(name) => Some(name.to_string()),
        None => Some(first),
    }
}

// Goal: every source file of the server stays readable in one sitting.
#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let files = sources(&src());
    assert!(files.len() > 30, "found the sources: {files:?}");
    let long: Vec<String> = files
        .iter()
        .map(|f| {
            (
                f,
                std::fs::read_to_string(src().join(f))
                    .unwrap()
                    .lines()
                    .count(),
            )
        })
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

// Goal: the top-level modules form a hierarchy (apply never reaches up into node or
// grpc, and so on), and so do the sibling files inside each module.
#[test]
fn no_import_cycles() {
    let files = sources(&src());
    let tops: BTreeSet<String> = files.iter().filter_map(|f| top_module(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let code = code(file);
        if let Some(top) = top_module(file) {
            let uses = names_after(&code, "crate::");
            let edges = graph.entry(top.clone()).or_default();
            edges.extend(uses.into_iter().filter(|m| *m != top && tops.contains(m)));
        }
        // Sibling files of one directory: `super::x` where x is another file there.
        let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
            continue;
        };
        let stem = file.file_stem().unwrap().to_str().unwrap().to_string();
        if stem == "mod" {
            continue;
        }
        let here: BTreeSet<String> = files
            .iter()
            .filter(|f| f.parent() == Some(dir))
            .map(|f| f.file_stem().unwrap().to_str().unwrap().to_string())
            .filter(|s| s != "mod")
            .collect();
        let key = dir.display().to_string();
        let edges = siblings
            .entry(key)
            .or_default()
            .entry(stem.clone())
            .or_default();
        edges.extend(
            names_after(&code, "super::")
                .into_iter()
                .filter(|n| *n != stem && here.contains(n)),
        );
    }
    assert!(graph.contains_key("apply") && graph.contains_key("node"));
    assert!(
        graph["node"].contains("apply"),
        "the parser sees node's use of apply: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import cycle between modules: {}", cycle.join(" -> "));
    }
    for (dir, g) in &siblings {
        if let Some(cycle) = find_cycle(g) {
            panic!("an import cycle in {dir}/: {}", cycle.join(" -> "));
        }
    }
}

// Goal: the cycle finder finds cycles (a checker that cannot fail proves nothing).
#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    fn edge(g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str) {
        g.entry(a.into()).or_default().insert(b.into());
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edge(&mut g, "grpc", "node");
    edge(&mut g, "node", "apply");
    assert_eq!(find_cycle(&g), None);
    edge(&mut g, "apply", "grpc");
    assert_eq!(find_cycle(&g).unwrap(), ["apply", "grpc", "node", "apply"]);
    assert_eq!(
        names_after(
            "use crate::{apply, node::X};\nlet x = crate::quota::y;",
            "crate::"
        ),
        ["apply", "node", "quota"].map(String::from).into()
    );
}

// Goal: apply reads no clock: its module denies clippy's disallowed methods (the
// crate's clippy.toml lists the clocks), and no apply source names one or the server's
// clock module.
#[test]
fn apply_reads_no_clock() {
    let module = std::fs::read_to_string(src().join("apply/mod.rs")).unwrap();
    assert!(module.contains("#![deny(clippy::disallowed_methods)]"));
    let clippy = std::fs::read_to_string(src().join("../clippy.toml")).unwrap();
    for method in ["std::time::Instant::now", "std::time::SystemTime::now"] {
        assert!(clippy.contains(method), "clippy.toml bans {method}");
    }
    for file in sources(&src()).iter().filter(|f| f.starts_with("apply")) {
        let code = code(file);
        for banned in [
            "Instant::now",
            "SystemTime",
            "clock::",
            ".elapsed()",
            "thread_rng",
        ] {
            assert!(!code.contains(banned), "{} names {banned}", file.display());
        }
    }
}
