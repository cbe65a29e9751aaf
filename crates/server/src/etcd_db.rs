//! etcd's backend, as etcd's tools and etcd itself read it: the store exported as a bbolt
//! file laid out exactly as etcd 3.4's (`Maintenance.Snapshot`, so `etcdctl snapshot
//! status` and `snapshot restore` take retcd's snapshots).
//!
//! retcd's buckets are etcd's, by name; most hold etcd's encodings already (the revision
//! keys of `key`, `meta`, the auth buckets). The others are translated pair by pair:
//!
//! | bucket | retcd | etcd |
//! |---|---|---|
//! | `key` values | retcd's record | `mvccpb.KeyValue` protobuf (a tombstone: the key alone) |
//! | `lease` values | TTL, wall clock, index | `leasepb.Lease` protobuf: ID, TTL |
//! | `alarm` keys | member id, alarm type (12 bytes) | `AlarmMember` protobuf |
//! | `members` | 16 hex digits -> `membershippb.Member` | hex id without leading zeros -> JSON |
//! | `members_removed` keys | 16 hex digits | hex id without leading zeros |
//! | `meta` | also `retcd_join_peers` | that key left out |
//!
//! `key`, `lease` and `meta` keep their key order under translation and stream; the
//! small buckets whose keys change (alarms, members) are sorted in memory.
//!
//! The way back (`restore.rs`, etcd's file into retcd's buckets) uses the decoders here
//! and `retcd_mvcc::record_from_etcd`.

use std::io::{self, Write};
use std::ops::ControlFlow;

use prost::Message as _;
use retcd_api::etcdserverpb::AlarmMember;
use retcd_backend::{Bucket, ReadTx};

use crate::membership::Member;

/// etcd's buckets in bbolt's order (bytewise by name), each with retcd's.
pub const BUCKETS: [Bucket; 10] = [
    Bucket::Alarm,
    Bucket::Auth,
    Bucket::AuthRoles,
    Bucket::AuthUsers,
    Bucket::Cluster,
    Bucket::Key,
    Bucket::Lease,
    Bucket::Members,
    Bucket::MembersRemoved,
    Bucket::Meta,
];

/// etcd's page size on Linux (the OS page size), which its snapshots have.
pub const PAGE_SIZE: u32 = 4096;

/// The bytes of a snapshot message etcd sends (`snapshotSendBufferSize`).
pub const CHUNK: usize = 32 * 1024;

/// Meta keys that are retcd's own and stay out of an etcd file.
const RETCD_ONLY_META: &[&[u8]] = &[crate::node::JOIN_PEERS_KEY];

/// etcd's `leasepb.Lease`, the value of its `lease` bucket.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's `alarm` key for retcd's: `AlarmMember{memberID, alarm}` in protobuf.
pub fn alarm_key_to_etcd(key: &[u8]) -> io::Result<Vec<u8>> {
    let (Ok(member), Ok(alarm)) = (
        <[u8; 8]>::try_from(key.get(..8).unwrap_or_default()),
        <[u8; 4]>::try_from(key.get(8..).unwrap_or_default()),
    ) else {
        return Err(corrupt("an alarm key is not 12 bytes"));
    };
    Ok(AlarmMember {
        member_id: u64::from_be_bytes(member),
        alarm: i32::from_be_bytes(alarm),
    }
    .encode_to_vec())
}

/// retcd's (member id, alarm type) for one of etcd's `alarm` keys.
pub fn alarm_from_etcd(key: &[u8]) -> Option<(u64, i32)> {
    AlarmMember::decode(key)
        .ok()
        .map(|a| (a.member_id, a.alarm))
}

/// etcd's `lease` value for retcd's record: `leasepb.Lease{ID, TTL}` in protobuf.
pub fn lease_to_etcd(key: &[u8], value: &[u8]) -> io::Result<Vec<u8>> {
    let r = retcd_lease::record::decode(key, value).map_err(|e| corrupt(&e.to_string()))?;
    Ok(EtcdLease {
        id: r.id.0,
        ttl: r.ttl,
        remaining_ttl: 0,
    }
    .encode_to_vec())
}

/// (ID, TTL) of one of etcd's `lease` pairs, whose key must be the id.
pub fn lease_from_etcd(key: &[u8], value: &[u8]) -> Option<(i64, i64)> {
    let id = i64::from_be_bytes(key.try_into().ok()?);
    let lease = EtcdLease::decode(value).ok()?;
    (lease.id == id).then_some((id, lease.ttl))
}

/// A string as Go's `encoding/json` writes it (`<`, `>` and `&` escaped too).
fn go_json_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("a string serializes")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn go_json_strings(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| go_json_string(s)).collect();
    format!("[{}]", items.join(","))
}

/// etcd's `members` key and value for a member: its id in hex, and the JSON etcd 3.4's
/// membership store writes (`id`, `peerURLs`, then `isLearner`, `name` and
/// `clientURLs` when set).
pub fn member_to_etcd(m: &Member) -> (Vec<u8>, Vec<u8>) {
    let mut json = format!(
        "{{\"id\":{},\"peerURLs\":{}",
        m.id.0,
        go_json_strings(&m.peer_urls)
    );
    if m.is_learner {
        json.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        json.push_str(&format!(",\"name\":{}", go_json_string(&m.name)));
    }
    if !m.client_urls.is_empty() {
        json.push_str(&format!(
            ",\"clientURLs\":{}",
            go_json_strings(&m.client_urls)
        ));
    }
    json.push('}');
    (format!("{:x}", m.id.0).into_bytes(), json.into_bytes())
}

fn corrupt(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

fn backend(e: retcd_backend::BackendError) -> io::Error {
    io::Error::other(e.to_string())
}

/// What [`Export`] hands each pair of a bucket to.
type PairFn<'f> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'f;

/// The pairs of one read transaction in etcd's buckets and encodings, for
/// [`retcd_bbolt::Plan`] (which scans twice; the transaction makes both scans agree).
pub struct Export<'t, T: ReadTx> {
    pub tx: &'t T,
}

impl<T: ReadTx> Export<'_, T> {
    /// Every pair of `bucket` translated, in retcd's key order, to `f`.
    fn each(&self, bucket: Bucket, f: &mut PairFn<'_>) -> io::Result<()> {
        let mut failed = None;
        self.tx
            .scan(bucket, &[], None, &mut |k, v| match f(k, v) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            })
            .map_err(backend)?;
        failed.map_or(Ok(()), Err)
    }
}

impl<T: ReadTx> retcd_bbolt::Pairs for Export<'_, T> {
    fn scan(&mut self, f: &mut retcd_bbolt::PairSink<'_>) -> io::Result<()> {
        for bucket in BUCKETS {
            let name = bucket.name().as_bytes();
            match bucket {
                Bucket::Key => self.each(bucket, &mut |k, v| {
                    let etcd =
                        retcd_mvcc::record_to_etcd(k, v).map_err(|e| corrupt(&e.to_string()))?;
                    f(name, k, &etcd)
                })?,
                Bucket::Lease => {
                    self.each(bucket, &mut |k, v| f(name, k, &lease_to_etcd(k, v)?))?
                }
                Bucket::Meta => self.each(bucket, &mut |k, v| {
                    if RETCD_ONLY_META.contains(&k) {
                        return Ok(());
                    }
                    f(name, k, v)
                })?,
                Bucket::Alarm | Bucket::Members | Bucket::MembersRemoved => {
                    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                    self.each(bucket, &mut |k, v| {
                        pairs.push(match bucket {
                            Bucket::Alarm => (alarm_key_to_etcd(k)?, Vec::new()),
                            Bucket::Members => {
                                let m = Member::decode(v)
                                    .map_err(|e| corrupt(&format!("a member record: {e}")))?;
                                member_to_etcd(&m)
                            }
                            _ => {
                                let id = std::str::from_utf8(k)
                                    .ok()
                                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                                    .ok_or_else(|| corrupt("a removed member's key"))?;
                                (format!("{id:x}").into_bytes(), b"removed".to_vec())
                            }
                        });
                        Ok(())
                    })?;
                    pairs.sort();
                    for (k, v) in pairs {
                        f(name, &k, &v)?;
                    }
                }
                Bucket::Auth | Bucket::AuthRoles | Bucket::AuthUsers | Bucket::Cluster => {
                    self.each(bucket, &mut |k, v| f(name, k, v))?
                }
            }
        }
        Ok(())
    }
}

/// The etcd bucket names, in order, as [`retcd_bbolt::Plan::new`] takes them.
pub fn bucket_names() -> Vec<Vec<u8>> {
    BUCKETS
        .iter()
        .map(|b| b.name().as_bytes().to_vec())
        .collect()
}

/// Cuts a stream of bytes into etcd's snapshot messages: `CHUNK` bytes each with the
/// bytes still to come after it, then the SHA-256 of everything as a last message.
pub struct Chunker<F: FnMut(Vec<u8>, u64) -> io::Result<()>> {
    send: F,
    total: u64,
    sent: u64,
    buf: Vec<u8>,
    sha: ring::digest::Context,
}

impl<F: FnMut(Vec<u8>, u64) -> io::Result<()>> Chunker<F> {
    /// A chunker for `total` bytes; `send(blob, remaining_bytes)` sends one message.
    pub fn new(total: u64, send: F) -> Self {
        Chunker {
            send,
            total,
            sent: 0,
            buf: Vec::with_capacity(CHUNK),
            sha: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.sent += blob.len() as u64;
        let remaining = self.total.saturating_sub(self.sent);
        (self.send)(blob, remaining)
    }

    /// Sends what is left and the SHA-256 message; fails if the bytes were not `total`.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush_chunk()?;
        if self.sent != self.total {
            return Err(io::Error::other(format!(
                "the snapshot is {} bytes where {} were announced",
                self.sent, self.total
            )));
        }
        let digest = self.sha.finish();
        (self.send)(digest.as_ref().to_vec(), 0)
    }
}

impl<F: FnMut(Vec<u8>, u64) -> io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.sha.update(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streams the store as of `tx` as an etcd backend file in etcd's snapshot messages:
/// `send(blob, remaining_bytes)` for each, the SHA-256 last. Lays the file out first
/// (a pass over the data), then writes it (a second pass), one page and one message in
/// memory at a time. Returns the file's size.
pub fn stream_etcd_db<T: ReadTx>(
    tx: &T,
    send: impl FnMut(Vec<u8>, u64) -> io::Result<()>,
) -> io::Result<u64> {
    let plan = retcd_bbolt::Plan::new(PAGE_SIZE, bucket_names(), &mut Export { tx })?;
    let mut chunker = Chunker::new(plan.size(), send);
    plan.write(&mut Export { tx }, &mut chunker)?;
    chunker.finish()?;
    Ok(plan.size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MemberId;

    // Goal: the translations write what etcd 3.4 writes for the same things.
    #[test]
    fn translations_match_etcds_encodings() {
        let mut key = 7u64.to_be_bytes().to_vec();
        key.extend(2i32.to_be_bytes());
        assert_eq!(alarm_key_to_etcd(&key).unwrap(), [0x08, 7, 0x10, 2]);
        let mut key = 0u64.to_be_bytes().to_vec();
        key.extend(2i32.to_be_bytes());
        // 3.4.23's corruption alarm (member 0).
        assert_eq!(alarm_key_to_etcd(&key).unwrap(), [0x10, 2]);
        assert!(alarm_key_to_etcd(b"short").is_err());
        let m = Member {
            id: MemberId(10501334649042878790),
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        };
        let (k, v) = member_to_etcd(&m);
        assert_eq!(k, b"91bc3c398fb3c146");
        assert_eq!(
            String::from_utf8(v).unwrap(),
            r#"{"id":10501334649042878790,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
        );
        let learner = Member {
            name: String::new(),
            client_urls: vec![],
            is_learner: true,
            peer_urls: vec!["http://a<b".into()],
            ..m
        };
        assert_eq!(
            String::from_utf8(member_to_etcd(&learner).1).unwrap(),
            r#"{"id":10501334649042878790,"peerURLs":["http://a\u003cb"],"isLearner":true}"#
        );
        let record = retcd_lease::record::Record {
            id: retcd_lease::LeaseId(0x1234),
            ttl: 60,
            wall_ms: 5,
            renewed_index: 9,
        };
        let (k, v) = (
            retcd_lease::record::key(record.id),
            retcd_lease::record::encode(&record),
        );
        assert_eq!(lease_to_etcd(&k, &v).unwrap(), [0x08, 0xb4, 0x24, 0x10, 60]);
    }

    // Goal: messages are CHUNK bytes with the bytes still to come, then the SHA-256.
    #[test]
    fn chunks_as_etcd_sends_them() {
        let data: Vec<u8> = (0..CHUNK * 2 + 100).map(|i| i as u8).collect();
        let mut got: Vec<(usize, u64)> = Vec::new();
        let mut blobs = Vec::new();
        let mut c = Chunker::new(data.len() as u64, |blob, remaining| {
            got.push((blob.len(), remaining));
            blobs.push(blob);
            Ok(())
        });
        c.write_all(&data).unwrap();
        c.finish().unwrap();
        assert_eq!(
            got,
            [
                (CHUNK, (CHUNK + 100) as u64),
                (CHUNK, 100),
                (100, 0),
                (32, 0)
            ]
        );
        let sha = ring::digest::digest(&ring::digest::SHA256, &data);
        assert_eq!(blobs[3], sha.as_ref());
        assert_eq!(blobs[..3].concat(), data);
        let mut short = Chunker::new(10, |_, _| Ok(()));
        short.write_all(b"abc").unwrap();
        assert!(short.finish().is_err());
    }

    // Goal: the decoders read what the snapshot's encoders write.
    #[test]
    fn etcd_encodings_round_trip() {
        let mut key = 7u64.to_be_bytes().to_vec();
        key.extend(2i32.to_be_bytes());
        let etcd = alarm_key_to_etcd(&key).unwrap();
        assert_eq!(alarm_from_etcd(&etcd), Some((7, 2)));
        assert_eq!(alarm_from_etcd(&[0x10, 2]), Some((0, 2)));
        assert_eq!(alarm_from_etcd(&[0x0a, 1, 0]), None);
        let r = retcd_lease::record::Record {
            id: retcd_lease::LeaseId(-5),
            ttl: 60,
            wall_ms: 0,
            renewed_index: 0,
        };
        let k = retcd_lease::record::key(r.id);
        let v = lease_to_etcd(&k, &retcd_lease::record::encode(&r)).unwrap();
        assert_eq!(lease_from_etcd(&k, &v), Some((-5, 60)));
        assert_eq!(lease_from_etcd(&1i64.to_be_bytes(), &v), None);
        assert_eq!(lease_from_etcd(b"short", &v), None);
    }
}
