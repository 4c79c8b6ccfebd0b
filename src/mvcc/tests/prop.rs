//! Model-based property test: random histories of puts, deletes (single key, ranges, from-key),
//! txns with compares and nested txns, compactions, ranges with every option at past
//! revisions, HashKV, read views taken and queried later, checkpoints, reopens and replays,
//! checked response by response (errors included) against [`Model`].
//!
//! Revisions in generated requests are codes resolved against the state when the request
//! runs (see [`resolve`]), so histories hit the current, past, compacted and future revisions.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError};

use super::harness::Harness;
use super::model::{Model, Outcome, MISSING_LEASE};
use crate::btree::DbOptions;
use crate::mvcc::{
    ApplyOutcome, CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    Event, EventType, KeyValue, PutRequest, RaftPosition, RangeRequest, ReadView, Request,
    RequestOp, Response, SortOrder, SortTarget, Store, TargetUnion, TxnRequest,
};

const KEYS: &[&[u8]] = &[
    b"a",
    b"ab",
    b"b",
    b"c",
    b"d",
    b"\0",
    b"a-key-longer-than-twenty-three-bytes",
];

/// Revision codes: small values are literal; `BACK + k` is k below the current revision;
/// `FUTURE` is one above it; `AT_COMPACT + 1 + k` is k away from the compaction revision.
const BACK: i64 = 1_000;
const FUTURE: i64 = 2_000;
const AT_COMPACT: i64 = 3_000;

fn resolve(code: i64, current: i64, compact: i64) -> i64 {
    match code {
        c if c >= AT_COMPACT => compact + (c - AT_COMPACT - 1),
        c if c >= FUTURE => current + 1,
        c if c >= BACK => current - (c - BACK),
        c => c,
    }
}

fn rev_code() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(0),
        1 => prop_oneof![Just(-1), Just(-7), 1..=4i64],
        4 => (0..6i64).prop_map(|k| BACK + k),
        1 => Just(FUTURE),
        2 => (0..3i64).prop_map(|k| AT_COMPACT + k),
    ]
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![80 => select(KEYS).prop_map(|k| k.to_vec()), 1 => Just(Vec::new())]
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(Vec::new()),
        1 => Just(vec![0]),
        2 => select(KEYS).prop_map(|k| k.to_vec()),
        1 => Just(b"z".to_vec()),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(select(b"xyz".to_vec()), 0..3)
}

fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0), 1 => 1..=MISSING_LEASE]
}

/// A min/max revision filter: mostly unset, else near the current revision or small.
fn filter() -> impl Strategy<Value = i64> {
    prop_oneof![6 => Just(0), 2 => (0..8i64).prop_map(|k| BACK + k), 1 => 1..=6i64]
}

fn sort() -> impl Strategy<Value = (SortOrder, SortTarget)> {
    let order = select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
    let target = select(vec![
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ]);
    (order, target)
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    let shape = (
        key(),
        range_end(),
        prop_oneof![Just(0i64), Just(-1), 1..=3i64],
        rev_code(),
    );
    let flags = (sort(), any::<bool>(), prop::bool::weighted(0.2));
    let filters = (filter(), filter(), filter(), filter());
    (shape, flags, filters).prop_map(
        |((key, range_end, limit, revision), (sort, keys_only, count_only), f)| RangeRequest {
            key,
            range_end,
            limit,
            revision,
            sort_order: sort.0,
            sort_target: sort.1,
            serializable: false,
            keys_only,
            count_only,
            min_mod_revision: f.0,
            max_mod_revision: f.1,
            min_create_revision: f.2,
            max_create_revision: f.3,
        },
    )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    let flags = (
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    );
    (key(), value(), lease(), flags).prop_map(
        |(key, value, lease, (prev_kv, ignore_value, ignore_lease, malformed))| {
            // The ignore flags come without a value or lease, except when malformed on purpose.
            let value = if ignore_value && !malformed {
                Vec::new()
            } else {
                value
            };
            let lease = if ignore_lease && !malformed { 0 } else { lease };
            PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        },
    )
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = select(vec![
        CompareTarget::Version,
        CompareTarget::Create,
        CompareTarget::Mod,
        CompareTarget::Value,
        CompareTarget::Lease,
    ]);
    let result = select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    let number = 0..12i64;
    let matching = (target.clone(), number.clone(), value()).prop_map(|(t, n, v)| {
        let union = match t {
            CompareTarget::Version => TargetUnion::Version(n % 4),
            CompareTarget::Create => TargetUnion::CreateRevision(n),
            CompareTarget::Mod => TargetUnion::ModRevision(n),
            CompareTarget::Value => TargetUnion::Value(v),
            CompareTarget::Lease => TargetUnion::Lease(n % 4),
        };
        (t, Some(union))
    });
    let mismatched = (
        target,
        prop::option::of(number.prop_map(TargetUnion::Version)),
    );
    let target = prop_oneof![4 => matching, 1 => mismatched];
    let end = prop_oneof![4 => Just(Vec::new()), 1 => range_end()];
    (key(), end, target, result).prop_map(|(key, range_end, (target, target_union), result)| {
        Compare {
            result,
            target,
            key,
            target_union,
            range_end,
        }
    })
}

fn txn_request(ops: BoxedStrategy<RequestOp>) -> impl Strategy<Value = TxnRequest> {
    (vec(compare(), 0..3), vec(ops.clone(), 0..4), vec(ops, 0..3)).prop_map(
        |(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        },
    )
}

fn request_op() -> impl Strategy<Value = RequestOp> {
    let leaf = prop_oneof![
        1 => range_request().prop_map(RequestOp::Range),
        2 => put_request().prop_map(RequestOp::Put),
        1 => delete_request().prop_map(RequestOp::DeleteRange),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| {
        txn_request(inner).prop_map(RequestOp::Txn)
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        4 => put_request().prop_map(Request::Put),
        2 => delete_request().prop_map(Request::DeleteRange),
        3 => txn_request(request_op().boxed()).prop_map(Request::Txn),
        1 => range_request().prop_map(Request::Range),
        1 => prop_oneof![(0..4i64).prop_map(|k| BACK + k), Just(FUTURE), (0..3i64).prop_map(|k| AT_COMPACT + k)]
            .prop_map(|revision| Request::Compaction(CompactionRequest { revision, physical: true })),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// One Raft entry.
    Entry(Vec<Request>),
    Range(RangeRequest),
    Hash(i64),
    TakeView,
    /// Query the n-th view taken (modulo their number).
    ViewRange(usize, RangeRequest),
    ViewHash(usize, i64),
    Checkpoint,
    /// Checkpoint, close, open again.
    Reopen,
    /// Close without a checkpoint, open, replay the log past the applied index.
    Crash,
    /// Apply an already applied entry again.
    Replay(usize),
    /// Rebuild the key index from the tree and compare.
    CheckIndex,
}

fn op(with_crash: bool) -> BoxedStrategy<Op> {
    let ops = prop_oneof![
        12 => vec(request(), 1..4).prop_map(Op::Entry),
        3 => range_request().prop_map(Op::Range),
        1 => rev_code().prop_map(Op::Hash),
        1 => Just(Op::TakeView),
        2 => (any::<usize>(), range_request()).prop_map(|(i, r)| Op::ViewRange(i, r)),
        1 => (any::<usize>(), rev_code()).prop_map(|(i, c)| Op::ViewHash(i, c)),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => Just(Op::CheckIndex),
    ];
    if with_crash {
        prop_oneof![12 => ops, 1 => Just(Op::Crash)].boxed()
    } else {
        ops.boxed()
    }
}

fn resolve_range(r: &mut RangeRequest, current: i64, compact: i64) {
    for field in [
        &mut r.revision,
        &mut r.min_mod_revision,
        &mut r.max_mod_revision,
        &mut r.min_create_revision,
        &mut r.max_create_revision,
    ] {
        *field = resolve(*field, current, compact);
    }
}

fn resolve_request(request: &mut Request, current: i64, compact: i64) {
    match request {
        Request::Range(r) => resolve_range(r, current, compact),
        Request::Compaction(c) => c.revision = resolve(c.revision, current, compact),
        Request::Txn(t) => resolve_txn(t, current, compact),
        Request::Put(_) | Request::DeleteRange(_) => {}
    }
}

fn resolve_txn(t: &mut TxnRequest, current: i64, compact: i64) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match op {
            RequestOp::Range(r) => resolve_range(r, current, compact),
            RequestOp::Txn(inner) => resolve_txn(inner, current, compact),
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
        }
    }
}

fn outcome<T>(result: Result<T, crate::mvcc::MvccError>) -> Outcome<T> {
    result.map_err(|e| e.to_string())
}

/// How the run closes and opens the store.
#[derive(Clone, Copy, PartialEq)]
enum Reopening {
    /// Hand the checkpointed tree to a new store in-process: exercises the rebuild of the
    /// index from the tree. No crashes.
    InProcess,
    /// Really close and `Store::open` the file, with crashes (closing without a checkpoint).
    /// The tree keeps what the last checkpoint committed and the log replays the rest.
    OnDisk,
}

struct Run {
    h: Harness,
    model: Model,
    /// Views with the model's current and compaction revision when each was taken.
    views: Vec<(ReadView, i64, i64)>,
    /// Every entry applied: index, requests as applied, responses, events.
    log: Vec<LoggedEntry>,
    reopening: Reopening,
    /// The keys as the events say they are: every event applied in order.
    from_events: BTreeMap<Vec<u8>, KeyValue>,
}

type LoggedEntry = (u64, Vec<Request>, Vec<Outcome<Response>>, Vec<Event>);

impl Run {
    fn new(reopening: Reopening) -> Run {
        // Every lease the requests name exists, but [`MISSING_LEASE`]; granted and
        // checkpointed before the history starts.
        let mut h = Harness::new();
        for id in 1..MISSING_LEASE {
            h.grant(id);
        }
        h.store.checkpoint().unwrap();
        Run {
            h,
            model: Model::new(),
            views: Vec::new(),
            log: Vec::new(),
            reopening,
            from_events: BTreeMap::new(),
        }
        .capturing_prev()
    }

    fn capturing_prev(mut self) -> Run {
        self.h.store.set_capture_prev(true);
        self
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Entry(batch) => self.entry(batch)?,
            Op::Range(r) => self.range(r)?,
            Op::Hash(code) => {
                let rev = resolve(*code, self.model.current(), self.model.compact);
                let want = self
                    .model
                    .hash(rev, self.model.current(), self.model.compact);
                prop_assert_eq!(outcome(self.h.store.hash_kv(rev)), want.clone());
                prop_assert_eq!(outcome(self.h.store.read_view().hash_kv(rev)), want);
            }
            Op::TakeView => self.views.push((
                self.h.store.read_view(),
                self.model.current(),
                self.model.compact,
            )),
            Op::ViewRange(i, r) if !self.views.is_empty() => {
                let (view, current, compact) = &self.views[i % self.views.len()];
                let mut r = r.clone();
                resolve_range(&mut r, *current, *compact);
                let want = self.model.range(&r, *current);
                prop_assert_eq!(outcome(view.range(&r)), want.clone());
                prop_assert_eq!(outcome(view.range_in_chunks(&r, 1, || {})), want);
            }
            Op::ViewHash(i, code) if !self.views.is_empty() => {
                let (view, current, compact) = &self.views[i % self.views.len()];
                let rev = resolve(*code, *current, *compact);
                prop_assert_eq!(
                    outcome(view.hash_kv(rev)),
                    self.model.hash(rev, *current, *compact)
                );
            }
            Op::ViewRange(..) | Op::ViewHash(..) => {}
            Op::Checkpoint => self.h.store.checkpoint().map_err(fail)?,
            Op::Reopen => self.reopen(false)?,
            Op::Crash => self.reopen(true)?,
            Op::Replay(i) if !self.log.is_empty() => {
                let (index, batch, _, _) = &self.log[i % self.log.len()];
                let at = RaftPosition {
                    index: *index,
                    term: 1,
                };
                let replayed = self.h.store.apply(at, batch).map_err(fail)?;
                prop_assert!(matches!(replayed, ApplyOutcome::Skipped));
            }
            Op::Replay(_) => {}
            Op::CheckIndex => prop_assert!(self.h.store.index_matches_tree().map_err(fail)?),
        }
        prop_assert_eq!(self.h.store.current_revision(), self.model.current());
        prop_assert_eq!(self.h.store.compact_revision(), self.model.compact);
        Ok(())
    }

    fn entry(&mut self, batch: &[Request]) -> Result<(), TestCaseError> {
        let mut applied = Vec::new();
        let mut want = Vec::new();
        for request in batch {
            let mut request = request.clone();
            resolve_request(&mut request, self.model.current(), self.model.compact);
            want.push(self.model.apply(&request));
            applied.push(request);
        }
        let before = self.h.store.current_revision();
        let got: Vec<Outcome<Response>> = self
            .h
            .apply_batch(&applied)
            .into_iter()
            .map(outcome)
            .collect();
        prop_assert_eq!(&got, &want);
        let events = self.h.store.take_events();
        self.check_events(before, &events)?;
        self.log.push((self.h.next_index - 1, applied, got, events));
        Ok(())
    }

    /// The events of an entry: each revision it wrote has events, in order, and nothing
    /// else does; each event's previous key-value is what the events before it left; and
    /// the events applied in order give exactly the store's keys.
    fn check_events(&mut self, before: i64, events: &[Event]) -> Result<(), TestCaseError> {
        let now = self.h.store.current_revision();
        let revs: BTreeSet<i64> = events.iter().map(Event::revision).collect();
        prop_assert_eq!(revs, (before + 1..=now).collect::<BTreeSet<i64>>());
        prop_assert!(events
            .windows(2)
            .all(|w| w[0].revision() <= w[1].revision()));
        // The revision-keyed tree gives the same events to a watcher catching up, in
        // chunks of whole revisions.
        let all = usize::MAX;
        // Only above the compaction revision (a compaction in the same entry may have
        // removed revisions), and a previous key-value only where the revision before is
        // not compacted.
        let compacted = self.h.store.compact_revision();
        let from = (before + 1).max(compacted + 1);
        let (history, through) = self.h.store.history(from, all, all, true).map_err(fail)?;
        let readable = |e: &Event| {
            let mut e = e.clone();
            if e.revision() - 1 < compacted {
                e.prev_kv = None;
            }
            e
        };
        let kept: Vec<Event> = events
            .iter()
            .filter(|e| e.revision() >= from)
            .map(readable)
            .collect();
        prop_assert_eq!(&history, &kept);
        prop_assert_eq!(through, now);
        if let Some(first) = kept.first() {
            let rev = first.revision();
            let (chunk, through) = self.h.store.history(from, 1, all, true).map_err(fail)?;
            prop_assert_eq!(through, if rev == now { now } else { rev });
            let want: Vec<Event> = kept
                .iter()
                .filter(|e| e.revision() == rev)
                .cloned()
                .collect();
            prop_assert_eq!(chunk, want);
        }
        let mut before_rev = (0, self.from_events.clone());
        for e in events {
            if before_rev.0 != e.revision() {
                before_rev = (e.revision(), self.from_events.clone());
            }
            let before_rev = &before_rev.1;
            let prev = match e.kind {
                EventType::Put => self.from_events.insert(e.kv.key.clone(), e.kv.clone()),
                EventType::Delete => {
                    prop_assert_eq!(
                        (
                            e.kv.create_revision,
                            e.kv.version,
                            e.kv.value.len(),
                            e.kv.lease
                        ),
                        (0, 0, 0, 0)
                    );
                    let prev = self.from_events.remove(&e.kv.key);
                    prop_assert!(prev.is_some(), "a delete event for a key that is not live");
                    prev
                }
            };
            // The previous key-value is the key before the revision, also for a key the
            // revision changes twice.
            if e.prev_kv != prev {
                prop_assert!(before_rev.get(&e.kv.key) == e.prev_kv.as_ref());
            }
        }
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let live = self.h.store.range(&all).map_err(fail)?.kvs;
        prop_assert_eq!(live, self.from_events.values().cloned().collect::<Vec<_>>());
        Ok(())
    }

    /// The same Range four ways: on the writer, through a fresh view (walking the index in
    /// one chunk and a key per chunk), through the log.
    fn range(&mut self, r: &RangeRequest) -> Result<(), TestCaseError> {
        let mut r = r.clone();
        resolve_range(&mut r, self.model.current(), self.model.compact);
        let want = self.model.range(&r, self.model.current());
        prop_assert_eq!(outcome(self.h.store.range(&r)), want.clone());
        let view = self.h.store.read_view();
        prop_assert_eq!(outcome(view.range(&r)), want.clone());
        prop_assert_eq!(outcome(view.range_in_chunks(&r, 1, || {})), want);
        self.entry(&[Request::Range(r)])
    }

    fn reopen(&mut self, crash: bool) -> Result<(), TestCaseError> {
        if !crash {
            self.h.store.checkpoint().map_err(fail)?;
        }
        // Views keep the old store's index; they are not part of the reopened store.
        self.views.clear();
        let reopened = match self.reopening {
            Reopening::InProcess => self.h.reopen(|old, _| Store::from_db(old.into_db())),
            Reopening::OnDisk => self.h.reopen(|old, path| {
                drop(old);
                Store::open(path, DbOptions::default())
            }),
        };
        reopened.map_err(fail)?;
        self.h.store.set_capture_prev(true);
        self.replay_log()
    }

    /// What the apply loop does after a restart: feed the log from the applied index on. Each
    /// replayed entry must answer exactly as it did the first time.
    fn replay_log(&mut self) -> Result<(), TestCaseError> {
        let applied = self.h.store.applied().index;
        for (index, batch, responses, events) in &self.log {
            let at = RaftPosition {
                index: *index,
                term: 1,
            };
            match self.h.store.apply(at, batch).map_err(fail)? {
                ApplyOutcome::Skipped => prop_assert!(*index <= applied),
                ApplyOutcome::Applied(got) => {
                    prop_assert!(*index > applied);
                    let got: Vec<Outcome<Response>> = got.into_iter().map(outcome).collect();
                    prop_assert_eq!(&got, responses);
                    // Replayed, an entry causes the same events as the first time.
                    prop_assert_eq!(&self.h.store.take_events(), events);
                }
            }
        }
        Ok(())
    }

    /// After the history: every readable revision matches the model in full.
    fn check_all_revisions(&mut self) -> Result<(), TestCaseError> {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        for rev in self.model.compact.max(1)..=self.model.current() {
            let r = RangeRequest {
                revision: rev,
                ..all.clone()
            };
            prop_assert_eq!(
                outcome(self.h.store.range(&r)),
                self.model.range(&r, self.model.current())
            );
        }
        prop_assert!(self.h.store.index_matches_tree().map_err(fail)?);
        Ok(())
    }
}

fn fail(e: crate::mvcc::MvccError) -> TestCaseError {
    TestCaseError::fail(format!("store error: {e}"))
}

fn run_history(ops: &[Op], reopening: Reopening) -> Result<(), TestCaseError> {
    let mut run = Run::new(reopening);
    for op in ops {
        run.step(op)?;
    }
    run.check_all_revisions()
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn store_matches_model(ops in vec(op(false), 1..50)) {
        run_history(&ops, Reopening::InProcess)?;
    }
}

proptest! {
    #![proptest_config(Config { cases: 128, failure_persistence: None, ..Config::default() })]

    /// Crashes lose what followed the last checkpoint; replaying the log must bring back the
    /// same state and the same responses.
    #[test]
    fn store_matches_model_across_crashes(ops in vec(op(true), 1..40)) {
        run_history(&ops, Reopening::OnDisk)?;
    }
}
