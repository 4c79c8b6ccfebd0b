//! The Lease service from the blocking [`Client`], the leader found for what only the
//! leader answers (keepalives, time-to-live), and the keepalive loop the CLI and tests use.

use super::{Client, ClientError};
use crate::cli::member::{is_not_leader, member_endpoint};
use crate::lease::{
    LeaseError, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRequest, LeaseResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::protocol::{ClientRequest, ClientResponse, ErrorCode, MemberRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol {
        endpoint: String::new(),
        reason: format!("an unexpected reply to a lease {what}"),
    }
}

fn lease_reply(reply: ClientResponse) -> Result<LeaseResponse, ClientError> {
    match reply {
        ClientResponse::Lease(r) => Ok(r),
        _ => Err(unexpected("request")),
    }
}

impl Client {
    /// One Lease service request, to the endpoint this client uses.
    pub fn lease(&mut self, req: LeaseRequest) -> Result<LeaseResponse, ClientError> {
        lease_reply(self.request(&ClientRequest::Lease(req))?)
    }

    /// etcd's LeaseGrant: `id` 0 lets the server choose one.
    pub fn lease_grant(&mut self, ttl: i64, id: i64) -> Result<LeaseGrantResponse, ClientError> {
        match self.lease(LeaseRequest::Grant(LeaseGrantRequest { ttl, id }))? {
            LeaseResponse::Grant(r) => Ok(r),
            _ => Err(unexpected("grant")),
        }
    }

    /// etcd's LeaseRevoke: the lease and every key attached to it go, in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        match self.lease(LeaseRequest::Revoke(LeaseRevokeRequest { id }))? {
            LeaseResponse::Revoke(r) => Ok(r),
            _ => Err(unexpected("revoke")),
        }
    }

    /// etcd's LeaseLeases: every lease, as the member asked knows them.
    pub fn lease_leases(&mut self) -> Result<LeaseLeasesResponse, ClientError> {
        match self.lease(LeaseRequest::Leases)? {
            LeaseResponse::Leases(r) => Ok(r),
            _ => Err(unexpected("list")),
        }
    }
}

/// Whether a request failed because its lease does not exist (expired or revoked).
pub fn is_lease_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { message, .. } if *message == LeaseError::NotFound.to_string())
}

/// Whether a request may be sent again elsewhere: the member did not take it (not the
/// leader, stopping, unreachable) or its connection failed.
fn worth_another_member(e: &ClientError) -> bool {
    match e {
        ClientError::Server { code, .. } => *code == ErrorCode::Unavailable,
        ClientError::Unreachable { .. }
        | ClientError::Io { .. }
        | ClientError::Timeout { .. }
        | ClientError::Protocol { .. } => true,
    }
}

/// The leader's endpoint as the member at `endpoint` knows it: its status names the leader,
/// its member list the leader's client URL.
pub fn leader_endpoint(endpoint: &str, timeout: Duration) -> Result<String, String> {
    let mut one = Client::new(vec![endpoint.to_string()], timeout);
    let leader = match one.request(&ClientRequest::Status) {
        Ok(ClientResponse::Status(s)) => s.leader,
        Ok(_) => return Err(format!("{endpoint} sent an unexpected reply")),
        Err(e) => return Err(format!("the leader could not be asked of {endpoint}: {e}")),
    };
    if leader == 0 {
        return Err(format!("{endpoint} knows no leader"));
    }
    let members = match one.request(&ClientRequest::Member(MemberRequest::List)) {
        Ok(ClientResponse::Member(r)) => r.members,
        Ok(_) => return Err(format!("{endpoint} sent an unexpected reply")),
        Err(e) => return Err(format!("the members could not be asked of {endpoint}: {e}")),
    };
    member_endpoint(&members, leader)
        .ok_or_else(|| format!("the leader {leader:x} has no client URL in the member list"))
}

/// A client of the leader: it keeps a connection to the member that answered last, and
/// when that one fails or no longer leads, finds the leader again through the endpoints.
/// For requests that are safe to send twice (keepalives, time-to-live): one whose outcome
/// is unknown is sent again.
pub struct LeaderClient {
    endpoints: Vec<String>,
    timeout: Duration,
    leader: Option<Client>,
}

impl LeaderClient {
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> LeaderClient {
        LeaderClient {
            endpoints,
            timeout,
            leader: None,
        }
    }

    /// Sends `req` to the leader, finding it first if needed.
    pub fn request(&mut self, req: &ClientRequest) -> Result<ClientResponse, ClientError> {
        if let Some(c) = &mut self.leader {
            match c.request(req) {
                Err(e) if worth_another_member(&e) => self.leader = None,
                other => return other,
            }
        }
        let mut last = ClientError::Unreachable {
            endpoints: self.endpoints.clone(),
            last: "no endpoints given".into(),
        };
        for endpoint in self.endpoints.clone() {
            let mut c = Client::new(vec![endpoint.clone()], self.timeout);
            match c.request(req) {
                Ok(r) => {
                    self.leader = Some(c);
                    return Ok(r);
                }
                Err(e) if is_not_leader(&e) => match leader_endpoint(&endpoint, self.timeout) {
                    Ok(leader) => {
                        let mut c = Client::new(vec![leader], self.timeout);
                        match c.request(req) {
                            Ok(r) => {
                                self.leader = Some(c);
                                return Ok(r);
                            }
                            Err(e) if worth_another_member(&e) => last = e,
                            Err(e) => return Err(e),
                        }
                    }
                    Err(_) => last = e,
                },
                Err(e) if worth_another_member(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// etcd's LeaseKeepAlive, one renewal.
    pub fn keep_alive_once(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, ClientError> {
        let req = ClientRequest::Lease(LeaseRequest::KeepAlive(LeaseKeepAliveRequest { id }));
        match lease_reply(self.request(&req)?)? {
            LeaseResponse::KeepAlive(r) => Ok(r),
            _ => Err(unexpected("keepalive")),
        }
    }

    /// etcd's LeaseTimeToLive: TTL -1 for a lease that is gone.
    pub fn time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        let req = ClientRequest::Lease(LeaseRequest::TimeToLive(LeaseTimeToLiveRequest {
            id,
            keys,
        }));
        match lease_reply(self.request(&req)?)? {
            LeaseResponse::TimeToLive(r) => Ok(r),
            _ => Err(unexpected("time-to-live")),
        }
    }
}

/// What the keepalive loop saw.
#[derive(Debug)]
pub enum KeepAliveEvent {
    /// Renewed, with its TTL.
    Renewed(LeaseKeepAliveResponse),
    /// A renewal failed (no leader, a leader change, no member reachable); tried again.
    Failed(ClientError),
    /// The lease expired or was revoked: the loop ends.
    Gone,
}

/// Pause after a failed renewal before the next attempt.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);
/// Shortest time between renewals.
const KEEPALIVE_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// How often a waiting loop looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Keeps lease `id` alive as etcd's clients do: a renewal every third of its TTL, sent to
/// the leader (found again after a leader change, through `endpoints`), until the lease is
/// gone or `stop` is set. Each renewal, failure and the end go to `each`.
pub fn keep_alive_loop(
    endpoints: Vec<String>,
    timeout: Duration,
    id: i64,
    stop: &AtomicBool,
    mut each: impl FnMut(KeepAliveEvent),
) {
    let mut client = LeaderClient::new(endpoints, timeout);
    while !stop.load(Ordering::Relaxed) {
        let pause = match client.keep_alive_once(id) {
            Ok(r) => {
                let ttl_ms = u64::try_from(r.ttl).unwrap_or(0).saturating_mul(1000);
                each(KeepAliveEvent::Renewed(r));
                Duration::from_millis(ttl_ms / 3).max(KEEPALIVE_INTERVAL_MIN)
            }
            Err(e) if is_lease_not_found(&e) => {
                each(KeepAliveEvent::Gone);
                return;
            }
            Err(e) => {
                each(KeepAliveEvent::Failed(e));
                KEEPALIVE_RETRY
            }
        };
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(STOP_POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
}
