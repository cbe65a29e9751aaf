//! The host-facing API: feed events in, take `Ready` out, confirm with `advance`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::raft::Raft;
use crate::storage::Storage;
use crate::tracker::Progress;
use crate::types::*;

/// Everything the host must do, in this order (see the crate docs):
/// 1. persist `snapshot`, `entries` and `hard_state` (fsync when `must_sync`);
/// 2. apply `snapshot` to the state machine;
/// 3. send `messages`;
/// 4. apply `committed_entries` (and configuration changes among them);
/// 5. call [`RawNode::advance`].
#[derive(Debug, Default)]
#[must_use = "a Ready must be handled and then passed to advance"]
pub struct Ready {
    /// Set when leadership or role changed. Volatile: not persisted.
    pub soft_state: Option<SoftState>,
    /// Set when term, vote or commit changed. Persist it.
    pub hard_state: Option<HardState>,
    /// Linearizable reads that may be served once `index` is applied.
    pub read_states: Vec<ReadState>,
    /// Entries to append to stable storage (they may overwrite a suffix of it).
    pub entries: Vec<Entry>,
    /// A snapshot to persist and install.
    pub snapshot: Option<Snapshot>,
    /// Entries committed by a quorum, to apply in order.
    pub committed_entries: Vec<Entry>,
    /// Whether the write of `hard_state` and `entries` must be synced before anything else
    /// happens (term, vote or log changed). Commit index changes alone need no sync: they
    /// can be recovered from a quorum.
    pub must_sync: bool,
    /// Messages to send once the above is persisted. Private so it is read only through
    /// [`Ready::take_messages`], whose name carries the persist-before-send rule.
    messages: Vec<Message>,
}

impl Ready {
    /// The messages to send. Call only after the entries, hard state and snapshot of this
    /// `Ready` are durable: a vote or an acknowledgement sent before they are could be
    /// forgotten by a crash, and that breaks Raft's safety.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

/// What `advance` needs to remember from the `Ready` it confirms.
#[derive(Debug)]
struct InFlight {
    last_entry: Option<(u64, u64)>,
    snapshot_index: Option<u64>,
    last_committed: Option<u64>,
    hard_state: Option<HardState>,
    committed_payload: u64,
}

/// A Raft node driven by its host.
pub struct RawNode<S: Storage> {
    pub raft: Raft<S>,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
    in_flight: Option<InFlight>,
    committed_limit: u64,
}

/// A snapshot of a node's state for operators and tests.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub hard_state: HardState,
    pub soft_state: SoftState,
    pub applied: u64,
    pub last_index: u64,
    /// The leader's view of every member (empty on other roles).
    pub progress: BTreeMap<NodeId, Progress>,
    pub lead_transferee: NodeId,
    pub conf_state: ConfState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    Finish,
    Failure,
}

impl<S: Storage> RawNode<S> {
    pub fn new(config: &Config, store: S) -> Result<Self> {
        let raft = Raft::new(config, store)?;
        let prev_hard_state = raft.hard_state();
        let prev_soft_state = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_soft_state,
            prev_hard_state,
            in_flight: None,
            committed_limit: config.committed_limit(),
        })
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (as if the election timeout had passed).
    pub fn campaign(&mut self) -> Result<()> {
        self.raft.step(Message {
            msg_type: MessageType::Hup,
            ..Default::default()
        })
    }

    /// Proposes `data` to be appended to the log.
    pub fn propose(&mut self, data: Bytes) -> Result<()> {
        let id = self.raft.id;
        self.raft.step(Message {
            msg_type: MessageType::Propose,
            from: id,
            entries: vec![Entry {
                data,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// Proposes a single-step configuration change.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<()> {
        self.propose_entry(EntryType::ConfChange, cc.encode())
    }

    /// Proposes a (possibly joint) configuration change.
    pub fn propose_conf_change_v2(&mut self, cc: &ConfChangeV2) -> Result<()> {
        self.propose_entry(EntryType::ConfChangeV2, cc.encode())
    }

    fn propose_entry(&mut self, entry_type: EntryType, data: Bytes) -> Result<()> {
        let id = self.raft.id;
        self.raft.step(Message {
            msg_type: MessageType::Propose,
            from: id,
            entries: vec![Entry {
                entry_type,
                data,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// Applies a committed configuration change entry's change; returns the new
    /// configuration, which the host records with its next snapshot.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState> {
        self.raft.apply_conf_change(cc)
    }

    /// Steps a message received from a peer.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.msg_type.is_local() {
            return Err(Error::StepLocalMessage(m.msg_type));
        }
        if m.msg_type.is_response() && self.raft.prs.get(m.from).is_none() {
            return Err(Error::StepPeerNotFound(m.from));
        }
        self.raft.step(m)
    }

    /// Asks for a linearizable read; `ctx` identifies it in the resulting `ReadState`.
    pub fn read_index(&mut self, ctx: Bytes) -> Result<()> {
        let id = self.raft.id;
        self.raft.step(Message {
            msg_type: MessageType::ReadIndex,
            from: id,
            entries: vec![Entry {
                data: ctx,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// Asks the leader to hand leadership to `transferee`.
    pub fn transfer_leader(&mut self, transferee: NodeId) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::TransferLeader,
            from: transferee,
            ..Default::default()
        });
    }

    /// The transport could not deliver a message to `id`.
    pub fn report_unreachable(&mut self, id: NodeId) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::Unreachable,
            from: id,
            ..Default::default()
        });
    }

    /// The snapshot sent to `id` was delivered (or was not).
    pub fn report_snapshot(&mut self, id: NodeId, status: SnapshotStatus) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::SnapStatus,
            from: id,
            reject: status == SnapshotStatus::Failure,
            ..Default::default()
        });
    }

    pub fn has_ready(&self) -> bool {
        assert!(self.in_flight.is_none(), "has_ready called before advance");
        let r = &self.raft;
        r.soft_state() != self.prev_soft_state
            || (r.hard_state() != self.prev_hard_state)
            || !r.raft_log.unstable_entries().is_empty()
            || r.raft_log.has_pending_snapshot()
            || !r.msgs.is_empty()
            || !r.read_states.is_empty()
            || r.raft_log.has_next_committed_entries()
    }

    /// Collects what the host must do now. Must be followed by `advance` before the next
    /// call.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.in_flight.is_none(),
            "ready called twice without advance"
        );
        let r = &mut self.raft;
        let soft = r.soft_state();
        let hard = r.hard_state();
        let entries = r.raft_log.unstable_entries().to_vec();
        let snapshot = r.raft_log.unstable.snapshot.clone();
        let committed_entries = r.raft_log.next_committed_entries(self.committed_limit);
        let hard_changed = hard != self.prev_hard_state;
        let must_sync = !entries.is_empty()
            || hard.term != self.prev_hard_state.term
            || hard.vote != self.prev_hard_state.vote;
        let rd = Ready {
            soft_state: (soft != self.prev_soft_state).then_some(soft),
            hard_state: hard_changed.then_some(hard),
            read_states: std::mem::take(&mut r.read_states),
            entries,
            snapshot,
            committed_entries,
            must_sync,
            messages: std::mem::take(&mut r.msgs),
        };
        self.prev_soft_state = soft;
        self.in_flight = Some(InFlight {
            last_entry: rd.entries.last().map(|e| (e.index, e.term)),
            snapshot_index: rd.snapshot.as_ref().map(|s| s.metadata.index),
            last_committed: rd.committed_entries.last().map(|e| e.index),
            hard_state: rd.hard_state,
            committed_payload: rd.committed_entries.iter().map(Entry::payload_size).sum(),
        });
        rd
    }

    /// Confirms that the last `Ready` was handled: persisted, sent and applied.
    pub fn advance(&mut self) {
        let f = self.in_flight.take().expect("advance called without ready");
        if let Some(hs) = f.hard_state {
            self.prev_hard_state = hs;
        }
        if let Some(index) = f.snapshot_index {
            self.raft.raft_log.stable_snap_to(index);
            // The installed snapshot counts as applied.
            if index > self.raft.raft_log.applied {
                self.raft.raft_log.applied = index;
            }
        }
        if let Some((index, term)) = f.last_entry {
            self.raft.raft_log.stable_to(index, term);
        }
        self.raft.reduce_uncommitted_size(f.committed_payload);
        if let Some(index) = f.last_committed {
            self.raft.applied_to(index);
        }
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            applied: r.raft_log.applied,
            last_index: r.raft_log.last_index(),
            progress: if r.state == StateRole::Leader {
                r.prs.progress.clone()
            } else {
                BTreeMap::new()
            },
            lead_transferee: r.lead_transferee,
            conf_state: r.prs.conf_state(),
        }
    }

    /// The storage the node reads its stable log from.
    pub fn store(&self) -> &S {
        self.raft.raft_log.store()
    }
}
