//! Hostile files: valid files mutated by a seeded generator (bytes flipped anywhere, in
//! page headers and elements, in meta pages with the checksum recomputed so the damage
//! gets past it; files truncated or extended) are opened, walked and checked. Each must
//! give an answer or an error: no panic, no hang (every walk reads each page at most
//! once, so it ends), and no reading (hence no allocation) beyond the file: bytes read
//! per walk are bounded by the file's length.
//!
//! `RETCD_BBOLT_HOSTILE` files (default 10,000, half a second; a soak: 1,000,000), seeds from
//! `RETCD_BBOLT_SEED`; the seed of a failing file is printed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::ops::ControlFlow;

use retcd_bbolt::format::{META, Meta, PAGE_HEADER};
use retcd_bbolt::{Db, Source};
use retcd_prng::SplitMix64;

mod common;

use common::{Data, write};

struct Counting<'a> {
    data: &'a [u8],
    read: &'a Cell<u64>,
}

impl Source for Counting<'_> {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read.set(self.read.get() + buf.len() as u64);
        self.data.read_exact_at(buf, offset)
    }
}

/// A valid file of small pages: a few buckets, a tree three levels deep, an overflow.
fn valid_file() -> Vec<u8> {
    let mut data = Data::new();
    for name in ["alarm", "key", "lease", "meta"] {
        data.insert(name.as_bytes().to_vec(), BTreeMap::new());
    }
    let key = data.get_mut(b"key".as_slice()).unwrap();
    for i in 0u64..600 {
        key.insert(i.to_be_bytes().to_vec(), vec![b'v'; (i % 50) as usize]);
    }
    key.insert(b"zz-big".to_vec(), vec![1; 3000]);
    data.get_mut(b"meta".as_slice())
        .unwrap()
        .insert(b"consistent_index".to_vec(), 9u64.to_be_bytes().to_vec());
    write(&data, 512)
}

fn mutate(file: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut f = file.to_vec();
    let ps = 512usize;
    match rng.below(6) {
        // Bytes anywhere.
        0 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(f.len() as u64) as usize;
                f[at] = rng.below(256) as u8;
            }
        }
        // Page headers and the first elements of pages.
        1 | 2 => {
            for _ in 0..1 + rng.below(4) {
                let page = 2 + rng.below((f.len() / ps - 2) as u64) as usize;
                let at = page * ps + rng.below(64) as usize;
                f[at] = match rng.below(4) {
                    0 => 0xFF,
                    1 => 0,
                    _ => rng.below(256) as u8,
                };
            }
        }
        // A meta field, checksum recomputed so that the meta is believed.
        3 => {
            let page = rng.below(2) as usize;
            let body = page * ps + PAGE_HEADER;
            let at = body + rng.below(56) as usize;
            f[at] = rng.below(256) as u8;
            if rng.chance(1, 2) {
                // Make it the newer one.
                f[body + 48..body + 56].copy_from_slice(&9u64.to_le_bytes());
            }
            let sum = Meta::sum(&f[body..body + META]);
            f[body + 56..body + 64].copy_from_slice(&sum.to_le_bytes());
        }
        // Truncated.
        4 => {
            let len = rng.below(f.len() as u64) as usize;
            f.truncate(len);
        }
        // Extended with garbage, and a byte flipped.
        _ => {
            for _ in 0..rng.below(2048) {
                f.push(rng.below(256) as u8);
            }
            let at = rng.below(f.len() as u64) as usize;
            f[at] ^= 0x40;
        }
    }
    f
}

// Goal: no mutated file makes the reader panic, loop, or read beyond its own length
// per walk.
#[test]
fn mutated_files_are_refused_or_read_never_panic() {
    let runs: u64 = std::env::var("RETCD_BBOLT_HOSTILE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let first: u64 = std::env::var("RETCD_BBOLT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let file = valid_file();
    let (mut opened, mut walked) = (0u32, 0u32);
    for seed in first..first + runs {
        let mut rng = SplitMix64::new(seed);
        let bad = mutate(&file, &mut rng);
        let read = Cell::new(0u64);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Ok(db) = Db::open(Counting {
                data: &bad,
                read: &read,
            }) else {
                return (false, false);
            };
            let before = read.get();
            let mut pairs = 0u64;
            let ok = db
                .walk(&mut |_| {
                    pairs += 1;
                    ControlFlow::Continue(())
                })
                .is_ok();
            let walk_read = read.get() - before;
            // Each page at most once, plus its header read first.
            let bound = bad.len() as u64 + 16 * (bad.len() as u64 / 512 + 1);
            assert!(
                walk_read <= bound,
                "a walk read {walk_read} bytes of a {}-byte file",
                bad.len()
            );
            let _ = db.check(100);
            let _ = db.for_each(b"key", &mut |_, _| ControlFlow::Continue(()));
            (true, ok)
        }));
        match outcome {
            Ok((o, w)) => {
                opened += u32::from(o);
                walked += u32::from(w);
            }
            Err(_) => panic!(
                "seed {seed}: the reader panicked (RETCD_BBOLT_SEED={seed} RETCD_BBOLT_HOSTILE=1)"
            ),
        }
    }
    eprintln!("{runs} mutated files from seed {first}: {opened} opened, {walked} walked whole");
    // The generator reaches past open and past the walk often enough to mean something.
    assert!(
        opened as u64 > runs / 4 && walked > 0,
        "{opened} opened, {walked} walked"
    );
    assert!((walked as u64) < runs, "no mutation was caught");
}

// Goal: targeted damage gets the errors it should, with a message naming the page.
#[test]
fn targeted_damage_is_named() {
    let file = valid_file();
    let err = |f: Vec<u8>| -> String {
        let db = match Db::open(f) {
            Ok(db) => db,
            Err(e) => return e.to_string(),
        };
        match db.walk(&mut |_| ControlFlow::Continue(())) {
            Ok(_) => "walked".into(),
            Err(e) => e.to_string(),
        }
    };
    assert!(err(file[..50].to_vec()).contains("too small"));
    assert!(err(file[..100].to_vec()).contains("truncated"));
    assert!(err(file[..file.len() - 512].to_vec()).contains("truncated"));
    let mut f = file.clone();
    f[0..PAGE_HEADER + META].fill(0);
    f[512..512 + PAGE_HEADER + META].fill(0);
    assert!(err(f).contains("meta page 0"));
    // A page header naming another page.
    let mut f = file.clone();
    f[3 * 512] ^= 1;
    assert!(err(f).contains("header says"));
    // An element count far beyond the page.
    let mut f = file.clone();
    f[2 * 512 + 10..2 * 512 + 12].copy_from_slice(&0xFFF0u16.to_le_bytes());
    assert!(err(f).contains("do not fit"));
}
