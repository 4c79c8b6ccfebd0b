//! The apply role's lease part: the leader's [`LeaseClock`] beside the store's lease table.
//! It follows the grants and revokes the apply role applies, starts (extending every lease)
//! when the raft role says this member leads, proposes revokes of expired leases and
//! checkpoints of remaining TTLs on each heartbeat, and answers keepalives, time-to-live
//! and the list. Proposals go to the raft role as [`Input::LeasePropose`], which proposes
//! them only while this member leads.

use super::{Input, LeaseReply, Proposal, ServeConfig, Shared};
use crate::lease::{
    ClockConfig, LeaseClock, LeaseError, LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseOp,
    LeaseRequest, LeaseResponse, LeaseStatus, LeaseTimeToLiveResponse, CHECKPOINT_BATCH_MAX,
    REVOKES_PER_S_DEFAULT,
};
use crate::mvcc::{LeaseChange, Response, ResponseHeader, Store};
use crate::node::{Clock, MonotonicClock, NodeError};
use crate::protocol::ErrorCode;

/// Election timeouts after which a revoke handed out and not applied is proposed again.
const REVOKE_RETRY_ELECTION_TIMEOUTS: u64 = 3;

pub(crate) struct Leases {
    clock: LeaseClock,
    time: MonotonicClock,
}

type Answer = Result<LeaseResponse, (ErrorCode, String)>;

fn refusal(e: LeaseError) -> (ErrorCode, String) {
    let code = match e {
        LeaseError::NotLeader => ErrorCode::Unavailable,
        _ => ErrorCode::InvalidRequest,
    };
    (code, e.to_string())
}

impl Leases {
    pub fn new(config: &ServeConfig) -> Leases {
        Leases {
            clock: LeaseClock::new(ClockConfig {
                election_timeout_ms: config.election_timeout_ms,
                checkpoint_interval_ms: config.lease_checkpoint_interval_ms,
                revokes_per_s: REVOKES_PER_S_DEFAULT,
                revoke_retry_ms: config.election_timeout_ms * REVOKE_RETRY_ELECTION_TIMEOUTS,
            }),
            time: MonotonicClock::new(),
        }
    }

    /// Grants and revokes were applied.
    pub fn applied(&mut self, changes: &[LeaseChange]) {
        let now = self.time.now_ms();
        for c in changes {
            match *c {
                LeaseChange::Granted { id, ttl } => self.clock.granted(now, id, ttl),
                LeaseChange::Revoked { id } => self.clock.revoked(id),
            }
        }
    }

    /// This member started (true) or stopped leading.
    pub fn leader(&mut self, leading: bool, store: &Store) {
        if leading {
            self.clock
                .promote(self.time.now_ms(), store.leases().times());
            tracing::debug!(leases = store.leases().len(), "lease clock started");
        } else {
            self.clock.demote();
        }
    }

    /// A heartbeat interval passed on the leader: proposes the revokes of expired leases
    /// and, when due, a checkpoint of remaining TTLs.
    pub fn tick(&mut self, shared: &Shared) {
        let now = self.time.now_ms();
        for id in self.clock.expired(now) {
            tracing::debug!(lease = %format!("{id:x}"), "lease expired; proposing its revoke");
            // A revoke not proposed (a full queue) is handed out again after the retry.
            let _ = propose(shared, &LeaseOp::Revoke { id });
        }
        let checkpoints = self.clock.checkpoint(now);
        for chunk in checkpoints.chunks(CHECKPOINT_BATCH_MAX) {
            let _ = propose(shared, &LeaseOp::Checkpoint(chunk.to_vec()));
        }
    }

    /// Answers a keepalive, time-to-live or list.
    pub fn request(
        &mut self,
        req: LeaseRequest,
        reply: LeaseReply,
        store: &Store,
        shared: &Shared,
    ) {
        let header = ResponseHeader {
            revision: store.current_revision(),
        };
        let answer: Answer = match req {
            LeaseRequest::KeepAlive(k) => return self.keep_alive(k.id, reply, store, shared),
            LeaseRequest::TimeToLive(t) => self.time_to_live(t.id, t.keys, store, header),
            LeaseRequest::Leases => Ok(LeaseResponse::Leases(LeaseLeasesResponse {
                header,
                leases: store.leases().ids().map(|id| LeaseStatus { id }).collect(),
            })),
            LeaseRequest::Grant(_) | LeaseRequest::Revoke(_) => Err((
                ErrorCode::Internal,
                "a lease grant or revoke goes through the log".into(),
            )),
        };
        let _ = reply.send(answer);
    }

    /// etcd's `LeaseTimeToLive`: -1 for a lease that is gone.
    fn time_to_live(&self, id: i64, keys: bool, store: &Store, header: ResponseHeader) -> Answer {
        let gone = LeaseTimeToLiveResponse {
            header,
            id,
            ttl: -1,
            ..Default::default()
        };
        let Some(lease) = store.leases().get(id) else {
            return Ok(LeaseResponse::TimeToLive(gone));
        };
        let left_ms = match self.clock.remaining_ms(self.time.now_ms(), id) {
            Ok(ms) => ms,
            Err(LeaseError::NotFound) => return Ok(LeaseResponse::TimeToLive(gone)),
            Err(e) => return Err(refusal(e)),
        };
        Ok(LeaseResponse::TimeToLive(LeaseTimeToLiveResponse {
            header,
            id,
            ttl: (left_ms / 1000) as i64,
            granted_ttl: lease.ttl,
            keys: if keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }))
    }

    /// Renews the lease on the leader's clock. A lease with a checkpointed remaining TTL, or
    /// one this leader has proposed a checkpoint for since its last renewal (which may
    /// apply after this renewal), has it cleared through the log before the keepalive is
    /// answered (as etcd does for the first): otherwise a new leader would extend it from
    /// that checkpoint, not from this renewal.
    fn keep_alive(&mut self, id: i64, reply: LeaseReply, store: &Store, shared: &Shared) {
        let header = ResponseHeader {
            revision: store.current_revision(),
        };
        let renewal = match store.leases().get(id) {
            None => Err(LeaseError::NotFound),
            Some(_) => self.clock.renew(self.time.now_ms(), id),
        };
        let renewal = match renewal {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(refusal(e)));
                return;
            }
        };
        let ttl = renewal.ttl;
        let renewed = LeaseResponse::KeepAlive(LeaseKeepAliveResponse { header, id, ttl });
        let checkpointed = store.leases().get(id).is_some_and(|l| l.remaining_ttl > 0);
        if !checkpointed && !renewal.clear {
            let _ = reply.send(Ok(renewed));
            return;
        }
        let Some(cleared) = propose(shared, &LeaseOp::Checkpoint(vec![(id, 0)])) else {
            let _ = reply.send(Err((
                ErrorCode::Overloaded,
                "etcdserver: too many requests".into(),
            )));
            return;
        };
        glommio::spawn_local(async move {
            let answer = match cleared.recv_async().await {
                Ok(Ok(_)) => Ok(renewed),
                Ok(Err(e)) => Err((ErrorCode::Unavailable, e.to_string())),
                Err(_) => Err((ErrorCode::Unavailable, NodeError::Stopping.to_string())),
            };
            let _ = reply.send(answer);
        })
        .detach();
    }
}

/// Hands a lease command to the raft role to propose as leader; its result comes on the
/// receiver. `None` if the raft role's queue is full or gone.
fn propose(shared: &Shared, op: &LeaseOp) -> Option<flume::Receiver<Result<Response, NodeError>>> {
    let (tx, rx) = flume::bounded(1);
    let proposal = Proposal {
        command: crate::node::command::lease(op),
        reply: super::Reply::Own(tx),
    };
    shared.inputs.try_send(Input::LeasePropose(proposal)).ok()?;
    Some(rx)
}
