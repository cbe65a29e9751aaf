//! The writer's files read back through the reader, pass its check, and hold exactly the
//! data written: empty buckets, one pair, many pages (branch levels), values larger than
//! a page (overflow), and every supported page size. Seeded; the seed is printed.

use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;

mod common;

use common::{Data, FromMap, write};
use retcd_bbolt::{Db, PairSink, Pairs, Plan, Visit};
use retcd_prng::SplitMix64;

fn read(file: Vec<u8>) -> Data {
    let db = Db::open(file).expect("open");
    assert_eq!(db.check(10), Vec::<String>::new());
    let mut data = Data::new();
    let mut current: Option<Vec<u8>> = None;
    db.walk(&mut |v| {
        match v {
            Visit::Enter(name) => {
                assert!(current.is_none(), "nested bucket");
                data.insert(name.to_vec(), BTreeMap::new());
                current = Some(name.to_vec());
            }
            Visit::Leave => current = None,
            Visit::Pair(k, v) => {
                let b = current.as_ref().expect("pair outside a bucket");
                data.get_mut(b).unwrap().insert(k.to_vec(), v.to_vec());
            }
        }
        ControlFlow::Continue(())
    })
    .expect("walk");
    data
}

fn etcd_buckets() -> Data {
    [
        "alarm",
        "auth",
        "authRoles",
        "authUsers",
        "cluster",
        "key",
        "lease",
        "members",
        "members_removed",
        "meta",
    ]
    .iter()
    .map(|n| (n.as_bytes().to_vec(), BTreeMap::new()))
    .collect()
}

// Goal: empty buckets, and a file with no buckets at all, round-trip.
#[test]
fn empty_files_and_buckets() {
    assert_eq!(read(write(&Data::new(), 4096)), Data::new());
    let data = etcd_buckets();
    let file = write(&data, 4096);
    // 2 meta + 10 empty leaves + root leaf + freelist.
    assert_eq!(file.len(), 14 * 4096);
    assert_eq!(read(file), data);
}

// Goal: seeded data of every shape round-trips at every page size: many small pairs
// (several branch levels at small pages), values larger than a page, long keys.
#[test]
fn seeded_data_round_trips() {
    let seed = std::env::var("RETCD_BBOLT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b017);
    eprintln!("seed {seed} (RETCD_BBOLT_SEED)");
    let mut rng = SplitMix64::new(seed);
    for page_size in [512u32, 1024, 4096, 16384, 65536] {
        let mut data = etcd_buckets();
        for (i, pairs) in data.values_mut().enumerate() {
            let n = match i {
                5 => 3000,
                0 | 4 => 0,
                _ => rng.below(200) as usize,
            };
            for j in 0..n {
                let mut key = (j as u64 * 7919).to_be_bytes().to_vec();
                key.extend(std::iter::repeat_n(b'k', rng.below(40) as usize));
                let len = if rng.chance(1, 50) {
                    rng.below(3 * u64::from(page_size)) as usize
                } else {
                    rng.below(300) as usize
                };
                let value: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
                pairs.insert(key, value);
            }
        }
        let file = write(&data, page_size);
        assert_eq!(read(file), data, "page size {page_size}, seed {seed}");
    }
}

// Goal: a value far larger than a page, alone and among small ones.
#[test]
fn overflow_values() {
    let mut data = etcd_buckets();
    let big = vec![7u8; 100_000];
    let pairs = data.get_mut(b"key".as_slice()).unwrap();
    pairs.insert(b"a".to_vec(), b"small".to_vec());
    pairs.insert(b"b".to_vec(), big);
    pairs.insert(b"c".to_vec(), b"small".to_vec());
    assert_eq!(read(write(&data, 4096)), data);
}

// Goal: data that changes between the two passes fails the write instead of writing a
// file that does not match its plan.
#[test]
fn data_changed_between_passes_is_an_error() {
    let mut data = etcd_buckets();
    data.get_mut(b"key".as_slice())
        .unwrap()
        .insert(b"k".to_vec(), b"v".to_vec());
    let names: Vec<Vec<u8>> = data.keys().cloned().collect();
    let plan = Plan::new(4096, names, &mut FromMap(&data)).unwrap();
    data.get_mut(b"key".as_slice())
        .unwrap()
        .insert(b"l".to_vec(), b"v".to_vec());
    let err = plan
        .write(&mut FromMap(&data), &mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
}

// Goal: out-of-order input is refused at planning.
#[test]
fn unordered_input_is_refused() {
    struct Unordered;
    impl Pairs for Unordered {
        fn scan(&mut self, f: &mut PairSink<'_>) -> io::Result<()> {
            f(b"key", b"b", b"")?;
            f(b"key", b"a", b"")
        }
    }
    let err = Plan::new(4096, vec![b"key".to_vec()], &mut Unordered).unwrap_err();
    assert!(err.to_string().contains("ascending"), "{err}");
    let err = Plan::new(4096, vec![b"b".to_vec(), b"a".to_vec()], &mut Unordered).unwrap_err();
    assert!(err.to_string().contains("ascending"), "{err}");
}
