//! One write transaction (etcd's `storeTxnWrite`): every change of one request, at revision
//! `begin + 1`, with sub-revisions numbering the changes. Reads inside it see its own earlier
//! writes. It keeps an undo log so a request that fails after writing can be rolled back,
//! and the events of its changes (watch, leases and locks consume them) for the store to
//! hand out once it commits.

use crate::btree::Db;

use super::error::MvccError;
use super::index_lock::IndexLock;
use super::key_index::KeyRange;
use super::range::{self, RangeOptions, RangeResult, PRIMARY_TREE};
use super::record::Record;
use super::revision::Revision;
use super::types::{Event, EventType, KeyValue};

/// What undoes one change: its revision and the key's live generation before it.
struct Undo {
    rev: Revision,
    before: Option<(i64, i64)>,
}

pub(crate) struct WriteTxn<'a> {
    db: &'a mut Db,
    /// Locked per operation, and for writing only around index updates (a put's includes
    /// its insert into the tree's right edge, in memory but for a page read at most), so
    /// readers on other threads never wait for a tree commit.
    index: &'a IndexLock,
    begin: i64,
    undo: Vec<Undo>,
    /// A compaction began: its index walk and tree deletions are the store's to do.
    compacted: bool,
    /// One per change, in sub-revision order; dropped by a rollback.
    events: Vec<Event>,
    /// Whether events carry the key as it was before the change.
    capture_prev: bool,
}

impl<'a> WriteTxn<'a> {
    /// Starts a transaction on a store whose current revision is `begin`.
    /// `capture_prev`: events carry the key as it was before each change (a read each).
    pub fn new(
        db: &'a mut Db,
        index: &'a IndexLock,
        begin: i64,
        capture_prev: bool,
    ) -> WriteTxn<'a> {
        WriteTxn {
            db,
            index,
            begin,
            undo: Vec::new(),
            compacted: false,
            events: Vec::new(),
            capture_prev,
        }
    }

    /// The events of the changes made, in order; none after a rollback.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The key as it was before this transaction (etcd reads a watch's previous key-value
    /// at the revision before the event's, also for a key a txn changes twice).
    fn prev_for_event(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        if !self.capture_prev {
            return Ok(None);
        }
        let before = RangeOptions {
            rev: self.begin,
            ..RangeOptions::default()
        };
        Ok(self.range(KeyRange::Single(key), before)?.kvs.pop())
    }

    /// The store's revision when the transaction began.
    pub fn begin_rev(&self) -> i64 {
        self.begin
    }

    /// Whether a compaction began in this transaction (its index walk is the store's to do).
    pub fn take_compacted(&mut self) -> bool {
        std::mem::take(&mut self.compacted)
    }

    pub fn changed(&self) -> bool {
        !self.undo.is_empty()
    }

    /// The revision reads see: the transaction's own once it has written.
    pub fn read_rev(&self) -> i64 {
        self.begin + i64::from(self.changed())
    }

    pub fn compact_revision(&self) -> i64 {
        self.index.read().compact_revision()
    }

    fn next_rev(&self) -> Revision {
        let sub = u32::try_from(self.undo.len()).expect("fewer than 2^32 changes in one request");
        Revision::new(self.begin + 1, sub)
    }

    /// etcd's `storeTxnWrite.Range`.
    pub fn range(&self, range: KeyRange<'_>, ro: RangeOptions) -> Result<RangeResult, MvccError> {
        let selection = range::select(self.index, range, self.read_rev(), ro)?;
        range::fetch(&*self.db, selection)
    }

    /// The key as this transaction sees it now.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        Ok(self
            .range(KeyRange::Single(key), RangeOptions::default())?
            .kvs
            .pop())
    }

    /// Writes a new revision of `key`; returns the transaction's revision.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, MvccError> {
        let rev = self.next_rev();
        let prev_kv = self.prev_for_event(key)?;
        let db = &mut *self.db;
        let mut generation = (0, 0);
        // One search of the index; the tree is written first, so that if it fails the index
        // still describes the tree.
        let before = self.index.write().put_with(key, rev, |created, version| {
            generation = (created, version);
            let record = Record::put(key, created, version, lease, value).encode();
            db.put_owned(PRIMARY_TREE, &rev.to_key(), record)
        })?;
        self.undo.push(Undo { rev, before });
        let (create_revision, version) = generation;
        self.events.push(Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: key.to_vec(),
                create_revision,
                mod_revision: rev.main,
                version,
                value: value.to_vec(),
                lease,
            },
            prev_kv,
        });
        Ok(rev.main)
    }

    /// Deletes every key in `range` visible to this transaction; returns (deleted, header
    /// revision) as etcd's `storeTxnWrite.DeleteRange` does.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> Result<(i64, i64), MvccError> {
        let keys = self.index.read().live_keys(range, self.read_rev());
        for key in &keys {
            self.delete(key)?;
        }
        let deleted = keys.len() as i64;
        let rev = if deleted != 0 || self.changed() {
            self.begin + 1
        } else {
            self.begin
        };
        Ok((deleted, rev))
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), MvccError> {
        let rev = self.next_rev();
        let prev_kv = self.prev_for_event(key)?;
        let before = self.index.read().live_generation(key);
        self.db.put(
            PRIMARY_TREE,
            &rev.to_key(),
            &Record::tombstone(key).encode(),
        )?;
        self.index.write().tombstone(key, rev);
        self.undo.push(Undo { rev, before });
        self.events.push(Event {
            kind: EventType::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: rev.main,
                ..KeyValue::default()
            },
            prev_kv,
        });
        Ok(())
    }

    /// Undoes every change, newest first, leaving tree and index as they were at `begin`.
    pub fn rollback(&mut self) -> Result<(), MvccError> {
        self.events.clear();
        while let Some(Undo { rev, before }) = self.undo.pop() {
            let bytes = self.db.get(PRIMARY_TREE, &rev.to_key())?;
            let bytes = bytes.ok_or(MvccError::MissingRevision(rev))?;
            let key = Record::decode(&bytes, rev)?.key.to_vec();
            self.db.delete(PRIMARY_TREE, &rev.to_key())?;
            self.index.write().undo(&key, rev, before);
        }
        Ok(())
    }

    /// etcd's `store.Compact`: from now on reads below `rev` fail. The store then drops
    /// what the compaction makes unreachable from the index, a chunk of keys at a time, and
    /// deletes those revisions' records from the tree, in bounded steps (see
    /// `Store::compact_step`).
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        if rev > self.begin {
            return Err(MvccError::FutureRev);
        }
        self.index.write().begin_compact(rev);
        self.compacted = true;
        Ok(())
    }
}
