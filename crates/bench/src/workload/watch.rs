//! `watch`: N watchers on one prefix, spread over S streams, while `--total`
//! puts to distinct keys under the prefix run at full speed from
//! `--clients` clients.
//!
//! Put i writes `<prefix><i>` and stores the instant it was sent in slot i
//! of a shared table before sending; a watcher that receives the event for
//! key i computes the delivery latency as receipt minus that instant. Every
//! watcher should see every put, so N × (successful puts) events are
//! expected; a stream that stays idle for `--request-timeout` before it has
//! them all stops waiting and counts a DeadlineExceeded error.
//!
//! Responses are read in place by [`RawWatchResponse`] (see `watch_wire`):
//! the watch id, the created/canceled flags and each event's key, nothing
//! decoded into messages. With a thousand watchers the client handles
//! millions of events a second on the same machine as the server; reading
//! only what it uses keeps the load generator from being the bottleneck,
//! for either server alike.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::conn::Conn;
use bytes::Bytes;
use retcd_api::etcdserverpb::kv_client::KvClient;
use retcd_api::etcdserverpb::watch_request::RequestUnion;
use retcd_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;

use super::Ctx;
use super::kv::kv_client;
use super::watch_wire::{RawWatchCodec, RawWatchResponse};
use crate::cli::WatchArgs;
use crate::conn::MAX_DECODING_MESSAGE_BYTES;
use crate::error::BenchError;
use crate::keys::{KeyGen, prefix_range_end};
use crate::runner::{Op, run_closed_loop};
use crate::stats::{Recorder, Series};

/// Send instants of the puts, in nanoseconds since `origin`, plus one so
/// that zero means "not sent yet".
struct SendTimes {
    origin: Instant,
    sent_nanos_plus_one: Vec<AtomicU64>,
}

impl SendTimes {
    /// Nanoseconds from `origin` to `at`.
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn mark_sent(&self, put: u64) {
        let nanos = self.nanos(Instant::now());
        self.sent_nanos_plus_one[put as usize].store(nanos + 1, Ordering::Release);
    }

    /// Microseconds from put `put` being sent to `received_nanos` (from
    /// [`SendTimes::nanos`], taken once per response), if it was sent by us.
    /// In integers: this runs for every event received.
    fn latency_us(&self, put: u64, received_nanos: u64) -> Option<u64> {
        let sent = self
            .sent_nanos_plus_one
            .get(put as usize)?
            .load(Ordering::Acquire);
        Some(received_nanos.saturating_sub(sent.checked_sub(1)?) / 1000)
    }
}

/// Splits `items` into `parts` shares that differ by at most one.
pub fn split_evenly(items: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| items / parts + usize::from(i < items % parts))
        .collect()
}

struct WatchPutOp {
    kv: KvClient<Conn>,
    keys: Arc<KeyGen>,
    value: Bytes,
    times: Arc<SendTimes>,
}

impl Op for WatchPutOp {
    async fn call(&mut self, index: u64) -> Result<u64, Status> {
        let request = PutRequest {
            key: self.keys.key(index),
            value: self.value.clone(),
            ..Default::default()
        };
        self.times.mark_sent(index);
        self.kv.put(request).await?;
        Ok(1)
    }
}

/// gRPC path of etcd's Watch method.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

/// One watch stream with its watchers created.
struct OpenStream {
    // Held so the client never half-closes the stream while it is used.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<RawWatchResponse>,
    watchers: usize,
}

async fn open_stream(
    channel: Conn,
    prefix: &[u8],
    watchers: usize,
    timeout: Duration,
) -> Result<OpenStream, BenchError> {
    let (tx, rx) = mpsc::channel(watchers);
    for _ in 0..watchers {
        let create = WatchCreateRequest {
            key: Bytes::copy_from_slice(prefix),
            range_end: prefix_range_end(prefix),
            ..Default::default()
        };
        let request = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        tx.send(request).await.expect("receiver is alive");
    }
    let mut client =
        tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES);
    let call = async {
        client
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let codec = RawWatchCodec;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(WATCH_PATH);
        client
            .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
            .await
    };
    // The creates are queued first because a server may send the response
    // headers, which `watch` waits for, only with its first response.
    let mut responses = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| BenchError::setup_timeout("Watch"))?
        .map_err(|s| BenchError::setup("Watch", &s))?
        .into_inner();
    let mut created = 0;
    while created < watchers {
        let response = tokio::time::timeout(timeout, responses.message())
            .await
            .map_err(|_| BenchError::setup_timeout("watch create"))?
            .map_err(|s| BenchError::setup("watch create", &s))?
            .ok_or_else(|| {
                BenchError::setup("watch create", &Status::unavailable("stream ended"))
            })?;
        if response.canceled {
            let status = Status::failed_precondition(response.cancel_reason);
            return Err(BenchError::setup("watch create", &status));
        }
        created += usize::from(response.created);
    }
    Ok(OpenStream {
        _requests: tx,
        responses,
        watchers,
    })
}

/// What one stream's receiver saw.
struct Delivery {
    recorder: Recorder,
    events: u64,
    /// Responses that carried events.
    responses: u64,
    last_event_at: Option<Instant>,
}

/// Receives events until every watcher on the stream has `puts` of them,
/// or the stream fails, or it stays idle for `idle_timeout`.
/// `puts_ok` starts at the number of puts to send and drops to the number
/// that succeeded once they are done, so failed puts are not waited for.
async fn receive(
    mut stream: OpenStream,
    mut puts_ok: watch::Receiver<u64>,
    keys: Arc<KeyGen>,
    times: Arc<SendTimes>,
    idle_timeout: Duration,
) -> Delivery {
    let mut delivery = Delivery {
        recorder: Recorder::new(),
        events: 0,
        responses: 0,
        last_event_at: None,
    };
    // Watch ids seen with events: servers number a stream's watchers from 0, so a
    // vector indexed by id serves them, and a set anything else.
    let mut seen = vec![false; stream.watchers];
    let mut seen_other: HashSet<i64> = HashSet::new();
    // One idle timer for the whole stream, pushed back lazily when it fires: arming a
    // timeout per message cost more than reading the message.
    let mut last_activity = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        let expected = stream.watchers as u64 * *puts_ok.borrow_and_update();
        if delivery.events >= expected {
            break;
        }
        let next = tokio::select! {
            biased;
            // Streaming::message is cancel-safe: a partly read message stays
            // buffered in the stream.
            next = stream.responses.message() => next,
            Ok(()) = puts_ok.changed() => continue,
            () = &mut idle => {
                let deadline = last_activity + idle_timeout;
                if Instant::now() < deadline {
                    idle.as_mut().reset(deadline.into());
                    continue;
                }
                delivery
                    .recorder
                    .record_error(tonic::Code::DeadlineExceeded);
                break;
            }
        };
        let response = match next {
            Ok(Some(response)) => response,
            Ok(None) => {
                delivery.recorder.record_error(tonic::Code::Unavailable);
                break;
            }
            Err(status) => {
                delivery.recorder.record_error(status.code());
                break;
            }
        };
        let received = Instant::now();
        let received_nanos = times.nanos(received);
        last_activity = received;
        if response.canceled {
            delivery.recorder.record_error(tonic::Code::Cancelled);
            break;
        }
        if response.event_count == 0 {
            continue;
        }
        for key in response.event_keys() {
            let Ok(key) = key else {
                delivery.recorder.record_error(tonic::Code::Internal);
                continue;
            };
            match keys
                .parse_index(key)
                .and_then(|put| times.latency_us(put, received_nanos))
            {
                Some(us) => delivery.recorder.record_ok_us(us),
                // Not one of our puts: someone else writes under the prefix.
                None => delivery.recorder.record_error(tonic::Code::Unknown),
            }
        }
        let count = response.event_count as u64;
        delivery.events += count;
        delivery.responses += 1;
        match usize::try_from(response.watch_id)
            .ok()
            .and_then(|id| seen.get_mut(id))
        {
            Some(slot) => *slot = true,
            None => {
                seen_other.insert(response.watch_id);
            }
        }
        delivery.last_event_at = Some(received);
    }
    let ids = seen.iter().filter(|&&s| s).count() + seen_other.len();
    assert!(
        ids <= stream.watchers,
        "events for {ids} watch ids on a stream with {} watchers",
        stream.watchers
    );
    delivery
}

/// Runs the watch workload; see the module docs.
pub async fn watch(ctx: &Ctx, args: &WatchArgs) -> Result<crate::stats::Report, BenchError> {
    let g = &ctx.global;
    let puts = g.total;
    let prefix = args.prefix.as_bytes();
    let keys = Arc::new(KeyGen::per_request(prefix, g.key_size, puts));

    let mut streams = Vec::with_capacity(args.streams);
    for (s, watchers) in split_evenly(args.watchers, args.streams)
        .into_iter()
        .enumerate()
    {
        streams.push(open_stream(ctx.channel(s), prefix, watchers, g.request_timeout).await?);
    }

    let times = Arc::new(SendTimes {
        origin: Instant::now(),
        sent_nanos_plus_one: (0..puts).map(|_| AtomicU64::new(0)).collect(),
    });
    let (puts_ok_tx, puts_ok_rx) = watch::channel(puts);
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let (keys, times) = (Arc::clone(&keys), Arc::clone(&times));
            let puts_ok = puts_ok_rx.clone();
            tokio::spawn(receive(stream, puts_ok, keys, times, g.request_timeout))
        })
        .collect();

    let ops = (0..g.clients)
        .map(|c| WatchPutOp {
            kv: kv_client(ctx.channel(c)),
            keys: Arc::clone(&keys),
            value: ctx.value.clone(),
            times: Arc::clone(&times),
        })
        .collect();
    let puts_started = Instant::now();
    let put_run = run_closed_loop(ops, puts, g.request_timeout).await;
    let puts_ok = put_run.recorder.ok();
    // Receivers that already finished have dropped their end; that is fine.
    let _ = puts_ok_tx.send(puts_ok);

    let mut delivered = Recorder::new();
    let mut events = 0;
    let mut responses = 0;
    let mut last_event_at = puts_started;
    for receiver in receivers {
        let delivery = match receiver.await {
            Ok(delivery) => delivery,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a watch receiver was cancelled: {e}"),
        };
        delivered.merge(&delivery.recorder);
        events += delivery.events;
        responses += delivery.responses;
        last_event_at = last_event_at.max(delivery.last_event_at.unwrap_or(puts_started));
    }
    let delivery_elapsed = last_event_at.duration_since(puts_started);
    Ok(ctx.report(
        vec![
            Series::new("watch-event", &delivered, delivery_elapsed),
            Series::new("put", &put_run.recorder, put_run.elapsed),
        ],
        vec![
            ("watchers", args.watchers as u64),
            ("streams", args.streams as u64),
            ("puts_ok", puts_ok),
            ("events_expected", args.watchers as u64 * puts_ok),
            ("events_received", events),
            // Events per response: how much each server batches per watcher.
            ("event_responses_received", responses),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_split_evenly_over_streams() {
        assert_eq!(split_evenly(10, 3), vec![4, 3, 3]);
        assert_eq!(split_evenly(3, 3), vec![1, 1, 1]);
        assert_eq!(split_evenly(100, 10).iter().sum::<usize>(), 100);
    }

    #[test]
    fn latency_runs_from_send_to_receipt() {
        let times = SendTimes {
            origin: Instant::now(),
            sent_nanos_plus_one: (0..2).map(|_| AtomicU64::new(0)).collect(),
        };
        let now = times.nanos(Instant::now());
        assert_eq!(times.latency_us(0, now), None, "not sent yet");
        times.mark_sent(0);
        let later = times.nanos(Instant::now() + Duration::from_millis(5));
        let latency = times.latency_us(0, later).unwrap();
        assert!((5_000..60_000).contains(&latency), "{latency} us");
        assert_eq!(times.latency_us(9, later), None, "not one of ours");
    }
}
