//! Membership changes are decided here: configuration-change entries (add, remove,
//! promote, update) and members publishing their attributes.
//!
//! A configuration change is checked against the membership exactly as the Cluster
//! service checked it before proposing (`crate::membership`'s rules), because every
//! member must decide the same. Only a change that passes goes to the Raft core (through
//! [`super::RaftConfig`]) and then into the membership and the backend's `members` and
//! `members_removed` buckets, in the batch's transaction. A refused change touches
//! neither, and its proposer is told why.

use retcd_api::errors::EtcdError;
use retcd_api::membershippb::ClusterMemberAttrSetRequest;
use retcd_backend::WriteTx;
use retcd_raft::{ConfChange, ConfChangeType, ConfChangeV2, EntryType};

use super::{ApplyResponse, ApplyResult, RaftConfig};
use crate::ids::MemberId;
use crate::membership::{Member, Membership, Refusal};

/// A configuration-change entry as a `ConfChangeV2`, with the proposer's request id and
/// the member record it carries; `None` for entries that do not decode (every member
/// skips those alike).
pub struct DecodedConfChange {
    pub change: ConfChangeV2,
    pub id: u64,
    pub member: Option<Member>,
}

impl DecodedConfChange {
    pub fn of(e: &retcd_raft::Entry) -> Option<DecodedConfChange> {
        match e.entry_type {
            EntryType::ConfChange => {
                let cc = ConfChange::decode(&e.data).ok()?;
                Some(DecodedConfChange {
                    id: cc.id,
                    member: Member::decode(&cc.context).ok(),
                    change: ConfChangeV2::from(cc),
                })
            }
            EntryType::ConfChangeV2 => Some(DecodedConfChange {
                change: ConfChangeV2::decode(&e.data).ok()?,
                id: 0,
                member: None,
            }),
            EntryType::Normal => None,
        }
    }
}

/// What applying a configuration change did.
pub struct ConfOutcome {
    /// The proposer's request id and its answer.
    pub answer: (u64, ApplyResult),
    /// The change was accepted: the membership and Raft's configuration changed.
    pub accepted: bool,
    /// The change removed this member.
    pub removed_self: bool,
}

/// The membership after `cc`, or why the membership refuses it: the Cluster service's
/// rules, on a copy (a change of several members that fails part way leaves nothing
/// behind).
pub fn decide(cc: &DecodedConfChange, m: &Membership) -> Result<Membership, Refusal> {
    let mut next = m.clone();
    for change in &cc.change.changes {
        step(&mut next, change.change_type, MemberId(change.node_id), cc)?;
    }
    Ok(next)
}

/// Applies a configuration change: decided against `m`, then handed to Raft, then
/// recorded in `m` and `tx`.
pub fn apply_conf_change<T: WriteTx + ?Sized>(
    cc: &DecodedConfChange,
    m: &mut Membership,
    tx: &mut T,
    raft: &mut dyn RaftConfig,
    local: MemberId,
) -> Result<ConfOutcome, retcd_backend::BackendError> {
    let refused = |err: EtcdError| ConfOutcome {
        answer: (cc.id, Err(err)),
        accepted: false,
        removed_self: false,
    };
    let next = match decide(cc, m) {
        Ok(next) => next,
        Err(r) => {
            tracing::info!(error = %r.to_error(), "configuration change refused");
            return Ok(refused(r.to_error()));
        }
    };
    if let Err(e) = raft.apply_conf_change(&cc.change) {
        tracing::warn!(error = %e, "raft refused a configuration change the membership accepts");
        return Ok(refused(EtcdError::Corrupt));
    }
    let mut removed_self = false;
    for id in m.members.keys().filter(|id| !next.members.contains_key(id)) {
        removed_self |= *id == local;
        tx.delete(retcd_backend::Bucket::Members, &Membership::key(*id))?;
        tx.put(
            retcd_backend::Bucket::MembersRemoved,
            &Membership::key(*id),
            b"removed",
        )?;
        tracing::info!(member = %id, "removed member");
    }
    for member in next.members.values() {
        if m.get(member.id) != Some(member) {
            tx.put(
                retcd_backend::Bucket::Members,
                &Membership::key(member.id),
                &member.encode(),
            )?;
            tracing::info!(member = %member.id, learner = member.is_learner, peer_urls = ?member.peer_urls, "member added or changed");
        }
    }
    *m = next;
    let list = m.members.values().map(Member::to_api).collect();
    Ok(ConfOutcome {
        answer: (cc.id, Ok(ApplyResponse::Members(list))),
        accepted: true,
        removed_self,
    })
}

/// One change of a configuration-change entry, on `m`: the Cluster service's rules.
fn step(
    m: &mut Membership,
    kind: ConfChangeType,
    target: MemberId,
    cc: &DecodedConfChange,
) -> Result<(), Refusal> {
    // The entry's member record must be about the member it changes (adds and updates
    // need one; removals and promotions need only the id).
    let record = cc.member.as_ref().filter(|mem| mem.id == target);
    match kind {
        ConfChangeType::AddNode if m.get(target).is_some_and(|x| x.is_learner) => {
            m.check_promote(target)?;
            if let Some(member) = m.members.get_mut(&target) {
                member.is_learner = false;
            }
        }
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let mut added = record.cloned().ok_or(Refusal::NotFound)?;
            m.check_add(&added)?;
            added.is_learner = kind == ConfChangeType::AddLearnerNode;
            m.members.insert(target, added);
        }
        ConfChangeType::RemoveNode => {
            m.check_remove(target)?;
            m.members.remove(&target);
            m.removed.insert(target);
        }
        ConfChangeType::UpdateNode => {
            let record = record.ok_or(Refusal::NotFound)?;
            m.check_update(target, &record.peer_urls)?;
            if let Some(member) = m.members.get_mut(&target) {
                member.peer_urls = record.peer_urls.clone();
            }
        }
    }
    Ok(())
}

/// A member publishes its name and client URLs (etcd's ClusterMemberAttrSet); ignored
/// for an id that is not a member.
pub fn apply_attrs<T: WriteTx + ?Sized>(
    req: &ClusterMemberAttrSetRequest,
    m: &mut Membership,
    tx: &mut T,
) -> Result<bool, retcd_backend::BackendError> {
    let id = MemberId(req.member_id);
    let attrs = req.member_attributes.clone().unwrap_or_default();
    let Some(member) = m.members.get_mut(&id) else {
        return Ok(false);
    };
    member.name = attrs.name;
    member.client_urls = attrs.client_urls;
    tx.put(
        retcd_backend::Bucket::Members,
        &Membership::key(id),
        &member.encode(),
    )?;
    Ok(true)
}
