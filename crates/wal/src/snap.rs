//! Snapshot files (etcd's `snap` package): one file per snapshot, named
//! `<term>-<index>.snap` in 16-digit hex, written atomically and checked by CRC on load.
//!
//! Layout (little-endian; see `docs/wal-format.md`):
//!
//! ```text
//! 0..4    magic "RSNP"
//! 4       version (1)
//! 5..8    reserved, zero
//! 8..12   crc32 of bytes 12..end
//! 12..20  body length; the file is exactly 20 + body length bytes
//! 20..    body: index u64, term u64, conf state, then the state machine data to the end
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use retcd_raft::{Snapshot, SnapshotMetadata};

use crate::error::{Result, WalError, io_err};
use crate::record::{Cursor, SnapshotMarker, encode_conf_state};
use crate::vfs::{StdVfs, Vfs};

const MAGIC: &[u8; 4] = b"RSNP";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 20;
const SNAP_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

/// Reads and writes the snapshot files of one directory.
#[derive(Clone, Debug)]
pub struct Snapshotter {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
}

/// A snapshot file that could not be loaded, and why.
#[derive(Debug)]
pub struct BrokenSnapshot {
    pub file: PathBuf,
    pub error: WalError,
}

/// The result of a load: the snapshot, if one could be loaded, and every file skipped on
/// the way because it was broken (the caller should tell an operator).
#[derive(Debug, Default)]
pub struct SnapshotLoad {
    pub snapshot: Option<Snapshot>,
    pub file: Option<PathBuf>,
    pub broken: Vec<BrokenSnapshot>,
}

/// A snapshot file's name: `<term>-<index>.snap`.
pub fn snapshot_file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}{SNAP_SUFFIX}")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SNAP_SUFFIX)?;
    let (term, index) = stem.split_once('-')?;
    let hex = |s: &str| {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex(term)?, hex(index)?))
}

/// Encodes a snapshot file.
fn encode(snap: &Snapshot) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_BYTES + 64 + snap.data.len());
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&[0; 3]);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&snap.metadata.index.to_le_bytes());
    buf.extend_from_slice(&snap.metadata.term.to_le_bytes());
    encode_conf_state(&snap.metadata.conf_state, &mut buf);
    buf.extend_from_slice(&snap.data);
    let body_len = (buf.len() - HEADER_BYTES) as u64;
    buf[12..20].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&buf[12..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes a snapshot file; the error is a reason.
fn decode(bytes: &[u8]) -> std::result::Result<Snapshot, (u64, String)> {
    if bytes.len() < HEADER_BYTES {
        return Err((
            0,
            format!(
                "file of {} bytes is shorter than the {HEADER_BYTES}-byte header",
                bytes.len()
            ),
        ));
    }
    if &bytes[0..4] != MAGIC {
        return Err((0, "not a snapshot file (bad magic)".to_owned()));
    }
    if bytes[4] != VERSION {
        return Err((4, format!("unsupported snapshot version {}", bytes[4])));
    }
    if bytes[5..8] != [0, 0, 0] {
        return Err((5, "reserved header bytes are not zero".to_owned()));
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let actual_len = (bytes.len() - HEADER_BYTES) as u64;
    if body_len != actual_len {
        return Err((
            12,
            format!("header says {body_len} body bytes, the file has {actual_len}"),
        ));
    }
    let stored = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[12..]);
    if stored != computed {
        return Err((
            8,
            format!("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let mut c = Cursor::new(&bytes[HEADER_BYTES..]);
    let parse = |c: &mut Cursor<'_>| -> std::result::Result<Snapshot, String> {
        let index = c.u64()?;
        let term = c.u64()?;
        let conf_state = c.conf_state()?;
        let data = Bytes::copy_from_slice(c.rest());
        Ok(Snapshot {
            data,
            metadata: SnapshotMetadata {
                conf_state,
                index,
                term,
            },
        })
    };
    parse(&mut c).map_err(|r| (HEADER_BYTES as u64, r))
}

impl Snapshotter {
    /// A snapshotter for `dir` on the real file system; creates the directory if missing.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        Snapshotter::with_vfs(Arc::new(StdVfs), dir)
    }

    pub fn with_vfs(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        vfs.create_dir_all(&dir)
            .map_err(io_err("create dir", &dir))?;
        Ok(Snapshotter { vfs, dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `snap` durably and atomically: to a temporary file, fsynced, renamed to
    /// `<term>-<index>.snap`, directory fsynced. An empty snapshot (index 0) is not
    /// written. Returns the file's path.
    pub fn save(&self, snap: &Snapshot) -> Result<Option<PathBuf>> {
        if snap.is_empty() {
            return Ok(None);
        }
        let name = snapshot_file_name(snap.metadata.term, snap.metadata.index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(
            "{}{TMP_SUFFIX}",
            name.trim_end_matches(SNAP_SUFFIX)
        ));
        let bytes = encode(snap);
        let mut file = self.vfs.create_file(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all_at(0, &bytes)
            .map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(file);
        self.vfs
            .rename(&tmp, &path)
            .map_err(io_err("rename", &tmp))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync dir", &self.dir))?;
        tracing::info!(file = %path.display(), index = snap.metadata.index, term = snap.metadata.term, "snap: saved snapshot");
        Ok(Some(path))
    }

    /// Loads and checks one snapshot file.
    pub fn load(&self, path: &Path) -> Result<Snapshot> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let (term, index) = parse_name(name).ok_or_else(|| WalError::BadSnapshotFile {
            file: path.to_path_buf(),
            reason: "name is not <term>-<index>.snap in 16-digit hex".to_owned(),
        })?;
        let bytes = self.vfs.read_file(path).map_err(io_err("read", path))?;
        let snap = decode(&bytes).map_err(|(offset, reason)| WalError::Corrupt {
            file: path.to_path_buf(),
            offset,
            reason,
        })?;
        if snap.metadata.term != term || snap.metadata.index != index {
            return Err(WalError::Corrupt {
                file: path.to_path_buf(),
                offset: HEADER_BYTES as u64,
                reason: format!(
                    "contents are for index {} term {}, the name says index {index} term {term}",
                    snap.metadata.index, snap.metadata.term
                ),
            });
        }
        Ok(snap)
    }

    /// Snapshot files as (term, index, path), newest (highest index) first.
    pub fn snapshot_files(&self) -> Result<Vec<(u64, u64, PathBuf)>> {
        let names = self
            .vfs
            .list_dir(&self.dir)
            .map_err(io_err("list", &self.dir))?;
        let mut files: Vec<(u64, u64, PathBuf)> = names
            .iter()
            .filter_map(|n| parse_name(n).map(|(term, index)| (term, index, self.dir.join(n))))
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse((f.1, f.0)));
        Ok(files)
    }

    /// The newest snapshot that loads, skipping broken files.
    pub fn load_newest(&self) -> Result<SnapshotLoad> {
        self.load_first(|_, _| true)
    }

    /// The newest snapshot that loads and that the WAL has a marker for (from
    /// [`crate::valid_snapshot_markers`]). A newer file without a marker is ignored: the
    /// WAL cannot replay from it.
    pub fn load_matching(&self, markers: &[SnapshotMarker]) -> Result<SnapshotLoad> {
        self.load_first(|term, index| markers.iter().any(|m| m.is_at(index, term)))
    }

    fn load_first(&self, wanted: impl Fn(u64, u64) -> bool) -> Result<SnapshotLoad> {
        let mut out = SnapshotLoad::default();
        for (term, index, path) in self.snapshot_files()? {
            if !wanted(term, index) {
                continue;
            }
            match self.load(&path) {
                Ok(snap) => {
                    out.snapshot = Some(snap);
                    out.file = Some(path);
                    break;
                }
                Err(error @ (WalError::Corrupt { .. } | WalError::BadSnapshotFile { .. })) => {
                    tracing::warn!(file = %path.display(), error = %error, "snap: skipping a broken snapshot file");
                    out.broken.push(BrokenSnapshot { file: path, error });
                }
                Err(other) => return Err(other),
            }
        }
        Ok(out)
    }

    /// Deletes all but the `keep` newest snapshot files, and leftover temporary files.
    /// Returns the deleted files.
    pub fn purge(&self, keep: usize) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for (_, _, path) in self.snapshot_files()?.into_iter().skip(keep) {
            self.vfs
                .remove_file(&path)
                .map_err(io_err("remove", &path))?;
            removed.push(path);
        }
        let names = self
            .vfs
            .list_dir(&self.dir)
            .map_err(io_err("list", &self.dir))?;
        for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
            let path = self.dir.join(name);
            self.vfs
                .remove_file(&path)
                .map_err(io_err("remove", &path))?;
            removed.push(path);
        }
        if !removed.is_empty() {
            self.vfs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync dir", &self.dir))?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_sort_by_index() {
        assert_eq!(
            snapshot_file_name(2, 0x10),
            "0000000000000002-0000000000000010.snap"
        );
        assert_eq!(
            parse_name("0000000000000002-0000000000000010.snap"),
            Some((2, 0x10))
        );
        assert_eq!(parse_name("2-10.snap"), None);
        assert_eq!(
            parse_name("0000000000000002-0000000000000010.snap.tmp"),
            None
        );
    }

    #[test]
    fn truncated_or_extended_files_are_rejected() {
        let snap = Snapshot {
            data: Bytes::from_static(b"state"),
            metadata: SnapshotMetadata {
                index: 5,
                term: 1,
                ..Default::default()
            },
        };
        let bytes = encode(&snap);
        assert_eq!(decode(&bytes).unwrap(), snap);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
