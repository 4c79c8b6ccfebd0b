//! Results for a front end that waits on many requests at once, delivered a batch at a time.
//!
//! A write's result used to go to a channel of its own, so a front end holding a hundred
//! writes of one apply batch was woken a hundred times from another thread (an eventfd
//! write each), and ran each waiter, and wrote each response to its socket, alone. Writes
//! posted to a [`Hub`] carry the hub's mailbox and a token instead: the apply role sends
//! the results of one batch to one mailbox in one message ([`Deliveries`]), the hub's
//! dispatcher hands each to its waiter on the front end's own thread, and the waiters run
//! in the same turn of that thread, so their responses leave in one socket write.
//! Linearizable reads are gathered the same way into rounds ([`ReadRounds`]): one ReadIndex
//! for every read waiting when the round starts.

use super::front::{self, Failure, NO_LEADER_FOR_READ, OUTCOME_UNKNOWN};
use super::{Input, Proposal, Shared};
use crate::mvcc::Response;
use crate::node::NodeError;
use crate::protocol::ErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A write's result.
pub(crate) type Outcome = Result<Response, NodeError>;

/// One message to a mailbox: results under their tokens; `None` for a write whose reply was
/// dropped unanswered (a failing role: its outcome is unknown).
pub(crate) type Batch = Vec<(u64, Option<Outcome>)>;

/// Writes one hub waits on at most; more are refused as overload. The mailbox holds at most
/// one entry per write waiting, so this bounds it too.
const WAITING_MAX: usize = 1 << 16;
/// Linearizable reads one [`ReadRounds`] holds at most.
const READS_WAITING_MAX: usize = 1 << 16;

/// Where a write's result goes.
pub(crate) enum Reply {
    /// The waiter's own channel.
    Own(flume::Sender<Outcome>),
    /// A hub's mailbox, under the waiter's token.
    Posted(Posted),
}

impl Reply {
    /// Sends one result on its own.
    pub(crate) fn send(self, outcome: Outcome) {
        match self {
            Reply::Own(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Posted(mut p) => {
                if let Some((to, token)) = p.take() {
                    let _ = to.send(vec![(token, Some(outcome))]);
                }
            }
        }
    }
}

/// A write posted to a hub: answered once, or, if dropped unanswered, reported lost.
pub(crate) struct Posted {
    to: Option<flume::Sender<Batch>>,
    token: u64,
}

impl Posted {
    fn take(&mut self) -> Option<(flume::Sender<Batch>, u64)> {
        self.to.take().map(|to| (to, self.token))
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        if let Some((to, token)) = self.take() {
            let _ = to.send(vec![(token, None)]);
        }
    }
}

/// The results of one apply batch, gathered per mailbox, then sent: one message each.
#[derive(Default)]
pub(crate) struct Deliveries {
    batches: Vec<(flume::Sender<Batch>, Batch)>,
}

impl Deliveries {
    pub(crate) fn add(&mut self, reply: Reply, outcome: Outcome) {
        let Reply::Posted(mut p) = reply else {
            return reply.send(outcome);
        };
        let Some((to, token)) = p.take() else {
            return;
        };
        match self.batches.iter_mut().find(|(t, _)| t.same_channel(&to)) {
            Some((_, batch)) => batch.push((token, Some(outcome))),
            None => self.batches.push((to, vec![(token, Some(outcome))])),
        }
    }

    pub(crate) fn send(self) {
        for (to, batch) in self.batches {
            let _ = to.send(batch);
        }
    }
}

/// A front end's writes in flight, and the mailbox their results come to. Runtime-agnostic:
/// [`Hub::dispatch`] runs as a task on the front end's executor.
pub(crate) struct Hub {
    to: flume::Sender<Batch>,
    from: flume::Receiver<Batch>,
    waiting: parking_lot::Mutex<HashMap<u64, oneshot::Sender<Option<Outcome>>>>,
    next: AtomicU64,
}

impl Hub {
    pub(crate) fn new() -> Arc<Hub> {
        // Unbounded as a channel, bounded by WAITING_MAX: one entry per write waiting.
        let (to, from) = flume::unbounded();
        Arc::new(Hub {
            to,
            from,
            waiting: parking_lot::Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    /// Sends a log command through Raft and waits for its applied result (as
    /// [`front::propose`], answered through the mailbox).
    pub(crate) async fn propose(
        &self,
        shared: &Shared,
        command: Vec<u8>,
    ) -> Result<Response, Failure> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock();
            if waiting.len() >= WAITING_MAX {
                return Err((ErrorCode::Overloaded, "too many writes pending".into()));
            }
            waiting.insert(token, tx);
        }
        let reply = Reply::Posted(Posted {
            to: Some(self.to.clone()),
            token,
        });
        // Refused: the proposal is dropped, and its drop tells the dispatcher to forget it.
        front::submit(shared, Input::Propose(Proposal { command, reply }))?;
        match rx.await {
            Ok(Some(result)) => result.map_err(front::error_of),
            // Proposed, but its answer was lost with a failing role: it may have been
            // applied, so this is not "try again".
            _ => Err((ErrorCode::Internal, OUTCOME_UNKNOWN.into())),
        }
    }

    /// Hands each result that comes to the mailbox to its waiter. Runs as long as the hub.
    pub(crate) async fn dispatch(self: Arc<Self>) {
        while let Ok(batch) = self.from.recv_async().await {
            let mut waiting = self.waiting.lock();
            for (token, outcome) in batch {
                if let Some(tx) = waiting.remove(&token) {
                    // A waiter that went away (its client left) is just forgotten.
                    let _ = tx.send(outcome);
                }
            }
        }
    }
}

/// Linearizable reads gathered into rounds: each round takes every read waiting when it
/// starts and asks the raft role for one ReadIndex; reads that come meanwhile wait for the
/// next round (so each read's index is asked for after it arrived, as linearizability needs).
pub(crate) struct ReadRounds {
    waiting: parking_lot::Mutex<Vec<oneshot::Sender<Result<(), Failure>>>>,
    wake: tokio::sync::Notify,
}

impl ReadRounds {
    pub(crate) fn new() -> Arc<ReadRounds> {
        Arc::new(ReadRounds {
            waiting: parking_lot::Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Waits until the published view holds everything committed before this call.
    pub(crate) async fn read_index(&self) -> Result<(), Failure> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock();
            if waiting.len() >= READS_WAITING_MAX {
                return Err((ErrorCode::Overloaded, "too many reads pending".into()));
            }
            waiting.push(tx);
        }
        self.wake.notify_one();
        rx.await
            .unwrap_or_else(|_| Err((ErrorCode::Unavailable, NO_LEADER_FOR_READ.into())))
    }

    /// Runs the rounds, as long as the member's front end.
    pub(crate) async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        self.rounds(|| front::read_index(&shared)).await
    }

    /// Runs the rounds, each asking `ask` once for the reads it took.
    async fn rounds<F, Fut>(&self, mut ask: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Failure>>,
    {
        loop {
            self.wake.notified().await;
            loop {
                let round = std::mem::take(&mut *self.waiting.lock());
                if round.is_empty() {
                    break;
                }
                let result = ask().await;
                for waiter in round {
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(revision: i64) -> Outcome {
        Ok(Response::Put(crate::mvcc::PutResponse {
            header: crate::mvcc::ResponseHeader { revision },
            prev_kv: None,
        }))
    }

    fn revision(o: &Option<Outcome>) -> Option<i64> {
        match o {
            Some(Ok(Response::Put(p))) => Some(p.header.revision),
            _ => None,
        }
    }

    #[test]
    fn one_batch_makes_one_message_per_mailbox_and_own_channels_get_theirs() {
        let (a, a_rx) = flume::unbounded();
        let (b, b_rx) = flume::unbounded();
        let (own, own_rx) = flume::unbounded();
        let posted = |to: &flume::Sender<Batch>, token| {
            Reply::Posted(Posted {
                to: Some(to.clone()),
                token,
            })
        };
        let mut d = Deliveries::default();
        d.add(posted(&a, 1), ok(10));
        d.add(Reply::Own(own), ok(11));
        d.add(posted(&b, 7), ok(12));
        d.add(posted(&a, 2), ok(13));
        d.send();
        let got: Vec<_> = a_rx.drain().collect();
        assert_eq!(got.len(), 1, "one message for the batch");
        let tokens: Vec<_> = got[0].iter().map(|(t, o)| (*t, revision(o))).collect();
        assert_eq!(tokens, vec![(1, Some(10)), (2, Some(13))]);
        let got: Vec<_> = b_rx.drain().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0][0].0, 7);
        assert!(matches!(own_rx.try_recv(), Ok(Ok(Response::Put(_)))));
    }

    #[test]
    fn a_posted_write_dropped_unanswered_is_reported_lost_once() {
        let (to, rx) = flume::unbounded();
        let reply = Reply::Posted(Posted {
            to: Some(to.clone()),
            token: 5,
        });
        drop(reply);
        let got: Vec<_> = rx.drain().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 1);
        assert_eq!(got[0][0].0, 5);
        assert!(got[0][0].1.is_none(), "lost, not answered");
        // Answered: nothing more when it is dropped.
        let reply = Reply::Posted(Posted {
            to: Some(to),
            token: 6,
        });
        reply.send(ok(3));
        let got: Vec<_> = rx.drain().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(revision(&got[0][0].1), Some(3));
    }

    #[test]
    fn a_read_that_comes_during_a_round_waits_for_the_next_one() {
        let reads = ReadRounds::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // Each round's ReadIndex is answered when the test says so.
            let (gate_tx, gate_rx) = flume::unbounded::<()>();
            let asked = Arc::new(AtomicU64::new(0));
            let rounds = {
                let (reads, asked) = (reads.clone(), asked.clone());
                tokio::spawn(async move {
                    reads
                        .rounds(|| {
                            asked.fetch_add(1, Ordering::SeqCst);
                            let gate = gate_rx.clone();
                            async move { gate.recv_async().await.map_err(|_| unreachable()) }
                        })
                        .await
                })
            };
            let first = tokio::spawn({
                let reads = reads.clone();
                async move { reads.read_index().await }
            });
            while asked.load(Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
            // Came while the first round's index was being asked for: not covered by it.
            let second = tokio::spawn({
                let reads = reads.clone();
                async move { reads.read_index().await }
            });
            tokio::task::yield_now().await;
            gate_tx.send(()).expect("gate");
            assert!(first.await.expect("first").is_ok());
            while asked.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
            assert!(
                !second.is_finished(),
                "answered by a round that began before it"
            );
            gate_tx.send(()).expect("gate");
            assert!(second.await.expect("second").is_ok());
            assert_eq!(asked.load(Ordering::SeqCst), 2, "one ReadIndex a round");
            rounds.abort();
        });
    }

    fn unreachable() -> Failure {
        (ErrorCode::Unavailable, "the gate closed".into())
    }

    #[test]
    fn the_dispatcher_hands_results_to_their_waiters_and_forgets_the_gone() {
        let hub = Hub::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (tx1, rx1) = oneshot::channel();
            let (tx2, rx2) = oneshot::channel();
            hub.waiting.lock().insert(1, tx1);
            hub.waiting.lock().insert(2, tx2);
            drop(rx2); // its client left
            let dispatch = tokio::spawn(hub.clone().dispatch());
            hub.to
                .send(vec![(2, Some(ok(8))), (1, Some(ok(9)))])
                .expect("send");
            let got = rx1.await.expect("answered");
            assert_eq!(revision(&got), Some(9));
            assert!(hub.waiting.lock().is_empty(), "both forgotten");
            dispatch.abort();
        });
    }
}
