//! Sending Raft messages and snapshots to peers.
//!
//! One task per peer owns a long-lived `Peer.Stream` call over HTTP/2 (tonic channel)
//! and forwards the messages the raft loop queues for that peer, several per batch. The
//! raft loop never waits on the network: [`Transport::send`] only puts messages on the
//! peer's bounded queue, and a full queue (or no connection) makes the message count as
//! dropped, which the loop reports to Raft as the peer being unreachable. Raft retries
//! by itself, so a lost message costs time, never safety.
//!
//! Connections are re-established with exponential backoff (50 ms to 1 s). HTTP/2
//! keep-alive pings detect a peer that stopped answering (a paused process, a
//! blackholed link) within about two seconds, after which the call fails and the task
//! reconnects.
//!
//! A peer counts as active ([`PeerActivity`]) from its first answer to a probe on a
//! connection until that connection fails.
//!
//! Snapshots go separately ([`Transport::send_snapshot`]): a task streams the image file
//! the loop wrote, in chunks, on its own call, and tells the loop how it went.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc::Sender as StdSender;
use std::time::Duration;

use retcd_api::peerpb::{self, peer_client::PeerClient};
use retcd_raft::Message;
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::activity::PeerActivity;
use super::codec::encode_message;
use super::dial::Dialer;
use crate::ids::{ClusterId, MemberId};
use crate::metrics::Metrics;
use crate::node::{Network, NetworkEvent};

/// Messages queued for one peer at most; beyond, messages are dropped as unreachable.
const PEER_QUEUE: usize = 4096;
/// Most messages in one batch on the wire.
const MAX_BATCH: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often each connection is probed for its round trip time (etcd: every 5 s).
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes of snapshot image per chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Metadata keys every peer call carries.
pub const CLUSTER_ID_HEADER: &str = "retcd-cluster-id";
pub const FROM_HEADER: &str = "retcd-from";

struct PeerHandle {
    queue: mpsc::Sender<Message>,
    urls: watch::Sender<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

/// The sending half of the peer protocol. Methods are called from the raft loop thread.
pub struct Transport {
    runtime: tokio::runtime::Handle,
    local: MemberId,
    cluster: ClusterId,
    peers: Mutex<HashMap<MemberId, PeerHandle>>,
    events: StdSender<NetworkEvent>,
    dialer: Dialer,
    metrics: std::sync::Arc<Metrics>,
    activity: std::sync::Arc<PeerActivity>,
}

impl Transport {
    pub fn new(
        runtime: tokio::runtime::Handle,
        local: MemberId,
        cluster: ClusterId,
        events: StdSender<NetworkEvent>,
        dialer: Dialer,
        metrics: std::sync::Arc<Metrics>,
        activity: std::sync::Arc<PeerActivity>,
    ) -> Transport {
        Transport {
            runtime,
            local,
            cluster,
            peers: Mutex::new(HashMap::new()),
            events,
            dialer,
            metrics,
            activity,
        }
    }

    /// Makes the set of peers (everyone but this member) and their URLs what `peers`
    /// says: starts tasks for new peers, stops tasks of removed ones.
    pub fn set_peers(&self, peers: &[(MemberId, Vec<String>)]) {
        let mut map = self.peers.lock().expect("transport lock");
        map.retain(|id, h| {
            let keep = peers.iter().any(|(p, _)| p == id);
            if !keep {
                h.task.abort();
                self.activity.deactivate(*id);
            }
            keep
        });
        for (id, urls) in peers {
            if *id == self.local {
                continue;
            }
            if let Some(h) = map.get(id) {
                h.urls.send_if_modified(|u| {
                    let changed = u != urls;
                    if changed {
                        u.clone_from(urls);
                    }
                    changed
                });
                continue;
            }
            let (queue, rx) = mpsc::channel(PEER_QUEUE);
            let (urls_tx, urls_rx) = watch::channel(urls.clone());
            let task = self.runtime.spawn(peer_task(PeerTask {
                peer: *id,
                local: self.local,
                cluster: self.cluster,
                urls: urls_rx,
                queue: rx,
                events: self.events.clone(),
                dialer: self.dialer.clone(),
                metrics: self.metrics.clone(),
                activity: self.activity.clone(),
            }));
            map.insert(
                *id,
                PeerHandle {
                    queue,
                    urls: urls_tx,
                    task,
                },
            );
        }
    }

    /// Queues messages for their peers. Returns the peers some message could not be
    /// queued for (unknown peer, or its queue is full).
    pub fn send(&self, messages: Vec<Message>) -> Vec<MemberId> {
        let map = self.peers.lock().expect("transport lock");
        let mut unreachable = Vec::new();
        for m in messages {
            let to = MemberId(m.to);
            let ok = map.get(&to).is_some_and(|h| h.queue.try_send(m).is_ok());
            if !ok && !unreachable.contains(&to) {
                unreachable.push(to);
            }
        }
        unreachable
    }

    /// Streams a snapshot: `message` (a MsgSnap) first, then the image at `image`, which
    /// is deleted afterwards. The outcome arrives as [`NetworkEvent::SnapshotDone`].
    pub fn send_snapshot(&self, message: Message, image: PathBuf) {
        let to = MemberId(message.to);
        let urls = self
            .peers
            .lock()
            .expect("transport lock")
            .get(&to)
            .map(|h| h.urls.borrow().clone())
            .unwrap_or_default();
        let events = self.events.clone();
        let (local, cluster) = (self.local, self.cluster);
        let dialer = self.dialer.clone();
        self.runtime.spawn(async move {
            let result = send_snapshot(&dialer, local, cluster, &urls, &message, &image).await;
            let _ = tokio::fs::remove_file(&image).await;
            match &result {
                Ok(bytes) => tracing::info!(to = %to, bytes, index = message.snapshot.as_ref().map_or(0, |s| s.metadata.index), "sent snapshot"),
                Err(e) => tracing::warn!(to = %to, error = %e, "sending snapshot failed"),
            }
            let _ = events.send(NetworkEvent::SnapshotDone(to, result.is_ok()));
        });
    }

    pub fn shutdown(&self) {
        for (id, h) in self.peers.lock().expect("transport lock").drain() {
            h.task.abort();
            self.activity.deactivate(id);
        }
    }
}

/// The metadata every peer call carries: this member's cluster and id.
pub fn add_headers<T>(req: &mut tonic::Request<T>, local: MemberId, cluster: ClusterId) {
    let md = req.metadata_mut();
    if let Ok(v) = format!("{:x}", cluster.0).parse() {
        md.insert(CLUSTER_ID_HEADER, v);
    }
    if let Ok(v) = format!("{:x}", local.0).parse() {
        md.insert(FROM_HEADER, v);
    }
}

struct PeerTask {
    peer: MemberId,
    local: MemberId,
    cluster: ClusterId,
    urls: watch::Receiver<Vec<String>>,
    queue: mpsc::Receiver<Message>,
    events: StdSender<NetworkEvent>,
    dialer: Dialer,
    metrics: std::sync::Arc<Metrics>,
    activity: std::sync::Arc<PeerActivity>,
}

async fn peer_task(mut t: PeerTask) {
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    loop {
        let urls = t.urls.borrow_and_update().clone();
        match t.dialer.connect(&urls).await {
            Ok(channel) => {
                tracing::debug!(peer = %t.peer, "connected to peer");
                let sent_any = stream_to(&mut t, channel).await;
                if t.queue.is_closed() {
                    return;
                }
                if sent_any {
                    backoff = BACKOFF_MIN;
                    reported = false;
                }
            }
            Err(e) => {
                if !reported {
                    tracing::warn!(peer = %t.peer, error = %e, "cannot reach peer");
                    reported = true;
                }
            }
        }
        t.activity.deactivate(t.peer);
        let _ = t.events.send(NetworkEvent::Unreachable(t.peer));
        t.metrics.peer.send_failed(t.peer.0);
        // While disconnected, queued messages are stale by the time we reconnect;
        // Raft resends what matters.
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                m = t.queue.recv() => if m.is_none() { return },
                _ = t.urls.changed() => break,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one `Stream` call until it fails. Returns whether any batch went out.
async fn stream_to(t: &mut PeerTask, channel: Channel) -> bool {
    let (tx, rx) = mpsc::channel::<peerpb::MessageBatch>(16);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    add_headers(&mut req, t.local, t.cluster);
    let mut client = PeerClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut prober = client.clone();
    let mut call = Box::pin(async move { client.stream(req).await });
    let mut sent_any = false;
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = probe.tick() => {
                // The stream call is not held up: a probe that does not come back
                // within the interval is simply not counted.
                let started = tokio::time::Instant::now();
                let mut req = tonic::Request::new(peerpb::ProbeRequest {});
                add_headers(&mut req, t.local, t.cluster);
                if tokio::time::timeout(PROBE_INTERVAL, prober.probe(req)).await.is_ok_and(|r| r.is_ok()) {
                    t.metrics.peer.round_trip(t.peer.0, started.elapsed());
                    t.activity.activate(t.peer, std::time::Instant::now());
                }
            }
            m = t.queue.recv() => {
                let Some(m) = m else { return sent_any };
                let mut batch = vec![encode_message(&m)];
                while batch.len() < MAX_BATCH {
                    match t.queue.try_recv() {
                        Ok(m) => batch.push(encode_message(&m)),
                        Err(_) => break,
                    }
                }
                let batch = peerpb::MessageBatch { messages: batch };
                let bytes = prost::Message::encoded_len(&batch) as u64;
                if tx.send(batch).await.is_err() {
                    t.metrics.peer.send_failed(t.peer.0);
                    return sent_any;
                }
                t.metrics.peer.sent(t.peer.0, bytes);
                sent_any = true;
            }
            result = &mut call => {
                match result {
                    Ok(_) => tracing::debug!(peer = %t.peer, "peer closed the stream"),
                    Err(status) if status.code() == tonic::Code::PermissionDenied => {
                        tracing::warn!(peer = %t.peer, error = %status.message(), "a peer says this member was removed");
                        let _ = t.events.send(NetworkEvent::Removed(t.peer));
                    }
                    Err(status) => {
                        if status.code() == tonic::Code::FailedPrecondition {
                            tracing::error!(peer = %t.peer, error = %status.message(), "peer refused our messages");
                        } else {
                            tracing::debug!(peer = %t.peer, error = %status, "stream to peer failed");
                        }
                    }
                }
                return sent_any;
            }
        }
    }
}

async fn send_snapshot(
    dialer: &Dialer,
    local: MemberId,
    cluster: ClusterId,
    urls: &[String],
    message: &Message,
    image: &PathBuf,
) -> Result<u64, String> {
    let channel = dialer.connect(urls).await?;
    let mut file = tokio::fs::File::open(image)
        .await
        .map_err(|e| format!("open {}: {e}", image.display()))?;
    let (tx, rx) = mpsc::channel::<peerpb::SnapshotChunk>(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    add_headers(&mut req, local, cluster);
    let mut client = PeerClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let call = tokio::spawn(async move { client.snapshot(req).await });
    let first = peerpb::SnapshotChunk {
        message: Some(encode_message(message)),
        data: Default::default(),
    };
    let feed = async {
        tx.send(first)
            .await
            .map_err(|_| "peer hung up".to_string())?;
        loop {
            let mut buf = vec![0u8; SNAPSHOT_CHUNK];
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| format!("read {}: {e}", image.display()))?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            buf.truncate(n);
            tx.send(peerpb::SnapshotChunk {
                message: None,
                data: buf.into(),
            })
            .await
            .map_err(|_| "peer hung up".to_string())?;
        }
    };
    let fed = feed.await;
    drop(tx);
    let answer = call.await.map_err(|e| e.to_string())?;
    fed?;
    answer
        .map(|r| r.into_inner().bytes)
        .map_err(|s| s.message().to_string())
}

impl Network for Transport {
    fn set_peers(&mut self, peers: &[(MemberId, Vec<String>)]) {
        Transport::set_peers(self, peers);
    }
    fn send(&mut self, messages: Vec<Message>) -> Vec<MemberId> {
        Transport::send(self, messages)
    }
    fn send_snapshot(&mut self, message: Message, image: PathBuf) {
        Transport::send_snapshot(self, message, image);
    }
    fn shutdown(&mut self) {
        Transport::shutdown(self);
    }
}
