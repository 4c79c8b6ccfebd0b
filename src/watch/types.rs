//! Watch requests and responses, one to one with etcd v3's `WatchRequest` and
//! `WatchResponse` (`rpc.proto` of etcd 3.4, with 3.5's progress semantics).

use crate::mvcc::{Event, ResponseHeader};
use rkyv::{Archive, Deserialize, Serialize};

/// `WatchCreateRequest.FilterType`: events a watcher does not want.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFilter {
    NoPut,
    NoDelete,
}

/// `etcdserverpb.WatchCreateRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchCreateRequest {
    pub key: Vec<u8>,
    /// Same meaning as `RangeRequest::range_end`: empty for `key` alone, `[0]` for every
    /// key `>= key`, else the half-open range `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// The first revision to report; `<= 0` for the revision after the current one.
    pub start_revision: i64,
    /// Ask for an empty response carrying the current revision when nothing was sent for
    /// a while (the member's progress-notify interval).
    pub progress_notify: bool,
    pub filters: Vec<WatchFilter>,
    /// Events carry the key as it was before the change.
    pub prev_kv: bool,
    /// The id to give the watcher; 0 lets the member choose (the lowest unused, from 0).
    pub watch_id: i64,
    /// Split a revision whose events exceed the request size limit into several responses
    /// (all but the last marked `fragment`); without it such a revision goes whole.
    pub fragment: bool,
}

/// `etcdserverpb.WatchRequest`: what a client sends on its watch stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WatchRequest {
    Create(WatchCreateRequest),
    Cancel {
        watch_id: i64,
    },
    /// Asks for a response with watch id -1 carrying a revision R once every watcher of
    /// the connection has been sent every event up to R (etcd 3.5's `RequestProgress`).
    Progress,
}

/// `etcdserverpb.WatchResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchResponse {
    /// The member's revision when the response was made; for a progress response, every
    /// event up to it has been sent.
    pub header: ResponseHeader,
    /// -1 for a progress response to [`WatchRequest::Progress`].
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    /// Set (with `canceled`) when the watcher asked for revisions already compacted: the
    /// compaction revision; resume from it or later.
    pub compact_revision: i64,
    pub cancel_reason: String,
    /// More responses follow with the rest of this revision's events.
    pub fragment: bool,
    /// Events in revision order; those of one revision are never split across responses
    /// (but for `fragment`).
    pub events: Vec<Event>,
}

/// The revision a progress response is for: etcd's `WatchResponse.IsProgressNotify`.
impl WatchResponse {
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
            && !self.created
            && !self.canceled
            && self.compact_revision == 0
            && self.header.revision != 0
    }
}
