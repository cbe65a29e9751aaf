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

/// The record as etcd stores it in its `key` bucket: `mvccpb.KeyValue` in protobuf, fields
/// in number order, zero values left out (gogo-protobuf's `Marshal`); a deletion's record
/// holds only the key (etcd writes `KeyValue{Key: key}` for a tombstone). HashKV hashes
/// these bytes, so its number is etcd's for the same history.
pub(crate) fn etcd_bytes(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes_field(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
        if !b.is_empty() {
            out.push(tag);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
    fn int_field(out: &mut Vec<u8>, tag: u8, v: i64) {
        if v != 0 {
            out.push(tag);
            varint(out, v as u64);
        }
    }
    let mut out = Vec::with_capacity(kv.key.len() + kv.value.len() + 40);
    bytes_field(&mut out, 0x0a, &kv.key);
    if !tombstone {
        int_field(&mut out, 0x10, kv.create_revision);
        int_field(&mut out, 0x18, kv.mod_revision);
        int_field(&mut out, 0x20, kv.version);
        bytes_field(&mut out, 0x2a, &kv.value);
        int_field(&mut out, 0x30, kv.lease);
    }
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

/// The record stored under `key` (a revision key, tombstone mark included) in etcd's
/// encoding: what etcd's `key` bucket holds for it (snapshots etcd's tools read).
pub fn record_to_etcd(key: &[u8], record: &[u8]) -> Result<Vec<u8>, MvccError> {
    let rk = crate::RevisionKey::from_bytes(key)?;
    Ok(etcd_bytes(&decode(record)?, rk.tombstone))
}

/// The record for a value of etcd's `key` bucket stored under `key`: decodes the
/// `mvccpb.KeyValue` protobuf (unknown fields skipped, as protobuf readers do) and checks
/// it against the revision key. A tombstone's value names only the key.
pub fn record_from_etcd(key: &[u8], value: &[u8]) -> Result<Vec<u8>, MvccError> {
    let rk = crate::RevisionKey::from_bytes(key)?;
    let kv = decode_mvccpb(value)?;
    if kv.key.is_empty() {
        return Err(MvccError::Corrupted(format!(
            "etcd record at revision {}: no key",
            rk.rev.main
        )));
    }
    let kv = if rk.tombstone {
        KeyValue::tombstone(&kv.key, rk.rev.main)
    } else {
        if kv.mod_revision != rk.rev.main {
            return Err(MvccError::Corrupted(format!(
                "etcd record at revision {}: mod revision {}",
                rk.rev.main, kv.mod_revision
            )));
        }
        kv
    };
    Ok(encode(&kv))
}

/// Decodes `mvccpb.KeyValue` protobuf bytes.
fn decode_mvccpb(mut b: &[u8]) -> Result<KeyValue, MvccError> {
    let corrupt = |why: &str| MvccError::Corrupted(format!("etcd key-value record: {why}"));
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut kv = KeyValue::default();
    while !b.is_empty() {
        let tag = varint(&mut b).ok_or_else(|| corrupt("truncated tag"))?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = varint(&mut b).ok_or_else(|| corrupt("truncated varint"))? as i64;
                match field {
                    2 => kv.create_revision = v,
                    3 => kv.mod_revision = v,
                    4 => kv.version = v,
                    6 => kv.lease = v,
                    _ => {}
                }
            }
            2 => {
                let len = varint(&mut b).ok_or_else(|| corrupt("truncated length"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= b.len())
                    .ok_or_else(|| corrupt("length beyond the record"))?;
                let (data, rest) = b.split_at(len);
                b = rest;
                match field {
                    1 => kv.key = data.to_vec(),
                    5 => kv.value = data.to_vec(),
                    _ => {}
                }
            }
            1 if b.len() >= 8 => b = &b[8..],
            5 if b.len() >= 4 => b = &b[4..],
            _ => return Err(corrupt(&format!("wire type {wire} of field {field}"))),
        }
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    // Goal: etcd's records convert to ours and back unchanged, tombstones included, and
    // malformed protobuf is an error.
    #[test]
    fn etcd_records_convert_both_ways() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"bar".to_vec(),
            lease: -7,
        };
        let key = crate::Revision::new(5, 1).to_bytes();
        let etcd = super::etcd_bytes(&kv, false);
        let ours = super::record_from_etcd(&key, &etcd).unwrap();
        assert_eq!(super::decode(&ours).unwrap(), kv);
        assert_eq!(super::record_to_etcd(&key, &ours).unwrap(), etcd);
        let mut tomb_key = key.to_vec();
        tomb_key.push(b't');
        let ours = super::record_from_etcd(&tomb_key, &[0x0a, 3, b'f', b'o', b'o']).unwrap();
        assert_eq!(
            super::decode(&ours).unwrap(),
            KeyValue::tombstone(b"foo", 5)
        );
        assert_eq!(
            super::record_to_etcd(&tomb_key, &ours).unwrap(),
            [0x0a, 3, b'f', b'o', b'o']
        );
        for bad in [&[0x0a, 9, b'f'][..], &[0x10][..], &[0x0b][..], &[][..]] {
            assert!(super::record_from_etcd(&key, bad).is_err(), "{bad:?}");
        }
        // A mod revision that is not the key's revision.
        assert!(super::record_from_etcd(&crate::Revision::new(6, 0).to_bytes(), &etcd).is_err());
    }

    // Goal: etcd's bytes for a put (checked against etcd 3.4.23's HashKV of one put of
    // foo=bar: CRC-32C of "key", the revision key and these bytes is 3305255506) and for
    // a deletion (the key alone).
    #[test]
    fn etcd_bytes_are_mvccpb_key_value() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"bar".to_vec(),
            lease: 0,
        };
        let mut want = vec![0x0a, 3];
        want.extend(b"foo");
        want.extend([0x10, 2, 0x18, 2, 0x20, 1, 0x2a, 3]);
        want.extend(b"bar");
        assert_eq!(super::etcd_bytes(&kv, false), want);
        let mut h = crate::crc32c::Crc32c::new();
        h.update(b"key");
        h.update(&crate::Revision::new(2, 0).to_bytes());
        h.update(&want);
        assert_eq!(h.finalize(), 3_305_255_506);
        let leased = KeyValue {
            lease: 0x694d_7a1b_2c3d_4e5f,
            ..kv.clone()
        };
        assert!(
            super::etcd_bytes(&leased, false)
                .ends_with(&[0x30, 0xdf, 0x9c, 0xf5, 0xe1, 0xb2, 0xc3, 0xde, 0xa6, 0x69])
        );
        let tomb = KeyValue::tombstone(b"foo", 7);
        assert_eq!(super::etcd_bytes(&tomb, true), [0x0a, 3, b'f', b'o', b'o']);
    }

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
