//! Revisions and their encoding as primary-tree keys.
//!
//! A revision is `(main, sub)`: `main` is the store revision of one write transaction, `sub`
//! numbers the changes inside it. Tree keys are 12 bytes, `main` as u64 big-endian then `sub`
//! as u32 big-endian, so byte order is revision order and every new transaction appends at the
//! right edge of the tree.

use std::fmt;

use super::error::MvccError;

/// Length of a primary-tree key.
pub const REVISION_KEY_BYTES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: u32,
}

impl Revision {
    pub fn new(main: i64, sub: u32) -> Revision {
        Revision { main, sub }
    }

    /// The tree key for this revision.
    pub fn to_key(self) -> [u8; REVISION_KEY_BYTES] {
        // Revisions start at 1 and only grow; a negative main would sort wrongly.
        assert!(self.main >= 0, "negative revision {self}");
        let mut key = [0u8; REVISION_KEY_BYTES];
        key[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        key[8..].copy_from_slice(&self.sub.to_be_bytes());
        key
    }

    /// Decodes a tree key read from disk.
    pub fn from_key(key: &[u8]) -> Result<Revision, MvccError> {
        let corrupt = |reason| MvccError::CorruptRevisionKey {
            key: key.to_vec(),
            reason,
        };
        let bytes: &[u8; REVISION_KEY_BYTES] = key
            .try_into()
            .map_err(|_| corrupt("length is not 12 bytes"))?;
        let mut main = [0u8; 8];
        main.copy_from_slice(&bytes[..8]);
        let mut sub = [0u8; 4];
        sub.copy_from_slice(&bytes[8..]);
        let main = i64::try_from(u64::from_be_bytes(main))
            .map_err(|_| corrupt("main revision exceeds i64"))?;
        Ok(Revision {
            main,
            sub: u32::from_be_bytes(sub),
        })
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, u32::MAX),
            Revision::new(2, 0),
            Revision::new(255, 7),
            Revision::new(256, 0),
            Revision::new(i64::MAX, u32::MAX),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(
                pair[0].to_key() < pair[1].to_key(),
                "{} vs {}",
                pair[0],
                pair[1]
            );
        }
        for rev in revs {
            assert_eq!(Revision::from_key(&rev.to_key()).unwrap(), rev);
        }
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        assert!(matches!(
            Revision::from_key(&[0; 11]),
            Err(MvccError::CorruptRevisionKey { .. })
        ));
        let mut key = [0u8; 12];
        key[0] = 0x80;
        assert!(matches!(
            Revision::from_key(&key),
            Err(MvccError::CorruptRevisionKey { .. })
        ));
    }
}
