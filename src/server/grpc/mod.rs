//! The etcd v3 gRPC API: tonic's generated services on h2's HTTP/2 (`router`, `conn`;
//! the unary KV calls without tonic's per-call machinery, `unary`), on a
//! thread of its own with a one-thread tokio runtime, translating each call to the same
//! internal requests the native protocol makes (`super::front`): proposals with the same
//! log commands, ReadIndex for linearizable reads, the published view for serializable
//! ones, the watch hub for watch streams.
//! Services: KV, Watch, Lease, Cluster, Maintenance, and etcd's Lock (`v3lockpb`) and
//! Election (`v3electionpb`) on the lock logic the native protocol serves
//! (`super::lock`); others are answered Unimplemented, as any unknown method is.
//!
//! Each client URL's port serves HTTP/1 too (`/metrics`, `/health`...), as etcd's does:
//! `incoming` tells the two apart per connection and bounds the connections; `headers`
//! turns the `:authority` etcdctl 3.4 sends as a URL into one the HTTP/2 server takes.
//!
//! Bounds: connections per listener ([`incoming::CONNECTIONS_MAX`]), streams per
//! connection, request message size (`--max-request-bytes` plus
//! etcd's 512 KiB of gRPC overhead: more is ResourceExhausted; a request over
//! `--max-request-bytes`, measured as etcd does on the raft request a write becomes, is
//! etcd's "request is too large"), forwarded requests in flight.
//! Keepalive as etcd's server (`--grpc-keepalive-*`): a ping every 2 hours of silence, 20 s
//! for its answer, and a client pinging more often than every 5 s is sent GOAWAY
//! "too_many_pings" (`keepalive`).

mod cluster;
mod conn;
mod convert;
mod election;
mod headers;
mod incoming;
mod keepalive;
mod kv;
mod lease;
mod limits;
mod lock;
mod maintenance;
mod router;
mod status;
mod unary;
mod watch;

use super::front::{self, Failure, NATIVE_SCHEME};
use super::{Phase, ServerError, Shared};
use crate::grpc::pb::etcdserverpb as pb;
use crate::grpc::pb::{v3electionpb, v3lockpb};
use crate::protocol::{ClientRequest, ClientResponse, ErrorCode};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// etcd's allowance for gRPC's own bytes above `--max-request-bytes`.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Largest response message (etcd's default `--max-send-msg-size`: math.MaxInt32).
const SEND_BYTES_MAX: usize = i32::MAX as usize;
/// Concurrent streams (calls) on one connection.
const STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// Requests handed to the leader at once (each holds a blocking thread meanwhile).
const FORWARDS_MAX: usize = 16;
/// How long a request handed to the leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping member waits for calls in flight before closing their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the thread looks at the member's phase.
const PHASE_POLL: Duration = Duration::from_millis(20);

/// What every service call has.
#[derive(Clone)]
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    /// `--max-request-bytes`, as the client gave it.
    max_request_bytes: usize,
    forwards: Arc<tokio::sync::Semaphore>,
    /// Connections to the leader left open by forwarded requests (at most `FORWARDS_MAX`),
    /// with the native address each is to.
    idle_forwarders: Arc<parking_lot::Mutex<Vec<(String, crate::client::Client)>>>,
    /// Writes in flight, answered a batch at a time.
    hub: Arc<super::mailbox::Hub>,
    /// Linearizable reads, gathered into rounds.
    reads: Arc<super::mailbox::ReadRounds>,
}

impl Ctx {
    /// etcd's response header: the member's cluster and id, the revision, the Raft term.
    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        let s = self.shared.status.lock();
        Some(pb::ResponseHeader {
            cluster_id: s.cluster_id,
            member_id: s.member_id,
            revision,
            raft_term: s.raft_term,
        })
    }

    fn revision_now(&self) -> i64 {
        self.shared.view().map_or(0, |v| v.revision())
    }

    fn header_now(&self) -> Option<pb::ResponseHeader> {
        self.header(self.revision_now())
    }

    /// Refuses new work once the member stops.
    fn serving(&self) -> Result<(), Status> {
        if self.shared.phase() >= Phase::Stopping {
            return Err(status::status((
                ErrorCode::Unavailable,
                front::STOPPING.into(),
            )));
        }
        Ok(())
    }

    /// Hands a request to the leader through its native protocol address.
    async fn forward(&self, req: ClientRequest) -> Result<ClientResponse, Failure> {
        let no_leader = || (ErrorCode::Unavailable, "etcdserver: no leader".to_string());
        let leader = self.shared.status.lock().leader;
        if leader == 0 {
            return Err(no_leader());
        }
        let endpoint = {
            let ms = self.shared.membership.lock();
            ms.member(leader).and_then(|m| {
                m.client_urls
                    .iter()
                    .find_map(|u| u.strip_prefix(NATIVE_SCHEME))
                    .map(String::from)
            })
        };
        let Some(endpoint) = endpoint else {
            return Err(no_leader());
        };
        let permit = self.forwards.clone().try_acquire_owned().map_err(|_| {
            (
                ErrorCode::Overloaded,
                "etcdserver: too many requests".to_string(),
            )
        })?;
        let idle = self.idle_forwarders.clone();
        // Keepalives and time-to-live may be asked twice: they reuse connections (a
        // keepalive stream through a follower would otherwise dial the leader each time),
        // and one that fails on a kept connection (closed meanwhile) is asked again on a new
        // one. A member change is asked once, on a connection of its own.
        let reusable = matches!(req, ClientRequest::Lease(_));
        let asked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let fresh = || crate::client::Client::new(vec![endpoint.clone()], FORWARD_TIMEOUT);
            let kept = reusable
                .then(|| {
                    let mut idle = idle.lock();
                    let at = idle.iter().position(|(e, _)| *e == endpoint);
                    at.map(|i| idle.swap_remove(i).1)
                })
                .flatten();
            let (mut client, was_kept) = match kept {
                Some(c) => (c, true),
                None => (fresh(), false),
            };
            let mut asked = client.request(&req);
            if was_kept && matches!(asked, Err(ref e) if !matches!(e, crate::client::ClientError::Server { .. }))
            {
                client = fresh();
                asked = client.request(&req);
            }
            if reusable && asked.is_ok() {
                let mut idle = idle.lock();
                if idle.len() >= FORWARDS_MAX {
                    idle.remove(0);
                }
                idle.push((endpoint, client));
            }
            asked
        })
        .await
        .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        asked.map_err(|e| match e {
            crate::client::ClientError::Server { code, message } => (code, message),
            other => (ErrorCode::Unavailable, other.to_string()),
        })
    }
}

/// Binds `--listen-client-urls` (ports first: a start that cannot listen leaves nothing
/// on disk), and returns the listeners with the URLs to advertise: `--advertise-client-urls`,
/// or the listen URLs with the ports bound (a port 0 asks for any free port).
pub(crate) fn bind(
    config: &super::ServeConfig,
) -> Result<(Vec<std::net::TcpListener>, Vec<String>), ServerError> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for url in &config.listen_client_urls {
        let addr = super::cluster::listen_addr(url);
        let l = super::retry_bind(|| std::net::TcpListener::bind(&addr)).map_err(|source| {
            ServerError::Listen {
                addr: format!("{url} (--listen-client-urls)"),
                source,
            }
        })?;
        let local = l.local_addr().map_err(|source| ServerError::Listen {
            addr: url.clone(),
            source,
        })?;
        l.set_nonblocking(true)
            .map_err(|source| ServerError::Listen {
                addr: url.clone(),
                source,
            })?;
        bound.push(format!("http://{local}"));
        listeners.push(l);
    }
    let advertise = if config.advertise_client_urls.is_empty() {
        bound
    } else {
        config.advertise_client_urls.clone()
    };
    Ok((listeners, advertise))
}

/// Starts the gRPC thread: it serves once the member serves, and returns once it stops.
pub(crate) fn start(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    http: super::http::Handoff,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    std::thread::Builder::new()
        .name("cairn-grpc".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(FORWARDS_MAX)
                .build();
            match runtime {
                Ok(rt) => rt.block_on(run(shared, listeners, http)),
                Err(e) => {
                    tracing::error!(error = %e, "the gRPC runtime could not start");
                    shared.request_stop();
                }
            }
        })
        .map_err(|e| ServerError::Executor(e.to_string()))
}

async fn run(
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    http: super::http::Handoff,
) {
    while shared.phase() == Phase::Starting {
        tokio::time::sleep(PHASE_POLL).await;
    }
    if shared.phase() != Phase::Serving {
        return;
    }
    let ctx = Ctx {
        max_request_bytes: shared
            .config
            .max_request_bytes
            .saturating_sub(super::REQUEST_ENVELOPE_BYTES) as usize,
        forwards: Arc::new(tokio::sync::Semaphore::new(FORWARDS_MAX)),
        idle_forwarders: Arc::new(parking_lot::Mutex::new(Vec::new())),
        hub: super::mailbox::Hub::new(),
        reads: super::mailbox::ReadRounds::new(),
        shared: shared.clone(),
    };
    // Both end with the runtime.
    tokio::spawn(ctx.hub.clone().dispatch());
    tokio::spawn(ctx.reads.clone().run(shared.clone()));
    let services = router::Services::new(
        ctx.clone(),
        ctx.max_request_bytes + GRPC_OVERHEAD_BYTES,
        SEND_BYTES_MAX,
    );
    let mut servers = tokio::task::JoinSet::new();
    for l in listeners {
        let listener = match tokio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "a gRPC listener could not be used");
                shared.request_stop();
                continue;
            }
        };
        let keepalive = shared.config.grpc_keepalive;
        let incoming = incoming::incoming(listener, http.clone(), keepalive.min_time);
        let (services, stopping) = (services.clone(), shared.clone());
        servers.spawn(async move {
            let stop = async move {
                while stopping.phase() < Phase::Stopping {
                    tokio::time::sleep(PHASE_POLL).await;
                }
            };
            router::serve(services, incoming, stop, keepalive).await;
        });
    }
    while shared.phase() < Phase::Stopping {
        tokio::time::sleep(PHASE_POLL).await;
    }
    // Calls in flight get their answers (the roles finish what they took); a stream that
    // stays open is cut when the runtime is dropped.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
}
