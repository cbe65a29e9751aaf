//! Scripted scenario tests: each drives a lock-step `sim::Network` (whose `Checker` verifies
//! Raft's safety properties on every `Ready`) through one situation from the Raft paper or
//! etcd-io/raft's behaviour, and asserts concrete terms, leaders, indexes and errors.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use retcd_raft::config::InjectedFaults;
use retcd_raft::sim::Network;
use retcd_raft::*;

// ---- helpers ------------------------------------------------------------------------------

/// Plain Raft: no pre-vote, no check-quorum (no leader lease), so that votes are decided by
/// terms and logs alone.
fn plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

/// Delivered messages of type `t` from `from` to `to`, from position `since` on.
fn sent(net: &Network, since: usize, from: NodeId, to: NodeId, t: MessageType) -> Vec<Message> {
    net.delivered[since..]
        .iter()
        .filter(|m| m.from == from && m.to == to && m.msg_type == t)
        .cloned()
        .collect()
}

/// The entry at `index` in `id`'s durable log.
fn entry_at(net: &Network, id: NodeId, index: u64) -> Entry {
    let es = net.nodes[&id]
        .storage
        .entries(index, index + 1, u64::MAX)
        .unwrap_or_else(|e| panic!("node {id} has no entry {index}: {e}"));
    es[0].clone()
}

fn data(items: &[&str]) -> Vec<Bytes> {
    items
        .iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

fn applied(net: &Network, id: NodeId) -> Vec<Bytes> {
    net.nodes[&id].applied_data.clone()
}

fn single(change_type: ConfChangeType, node_id: NodeId) -> ConfChangeSingle {
    ConfChangeSingle {
        change_type,
        node_id,
    }
}

fn conf_change(change_type: ConfChangeType, node_id: NodeId) -> ConfChange {
    ConfChange {
        id: 0,
        change_type,
        node_id,
        context: Bytes::new(),
    }
}

fn conf_state(
    voters: &[NodeId],
    learners: &[NodeId],
    outgoing: &[NodeId],
    auto: bool,
) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        voters_outgoing: outgoing.to_vec(),
        learners_next: Vec::new(),
        auto_leave: auto,
    }
}

fn read_state(index: u64, ctx: &str) -> ReadState {
    ReadState {
        index,
        request_ctx: Bytes::copy_from_slice(ctx.as_bytes()),
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

// ---- 1. elections -------------------------------------------------------------------------

/// A lone voter elects itself once its election timeout passes, and commits its empty entry
/// without anyone else.
#[test]
fn single_node_elects_itself() {
    let mut net = Network::new(&[1], |_| {});
    net.tick_all(9);
    assert_eq!(
        net.role(1),
        StateRole::Follower,
        "timeout is at least 10 ticks"
    );
    net.tick_all(11);
    assert_eq!(net.role(1), StateRole::Leader);
    assert_eq!(net.term(1), 1);
    assert_eq!(net.committed(1), 1);
    assert_eq!(net.node(1).applied_index, 1);
}

/// Three nodes left to their timers elect exactly one leader, which everyone follows, and
/// the leader's empty entry of its term commits and is applied everywhere.
#[test]
fn three_nodes_elect_one_leader_and_commit_its_empty_entry() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.tick_all(20);
    let leader = net.leader().expect("a leader within two election timeouts");
    let leaders: Vec<NodeId> = (1..=3)
        .filter(|&id| net.role(id) == StateRole::Leader)
        .collect();
    assert_eq!(leaders, vec![leader]);
    for id in 1..=3 {
        assert_eq!(net.term(id), 1, "pre-vote: one real election, term 1");
        assert_eq!(net.raw(id).raft.leader_id, leader);
        assert_eq!(net.committed(id), 1);
        assert_eq!(net.node(id).applied_index, 1);
        assert_eq!(
            entry_at(&net, id, 1),
            Entry {
                term: 1,
                index: 1,
                ..Default::default()
            }
        );
    }
}

/// A candidate whose log lacks a committed entry is refused by the node that has it, and
/// cannot win; a candidate with an up-to-date log wins and the stale node catches up.
#[test]
fn stale_candidate_loses_and_up_to_date_candidate_wins() {
    let mut net = Network::new(&[1, 2, 3], plain);
    net.campaign(1);
    net.isolate(3);
    net.propose(1, b"x").unwrap();
    assert_eq!((net.committed(1), net.committed(2)), (2, 2));
    assert_eq!(net.last_index(3), 1);
    net.crash(1);
    net.heal();

    let before = net.delivered.len();
    net.campaign(3);
    let replies = sent(&net, before, 2, 3, MessageType::RequestVoteResponse);
    assert_eq!(replies.len(), 1);
    assert!(replies[0].reject, "2 holds committed entry 2, 3 does not");
    assert_eq!(replies[0].term, 2);
    assert_eq!(
        net.role(3),
        StateRole::Candidate,
        "1 vote of 3: not elected"
    );
    assert_eq!(net.leader(), None);

    net.campaign(2);
    assert_eq!(net.leader(), Some(2));
    assert_eq!(net.term(2), 3);
    assert_eq!(net.role(3), StateRole::Follower);
    assert_eq!(net.last_index(3), 3);
    assert_eq!(applied(&net, 3), data(&["x"]));
}

// ---- 2. figure 8 --------------------------------------------------------------------------

/// The Raft paper's figure 8 up to step (c), with our terms (each leader first appends an
/// empty entry, so indexes shift by one):
/// (a) S1 leads term 1 and puts "old" at index 2 on S1 and S2 only;
/// (b) S1 crashes, S5 wins term 2 with S3 and S4 and appends (2: empty, 3: "new") only
///     locally, then crashes;
/// (c) S1 restarts, wins term 3 with S2 and S3 and replicates index 2 (term 1) to S3, but not
///     its own term-3 entry at index 3: "old" is now on a majority (S1, S2, S3).
fn figure8_until_c(faults: InjectedFaults) -> Network {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |c| {
        plain(c);
        c.injected_faults = faults;
    });
    net.campaign(1);
    assert_eq!(
        (net.leader(), net.term(1), net.committed(1)),
        (Some(1), 1, 1)
    );

    // (a)
    net.partition(&[1, 2]);
    net.propose(1, b"old").unwrap();
    assert_eq!(
        (net.last_index(1), net.last_index(2), net.last_index(3)),
        (2, 2, 1)
    );
    assert_eq!(net.committed(1), 1);

    // (b)
    net.crash(1);
    net.drop_types.insert(MessageType::Append);
    net.campaign(5);
    assert_eq!((net.role(5), net.term(5)), (StateRole::Leader, 2));
    net.propose(5, b"new").unwrap();
    assert_eq!(net.last_index(5), 3);
    assert_eq!((net.last_index(3), net.last_index(4)), (1, 1));
    net.crash(5);
    net.heal();

    // (c): S4 stays out of it; S1's appends carry nothing past index 2.
    net.restart(1);
    net.cut.insert((1, 4));
    net.cut.insert((4, 1));
    let up_to_2 = |m: &mut Message| {
        if m.from == 1 && m.msg_type == MessageType::Append {
            m.entries.retain(|e| e.index <= 2);
        }
        true
    };
    net.raw(1).campaign().unwrap();
    net.drain_with(up_to_2);
    // S3 voted for S5 in term 2: S1 has only S2's vote and must try again.
    assert_eq!((net.role(1), net.term(1)), (StateRole::Candidate, 2));
    net.raw(1).campaign().unwrap();
    net.drain_with(up_to_2);
    assert_eq!(
        (net.role(1), net.term(1), net.last_index(1)),
        (StateRole::Leader, 3, 3)
    );
    for id in [2, 3] {
        assert_eq!(net.last_index(id), 2);
        assert_eq!(entry_at(&net, id, 2).term, 1);
        assert_eq!(entry_at(&net, id, 2).data, Bytes::from_static(b"old"));
    }
    let progress = net.raw(1).status().progress;
    assert_eq!((progress[&2].matched, progress[&3].matched), (2, 2));
    net
}

/// Figure 8 (d): S1 crashes again; S5 (last term 2) wins term 4 with S2, S3 and S4 (last term
/// 1) and overwrites index 2 everywhere.
fn figure8_d(net: &mut Network) {
    net.crash(1);
    net.heal();
    net.restart(5);
    net.campaign(5);
    // S2 and S3 voted for S1 in term 3.
    assert_eq!((net.role(5), net.term(5)), (StateRole::Candidate, 3));
    net.campaign(5);
    assert_eq!((net.leader(), net.term(5)), (Some(5), 4));
}

/// Figure 8: an entry of an earlier term stored on a majority is not committed by counting
/// replicas. Committing it would have been unsafe: S5 can still be elected and overwrite it.
#[test]
fn figure8_old_term_entry_on_majority_is_not_committed() {
    let mut net = figure8_until_c(InjectedFaults::default());
    assert_eq!(
        net.committed(1),
        1,
        "index 2 (term 1) is on 3 of 5 but must not commit"
    );
    for id in 1..=3 {
        assert!(applied(&net, id).is_empty());
    }
    figure8_d(&mut net);
    for id in 2..=5 {
        assert_eq!(
            entry_at(&net, id, 2).term,
            2,
            "node {id}: index 2 replaced by S5's"
        );
        assert_eq!(net.committed(id), 4);
        assert_eq!(applied(&net, id), data(&["new"]));
    }
}

/// Figure 8 (e): once the leader commits an entry of its own term on a majority, the older
/// entry before it is committed too, and S5 can no longer be elected.
#[test]
fn figure8_old_term_entry_commits_with_current_term_entry() {
    let mut net = figure8_until_c(InjectedFaults::default());
    net.tick(1); // heartbeats; S2 and S3 now get index 3 too
    assert_eq!(net.committed(1), 3);
    for id in 1..=3 {
        assert_eq!(applied(&net, id), data(&["old"]));
    }
    net.crash(1);
    net.restart(5);
    net.campaign(5);
    net.campaign(5);
    assert_ne!(
        net.role(5),
        StateRole::Leader,
        "S2 and S3 have term 3 at index 3"
    );
    net.campaign(2);
    assert_eq!(net.leader(), Some(2));
    for id in 2..=5 {
        assert_eq!(applied(&net, id), data(&["old"]), "node {id}");
    }
}

/// The same script with the figure-8 bug injected (commit whatever a majority holds): S1
/// commits and applies "old", then S5 is elected without it and overwrites it. The checker
/// catches the lost committed entry, which proves the rule is what keeps the script safe.
#[test]
fn figure8_committing_old_term_entry_by_counting_loses_it() {
    let faults = InjectedFaults {
        commit_old_term_by_counting: true,
        ..Default::default()
    };
    let mut net = figure8_until_c(faults);
    assert_eq!(net.committed(1), 2, "the bug commits index 2 by counting");
    assert_eq!(applied(&net, 1), data(&["old"]));
    let outcome = catch_unwind(AssertUnwindSafe(|| figure8_d(&mut net)));
    let msg = panic_message(outcome.expect_err("S5 must be caught overwriting a committed entry"));
    assert!(
        msg.contains("leader completeness violated") && msg.contains("committed index 2"),
        "unexpected failure: {msg}"
    );
}

// ---- 3. stale leader ----------------------------------------------------------------------

/// A leader cut off with a minority keeps accepting proposals, which can never commit; when
/// the partition heals it steps down to the new leader's term and its uncommitted entries are
/// replaced by the new leader's.
#[test]
fn partitioned_old_leader_steps_down_and_loses_uncommitted_entries() {
    let mut net = Network::new(&[1, 2, 3, 4, 5], |c| c.check_quorum = false);
    net.campaign(1);
    net.partition(&[1, 2]);
    net.propose(1, b"stale").unwrap();
    assert_eq!(
        (net.last_index(1), net.last_index(2), net.committed(1)),
        (2, 2, 1)
    );

    net.campaign(3);
    assert_eq!((net.role(3), net.term(3)), (StateRole::Leader, 2));
    assert_eq!(
        net.role(1),
        StateRole::Leader,
        "the old leader does not know yet"
    );
    net.propose(3, b"fresh").unwrap();
    assert_eq!(net.committed(3), 3);
    net.tick_all(5);
    assert_eq!(net.committed(1), 1, "the minority can never commit");

    net.heal();
    net.tick_all(1);
    assert_eq!(net.leader(), Some(3));
    assert_eq!((net.role(1), net.term(1)), (StateRole::Follower, 2));
    for id in 1..=5 {
        assert_eq!(entry_at(&net, id, 2).term, 2, "node {id}");
        assert_eq!(net.committed(id), 3);
        assert_eq!(applied(&net, id), data(&["fresh"]), "node {id}");
    }
}

// ---- 4. pre-vote --------------------------------------------------------------------------

/// With pre-vote, a partitioned follower that times out again and again never raises its
/// term, and when it rejoins the leader and term are unchanged, whether the cluster wrote
/// meanwhile (its log is stale) or not (its log is up to date; the others' leader lease
/// makes them ignore its pre-votes).
#[test]
fn pre_vote_keeps_a_partitioned_node_from_inflating_its_term() {
    for write_meanwhile in [true, false] {
        let mut net = Network::new(&[1, 2, 3], |_| {});
        net.campaign(1);
        net.isolate(3);
        if write_meanwhile {
            net.propose(1, b"x").unwrap();
        }
        net.tick_all(100); // at least five election timeouts
        assert_eq!(net.term(3), 1);
        assert_eq!(net.role(3), StateRole::PreCandidate);

        net.heal();
        net.tick_all(50);
        assert_eq!(net.leader(), Some(1));
        for id in 1..=3 {
            assert_eq!(net.term(id), 1, "node {id}");
            assert_eq!(net.raw(id).raft.leader_id, 1);
        }
        let want = if write_meanwhile {
            data(&["x"])
        } else {
            Vec::new()
        };
        assert_eq!(applied(&net, 3), want);
    }
}

/// Contrast: without pre-vote (and without check-quorum), the partitioned node's term grows
/// with every timeout, and its return forces the cluster into a higher term.
#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    let mut net = Network::new(&[1, 2, 3], plain);
    net.campaign(1);
    net.isolate(3);
    net.propose(1, b"x").unwrap();
    net.tick_all(100);
    let t3 = net.term(3);
    assert!(t3 >= 5, "term should inflate while isolated, got {t3}");

    net.heal();
    net.tick_all(50);
    let leader = net.leader().expect("a leader after the disruption");
    assert!(net.term(leader) > t3, "term {} <= {t3}", net.term(leader));
    assert_ne!(leader, 3, "the stale node cannot win");
    assert_eq!(applied(&net, 3), data(&["x"]));
}

// ---- 5. check-quorum ----------------------------------------------------------------------

/// With check-quorum, a leader that hears from no quorum for a full election timeout steps
/// down (it stays in its term, knowing no leader), while the majority elects a new leader.
#[test]
fn check_quorum_leader_isolated_from_majority_steps_down() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.isolate(1);
    let mut stepped_down_at = None;
    for tick in 1..=30 {
        net.tick_all(1);
        if stepped_down_at.is_none() && net.role(1) != StateRole::Leader {
            stepped_down_at = Some(tick);
        }
    }
    // Check at tick 10 still sees the acks from the election; tick 20 sees none since.
    assert_eq!(stepped_down_at, Some(20));
    assert_eq!((net.role(1), net.term(1)), (StateRole::Follower, 1));
    assert_eq!(net.raw(1).raft.leader_id, NONE);
    let leader = net.leader().expect("the majority elects a leader");
    assert!(leader == 2 || leader == 3);
    assert_eq!(net.term(leader), 2);
}

/// Without check-quorum, an isolated leader never notices and stays leader.
#[test]
fn without_check_quorum_isolated_leader_stays_leader() {
    let mut net = Network::new(&[1, 2, 3], |c| c.check_quorum = false);
    net.campaign(1);
    net.isolate(1);
    for _ in 0..100 {
        net.tick(1);
    }
    assert_eq!((net.role(1), net.term(1)), (StateRole::Leader, 1));
}

// ---- 6. leader transfer -------------------------------------------------------------------

/// Transfer to an up-to-date follower: the leader sends TimeoutNow at once, and the follower
/// wins an election at term + 1 (overriding the others' leader lease).
#[test]
fn transfer_to_up_to_date_follower() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    let before = net.delivered.len();
    net.raw(1).transfer_leader(2);
    net.drain();
    assert_eq!(sent(&net, before, 1, 2, MessageType::TimeoutNow).len(), 1);
    assert!(sent(&net, before, 1, 2, MessageType::Append).is_empty());
    assert_eq!(net.leader(), Some(2));
    assert_eq!(net.term(2), 2);
    assert_eq!(net.role(1), StateRole::Follower);
    net.propose(2, b"after").unwrap();
    assert_eq!(applied(&net, 1), data(&["after"]));
}

/// Transfer to a lagging follower: the leader first brings it up to date, then sends
/// TimeoutNow; the new leader has every entry.
#[test]
fn transfer_to_lagging_follower_catches_it_up_first() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.isolate(3);
    for p in ["a", "b", "c"] {
        net.propose(1, p.as_bytes()).unwrap();
    }
    net.heal();
    assert_eq!((net.last_index(3), net.last_index(1)), (1, 4));
    let before = net.delivered.len();
    net.raw(1).transfer_leader(3);
    net.drain();
    let pos = |t| {
        net.delivered[before..]
            .iter()
            .position(|m| m.from == 1 && m.to == 3 && m.msg_type == t)
    };
    let (first_append, timeout_now) = (pos(MessageType::Append), pos(MessageType::TimeoutNow));
    assert!(first_append.is_some() && timeout_now.is_some());
    assert!(first_append < timeout_now, "catch up before TimeoutNow");
    assert_eq!(net.leader(), Some(3));
    assert_eq!(net.term(3), 2);
    assert_eq!(applied(&net, 3), data(&["a", "b", "c"]));
}

/// While a transfer is in progress the leader refuses proposals; if the transferee cannot be
/// reached, the transfer is abandoned after an election timeout and proposals resume.
#[test]
fn transfer_refuses_proposals_and_aborts_after_election_timeout() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.isolate(3);
    net.propose(1, b"a").unwrap();
    net.raw(1).transfer_leader(3);
    net.drain();
    assert_eq!(net.raw(1).status().lead_transferee, 3);
    assert_eq!(
        net.propose(1, b"refused"),
        Err(Error::ProposalDropped(DropReason::TransferInProgress))
    );
    for _ in 0..9 {
        net.tick(1);
    }
    assert_eq!(net.raw(1).status().lead_transferee, 3);
    net.tick(1);
    assert_eq!(net.raw(1).status().lead_transferee, NONE);
    assert_eq!((net.leader(), net.term(1)), (Some(1), 1));
    net.propose(1, b"b").unwrap();
    assert_eq!(applied(&net, 2), data(&["a", "b"]));
}

/// A learner cannot become leader, so a transfer to it is ignored.
#[test]
fn transfer_to_learner_is_ignored() {
    let mut net = Network::with_learners(&[1, 2, 3], &[4], |_| {});
    net.campaign(1);
    let before = net.delivered.len();
    net.raw(1).transfer_leader(4);
    net.drain();
    assert_eq!(net.raw(1).status().lead_transferee, NONE);
    assert!(sent(&net, before, 1, 4, MessageType::TimeoutNow).is_empty());
    assert_eq!((net.leader(), net.term(4)), (Some(1), 1));
    net.propose(1, b"a").unwrap();
    assert_eq!(applied(&net, 4), data(&["a"]));
}

// ---- 7. joint consensus -------------------------------------------------------------------

/// A ConfChangeV2 with two changes enters a joint configuration (old and new voters both
/// decide) and, with the automatic transition, the leader leaves it on its own once the
/// entering change is applied.
#[test]
fn joint_config_with_auto_leave() {
    let mut net = Network::with_learners(&[1, 2, 3], &[4], |_| {});
    net.campaign(1);
    let cc = ConfChangeV2 {
        transition: ConfChangeTransition::Auto,
        changes: vec![
            single(ConfChangeType::AddNode, 4),
            single(ConfChangeType::RemoveNode, 3),
        ],
        context: Bytes::new(),
    };
    net.raw(1).propose_conf_change_v2(&cc).unwrap();
    // Step round by round to observe the joint configuration on the way.
    let mut seen = vec![net.node(1).conf_state.clone()];
    while net.round(&mut |_| true) {
        let cs = net.node(1).conf_state.clone();
        if seen.last() != Some(&cs) {
            seen.push(cs);
        }
    }
    let joint = conf_state(&[1, 2, 4], &[], &[1, 2, 3], true);
    let left = conf_state(&[1, 2, 4], &[], &[], false);
    assert_eq!(net.node(1).conf_state, left);
    assert_eq!(net.node(2).conf_state, left);
    assert_eq!(net.node(4).conf_state, left);
    // The log shows both steps: the entering change, then the leader's own empty change.
    let enter = entry_at(&net, 1, 2);
    assert_eq!(enter.entry_type, EntryType::ConfChangeV2);
    assert_eq!(ConfChangeV2::decode(&enter.data).unwrap(), cc);
    let leave = entry_at(&net, 1, 3);
    assert_eq!(leave.entry_type, EntryType::ConfChangeV2);
    assert!(ConfChangeV2::decode(&leave.data).unwrap().leaves_joint());
    assert_eq!(net.committed(1), 3);
    assert_eq!(
        seen,
        vec![conf_state(&[1, 2, 3], &[4], &[], false), joint, left]
    );
}

/// An explicit joint transition stays joint until an empty ConfChangeV2 is proposed; while
/// joint, another (non-leave) change is turned into a no-op.
#[test]
fn explicit_joint_config_needs_explicit_leave() {
    let mut net = Network::with_learners(&[1, 2, 3], &[4], |_| {});
    net.campaign(1);
    let cc = ConfChangeV2 {
        transition: ConfChangeTransition::JointExplicit,
        changes: vec![single(ConfChangeType::AddNode, 4)],
        context: Bytes::new(),
    };
    net.raw(1).propose_conf_change_v2(&cc).unwrap();
    net.drain();
    net.tick_all(30);
    let joint = conf_state(&[1, 2, 3, 4], &[], &[1, 2, 3], false);
    for id in 1..=4 {
        assert_eq!(net.node(id).conf_state, joint, "node {id}");
    }
    assert_eq!((net.last_index(1), net.committed(1)), (2, 2));

    // Not a leave: refused (kept as an empty normal entry).
    let other = ConfChangeV2 {
        transition: ConfChangeTransition::Auto,
        changes: vec![single(ConfChangeType::RemoveNode, 2)],
        context: Bytes::new(),
    };
    net.raw(1).propose_conf_change_v2(&other).unwrap();
    net.drain();
    let e = entry_at(&net, 1, 3);
    assert_eq!((e.entry_type, e.data.len()), (EntryType::Normal, 0));
    assert_eq!(net.node(1).conf_state, joint);

    net.raw(1)
        .propose_conf_change_v2(&ConfChangeV2::default())
        .unwrap();
    net.drain();
    let left = conf_state(&[1, 2, 3, 4], &[], &[], false);
    for id in 1..=4 {
        assert_eq!(net.node(id).conf_state, left, "node {id}");
    }
    assert_eq!(net.committed(1), 4);
}

/// Only one configuration change may be pending: a second one proposed before the first is
/// applied keeps its log slot but becomes an empty normal entry.
#[test]
fn second_pending_conf_change_becomes_a_no_op() {
    let mut net = Network::with_learners(&[1, 2, 3], &[4, 5], |_| {});
    net.campaign(1);
    let raw = net.raw(1);
    raw.propose_conf_change(&conf_change(ConfChangeType::AddNode, 4))
        .unwrap();
    raw.propose_conf_change(&conf_change(ConfChangeType::AddNode, 5))
        .unwrap();
    net.drain();
    assert_eq!(entry_at(&net, 1, 2).entry_type, EntryType::ConfChange);
    let noop = entry_at(&net, 1, 3);
    assert_eq!((noop.entry_type, noop.data.len()), (EntryType::Normal, 0));
    assert_eq!(net.committed(1), 3);
    for id in 1..=5 {
        assert_eq!(
            net.node(id).conf_state,
            conf_state(&[1, 2, 3, 4], &[5], &[], false),
            "node {id}"
        );
    }
    // Once applied, a new change is accepted.
    net.raw(1)
        .propose_conf_change(&conf_change(ConfChangeType::AddNode, 5))
        .unwrap();
    net.drain();
    assert_eq!(
        net.node(1).conf_state,
        conf_state(&[1, 2, 3, 4, 5], &[], &[], false)
    );
}

/// While joint, an entry commits only when a majority of the outgoing and a majority of the
/// incoming voters hold it: either majority alone is not enough.
#[test]
fn joint_commit_requires_both_majorities() {
    let mut net = Network::with_learners(&[1, 2, 3], &[4, 5], |_| {});
    net.campaign(1);
    let cc = ConfChangeV2 {
        transition: ConfChangeTransition::JointExplicit,
        changes: vec![
            single(ConfChangeType::AddNode, 4),
            single(ConfChangeType::AddNode, 5),
            single(ConfChangeType::RemoveNode, 2),
            single(ConfChangeType::RemoveNode, 3),
        ],
        context: Bytes::new(),
    };
    net.raw(1).propose_conf_change_v2(&cc).unwrap();
    net.drain();
    assert_eq!(
        net.node(1).conf_state,
        conf_state(&[1, 4, 5], &[], &[1, 2, 3], false)
    );
    assert_eq!(net.committed(1), 2);

    // Only the incoming majority {1, 4, 5} acks.
    net.isolate(2);
    net.isolate(3);
    net.propose(1, b"x").unwrap();
    let progress = net.raw(1).status().progress;
    assert_eq!((progress[&4].matched, progress[&5].matched), (3, 3));
    assert_eq!(net.committed(1), 2, "outgoing {{1, 2, 3}} has no majority");
    net.heal();
    net.tick(1);
    assert_eq!(net.committed(1), 3);

    // Only the outgoing majority {1, 2, 3} acks.
    net.isolate(4);
    net.isolate(5);
    net.propose(1, b"y").unwrap();
    let progress = net.raw(1).status().progress;
    assert_eq!((progress[&2].matched, progress[&3].matched), (4, 4));
    assert_eq!(net.committed(1), 3, "incoming {{1, 4, 5}} has no majority");
    net.heal();
    net.tick(1);
    assert_eq!(net.committed(1), 4);
    for id in 1..=5 {
        assert_eq!(applied(&net, id), data(&["x", "y"]), "node {id}");
    }
}

// ---- 8. learners --------------------------------------------------------------------------

/// A learner receives and applies entries, but is not asked for votes, never campaigns, and
/// its acknowledgements do not count toward commit; promoted with AddNode, it is a voter
/// that can be elected.
#[test]
fn learner_replicates_but_does_not_vote_or_count() {
    let mut net = Network::with_learners(&[1, 2, 3], &[4], |c| c.check_quorum = false);
    let before = net.delivered.len();
    net.campaign(1);
    assert!(net.delivered[before..].iter().all(|m| m.to != 4
        || !matches!(
            m.msg_type,
            MessageType::RequestVote | MessageType::RequestPreVote
        )));
    net.propose(1, b"a").unwrap();
    assert_eq!(applied(&net, 4), data(&["a"]));

    // Alone, the learner never campaigns, however long it waits.
    net.isolate(4);
    net.raw(4).campaign().unwrap();
    for _ in 0..100 {
        net.tick(4);
    }
    assert_eq!((net.role(4), net.term(4)), (StateRole::Follower, 1));
    net.heal();

    // Only the learner acks: nothing commits.
    net.cut.insert((1, 2));
    net.cut.insert((1, 3));
    net.propose(1, b"b").unwrap();
    assert_eq!(net.last_index(4), 3);
    assert_eq!(net.raw(1).status().progress[&4].matched, 3);
    assert_eq!(net.committed(1), 2);
    net.heal();
    net.tick(1);
    assert_eq!(net.committed(1), 3);

    // Promotion.
    net.raw(1)
        .propose_conf_change(&conf_change(ConfChangeType::AddNode, 4))
        .unwrap();
    net.drain();
    assert_eq!(
        net.node(4).conf_state,
        conf_state(&[1, 2, 3, 4], &[], &[], false)
    );
    net.campaign(4);
    assert_eq!((net.leader(), net.term(4)), (Some(4), 2));
    net.propose(4, b"c").unwrap();
    assert_eq!(applied(&net, 1), data(&["a", "b", "c"]));
}

// ---- 9. removing the leader ---------------------------------------------------------------

/// A leader that applies its own removal (single-step RemoveNode) steps down; the remaining
/// voters elect a new leader among themselves and keep committing without it.
#[test]
fn removed_leader_steps_down_and_the_rest_elect_a_new_leader() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.raw(1)
        .propose_conf_change(&conf_change(ConfChangeType::RemoveNode, 1))
        .unwrap();
    net.drain();
    assert_eq!(net.role(1), StateRole::Follower);
    assert_eq!(net.committed(1), 2);
    for id in 1..=3 {
        assert_eq!(
            net.node(id).conf_state,
            conf_state(&[2, 3], &[], &[], false)
        );
    }
    assert_eq!(
        net.propose(1, b"no"),
        Err(Error::ProposalDropped(DropReason::NoLeader))
    );

    net.tick_all(30);
    let leader = net.leader().expect("2 and 3 elect a leader");
    assert!(leader == 2 || leader == 3);
    assert_eq!(net.term(leader), 2);
    net.propose(leader, b"after").unwrap();
    assert_eq!(net.committed(leader), 4);
    assert_eq!(applied(&net, 2), data(&["after"]));
    assert_eq!(applied(&net, 3), data(&["after"]));
    assert!(applied(&net, 1).is_empty());
    assert_eq!(net.role(1), StateRole::Follower);
}

// ---- 10. snapshots ------------------------------------------------------------------------

/// A follower that was down (crashed, or cut off) while the leader compacted its log past
/// the follower's last index is caught up by a snapshot: its applied index jumps to the
/// snapshot's, skipping the compacted entries, and from then on it applies the same entries
/// as everyone else.
#[test]
fn lagging_follower_catches_up_by_snapshot() {
    for crash in [true, false] {
        let mut net = Network::new(&[1, 2, 3], |_| {});
        for id in 1..=3 {
            net.node(id).snapshot_interval = 5;
        }
        net.campaign(1);
        if crash {
            net.crash(3);
        } else {
            net.isolate(3);
        }
        for i in 0..12 {
            net.propose(1, format!("e{i}").as_bytes()).unwrap();
        }
        assert_eq!(net.committed(1), 13);
        let first = net.node(1).storage.first_index().unwrap();
        assert!(first > 2, "leader log compacted to {first}");

        if crash {
            net.restart(3);
        } else {
            net.heal();
        }
        assert_eq!(net.node(3).applied_index, 1);
        let before = net.delivered.len();
        net.tick_all(1);
        let snaps = sent(&net, before, 1, 3, MessageType::Snapshot);
        assert_eq!(snaps.len(), 1, "crash: {crash}");
        let snap_index = snaps[0].snapshot.as_ref().unwrap().metadata.index;
        assert!(snap_index >= first - 1);
        assert_eq!(
            net.node(3).storage.snapshot(0).unwrap().metadata.index,
            snap_index
        );
        assert_eq!(net.node(3).applied_index, 13);
        let a3 = applied(&net, 3);
        assert!(
            !a3.contains(&Bytes::from_static(b"e0")),
            "compacted entries are not replayed"
        );
        assert_eq!(net.nodes[&3].applied_hash, net.nodes[&1].applied_hash);

        net.propose(1, b"after").unwrap();
        assert_eq!(applied(&net, 3).last(), Some(&Bytes::from_static(b"after")));
        for id in 2..=3 {
            assert_eq!(net.node(id).applied_index, 14);
            assert_eq!(
                net.nodes[&id].applied_hash, net.nodes[&1].applied_hash,
                "node {id}"
            );
        }
    }
}

/// A brand-new node added as a learner and then promoted is caught up by snapshot (the log
/// it would need is compacted) and then applies the same entries as everyone else.
#[test]
fn new_node_catches_up_by_snapshot() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    for id in 1..=3 {
        net.node(id).snapshot_interval = 5;
    }
    net.campaign(1);
    for i in 0..7 {
        net.propose(1, format!("e{i}").as_bytes()).unwrap();
    }
    net.add_node(4, |_| {});
    let before = net.delivered.len();
    net.raw(1)
        .propose_conf_change(&conf_change(ConfChangeType::AddLearnerNode, 4))
        .unwrap();
    net.drain();
    assert_eq!(sent(&net, before, 1, 4, MessageType::Snapshot).len(), 1);
    assert_eq!(
        net.node(4).conf_state,
        conf_state(&[1, 2, 3], &[4], &[], false)
    );
    assert_eq!(net.node(4).applied_index, 9);
    assert_eq!(net.nodes[&4].applied_hash, net.nodes[&1].applied_hash);

    net.raw(1)
        .propose_conf_change(&conf_change(ConfChangeType::AddNode, 4))
        .unwrap();
    net.drain();
    net.propose(1, b"after").unwrap();
    assert_eq!(
        net.node(4).conf_state,
        conf_state(&[1, 2, 3, 4], &[], &[], false)
    );
    assert_eq!(applied(&net, 4).last(), Some(&Bytes::from_static(b"after")));
    for id in 2..=4 {
        assert_eq!(net.node(id).applied_index, 11, "node {id}");
        assert_eq!(
            net.nodes[&id].applied_hash, net.nodes[&1].applied_hash,
            "node {id}"
        );
    }
}

// ---- 11. ReadIndex ------------------------------------------------------------------------

/// A read on the leader is answered with the commit index after a quorum acknowledged a
/// heartbeat carrying the read's context; a follower's read is forwarded and answered the
/// same way; with no leader known, a read is refused.
#[test]
fn read_index_on_leader_and_forwarded_from_follower() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    assert_eq!(
        net.raw(2).read_index(Bytes::from_static(b"r0")),
        Err(Error::ProposalDropped(DropReason::NoLeader))
    );
    net.campaign(1);
    net.propose(1, b"x").unwrap();
    assert_eq!(net.committed(1), 2);

    let before = net.delivered.len();
    net.raw(1).read_index(Bytes::from_static(b"r1")).unwrap();
    net.drain();
    assert_eq!(net.node(1).read_states, vec![read_state(2, "r1")]);
    for f in [2, 3] {
        let hb = sent(&net, before, 1, f, MessageType::Heartbeat);
        assert_eq!(hb.len(), 1);
        assert_eq!(hb[0].context, Bytes::from_static(b"r1"));
    }

    let before = net.delivered.len();
    net.raw(2).read_index(Bytes::from_static(b"r2")).unwrap();
    net.drain();
    assert_eq!(sent(&net, before, 2, 1, MessageType::ReadIndex).len(), 1);
    assert_eq!(
        sent(&net, before, 1, 2, MessageType::ReadIndexResponse).len(),
        1
    );
    assert_eq!(net.node(2).read_states, vec![read_state(2, "r2")]);
    assert_eq!(net.node(1).read_states.len(), 1);
}

/// A new leader does not know the commit index until it has committed an entry of its own
/// term: a read waits until then and is answered with that entry's index.
#[test]
fn new_leader_answers_reads_only_after_committing_in_its_term() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.propose(1, b"x").unwrap();
    net.drop_types.insert(MessageType::AppendResponse);
    net.raw(1).transfer_leader(2);
    net.drain();
    assert_eq!((net.leader(), net.term(2)), (Some(2), 2));
    assert_eq!((net.last_index(2), net.committed(2)), (3, 2));

    net.raw(2).read_index(Bytes::from_static(b"r")).unwrap();
    net.drain();
    net.tick(2);
    assert!(
        net.node(2).read_states.is_empty(),
        "no entry of term 2 committed yet"
    );

    net.heal();
    net.tick(2);
    assert_eq!(net.committed(2), 3);
    assert_eq!(net.node(2).read_states, vec![read_state(3, "r")]);
}

/// A leader cut off with a minority cannot confirm its leadership, so its read never
/// completes, not even after it steps down and the partition heals.
#[test]
fn read_on_partitioned_leader_never_completes() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.isolate(1);
    net.raw(1).read_index(Bytes::from_static(b"r")).unwrap();
    net.drain();
    net.tick_all(30);
    assert!(net.node(1).read_states.is_empty());
    assert_eq!(net.role(1), StateRole::Follower);
    let leader = net.leader().expect("majority side elects");
    net.propose(leader, b"w").unwrap();
    net.heal();
    net.tick_all(20);
    assert!(net.node(1).read_states.is_empty());
    assert_eq!(applied(&net, 1), data(&["w"]));
}

// ---- 12. flow control ---------------------------------------------------------------------

/// With max_uncommitted_entries_size, a leader whose followers do not acknowledge refuses
/// proposals once the uncommitted payload would exceed the limit, and accepts again once
/// the backlog commits.
#[test]
fn uncommitted_size_limit_refuses_then_accepts_after_commit() {
    let mut net = Network::new(&[1, 2, 3], |c| c.max_uncommitted_entries_size = 10);
    net.campaign(1);
    net.cut.insert((1, 2));
    net.cut.insert((1, 3));
    net.propose(1, b"123456").unwrap();
    assert_eq!(
        net.propose(1, b"abcdef"),
        Err(Error::ProposalDropped(DropReason::UncommittedSizeExceeded))
    );
    assert_eq!((net.last_index(1), net.committed(1)), (2, 1));
    net.heal();
    net.tick(1);
    assert_eq!(net.committed(1), 2);
    net.propose(1, b"abcdef").unwrap();
    assert_eq!(net.committed(1), 3);
    assert_eq!(applied(&net, 2), data(&["123456", "abcdef"]));
}

/// With max_inflight_msgs = 2, the leader stops sending entries to a follower whose
/// acknowledgements are lost after two appends, while another follower gets them all; once
/// the follower answers again it is caught up.
#[test]
fn inflight_window_limits_appends_to_silent_follower() {
    let mut net = Network::new(&[1, 2, 3], |c| c.max_inflight_msgs = 2);
    net.campaign(1);
    net.cut.insert((3, 1));
    let before = net.delivered.len();
    for i in 0..5 {
        net.propose(1, format!("p{i}").as_bytes()).unwrap();
    }
    let with_entries = |to| {
        sent(&net, before, 1, to, MessageType::Append)
            .iter()
            .filter(|m| !m.entries.is_empty())
            .count()
    };
    assert_eq!(with_entries(2), 5);
    assert_eq!(with_entries(3), 2);
    assert_eq!(
        (net.last_index(3), net.last_index(1), net.committed(1)),
        (3, 6, 6)
    );
    assert!(net.raw(1).status().progress[&3].inflights.full());

    net.heal();
    net.tick(1);
    assert_eq!(net.last_index(3), 6);
    assert_eq!(net.committed(3), 6);
}

/// max_size_per_msg bounds the payload of each append: a follower catching up on six 8-byte
/// entries with a 20-byte limit gets three appends of two entries.
#[test]
fn max_size_per_msg_splits_catch_up_batches() {
    let mut net = Network::new(&[1, 2, 3], |c| c.max_size_per_msg = 20);
    net.campaign(1);
    net.isolate(2);
    for i in 0..6 {
        net.propose(1, format!("entry-{i}").as_bytes()).unwrap();
    }
    assert_eq!((net.committed(1), net.last_index(2)), (7, 1));
    net.heal();
    let before = net.delivered.len();
    net.tick(1);
    let batches: Vec<Vec<u64>> = sent(&net, before, 1, 2, MessageType::Append)
        .iter()
        .filter(|m| !m.entries.is_empty())
        .map(|m| m.entries.iter().map(|e| e.index).collect())
        .collect();
    assert_eq!(batches, vec![vec![2, 3], vec![4, 5], vec![6, 7]]);
    assert_eq!(net.committed(2), 7);
}

// ---- 13. proposal forwarding --------------------------------------------------------------

/// A follower forwards proposals to the leader, which commits them.
#[test]
fn follower_forwards_proposals_to_leader() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    let before = net.delivered.len();
    net.propose(2, b"fwd").unwrap();
    assert_eq!(sent(&net, before, 2, 1, MessageType::Propose).len(), 1);
    assert_eq!(net.committed(1), 2);
    for id in 1..=3 {
        assert_eq!(applied(&net, id), data(&["fwd"]), "node {id}");
    }
}

/// With forwarding disabled a follower refuses proposals; with no leader known, so does
/// every node.
#[test]
fn proposals_refused_without_forwarding_or_leader() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    assert_eq!(
        net.propose(1, b"x"),
        Err(Error::ProposalDropped(DropReason::NoLeader))
    );
    let mut net = Network::new(&[1, 2, 3], |c| c.disable_proposal_forwarding = true);
    net.campaign(1);
    let before = net.delivered.len();
    assert_eq!(
        net.propose(2, b"x"),
        Err(Error::ProposalDropped(DropReason::ForwardingDisabled))
    );
    assert!(sent(&net, before, 2, 1, MessageType::Propose).is_empty());
    assert_eq!(net.last_index(1), 1);
    net.propose(1, b"y").unwrap();
    assert_eq!(applied(&net, 2), data(&["y"]));
}

// ---- 14. crash and restart ----------------------------------------------------------------

/// A node restarted from its disk keeps its term and vote, so it cannot vote twice in a
/// term: having voted for 1 before the crash, it refuses 2 in the same term.
#[test]
fn restarted_node_keeps_its_vote() {
    let mut net = Network::new(&[1, 2, 3], plain);
    // 1's request reaches only 3, and 3's grant is lost: 1 stays a candidate.
    net.cut.insert((1, 2));
    net.cut.insert((3, 1));
    net.campaign(1);
    assert_eq!((net.role(1), net.term(1)), (StateRole::Candidate, 1));
    assert_eq!(
        net.node(3).storage.hard_state(),
        HardState {
            term: 1,
            vote: 1,
            commit: 0
        }
    );
    net.crash(3);
    net.restart(3);
    assert_eq!((net.term(3), net.raw(3).raft.vote), (1, 1));
    net.heal();

    let before = net.delivered.len();
    net.campaign(2);
    let reply = sent(&net, before, 3, 2, MessageType::RequestVoteResponse);
    assert_eq!(reply.len(), 1);
    assert!(reply[0].reject);
    assert_eq!(reply[0].term, 1);
    assert_eq!(net.leader(), None);
    assert_eq!((net.role(2), net.term(2)), (StateRole::Follower, 1));
}

/// A node restarted from its disk keeps its log and replays its committed entries.
#[test]
fn restarted_node_keeps_its_log() {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    net.propose(1, b"a").unwrap();
    net.propose(1, b"b").unwrap();
    net.crash(3);
    net.restart(3);
    assert_eq!(
        (net.term(3), net.last_index(3), net.committed(3)),
        (1, 3, 3)
    );
    assert_eq!(applied(&net, 3), data(&["a", "b"]));
    assert_eq!(net.nodes[&3].applied_hash, net.nodes[&1].applied_hash);
    net.propose(1, b"c").unwrap();
    assert_eq!(applied(&net, 3), data(&["a", "b", "c"]));
}

/// Goal: with `max_committed_size_per_ready` small, committed entries arrive over several
/// `Ready`s and every one is applied, in order, on every node. (Regression: the harness
/// once stopped draining while a node still had committed entries left in a `Ready`.)
#[test]
fn committed_entries_spread_over_size_limited_readies_are_all_applied() {
    let mut net = Network::new(&[1, 2, 3], |c| {
        plain(c);
        c.max_committed_size_per_ready = 1;
    });
    net.campaign(1);
    for i in 0..5 {
        net.raw(1).propose(Bytes::from(format!("v{i}"))).unwrap();
    }
    net.drain();
    let want = data(&["v0", "v1", "v2", "v3", "v4"]);
    for id in [1, 2, 3] {
        assert_eq!(net.committed(id), 6, "node {id}");
        assert_eq!(net.node(id).applied_index, 6, "node {id}");
        assert_eq!(applied(&net, id), want, "node {id}");
    }
}
