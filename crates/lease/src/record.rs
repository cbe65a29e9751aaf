//! The replicated part of a lease and its encoding in the backend's `lease` bucket.
//!
//! Key: the lease id, 8 bytes big-endian (two's complement, as etcd's). Value: a format
//! byte (1), then TTL (i64), wall clock in ms (i64) and renewed index (u64), each 8 bytes
//! big-endian: 25 bytes. `docs/storage-format.md` describes the bucket.

use crate::LeaseId;

/// Format byte of a lease record.
const FORMAT: u8 = 1;
/// Bytes of an encoded record.
const LEN: usize = 25;

/// What every member knows of a lease, identically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: LeaseId,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// Proposer's wall clock at the grant or last renewal, ms since the Unix epoch.
    pub wall_ms: i64,
    /// Raft index of the entry that granted or last renewed the lease.
    pub renewed_index: u64,
}

/// A stored record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease record: {0}")]
pub struct RecordError(&'static str);

/// The backend key of lease `id`.
pub fn key(id: LeaseId) -> [u8; 8] {
    id.0.to_be_bytes()
}

/// The backend value of `r`.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN);
    out.push(FORMAT);
    out.extend_from_slice(&r.ttl.to_be_bytes());
    out.extend_from_slice(&r.wall_ms.to_be_bytes());
    out.extend_from_slice(&r.renewed_index.to_be_bytes());
    out
}

/// The record stored under `key` with `value`.
pub fn decode(key: &[u8], value: &[u8]) -> Result<Record, RecordError> {
    let id: [u8; 8] = key
        .try_into()
        .map_err(|_| RecordError("key is not 8 bytes"))?;
    if value.len() != LEN || value[0] != FORMAT {
        return Err(RecordError("unknown format"));
    }
    let word = |i: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(&value[1 + 8 * i..9 + 8 * i]);
        w
    };
    Ok(Record {
        id: LeaseId(i64::from_be_bytes(id)),
        ttl: i64::from_be_bytes(word(0)),
        wall_ms: i64::from_be_bytes(word(1)),
        renewed_index: u64::from_be_bytes(word(2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: records round-trip, negative ids included; anything else is refused.
    #[test]
    fn round_trip_and_refusals() {
        let r = Record {
            id: LeaseId(-7),
            ttl: 30,
            wall_ms: 1_700_000_000_000,
            renewed_index: 42,
        };
        assert_eq!(decode(&key(r.id), &encode(&r)), Ok(r));
        assert!(decode(&[1, 2], &encode(&r)).is_err());
        assert!(decode(&key(r.id), &encode(&r)[..24]).is_err());
        let mut other_format = encode(&r);
        other_format[0] = 2;
        assert!(decode(&key(r.id), &other_format).is_err());
    }
}
