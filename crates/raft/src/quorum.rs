//! Quorum arithmetic for majority and joint configurations.

use std::collections::BTreeSet;

use crate::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet: outstanding votes could still swing it.
    Pending,
    Lost,
    Won,
}

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    pub voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    pub fn new(voters: BTreeSet<NodeId>) -> Self {
        MajorityConfig { voters }
    }

    /// The largest index acknowledged by a majority. An empty configuration returns
    /// `u64::MAX` so that it never holds back a joint configuration.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        let mut matched: Vec<u64> = self
            .voters
            .iter()
            .map(|&id| acked(id).unwrap_or(0))
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = self.voters.len() / 2 + 1;
        matched[quorum - 1]
    }

    /// The outcome of a vote where `vote(id)` is Some(granted) for those who answered. An
    /// empty configuration wins (so that joint configurations reduce to the other half).
    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for &id in &self.voters {
            match vote(id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        if yes >= quorum {
            VoteResult::Won
        } else if yes + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The incoming and outgoing voter sets; outside a joint configuration the outgoing one is
/// empty and the pair acts as the incoming majority alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    pub incoming: MajorityConfig,
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters.is_empty()
    }

    /// Every voter of either half.
    pub fn ids(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters
            .union(&self.outgoing.voters)
            .copied()
            .collect()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.voters.contains(&id) || self.outgoing.voters.contains(&id)
    }

    pub fn committed_index(&self, acked: impl Fn(NodeId) -> Option<u64>) -> u64 {
        let a = self.incoming.committed_index(&acked);
        let b = self.outgoing.committed_index(&acked);
        a.min(b)
    }

    pub fn vote_result(&self, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let a = self.incoming.vote_result(&vote);
        let b = self.outgoing.vote_result(&vote);
        match (a, b) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn maj(ids: &[u64]) -> MajorityConfig {
        MajorityConfig::new(ids.iter().copied().collect())
    }

    #[test]
    fn committed_index_is_the_quorum_th_largest_match() {
        let acked: BTreeMap<u64, u64> = [(1, 10), (2, 7), (3, 5), (4, 3), (5, 1)].into();
        let f = |id| acked.get(&id).copied();
        assert_eq!(maj(&[1, 2, 3, 4, 5]).committed_index(f), 5);
        assert_eq!(maj(&[1, 2, 3]).committed_index(f), 7);
        assert_eq!(maj(&[1, 2]).committed_index(f), 7);
        assert_eq!(maj(&[1]).committed_index(f), 10);
        // A voter that never acked counts as 0.
        assert_eq!(maj(&[1, 9, 8]).committed_index(f), 0);
        assert_eq!(maj(&[]).committed_index(f), u64::MAX);
    }

    #[test]
    fn joint_commit_needs_both_majorities() {
        let acked: BTreeMap<u64, u64> = [(1, 10), (2, 10), (3, 2), (4, 2), (5, 2)].into();
        let f = |id| acked.get(&id).copied();
        let joint = JointConfig {
            incoming: maj(&[1, 2, 3]),
            outgoing: maj(&[3, 4, 5]),
        };
        assert_eq!(joint.committed_index(f), 2);
        let not_joint = JointConfig {
            incoming: maj(&[1, 2, 3]),
            outgoing: maj(&[]),
        };
        assert_eq!(not_joint.committed_index(f), 10);
    }

    #[test]
    fn vote_results() {
        let votes: BTreeMap<u64, bool> = [(1, true), (2, false)].into();
        let f = |id| votes.get(&id).copied();
        assert_eq!(maj(&[1, 2, 3]).vote_result(f), VoteResult::Pending);
        assert_eq!(maj(&[1, 2]).vote_result(f), VoteResult::Lost);
        assert_eq!(maj(&[1]).vote_result(f), VoteResult::Won);
        let joint = JointConfig {
            incoming: maj(&[1]),
            outgoing: maj(&[2, 3]),
        };
        assert_eq!(joint.vote_result(f), VoteResult::Lost);
        let joint = JointConfig {
            incoming: maj(&[1]),
            outgoing: maj(&[1, 3]),
        };
        assert_eq!(joint.vote_result(f), VoteResult::Pending);
    }
}
