//! Differential test of `etcdctl lease ...` and `etcdctl lock`: the same session against a
//! real etcd 3.4.23 and retcd must print the same thing after normalizing lease ids (each
//! server draws its own) and the remaining TTL (a second either way is timing). Needs
//! `etcd` and `etcdctl`; skips with a printed reason without them, fails under `CI=true`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::etcdctl::Etcdctl;
use common::{Retcd, free_port, metric};

/// Runs etcdctl; its normalized transcript entry and its stdout.
fn etcdctl(ctl: &Etcdctl, port: u16, args: &[&str]) -> (String, String) {
    let run = ctl.run(&format!("127.0.0.1:{port}"), args, "");
    (normalize(&run.transcript()), run.stdout)
}

/// Lease ids (runs of 12 or more hex digits) become `<ID>`; `remaining(Ns)` loses N.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() >= 12 && word.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<ID>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("remaining(") {
        let j = i + "remaining(".len();
        result.push_str(&rest[..j]);
        rest = rest[j..].trim_start_matches(|c: char| c.is_ascii_digit());
        result.push('N');
    }
    result.push_str(rest);
    result
}

#[test]
fn normalization() {
    assert_eq!(
        normalize("lease 694d7f3a1b2c3d4e granted with TTL(100s), remaining(99s)"),
        "lease <ID> granted with TTL(100s), remaining(Ns)"
    );
}

/// The session: lease commands with their errors, then a lock with a command.
fn session(ctl: &Etcdctl, port: u16) -> String {
    let mut t = String::new();
    let (text, stdout) = etcdctl(ctl, port, &["lease", "grant", "100"]);
    t.push_str(&text);
    let id = stdout
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let mut run = |args: &[&str]| t.push_str(&etcdctl(ctl, port, args).0);
    run(&["put", &format!("--lease={id}"), "leased", "v"]);
    run(&["lease", "timetolive", &id]);
    run(&["lease", "timetolive", "--keys", &id]);
    run(&["lease", "list"]);
    run(&["lease", "keep-alive", "--once", &id]);
    run(&["lease", "revoke", &id]);
    run(&["get", "leased"]);
    run(&["lease", "timetolive", &id]);
    run(&["lease", "revoke", &id]);
    run(&["put", &format!("--lease={id}"), "leased", "v"]);
    run(&["lease", "grant", "9000000001"]);
    run(&["lock", "mylock", "--", "echo", "held"]);
    run(&["get", "--prefix", "mylock"]);
    t
}

/// `etcdctl elect` runs until killed: starts it, reads `lines` lines of its stdout
/// (bounded), kills it.
fn elect_lines(
    ctl: &Etcdctl,
    port: u16,
    args: &[&str],
    lines: usize,
) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut all = vec!["elect"];
    all.extend_from_slice(args);
    let mut child = ctl
        .command(&format!("127.0.0.1:{port}"), &all)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl elect");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().take(lines) {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The server's `etcd_debugging_mvcc_watcher_total` (0 while it does not answer).
fn watchers(port: u16) -> u64 {
    metric(port, "etcd_debugging_mvcc_watcher_total").map_or(0, |v| v as u64)
}

fn read_lines(rx: &std::sync::mpsc::Receiver<String>, n: usize, out: &mut String) {
    for _ in 0..n {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => out.push_str(&format!("{line}\n")),
            Err(_) => {
                out.push_str("<no more output within 10 s>\n");
                return;
            }
        }
    }
}

/// Observer, then two candidates: the first leads; when it is killed (its session
/// lease revoked as etcdctl exits), the second leads; the observer sees both.
fn elect_session(ctl: &Etcdctl, port: u16) -> String {
    let mut t = String::new();
    let (mut observer, obs) = elect_lines(ctl, port, &["-l", "vote"], 4);
    // The observer's watcher is registered (both servers export the gauge) before the
    // first candidate, so it sees every leader.
    let start = Instant::now();
    while watchers(port) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "observer never watched"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut first, c1) = elect_lines(ctl, port, &["vote", "one"], 2);
    t.push_str("$ etcdctl elect vote one\n");
    read_lines(&c1, 2, &mut t);
    let (mut second, c2) = elect_lines(ctl, port, &["vote", "two"], 2);
    // SIGTERM: etcdctl resigns and closes its session.
    let _ = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status();
    let _ = first.wait();
    t.push_str("$ etcdctl elect vote two\n");
    read_lines(&c2, 2, &mut t);
    t.push_str("$ etcdctl elect -l vote\n");
    read_lines(&obs, 4, &mut t);
    for c in [&mut second, &mut observer] {
        let _ = c.kill();
        let _ = c.wait();
    }
    normalize(&t)
}

/// Runs `session` against a fresh etcd, then (etcd stopped, to leave the cores to one
/// server at a time) against a fresh retcd: their transcripts, etcd's first. `None` when
/// the test is to skip.
fn transcripts(session: fn(&Etcdctl, u16) -> String) -> Option<(String, String)> {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(
        &etcd_bin,
        dir.path(),
        "lease-test",
        &format!("http://127.0.0.1:{}", free_port()),
    );
    let want = session(&ctl, etcd.port);
    drop(etcd);
    let rdir = tempfile::tempdir().unwrap();
    let retcd = Retcd::start(rdir.path(), &[]);
    let got = session(&ctl, retcd.port);
    eprintln!("{got}");
    Some((want, got))
}

#[test]
fn etcdctl_elect_matches_etcd() {
    let Some((want, got)) = transcripts(elect_session) else {
        return;
    };
    assert!(got.contains("two\n") && !got.contains("<no more output"));
    assert_eq!(
        got, want,
        "retcd's transcript (left) differs from etcd's (right)"
    );
}

#[test]
fn etcdctl_lease_and_lock_match_etcd() {
    let Some((want, got)) = transcripts(session) else {
        return;
    };
    assert!(got.contains("held\n") && got.contains("keepalived with TTL(100)"));
    assert_eq!(
        got, want,
        "retcd's transcript (left) differs from etcd's (right)"
    );
}
