//! Raft's types to and from the peer protocol's protobuf messages (`peerpb`).
//!
//! Decoding is where bytes from the network become input to the Raft core, so it
//! refuses what the core must never see: unknown message or entry types, and the local
//! message kinds (`Hup`, `Beat`, ...) that only a member itself may generate.

use retcd_api::peerpb;
use retcd_raft::{ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};

/// Why a message from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown raft message type {0}")]
    MessageType(u32),
    #[error("raft message type {0:?} is local and never crosses the network")]
    Local(MessageType),
    #[error("unknown raft entry type {0}")]
    EntryType(u32),
}

pub fn encode_conf_state(cs: &ConfState) -> peerpb::ConfState {
    peerpb::ConfState {
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
    }
}

pub fn decode_conf_state(cs: peerpb::ConfState) -> ConfState {
    ConfState {
        voters: cs.voters,
        learners: cs.learners,
        voters_outgoing: cs.voters_outgoing,
        learners_next: cs.learners_next,
        auto_leave: cs.auto_leave,
    }
}

fn encode_entry(e: &Entry) -> peerpb::Entry {
    peerpb::Entry {
        term: e.term,
        index: e.index,
        r#type: u32::from(e.entry_type.code()),
        data: e.data.clone(),
    }
}

fn decode_entry(e: peerpb::Entry) -> Result<Entry, DecodeError> {
    let entry_type = u8::try_from(e.r#type)
        .ok()
        .and_then(EntryType::from_code)
        .ok_or(DecodeError::EntryType(e.r#type))?;
    Ok(Entry {
        term: e.term,
        index: e.index,
        entry_type,
        data: e.data,
    })
}

pub fn encode_snapshot_metadata(m: &SnapshotMetadata) -> peerpb::SnapshotMetadata {
    peerpb::SnapshotMetadata {
        conf_state: Some(encode_conf_state(&m.conf_state)),
        index: m.index,
        term: m.term,
    }
}

pub fn encode_message(m: &Message) -> peerpb::Message {
    peerpb::Message {
        r#type: u32::from(m.msg_type.code()),
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m.entries.iter().map(encode_entry).collect(),
        commit: m.commit,
        snapshot: m.snapshot.as_ref().map(|s| peerpb::Snapshot {
            data: s.data.clone(),
            metadata: Some(encode_snapshot_metadata(&s.metadata)),
        }),
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context.clone(),
    }
}

pub fn decode_message(m: peerpb::Message) -> Result<Message, DecodeError> {
    let msg_type = u8::try_from(m.r#type)
        .ok()
        .and_then(MessageType::from_code)
        .ok_or(DecodeError::MessageType(m.r#type))?;
    if msg_type.is_local() {
        return Err(DecodeError::Local(msg_type));
    }
    let entries = m
        .entries
        .into_iter()
        .map(decode_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = m.snapshot.map(|s| {
        let md = s.metadata.unwrap_or_default();
        Snapshot {
            data: s.data,
            metadata: SnapshotMetadata {
                conf_state: decode_conf_state(md.conf_state.unwrap_or_default()),
                index: md.index,
                term: md.term,
            },
        }
    });
    Ok(Message {
        msg_type,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries,
        commit: m.commit,
        snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    // Goal: every field of a message survives the round trip, snapshot included.
    #[test]
    fn message_round_trip() {
        let m = Message {
            msg_type: MessageType::Snapshot,
            to: 2,
            from: 1,
            term: 7,
            log_term: 6,
            index: 100,
            entries: vec![Entry {
                term: 6,
                index: 101,
                entry_type: EntryType::ConfChangeV2,
                data: Bytes::from_static(b"cc"),
            }],
            commit: 99,
            snapshot: Some(Snapshot {
                data: Bytes::from_static(b"img"),
                metadata: SnapshotMetadata {
                    conf_state: ConfState {
                        voters: vec![1, 2],
                        learners: vec![3],
                        voters_outgoing: vec![1],
                        learners_next: vec![4],
                        auto_leave: true,
                    },
                    index: 100,
                    term: 6,
                },
            }),
            reject: true,
            reject_hint: 42,
            context: Bytes::from_static(b"ctx"),
        };
        let back = decode_message(encode_message(&m)).unwrap();
        assert_eq!(back, m);
    }

    // Goal: a peer cannot inject local message kinds or unknown codes.
    #[test]
    fn refuses_local_and_unknown_types() {
        let mut m = encode_message(&Message {
            msg_type: MessageType::Heartbeat,
            ..Default::default()
        });
        m.r#type = u32::from(MessageType::Hup.code());
        assert!(matches!(
            decode_message(m.clone()),
            Err(DecodeError::Local(_))
        ));
        m.r#type = 99;
        assert!(matches!(
            decode_message(m.clone()),
            Err(DecodeError::MessageType(99))
        ));
        m.r#type = u32::from(MessageType::Append.code());
        m.entries = vec![peerpb::Entry {
            r#type: 7,
            ..Default::default()
        }];
        assert!(matches!(decode_message(m), Err(DecodeError::EntryType(7))));
    }
}
