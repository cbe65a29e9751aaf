//! The key-value record (etcd's `mvccpb.KeyValue`) and its encoding in the `key` bucket.

use crate::MvccError;

/// One version of a key, as `mvccpb.KeyValue` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the put that created the key's current generation (0 on a deletion).
    pub create_revision: i64,
    /// Revision of this version.
    pub mod_revision: i64,
    /// Number of puts in the key's current generation up to this one; 0 on a deletion.
    pub version: i64,
    /// The value (empty on a deletion).
    pub value: Vec<u8>,
    /// Lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// The record a deletion of `key` at revision `main` leaves: only key and mod revision set,
    /// as etcd reports it in DELETE events.
    pub fn tombstone(key: &[u8], main: i64) -> Self {
        Self {
            key: key.to_vec(),
            mod_revision: main,
            ..Self::default()
        }
    }
}

/// Version byte that opens every record.
const RECORD_FORMAT: u8 = 1;
const HEADER_BYTES: usize = 1 + 4 * 8 + 4;

/// Encodes a record: format byte, then big-endian create, mod, version, lease (i64 each),
/// key length (u32), key, value (the rest).
pub(crate) fn encode(kv: &KeyValue) -> Vec<u8> {
    let key_len = u32::try_from(kv.key.len()).expect("keys are bounded by the request size limit");
    let mut out = Vec::with_capacity(HEADER_BYTES + kv.key.len() + kv.value.len());
    out.push(RECORD_FORMAT);
    for field in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(&kv.key);
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes [`encode`].
pub(crate) fn decode(bytes: &[u8]) -> Result<KeyValue, MvccError> {
    let corrupt = |why: &str| MvccError::Corrupted(format!("key-value record: {why}"));
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt("shorter than its header"));
    }
    if bytes[0] != RECORD_FORMAT {
        return Err(corrupt(&format!("unknown format {}", bytes[0])));
    }
    let field =
        |i: usize| i64::from_be_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
    let key_len = u32::from_be_bytes(bytes[33..37].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[HEADER_BYTES..];
    if key_len > rest.len() {
        return Err(corrupt("key length beyond the record"));
    }
    Ok(KeyValue {
        key: rest[..key_len].to_vec(),
        create_revision: field(0),
        mod_revision: field(1),
        version: field(2),
        value: rest[key_len..].to_vec(),
        lease: field(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let kv = KeyValue {
            key: b"k\0ey".to_vec(),
            create_revision: 2,
            mod_revision: 9,
            version: 4,
            value: b"\xffvalue".to_vec(),
            lease: -5,
        };
        assert_eq!(decode(&encode(&kv)).unwrap(), kv);
        let empty = KeyValue::tombstone(b"", 3);
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn rejects_damaged_records() {
        let good = encode(&KeyValue {
            key: b"key".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        let mut wrong_format = good.clone();
        wrong_format[0] = 9;
        let mut long_key = good.clone();
        long_key[36] = 200;
        for bad in [&good[..10], &wrong_format[..], &long_key[..]] {
            assert!(matches!(decode(bad), Err(MvccError::Corrupted(_))));
        }
    }
}
