//! Byte formats the MVCC layer stores in the tree: the record of one revision (the value of
//! a primary-tree entry) and the store metadata kept in each commit's `user` bytes.
//!
//! Record, version 1 (integers little-endian):
//!
//! ```text
//! offset  size  field
//! 0       1     format = 1
//! 1       1     flags: bit 0 = tombstone; other bits must be zero
//! 2       4     key length K (u32)
//! 6       K     key
//! 6+K     8     create_revision (i64)   0 in a tombstone
//! 14+K    8     version (i64)           0 in a tombstone
//! 22+K    8     lease (i64)             0 in a tombstone
//! 30+K    rest  value                   empty in a tombstone
//! ```
//!
//! The mod_revision is not stored: it is the entry's tree key.
//!
//! Store metadata, version 1, in `CommitMeta::user`: `format = 1` (1 byte), current revision
//! (i64 LE), compact revision (i64 LE, -1 if never compacted): 17 bytes. Empty user bytes
//! mean a store that was never checkpointed.

use super::error::MvccError;
use super::revision::Revision;
use super::types::KeyValue;

const RECORD_FORMAT: u8 = 1;
const FLAG_TOMBSTONE: u8 = 1;
const RECORD_FIXED_BYTES: usize = 2 + 4 + 3 * 8;

const META_FORMAT: u8 = 1;
const META_BYTES: usize = 1 + 8 + 8;

/// One revision of one key, borrowed from its encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub tombstone: bool,
    pub key: &'a [u8],
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn put(
        key: &'a [u8],
        create_revision: i64,
        version: i64,
        lease: i64,
        value: &'a [u8],
    ) -> Self {
        Record {
            tombstone: false,
            key,
            create_revision,
            version,
            lease,
            value,
        }
    }

    pub fn tombstone(key: &'a [u8]) -> Self {
        Record {
            tombstone: true,
            key,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: &[],
        }
    }

    /// The event of the write that stored this record at revision `main`.
    pub fn event(&self, main: i64) -> super::types::Event {
        use super::types::{Event, EventType, KeyValue};
        if self.tombstone {
            return Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: self.key.to_vec(),
                    mod_revision: main,
                    ..KeyValue::default()
                },
                prev_kv: None,
            };
        }
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: self.key.to_vec(),
                create_revision: self.create_revision,
                mod_revision: main,
                version: self.version,
                value: self.value.to_vec(),
                lease: self.lease,
            },
            prev_kv: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let key_len = u32::try_from(self.key.len()).expect("key length fits u32");
        let mut out = Vec::with_capacity(RECORD_FIXED_BYTES + self.key.len() + self.value.len());
        out.push(RECORD_FORMAT);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(self.value);
        out
    }

    /// Decodes the record stored at `rev`; `rev` only names the record in errors.
    pub fn decode(bytes: &'a [u8], rev: Revision) -> Result<Record<'a>, MvccError> {
        let corrupt = |reason| MvccError::CorruptRecord { rev, reason };
        if bytes.len() < RECORD_FIXED_BYTES {
            return Err(corrupt("shorter than the fixed fields"));
        }
        if bytes[0] != RECORD_FORMAT {
            return Err(corrupt("unknown record format"));
        }
        let flags = bytes[1];
        if flags & !FLAG_TOMBSTONE != 0 {
            return Err(corrupt("unknown flag bits"));
        }
        let key_len = u32::from_le_bytes(take4(&bytes[2..6])) as usize;
        let fields_at = 6usize
            .checked_add(key_len)
            .filter(|&at| at + 24 <= bytes.len())
            .ok_or_else(|| corrupt("key length runs past the end"))?;
        let int_at = |i: usize| i64::from_le_bytes(take8(&bytes[fields_at + 8 * i..]));
        let record = Record {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            key: &bytes[6..fields_at],
            create_revision: int_at(0),
            version: int_at(1),
            lease: int_at(2),
            value: &bytes[fields_at + 24..],
        };
        if record.key.is_empty() {
            return Err(corrupt("empty key"));
        }
        if record.tombstone && (record.version != 0 || !record.value.is_empty()) {
            return Err(corrupt("tombstone with a version or value"));
        }
        if !record.tombstone && (record.version < 1 || record.create_revision > rev.main) {
            return Err(corrupt("version or create revision out of range"));
        }
        Ok(record)
    }

    /// The client-visible form; `mod_revision` is the revision the record is stored at.
    pub fn to_key_value(self, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

fn take4(bytes: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&bytes[..4]);
    out
}

fn take8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

/// Revisions that must survive a restart, stored with every tree commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreMeta {
    pub current_revision: i64,
    pub compact_revision: i64,
}

impl StoreMeta {
    /// A store that has never written anything, as etcd starts: revision 1, never compacted.
    pub const FRESH: StoreMeta = StoreMeta {
        current_revision: 1,
        compact_revision: -1,
    };

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_BYTES);
        out.push(META_FORMAT);
        out.extend_from_slice(&self.current_revision.to_le_bytes());
        out.extend_from_slice(&self.compact_revision.to_le_bytes());
        out
    }

    /// `None` for the empty bytes of a store that was never checkpointed.
    pub fn decode(bytes: &[u8]) -> Result<Option<StoreMeta>, MvccError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() != META_BYTES {
            return Err(MvccError::CorruptMeta("wrong length"));
        }
        if bytes[0] != META_FORMAT {
            return Err(MvccError::CorruptMeta("unknown format"));
        }
        let meta = StoreMeta {
            current_revision: i64::from_le_bytes(take8(&bytes[1..])),
            compact_revision: i64::from_le_bytes(take8(&bytes[9..])),
        };
        let valid = meta.current_revision >= 1
            && meta.compact_revision >= -1
            && meta.compact_revision <= meta.current_revision;
        if !valid {
            return Err(MvccError::CorruptMeta("revisions out of range"));
        }
        Ok(Some(meta))
    }
}

/// The current and compaction revisions a tree commit's user bytes record (a store never
/// checkpointed: revision 1, never compacted).
pub fn commit_revisions(user: &[u8]) -> Result<(i64, i64), MvccError> {
    let meta = StoreMeta::decode(user)?.unwrap_or(StoreMeta::FRESH);
    Ok((meta.current_revision, meta.compact_revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let rev = Revision::new(9, 2);
        for record in [
            Record::put(b"k", 3, 4, 77, b"value"),
            Record::put(b"key\0with\xffbytes", 9, 1, 0, b""),
            Record::tombstone(b"gone"),
        ] {
            let bytes = record.encode();
            assert_eq!(Record::decode(&bytes, rev).unwrap(), record);
        }
    }

    #[test]
    fn every_truncation_and_bad_header_is_an_error() {
        let rev = Revision::new(5, 0);
        let bytes = Record::put(b"abc", 2, 3, 4, b"").encode();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Record::decode(&bytes[..len], rev),
                    Err(MvccError::CorruptRecord { .. })
                ),
                "truncated to {len}"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(Record::decode(&bad, rev).is_err());
        let mut bad = bytes.clone();
        bad[1] = 0x80;
        assert!(Record::decode(&bad, rev).is_err());
        let mut bad = bytes;
        bad[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Record::decode(&bad, rev).is_err());
    }

    #[test]
    fn meta_round_trip_and_validation() {
        let meta = StoreMeta {
            current_revision: 42,
            compact_revision: 40,
        };
        assert_eq!(StoreMeta::decode(&meta.encode()).unwrap(), Some(meta));
        assert_eq!(
            StoreMeta::decode(&StoreMeta::FRESH.encode()).unwrap(),
            Some(StoreMeta::FRESH)
        );
        assert_eq!(StoreMeta::decode(&[]).unwrap(), None);
        let bad = StoreMeta {
            current_revision: 3,
            compact_revision: 4,
        };
        assert!(matches!(
            StoreMeta::decode(&bad.encode()),
            Err(MvccError::CorruptMeta(_))
        ));
        assert!(matches!(
            StoreMeta::decode(&[1, 2, 3]),
            Err(MvccError::CorruptMeta(_))
        ));
    }
}
