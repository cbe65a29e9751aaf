//! Revisions and their byte encoding as keys of the `key` bucket.

use crate::MvccError;

/// Length of an encoded revision: 8-byte main, `_`, 8-byte sub.
pub const REVISION_BYTES: usize = 17;
/// Length of an encoded tombstone revision: a revision followed by `t`.
pub const TOMBSTONE_REVISION_BYTES: usize = REVISION_BYTES + 1;
const SEPARATOR: u8 = b'_';
const TOMBSTONE_MARK: u8 = b't';

/// A point in the store's history.
///
/// `main` is the store revision a write transaction commits at; `sub` numbers the changes
/// inside that transaction from 0. Ordering is by `main`, then `sub`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Store revision (the `revision` clients see).
    pub main: i64,
    /// Position of the change inside its transaction.
    pub sub: i64,
}

impl Revision {
    /// A revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// etcd's encoding: big-endian `main`, `_`, big-endian `sub`. Byte order equals revision
    /// order for the non-negative revisions the store writes.
    pub fn to_bytes(self) -> [u8; REVISION_BYTES] {
        // Invariant: stored revisions are non-negative, so big-endian bytes sort like numbers.
        assert!(
            self.main >= 0 && self.sub >= 0,
            "negative revision {self:?} cannot be encoded"
        );
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8] = SEPARATOR;
        out[9..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Decodes [`Revision::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MvccError> {
        if bytes.len() != REVISION_BYTES || bytes[8] != SEPARATOR {
            return Err(MvccError::Corrupted(format!(
                "bad revision bytes {bytes:02x?}"
            )));
        }
        let main = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(bytes[9..].try_into().expect("8 bytes"));
        if main < 0 || sub < 0 {
            return Err(MvccError::Corrupted(format!(
                "negative revision in {bytes:02x?}"
            )));
        }
        Ok(Self { main, sub })
    }
}

/// A key of the `key` bucket: a revision, marked when the change it records is a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionKey {
    /// Revision of the change.
    pub rev: Revision,
    /// The change deleted the key (etcd's tombstone).
    pub tombstone: bool,
}

impl RevisionKey {
    /// Encodes as [`Revision::to_bytes`], plus a trailing `t` for tombstones.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOMBSTONE_REVISION_BYTES);
        out.extend_from_slice(&self.rev.to_bytes());
        if self.tombstone {
            out.push(TOMBSTONE_MARK);
        }
        out
    }

    /// Decodes [`RevisionKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MvccError> {
        match bytes.len() {
            REVISION_BYTES => Ok(Self {
                rev: Revision::from_bytes(bytes)?,
                tombstone: false,
            }),
            TOMBSTONE_REVISION_BYTES if bytes[REVISION_BYTES] == TOMBSTONE_MARK => Ok(Self {
                rev: Revision::from_bytes(&bytes[..REVISION_BYTES])?,
                tombstone: true,
            }),
            _ => Err(MvccError::Corrupted(format!(
                "bad key bucket key {bytes:02x?}"
            ))),
        }
    }
}

/// The first key-bucket key of revision `main`: every change at `main` sorts at or after it.
pub(crate) fn main_revision_start(main: i64) -> [u8; REVISION_BYTES] {
    Revision::new(main, 0).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_etcd_layout() {
        let bytes = Revision::new(0x0102, 3).to_bytes();
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3]
        );
        let tomb = RevisionKey {
            rev: Revision::new(0x0102, 3),
            tombstone: true,
        }
        .to_bytes();
        assert_eq!(&tomb[..17], &bytes);
        assert_eq!(tomb[17], b't');
    }

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 255),
            Revision::new(1, 256),
            Revision::new(256, 0),
            Revision::new(i64::MAX, 0),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_bytes() < pair[1].to_bytes(), "{pair:?}");
            let tomb = RevisionKey {
                rev: pair[0],
                tombstone: true,
            }
            .to_bytes();
            assert!(
                tomb.as_slice() < pair[1].to_bytes().as_slice(),
                "tombstone of {:?}",
                pair[0]
            );
            assert!(main_revision_start(pair[0].main).as_slice() <= tomb.as_slice());
        }
    }

    #[test]
    fn round_trip_and_rejects_garbage() {
        for key in [
            RevisionKey {
                rev: Revision::new(7, 0),
                tombstone: false,
            },
            RevisionKey {
                rev: Revision::new(7, 9),
                tombstone: true,
            },
        ] {
            assert_eq!(RevisionKey::from_bytes(&key.to_bytes()).unwrap(), key);
        }
        let mut wrong_mark = Revision::new(7, 0).to_bytes().to_vec();
        wrong_mark.push(b'x');
        let mut wrong_separator = Revision::new(7, 0).to_bytes();
        wrong_separator[8] = b'-';
        let mut negative = Revision::new(7, 0).to_bytes();
        negative[0] = 0x80;
        for bad in [
            &b""[..],
            &b"short"[..],
            &wrong_mark,
            &wrong_separator,
            &negative,
        ] {
            assert!(
                matches!(RevisionKey::from_bytes(bad), Err(MvccError::Corrupted(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "negative revision")]
    fn negative_revisions_are_never_encoded() {
        let _ = Revision::new(-1, 0).to_bytes();
    }
}
