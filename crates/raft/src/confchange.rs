//! Configuration changes: single-step changes, entering and leaving joint configurations
//! (Raft thesis §4.3), and rebuilding a configuration from a `ConfState`.
//!
//! A change is computed on copies of the tracker's configuration and progress map and only
//! installed by the caller once it is known to be valid.

use crate::NodeId;
use crate::error::{Error, Result};
use crate::tracker::{Progress, ProgressMap, ProgressTracker, TrackerConfig};
use crate::types::{ConfChangeSingle, ConfChangeType, ConfState};

fn invalid<T>(why: impl Into<String>) -> Result<T> {
    Err(Error::InvalidConfChange(why.into()))
}

/// Computes new configurations from the current one.
pub struct Changer<'a> {
    pub tracker: &'a ProgressTracker,
    /// The leader's last log index: new members start probing after it.
    pub last_index: u64,
}

impl Changer<'_> {
    /// Enters a joint configuration: the current voters become the outgoing half and the
    /// changes apply to the incoming half.
    pub fn enter_joint(
        &self,
        auto_leave: bool,
        changes: &[ConfChangeSingle],
    ) -> Result<(TrackerConfig, ProgressMap)> {
        let (mut cfg, mut prs) = self.snapshot();
        if cfg.voters.is_joint() {
            return invalid("config is already joint");
        }
        if cfg.voters.incoming.voters.is_empty() {
            // Joint consensus needs a voter set to start from; an empty one means the
            // configuration was never initialized.
            return invalid("can't make a zero-voter config joint");
        }
        cfg.voters.outgoing = cfg.voters.incoming.clone();
        self.apply(&mut cfg, &mut prs, changes)?;
        cfg.auto_leave = auto_leave;
        check_invariants(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    /// Leaves the joint configuration: the incoming half alone decides from now on.
    pub fn leave_joint(&self) -> Result<(TrackerConfig, ProgressMap)> {
        let (mut cfg, mut prs) = self.snapshot();
        if !cfg.voters.is_joint() {
            return invalid("can't leave a non-joint config");
        }
        for id in std::mem::take(&mut cfg.learners_next) {
            cfg.learners.insert(id);
            prs.get_mut(&id)
                .expect("learner_next has progress")
                .is_learner = true;
        }
        let outgoing = std::mem::take(&mut cfg.voters.outgoing.voters);
        for id in outgoing {
            if !cfg.voters.incoming.voters.contains(&id) && !cfg.learners.contains(&id) {
                prs.remove(&id);
            }
        }
        cfg.auto_leave = false;
        check_invariants(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    /// Applies changes that alter at most one voter without a joint configuration.
    pub fn simple(&self, changes: &[ConfChangeSingle]) -> Result<(TrackerConfig, ProgressMap)> {
        let (mut cfg, mut prs) = self.snapshot();
        if cfg.voters.is_joint() {
            return invalid("can't apply simple config change in joint config");
        }
        self.apply(&mut cfg, &mut prs, changes)?;
        let before = &self.tracker.config.voters.incoming.voters;
        let after = &cfg.voters.incoming.voters;
        if before.symmetric_difference(after).count() > 1 {
            return invalid("more than one voter changed without entering joint config");
        }
        check_invariants(&cfg, &prs)?;
        Ok((cfg, prs))
    }

    fn snapshot(&self) -> (TrackerConfig, ProgressMap) {
        (self.tracker.config.clone(), self.tracker.progress.clone())
    }

    fn apply(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        changes: &[ConfChangeSingle],
    ) -> Result<()> {
        for cc in changes {
            if cc.node_id == crate::NONE {
                // etcd treats id 0 as "no node" and skips it.
                continue;
            }
            match cc.change_type {
                ConfChangeType::AddNode => self.make_voter(cfg, prs, cc.node_id),
                ConfChangeType::AddLearnerNode => self.make_learner(cfg, prs, cc.node_id),
                ConfChangeType::RemoveNode => remove(cfg, prs, cc.node_id),
                ConfChangeType::UpdateNode => {}
            }
        }
        if cfg.voters.incoming.voters.is_empty() {
            return invalid("removed all voters");
        }
        Ok(())
    }

    fn init_progress(
        &self,
        cfg: &mut TrackerConfig,
        prs: &mut ProgressMap,
        id: NodeId,
        learner: bool,
    ) {
        if learner {
            cfg.learners.insert(id);
        } else {
            cfg.voters.incoming.voters.insert(id);
        }
        let mut pr = Progress::new(self.last_index.max(1), self.tracker.max_inflight, learner);
        // A new member counts as active, or check-quorum could make the leader step down
        // before the member had a chance to answer.
        pr.recent_active = true;
        prs.insert(id, pr);
    }

    fn make_voter(&self, cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
        let Some(pr) = prs.get_mut(&id) else {
            self.init_progress(cfg, prs, id, false);
            return;
        };
        pr.is_learner = false;
        cfg.learners.remove(&id);
        cfg.learners_next.remove(&id);
        cfg.voters.incoming.voters.insert(id);
    }

    fn make_learner(&self, cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
        let Some(pr) = prs.get(&id) else {
            self.init_progress(cfg, prs, id, true);
            return;
        };
        if pr.is_learner {
            return;
        }
        let pr = pr.clone();
        // Remove it as a voter first, keeping its progress.
        remove(cfg, prs, id);
        prs.insert(id, pr);
        if cfg.voters.outgoing.voters.contains(&id) {
            // Still a voter of the outgoing half: it becomes a learner when the joint
            // configuration is left.
            cfg.learners_next.insert(id);
        } else {
            prs.get_mut(&id).expect("just inserted").is_learner = true;
            cfg.learners.insert(id);
        }
    }
}

fn remove(cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
    if !prs.contains_key(&id) {
        return;
    }
    cfg.voters.incoming.voters.remove(&id);
    cfg.learners.remove(&id);
    cfg.learners_next.remove(&id);
    // A voter of the outgoing half keeps its progress until the joint configuration is left.
    if !cfg.voters.outgoing.voters.contains(&id) {
        prs.remove(&id);
    }
}

/// The invariants every configuration must satisfy.
pub fn check_invariants(cfg: &TrackerConfig, prs: &ProgressMap) -> Result<()> {
    for id in cfg
        .voters
        .ids()
        .iter()
        .chain(&cfg.learners)
        .chain(&cfg.learners_next)
    {
        if !prs.contains_key(id) {
            return invalid(format!("no progress for {id}"));
        }
    }
    for id in &cfg.learners_next {
        if !cfg.voters.outgoing.voters.contains(id) {
            return invalid(format!("{id} is in learners_next, but not outgoing"));
        }
        if prs[id].is_learner {
            return invalid(format!(
                "{id} is in learners_next, but is already marked as learner"
            ));
        }
    }
    for id in &cfg.learners {
        if cfg.voters.contains(*id) {
            return invalid(format!("{id} is in learners and voters"));
        }
        if !prs[id].is_learner {
            return invalid(format!("{id} is in learners, but is not marked as learner"));
        }
    }
    if !cfg.voters.is_joint() {
        if !cfg.learners_next.is_empty() {
            return invalid("learners_next must be empty when not joint");
        }
        if cfg.auto_leave {
            return invalid("auto_leave must be false when not joint");
        }
    }
    Ok(())
}

/// Rebuilds the tracker's configuration from `cs` (a snapshot's or the initial one) by
/// replaying it as changes: the outgoing voters one by one, then the incoming half as a
/// joint change on top.
pub fn restore(tracker: &mut ProgressTracker, last_index: u64, cs: &ConfState) -> Result<()> {
    let add = |ids: &[NodeId], t| -> Vec<ConfChangeSingle> {
        ids.iter()
            .map(|&node_id| ConfChangeSingle {
                change_type: t,
                node_id,
            })
            .collect()
    };
    let outgoing = add(&cs.voters_outgoing, ConfChangeType::AddNode);
    let mut incoming = add(&cs.voters_outgoing, ConfChangeType::RemoveNode);
    incoming.extend(add(&cs.voters, ConfChangeType::AddNode));
    incoming.extend(add(&cs.learners, ConfChangeType::AddLearnerNode));
    incoming.extend(add(&cs.learners_next, ConfChangeType::AddLearnerNode));

    let install = |tracker: &mut ProgressTracker, (cfg, prs): (TrackerConfig, ProgressMap)| {
        tracker.config = cfg;
        tracker.progress = prs;
    };
    if outgoing.is_empty() {
        for cc in incoming {
            let next = Changer {
                tracker,
                last_index,
            }
            .simple(&[cc])?;
            install(tracker, next);
        }
    } else {
        for cc in outgoing {
            let next = Changer {
                tracker,
                last_index,
            }
            .simple(&[cc])?;
            install(tracker, next);
        }
        let next = Changer {
            tracker,
            last_index,
        }
        .enter_joint(cs.auto_leave, &incoming)?;
        install(tracker, next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64) -> ConfChangeSingle {
        ConfChangeSingle {
            change_type: ConfChangeType::AddNode,
            node_id: id,
        }
    }
    fn learner(id: u64) -> ConfChangeSingle {
        ConfChangeSingle {
            change_type: ConfChangeType::AddLearnerNode,
            node_id: id,
        }
    }
    fn rm(id: u64) -> ConfChangeSingle {
        ConfChangeSingle {
            change_type: ConfChangeType::RemoveNode,
            node_id: id,
        }
    }

    fn tracker_with(voters: &[u64]) -> ProgressTracker {
        let mut t = ProgressTracker::new(16);
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        restore(&mut t, 1, &cs).unwrap();
        t
    }

    fn install(t: &mut ProgressTracker, r: Result<(TrackerConfig, ProgressMap)>) {
        let (cfg, prs) = r.unwrap();
        t.config = cfg;
        t.progress = prs;
    }

    #[test]
    fn simple_change_may_touch_only_one_voter() {
        let t = tracker_with(&[1, 2, 3]);
        let c = Changer {
            tracker: &t,
            last_index: 5,
        };
        assert!(c.simple(&[add(4)]).is_ok());
        assert!(
            c.simple(&[add(4), learner(5)]).is_ok(),
            "learners don't count"
        );
        assert!(matches!(
            c.simple(&[add(4), add(5)]),
            Err(Error::InvalidConfChange(_))
        ));
        assert!(matches!(
            c.simple(&[rm(1), rm(2), rm(3)]),
            Err(Error::InvalidConfChange(_))
        ));
    }

    #[test]
    fn joint_change_replaces_voters_and_demotes_through_learners_next() {
        let mut t = tracker_with(&[1, 2, 3]);
        let r = Changer {
            tracker: &t,
            last_index: 5,
        }
        .enter_joint(true, &[add(4), learner(3)]);
        install(&mut t, r);
        let cs = t.conf_state();
        assert_eq!(cs.voters, vec![1, 2, 4]);
        assert_eq!(cs.voters_outgoing, vec![1, 2, 3]);
        assert_eq!(cs.learners_next, vec![3]);
        assert!(cs.auto_leave);
        // Can't enter twice.
        assert!(
            Changer {
                tracker: &t,
                last_index: 5
            }
            .enter_joint(false, &[])
            .is_err()
        );
        let r = Changer {
            tracker: &t,
            last_index: 5,
        }
        .leave_joint();
        install(&mut t, r);
        let cs = t.conf_state();
        assert_eq!(cs.voters, vec![1, 2, 4]);
        assert!(cs.voters_outgoing.is_empty());
        assert_eq!(cs.learners, vec![3]);
        assert!(t.progress[&3].is_learner);
    }

    #[test]
    fn leaving_joint_drops_removed_voters_progress() {
        let mut t = tracker_with(&[1, 2, 3]);
        let r = Changer {
            tracker: &t,
            last_index: 5,
        }
        .enter_joint(false, &[rm(3), add(9)]);
        install(&mut t, r);
        assert!(
            t.progress.contains_key(&3),
            "outgoing voter keeps progress while joint"
        );
        let r = Changer {
            tracker: &t,
            last_index: 5,
        }
        .leave_joint();
        install(&mut t, r);
        assert!(!t.progress.contains_key(&3));
        assert_eq!(t.conf_state().voters, vec![1, 2, 9]);
    }

    #[test]
    fn restore_round_trips_a_joint_conf_state() {
        let cs = ConfState {
            voters: vec![1, 2, 4],
            learners: vec![5],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![3],
            auto_leave: true,
        };
        let mut t = ProgressTracker::new(16);
        restore(&mut t, 10, &cs).unwrap();
        assert_eq!(t.conf_state(), cs);
    }

    #[test]
    fn promote_learner_to_voter() {
        let mut t = tracker_with(&[1]);
        let r = Changer {
            tracker: &t,
            last_index: 1,
        }
        .simple(&[learner(2)]);
        install(&mut t, r);
        assert_eq!(t.conf_state().learners, vec![2]);
        let r = Changer {
            tracker: &t,
            last_index: 1,
        }
        .simple(&[add(2)]);
        install(&mut t, r);
        assert_eq!(t.conf_state().voters, vec![1, 2]);
        assert!(t.conf_state().learners.is_empty());
        assert!(!t.progress[&2].is_learner);
    }
}
