//! A store in a temporary directory, fed one Raft entry per call, and request builders.

use std::path::PathBuf;

use tempfile::TempDir;

use crate::btree::DbOptions;
use crate::lease::LeaseOp;
use crate::mvcc::{
    ApplyOutcome, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    MvccError, PutRequest, RaftPosition, RangeRequest, Request, RequestOp, Response, Store,
    TargetUnion, TxnRequest,
};

pub struct Harness {
    pub store: Store,
    pub next_index: u64,
    dir: TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(db_path(&dir), DbOptions::default()).unwrap();
        Harness {
            store,
            next_index: 1,
            dir,
        }
    }

    pub fn path(&self) -> PathBuf {
        db_path(&self.dir)
    }

    /// Replaces the store with what `reopen` makes of it (given the old store and its path).
    pub fn reopen(
        &mut self,
        reopen: impl FnOnce(Store, PathBuf) -> Result<Store, MvccError>,
    ) -> Result<(), MvccError> {
        // A throwaway store stands in while the real one is handed over.
        let stand_in = Store::open(self.path().with_extension("swap"), DbOptions::default())?;
        let old = std::mem::replace(&mut self.store, stand_in);
        self.store = reopen(old, self.path())?;
        Ok(())
    }

    /// Applies `batch` as the next Raft entry.
    pub fn apply_batch(&mut self, batch: &[Request]) -> Vec<Result<Response, MvccError>> {
        let at = self.next_position();
        match self.store.apply(at, batch).unwrap() {
            ApplyOutcome::Applied(results) => {
                // As the server's apply loop does: finish a compaction's tree deletions.
                self.store.finish_compaction().unwrap();
                results
            }
            ApplyOutcome::Skipped => panic!("fresh index {} skipped", at.index),
        }
    }

    fn next_position(&mut self) -> RaftPosition {
        let at = RaftPosition {
            index: self.next_index,
            term: 1,
        };
        self.next_index += 1;
        at
    }

    pub fn apply(&mut self, request: Request) -> Result<Response, MvccError> {
        self.apply_batch(&[request]).pop().unwrap()
    }

    /// Applies a lease operation as the next Raft entry.
    pub fn lease(&mut self, op: LeaseOp) -> Result<Response, MvccError> {
        let at = self.next_position();
        match self.store.apply_lease(at, &op).unwrap() {
            ApplyOutcome::Applied(mut results) => results.pop().unwrap(),
            ApplyOutcome::Skipped => panic!("fresh index {} skipped", at.index),
        }
    }

    /// Grants lease `id` with a TTL of 60 s.
    pub fn grant(&mut self, id: i64) {
        self.lease(LeaseOp::Grant { id, ttl: 60 })
            .unwrap_or_else(|e| panic!("grant {id}: {e}"));
    }

    /// Applies and unwraps a request that must succeed.
    pub fn ok(&mut self, request: Request) -> Response {
        self.apply(request)
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    /// Applies a request that must fail, returning the error's message.
    pub fn err(&mut self, request: Request) -> String {
        match self.apply(request) {
            Ok(r) => panic!("request succeeded: {r:?}"),
            Err(e) => e.to_string(),
        }
    }
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("db")
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn del(key: &str, range_end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: false,
    }
}

pub fn get(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

pub fn compact(revision: i64) -> Request {
    Request::Compaction(CompactionRequest {
        revision,
        physical: false,
    })
}

pub fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

pub fn keys_of(kvs: &[crate::mvcc::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}
