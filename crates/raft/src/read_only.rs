//! Pending linearizable reads on the leader (ReadIndex, Raft thesis §6.4).
//!
//! A read is recorded with the commit index at the time it arrived; it may be served once
//! a quorum has acknowledged a heartbeat carrying its context, which proves that this node
//! was still the leader when the read arrived.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::NodeId;
use crate::types::Message;

#[derive(Clone, Debug)]
pub struct ReadIndexStatus {
    /// The original request (its `from` tells who asked; its first entry holds the context).
    pub req: Message,
    /// The commit index when the request arrived.
    pub index: u64,
    pub acks: BTreeSet<NodeId>,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    pending: BTreeMap<Bytes, ReadIndexStatus>,
    /// Contexts in arrival order. Acknowledging one confirms every earlier one too.
    queue: VecDeque<Bytes>,
}

impl ReadOnly {
    pub fn add_request(&mut self, index: u64, req: Message) {
        let ctx = req.entries[0].data.clone();
        if self.pending.contains_key(&ctx) {
            return;
        }
        self.pending.insert(
            ctx.clone(),
            ReadIndexStatus {
                req,
                index,
                acks: BTreeSet::new(),
            },
        );
        self.queue.push_back(ctx);
    }

    /// Records `id`'s acknowledgement of the heartbeat carrying `ctx`; returns who has
    /// acknowledged it so far.
    pub fn recv_ack(&mut self, id: NodeId, ctx: &[u8]) -> Option<&BTreeSet<NodeId>> {
        let status = self.pending.get_mut(ctx)?;
        status.acks.insert(id);
        Some(&status.acks)
    }

    /// Removes and returns every read up to and including the one with `ctx`.
    pub fn advance(&mut self, ctx: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(pos) = self.queue.iter().position(|c| c.as_ref() == ctx) else {
            return Vec::new();
        };
        self.queue
            .drain(..=pos)
            .map(|c| self.pending.remove(&c).expect("queued read is pending"))
            .collect()
    }

    pub fn last_pending_request_ctx(&self) -> Option<Bytes> {
        self.queue.back().cloned()
    }

    pub fn pending_count(&self) -> usize {
        self.queue.len()
    }
}
