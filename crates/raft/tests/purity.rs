//! The consensus core must stay a pure state machine (see lib.rs). clippy.toml bans
//! clocks, threads, file and socket calls and hash-ordered collections inside the crate;
//! this test pins its dependencies, so that nothing bringing those in (tokio, rand, ...)
//! can be added without this test failing and someone deciding. Its one internal
//! dependency, `retcd-prng` (the seeded generator behind the election jitter), is held to
//! the same rules: no dependencies of its own, and the same banned names in its source.

use std::path::Path;

/// The names under `[dependencies]` of the manifest `text`.
fn normal_dependencies(text: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap_or_default().trim();
            deps.push(name.to_string());
        }
    }
    deps.sort();
    deps
}

#[test]
fn the_core_depends_only_on_bytes_prng_and_thiserror() {
    assert_eq!(
        normal_dependencies(include_str!("../Cargo.toml")),
        ["bytes", "retcd-prng", "thiserror"],
        "retcd-raft's normal dependencies changed"
    );
    assert_eq!(
        normal_dependencies(include_str!("../../prng/Cargo.toml")),
        Vec::<String>::new(),
        "retcd-prng must have no dependencies: the Raft core depends on it"
    );
}

/// Every `.rs` file under `dir`, recursively, as (path, text).
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn no_randomness_or_clock_outside_the_seed() {
    // Belt and braces for what clippy.toml cannot express: no source file of the core or of
    // its generator names an ambient randomness source or a clock. Every file is read, so
    // a new module is covered without anyone remembering to list it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("../prng/src"), &mut files);
    for must in ["raft.rs", "raw_node.rs", "sim.rs", "prng/src/lib.rs"] {
        assert!(
            files.iter().any(|(path, _)| path.ends_with(must)),
            "the check did not read {must}: {:?}",
            files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    for banned in [
        "thread_rng",
        "OsRng",
        "getrandom",
        "Instant::now",
        "SystemTime",
        "RandomState",
    ] {
        for (path, text) in &files {
            assert!(!text.contains(banned), "{path} mentions {banned}");
        }
    }
}
