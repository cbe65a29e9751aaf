//! `snapshot status`: etcdctl 3.4's numbers for a snapshot file. The hash is CRC-32C over
//! every top-level bucket's name and then its keys and values in order (a nested
//! bucket counts as a key without a value, as bbolt's `ForEach` gives it); the revision
//! is the main revision of the last key of the `key` bucket; the key count is every
//! pair of every bucket; the size is the database's pages (the SHA-256 a saved snapshot
//! ends with is not counted).

use std::ops::ControlFlow;

use retcd_bbolt::{Db, Source, Visit};
use retcd_mvcc::crc32c::Crc32c;

/// etcdctl's `snapshot.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

/// The status of the bbolt file in `src`, after bbolt's consistency check (etcdctl's
/// error when it fails).
pub fn status<S: Source>(src: S) -> Result<Status, String> {
    let db = Db::open(src).map_err(|e| e.to_string())?;
    let problems = db.check(100);
    if !problems.is_empty() {
        return Err(format!(
            "snapshot file integrity check failed. {} errors found.\n{}",
            problems.len(),
            problems.join("\n")
        ));
    }
    let mut h = Crc32c::new();
    let (mut depth, mut total_key, mut revision) = (0usize, 0u64, 0i64);
    let mut in_key = false;
    db.walk(&mut |v| {
        match v {
            Visit::Enter(name) => {
                depth += 1;
                if depth == 1 {
                    h.update(name);
                    in_key = name == b"key";
                } else if depth == 2 {
                    h.update(name);
                    total_key += 1;
                }
            }
            Visit::Leave => depth -= 1,
            Visit::Pair(k, v) if depth == 1 => {
                h.update(k);
                h.update(v);
                total_key += 1;
                if in_key && k.len() >= 8 {
                    revision = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                }
            }
            Visit::Pair(..) => {}
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| e.to_string())?;
    Ok(Status {
        hash: h.finalize(),
        revision,
        total_key,
        total_size: db.size(),
    })
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
pub fn humanize_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

/// The status in etcdctl's output format `format`; `Err` is etcdctl's error for a format
/// it cannot print (with its exit code).
pub fn render(s: &Status, format: &str) -> Result<String, (String, i32)> {
    match format {
        "simple" => Ok(format!(
            "{:x}, {}, {}, {}\n",
            s.hash,
            s.revision,
            s.total_key,
            humanize_bytes(s.total_size)
        )),
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_key, s.total_size
        )),
        "fields" => Ok(format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            s.hash, s.revision, s.total_key, s.total_size
        )),
        "protobuf" => Err(("protobuf not supported as output format".into(), 4)),
        "table" => Err((
            "table output is not supported by retcdctl yet (issue 18)".into(),
            4,
        )),
        other => Err((format!("unknown output format {other:?}"), 4)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: sizes print as go-humanize prints them.
    #[test]
    fn humanized_like_go() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(999), "999 B");
        assert_eq!(humanize_bytes(16384), "16 kB");
        assert_eq!(humanize_bytes(25_000), "25 kB");
        assert_eq!(humanize_bytes(2_100_000), "2.1 MB");
        assert_eq!(humanize_bytes(1_000_000_000), "1.0 GB");
    }
}
