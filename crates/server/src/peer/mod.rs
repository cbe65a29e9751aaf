//! The member-to-member protocol (`peerpb.Peer`), served on `--listen-peer-urls`.
//!
//! - [`activity`]: since when each peer's connection has worked (for
//!   `--strict-reconfig-check`).
//! - [`codec`]: Raft's types to and from protobuf.
//! - [`transport`]: the sending side (a task per peer, snapshots).
//! - [`dial`]: connections to a peer, in the clear or over TLS.
//! - [`service`]: the receiving side, which checks the cluster id and the sender and
//!   hands messages to the raft loop.

pub mod activity;
pub mod codec;
pub mod dial;
pub mod service;
pub mod transport;
