//! Snapshot images: a self-checking stream of every entry of every bucket.
//!
//! The image is logical (entries, not engine pages), so it is the same for every backend,
//! streams from an open read transaction without blocking writers, and restores into an
//! empty or a populated database in one write transaction. Format: `docs/storage-format.md`.

use std::io::{self, BufReader, Read, Write};
use std::ops::ControlFlow;

use crate::{BackendError, Bucket, ReadTx, WriteTx};

/// First bytes of every image.
pub const MAGIC: &[u8; 8] = b"RETCDSNP";
/// Version of the image format written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Largest key or value an image may carry. A corrupted length must not make restore
/// allocate without bound.
pub const MAX_FIELD_BYTES: u32 = 512 * 1024 * 1024;

const TAG_END: u8 = 0;
const TAG_ENTRY: u8 = 1;

/// What a snapshot write or restore saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Entries in the image, over all buckets.
    pub entries: u64,
    /// Length of the image in bytes, trailer included.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the image up to, not including, the checksum itself.
    pub crc32: u32,
}

struct CrcWriter<'a> {
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl CrcWriter<'_> {
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.crc.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }
}

fn field_len(len: usize) -> Result<u32, BackendError> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FIELD_BYTES)
        .ok_or(BackendError::ValueTooLarge { len })
}

fn put_entry(
    w: &mut CrcWriter<'_>,
    bucket: Bucket,
    key: &[u8],
    value: &[u8],
) -> Result<(), BackendError> {
    w.put(&[TAG_ENTRY, bucket.id()])?;
    w.put(&field_len(key.len())?.to_be_bytes())?;
    w.put(key)?;
    w.put(&field_len(value.len())?.to_be_bytes())?;
    w.put(value)?;
    Ok(())
}

pub(crate) fn write_image<T: ReadTx + ?Sized>(
    tx: &T,
    out: &mut dyn Write,
) -> Result<SnapshotInfo, BackendError> {
    let mut w = CrcWriter {
        out,
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    w.put(MAGIC)?;
    w.put(&FORMAT_VERSION.to_be_bytes())?;
    let mut entries = 0u64;
    for bucket in Bucket::ALL {
        let mut failure = None;
        tx.scan(
            bucket,
            &[],
            None,
            &mut |key, value| match put_entry(&mut w, bucket, key, value) {
                Ok(()) => {
                    entries += 1;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
    }
    w.put(&[TAG_END])?;
    w.put(&entries.to_be_bytes())?;
    let crc32 = w.crc.clone().finalize();
    w.out.write_all(&crc32.to_be_bytes())?;
    w.out.flush()?;
    Ok(SnapshotInfo {
        entries,
        bytes: w.bytes + 4,
        crc32,
    })
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    bytes: u64,
}

fn invalid_on_eof(e: io::Error) -> BackendError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BackendError::InvalidSnapshot("image is truncated".into())
    } else {
        BackendError::Io(e)
    }
}

impl<R: Read> CrcReader<R> {
    fn exact<const N: usize>(&mut self) -> Result<[u8; N], BackendError> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(invalid_on_eof)?;
        self.crc.update(&buf);
        self.bytes += N as u64;
        Ok(buf)
    }

    fn field(&mut self, what: &str) -> Result<Vec<u8>, BackendError> {
        let len = u32::from_be_bytes(self.exact::<4>()?);
        if len > MAX_FIELD_BYTES {
            return Err(BackendError::InvalidSnapshot(format!(
                "{what} length {len} exceeds {MAX_FIELD_BYTES}"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(invalid_on_eof)?;
        self.crc.update(&buf);
        self.bytes += u64::from(len);
        Ok(buf)
    }
}

pub(crate) fn restore_image<W: WriteTx + ?Sized>(
    tx: &mut W,
    image: &mut dyn Read,
) -> Result<SnapshotInfo, BackendError> {
    let mut r = CrcReader {
        inner: BufReader::new(image),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    if &r.exact::<8>()? != MAGIC {
        return Err(BackendError::InvalidSnapshot("bad magic".into()));
    }
    let version = u32::from_be_bytes(r.exact::<4>()?);
    if version != FORMAT_VERSION {
        return Err(BackendError::InvalidSnapshot(format!(
            "unsupported format version {version}"
        )));
    }
    for bucket in Bucket::ALL {
        tx.clear(bucket)?;
    }
    let mut entries = 0u64;
    loop {
        let [tag] = r.exact::<1>()?;
        match tag {
            TAG_ENTRY => {
                let [id] = r.exact::<1>()?;
                let bucket = Bucket::from_id(id).ok_or_else(|| {
                    BackendError::InvalidSnapshot(format!("unknown bucket id {id}"))
                })?;
                let key = r.field("key")?;
                let value = r.field("value")?;
                tx.put(bucket, &key, &value)?;
                entries += 1;
            }
            TAG_END => break,
            other => {
                return Err(BackendError::InvalidSnapshot(format!(
                    "unknown record tag {other}"
                )));
            }
        }
    }
    let declared = u64::from_be_bytes(r.exact::<8>()?);
    if declared != entries {
        return Err(BackendError::InvalidSnapshot(format!(
            "trailer declares {declared} entries, image holds {entries}"
        )));
    }
    let computed = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.inner.read_exact(&mut stored).map_err(invalid_on_eof)?;
    let stored = u32::from_be_bytes(stored);
    if stored != computed {
        return Err(BackendError::InvalidSnapshot(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let mut extra = [0u8; 1];
    if r.inner.read(&mut extra)? != 0 {
        return Err(BackendError::InvalidSnapshot(
            "trailing bytes after the checksum".into(),
        ));
    }
    Ok(SnapshotInfo {
        entries,
        bytes: r.bytes + 4,
        crc32: computed,
    })
}
