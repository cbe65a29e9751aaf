//! A zero-copy reader of `etcdserverpb.WatchResponse` for the watch workload.
//!
//! With a thousand watchers the client receives millions of events a second
//! on the same two cores as the server it measures; a generated decoder spent
//! most of the client's time building messages whose fields the workload
//! never reads (a `Vec` of events, a `Bytes` per key, every varint of every
//! key-value). [`RawWatchResponse`] keeps the message's bytes as they came
//! (one buffer split per message) and walks them in place: the watch id and
//! flags once, then the key of each event on demand. Everything else is
//! skipped by its length. Both servers' responses go through the same reader,
//! so the client's cost is equal and small for either.

use bytes::{Buf, Bytes};
use retcd_api::etcdserverpb::WatchRequest;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// WatchResponse field numbers (rpc.proto).
const WATCH_ID: u32 = 2;
const CREATED: u32 = 3;
const CANCELED: u32 = 4;
const CANCEL_REASON: u32 = 6;
const EVENTS: u32 = 11;
/// mvccpb.Event.kv and mvccpb.KeyValue.key (kv.proto).
const EVENT_KV: u32 = 2;
const KV_KEY: u32 = 1;

/// One field's payload as it sits in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Varint(u64),
    Delimited(&'a [u8]),
    /// Fixed 32- or 64-bit values; the workload reads none of them.
    Fixed,
}

/// What is wrong with a message. A word rather than a `Status`: the walk returns
/// results for every field, and a `Status` would make each of them large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Malformed(&'static str);

impl From<Malformed> for Status {
    fn from(m: Malformed) -> Status {
        Status::internal(format!("malformed WatchResponse: {}", m.0))
    }
}

fn malformed(what: &'static str) -> Malformed {
    Malformed(what)
}

/// Reads a base-128 varint from the front of `buf`.
#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    // Tags and lengths of small fields: one byte.
    if let Some(&byte) = buf.first()
        && byte < 0x80
    {
        *buf = &buf[1..];
        return Ok(u64::from(byte));
    }
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(malformed("truncated or overlong varint"))
}

/// Reads the next field of a message from the front of `buf`, or None at its end.
#[inline]
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u32, Value<'a>)>, Malformed> {
    if buf.is_empty() {
        return Ok(None);
    }
    let key = varint(buf)?;
    let tag = u32::try_from(key >> 3).map_err(|_| malformed("field number out of range"))?;
    let take = |buf: &mut &'a [u8], n: usize| -> Result<&'a [u8], Malformed> {
        if buf.len() < n {
            return Err(malformed("field runs past the message"));
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    };
    let value = match key & 7 {
        0 => Value::Varint(varint(buf)?),
        1 => {
            take(buf, 8)?;
            Value::Fixed
        }
        2 => {
            let len = usize::try_from(varint(buf)?).map_err(|_| malformed("length"))?;
            Value::Delimited(take(buf, len)?)
        }
        5 => {
            take(buf, 4)?;
            Value::Fixed
        }
        // Groups (3, 4) and the unused 6 and 7.
        _ => return Err(malformed("unsupported wire type")),
    };
    Ok(Some((tag, value)))
}

/// The key of one encoded `mvccpb.Event` (empty when it has no kv or key).
/// The first key found is the key: etcd writes each field once, in field
/// order, so the walk stops there instead of reading the rest of the kv.
fn event_key(mut event: &[u8]) -> Result<&[u8], Malformed> {
    while let Some((tag, value)) = next_field(&mut event)? {
        if let (EVENT_KV, Value::Delimited(mut kv)) = (tag, value) {
            while let Some((tag, value)) = next_field(&mut kv)? {
                if let (KV_KEY, Value::Delimited(key)) = (tag, value) {
                    return Ok(key);
                }
            }
        }
    }
    Ok(&[])
}

/// A watch response read in place: the fields the workload uses, and the
/// message itself for walking its events.
#[derive(Debug, Clone, Default)]
pub struct RawWatchResponse {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub cancel_reason: String,
    /// How many events the response carries.
    pub event_count: usize,
    message: Bytes,
    /// Where the first event starts in `message`.
    events_at: usize,
}

impl RawWatchResponse {
    /// Reads the top-level fields of an encoded WatchResponse; events are
    /// only counted here (their framing checked), and read by `event_keys`.
    pub fn parse(message: Bytes) -> Result<Self, Status> {
        let mut response = RawWatchResponse {
            message,
            ..Default::default()
        };
        let message = response.message.clone();
        let mut buf = message.as_ref();
        loop {
            let at = message.len() - buf.len();
            let Some((tag, value)) = next_field(&mut buf)? else {
                break;
            };
            match (tag, value) {
                // int64 on the wire is the two's complement as a u64 varint.
                (WATCH_ID, Value::Varint(v)) => response.watch_id = v as i64,
                (CREATED, Value::Varint(v)) => response.created = v != 0,
                (CANCELED, Value::Varint(v)) => response.canceled = v != 0,
                (CANCEL_REASON, Value::Delimited(s)) => {
                    response.cancel_reason = String::from_utf8_lossy(s).into_owned();
                }
                (EVENTS, Value::Delimited(_)) => {
                    if response.event_count == 0 {
                        response.events_at = at;
                    }
                    response.event_count += 1;
                }
                _ => {}
            }
        }
        Ok(response)
    }

    /// The key of each event, in order; an error for an event whose own
    /// fields are malformed.
    pub fn event_keys(&self) -> impl Iterator<Item = Result<&[u8], Status>> {
        let mut buf = &self.message[self.events_at..];
        let mut left = self.event_count;
        std::iter::from_fn(move || {
            while left > 0 {
                // `parse` walked these same top-level fields without error.
                if let (EVENTS, Value::Delimited(event)) =
                    next_field(&mut buf).expect("checked by parse")?
                {
                    left -= 1;
                    return Some(event_key(event).map_err(Status::from));
                }
            }
            None
        })
    }
}

/// WatchRequests encoded by prost, responses read as [`RawWatchResponse`].
#[derive(Debug, Default, Clone)]
pub struct RawWatchCodec;

impl Codec for RawWatchCodec {
    type Encode = WatchRequest;
    type Decode = RawWatchResponse;
    type Encoder = ProstEncoder<WatchRequest>;
    type Decoder = RawWatchDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawWatchDecoder
    }
}

#[derive(Debug, Default, Clone)]
pub struct RawWatchDecoder;

impl Decoder for RawWatchDecoder {
    type Item = RawWatchResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // The whole message, split off the receive buffer without copying.
        let message = src.copy_to_bytes(src.remaining());
        RawWatchResponse::parse(message).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use retcd_api::etcdserverpb::{ResponseHeader, WatchResponse};
    use retcd_api::mvccpb::{Event, KeyValue};

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"some value"),
            create_revision: 3,
            mod_revision: 9,
            version: 2,
            lease: 0x7fff_ffff_ffff,
        }
    }

    // Goal: the in-place reader sees the same watch id, flags and keys as the
    // generated decoder, whatever else the response carries.
    #[test]
    fn raw_response_reads_what_the_full_one_says() {
        let full = WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: u64::MAX,
                member_id: 7,
                revision: 9,
                raft_term: 2,
            }),
            watch_id: 42,
            created: true,
            canceled: true,
            compact_revision: 5,
            cancel_reason: "why".into(),
            fragment: true,
            events: vec![
                Event {
                    r#type: 1,
                    kv: Some(kv("a")),
                    prev_kv: Some(kv("old")),
                },
                Event {
                    kv: Some(kv("bb")),
                    ..Default::default()
                },
                Event::default(),
            ],
        };
        let raw = RawWatchResponse::parse(full.encode_to_vec().into()).unwrap();
        assert_eq!((raw.watch_id, raw.created, raw.canceled), (42, true, true));
        assert_eq!(raw.cancel_reason, "why");
        assert_eq!(raw.event_count, 3);
        let keys: Vec<&[u8]> = raw.event_keys().map(Result::unwrap).collect();
        assert_eq!(keys, [b"a".as_slice(), b"bb".as_slice(), b"".as_slice()]);
    }

    // Goal: events are found wherever they sit among the other fields (prost writes
    // them last, but the wire does not promise an order).
    #[test]
    fn events_between_other_fields_are_all_read() {
        let event = |key: &str| {
            Event {
                kv: Some(kv(key)),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let mut wire = Vec::new();
        prost::encoding::bytes::encode(EVENTS, &event("x"), &mut wire);
        prost::encoding::int64::encode(WATCH_ID, &7, &mut wire);
        prost::encoding::bytes::encode(EVENTS, &event("yy"), &mut wire);
        prost::encoding::bool::encode(CREATED, &true, &mut wire);
        let raw = RawWatchResponse::parse(wire.into()).unwrap();
        assert_eq!((raw.watch_id, raw.created, raw.event_count), (7, true, 2));
        let keys: Vec<&[u8]> = raw.event_keys().map(Result::unwrap).collect();
        assert_eq!(keys, [b"x".as_slice(), b"yy".as_slice()]);
    }

    #[test]
    fn negative_watch_ids_and_empty_responses_read_back() {
        let progress = WatchResponse {
            watch_id: -1,
            ..Default::default()
        };
        let raw = RawWatchResponse::parse(progress.encode_to_vec().into()).unwrap();
        assert_eq!(raw.watch_id, -1);
        assert_eq!(raw.event_count, 0);
        assert_eq!(raw.event_keys().count(), 0);
        let empty = RawWatchResponse::parse(Bytes::new()).unwrap();
        assert_eq!((empty.watch_id, empty.event_count), (0, 0));
    }

    // Goal: bad bytes are an error for the stream, never a panic or a wrong count.
    #[test]
    fn malformed_responses_are_errors() {
        let full = WatchResponse {
            watch_id: 1,
            events: vec![Event {
                kv: Some(kv("key")),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        // The watch id (2 bytes) is a whole message; any other cut is inside a field.
        let head = RawWatchResponse::parse(Bytes::copy_from_slice(&full[..2])).unwrap();
        assert_eq!((head.watch_id, head.event_count), (1, 0));
        for cut in (1..full.len()).filter(|&cut| cut != 2) {
            let truncated = Bytes::copy_from_slice(&full[..cut]);
            assert!(
                RawWatchResponse::parse(truncated).is_err(),
                "cut at {cut} of {}",
                full.len()
            );
        }
        for bad in [&[0x80u8; 11][..], &[0x0b], &[0x5a, 0x05, 0x12, 0x09]] {
            let status = RawWatchResponse::parse(Bytes::copy_from_slice(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Internal, "{bad:?}");
        }
        // An event whose kv claims more bytes than the event holds.
        let raw = RawWatchResponse::parse(Bytes::from_static(&[0x5a, 0x03, 0x12, 0x09, 0x0a]));
        let raw = raw.expect("the event's own framing is read lazily");
        assert_eq!(raw.event_count, 1);
        let keys: Vec<_> = raw.event_keys().collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].as_ref().unwrap_err().code(), tonic::Code::Internal);
    }
}
