//! The page layouts: headers, meta pages, branch and leaf elements, bucket headers.
//!
//! Every integer is little-endian (bbolt writes its structs in the host's order, and
//! every platform etcd ships for is little-endian). Offsets and sizes are bbolt 1.3's.

/// Size of a page header: id u64, flags u16, count u16, overflow u32.
pub const PAGE_HEADER: usize = 16;
/// Size of a branch or leaf element.
pub const ELEMENT: usize = 16;
/// Size of a bucket header: root page id u64, sequence u64.
pub const BUCKET_HEADER: usize = 16;
/// Size of the meta struct that follows a meta page's header.
pub const META: usize = 64;
/// The meta bytes the checksum covers (everything before the checksum).
pub const META_CHECKSUMMED: usize = 56;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;

pub const BRANCH_PAGE: u16 = 0x01;
pub const LEAF_PAGE: u16 = 0x02;
pub const META_PAGE: u16 = 0x04;
pub const FREELIST_PAGE: u16 = 0x10;

/// A leaf element whose value is a bucket.
pub const BUCKET_LEAF: u32 = 0x01;

/// The freelist page id of a file whose freelist is not written (etcd on Linux).
pub const NO_FREELIST: u64 = u64::MAX;

/// A page count at this value means the real count is the first u64 of the page body
/// (freelist pages only).
pub const COUNT_ESCAPE: u16 = 0xFFFF;

/// Page sizes accepted: powers of two from 512 bytes to 64 KiB.
pub const MIN_PAGE_SIZE: u32 = 512;
pub const MAX_PAGE_SIZE: u32 = 64 * 1024;

/// bbolt's key limit (checked by its Put).
pub const MAX_KEY_SIZE: usize = 32 * 1024;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// FNV-1a, 64 bits: the meta page checksum.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    pub fn decode(b: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(b, 0),
            flags: u16_at(b, 8),
            count: u16_at(b, 10),
            overflow: u32_at(b, 12),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.overflow.to_le_bytes());
    }
}

/// A bucket header: where its tree starts (0 = inline, the page follows the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BucketHeader {
    pub root: u64,
    pub sequence: u64,
}

impl BucketHeader {
    pub fn decode(b: &[u8]) -> BucketHeader {
        BucketHeader {
            root: u64_at(b, 0),
            sequence: u64_at(b, 8),
        }
    }

    pub fn encode(&self) -> [u8; BUCKET_HEADER] {
        let mut out = [0u8; BUCKET_HEADER];
        out[..8].copy_from_slice(&self.root.to_le_bytes());
        out[8..].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }
}

/// The meta struct of pages 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    pub root: BucketHeader,
    /// The freelist's page, or [`NO_FREELIST`].
    pub freelist: u64,
    /// One past the last page in use: the file's data is `pgid * page_size` bytes.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

impl Meta {
    /// Decodes the meta struct (the bytes after a meta page's header).
    pub fn decode(b: &[u8]) -> Meta {
        Meta {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            page_size: u32_at(b, 8),
            flags: u32_at(b, 12),
            root: BucketHeader::decode(&b[16..32]),
            freelist: u64_at(b, 32),
            pgid: u64_at(b, 40),
            txid: u64_at(b, 48),
            checksum: u64_at(b, 56),
        }
    }

    /// The 64 bytes, with the checksum computed over the first 56.
    pub fn encode(&self) -> [u8; META] {
        let mut out = [0u8; META];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..32].copy_from_slice(&self.root.encode());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&out[..META_CHECKSUMMED]);
        out[56..64].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// The checksum the first 56 bytes of `raw` call for.
    pub fn sum(raw: &[u8]) -> u64 {
        fnv1a64(&raw[..META_CHECKSUMMED])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the meta checksum is bbolt's (FNV-1a 64 over the first 56 bytes), checked on
    // the meta pages of a fresh bbolt file (root 3, freelist 2, pgid 4, 4 KiB pages).
    #[test]
    fn meta_checksum_matches_bbolt() {
        let mut meta = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: 4096,
            flags: 0,
            root: BucketHeader {
                root: 3,
                sequence: 0,
            },
            freelist: 2,
            pgid: 4,
            txid: 0,
            checksum: 0,
        };
        let raw = meta.encode();
        assert_eq!(u64_at(&raw, 56), 0x0751_6e11_4689_fdee);
        assert_eq!(Meta::decode(&raw).checksum, Meta::sum(&raw));
        meta.txid = 1;
        assert_eq!(u64_at(&meta.encode(), 56), 0x264c_351a_5179_480f);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn headers_round_trip() {
        let h = PageHeader {
            id: 7,
            flags: LEAF_PAGE,
            count: 3,
            overflow: 2,
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), PAGE_HEADER);
        assert_eq!(PageHeader::decode(&out), h);
        let b = BucketHeader {
            root: 9,
            sequence: 4,
        };
        assert_eq!(BucketHeader::decode(&b.encode()), b);
    }
}
