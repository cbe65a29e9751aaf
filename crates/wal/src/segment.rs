//! Segment files: their names, listing a directory, and reading one segment while telling a
//! torn tail (repairable) from corruption (fatal).
//!
//! Torn or corrupt? When a frame at offset X fails (bad CRC, impossible length, zeroed
//! header...), the segment is scanned past X for any valid frame whose `durable` field is
//! greater than X. Such a frame was written after an fsync had covered X, so the bytes at X
//! were once durable and are now damaged: that is corruption. If no such witness exists,
//! everything from X on was written after the last fsync the log can prove, was therefore
//! never acknowledged, and is a torn tail: it is zeroed. Sealed (non-last) segments are
//! fsynced before the next segment is created, so anything but trailing zeros after their
//! last record is corruption. Segment files never shrink below the size they were
//! preallocated to (recorded in their header), so a shorter file is corruption too.

use std::path::{Path, PathBuf};

use crate::error::{Result, WalError, io_err};
use crate::record::{
    ALIGN_BYTES, Frame, HEADER_BYTES, HEADER_SALT, RECORD_VERSION, Record, RecordType,
    decode_payload, read_frame,
};
use crate::vfs::Vfs;

pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// A segment being prepared; it gets its real name only once its prologue is durable.
pub(crate) const TMP_SUFFIX: &str = ".wal.tmp";

/// A segment's identity, as encoded in its name `%016x-%016x.wal` and in its header record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SegmentId {
    /// Consecutive from 0; a gap means a lost file.
    pub seq: u64,
    /// The index the next entry had when the segment was started: every entry in it has an
    /// index >= `first_index`, except entries that overwrite a conflicting suffix.
    pub first_index: u64,
}

impl SegmentId {
    pub fn file_name(&self) -> String {
        format!(
            "{:016x}-{:016x}{SEGMENT_SUFFIX}",
            self.seq, self.first_index
        )
    }

    pub fn parse(name: &str) -> Option<SegmentId> {
        let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
        let (seq, first) = stem.split_once('-')?;
        if seq.len() != 16 || first.len() != 16 {
            return None;
        }
        let hex = |s: &str| {
            if s.bytes().all(|b| b.is_ascii_hexdigit()) {
                u64::from_str_radix(s, 16).ok()
            } else {
                None
            }
        };
        Some(SegmentId {
            seq: hex(seq)?,
            first_index: hex(first)?,
        })
    }
}

/// The segments in `dir`, by sequence number. An empty list if the directory holds none;
/// `NotFound` if the directory does not exist.
pub(crate) fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<SegmentId>> {
    let names = vfs.list_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            WalError::NotFound {
                dir: dir.to_path_buf(),
            }
        } else {
            io_err("list", dir)(e)
        }
    })?;
    let mut segments = Vec::new();
    for name in names {
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let id = SegmentId::parse(&name).ok_or_else(|| WalError::Corrupt {
            file: dir.join(&name),
            offset: 0,
            reason: "file name is not <seq>-<first index>.wal in 16-digit hex".to_owned(),
        })?;
        segments.push(id);
    }
    segments.sort();
    for pair in segments.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(WalError::Corrupt {
                file: dir.join(pair[1].file_name()),
                offset: 0,
                reason: format!(
                    "sequence jumps from {} to {}: a segment is missing",
                    pair[0].seq, pair[1].seq
                ),
            });
        }
    }
    Ok(segments)
}

/// Names of leftover temporary segments (from a crash while cutting or creating).
pub(crate) fn list_tmp(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<PathBuf>> {
    let names = vfs.list_dir(dir).map_err(io_err("list", dir))?;
    Ok(names
        .into_iter()
        .filter(|n| n.ends_with(TMP_SUFFIX))
        .map(|n| dir.join(n))
        .collect())
}

/// Where reading a segment stopped.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Offset just past the last valid record: where the writer continues.
    pub end_offset: u64,
    /// The salt from the segment header, for frames the writer appends.
    pub salt: u32,
    /// Set when the valid records are followed by a torn write that must be zeroed.
    pub torn: Option<Torn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Torn {
    pub offset: u64,
    pub reason: String,
    /// Just past the last non-zero byte: repair zeroes `offset..dirty_end`.
    pub dirty_end: u64,
}

/// Reads consecutive `segments`, the last of which is the newest in the directory, handing
/// every record to `visit` with its file and offset. Besides each segment's own checks, a
/// segment must end at the index the next one starts from: sealed segments never lose
/// records at their end.
pub(crate) fn read_segments(
    vfs: &dyn Vfs,
    dir: &Path,
    segments: &[SegmentId],
    max_record_bytes: u32,
    visit: &mut dyn FnMut(&Path, u64, Record) -> Result<()>,
) -> Result<ScanEnd> {
    let mut end = None;
    for (i, seg) in segments.iter().enumerate() {
        let path = dir.join(seg.file_name());
        let data = vfs.read_file(&path).map_err(io_err("read", &path))?;
        // Mirrors the writer's last index, which names the next segment when it is cut.
        let mut last_index = seg.first_index.saturating_sub(1);
        let mut each = |offset: u64, record: Record| {
            match &record {
                Record::Entry(e) => last_index = e.index,
                Record::Snapshot(m) => last_index = last_index.max(m.index),
                _ => {}
            }
            visit(&path, offset, record)
        };
        let scanned = scan_segment(
            &path,
            &data,
            *seg,
            i + 1 == segments.len(),
            max_record_bytes,
            &mut each,
        )?;
        if let Some(next) = segments.get(i + 1)
            && last_index + 1 != next.first_index
        {
            return Err(WalError::Corrupt {
                file: path,
                offset: scanned.end_offset,
                reason: format!(
                    "segment ends at index {last_index} but the next one starts at index {}: records are missing",
                    next.first_index
                ),
            });
        }
        end = Some(scanned);
    }
    Ok(end.expect("read_segments needs at least one segment"))
}

/// Reads every record of one segment, in order, handing each to `visit` with its offset.
/// Records before a failure are visited before the error is returned, so the dump tool can
/// show everything up to the damage.
pub(crate) fn scan_segment(
    path: &Path,
    data: &[u8],
    id: SegmentId,
    is_last: bool,
    max_record_bytes: u32,
    visit: &mut dyn FnMut(u64, Record) -> Result<()>,
) -> Result<ScanEnd> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut off = 0usize;
    let mut salt = HEADER_SALT;
    let mut prealloc = 0u64;
    let mut count = 0usize;
    loop {
        let (reason, at_eof) = match read_frame(data, off, salt, max_record_bytes) {
            Frame::Valid {
                rtype,
                version,
                reserved,
                durable_offset,
                payload,
                next,
            } => {
                if version != RECORD_VERSION {
                    return Err(WalError::UnsupportedVersion {
                        file: path.to_path_buf(),
                        offset: off as u64,
                        version,
                    });
                }
                if reserved != 0 {
                    return Err(corrupt(
                        off,
                        format!("reserved header bytes are {reserved:#06x}, not zero"),
                    ));
                }
                if durable_offset > off as u64 {
                    return Err(corrupt(
                        off,
                        format!("record claims {durable_offset} durable bytes before itself"),
                    ));
                }
                let rtype = RecordType::from_code(rtype)
                    .ok_or_else(|| corrupt(off, format!("unknown record type {rtype}")))?;
                let record = decode_payload(rtype, payload).map_err(|r| corrupt(off, r))?;
                match (count, &record) {
                    (
                        0,
                        Record::SegmentHeader {
                            seq,
                            first_index,
                            salt: s,
                            prealloc_bytes,
                        },
                    ) => {
                        if *seq != id.seq || *first_index != id.first_index {
                            return Err(corrupt(
                                off,
                                format!(
                                    "segment header says seq {seq} first index {first_index}, the file name says seq {} first index {}",
                                    id.seq, id.first_index
                                ),
                            ));
                        }
                        salt = *s;
                        prealloc = *prealloc_bytes;
                    }
                    (0, other) => {
                        return Err(corrupt(
                            off,
                            format!(
                                "segment starts with a {} record",
                                other.record_type().name()
                            ),
                        ));
                    }
                    (1, Record::Metadata(_)) => {}
                    (1, other) => {
                        return Err(corrupt(
                            off,
                            format!(
                                "second record is {}, not metadata",
                                other.record_type().name()
                            ),
                        ));
                    }
                    (_, Record::SegmentHeader { .. } | Record::Metadata(_)) => {
                        return Err(corrupt(
                            off,
                            format!("{} record after the prologue", record.record_type().name()),
                        ));
                    }
                    _ => {}
                }
                visit(off as u64, record)?;
                count += 1;
                off = next;
                continue;
            }
            Frame::Eof => ("end of file".to_owned(), true),
            Frame::Zero => ("zeroed record header".to_owned(), false),
            Frame::Bad(reason) => (reason, false),
        };
        // Reading stops at `off`. A clean end, a torn tail, or corruption?
        if count < 2 {
            return Err(corrupt(
                off,
                format!(
                    "{reason} inside the segment prologue, which is fsynced before the segment is named"
                ),
            ));
        }
        if (data.len() as u64) < prealloc {
            return Err(corrupt(
                data.len(),
                format!(
                    "the file is {} bytes, shorter than the {prealloc} bytes it was preallocated to: it was truncated",
                    data.len()
                ),
            ));
        }
        if at_eof {
            return Ok(ScanEnd {
                end_offset: off as u64,
                salt,
                torn: None,
            });
        }
        if let Some(witness) = find_witness(data, off, salt, max_record_bytes) {
            return Err(corrupt(
                off,
                format!(
                    "{reason}; the record at offset {witness} was written after this offset had been fsynced"
                ),
            ));
        }
        let Some(last_nonzero) = data[off..].iter().rposition(|b| *b != 0) else {
            // Preallocated zeros: the log ends here.
            return Ok(ScanEnd {
                end_offset: off as u64,
                salt,
                torn: None,
            });
        };
        if !is_last {
            return Err(corrupt(
                off,
                format!("{reason} in a sealed segment (not the last one)"),
            ));
        }
        let dirty_end = (off + last_nonzero + 1) as u64;
        return Ok(ScanEnd {
            end_offset: off as u64,
            salt,
            torn: Some(Torn {
                offset: off as u64,
                reason,
                dirty_end,
            }),
        });
    }
}

/// The offset of a valid frame after `from` that was written when `from` was already
/// durable, if there is one.
fn find_witness(data: &[u8], from: usize, salt: u32, max_record_bytes: u32) -> Option<usize> {
    let mut p = from + ALIGN_BYTES;
    while p + HEADER_BYTES <= data.len() {
        // Skip zeros fast: preallocated space is most of a young segment.
        let nonzero = data[p..].iter().position(|b| *b != 0)?;
        let z = p + nonzero;
        // The first aligned header that contains byte z; it is never before p or after z.
        let candidate = (z + 1)
            .saturating_sub(HEADER_BYTES)
            .next_multiple_of(ALIGN_BYTES)
            .max(p);
        p = candidate;
        if p + HEADER_BYTES > data.len() {
            return None;
        }
        match read_frame(data, p, salt, max_record_bytes) {
            Frame::Valid {
                durable_offset,
                next,
                ..
            } => {
                if durable_offset > from as u64 && durable_offset <= p as u64 {
                    return Some(p);
                }
                p = next;
            }
            _ => p += ALIGN_BYTES,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_lookalikes() {
        let id = SegmentId {
            seq: 0x1f,
            first_index: 0xabc,
        };
        assert_eq!(id.file_name(), "000000000000001f-0000000000000abc.wal");
        assert_eq!(SegmentId::parse(&id.file_name()), Some(id));
        for bad in [
            "1f-abc.wal",
            "000000000000001f-0000000000000abc.wal.tmp",
            "000000000000001g-0000000000000abc.wal",
            "000000000000001f_0000000000000abc.wal",
            "+00000000000001f-0000000000000abc.wal",
        ] {
            assert_eq!(SegmentId::parse(bad), None, "{bad}");
        }
    }
}
