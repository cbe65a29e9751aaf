//! Differential test over TLS (issue 14, acceptance 1): etcdctl 3.4 with `--cacert`,
//! `--cert` and `--key` against a retcd whose client URL is `https://` with
//! `--client-cert-auth`, the test CA and a CRL prints what it prints against an etcd
//! 3.4.23 started with the same flags, for KV, watch, lease, member and endpoint commands;
//! and etcdctl without a client certificate, with an expired, a revoked or another CA's
//! certificate, or trusting another CA, fails the same way against both. Needs `etcd` and
//! `etcdctl` (Debian's `etcd-server` and `etcd-client`); skips with a printed reason
//! without them, fails under `CI=true`.
//!
//! The certificates are made in Rust (`common::tls::Pki`) in a temporary directory. The
//! two servers are `common::etcd::twins_with`: their member and cluster ids agree, so
//! whole `-w json` outputs compare. Each gets its session at the same time (most of it is
//! waiting for refused commands to time out). Everything etcdctl prints is compared, its
//! own JSON log lines on stderr included (a user sees them). What differs by nature is
//! normalized, and only that: the client port (each server has its own), the Raft term,
//! lease ids (each server draws its own), a lease's remaining TTL and the time a health
//! check took (timing), log timestamps and client ids, which way a refused connection was
//! last seen to fail (timing, [`TORN_DOWN`]), in `endpoint status` the database size,
//! the Raft index and term and the server version (retcd reports the etcd version whose
//! API it serves, 3.5.17, and its log has one entry fewer: no cluster-version entry), and
//! the HashKV value at the current revision, which covers a lease id ([`mask_hash`]).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd::twins_with;
use common::etcdctl::{Etcdctl, Run, drain, filter_stderr, normalize_raft_term};
use common::tls::Pki;

/// Bound on waiting for a watch's output lines.
const WAIT: Duration = Duration::from_secs(10);

/// One server's session: its etcdctl runs, each a transcript entry, normalized.
struct Session<'a> {
    /// etcdctl with the good client certificate.
    ctl: &'a Etcdctl,
    port: u16,
    entries: Vec<String>,
    /// Lease ids granted so far, as etcdctl prints them (hex).
    leases: Vec<String>,
}

impl Session<'_> {
    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Runs a command that exits by itself with the good certificate; records it and
    /// returns its stdout.
    fn run(&mut self, args: &[&str], stdin: &str) -> String {
        self.run_masked(args, stdin, |s| s.to_string())
    }

    /// [`Session::run`], its entry passed through `mask` (for what differs by nature in
    /// one command's output).
    fn run_masked(&mut self, args: &[&str], stdin: &str, mask: fn(&str) -> String) -> String {
        let ctl = self.ctl;
        self.run_with(ctl, args, stdin, mask).stdout
    }

    fn run_with(
        &mut self,
        ctl: &Etcdctl,
        args: &[&str],
        stdin: &str,
        mask: fn(&str) -> String,
    ) -> Run {
        let mut run = ctl.run(&self.endpoint(), args, stdin);
        // etcdctl's own log lines too: a user sees them.
        run.stderr = normalize_log(&run.raw_stderr);
        let entry = mask(&self.normalize(&run.transcript()));
        self.entries.push(entry);
        run
    }

    /// `lease grant`: records it and remembers the id.
    fn grant(&mut self, ttl: &str) -> String {
        let out = self.run(&["lease", "grant", ttl], "");
        let id = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("lease grant printed {out:?}"))
            .to_string();
        self.leases.push(id.clone());
        // Its entry was normalized before the id was known.
        let last = self.entries.pop().expect("the grant's entry");
        self.entries.push(self.normalize(&last));
        id
    }

    /// What differs between the two servers by nature becomes a placeholder.
    fn normalize(&self, s: &str) -> String {
        let mut s =
            normalize_raft_term(s).replace(&format!("127.0.0.1:{}", self.port), "127.0.0.1:PORT");
        for id in &self.leases {
            let decimal = i64::from_str_radix(id, 16)
                .unwrap_or_else(|_| panic!("lease id {id:?}"))
                .to_string();
            s = s.replace(id, "<LEASE>").replace(&decimal, "<LEASE>");
        }
        mask_after(&s, "remaining(", |c| c.is_ascii_digit(), "N")
    }

    /// Starts `etcdctl watch args`, reads `first` lines, runs `then` (puts, say), reads
    /// `more` lines and kills it: one entry with everything it printed.
    fn watch(&mut self, args: &[&str], first: usize, then: &[&[&str]], more: usize) {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut watch = Watch::spawn(self.ctl, &self.endpoint(), &all);
        let mut out = format!("$ etcdctl {}\n", all.join(" "));
        watch.read(first, &mut out);
        for args in then {
            let ctl = self.ctl;
            let run = ctl.run(&self.endpoint(), args, "");
            out.push_str(&format!("  (meanwhile) {}", run.transcript()));
        }
        watch.read(more, &mut out);
        watch.finish(&mut out);
        let entry = self.normalize(&out);
        self.entries.push(entry);
    }
}

/// A running `etcdctl watch`, killed by [`Watch::finish`] (or on drop).
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Watch {
    fn spawn(ctl: &Etcdctl, endpoint: &str, args: &[&str]) -> Watch {
        let mut child = ctl
            .command(endpoint, args)
            .stdin(Stdio::null())
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
            child,
            lines,
            stderr,
        }
    }

    /// Appends the next `n` lines of output to `out`, or notes that they did not come.
    fn read(&mut self, n: usize, out: &mut String) {
        let deadline = Instant::now() + WAIT;
        for i in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(_) => {
                    out.push_str(&format!("<only {i} of {n} lines in time>\n"));
                    return;
                }
            }
        }
    }

    /// Kills etcdctl; appends whatever else it printed.
    fn finish(mut self, out: &mut String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// etcdctl's client-side log lines (JSON, starting `{"level":`) without what changes from
/// run to run: the timestamp, the client's random id, and which way a refused connection
/// was last seen to fail ([`TORN_DOWN`]).
fn normalize_log(s: &str) -> String {
    s.lines()
        .map(|l| {
            let mut l = l.to_string();
            if l.starts_with("{\"level\":") {
                l = mask_after(&l, "\"ts\":\"", |c| c != '"', "TS");
                l = mask_after(&l, "endpoint://client-", |c| c != '/', "ID");
                l = mask_torn_down(&l);
            }
            l + "\n"
        })
        .collect()
}

/// How grpc-go (in etcdctl 3.4) saw a connection the server refused after the TLS 1.3
/// handshake (the server sends its alert and closes while the client writes its HTTP/2
/// preface), as `endpoint status` logs it: whichever happened first. Sampled 8 to 24
/// times per refused certificate and server, each form turned up against etcd and against
/// retcd alike, in varying proportions: timing, not the server. etcdctl 3.4 never showed
/// the TLS alert itself; if it did, it would not be masked.
const TORN_DOWN: &[&str] = &[
    "connection closed",
    "use of closed network connection",
    "write: broken pipe",
    "write: connection reset by peer",
];

/// `latest balancer error: <e>` in a log line, with `e` one of the [`TORN_DOWN`] forms,
/// becomes `latest balancer error: <connection torn down>`. Any other error stays.
fn mask_torn_down(l: &str) -> String {
    let marker = "latest balancer error: ";
    let (Some(i), Some(end)) = (l.find(marker), l.rfind("\"}")) else {
        return l.to_string();
    };
    let start = i + marker.len();
    if end < start {
        return l.to_string();
    }
    let e = l[start..end].trim_end_matches("\\\"");
    let torn_down = TORN_DOWN.iter().any(|t| {
        e == *t
            || (e.ends_with(t)
                && (e.starts_with("write tcp 127.0.0.1:")
                    || e.starts_with(
                        "connection error: desc = \\\"transport: failed to write client preface: write tcp 127.0.0.1:",
                    )))
    });
    if torn_down {
        format!("{}<connection torn down>{}", &l[..start], &l[end..])
    } else {
        l.to_string()
    }
}

/// `s` with the run of characters matching `keep` after each `marker` replaced by `with`.
fn mask_after(s: &str, marker: &str, keep: impl Fn(char) -> bool, with: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(marker) {
        let j = i + marker.len();
        out.push_str(&rest[..j]);
        out.push_str(with);
        rest = rest[j..].trim_start_matches(&keep);
    }
    out.push_str(rest);
    out
}

/// In `-w json` output, the values of `keys` (numbers or strings) become `<key>`.
fn mask_json(s: &str, keys: &[&str]) -> String {
    keys.iter().fold(s.to_string(), |s, key| {
        mask_after(
            &s,
            &format!("\"{key}\":"),
            |c| c != ',' && c != '}',
            &format!("<{key}>"),
        )
    })
}

/// In simple output (`value, value, ...` lines), the fields numbered `fields` (from 0)
/// become `<N>`.
fn mask_fields(s: &str, fields: &[usize]) -> String {
    s.lines()
        .map(|l| {
            if !l.starts_with("https://") {
                return format!("{l}\n");
            }
            let masked: Vec<&str> = l
                .split(", ")
                .enumerate()
                .map(|(i, f)| if fields.contains(&i) { "<N>" } else { f })
                .collect();
            format!("{}\n", masked.join(", "))
        })
        .collect()
}

/// In `-w table` output, the cells of the columns headed `columns` become `<N>`. Rules and
/// padding go (their widths follow the cells), the cells stay in order.
fn mask_table(s: &str, columns: &[&str]) -> String {
    let mut masked = Vec::new();
    let mut out = String::new();
    for line in s.lines() {
        if line.starts_with('+') {
            continue;
        }
        if !line.starts_with('|') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let header = masked.is_empty();
        if header {
            masked = cells.iter().map(|c| columns.contains(c)).collect();
        }
        let cells: Vec<&str> = cells
            .iter()
            .zip(&masked)
            .map(|(c, m)| if *m && !header { "<N>" } else { c })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// How long a health check took.
fn mask_took(s: &str) -> String {
    mask_table(&mask_after(s, "took = ", |c| c != '\n', "<D>"), &["TOOK"])
}

/// `endpoint status`: the server version (retcd reports 3.5.17), the database size and
/// the Raft index and term: how each server lays out its database and log, not what it
/// answered. The member ids (the leader's included) and the revision stay.
fn mask_status(s: &str) -> String {
    let s = mask_json(
        s,
        &[
            "version",
            "dbSize",
            "dbSizeInUse",
            "raftIndex",
            "raftTerm",
            "raftAppliedIndex",
        ],
    );
    let s = mask_fields(&s, &[2, 3, 6, 7, 8]);
    mask_table(
        &s,
        &[
            "VERSION",
            "DB SIZE",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
        ],
    )
}

/// `endpoint hashkv` at the current revision: the hash. It covers a key attached to a
/// lease, whose id each server draws itself, so the numbers differ by nature; HashKV at
/// revision 10, before any lease, is compared as printed (retcd's HashKV is etcd's
/// number for the same history: CRC-32C over etcd's record encoding, etcd's keep rule
/// below the compaction revision).
fn mask_hash(s: &str) -> String {
    mask_table(&mask_json(&mask_fields(s, &[1]), &["hash"]), &["HASH"])
}

/// `--cacert`, and `--cert` and `--key` of `cert` if any.
fn tls_flags(ca: &str, cert: Option<&retcd_testkit::pki::Pair>) -> Vec<String> {
    let mut flags = vec![format!("--cacert={ca}")];
    if let Some(p) = cert {
        flags.push(format!("--cert={}", p.cert()));
        flags.push(format!("--key={}", p.key()));
    }
    flags
}

/// etcdctl commands, each as its arguments.
type Commands = &'static [&'static [&'static str]];

/// The session against the server on `port`; its entries.
fn session(base: &Etcdctl, pki: &Pki, port: u16) -> Vec<String> {
    let ctl = &base.with_flags(&tls_flags(pki.ca.cert(), Some(&pki.good)));
    let mut s = Session {
        ctl,
        port,
        entries: Vec::new(),
        leases: Vec::new(),
    };
    let txn_ok = "value(\"foo\") = \"bar\"\n\nput k1 v1\nget foo\n\nput k2 v2\n\n";
    let txn_fail = "mod(\"foo\") > \"100\"\n\nput k1 v1\n\nput k2 v2\ndel foo2\n\n";

    // KV.
    s.run(&["put", "foo", "bar"], "");
    s.run(&["put", "foo2", "baz"], "");
    s.run(&["put", "--prev-kv", "foo", "qux", "-w", "json"], "");
    s.run(&["put", "foo", "bar"], "");
    s.run(&["get", "foo"], "");
    s.run(&["get", "foo", "-w", "json"], "");
    s.run(&["get", "foo", "--prefix", "--keys-only"], "");
    s.run(&["get", "foo", "--rev=2", "-w", "fields"], "");
    s.run(&["txn"], txn_ok);
    s.run(&["txn", "-w", "json"], txn_fail);
    s.run(&["del", "--prev-kv", "foo2"], "");
    s.run(&["del", "nothing"], "");

    // Watch: history from revision 1, then live events (a start revision means no
    // event can be missed however late the watcher registers).
    s.watch(
        &["--prefix", "foo", "--rev=1"],
        15,
        &[&["put", "foo3", "live"], &["del", "foo3"]],
        6,
    );
    s.watch(
        &["k1", "--rev=1", "-w", "json"],
        1,
        &[&["put", "k1", "v2"]],
        1,
    );
    s.run(&["compaction", "5"], "");
    s.run(&["get", "foo", "--rev=2"], "");
    s.run(&["watch", "foo", "--rev=2"], "");

    // Lease.
    let id = s.grant("100");
    s.run(&["put", &format!("--lease={id}"), "leased", "v"], "");
    s.run(&["get", "leased", "-w", "json"], "");
    s.run(&["lease", "timetolive", &id], "");
    s.run_masked(
        &["lease", "timetolive", "--keys", &id, "-w", "json"],
        "",
        |s| mask_json(s, &["ttl"]),
    );
    s.run(&["lease", "list"], "");
    s.run(&["lease", "keep-alive", "--once", &id], "");
    s.run(&["lease", "revoke", &id], "");
    s.run(&["get", "leased"], "");
    s.run(&["lease", "timetolive", &id], "");
    s.run(&["lease", "revoke", &id], "");

    // Member.
    s.run(&["member", "list"], "");
    s.run_masked(&["member", "list", "-w", "table"], "", |s| {
        mask_table(s, &[])
    });
    s.run(&["member", "list", "-w", "json"], "");

    // Endpoint.
    s.run_masked(&["endpoint", "health"], "", mask_took);
    s.run_masked(&["endpoint", "health", "-w", "table"], "", mask_took);
    s.run_masked(&["endpoint", "health", "-w", "json"], "", |s| {
        mask_json(s, &["took"])
    });
    s.run_masked(&["endpoint", "status"], "", mask_status);
    s.run_masked(&["endpoint", "status", "-w", "table"], "", mask_status);
    s.run_masked(&["endpoint", "status", "-w", "json"], "", mask_status);
    s.run_masked(&["endpoint", "hashkv"], "", mask_hash);
    s.run_masked(&["endpoint", "hashkv", "-w", "table"], "", mask_hash);
    s.run(&["endpoint", "hashkv", "--rev=10", "-w", "json"], "");
    s.run(&["endpoint", "hashkv", "--rev=3"], "");

    // TLS refusals. etcdctl 3.4 does not wait for its connection: each command fails at
    // its command timeout, here 2 s (long enough for many refused handshakes).
    let ca = pki.ca.cert();
    let other_ca = pki.dir.join("other.pem");
    let refused: [(&str, Vec<String>, Commands); 5] = [
        (
            "no client certificate",
            tls_flags(ca, None),
            &[&["get", "foo"], &["endpoint", "health"]],
        ),
        (
            "an expired client certificate",
            tls_flags(ca, Some(&pki.expired)),
            &[&["put", "foo", "x"], &["endpoint", "health"]],
        ),
        (
            "a revoked client certificate",
            tls_flags(ca, Some(&pki.revoked)),
            &[&["get", "foo"], &["endpoint", "status"]],
        ),
        (
            "another CA's client certificate",
            tls_flags(ca, Some(&pki.other_ca)),
            &[&["get", "foo"]],
        ),
        (
            "a good client certificate, trusting another CA",
            tls_flags(other_ca.to_str().expect("utf-8 path"), Some(&pki.good)),
            &[&["get", "foo"]],
        ),
    ];
    for (what, mut flags, commands) in refused {
        flags.push("--command-timeout=2s".into());
        let ctl = base.with_flags(&flags);
        s.entries.push(format!("# {what}\n"));
        for args in commands {
            let run = s.run_with(&ctl, args, "", |s| s.to_string());
            // Both refusing is the point: both serving would compare equal too.
            assert!(
                !run.success(),
                "with {what}, etcdctl {args:?} went through on port {port}: {run:?}"
            );
        }
    }
    s.entries
}

/// The normalizations change what they are for, and only that.
#[test]
fn normalization() {
    let line = r#"{"level":"warn","ts":"2026-12-07T15:06:28.857Z","caller":"clientv3/retry_interceptor.go:62","msg":"retrying of unary invoker failed","target":"endpoint://client-150ad3fd-290e/127.0.0.1:21403","attempt":0,"error":"rpc error: code = DeadlineExceeded desc = latest balancer error: write tcp 127.0.0.1:53672->127.0.0.1:21403: write: broken pipe"}"#;
    let want = r#"{"level":"warn","ts":"TS","caller":"clientv3/retry_interceptor.go:62","msg":"retrying of unary invoker failed","target":"endpoint://client-ID/127.0.0.1:21403","attempt":0,"error":"rpc error: code = DeadlineExceeded desc = latest balancer error: <connection torn down>"}"#;
    assert_eq!(normalize_log(line), format!("{want}\n"));
    let preface = r#"{"level":"warn","error":"rpc error: code = DeadlineExceeded desc = latest balancer error: connection error: desc = \"transport: failed to write client preface: write tcp 127.0.0.1:1->127.0.0.1:2: write: connection reset by peer\""}"#;
    assert!(normalize_log(preface).contains("error: <connection torn down>\"}"));
    let lease = "remaining(99s) \"ttl\":99,\"granted-ttl\":100";
    assert_eq!(
        mask_json(
            &mask_after(lease, "remaining(", |c| c.is_ascii_digit(), "N"),
            &["ttl"]
        ),
        "remaining(Ns) \"ttl\":<ttl>,\"granted-ttl\":100"
    );
    let alert = r#"{"level":"warn","error":"rpc error: code = Unavailable desc = latest balancer error: remote error: tls: bad certificate"}"#;
    assert_eq!(normalize_log(alert), format!("{alert}\n"));
    assert_eq!(normalize_log("Error: x\n"), "Error: x\n");

    let table = "+---+\n| ENDPOINT | HASH |\n+---+\n|  https://a |  123 |\n+---+\n";
    assert_eq!(
        mask_hash(table),
        "| ENDPOINT | HASH |\n| https://a | <N> |\n"
    );
    assert_eq!(
        mask_status(
            "https://127.0.0.1:PORT, 3366c979e7c5d9c9, 3.4.23, 20 kB, true, false, 2, 21, 21, \n"
        ),
        "https://127.0.0.1:PORT, 3366c979e7c5d9c9, <N>, <N>, true, false, <N>, <N>, <N>, \n"
    );
    assert_eq!(
        mask_json(
            r#"{"version":"3.4.23","dbSize":20480,"leader":7}"#,
            &["version", "dbSize"]
        ),
        r#"{"version":<version>,"dbSize":<dbSize>,"leader":7}"#
    );
    assert_eq!(
        mask_took("x is healthy: successfully committed proposal: took = 2.9ms\n"),
        "x is healthy: successfully committed proposal: took = <D>\n"
    );
}

/// Goal: etcdctl over TLS prints the same against retcd as against etcd, refusals
/// included.
#[test]
fn etcdctl_tls_session_matches_etcd() {
    let (Some(etcd_bin), Some(ctl)) = (retcd_testkit::etcd_bin::etcd(), Etcdctl::find()) else {
        return;
    };
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&dir.path().join("pki"));
    let (etcd, retcd) = twins_with(&etcd_bin, dir.path(), "https", &pki.client_flags());

    // One session per server, at the same time: each touches only its own server, and
    // most of the time goes to waiting for refused commands to time out.
    let (want, got) = std::thread::scope(|scope| {
        let want = scope.spawn(|| session(&ctl, &pki, etcd.port));
        let got = session(&ctl, &pki, retcd.port);
        (want.join().expect("etcd's session"), got)
    });
    println!("{}", want.concat());
    let runs: usize = want.iter().map(|e| e.matches("$ etcdctl ").count()).sum();
    eprintln!(
        "{runs} etcdctl runs against each server, {} entries, in {:?}",
        want.len(),
        start.elapsed()
    );
    assert_eq!(
        want.len(),
        got.len(),
        "== etcd:\n{}\n== retcd:\n{}",
        want.concat(),
        got.concat()
    );
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("== etcd:\n{w}== retcd:\n{g}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} of {} entries differ:\n\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
    // The session must have exercised the servers, not compared two failures.
    let all = want.concat();
    assert!(!all.contains("<only "), "{all}");
    for served in [
        "$ etcdctl put foo bar\nexit 0\nOK\n",
        "keepalived with TTL(100)",
        "is healthy: successfully committed proposal",
        ", started, diff, ",
    ] {
        assert!(all.contains(served), "{served:?} is missing:\n{all}");
    }
}
