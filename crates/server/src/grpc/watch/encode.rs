//! The Watch service's hand encoding of `WatchResponse`: the header once per revision per
//! stream, the watch id per response, each event once per change (framed and cached on
//! the shared event), byte for byte what prost writes for the same message.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType};
use retcd_api::etcdserverpb::{ResponseHeader, WatchResponse};
use retcd_api::mvccpb;
use retcd_mvcc::{Event, EventKind};

use super::EventList;

/// A `WatchResponse` ready for the wire: `head` (every field before the watch id, or
/// every field but the events), then `watch_id` unless 0, then the events `range` of a
/// shared list, each from its cached encoding. Event responses share one encoded header
/// per revision (`head`), so a batch for a thousand watchers encodes it once.
#[derive(Clone, Debug, Default)]
pub struct EncodedWatchResponse {
    pub(super) head: Bytes,
    pub(super) watch_id: i64,
    pub(super) events: Option<EventList>,
    pub(super) range: Range<usize>,
    /// Whole lists that follow `events[range]` (later responses merged into this one).
    pub(super) more: Vec<EventList>,
    pub(super) prev_kv: bool,
}

/// `watch_id` is field 2 of `WatchResponse`.
const WATCH_ID_FIELD: u32 = 2;

/// `header` as field 1 of a `WatchResponse`, as prost encodes it.
pub(super) fn header_field(header: &ResponseHeader) -> Bytes {
    let mut buf = Vec::with_capacity(48);
    prost::encoding::message::encode(1, header, &mut buf);
    buf.into()
}

/// `events` is field 11 of `WatchResponse`.
const EVENTS_FIELD: u32 = 11;

/// One event as an element of field 11, framed (field key, length, body): what the
/// event cache holds, so a response copies each event with one slice.
pub(super) fn encode_event(e: &Event, prev_kv: bool) -> Vec<u8> {
    let event = event_to_pb(e, prev_kv);
    let body_len = event.encoded_len();
    let mut buf = Vec::with_capacity(
        prost::encoding::key_len(EVENTS_FIELD)
            + prost::encoding::encoded_len_varint(body_len as u64)
            + body_len,
    );
    prost::encoding::message::encode(EVENTS_FIELD, &event, &mut buf);
    buf
}

impl EncodedWatchResponse {
    pub(super) fn control(resp: &WatchResponse) -> Self {
        EncodedWatchResponse {
            head: resp.encode_to_vec().into(),
            ..Default::default()
        }
    }

    pub(super) fn watch_id_len(&self) -> usize {
        match self.watch_id {
            0 => 0,
            id => {
                prost::encoding::key_len(WATCH_ID_FIELD)
                    + prost::encoding::encoded_len_varint(id as u64)
            }
        }
    }

    /// Each event framed as an element of field 11.
    pub(super) fn framed_events(&self) -> impl Iterator<Item = &[u8]> {
        let prev_kv = self.prev_kv;
        self.events
            .iter()
            .flat_map(move |list| list[self.range.clone()].iter())
            .chain(self.more.iter().flat_map(|list| list.iter()))
            .map(move |e| e.encoded(prev_kv, encode_event))
    }
}

impl Message for EncodedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        if self.watch_id != 0 {
            // int64: the two's complement as a varint, as prost writes it.
            prost::encoding::encode_key(WATCH_ID_FIELD, WireType::Varint, buf);
            prost::encoding::encode_varint(self.watch_id as u64, buf);
        }
        for event in self.framed_events() {
            buf.put_slice(event);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent; decoding skips everything.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.head.len() + self.watch_id_len() + self.framed_events().map(<[u8]>::len).sum::<usize>()
    }

    fn clear(&mut self) {
        *self = EncodedWatchResponse::default();
    }
}

pub(super) fn kv_to_pb(kv: &retcd_mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: Bytes::copy_from_slice(&kv.key),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: Bytes::copy_from_slice(&kv.value),
        lease: kv.lease,
    }
}

pub(super) fn event_to_pb(e: &Event, prev_kv: bool) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    // etcd leaves prev_kv out of create events.
    let is_create = e.kind == EventKind::Put && e.kv.version == 1;
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_pb(&e.kv)),
        prev_kv: if prev_kv && !is_create {
            e.prev_kv.as_ref().map(kv_to_pb)
        } else {
            None
        },
    }
}
