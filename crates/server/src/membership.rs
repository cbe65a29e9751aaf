//! Cluster membership: who the members are, where they listen, and who was removed.
//!
//! The record of truth is the backend's `members` and `members_removed` buckets, written
//! by apply in the same transaction as the consistent index, so every member holds the
//! same membership at the same applied index and a snapshot carries it along. Raft's own
//! configuration (voters, learners) follows the same configuration-change entries; the
//! entry's context is the member's record (`membershippb::Member`), so applying an entry
//! needs nothing but the entry.
//!
//! [`Membership`] is the in-memory copy apply keeps and publishes: the transport dials
//! the peer URLs in it, the Cluster service lists it. Its checks (`check_add`,
//! `check_remove`, ...) are the rules of a change: the Cluster service runs them before
//! proposing, for a quick and precise error, and apply (`apply/membership.rs`) runs them
//! again on the entry, where the decision is made identically on every member.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use retcd_api::etcdserverpb;
use retcd_api::membershippb;
use retcd_backend::{Bucket, ReadTx};

use crate::ids::MemberId;

/// One member as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    /// Empty until the member has published its attributes (or was bootstrapped with it).
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has published its attributes.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Member {
    pub fn to_proto(&self) -> membershippb::Member {
        membershippb::Member {
            id: self.id.0,
            raft_attributes: Some(membershippb::RaftAttributes {
                peer_urls: self.peer_urls.clone(),
                is_learner: self.is_learner,
            }),
            member_attributes: Some(membershippb::Attributes {
                name: self.name.clone(),
                client_urls: self.client_urls.clone(),
            }),
        }
    }

    pub fn from_proto(m: membershippb::Member) -> Member {
        let raft = m.raft_attributes.unwrap_or_default();
        let attrs = m.member_attributes.unwrap_or_default();
        Member {
            id: MemberId(m.id),
            name: attrs.name,
            peer_urls: raft.peer_urls,
            client_urls: attrs.client_urls,
            is_learner: raft.is_learner,
        }
    }

    /// As the Cluster service lists it.
    pub fn to_api(&self) -> etcdserverpb::Member {
        etcdserverpb::Member {
            id: self.id.0,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Member, prost::DecodeError> {
        membershippb::Member::decode(bytes).map(Member::from_proto)
    }
}

/// The members and the removed ids, as of some applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: BTreeMap<MemberId, Member>,
    pub removed: BTreeSet<MemberId>,
}

/// Why a membership change is refused (at proposal and again at apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    IdRemoved,
    IdExists,
    PeerUrlExists,
    NotFound,
    NotLearner,
}

impl Membership {
    /// The backend key of member `id` in the `members` and `members_removed` buckets:
    /// its id in 16 lowercase hex digits (etcd's).
    pub fn key(id: MemberId) -> Vec<u8> {
        format!("{:016x}", id.0).into_bytes()
    }

    pub fn load<T: ReadTx + ?Sized>(tx: &T) -> Result<Membership, retcd_backend::BackendError> {
        let mut m = Membership::default();
        let mut bad = None;
        tx.scan(Bucket::Members, b"", None, &mut |_, v| {
            match Member::decode(v) {
                Ok(member) => {
                    m.members.insert(member.id, member);
                }
                Err(e) => bad = Some(e),
            }
            std::ops::ControlFlow::Continue(())
        })?;
        if let Some(e) = bad {
            return Err(retcd_backend::BackendError::Corrupted(format!(
                "a member record does not decode: {e}"
            )));
        }
        tx.scan(Bucket::MembersRemoved, b"", None, &mut |k, _| {
            if let Some(id) = std::str::from_utf8(k)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                m.removed.insert(MemberId(id));
            }
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(m)
    }

    /// The membership as `peerpb.MembersResponse` bytes (cluster and member ids left 0):
    /// what a Raft snapshot carries as its data, so that a restart can replay the
    /// configuration changes after it exactly as they were decided (see `apply`).
    pub fn encode(&self) -> Vec<u8> {
        retcd_api::peerpb::MembersResponse {
            cluster_id: 0,
            member_id: 0,
            members: self.members.values().map(Member::to_proto).collect(),
            removed: self.removed.iter().map(|id| id.0).collect(),
        }
        .encode_to_vec()
    }

    /// The membership [`Membership::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Membership, prost::DecodeError> {
        let resp = retcd_api::peerpb::MembersResponse::decode(bytes)?;
        Ok(Membership {
            members: resp
                .members
                .into_iter()
                .map(Member::from_proto)
                .map(|m| (m.id, m))
                .collect(),
            removed: resp.removed.into_iter().map(MemberId).collect(),
        })
    }

    /// What Raft's configuration follows: the membership without names and client URLs
    /// (which members publish in ordinary entries).
    pub fn configuration(&self) -> Membership {
        Membership {
            members: self
                .members
                .values()
                .map(|m| {
                    let mut m = m.clone();
                    m.name.clear();
                    m.client_urls.clear();
                    (m.id, m)
                })
                .collect(),
            removed: self.removed.clone(),
        }
    }

    pub fn get(&self, id: MemberId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn learners(&self) -> usize {
        self.members.values().filter(|m| m.is_learner).count()
    }

    fn peer_url_taken(&self, urls: &[String], except: Option<MemberId>) -> bool {
        self.members
            .values()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Checks an addition (voter or learner).
    pub fn check_add(&self, m: &Member) -> Result<(), Refusal> {
        if self.removed.contains(&m.id) {
            return Err(Refusal::IdRemoved);
        }
        if self.members.contains_key(&m.id) {
            return Err(Refusal::IdExists);
        }
        if self.peer_url_taken(&m.peer_urls, None) {
            return Err(Refusal::PeerUrlExists);
        }
        Ok(())
    }

    pub fn check_remove(&self, id: MemberId) -> Result<(), Refusal> {
        if self.removed.contains(&id) {
            return Err(Refusal::IdRemoved);
        }
        if !self.members.contains_key(&id) {
            return Err(Refusal::NotFound);
        }
        Ok(())
    }

    pub fn check_promote(&self, id: MemberId) -> Result<(), Refusal> {
        if self.removed.contains(&id) {
            return Err(Refusal::IdRemoved);
        }
        match self.members.get(&id) {
            None => Err(Refusal::NotFound),
            Some(m) if !m.is_learner => Err(Refusal::NotLearner),
            Some(_) => Ok(()),
        }
    }

    /// Checks new peer URLs for a member (MemberUpdate).
    pub fn check_update(&self, id: MemberId, peer_urls: &[String]) -> Result<(), Refusal> {
        if self.removed.contains(&id) {
            return Err(Refusal::IdRemoved);
        }
        if !self.members.contains_key(&id) {
            return Err(Refusal::NotFound);
        }
        if self.peer_url_taken(peer_urls, Some(id)) {
            return Err(Refusal::PeerUrlExists);
        }
        Ok(())
    }
}

impl Refusal {
    pub fn to_error(self) -> retcd_api::errors::EtcdError {
        use retcd_api::errors::EtcdError;
        match self {
            // etcd answers a removed id as "member not found".
            Refusal::IdRemoved => EtcdError::MemberNotFound,
            Refusal::IdExists => EtcdError::MemberExist,
            Refusal::PeerUrlExists => EtcdError::PeerUrlExist,
            Refusal::NotFound => EtcdError::MemberNotFound,
            Refusal::NotLearner => EtcdError::MemberNotLearner,
        }
    }
}
