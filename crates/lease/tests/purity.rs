//! The lessor must stay pure (see lib.rs). clippy.toml bans clocks, threads, files and
//! hash-ordered collections inside the crate; this test pins its dependencies, so nothing
//! bringing those in (tokio, the backend, the wire types) can be added without someone
//! deciding.

#[test]
fn the_lessor_depends_only_on_thiserror() {
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
    assert_eq!(deps, ["thiserror"], "retcd-lease's dependencies changed");
}

#[test]
fn no_clock_or_randomness_in_the_sources() {
    let sources = [
        include_str!("../src/lib.rs"),
        include_str!("../src/lessor.rs"),
        include_str!("../src/record.rs"),
        include_str!("../src/time.rs"),
    ];
    for banned in [
        "Instant::now",
        "SystemTime",
        "thread_rng",
        "RandomState",
        "HashMap",
    ] {
        for src in sources {
            assert!(!src.contains(banned), "the lease crate mentions {banned}");
        }
    }
}
