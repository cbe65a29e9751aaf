//! What the raft loop needs of the network: send messages and snapshots to peers, know
//! whom to send to, and hear back ([`NetworkEvent`]). The peer transport
//! (`crate::peer::transport`) is the real one, wired in by `crate::server`; a test
//! harness drives the loop with its own and delivers messages itself.

use std::path::PathBuf;

use retcd_raft::Message;

use crate::ids::MemberId;
use crate::membership::Membership;

/// What the network tells the raft loop.
#[derive(Debug)]
pub enum NetworkEvent {
    /// Messages to this peer were dropped.
    Unreachable(MemberId),
    /// A snapshot to this peer was delivered (`true`) or not.
    SnapshotDone(MemberId, bool),
    /// A peer refused us as a member it knows was removed: this member must stop
    /// (the removal may have been committed without this member ever seeing it).
    Removed(MemberId),
}

/// The loop's way to its peers.
pub trait Network: Send {
    /// The peers to keep connections to, with their URLs.
    fn set_peers(&mut self, peers: &[(MemberId, Vec<String>)]);
    /// Queues `messages` for their recipients; returns the peers that cannot take them
    /// now (the loop reports them unreachable to Raft).
    fn send(&mut self, messages: Vec<Message>) -> Vec<MemberId>;
    /// Sends a snapshot message with the backend image at `image` (the network deletes
    /// the file once sent). The outcome comes back as a transport event.
    fn send_snapshot(&mut self, message: Message, image: PathBuf);
    /// Stops every connection.
    fn shutdown(&mut self);
}

/// Everyone but `local`, with their peer URLs: the members, plus the peers a joining
/// member learned at start that are neither members (yet) nor removed.
pub fn peer_list(
    m: &Membership,
    local: MemberId,
    join_peers: &[(MemberId, Vec<String>)],
) -> Vec<(MemberId, Vec<String>)> {
    let mut peers: Vec<(MemberId, Vec<String>)> = m
        .members
        .values()
        .filter(|p| p.id != local)
        .map(|p| (p.id, p.peer_urls.clone()))
        .collect();
    for (id, urls) in join_peers {
        if *id != local && !m.members.contains_key(id) && !m.removed.contains(id) {
            peers.push((*id, urls.clone()));
        }
    }
    peers
}
