//! The member-to-member protocol (`peerpb.Peer`), served on `--listen-peer-urls`.
//!
//! - [`codec`]: Raft's types to and from protobuf.
//! - [`transport`]: the sending side (a task per peer, snapshots).
//! - [`service`]: the receiving side, which checks the cluster id and the sender and
//!   hands messages to the raft loop.

pub mod codec;
pub mod service;
pub mod transport;
