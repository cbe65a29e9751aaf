//! Differential test of etcdctl's cluster commands (issue 4, acceptance 1): the same
//! session of `member list`, `endpoint status --cluster`, `member add --learner`,
//! `member promote`, `member update`, `move-leader` and `member remove` against a three-member etcd
//! 3.4.23 and a three-member retcd must print the same, once what differs by nature is
//! normalized (ids, ports, sizes, Raft indexes and terms). Needs `etcd` and `etcdctl`;
//! skips with a printed reason without them, fails under `CI=true`.

mod common;

use std::time::{Duration, Instant};

use common::etcdctl::Etcdctl;
use retcd_testkit::cluster::{Cluster, ClusterSpec};

/// Replaces what differs between two clusters by nature: 15-16 digit hex ids, ports,
/// sizes, numbers in tables; drops table rules and column padding, and sorts table rows
/// (they are ordered by member id, which differs).
fn normalize(s: &str) -> String {
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for line in s.lines() {
        if line.starts_with('+') {
            continue;
        }
        let words: Vec<String> = line
            .split(|c: char| c.is_whitespace())
            .filter(|w| !w.is_empty())
            .map(normalize_word)
            .collect();
        let mut line = words.join(" ");
        for unit in [" B ", " kB ", " MB ", " GB "] {
            line = line.replace(&format!(" N{unit}"), " N SIZE ");
        }
        // The order of ETCD_INITIAL_CLUSTER's entries follows member ids.
        if let Some(list) = line.strip_prefix("ETCD_INITIAL_CLUSTER=\"") {
            let mut entries: Vec<&str> = list.trim_end_matches('"').split(',').collect();
            entries.sort_unstable();
            line = format!("ETCD_INITIAL_CLUSTER=\"{}\"", entries.join(","));
        }
        // Table body rows: everything after the header row.
        if line.starts_with('|') && lines.last().is_some_and(|l: &String| l.starts_with('|')) {
            rows.push(line);
        } else {
            lines.append(&mut rows_sorted(&mut rows));
            lines.push(line);
        }
    }
    lines.append(&mut rows_sorted(&mut rows));
    lines.join("\n")
}

fn rows_sorted(rows: &mut Vec<String>) -> Vec<String> {
    rows.sort();
    std::mem::take(rows)
}

fn normalize_word(w: &str) -> String {
    let (core, tail) = match w.find(['"', ',']) {
        Some(i) if i > 0 => (&w[..i], &w[i..]),
        _ => (w, ""),
    };
    let core = core.trim_matches('"');
    let is_hex_id = (14..=16).contains(&core.len()) && core.chars().all(|c| c.is_ascii_hexdigit());
    let norm = if is_hex_id {
        "ID".to_string()
    } else if let Some(rest) = core.strip_prefix("http://127.0.0.1:") {
        let _ = rest;
        "URL".to_string()
    } else if core.starts_with("127.0.0.1:") {
        "ADDR".to_string()
    } else if core.chars().all(|c| c.is_ascii_digit() || c == '.') && !core.is_empty() {
        "N".to_string()
    } else {
        core.to_string()
    };
    format!("{norm}{}", tail.replace(|c: char| c.is_ascii_digit(), ""))
}

/// Runs the session; returns its normalized transcript.
fn session(ctl: &Etcdctl, binary: std::path::PathBuf, name: &str) -> String {
    let spec = ClusterSpec::new(binary)
        .size(3)
        .heartbeat_ms(50)
        .election_ms(500);
    let mut cluster = Cluster::start(spec).expect("start the cluster");
    let endpoints = cluster.client_endpoints().join(",");
    // Success, and stdout followed by the server's errors.
    let etcdctl = |endpoints: &str, args: &[&str]| {
        let run = ctl.run(endpoints, args, "");
        (run.success(), run.output())
    };
    let mut transcript = String::new();
    let mut step = |label: &str, ok: bool, out: &str| {
        transcript.push_str(&format!(
            "== {label} ({})\n{}\n",
            if ok { "ok" } else { "error" },
            normalize(out)
        ));
    };
    // etcd refuses reconfiguration until its peers have been connected a while
    // ("unhealthy cluster"); retry that refusal only.
    let retry = |args: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out) = etcdctl(&endpoints, args);
            if ok || !out.contains("unhealthy cluster") || Instant::now() > deadline {
                return (ok, out);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Published client URLs may take a moment on both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ok, out) = loop {
        let (ok, out) = etcdctl(&endpoints, &["member", "list", "-w", "table"]);
        if out.matches("http://").count() >= 6 || Instant::now() > deadline {
            break (ok, out);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    step("member list", ok, &out);
    let (ok, out) = etcdctl(
        &endpoints,
        &["endpoint", "status", "--cluster", "-w", "table"],
    );
    step("endpoint status --cluster", ok, &out);
    // Right after start a member may still be settling (a read during an election fails
    // on either server); a failure is printed and the check asked again, up to 3 times.
    let mut attempts = 0;
    let (ok, out) = loop {
        attempts += 1;
        let (ok, out) = etcdctl(&endpoints, &["endpoint", "health", "--cluster"]);
        if ok || attempts == 3 {
            break (ok, out);
        }
        eprintln!("{name}: endpoint health --cluster failed, asking again:\n{out}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut health: Vec<&str> = out.lines().collect();
    health.sort_unstable();
    let health: Vec<String> = health
        .iter()
        .map(|l| l.split(": took").next().unwrap_or(l).to_string())
        .collect();
    step("endpoint health --cluster", ok, &health.join("\n"));

    let (peer_url, index) = cluster.add_member("learner").expect("prepare a member");
    let (ok, out) = retry(&[
        "member",
        "add",
        "learner",
        &format!("--peer-urls={peer_url}"),
        "--learner",
    ]);
    step("member add --learner", ok, &out);
    let id = out
        .split_whitespace()
        .nth(1)
        .expect("member add prints the id")
        .to_string();
    let initial = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("member add prints ETCD_INITIAL_CLUSTER")
        .to_string();
    let (ok, out) = etcdctl(&endpoints, &["member", "promote", &id]);
    step("member promote (not started)", ok, &out);
    cluster
        .start_added(index, &initial)
        .expect("start the learner");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ok, out) = loop {
        let (ok, out) = etcdctl(&endpoints, &["member", "promote", &id]);
        if ok || Instant::now() > deadline {
            break (ok, out);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    step("member promote", ok, &out);
    let (ok, out) = etcdctl(
        &endpoints,
        &["member", "update", &id, &format!("--peer-urls={peer_url}")],
    );
    step("member update", ok, &out);
    // The new member publishes its name and client URL when it has caught up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ok, out) = loop {
        let (ok, out) = etcdctl(&endpoints, &["member", "list", "-w", "table"]);
        if out.matches("http://").count() >= 8 || Instant::now() > deadline {
            break (ok, out);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    step("member list (4)", ok, &out);
    let leader = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cluster.leader(Duration::from_secs(10)))
        .expect("a leader");
    let (ok, out) = etcdctl(&cluster.client_url(leader), &["move-leader", &id]);
    step("move-leader", ok, &out);
    // The promoted member's connections may be younger than etcd's 5 s (either server).
    let (ok, out) = retry(&["member", "remove", &id]);
    step("member remove", ok, &out);
    eprintln!("{name} transcript:\n{transcript}");
    transcript
}

// Goal: etcdctl's cluster commands print the same against retcd as against etcd.
#[test]
fn etcdctl_cluster_session_matches_etcd() {
    let (Some(etcd), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let want = session(&ctl, etcd, "etcd");
    let got = session(&ctl, env!("CARGO_BIN_EXE_retcd").into(), "retcd");
    let (want_lines, got_lines): (Vec<&str>, Vec<&str>) =
        (want.lines().collect(), got.lines().collect());
    for (i, (w, g)) in want_lines.iter().zip(&got_lines).enumerate() {
        assert_eq!(w, g, "line {i} differs\netcd:\n{want}\nretcd:\n{got}");
    }
    assert_eq!(
        want_lines.len(),
        got_lines.len(),
        "etcd:\n{want}\nretcd:\n{got}"
    );
}

#[test]
fn normalization() {
    assert_eq!(
        normalize("| 8e9e05c52164694d | started | m0 | http://127.0.0.1:4242 | 1.1 MB |\n+---+"),
        "| ID | started | m0 | URL | N SIZE |"
    );
    assert_eq!(
        normalize("Member 263da9110344cbbd added to cluster f017819664191323"),
        "Member ID added to cluster ID"
    );
}
