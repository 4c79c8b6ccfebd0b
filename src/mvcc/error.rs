//! The MVCC layer's error type. Request errors display exactly etcd 3.4's messages (the
//! `etcdserver:` ones as its gRPC layer returns them, the `mvcc:` ones as its store returns
//! them), so clients see the strings they already match on.

use crate::btree::BtreeError;

use super::revision::Revision;

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// A grant that cannot be made (the id is taken, the TTL too large).
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),

    /// The tree failed underneath; the store is stopped (see [`MvccError::is_fatal`]).
    #[error("mvcc storage: {0}")]
    Storage(#[from] BtreeError),
    #[error("mvcc: corrupt record at revision {rev}: {reason}")]
    CorruptRecord { rev: Revision, reason: &'static str },
    #[error("mvcc: corrupt tree key {key:02x?}: {reason}")]
    CorruptRevisionKey { key: Vec<u8>, reason: &'static str },
    #[error("mvcc: corrupt commit metadata: {0}")]
    CorruptMeta(&'static str),
    #[error("mvcc: revision {0} is in the key index but not in the tree")]
    MissingRevision(Revision),
    #[error("mvcc: the store stopped after a storage error; reopen it and replay the log")]
    Poisoned,
}

impl MvccError {
    /// A checkpoint that failed because the file system is full: undone, and the store
    /// goes on (the log still holds everything applied); try again once there is space.
    pub fn is_no_space(&self) -> bool {
        matches!(self, MvccError::Storage(e) if e.is_no_space())
    }

    /// Fatal errors leave the store unusable (a write may be half applied); everything else is
    /// a request error that changed nothing.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            MvccError::Storage(_)
                | MvccError::CorruptRecord { .. }
                | MvccError::CorruptRevisionKey { .. }
                | MvccError::CorruptMeta(_)
                | MvccError::MissingRevision(_)
                | MvccError::Poisoned
        )
    }
}
