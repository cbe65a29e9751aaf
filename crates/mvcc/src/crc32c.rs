//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum etcd's HashKV
//! uses (Go's `crc32.MakeTable(crc32.Castagnoli)` in `mvcc.HashByRev`), so that
//! `etcdctl endpoint hashkv` gives retcd and etcd the same number for the same history.
//! Table-driven, a byte at a time: HashKV is an occasional, operator-driven read.

const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A running CRC-32C.
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c(!0)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn finalize(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Crc32c;

    // Goal: the standard check values of CRC-32C (RFC 3720 B.4), split or whole.
    #[test]
    fn check_values() {
        let crc = |parts: &[&[u8]]| {
            let mut h = Crc32c::new();
            for p in parts {
                h.update(p);
            }
            h.finalize()
        };
        assert_eq!(crc(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc(&[b"1234", b"", b"56789"]), 0xE306_9283);
        assert_eq!(crc(&[&[0u8; 32]]), 0x8A91_36AA);
        assert_eq!(crc(&[&[0xffu8; 32]]), 0x62A8_AB43);
        assert_eq!(crc(&[]), 0);
    }
}
