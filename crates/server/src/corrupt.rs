//! Corruption checks: the periodic one ([`periodic`], `--experimental-corrupt-check-time`,
//! on the leader while the cluster runs, raising CORRUPT), and the initial one below.
//!
//! The initial corruption check (`--experimental-initial-corrupt-check`, etcd 3.6's
//! `--feature-gates=InitialCorruptCheck=true`): before a restarted member serves, it
//! hashes its key history (HashKV at its current revision) and asks every peer for the
//! hash of the same revisions (`Peer.HashKv`). Members that applied the same log hash
//! the same history to the same value, so a peer that disagrees means one side's data
//! went wrong on disk; the member refuses to start rather than serve it.
//!
//! # What counts as a mismatch
//! Only a different hash from a peer that compacted at the same revision as this
//! member, as etcd decides: compaction changes what the hash covers, so hashes of
//! members with different compaction revisions are not comparable (a warning, not a
//! mismatch). A peer that has not reached this member's revision yet, or compacted past
//! it, cannot hash it and is skipped with a warning, as is a peer of another cluster.
//!
//! # Peers that do not answer
//! The peers are the members this member knows (its applied membership), each asked on
//! its peer URLs in turn with etcd's request timeout per URL, all peers at once. A peer
//! no URL of which answers in time is skipped with a warning and the check goes on with
//! the others, as etcd's does: a member must be able to restart while some peers are
//! down, and when none answers the check passes having compared nothing (the warnings
//! say so). A single-member cluster has no peers and passes at once.
//!
//! # When it runs
//! `Server::start` runs it once the raft loop runs and before any listener serves, as
//! etcd checks before serving peers or clients. So members restarted at the same moment
//! cannot answer each other's check: each skips the peers not serving yet (refused, or
//! no answer within the timeout), compares with those that serve, and starts. A member whose data directory was empty at start is not checked (etcd skips
//! a member that was not initialized): it has no history of its own to compare.

use std::sync::Arc;
use std::time::Duration;

use retcd_api::errors::EtcdError;
use retcd_api::etcdserverpb::{
    AlarmRequest, AlarmType, InternalRaftRequest, alarm_request::AlarmAction,
};
use retcd_api::peerpb::peer_client::PeerClient;
use retcd_api::peerpb::{HashKvRequest, HashKvResponse};
use retcd_mvcc::KvHash;
use tonic::Code;

use crate::errors::RequestError;
use crate::ids::{ClusterId, MemberId};
use crate::membership::Member;
use crate::node::{Node, NodeHandle, NodeStatus, Store};
use crate::peer::dial::Dialer;
use crate::peer::transport::add_headers;

/// Why a member refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum CorruptError {
    /// This member could not hash its own data.
    #[error("{member} failed to fetch hash ({source})")]
    LocalHash {
        member: MemberId,
        source: RequestError,
    },
    /// A peer at the same compaction revision hashed the same revisions differently.
    /// The message starts with etcd's, then says which peers and hashes.
    #[error("{member} found data inconsistency with peers: {details}")]
    Inconsistent { member: MemberId, details: String },
}

/// Runs the check when `member_initialized` (the data directory held a WAL at start);
/// otherwise logs that a new member is not checked. On a mismatch the raft loop is
/// stopped (the WAL and backend made durable) before the error returns, so the caller
/// only has to give up.
pub async fn initial_check(
    node: &Node,
    dialer: &Dialer,
    member_initialized: bool,
) -> Result<(), CorruptError> {
    let local = node.status.member_id();
    if !member_initialized {
        tracing::info!(local_member_id = %local, "skipping initial corruption check: a new member has no data to check");
        return Ok(());
    }
    let result = check(node, dialer).await;
    if let Err(e) = &result {
        tracing::error!(local_member_id = %local, error = %e, "initial corruption check failed; the member stops");
        let handle = node.handle.clone();
        match tokio::task::spawn_blocking(move || handle.stop_and_join()).await {
            Ok(Ok(())) => {}
            Ok(Err(stop)) => tracing::error!(error = %stop, "raft loop failed while stopping"),
            Err(join) => tracing::error!(error = %join, "raft loop join panicked"),
        }
    }
    result
}

async fn check(node: &Node, dialer: &Dialer) -> Result<(), CorruptError> {
    let member = node.status.member_id();
    let cluster = node.status.cluster_id();
    let timeout = node.handle.request_timeout();
    tracing::info!(local_member_id = %member, timeout = ?timeout, "starting initial corruption check");
    let local = node
        .store
        .hash_kv(0)
        .await
        .map_err(|source| CorruptError::LocalHash { member, source })?;
    let peers: Vec<Member> = node
        .status
        .membership()
        .members
        .into_values()
        .filter(|m| m.id != member && !m.peer_urls.is_empty())
        .collect();
    if peers.is_empty() {
        tracing::info!(
            local_member_id = %member,
            "initial corruption check passed: no peers to compare with (a single-member cluster)"
        );
        return Ok(());
    }
    let asked = peers.iter().map(|peer| {
        let ask = Ask {
            dialer,
            local: member,
            cluster,
            revision: local.hash_revision,
            timeout,
        };
        async move { (peer, ask.peer(peer).await) }
    });
    let answers = futures_util::future::join_all(asked).await;

    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (peer, answer) in &answers {
        let verdict = judge(&local, answer);
        log_verdict(member, &local, peer, answer, verdict);
        match verdict {
            Verdict::Agree => compared += 1,
            Verdict::Mismatch => {
                compared += 1;
                if let PeerAnswer::Hash(r) = answer {
                    mismatches.push(format!(
                        "member {:x} hashes revision {} to {}, this member to {} (compact revision {})",
                        r.member_id, local.hash_revision, r.hash, local.hash, r.compact_revision
                    ));
                }
            }
            Verdict::Skip => {}
        }
    }
    if !mismatches.is_empty() {
        return Err(CorruptError::Inconsistent {
            member,
            details: mismatches.join("; "),
        });
    }
    tracing::info!(
        local_member_id = %member,
        revision = local.hash_revision,
        peers_compared = compared,
        peers = answers.len(),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// The periodic check (`--experimental-corrupt-check-time`), etcd 3.4.23's
/// `monitorKVHash`: every `interval` the leader hashes its key history, asks every peer
/// for the hash of the same revisions, hashes again after a linearizable read, and
/// raises CORRUPT (member id 0, as 3.4.23 does) through Raft on the first mismatch of a
/// run. Raised, the alarm closes the key space on every member (`apply/alarm.rs`) until
/// it is disarmed. Followers only wait.
pub async fn periodic(
    handle: Arc<NodeHandle>,
    status: Arc<NodeStatus>,
    store: Store,
    dialer: Dialer,
    interval: Duration,
) {
    tracing::info!(interval = ?interval, "periodic corruption check on");
    loop {
        tokio::time::sleep(interval).await;
        if !status.is_leader() {
            continue;
        }
        let Some(why) = periodic_run(&handle, &status, &store, &dialer).await else {
            continue;
        };
        tracing::error!(local_member_id = %status.member_id(), reason = %why, "found data inconsistency; raising the CORRUPT alarm");
        let raise = InternalRaftRequest {
            alarm: Some(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: 0,
                alarm: AlarmType::Corrupt as i32,
            }),
            ..Default::default()
        };
        if let Err(e) = handle.propose(raise).await {
            tracing::error!(error = %e, "could not raise the CORRUPT alarm; trying again next check");
        }
    }
}

/// One run of the periodic check: why the data is inconsistent, or nothing (errors
/// fetching hashes are logged and skipped, as etcd does).
async fn periodic_run(
    handle: &NodeHandle,
    status: &NodeStatus,
    store: &Store,
    dialer: &Dialer,
) -> Option<String> {
    let member = status.member_id();
    let before = match store.hash_kv(0).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "periodic corruption check: cannot hash this member");
            return None;
        }
    };
    let peers: Vec<Member> = status
        .membership()
        .members
        .into_values()
        .filter(|m| m.id != member && !m.peer_urls.is_empty())
        .collect();
    let ask = Ask {
        dialer,
        local: member,
        cluster: status.cluster_id(),
        revision: before.hash_revision,
        timeout: handle.request_timeout(),
    };
    let answers =
        futures_util::future::join_all(peers.iter().map(|p| async move { (p, ask.peer(p).await) }))
            .await;
    if let Err(e) = handle.read_index().await {
        tracing::warn!(error = %e, "periodic corruption check: no linearizable read");
        return None;
    }
    let after = match store.hash_kv(0).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "periodic corruption check: cannot hash this member");
            return None;
        }
    };
    let mut replies = Vec::new();
    for (peer, answer) in &answers {
        match answer {
            PeerAnswer::Hash(r) => replies.push(*r),
            other => log_verdict(member, &before, peer, other, Verdict::Skip),
        }
    }
    let verdict = periodic_verdict(&before, &after, &replies);
    if verdict.is_none() {
        tracing::info!(
            local_member_id = %member,
            revision = before.hash_revision,
            peers_compared = replies.len(),
            peers = answers.len(),
            "{PERIODIC_PASSED}"
        );
    }
    verdict
}

/// What the leader logs after a periodic check found nothing.
pub const PERIODIC_PASSED: &str = "periodic corruption check passed; no corruption";

/// etcd 3.4.23's `checkHashKV` rules, in its order: the leader's own hash changed with
/// its revision and compaction unchanged; a peer ahead of the leader's revision or
/// compaction; a peer at the leader's compaction with another hash of the same revision.
fn periodic_verdict(before: &KvHash, after: &KvHash, peers: &[HashKvResponse]) -> Option<String> {
    if after.hash != before.hash
        && after.revision == before.revision
        && after.compact_revision == before.compact_revision
    {
        return Some(format!(
            "this member's hash of revision {} changed from {} to {}",
            before.hash_revision, before.hash, after.hash
        ));
    }
    for p in peers {
        if p.revision > after.revision {
            return Some(format!(
                "member {:x} is at revision {}, ahead of the leader's {}",
                p.member_id, p.revision, after.revision
            ));
        }
        if p.compact_revision > after.compact_revision {
            return Some(format!(
                "member {:x} compacted at {}, ahead of the leader's {}",
                p.member_id, p.compact_revision, after.compact_revision
            ));
        }
        if p.compact_revision == before.compact_revision && p.hash != before.hash {
            return Some(format!(
                "member {:x} hashes revision {} to {}, the leader to {}",
                p.member_id, before.hash_revision, p.hash, before.hash
            ));
        }
    }
    None
}

/// What one peer answered, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerAnswer {
    Hash(HashKvResponse),
    /// The peer has not reached the revision yet (etcd's future revision error).
    FutureRevision,
    /// The peer compacted past the revision: this member is behind it.
    Compacted,
    /// The peer belongs to another cluster.
    ClusterIdMismatch(String),
    /// No URL of the peer answered in time; the last failure.
    Unreachable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Same hash of the same revisions.
    Agree,
    /// Same revisions, same compaction, different hash.
    Mismatch,
    /// Nothing to compare (the warning says why).
    Skip,
}

/// etcd's rule: only a different hash at the same compaction revision is a mismatch.
fn judge(local: &KvHash, answer: &PeerAnswer) -> Verdict {
    match answer {
        // A peer that hashed other revisions (it never should: it was asked for ours)
        // cannot be compared.
        PeerAnswer::Hash(r) if r.hash_revision != local.hash_revision => Verdict::Skip,
        PeerAnswer::Hash(r) if r.hash == local.hash => Verdict::Agree,
        PeerAnswer::Hash(r) if r.compact_revision == local.compact_revision => Verdict::Mismatch,
        _ => Verdict::Skip,
    }
}

fn log_verdict(
    member: MemberId,
    local: &KvHash,
    peer: &Member,
    answer: &PeerAnswer,
    verdict: Verdict,
) {
    let endpoints = peer.peer_urls.join(",");
    let (message, error) = match answer {
        PeerAnswer::Hash(r) => {
            let message = match verdict {
                Verdict::Agree => {
                    tracing::debug!(local_member_id = %member, remote_peer_id = %MemberId(r.member_id), revision = local.hash_revision, "same hash as remote peer");
                    return;
                }
                Verdict::Mismatch => "found different hash values from remote peer",
                Verdict::Skip if r.hash_revision != local.hash_revision => {
                    "remote peer hashed other revisions than asked"
                }
                Verdict::Skip => "found different compact revision values from remote peer",
            };
            tracing::warn!(
                local_member_id = %member,
                local_member_revision = local.hash_revision,
                local_member_compact_revision = local.compact_revision,
                local_member_hash = local.hash,
                remote_peer_id = %MemberId(r.member_id),
                remote_peer_endpoints = %endpoints,
                remote_peer_revision = r.revision,
                remote_peer_hash_revision = r.hash_revision,
                remote_peer_compact_revision = r.compact_revision,
                remote_peer_hash = r.hash,
                "{message}"
            );
            return;
        }
        PeerAnswer::FutureRevision => ("cannot fetch hash from slow remote peer", None),
        PeerAnswer::Compacted => (
            "cannot fetch hash from remote peer; local member is behind",
            None,
        ),
        PeerAnswer::ClusterIdMismatch(e) => ("cluster ID mismatch", Some(e)),
        PeerAnswer::Unreachable(e) => ("cannot fetch hash from remote peer; skipping it", Some(e)),
    };
    tracing::warn!(
        local_member_id = %member,
        local_member_revision = local.hash_revision,
        local_member_compact_revision = local.compact_revision,
        local_member_hash = local.hash,
        remote_peer_id = %peer.id,
        remote_peer_endpoints = %endpoints,
        error = error.map(String::as_str),
        "{message}"
    );
}

/// One HashKv request, as every peer is asked it.
#[derive(Clone, Copy)]
struct Ask<'a> {
    dialer: &'a Dialer,
    local: MemberId,
    cluster: ClusterId,
    revision: i64,
    timeout: Duration,
}

impl Ask<'_> {
    /// Tries the peer's URLs in turn, each within the timeout, until one answers. An
    /// answer that the peer cannot hash the revision is final: another URL reaches the
    /// same member.
    async fn peer(self, peer: &Member) -> PeerAnswer {
        let mut last = String::from("no peer URLs");
        for url in &peer.peer_urls {
            let failure = match tokio::time::timeout(self.timeout, self.url(url)).await {
                Ok(Ok(r)) => return PeerAnswer::Hash(r),
                Ok(Err(status)) => match classify(&status) {
                    PeerAnswer::Unreachable(e) => e,
                    definite => return definite,
                },
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            tracing::warn!(
                local_member_id = %self.local,
                requested_revision = self.revision,
                remote_peer_endpoint = %url,
                error = %failure,
                "failed hash kv request"
            );
            last = format!("{url}: {failure}");
        }
        PeerAnswer::Unreachable(last)
    }

    async fn url(&self, url: &str) -> Result<HashKvResponse, tonic::Status> {
        let channel = self
            .dialer
            .connect(std::slice::from_ref(&url.to_string()))
            .await
            .map_err(tonic::Status::unavailable)?;
        let mut request = tonic::Request::new(HashKvRequest {
            revision: self.revision,
        });
        add_headers(&mut request, self.local, self.cluster);
        Ok(PeerClient::new(channel)
            .hash_kv(request)
            .await?
            .into_inner())
    }
}

/// A failed `Peer.HashKv` call: etcd's two revision errors and another cluster are
/// answers about the data; anything else is a peer that did not answer.
fn classify(status: &tonic::Status) -> PeerAnswer {
    let is = |e: EtcdError| status.code() == e.code() && status.message() == e.message();
    if is(EtcdError::FutureRev) {
        PeerAnswer::FutureRevision
    } else if is(EtcdError::Compacted) {
        PeerAnswer::Compacted
    } else if status.code() == Code::FailedPrecondition
        && status.message().starts_with("cluster ID mismatch")
    {
        PeerAnswer::ClusterIdMismatch(status.message().to_string())
    } else {
        PeerAnswer::Unreachable(format!("{:?}: {}", status.code(), status.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retcd_mvcc::MvccError;

    fn local() -> KvHash {
        KvHash {
            hash: 7,
            revision: 10,
            compact_revision: 4,
            hash_revision: 10,
        }
    }

    fn answer(hash: u32, compact_revision: i64) -> PeerAnswer {
        PeerAnswer::Hash(HashKvResponse {
            member_id: 2,
            revision: 12,
            hash,
            compact_revision,
            hash_revision: 10,
        })
    }

    // Goal: etcd's rule. Only a different hash at the same compaction revision is a
    // mismatch; a different compaction, or a peer that could not hash the revision,
    // compares nothing.
    #[test]
    fn only_a_different_hash_at_the_same_compaction_is_a_mismatch() {
        let l = local();
        assert_eq!(judge(&l, &answer(7, 4)), Verdict::Agree);
        assert_eq!(judge(&l, &answer(8, 4)), Verdict::Mismatch);
        assert_eq!(judge(&l, &answer(8, 6)), Verdict::Skip);
        // The same hash is agreement whatever the compaction.
        assert_eq!(judge(&l, &answer(7, 6)), Verdict::Agree);
        let mut other_revision = answer(8, 4);
        if let PeerAnswer::Hash(r) = &mut other_revision {
            r.hash_revision = 9;
        }
        assert_eq!(judge(&l, &other_revision), Verdict::Skip);
        for skipped in [
            PeerAnswer::FutureRevision,
            PeerAnswer::Compacted,
            PeerAnswer::ClusterIdMismatch("x".into()),
            PeerAnswer::Unreachable("x".into()),
        ] {
            assert_eq!(judge(&l, &skipped), Verdict::Skip, "{skipped:?}");
        }
    }

    // Goal: the errors a peer's HashKv sends for a compacted or future revision (built
    // the way the peer service builds them) are recognized; another cluster too; and
    // anything else is a peer that did not answer.
    #[test]
    fn periodic_rules_are_etcds() {
        let before = local();
        let peer = |hash: u32, revision: i64, compact_revision: i64| HashKvResponse {
            member_id: 9,
            hash,
            revision,
            hash_revision: before.hash_revision,
            compact_revision,
        };
        assert_eq!(periodic_verdict(&before, &before, &[peer(7, 10, 4)]), None);
        // Another compaction: not comparable.
        assert_eq!(periodic_verdict(&before, &before, &[peer(8, 10, 3)]), None);
        assert!(
            periodic_verdict(&before, &before, &[peer(8, 10, 4)])
                .unwrap()
                .contains("hashes revision")
        );
        assert!(
            periodic_verdict(&before, &before, &[peer(7, 11, 4)])
                .unwrap()
                .contains("ahead of the leader's 10")
        );
        assert!(
            periodic_verdict(&before, &before, &[peer(7, 10, 5)])
                .unwrap()
                .contains("compacted at 5")
        );
        let changed = KvHash { hash: 8, ..before };
        assert!(
            periodic_verdict(&before, &changed, &[])
                .unwrap()
                .contains("changed from 7 to 8")
        );
        // Moved on (a write between the two hashes): not a mismatch.
        let moved = KvHash {
            hash: 8,
            revision: 11,
            ..before
        };
        assert_eq!(periodic_verdict(&before, &moved, &[]), None);
    }

    #[test]
    fn peer_errors_are_told_apart() {
        let status = |e: MvccError| tonic::Status::from(RequestError::from(e));
        assert_eq!(
            classify(&status(MvccError::FutureRevision {
                requested: 11,
                current_revision: 10
            })),
            PeerAnswer::FutureRevision
        );
        assert_eq!(
            classify(&status(MvccError::Compacted {
                requested: 3,
                compact_revision: 5
            })),
            PeerAnswer::Compacted
        );
        assert!(matches!(
            classify(&tonic::Status::failed_precondition("cluster ID mismatch")),
            PeerAnswer::ClusterIdMismatch(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::failed_precondition("something else")),
            PeerAnswer::Unreachable(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::unavailable("connection refused")),
            PeerAnswer::Unreachable(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::permission_denied("removed")),
            PeerAnswer::Unreachable(_)
        ));
    }

    // Goal: the refusal starts with etcd's message, so an operator's search for it
    // finds retcd's too.
    #[test]
    fn the_refusal_reads_as_etcds() {
        let e = CorruptError::Inconsistent {
            member: MemberId(0x8e9e05c52164694d),
            details: "member 2 hashes revision 10 to 8, this member to 7".into(),
        };
        assert!(
            e.to_string()
                .starts_with("8e9e05c52164694d found data inconsistency with peers"),
            "{e}"
        );
    }
}
