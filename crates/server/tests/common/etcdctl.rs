//! etcd's CLI, `etcdctl` 3.4 (Debian's `etcd-client`), as the tests run it: found once per
//! test ([`Etcdctl::find`], which skips or, under `CI=true`, fails without it), run with
//! the same global flags everywhere, and its output made comparable between two servers
//! ([`Run::transcript`], [`filter_stderr`], [`normalize_raft_term`]).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bound on one run of a command that exits by itself. etcdctl bounds itself with its
/// dial (5 s) and command (10 s) timeouts; only a hung etcdctl gets this far.
pub const RUN_LIMIT: Duration = Duration::from_secs(20);

/// The etcdctl binary.
#[derive(Clone, Debug)]
pub struct Etcdctl {
    path: PathBuf,
    /// Global flags after the common ones ([`Etcdctl::with_flags`]).
    flags: Vec<String>,
}

impl Etcdctl {
    /// etcdctl, or `None` when the test is to return at once (it printed why; under
    /// `CI=true` it panicked instead): `retcd_testkit::etcd_bin`.
    pub fn find() -> Option<Etcdctl> {
        retcd_testkit::etcd_bin::etcdctl().map(|path| Etcdctl {
            path,
            flags: Vec::new(),
        })
    }

    /// This etcdctl with `flags` added to the global flags of every run (after the common
    /// ones, so a repeated flag overrides them): `--cacert`, `--cert` and `--key` for a TLS
    /// server, say. Transcripts do not show them.
    pub fn with_flags<S: AsRef<str>>(&self, flags: &[S]) -> Etcdctl {
        let mut ctl = self.clone();
        ctl.flags
            .extend(flags.iter().map(|f| f.as_ref().to_string()));
        ctl
    }

    /// etcdctl against `endpoints` (comma-separated, `host:port` or URLs) with the flags of
    /// every test: API v3, a 5 s dial timeout and a 10 s command timeout, then those of
    /// [`Etcdctl::with_flags`], then `args`. The caller sets up stdio; this is for commands
    /// that run until killed (`watch`, `elect`), [`Etcdctl::run`] for the others.
    ///
    /// Prefer `127.0.0.1:<port>` to a URL: etcdctl 3.4's endpoint commands send a URL
    /// whole as the HTTP/2 `:authority`.
    pub fn command(&self, endpoints: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=5s", "--command-timeout=10s"])
            .args(&self.flags)
            .args(args);
        cmd
    }

    /// Runs a command that exits by itself, with `stdin` as its input (none when empty),
    /// and collects what it printed. Killed after [`RUN_LIMIT`], which the run records.
    pub fn run(&self, endpoints: &str, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command(endpoints, args)
            .stdin(if stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.path.display()));
        // Both pipes drain on threads before the input is written, so neither side can
        // block the other whatever the sizes.
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .expect("write etcdctl's stdin");
        }
        let start = Instant::now();
        let exit = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status
                    .code()
                    .map_or("signal".to_string(), |c| c.to_string());
            }
            if start.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break "<killed: did not exit in time>".to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let raw_stderr = stderr.join().expect("stderr reader");
        Run {
            args: args.join(" "),
            exit,
            stdout: stdout.join().expect("stdout reader"),
            stderr: filter_stderr(&raw_stderr),
            raw_stderr,
        }
    }
}

/// One finished etcdctl run.
#[derive(Clone, Debug)]
pub struct Run {
    /// The arguments after the global flags, joined by spaces.
    pub args: String,
    /// The exit code, `signal`, or `<killed: did not exit in time>`.
    pub exit: String,
    pub stdout: String,
    /// Its stderr without etcdctl's own client-side log lines ([`filter_stderr`]).
    pub stderr: String,
    /// Its whole stderr, those log lines included.
    pub raw_stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.exit == "0"
    }

    /// stdout, then stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The run as a transcript entry: `$ etcdctl <args>`, `exit <code>`, stdout, and
    /// stderr (if any) after a `--- stderr` line, so a message cannot change streams
    /// unnoticed.
    pub fn transcript(&self) -> String {
        let mut t = format!(
            "$ etcdctl {}\nexit {}\n{}",
            self.args, self.exit, self.stdout
        );
        if !self.stderr.is_empty() {
            t.push_str("--- stderr\n");
            t.push_str(&self.stderr);
        }
        t
    }
}

/// `s` without etcdctl's own client-side log lines (JSON, starting `{"level":`): they carry
/// timestamps and random client ids and say nothing about the server, whose error, if
/// any, follows on its own line.
pub fn filter_stderr(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Replaces the Raft term with `T` wherever etcdctl prints one: after `"raft_term":` (the
/// response header in `-w json`) and `"RaftTerm" : ` (`-w fields`). The term depends on how
/// each server bootstrapped, not on what it answered.
pub fn normalize_raft_term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = ["\"raft_term\":", "\"RaftTerm\" : "]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| i + p.len()))
        .min()
    {
        out.push_str(&rest[..i]);
        rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('T');
    }
    out.push_str(rest);
    out
}

/// Reads a pipe to its end on a thread.
pub fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}
