//! Test kit for multi-process cluster tests: start N `retcd` (or `etcd`) processes on
//! 127.0.0.1 with free ports and temporary directories, put a fault-injecting TCP proxy
//! on every peer link, kill/pause/resume members, record every client operation, and
//! check the recorded history for linearizability.
//!
//! - [`cluster`]: process launcher and member control (SIGKILL, SIGSTOP/SIGCONT, restart).
//! - [`etcd_bin`]: finds etcd's own binaries for the differential tests; skips without
//!   them, fails under `CI=true`.
//! - [`python`]: finds a Python with python-etcd3 for the client tests; skips without
//!   it, fails under `CI=true`.
//! - [`pki`]: certificates for TLS tests (CAs, leaves good and bad, CRLs), made in Rust.
//! - [`proxy`]: TCP proxy with blackhole, delay and loss, per source member.
//! - [`history`]: operations with call and return times, as a recording client logs them.
//! - [`linearizability`]: a Wing-Gong style checker for key-value histories.
//! - [`watch_checker`]: checks recorded watch streams against etcd's watch guarantees.
//! - [`watch_recorder`]: watch clients that record every response and resume like a
//!   careful client, for the checker.

pub mod cluster;
pub mod etcd_bin;
pub mod history;
pub mod linearizability;
pub mod pki;
pub mod proxy;
pub mod python;
pub mod watch_checker;
pub mod watch_recorder;
