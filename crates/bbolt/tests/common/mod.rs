//! The bbolt tests' shared helpers: data as nested maps (bucket -> key -> value), and a
//! file written from it.

use std::collections::BTreeMap;
use std::io;

use retcd_bbolt::{PairSink, Pairs, Plan};

/// Buckets by name, each its pairs in key order.
pub type Data = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

/// [`Data`] as the writer scans it.
pub struct FromMap<'a>(pub &'a Data);

impl Pairs for FromMap<'_> {
    fn scan(&mut self, f: &mut PairSink<'_>) -> io::Result<()> {
        for (bucket, pairs) in self.0 {
            for (k, v) in pairs {
                f(bucket, k, v)?;
            }
        }
        Ok(())
    }
}

/// The file of `data` in pages of `page_size`, exactly as long as its plan says.
pub fn write(data: &Data, page_size: u32) -> Vec<u8> {
    let names: Vec<Vec<u8>> = data.keys().cloned().collect();
    let plan = Plan::new(page_size, names, &mut FromMap(data)).expect("plan");
    let mut out = Vec::new();
    let n = plan.write(&mut FromMap(data), &mut out).expect("write");
    assert_eq!(n, plan.size());
    assert_eq!(out.len() as u64, plan.size());
    out
}
