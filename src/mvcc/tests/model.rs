//! A deliberately naive model of etcd 3.4's key-value semantics for the property test: the
//! whole state at every revision (a `BTreeMap` per revision) and a log of every change ever
//! made, with no index, no tree and no sharing of the store's read or write paths. It reuses
//! only `validate` (request-shape rules, tested on their own in `etcd_rules`) and the record
//! encoding (to hash the revisions it decides are retained).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::mvcc::record::Record;
use crate::mvcc::{
    validate, CompactionResponse, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, HashKvResponse, KeyValue, PutRequest, PutResponse, RangeRequest,
    RangeResponse, Request, RequestOp, Response, ResponseHeader, ResponseOp, Revision, SortOrder,
    SortTarget, TargetUnion, TxnRequest, TxnResponse,
};

pub type State = BTreeMap<Vec<u8>, KeyValue>;
/// One change: revision, key, new value (`None` for a delete).
type Change = (Revision, Vec<u8>, Option<KeyValue>);
/// Errors compared by their messages.
pub type Outcome<T> = Result<T, String>;

const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const COMPACTED: &str = "mvcc: required revision has been compacted";
const FUTURE: &str = "mvcc: required revision is a future revision";

/// The lease the tests' lease hook reports as missing.
pub const MISSING_LEASE: i64 = 3;

pub struct Model {
    /// `states[r]` holds every live key at revision r; the store starts at revision 1.
    states: Vec<State>,
    /// Every change ever made, in order.
    log: Vec<Change>,
    pub compact: i64,
}

/// etcd's key-range convention, stated directly.
pub fn in_range(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => key <= k && k < end,
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            states: vec![State::new(), State::new()],
            log: Vec::new(),
            compact: -1,
        }
    }

    pub fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    pub fn apply(&mut self, request: &Request) -> Outcome<Response> {
        validate(request, usize::MAX).map_err(|e| e.to_string())?;
        match request {
            Request::Range(r) => self.range(r, self.current()).map(Response::Range),
            Request::Put(p) => {
                if p.lease == MISSING_LEASE {
                    return Err(LEASE_NOT_FOUND.into());
                }
                let mut tx = Tx::new(self);
                let response = tx.put(p)?;
                self.commit(tx);
                Ok(Response::Put(response))
            }
            Request::DeleteRange(d) => {
                let mut tx = Tx::new(self);
                let response = tx.delete(d);
                self.commit(tx);
                Ok(Response::DeleteRange(response))
            }
            Request::Txn(t) => self.txn(t).map(Response::Txn),
            Request::Compaction(c) => {
                if c.revision <= self.compact {
                    return Err(COMPACTED.into());
                }
                if c.revision > self.current() {
                    return Err(FUTURE.into());
                }
                self.compact = c.revision;
                let header = ResponseHeader {
                    revision: self.current(),
                };
                Ok(Response::Compaction(CompactionResponse { header }))
            }
        }
    }

    /// A Range by a reader whose current revision is `current` (checked against the model's
    /// compaction now, as etcd does).
    pub fn range(&self, r: &RangeRequest, current: i64) -> Outcome<RangeResponse> {
        if r.key.is_empty() {
            return Err("etcdserver: key is not provided".into());
        }
        if r.revision > current {
            return Err(FUTURE.into());
        }
        let at = if r.revision <= 0 { current } else { r.revision };
        if at < self.compact {
            return Err(COMPACTED.into());
        }
        Ok(range_state(&self.states[at as usize], r, current))
    }

    /// HashKV over the revisions a store compacted at `compact` keeps, read at `rev` by a store
    /// whose current revision is `current`.
    pub fn hash(&self, rev: i64, current: i64, compact: i64) -> Outcome<HashKvResponse> {
        if rev > 0 && rev < compact {
            return Err(COMPACTED.into());
        }
        if rev > current {
            return Err(FUTURE.into());
        }
        let rev = if rev == 0 { current } else { rev };
        let mut hash = 0;
        for (revision, key, kv) in self
            .retained(compact)
            .into_iter()
            .filter(|e| e.0.main <= rev)
        {
            let record = match kv {
                Some(kv) => Record::put(key, kv.create_revision, kv.version, kv.lease, &kv.value),
                None => Record::tombstone(key),
            };
            hash = crc32c::crc32c_append(hash, &revision.to_key());
            hash = crc32c::crc32c_append(hash, &record.encode());
        }
        let header = ResponseHeader { revision: current };
        Ok(HashKvResponse {
            header,
            hash,
            compact_revision: compact,
        })
    }

    /// The changes still stored after compaction at `compact`, in revision order: per key, the
    /// newest change at or before `compact` and all after it, but not a delete before `compact`.
    fn retained(&self, compact: i64) -> Vec<&Change> {
        let mut by_key: BTreeMap<&[u8], Vec<&Change>> = BTreeMap::new();
        for entry in &self.log {
            by_key.entry(&entry.1).or_default().push(entry);
        }
        let mut out = Vec::new();
        for changes in by_key.values() {
            let from = match changes.iter().rposition(|c| c.0.main <= compact) {
                None => 0,
                Some(i) if changes[i].2.is_none() && changes[i].0.main < compact => i + 1,
                Some(i) => i,
            };
            out.extend_from_slice(&changes[from..]);
        }
        out.sort_by_key(|c| c.0);
        out
    }

    fn commit(&mut self, tx: Tx) {
        if tx.changes.is_empty() {
            return;
        }
        let main = tx.begin + 1;
        for (sub, (key, kv)) in tx.changes.into_iter().enumerate() {
            self.log.push((Revision::new(main, sub as u32), key, kv));
        }
        self.states.push(tx.work);
    }

    fn txn(&mut self, t: &TxnRequest) -> Outcome<TxnResponse> {
        let base = self.states.last().unwrap().clone();
        let path = Path::of(&base, t);
        let read_only = all_ops(t).all(|op| matches!(op, RequestOp::Range(_)));
        if !read_only {
            path.walk(t, &mut |op| match op {
                RequestOp::Put(p)
                    if (p.ignore_value || p.ignore_lease) && !base.contains_key(&p.key) =>
                {
                    Err(KEY_NOT_FOUND.into())
                }
                RequestOp::Put(p) if p.lease == MISSING_LEASE => Err(LEASE_NOT_FOUND.into()),
                _ => Ok(()),
            })?;
        }
        let (current, compact) = (self.current(), self.compact);
        path.walk(t, &mut |op| match op {
            RequestOp::Range(r) if r.revision != 0 && r.revision > current => Err(FUTURE.into()),
            RequestOp::Range(r) if r.revision != 0 && r.revision < compact => Err(COMPACTED.into()),
            _ => Ok(()),
        })?;
        let mut tx = Tx::new(self);
        let mut response = self.run(&mut tx, t, &path)?;
        response.header.revision = tx.read_rev();
        self.commit(tx);
        Ok(response)
    }

    fn run(&self, tx: &mut Tx, t: &TxnRequest, path: &Path) -> Outcome<TxnResponse> {
        let ops = if path.ok { &t.success } else { &t.failure };
        let mut nested = path.nested.iter();
        let mut responses = Vec::new();
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    let at = if r.revision <= 0 {
                        tx.read_rev()
                    } else {
                        r.revision
                    };
                    let state = if at == tx.read_rev() {
                        &tx.work
                    } else {
                        &self.states[at as usize]
                    };
                    ResponseOp::Range(range_state(state, r, tx.read_rev()))
                }
                RequestOp::Put(p) => ResponseOp::Put(tx.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(tx.delete(d)),
                RequestOp::Txn(inner) => {
                    ResponseOp::Txn(self.run(tx, inner, nested.next().unwrap())?)
                }
            });
        }
        Ok(TxnResponse {
            header: ResponseHeader::default(),
            succeeded: path.ok,
            responses,
        })
    }
}

fn all_ops(t: &TxnRequest) -> impl Iterator<Item = &RequestOp> {
    t.success.iter().chain(&t.failure)
}

/// One write transaction of the model: a private copy of the state and its changes.
struct Tx {
    begin: i64,
    work: State,
    changes: Vec<(Vec<u8>, Option<KeyValue>)>,
}

impl Tx {
    fn new(model: &Model) -> Tx {
        Tx {
            begin: model.current(),
            work: model.states.last().unwrap().clone(),
            changes: Vec::new(),
        }
    }

    fn read_rev(&self) -> i64 {
        self.begin + i64::from(!self.changes.is_empty())
    }

    fn put(&mut self, p: &PutRequest) -> Outcome<PutResponse> {
        let prev = self.work.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(KEY_NOT_FOUND.into());
        }
        let rev = self.begin + 1;
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |kv| kv.version + 1),
            value: if p.ignore_value {
                prev.as_ref().unwrap().value.clone()
            } else {
                p.value.clone()
            },
            lease: if p.ignore_lease {
                prev.as_ref().unwrap().lease
            } else {
                p.lease
            },
        };
        self.work.insert(p.key.clone(), kv.clone());
        self.changes.push((p.key.clone(), Some(kv)));
        let prev_kv = if p.prev_kv { prev } else { None };
        Ok(PutResponse {
            header: ResponseHeader { revision: rev },
            prev_kv,
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = self
            .work
            .keys()
            .filter(|k| in_range(&d.key, &d.range_end, k))
            .cloned()
            .collect();
        let prev_kvs = if d.prev_kv {
            keys.iter().map(|k| self.work[k].clone()).collect()
        } else {
            Vec::new()
        };
        for key in &keys {
            self.work.remove(key);
            self.changes.push((key.clone(), None));
        }
        let changed = !keys.is_empty() || !self.changes.is_empty();
        let revision = self.begin + i64::from(changed);
        DeleteRangeResponse {
            header: ResponseHeader { revision },
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }
}

/// The branch each (nested) txn takes, from the state before the txn.
struct Path {
    ok: bool,
    nested: Vec<Path>,
}

impl Path {
    fn of(base: &State, t: &TxnRequest) -> Path {
        let ok = t.compare.iter().all(|c| {
            let kvs: Vec<&KeyValue> = base
                .values()
                .filter(|kv| in_range(&c.key, &c.range_end, &kv.key))
                .collect();
            if kvs.is_empty() {
                c.target != CompareTarget::Value && compare_one(c, &KeyValue::default())
            } else {
                kvs.into_iter().all(|kv| compare_one(c, kv))
            }
        });
        let ops = if ok { &t.success } else { &t.failure };
        let nested = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::Txn(inner) => Some(Path::of(base, inner)),
                _ => None,
            })
            .collect();
        Path { ok, nested }
    }

    fn walk(&self, t: &TxnRequest, f: &mut dyn FnMut(&RequestOp) -> Outcome<()>) -> Outcome<()> {
        let ops = if self.ok { &t.success } else { &t.failure };
        let mut nested = self.nested.iter();
        for op in ops {
            match op {
                RequestOp::Txn(inner) => nested.next().unwrap().walk(inner, f)?,
                _ => f(op)?,
            }
        }
        Ok(())
    }
}

fn compare_one(c: &crate::mvcc::Compare, kv: &KeyValue) -> bool {
    let ordering = match (c.target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.cmp(v),
        (CompareTarget::Value, _) => kv.value.cmp(&Vec::new()),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
        (CompareTarget::Version, _) => kv.version.cmp(&0),
        (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
        (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
        (CompareTarget::Lease, _) => kv.lease.cmp(&0),
    };
    match c.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// etcd 3.4's Range over one state: count before limit and filters; sort or filters fetch
/// everything, otherwise only `limit + 1` keys are fetched before sorting.
fn range_state(state: &State, r: &RangeRequest, header: i64) -> RangeResponse {
    let all: Vec<KeyValue> = state
        .values()
        .filter(|kv| in_range(&r.key, &r.range_end, &kv.key))
        .cloned()
        .collect();
    let header = ResponseHeader { revision: header };
    let count = all.len() as i64;
    if r.count_only {
        return RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count,
        };
    }
    let filters = [
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    ];
    let fetch_all =
        r.sort_order != SortOrder::None || filters.iter().any(|&f| f != 0) || r.limit <= 0;
    let fetched = if fetch_all {
        all.len()
    } else {
        r.limit.saturating_add(1).min(all.len() as i64) as usize
    };
    let mut kvs: Vec<KeyValue> = all.into_iter().take(fetched).collect();
    kvs.retain(|kv| {
        (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
    });
    let order = match (r.sort_order, r.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let by = |a: &KeyValue, b: &KeyValue| match r.sort_target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(by),
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
    }
    let more = r.limit > 0 && kvs.len() as i64 > r.limit;
    if more {
        kvs.truncate(r.limit as usize);
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse {
        header,
        kvs,
        more,
        count,
    }
}
