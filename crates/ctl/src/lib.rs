//! retcdctl: etcdctl's commands, for retcd and etcd alike (issue 18). For now the
//! offline snapshot tools, as etcdctl 3.4 has them: `snapshot status` (etcd's numbers
//! for a snapshot file: hash, revision, pairs, size) and `snapshot restore` (a snapshot,
//! etcd's or retcd's, into a new retcd data dir; `retcd_server::restore`).
//!
//! - [`status`]: what `snapshot status` computes and prints, in etcdctl 3.4's formats.
//! - `main.rs`: the command line (clap), errors as etcdctl prints them (`Error: ...` on
//!   stderr, exit code 1; an unsupported output format exits 4).

pub mod status;
