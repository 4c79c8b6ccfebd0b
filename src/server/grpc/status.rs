//! Failures as etcd's gRPC errors: etcd's status code and its exact message (`rpctypes`),
//! which clients match to decide whether to retry, fail over or give up.

use crate::protocol::ErrorCode;
use crate::server::front::{Failure, STOPPING};
use tonic::{Code, Status};

/// etcd's errors by the start of cairn's message: cairn sometimes says more after etcd's
/// words (which member, what to do); the client gets etcd's words alone. Longer prefixes
/// of the same words come first.
const ETCD_ERRORS: &[(&str, Code)] = &[
    (
        "etcdserver: mvcc: required revision has been compacted",
        Code::OutOfRange,
    ),
    (
        "etcdserver: mvcc: required revision is a future revision",
        Code::OutOfRange,
    ),
    (
        "etcdserver: mvcc: database space exceeded",
        Code::ResourceExhausted,
    ),
    ("etcdserver: key is not provided", Code::InvalidArgument),
    ("etcdserver: key not found", Code::InvalidArgument),
    ("etcdserver: value is provided", Code::InvalidArgument),
    ("etcdserver: lease is provided", Code::InvalidArgument),
    (
        "etcdserver: too many operations in txn request",
        Code::InvalidArgument,
    ),
    (
        "etcdserver: duplicate key given in txn request",
        Code::InvalidArgument,
    ),
    ("etcdserver: request is too large", Code::InvalidArgument),
    ("etcdserver: too many requests", Code::ResourceExhausted),
    ("etcdserver: requested lease not found", Code::NotFound),
    ("etcdserver: lease already exists", Code::FailedPrecondition),
    ("etcdserver: too large lease TTL", Code::OutOfRange),
    (
        "etcdserver: member ID already exist",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: Peer URLs already exists",
        Code::FailedPrecondition,
    ),
    ("etcdserver: member not found", Code::NotFound),
    (
        "etcdserver: given member URLs are invalid",
        Code::InvalidArgument,
    ),
    (
        "etcdserver: re-configuration failed due to not enough started members",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: can only promote a learner member which is in sync with leader",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: can only promote a learner member",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: too many learner members in cluster",
        Code::FailedPrecondition,
    ),
    ("etcdserver: no leader", Code::Unavailable),
    ("etcdserver: not leader", Code::FailedPrecondition),
    ("etcdserver: leader changed", Code::Unavailable),
    ("etcdserver: request timed out", Code::Unavailable),
    (
        "etcdserver: bad leader transferee",
        Code::FailedPrecondition,
    ),
    // etcd's election server returns its concurrency package's errors as they are, which
    // gRPC sends as Unknown.
    (crate::lock::NOT_LEADER, Code::Unknown),
    (crate::lock::NO_LEADER, Code::Unknown),
];

/// cairn's messages for which etcd has other words.
const RENAMED: &[(&str, &str, Code)] = &[
    // A proposal another leader's entry replaced: etcd times it out.
    (
        "etcdserver: proposal dropped",
        "etcdserver: request timed out",
        Code::Unavailable,
    ),
    (STOPPING, "etcdserver: server stopped", Code::Unavailable),
    // etcd's gRPC layer answers a member id that was removed as one it never had.
    (
        "etcdserver: ID removed",
        "etcdserver: member not found",
        Code::NotFound,
    ),
    (
        "etcdserver: member peer URLs are not provided",
        "etcdserver: given member URLs are invalid",
        Code::InvalidArgument,
    ),
];

/// The gRPC status a client gets for a failure.
pub(crate) fn status((code, message): Failure) -> Status {
    // The store's own errors carry etcd's store words; its gRPC layer prefixes them.
    let message = match message.strip_prefix("mvcc: ") {
        Some(_) => format!("etcdserver: {message}"),
        None => message,
    };
    if let Some((_, etcd, code)) = RENAMED.iter().find(|(m, ..)| message.starts_with(m)) {
        return Status::new(*code, *etcd);
    }
    if let Some((etcd, code)) = ETCD_ERRORS.iter().find(|(m, _)| message.starts_with(m)) {
        return Status::new(*code, *etcd);
    }
    let code = match code {
        ErrorCode::Malformed | ErrorCode::InvalidRequest => Code::InvalidArgument,
        ErrorCode::Overloaded | ErrorCode::NoSpace => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
    };
    Status::new(code, message)
}

/// etcd's answer to a request bigger than `--max-request-bytes`.
pub(crate) fn too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// etcd's answer when the member knows no leader.
pub(crate) fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_words_and_codes() {
        let s = status((
            ErrorCode::InvalidRequest,
            "mvcc: required revision has been compacted".into(),
        ));
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = status((
            ErrorCode::InvalidRequest,
            "etcdserver: member not found: 1f".into(),
        ));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: member not found")
        );
        let s = status((
            ErrorCode::InvalidRequest,
            "etcdserver: ID removed: 1f".into(),
        ));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: member not found")
        );
        let s = status((
            ErrorCode::InvalidRequest,
            "etcdserver: can only promote a learner member which is in sync with leader".into(),
        ));
        assert_eq!(
            s.message(),
            "etcdserver: can only promote a learner member which is in sync with leader"
        );
        let s = status((ErrorCode::Unavailable, STOPPING.into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: server stopped")
        );
        let s = status((ErrorCode::Overloaded, "too many proposals pending".into()));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = status((
            ErrorCode::NoSpace,
            "etcdserver: mvcc: database space exceeded".into(),
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
}
