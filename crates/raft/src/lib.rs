//! retcd's Raft consensus core: a pure, deterministic state machine with etcd-io/raft's
//! semantics.
//!
//! The core does no I/O. It has no clock, no threads, no sockets and no files; its only
//! randomness (election timeout jitter) is drawn from `retcd_prng::SplitMix64` with a seed
//! in [`Config`]. The host drives it with events and carries out what it returns. This is
//! what lets retcd test the algorithm by deterministic simulation (see
//! `tests/simulation.rs`): the same seed replays the same run, message for message.
//!
//! # Place in retcd
//! `server`'s raft loop owns one [`RawNode`]. Client writes become [`RawNode::propose`];
//! peer messages arrive through [`RawNode::step`]; a timer calls [`RawNode::tick`]. Each
//! [`Ready`] is written to the WAL (crate `wal`), sent through the peer transport, and its
//! committed entries are applied to MVCC.
//!
//! # Features
//! Leader election with randomized timeouts, pre-vote, check-quorum with leader step-down,
//! log replication with fast backtracking, pipelining within an inflight window, message
//! size and uncommitted-size limits, ReadIndex reads (quorum-confirmed or lease-based),
//! learners, single-step and joint configuration changes (auto-leave or explicit), leader
//! transfer, snapshots for lagging followers, and proposal forwarding.
//!
//! # The host's duties, in order
//! Loop forever:
//! 1. **Feed events.** Call [`RawNode::tick`] at a fixed interval (etcd: the heartbeat
//!    interval, 100 ms); [`RawNode::step`] for each message received from a peer;
//!    [`RawNode::propose`], [`RawNode::propose_conf_change_v2`], [`RawNode::read_index`],
//!    [`RawNode::transfer_leader`] for client requests; [`RawNode::report_unreachable`] when
//!    the transport fails to deliver, and [`RawNode::report_snapshot`] when a snapshot
//!    message was (or failed to be) delivered.
//! 2. **Check** [`RawNode::has_ready`]; if true take [`RawNode::ready`]. Then, in order:
//! 3. **Persist** `ready.snapshot` (if any), then `ready.entries` (appending; they may
//!    replace a suffix of the stored log), then `ready.hard_state` (if any), to durable
//!    storage, and fsync when `ready.must_sync`. Then make them visible to the core's
//!    [`Storage`] (for [`MemStorage`]: `apply_snapshot`, `append`, `set_hard_state`).
//! 4. **Send** `ready.take_messages()` to their recipients, only now that step 3 is durable.
//!    A vote, or an acknowledgement of appended entries, sent before it is durable could
//!    be forgotten by a crash, and the node would then vote twice or lose a committed
//!    entry. If a message carries a snapshot, report the delivery outcome with
//!    `report_snapshot`.
//! 5. **Apply** the snapshot to the state machine if there was one, then
//!    `ready.committed_entries` in order. For a `ConfChange`/`ConfChangeV2` entry, decode it
//!    and call [`RawNode::apply_conf_change`]; record the returned [`ConfState`] with the
//!    state machine. Serve `ready.read_states` once the applied index reaches their index.
//! 6. **Advance**: call [`RawNode::advance`]. Only then may `ready` be called again.
//!
//! The host must also, from time to time, snapshot its state machine at an applied index
//! and compact the log up to it ([`MemStorage::create_snapshot`], [`MemStorage::compact`]).
//!
//! # Safety argument, in brief
//! Election safety comes from one vote per term, persisted before the vote is sent
//! (step 3 before 4). Log matching comes from the consistency check on every append.
//! Leader completeness comes from voting only for candidates whose log is at least as up
//! to date, and from committing by counting replicas only entries of the leader's own term
//! (Raft §5.4.2, the paper's figure 8). Joint consensus makes every configuration change
//! safe by requiring both majorities while the change is in flight.

mod codec;
pub mod confchange;
pub mod config;
pub mod error;
pub mod log;
pub mod quorum;
pub mod raft;
pub mod raw_node;
pub mod read_only;
pub mod sim;
pub mod storage;
pub mod tracker;
pub mod types;

pub use config::{Config, ReadOnlyOption};
pub use error::{DropReason, Error, Result, StorageError};
pub use raw_node::{RawNode, Ready, SnapshotStatus, Status};
pub use storage::{MemStorage, RaftState, Storage};
pub use types::*;
