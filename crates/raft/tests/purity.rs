//! The consensus core must stay a pure state machine (see lib.rs). clippy.toml bans
//! clocks, threads, file and socket calls and hash-ordered collections inside the crate;
//! this test pins its dependencies, so that nothing bringing those in (tokio, rand, ...)
//! can be added without this test failing and someone deciding.

#[test]
fn the_core_depends_only_on_bytes_and_thiserror() {
    let manifest = include_str!("../Cargo.toml");
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
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
    assert_eq!(
        deps,
        ["bytes", "thiserror"],
        "retcd-raft's normal dependencies changed"
    );
}

#[test]
fn no_randomness_or_clock_outside_the_seed() {
    // Belt and braces for what clippy.toml cannot express: no source file names an
    // ambient randomness source or a clock.
    let sources = [
        include_str!("../src/raft.rs"),
        include_str!("../src/raw_node.rs"),
        include_str!("../src/log.rs"),
        include_str!("../src/tracker.rs"),
        include_str!("../src/confchange.rs"),
        include_str!("../src/read_only.rs"),
        include_str!("../src/storage.rs"),
        include_str!("../src/sim.rs"),
    ];
    for banned in [
        "thread_rng",
        "OsRng",
        "getrandom",
        "Instant::now",
        "SystemTime",
        "RandomState",
    ] {
        for src in sources {
            assert!(!src.contains(banned), "the raft crate mentions {banned}");
        }
    }
}
