//! Linearizable reads: every read queued in a turn shares one ReadIndex request (etcd's
//! `linearizableReadLoop` batches the same way); a batch is released once the applied
//! index reaches the read index Raft answered with.

use std::collections::HashMap;

use bytes::Bytes;
use retcd_api::errors::EtcdError;
use retcd_raft::{MemStorage, RawNode, ReadState};

use super::handle::ReadReply;
use crate::ids::MemberId;

/// The reads in progress of one member.
#[derive(Default)]
pub(super) struct ReadQueue {
    /// Reads received this turn; they share one ReadIndex request.
    batch: Vec<ReadReply>,
    /// Reads whose ReadIndex request is with Raft, by request context.
    in_flight: HashMap<u64, Vec<ReadReply>>,
    /// Reads with a read index, waiting for it to be applied.
    ready: Vec<(u64, Vec<ReadReply>)>,
    next_ctx: u64,
}

impl ReadQueue {
    pub fn push(&mut self, reply: ReadReply) {
        self.batch.push(reply);
    }

    /// Asks Raft for one read index for every read queued this turn.
    pub fn flush(&mut self, raw: &mut RawNode<MemStorage>, local: MemberId) {
        if self.batch.is_empty() {
            return;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        let batch = std::mem::take(&mut self.batch);
        // The leader keeps pending reads by context, from every member at once: the
        // context must be unique in the cluster, not only here (member id + counter).
        let mut key = local.0.to_be_bytes().to_vec();
        key.extend_from_slice(&ctx.to_be_bytes());
        match raw.read_index(Bytes::from(key)) {
            Ok(()) => {
                self.in_flight.insert(ctx, batch);
            }
            Err(e) => {
                tracing::debug!(error = %e, "read index refused");
                for r in batch {
                    let _ = r.send(Err(EtcdError::NoLeader));
                }
            }
        }
    }

    /// Takes Raft's answers: the batches of this member's contexts get their read index.
    pub fn answered(&mut self, states: Vec<ReadState>, local: MemberId) {
        for rs in states {
            let (Some(member), Some(ctx)) = (rs.request_ctx.get(..8), rs.request_ctx.get(8..))
            else {
                continue;
            };
            let (Ok(member), Ok(ctx)) = (<[u8; 8]>::try_from(member), <[u8; 8]>::try_from(ctx))
            else {
                continue;
            };
            if u64::from_be_bytes(member) != local.0 {
                continue;
            }
            if let Some(batch) = self.in_flight.remove(&u64::from_be_bytes(ctx)) {
                self.ready.push((rs.index, batch));
            }
        }
    }

    /// Answers the reads whose read index is applied.
    pub fn release(&mut self, applied: u64) {
        self.ready.retain_mut(|(index, batch)| {
            if *index > applied {
                return true;
            }
            for r in batch.drain(..) {
                let _ = r.send(Ok(*index));
            }
            false
        });
    }

    /// The leader changed: a ReadIndex request sent to the old one will never be
    /// answered, so its readers hear it now rather than at their timeout, as etcd does.
    pub fn leader_changed(&mut self) {
        for r in self.in_flight.drain().flat_map(|(_, b)| b) {
            let _ = r.send(Err(EtcdError::LeaderChanged));
        }
    }

    /// Drops reads whose caller gave up.
    pub fn sweep(&mut self) {
        for batch in self.in_flight.values_mut() {
            batch.retain(|r| !r.is_closed());
        }
        self.in_flight.retain(|_, b| !b.is_empty());
    }

    /// Fails every read (the loop stops).
    pub fn fail_all(&mut self, error: EtcdError) {
        let reads = self
            .batch
            .drain(..)
            .chain(self.in_flight.drain().flat_map(|(_, b)| b))
            .chain(self.ready.drain(..).flat_map(|(_, b)| b));
        for r in reads {
            let _ = r.send(Err(error));
        }
    }
}
