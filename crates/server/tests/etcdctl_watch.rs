//! Differential test of `etcdctl watch`: the same session against a real etcd and against
//! retcd must print the same thing (after normalizing the Raft term, which depends on how
//! each server bootstraps). Needs `etcd` and `etcdctl` on PATH (Debian's `etcd-server` and
//! `etcd-client`, 3.4); skips with a printed reason without them, fails under `CI=true`.
//!
//! `etcdctl watch` runs until killed: each watch is a child process with piped stdout,
//! read line by line until the expected number of lines arrived (or a deadline passed,
//! which the transcript records), then killed. A watch without a start revision sees
//! only writes made after its watcher exists, so before writing the session polls the
//! server's `etcd_debugging_mvcc_watcher_total` (both servers export it) until the
//! watcher is registered; after killing a watch it waits for the count to drop again.
//!
//! The two servers are `common::etcd::twins`: their member and cluster ids agree, so `-w
//! json` output can be compared whole.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd::twins;
use common::etcdctl::{Etcdctl, drain, filter_stderr, normalize_raft_term};
use common::metric;

/// Bound on each wait: for output lines, a watcher count.
const WAIT: Duration = Duration::from_secs(10);

/// Runs a command that exits by itself; its transcript entry.
fn run(ctl: &Etcdctl, port: u16, args: &[&str]) -> String {
    normalize_raft_term(&ctl.run(&endpoint(port), args, "").transcript())
}

fn endpoint(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A running `etcdctl watch`, killed by [`Watch::finish`] (or on drop).
struct Watch {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Watch {
    fn spawn(ctl: &Etcdctl, port: u16, args: &[&str], out: &mut String) -> Watch {
        out.push_str(&format!("$ etcdctl watch {}\n", args.join(" ")));
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut child = ctl
            .command(&endpoint(port), &all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("stderr")));
        Watch {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// Interactive mode: one command line on stdin.
    fn send(&mut self, line: &str, out: &mut String) {
        out.push_str(&format!("> {line}\n"));
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to etcdctl");
        stdin.flush().expect("flush");
    }

    /// Appends the next `n` lines of output to `out`, or notes that they did not come.
    fn read(&mut self, n: usize, out: &mut String) {
        let deadline = Instant::now() + WAIT;
        for i in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    out.push_str(&normalize_raft_term(&line));
                    out.push('\n');
                }
                Err(_) => {
                    out.push_str(&format!("<only {i} of {n} lines in time>\n"));
                    return;
                }
            }
        }
    }

    /// Kills etcdctl; appends whatever it wrote to stderr.
    fn finish(mut self, out: &mut String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin.take());
        let stderr = self.stderr.take().expect("stderr").join().expect("reader");
        out.push_str(&filter_stderr(&stderr));
        // Lines printed after the expected ones: the server sent more than etcd would.
        while let Ok(line) = self.lines.try_recv() {
            out.push_str(&format!("<extra> {line}\n"));
        }
        out.push_str("(killed)\n");
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's `etcd_debugging_mvcc_watcher_total`.
fn watchers(port: u16) -> Option<u64> {
    metric(port, "etcd_debugging_mvcc_watcher_total").map(|v| v as u64)
}

/// Waits until the server has `n` watchers; notes it in `out` if it never does.
fn wait_watchers(port: u16, n: u64, out: &mut String) {
    let start = Instant::now();
    loop {
        let got = watchers(port);
        if got == Some(n) {
            return;
        }
        if start.elapsed() > WAIT {
            out.push_str(&format!("<watcher count stayed {got:?}, expected {n}>\n"));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The session; returns its transcript.
fn session(etcdctl: &Etcdctl, port: u16) -> String {
    let mut out = String::new();
    let w = &mut out;
    let ctl = |args: &[&str], out: &mut String| out.push_str(&run(etcdctl, port, args));

    // History, then live events, on a prefix from revision 1.
    ctl(&["put", "k1", "v1"], w);
    ctl(&["put", "k2", "v2"], w);
    ctl(&["del", "k2"], w);
    ctl(&["put", "other", "o"], w);
    let mut watch = Watch::spawn(etcdctl, port, &["--prefix", "k", "--rev", "1"], w);
    watch.read(9, w);
    ctl(&["put", "k1", "v3"], w);
    watch.read(3, w);
    ctl(&["put", "x", "y"], w);
    ctl(&["put", "k3", "v4"], w);
    watch.read(3, w);
    watch.finish(w);
    wait_watchers(port, 0, w);

    // The same history with previous values.
    let mut watch = Watch::spawn(
        etcdctl,
        port,
        &["--prefix", "k", "--prev-kv", "--rev", "1"],
        w,
    );
    watch.read(19, w);
    ctl(&["del", "k1"], w);
    watch.read(5, w);
    watch.finish(w);
    wait_watchers(port, 0, w);

    // One key, live only.
    let mut watch = Watch::spawn(etcdctl, port, &["k1"], w);
    wait_watchers(port, 1, w);
    ctl(&["put", "k1", "a"], w);
    ctl(&["put", "k10", "b"], w);
    ctl(&["put", "k1", "c"], w);
    ctl(&["del", "k1"], w);
    watch.read(9, w);
    watch.finish(w);
    wait_watchers(port, 0, w);

    // JSON: whole responses (history in one), header revisions, ids.
    let mut watch = Watch::spawn(
        etcdctl,
        port,
        &["--prefix", "k", "--rev", "1", "-w", "json"],
        w,
    );
    watch.read(1, w);
    ctl(&["put", "k2", "z"], w);
    watch.read(1, w);
    watch.finish(w);
    wait_watchers(port, 0, w);

    // Interactive: several watchers on one stream, progress requests.
    let mut watch = Watch::spawn(etcdctl, port, &["-i"], w);
    watch.send("watch k1", w);
    wait_watchers(port, 1, w);
    ctl(&["put", "k1", "i1"], w);
    watch.read(3, w);
    watch.send("progress", w);
    watch.read(1, w);
    watch.send("watch --prefix p --prev-kv", w);
    wait_watchers(port, 2, w);
    ctl(&["put", "p/1", "x"], w);
    watch.read(3, w);
    ctl(&["put", "p/1", "y"], w);
    watch.read(5, w);
    watch.send("progress", w);
    watch.read(2, w);
    watch.send("watch k3 --rev 1", w);
    watch.read(3, w);
    watch.finish(w);
    wait_watchers(port, 0, w);

    // A watch from a compacted revision ends by itself with an error.
    ctl(&["compaction", "5"], w);
    ctl(&["watch", "k1", "--rev", "2"], w);
    ctl(&["watch", "k1", "--rev", "3", "--prefix", "-w", "json"], w);
    out
}

/// Goal: `etcdctl watch` prints the same against retcd as against etcd: history and live
/// events, prefixes, previous values, single keys, JSON responses, interactive mode with
/// progress requests, and a compacted start revision.
#[test]
fn etcdctl_watch_matches_etcd() {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd, retcd) = twins(&etcd_bin, dir.path());

    let want = session(&ctl, etcd.port);
    let got = session(&ctl, retcd.port);
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  etcd:  {a}\n  retcd: {b}", i + 1))
            .collect();
        panic!(
            "transcripts differ (first differing lines below)\n{}\n\n== etcd:\n{want}\n== retcd:\n{got}",
            diff.join("\n")
        );
    }
    // The session must have exercised the servers, not compared two failures.
    assert!(!want.contains("<only "), "{want}");
    assert!(!want.contains("<watcher count"), "{want}");
    println!("{want}");
}
