//! Records and their frames: the byte layout documented in `docs/wal-format.md`.
//!
//! A frame is a 20-byte header, the payload, and zero padding to the next multiple of 8:
//!
//! ```text
//! 0..4    crc32      over bytes 4..20+len, seeded with the segment's salt
//! 4..8    len        payload length, u32
//! 8       type       RecordType
//! 9       version    payload encoding version (1)
//! 10..12  reserved   zero
//! 12..20  durable    how many bytes of this segment were fsynced when the record was written
//! 20..    payload, then zeros up to a multiple of 8
//! ```
//!
//! The CRC is per record, not chained: every record can be checked on its own, which is what
//! lets recovery look past a damaged record and ask whether anything after it was ever made
//! durable (see `segment.rs`). The per-segment salt keeps bytes that merely look like a
//! frame (a record copied from another segment, a frame hidden in a client's value) from
//! passing the check. All integers are little-endian.

use bytes::Bytes;
use retcd_raft::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};

use crate::error::WalError;

pub(crate) const HEADER_BYTES: usize = 20;
pub(crate) const ALIGN_BYTES: usize = 8;
/// The only payload encoding this build writes and reads.
pub(crate) const RECORD_VERSION: u8 = 1;
/// The segment header record is checked before the salt is known, so its CRC is unsalted.
pub(crate) const HEADER_SALT: u32 = 0;

/// Bytes a record with a `payload_len`-byte payload occupies on disk.
pub(crate) fn frame_bytes(payload_len: usize) -> usize {
    (HEADER_BYTES + payload_len).div_ceil(ALIGN_BYTES) * ALIGN_BYTES
}

/// What a record holds. The numeric codes are part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// First record of every segment: its sequence number, first index, CRC salt and
    /// preallocated size.
    SegmentHeader,
    /// Second record of every segment: the server's opaque metadata.
    Metadata,
    Entry,
    HardState,
    /// A snapshot was taken (or received) at this index and term.
    Snapshot,
}

impl RecordType {
    pub fn code(self) -> u8 {
        match self {
            RecordType::SegmentHeader => 1,
            RecordType::Metadata => 2,
            RecordType::Entry => 3,
            RecordType::HardState => 4,
            RecordType::Snapshot => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RecordType::SegmentHeader),
            2 => Some(RecordType::Metadata),
            3 => Some(RecordType::Entry),
            4 => Some(RecordType::HardState),
            5 => Some(RecordType::Snapshot),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordType::SegmentHeader => "segment",
            RecordType::Metadata => "metadata",
            RecordType::Entry => "entry",
            RecordType::HardState => "hardstate",
            RecordType::Snapshot => "snapshot",
        }
    }
}

/// The WAL's note that a snapshot exists at `index`/`term` (etcd's `walpb.Snapshot`). On
/// restart, the server loads the newest snapshot file that has a marker and replays the WAL
/// from that marker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMarker {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

impl SnapshotMarker {
    /// A marker without membership (enough to name a position to [`crate::Wal::open`]).
    pub fn new(index: u64, term: u64) -> Self {
        SnapshotMarker {
            index,
            term,
            conf_state: ConfState::default(),
        }
    }

    /// Whether this marker names the same log position as `index`/`term`.
    pub fn is_at(&self, index: u64, term: u64) -> bool {
        self.index == index && self.term == term
    }
}

impl From<&SnapshotMetadata> for SnapshotMarker {
    fn from(meta: &SnapshotMetadata) -> Self {
        SnapshotMarker {
            index: meta.index,
            term: meta.term,
            conf_state: meta.conf_state.clone(),
        }
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    SegmentHeader {
        seq: u64,
        first_index: u64,
        salt: u32,
        /// The size the file was preallocated to. Segment files never shrink, so a shorter
        /// file was truncated by something other than the WAL.
        prealloc_bytes: u64,
    },
    Metadata(Bytes),
    Entry(Entry),
    HardState(HardState),
    Snapshot(SnapshotMarker),
}

impl Record {
    pub fn record_type(&self) -> RecordType {
        match self {
            Record::SegmentHeader { .. } => RecordType::SegmentHeader,
            Record::Metadata(_) => RecordType::Metadata,
            Record::Entry(_) => RecordType::Entry,
            Record::HardState(_) => RecordType::HardState,
            Record::Snapshot(_) => RecordType::Snapshot,
        }
    }
}

/// Appends framed records to a buffer.
pub(crate) struct FrameWriter<'a> {
    pub buf: &'a mut Vec<u8>,
    pub salt: u32,
    /// The `durable` field of every frame written: the fsynced length of the segment.
    pub durable_offset: u64,
    pub max_record_bytes: u32,
}

impl FrameWriter<'_> {
    /// Frames whatever `payload` appends. On `RecordTooLarge` the buffer is left as it was.
    fn frame(
        &mut self,
        rtype: RecordType,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), WalError> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER_BYTES]);
        payload(self.buf);
        let len = self.buf.len() - start - HEADER_BYTES;
        if len > self.max_record_bytes as usize {
            self.buf.truncate(start);
            return Err(WalError::RecordTooLarge {
                len: len as u64,
                max: u64::from(self.max_record_bytes),
            });
        }
        let header = &mut self.buf[start..start + HEADER_BYTES];
        header[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        header[8] = rtype.code();
        header[9] = RECORD_VERSION;
        header[12..20].copy_from_slice(&self.durable_offset.to_le_bytes());
        let mut crc = crc32fast::Hasher::new_with_initial(self.salt);
        crc.update(&self.buf[start + 4..]);
        let crc = crc.finalize();
        self.buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        self.buf.resize(start + frame_bytes(len), 0);
        Ok(())
    }

    pub fn segment_header(
        &mut self,
        seq: u64,
        first_index: u64,
        salt: u32,
        prealloc_bytes: u64,
    ) -> Result<(), WalError> {
        self.frame(RecordType::SegmentHeader, |b| {
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&first_index.to_le_bytes());
            b.extend_from_slice(&salt.to_le_bytes());
            b.extend_from_slice(&prealloc_bytes.to_le_bytes());
        })
    }

    pub fn metadata(&mut self, metadata: &[u8]) -> Result<(), WalError> {
        self.frame(RecordType::Metadata, |b| b.extend_from_slice(metadata))
    }

    pub fn entry(&mut self, e: &Entry) -> Result<(), WalError> {
        self.frame(RecordType::Entry, |b| {
            b.extend_from_slice(&e.term.to_le_bytes());
            b.extend_from_slice(&e.index.to_le_bytes());
            b.push(e.entry_type.code());
            b.extend_from_slice(&e.data);
        })
    }

    pub fn hard_state(&mut self, hs: &HardState) -> Result<(), WalError> {
        self.frame(RecordType::HardState, |b| {
            b.extend_from_slice(&hs.term.to_le_bytes());
            b.extend_from_slice(&hs.vote.to_le_bytes());
            b.extend_from_slice(&hs.commit.to_le_bytes());
        })
    }

    pub fn snapshot(&mut self, m: &SnapshotMarker) -> Result<(), WalError> {
        self.frame(RecordType::Snapshot, |b| {
            b.extend_from_slice(&m.index.to_le_bytes());
            b.extend_from_slice(&m.term.to_le_bytes());
            encode_conf_state(&m.conf_state, b);
        })
    }
}

/// Appends a `ConfState`: four lists (u32 count, then u64 ids) and `auto_leave` as one byte.
pub(crate) fn encode_conf_state(cs: &ConfState, b: &mut Vec<u8>) {
    for list in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        b.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }
    b.push(u8::from(cs.auto_leave));
}

/// Bounds-checked reading of a payload. Errors are reasons, to be wrapped with file and
/// offset by the caller.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!(
                "payload ends after {} bytes, needed {} more",
                self.pos, n
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// A u32 count then that many u64s. The count is checked against the bytes left before
    /// anything is allocated.
    pub fn id_list(&mut self) -> Result<Vec<u64>, String> {
        let count = self.u32()? as usize;
        if count > (self.buf.len() - self.pos) / 8 {
            return Err(format!("list of {count} ids does not fit in the payload"));
        }
        (0..count).map(|_| self.u64()).collect()
    }

    pub fn conf_state(&mut self) -> Result<ConfState, String> {
        let voters = self.id_list()?;
        let learners = self.id_list()?;
        let voters_outgoing = self.id_list()?;
        let learners_next = self.id_list()?;
        let auto_leave = match self.u8()? {
            0 => false,
            1 => true,
            other => return Err(format!("auto_leave byte is {other}, not 0 or 1")),
        };
        Ok(ConfState {
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
        })
    }

    pub fn finish(&self) -> Result<(), String> {
        if self.pos != self.buf.len() {
            return Err(format!(
                "{} unexpected trailing payload bytes",
                self.buf.len() - self.pos
            ));
        }
        Ok(())
    }
}

/// Decodes a payload whose frame passed its CRC.
pub(crate) fn decode_payload(rtype: RecordType, payload: &[u8]) -> Result<Record, String> {
    let mut c = Cursor::new(payload);
    let record = match rtype {
        RecordType::SegmentHeader => Record::SegmentHeader {
            seq: c.u64()?,
            first_index: c.u64()?,
            salt: c.u32()?,
            prealloc_bytes: c.u64()?,
        },
        RecordType::Metadata => Record::Metadata(Bytes::copy_from_slice(c.rest())),
        RecordType::Entry => {
            let term = c.u64()?;
            let index = c.u64()?;
            let code = c.u8()?;
            let entry_type =
                EntryType::from_code(code).ok_or_else(|| format!("unknown entry type {code}"))?;
            Record::Entry(Entry {
                term,
                index,
                entry_type,
                data: Bytes::copy_from_slice(c.rest()),
            })
        }
        RecordType::HardState => Record::HardState(HardState {
            term: c.u64()?,
            vote: c.u64()?,
            commit: c.u64()?,
        }),
        RecordType::Snapshot => Record::Snapshot(SnapshotMarker {
            index: c.u64()?,
            term: c.u64()?,
            conf_state: c.conf_state()?,
        }),
    };
    c.finish()?;
    Ok(record)
}

/// The outcome of reading one frame at an offset.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A frame whose CRC matched.
    Valid {
        rtype: u8,
        version: u8,
        reserved: u16,
        durable_offset: u64,
        payload: &'a [u8],
        next: usize,
    },
    /// The offset is the end of the file.
    Eof,
    /// A zeroed header: preallocated space, where the log ends.
    Zero,
    /// Anything else: too short, absurd length, CRC mismatch, dirty padding.
    Bad(String),
}

/// Reads the frame at `off` (a multiple of 8). Never allocates; a length field is trusted
/// only after it is checked against `max_record_bytes` and the bytes actually present.
pub(crate) fn read_frame(data: &[u8], off: usize, salt: u32, max_record_bytes: u32) -> Frame<'_> {
    let left = data.len() - off;
    if left == 0 {
        return Frame::Eof;
    }
    let head = &data[off..off + left.min(HEADER_BYTES)];
    if head.iter().all(|b| *b == 0) {
        return Frame::Zero;
    }
    if left < HEADER_BYTES {
        return Frame::Bad(format!(
            "incomplete record header ({left} of {HEADER_BYTES} bytes)"
        ));
    }
    let crc = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if len > max_record_bytes {
        return Frame::Bad(format!(
            "record length {len} exceeds the limit of {max_record_bytes}"
        ));
    }
    let len = len as usize;
    let frame_len = frame_bytes(len);
    if frame_len > left {
        return Frame::Bad(format!(
            "record of {frame_len} bytes extends past the end of the file ({left} bytes left)"
        ));
    }
    let body = &data[off + 4..off + HEADER_BYTES + len];
    let mut hasher = crc32fast::Hasher::new_with_initial(salt);
    hasher.update(body);
    let actual = hasher.finalize();
    if actual != crc {
        return Frame::Bad(format!(
            "CRC mismatch: stored {crc:#010x}, computed {actual:#010x}"
        ));
    }
    if data[off + HEADER_BYTES + len..off + frame_len]
        .iter()
        .any(|b| *b != 0)
    {
        return Frame::Bad("non-zero padding after the record".to_owned());
    }
    Frame::Valid {
        rtype: head[8],
        version: head[9],
        reserved: u16::from_le_bytes([head[10], head[11]]),
        durable_offset: u64::from_le_bytes(head[12..20].try_into().expect("8 bytes")),
        payload: &data[off + HEADER_BYTES..off + HEADER_BYTES + len],
        next: off + frame_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(buf: &mut Vec<u8>) -> FrameWriter<'_> {
        FrameWriter {
            buf,
            salt: 0xdead_beef,
            durable_offset: 40,
            max_record_bytes: 1024,
        }
    }

    fn read_all(buf: &[u8]) -> Vec<Record> {
        let mut off = 0;
        let mut out = Vec::new();
        loop {
            match read_frame(buf, off, 0xdead_beef, 1024) {
                Frame::Valid {
                    rtype,
                    version,
                    reserved,
                    durable_offset,
                    payload,
                    next,
                } => {
                    assert_eq!((version, reserved), (RECORD_VERSION, 0));
                    assert_eq!(durable_offset, 40);
                    let rtype = RecordType::from_code(rtype).unwrap();
                    out.push(decode_payload(rtype, payload).unwrap());
                    off = next;
                }
                Frame::Eof => return out,
                other => panic!("unexpected {other:?} at {off}"),
            }
        }
    }

    #[test]
    fn every_record_type_round_trips() {
        let marker = SnapshotMarker {
            index: 9,
            term: 3,
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                voters_outgoing: vec![1, 2],
                learners_next: vec![5],
                auto_leave: true,
            },
        };
        let entry = Entry {
            term: 3,
            index: 7,
            entry_type: EntryType::ConfChangeV2,
            data: Bytes::from_static(b"abc"),
        };
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 6,
        };
        let mut buf = Vec::new();
        let mut w = writer(&mut buf);
        w.segment_header(4, 100, 77, 4096).unwrap();
        w.metadata(b"node=1").unwrap();
        w.entry(&entry).unwrap();
        w.entry(&Entry::default()).unwrap();
        w.hard_state(&hs).unwrap();
        w.snapshot(&marker).unwrap();
        assert_eq!(buf.len() % ALIGN_BYTES, 0);
        assert_eq!(
            read_all(&buf),
            vec![
                Record::SegmentHeader {
                    seq: 4,
                    first_index: 100,
                    salt: 77,
                    prealloc_bytes: 4096
                },
                Record::Metadata(Bytes::from_static(b"node=1")),
                Record::Entry(entry),
                Record::Entry(Entry::default()),
                Record::HardState(hs),
                Record::Snapshot(marker),
            ]
        );
    }

    #[test]
    fn entry_frame_layout_is_as_documented() {
        let mut buf = Vec::new();
        let e = Entry {
            term: 2,
            index: 5,
            entry_type: EntryType::Normal,
            data: Bytes::from_static(b"xy"),
        };
        writer(&mut buf).entry(&e).unwrap();
        // 20 header + 8 term + 8 index + 1 type + 2 data = 39, padded to 40.
        assert_eq!(buf.len(), 40);
        assert_eq!(&buf[4..8], &19u32.to_le_bytes());
        assert_eq!(buf[8], RecordType::Entry.code());
        assert_eq!(buf[9], 1);
        assert_eq!(&buf[10..12], &[0, 0]);
        assert_eq!(&buf[12..20], &40u64.to_le_bytes());
        assert_eq!(&buf[20..28], &2u64.to_le_bytes());
        assert_eq!(&buf[28..36], &5u64.to_le_bytes());
        assert_eq!(buf[36], 0);
        assert_eq!(&buf[37..39], b"xy");
        assert_eq!(buf[39], 0);
        let mut h = crc32fast::Hasher::new_with_initial(0xdead_beef);
        h.update(&buf[4..39]);
        assert_eq!(&buf[0..4], &h.finalize().to_le_bytes());
    }

    #[test]
    fn oversized_record_is_refused_and_leaves_buffer_unchanged() {
        let mut buf = Vec::new();
        let mut w = writer(&mut buf);
        w.metadata(b"m").unwrap();
        let before = w.buf.len();
        let big = Entry {
            data: Bytes::from(vec![0u8; 2000]),
            ..Entry::default()
        };
        assert!(matches!(
            w.entry(&big),
            Err(WalError::RecordTooLarge {
                len: 2017,
                max: 1024
            })
        ));
        assert_eq!(w.buf.len(), before);
    }

    #[test]
    fn absurd_length_is_rejected_without_allocation() {
        let mut buf = vec![0u8; 64];
        buf[0] = 1;
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(read_frame(&buf, 0, 0, 10 << 20), Frame::Bad(r) if r.contains("exceeds the limit"))
        );
        buf[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(
            matches!(read_frame(&buf, 0, 0, 10 << 20), Frame::Bad(r) if r.contains("past the end"))
        );
    }

    #[test]
    fn wrong_salt_fails_the_crc() {
        let mut buf = Vec::new();
        writer(&mut buf).metadata(b"m").unwrap();
        assert!(matches!(read_frame(&buf, 0, 1, 1024), Frame::Bad(r) if r.contains("CRC")));
    }

    #[test]
    fn zero_header_and_short_tails() {
        assert!(matches!(read_frame(&[0u8; 64], 0, 0, 1024), Frame::Zero));
        assert!(matches!(read_frame(&[0u8; 8], 0, 0, 1024), Frame::Zero));
        assert!(matches!(read_frame(&[1u8; 8], 0, 0, 1024), Frame::Bad(_)));
        assert!(matches!(read_frame(&[1u8; 8], 8, 0, 1024), Frame::Eof));
    }

    #[test]
    fn dirty_padding_is_detected() {
        let mut buf = Vec::new();
        writer(&mut buf).metadata(b"m").unwrap();
        let last = buf.len() - 1;
        buf[last] = 1;
        assert!(
            matches!(read_frame(&buf, 0, 0xdead_beef, 1024), Frame::Bad(r) if r.contains("padding"))
        );
    }

    #[test]
    fn lying_list_counts_are_rejected() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_payload(RecordType::Snapshot, &payload).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        let err = decode_payload(RecordType::HardState, &[0u8; 25]).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }
}
