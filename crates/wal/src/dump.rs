//! Reading a WAL directory for people: every record of every segment, in order, with where
//! it lives, formatted in columns like etcd-dump-logs. Read-only and lock-free, so it works
//! on a live member's directory and on a damaged one (it shows everything up to the damage,
//! then the error).
//!
//! Entry payloads are opaque here; the caller passes a decoder (`Fn(&[u8]) -> String`), so
//! the server crate can plug in its request decoding without this crate knowing the wire
//! types. [`hex_data`] and [`text_or_hex`] are the decoders this crate offers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use retcd_raft::EntryType;

use crate::error::{Result, WalError};
use crate::record::{Record, RecordType};
use crate::segment::{list_segments, read_segments};
use crate::wal::{TornTail, WalOptions};

/// One record and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpRecord {
    pub file: PathBuf,
    pub offset: u64,
    pub record: Record,
}

/// Visits every record of the WAL in `dir`, oldest first. Returns the torn tail if the log
/// ends in one. On corruption, the records before it have been visited and the error is
/// returned.
pub fn read_records(
    dir: impl AsRef<Path>,
    opts: &WalOptions,
    visit: &mut dyn FnMut(DumpRecord),
) -> Result<Option<TornTail>> {
    let dir = dir.as_ref();
    let vfs = opts.vfs.as_ref();
    let segments = list_segments(vfs, dir)?;
    if segments.is_empty() {
        return Err(WalError::NotFound {
            dir: dir.to_path_buf(),
        });
    }
    let mut each = |file: &Path, offset: u64, record: Record| {
        visit(DumpRecord {
            file: file.to_path_buf(),
            offset,
            record,
        });
        Ok(())
    };
    let end = read_segments(vfs, dir, &segments, opts.max_record_bytes, &mut each)?;
    let tail = dir.join(segments.last().expect("not empty").file_name());
    Ok(end.torn.map(|t| TornTail {
        file: tail,
        offset: t.offset,
        reason: t.reason,
    }))
}

/// The column header matching [`format_record`].
pub fn header_line() -> String {
    format!("{:>10}\t{:>12}\t{:<9}\t{}", "term", "index", "type", "data")
}

fn entry_type_name(t: EntryType) -> &'static str {
    match t {
        EntryType::Normal => "norm",
        EntryType::ConfChange => "conf",
        EntryType::ConfChangeV2 => "confv2",
    }
}

/// One line: term, index, type and data. Entries show `decode(data)`; other records show
/// their fields. Records without a term or index show `-`.
pub fn format_record(r: &DumpRecord, decode: &dyn Fn(&[u8]) -> String) -> String {
    let dash = || "-".to_owned();
    let (term, index, kind, data) = match &r.record {
        Record::SegmentHeader {
            seq,
            first_index,
            prealloc_bytes,
            ..
        } => (
            dash(),
            dash(),
            RecordType::SegmentHeader.name().to_owned(),
            format!(
                "seq={seq} first_index={first_index} prealloc_bytes={prealloc_bytes} file={}",
                r.file.display()
            ),
        ),
        Record::Metadata(m) => (
            dash(),
            dash(),
            RecordType::Metadata.name().to_owned(),
            hex_data(m),
        ),
        Record::Entry(e) => (
            e.term.to_string(),
            e.index.to_string(),
            entry_type_name(e.entry_type).to_owned(),
            decode(&e.data),
        ),
        Record::HardState(hs) => (
            hs.term.to_string(),
            hs.commit.to_string(),
            RecordType::HardState.name().to_owned(),
            format!("vote={} commit={}", hs.vote, hs.commit),
        ),
        Record::Snapshot(m) => {
            let cs = &m.conf_state;
            (
                m.term.to_string(),
                m.index.to_string(),
                RecordType::Snapshot.name().to_owned(),
                format!(
                    "voters={:?} learners={:?} voters_outgoing={:?} learners_next={:?} auto_leave={}",
                    cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next, cs.auto_leave
                ),
            )
        }
    };
    format!("{term:>10}\t{index:>12}\t{kind:<9}\t{data}")
}

/// Lower-case hex, as etcd-dump-logs prints undecodable data.
pub fn hex_data(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        write!(s, "{b:02x}").expect("writing to a String cannot fail");
    }
    s
}

/// Printable UTF-8 as a quoted string, anything else as hex.
pub fn text_or_hex(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => hex_data(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use retcd_raft::{Entry, HardState};

    #[test]
    fn formats_columns_and_uses_the_decoder_for_entries() {
        let rec = |record| DumpRecord {
            file: PathBuf::from("/w/x.wal"),
            offset: 0,
            record,
        };
        let e = Entry {
            term: 3,
            index: 42,
            entry_type: EntryType::Normal,
            data: Bytes::from_static(b"\x01\x02"),
        };
        let line = format_record(&rec(Record::Entry(e)), &|d| format!("decoded:{}", d.len()));
        assert_eq!(
            line,
            format!("{:>10}\t{:>12}\t{:<9}\t{}", 3, 42, "norm", "decoded:2")
        );
        let hs = HardState {
            term: 4,
            vote: 2,
            commit: 40,
        };
        let line = format_record(&rec(Record::HardState(hs)), &hex_data);
        assert!(line.ends_with("hardstate\tvote=2 commit=40"), "{line}");
        assert_eq!(hex_data(&[0, 0xab]), "00ab");
        assert_eq!(text_or_hex(b"put foo"), "\"put foo\"");
        assert_eq!(text_or_hex(b"\x00a"), "0061");
    }
}
