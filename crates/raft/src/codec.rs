//! Byte encodings of configuration changes, as carried in `ConfChange` and `ConfChangeV2`
//! entries. Little-endian, length-prefixed, with a leading version byte so the format can
//! grow.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::types::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2,
};

const VERSION: u8 = 1;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Decode(format!(
                "need {n} bytes, have {}",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<Bytes> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Decode(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("context under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

fn change_type(code: u8) -> Result<ConfChangeType> {
    ConfChangeType::from_code(code).ok_or_else(|| Error::Decode(format!("conf change type {code}")))
}

impl ConfChange {
    pub fn encode(&self) -> Bytes {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.change_type.code());
        out.extend_from_slice(&self.node_id.to_le_bytes());
        put_bytes(&mut out, &self.context);
        out.into()
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader { buf };
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::Decode(format!("conf change version {version}")));
        }
        let cc = ConfChange {
            id: r.u64()?,
            change_type: change_type(r.u8()?)?,
            node_id: r.u64()?,
            context: r.bytes()?,
        };
        r.finish()?;
        Ok(cc)
    }
}

impl ConfChangeV2 {
    pub fn encode(&self) -> Bytes {
        let mut out = vec![VERSION, self.transition.code()];
        let n = u32::try_from(self.changes.len()).expect("fewer than 4G changes");
        out.extend_from_slice(&n.to_le_bytes());
        for c in &self.changes {
            out.push(c.change_type.code());
            out.extend_from_slice(&c.node_id.to_le_bytes());
        }
        put_bytes(&mut out, &self.context);
        out.into()
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader { buf };
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::Decode(format!("conf change v2 version {version}")));
        }
        let t = r.u8()?;
        let transition = ConfChangeTransition::from_code(t)
            .ok_or_else(|| Error::Decode(format!("transition {t}")))?;
        let n = r.u32()? as usize;
        // Each change takes 9 bytes; refuse counts the buffer cannot hold before allocating.
        if n > r.buf.len() / 9 {
            return Err(Error::Decode(format!(
                "{n} changes in {} bytes",
                r.buf.len()
            )));
        }
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            changes.push(ConfChangeSingle {
                change_type: change_type(r.u8()?)?,
                node_id: r.u64()?,
            });
        }
        let cc = ConfChangeV2 {
            transition,
            changes,
            context: r.bytes()?,
        };
        r.finish()?;
        Ok(cc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_changes_round_trip_and_reject_garbage() {
        let v1 = ConfChange {
            id: 7,
            change_type: ConfChangeType::AddLearnerNode,
            node_id: 42,
            context: Bytes::from_static(b"peer-url"),
        };
        assert_eq!(ConfChange::decode(&v1.encode()).unwrap(), v1);
        let v2 = ConfChangeV2 {
            transition: ConfChangeTransition::JointExplicit,
            changes: vec![
                ConfChangeSingle {
                    change_type: ConfChangeType::AddNode,
                    node_id: 1,
                },
                ConfChangeSingle {
                    change_type: ConfChangeType::RemoveNode,
                    node_id: 2,
                },
            ],
            context: Bytes::new(),
        };
        let enc = v2.encode();
        assert_eq!(ConfChangeV2::decode(&enc).unwrap(), v2);
        for cut in 0..enc.len() {
            assert!(
                ConfChangeV2::decode(&enc[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let mut huge = enc.to_vec();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ConfChangeV2::decode(&huge).is_err());
    }
}
