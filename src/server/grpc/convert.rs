//! etcd's protobuf messages to and from cairn's requests and responses (which follow
//! etcd's field by field). An enum value etcd does not define is refused as invalid.

use crate::grpc::pb::etcdserverpb as pb;
use crate::grpc::pb::mvccpb;
use crate::mvcc;
use tonic::Status;

fn invalid(what: &str, value: i32) -> Status {
    Status::invalid_argument(format!("etcdserver: unknown {what} {value}"))
}

pub(crate) fn range_request(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => mvcc::SortOrder::None,
        Ok(SortOrder::Ascend) => mvcc::SortOrder::Ascend,
        Ok(SortOrder::Descend) => mvcc::SortOrder::Descend,
        Err(_) => return Err(invalid("sort order", r.sort_order)),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => mvcc::SortTarget::Key,
        Ok(SortTarget::Version) => mvcc::SortTarget::Version,
        Ok(SortTarget::Create) => mvcc::SortTarget::Create,
        Ok(SortTarget::Mod) => mvcc::SortTarget::Mod,
        Ok(SortTarget::Value) => mvcc::SortTarget::Value,
        Err(_) => return Err(invalid("sort target", r.sort_target)),
    };
    Ok(mvcc::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub(crate) fn put_request(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub(crate) fn delete_request(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => mvcc::CompareResult::Equal,
        Ok(CompareResult::Greater) => mvcc::CompareResult::Greater,
        Ok(CompareResult::Less) => mvcc::CompareResult::Less,
        Ok(CompareResult::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => return Err(invalid("compare result", c.result)),
    };
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => mvcc::CompareTarget::Version,
        Ok(CompareTarget::Create) => mvcc::CompareTarget::Create,
        Ok(CompareTarget::Mod) => mvcc::CompareTarget::Mod,
        Ok(CompareTarget::Value) => mvcc::CompareTarget::Value,
        Ok(CompareTarget::Lease) => mvcc::CompareTarget::Lease,
        Err(_) => return Err(invalid("compare target", c.target)),
    };
    let target_union = c.target_union.map(|t| match t {
        TargetUnion::Version(v) => mvcc::TargetUnion::Version(v),
        TargetUnion::CreateRevision(v) => mvcc::TargetUnion::CreateRevision(v),
        TargetUnion::ModRevision(v) => mvcc::TargetUnion::ModRevision(v),
        TargetUnion::Value(v) => mvcc::TargetUnion::Value(v),
        TargetUnion::Lease(v) => mvcc::TargetUnion::Lease(v),
    });
    Ok(mvcc::Compare {
        result,
        target,
        key: c.key,
        target_union,
        range_end: c.range_end,
    })
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(r)) => mvcc::RequestOp::Range(range_request(r)?),
        Some(Request::RequestPut(r)) => mvcc::RequestOp::Put(put_request(r)),
        Some(Request::RequestDeleteRange(r)) => mvcc::RequestOp::DeleteRange(delete_request(r)),
        Some(Request::RequestTxn(t)) => mvcc::RequestOp::Txn(txn_request(t)?),
        None => {
            return Err(Status::invalid_argument(
                "etcdserver: a txn operation is empty",
            ))
        }
    })
}

pub(crate) fn txn_request(t: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn key_value(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// The header of a response nested in a txn: the revision alone, as etcd fills it.
fn inner(h: mvcc::ResponseHeader) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision: h.revision,
        ..Default::default()
    })
}

pub(crate) fn range_response(
    r: mvcc::RangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_response(
    r: mvcc::PutResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub(crate) fn delete_response(
    r: mvcc::DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

fn response_op(op: mvcc::ResponseOp) -> pb::ResponseOp {
    use pb::response_op::Response;
    let response = match op {
        mvcc::ResponseOp::Range(r) => {
            let h = inner(r.header);
            Response::ResponseRange(range_response(r, h))
        }
        mvcc::ResponseOp::Put(r) => {
            let h = inner(r.header);
            Response::ResponsePut(put_response(r, h))
        }
        mvcc::ResponseOp::DeleteRange(r) => {
            let h = inner(r.header);
            Response::ResponseDeleteRange(delete_response(r, h))
        }
        mvcc::ResponseOp::Txn(t) => {
            let h = inner(t.header);
            Response::ResponseTxn(txn_response(t, h))
        }
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

pub(crate) fn txn_response(
    t: mvcc::TxnResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::TxnResponse {
    pb::TxnResponse {
        header,
        succeeded: t.succeeded,
        responses: t.responses.into_iter().map(response_op).collect(),
    }
}

pub(crate) fn member(m: crate::protocol::Member) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

pub(crate) fn alarm_request(r: pb::AlarmRequest) -> Result<crate::protocol::AlarmRequest, Status> {
    use crate::protocol::AlarmAction;
    let action = match pb::alarm_request::AlarmAction::try_from(r.action) {
        Ok(pb::alarm_request::AlarmAction::Get) => AlarmAction::Get,
        Ok(pb::alarm_request::AlarmAction::Activate) => AlarmAction::Activate,
        Ok(pb::alarm_request::AlarmAction::Deactivate) => AlarmAction::Deactivate,
        Err(_) => return Err(invalid("alarm action", r.action)),
    };
    let alarm = match pb::AlarmType::try_from(r.alarm) {
        Ok(pb::AlarmType::None) => None,
        Ok(pb::AlarmType::Nospace) => Some(crate::protocol::AlarmType::Nospace),
        Ok(pb::AlarmType::Corrupt) => Some(crate::protocol::AlarmType::Corrupt),
        Err(_) => return Err(invalid("alarm type", r.alarm)),
    };
    Ok(crate::protocol::AlarmRequest {
        action,
        member_id: r.member_id,
        alarm,
    })
}

pub(crate) fn alarm_member(a: crate::protocol::AlarmMember) -> pb::AlarmMember {
    let alarm = match a.alarm {
        crate::protocol::AlarmType::Nospace => pb::AlarmType::Nospace,
        crate::protocol::AlarmType::Corrupt => pb::AlarmType::Corrupt,
    };
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: alarm as i32,
    }
}
