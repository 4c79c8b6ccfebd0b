use super::*;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    SortOrder, SortTarget, TargetUnion,
};

#[test]
fn prefix_range_end_matches_etcd() {
    assert_eq!(prefix_range_end(b"abc"), b"abd");
    assert_eq!(prefix_range_end(b"a\xff"), b"b");
    assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
    assert_eq!(prefix_range_end(b""), b"\0");
}

#[test]
fn the_documented_example_parses() {
    let input = "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n";
    let txn = parse_txn(input.as_bytes()).unwrap();
    assert_eq!(
        txn.compare,
        vec![Compare {
            result: CompareResult::Greater,
            target: CompareTarget::Mod,
            key: b"key1".to_vec(),
            target_union: Some(TargetUnion::ModRevision(0)),
            range_end: vec![],
        }]
    );
    let put = |k: &str, v: &str| {
        RequestOp::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    };
    assert_eq!(txn.success, vec![put("key1", "overwrote-key1")]);
    assert_eq!(
        txn.failure,
        vec![put("key1", "created-key1"), put("key2", "some extra key")]
    );
}

#[test]
fn every_compare_target_and_op() {
    let c = |line: &str| parse_compare(line.as_bytes()).unwrap();
    assert_eq!(
        c(r#"ver("k") = "3""#).target_union,
        Some(TargetUnion::Version(3))
    );
    assert_eq!(c(r#"version("k") != "3""#).result, CompareResult::NotEqual);
    assert_eq!(
        c(r#"c("k") < "5""#).target_union,
        Some(TargetUnion::CreateRevision(5))
    );
    assert_eq!(c(r#"create("k") < "5""#).result, CompareResult::Less);
    assert_eq!(c(r#"m("k") = "7""#).target, CompareTarget::Mod);
    assert_eq!(
        c(r#"val("k") = "a \"quoted\" v""#).target_union,
        Some(TargetUnion::Value(b"a \"quoted\" v".to_vec()))
    );
    assert_eq!(c(r#"value("k\n") = """#).key, b"k\n");
    assert_eq!(
        c(r#"lease("k") = "694d77aa9e38260f""#).target_union,
        Some(TargetUnion::Lease(0x694d77aa9e38260f))
    );
    for bad in [
        r#"mod(key1) > "0""#,
        r#"mod("key1") >> "0""#,
        r#"mod("key1") > "zero""#,
        r#"size("key1") > "0""#,
        r#"mod("key1") > "0" extra"#,
        "mod",
    ] {
        assert!(parse_compare(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn request_lines_take_the_commands_flags() {
    assert_eq!(
        parse_op(b"get a --prefix --limit 2 --sort-by MODIFY --order DESCEND --keys-only").unwrap(),
        RequestOp::Range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 2,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            keys_only: true,
            ..Default::default()
        })
    );
    assert_eq!(
        parse_op(b"get k --from-key --rev 4 --count-only").unwrap(),
        RequestOp::Range(RangeRequest {
            key: b"k".to_vec(),
            range_end: vec![0],
            revision: 4,
            count_only: true,
            ..Default::default()
        })
    );
    assert_eq!(
        parse_op(b"del a z --prev-kv").unwrap(),
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            prev_kv: true
        })
    );
    assert_eq!(
        parse_op(b"delete '' --prefix").unwrap(),
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: vec![0],
            range_end: vec![0],
            prev_kv: false
        })
    );
    assert_eq!(
        parse_op(b"put k --ignore-value --lease 1f").unwrap(),
        RequestOp::Put(PutRequest {
            key: b"k".to_vec(),
            lease: 0x1f,
            ignore_value: true,
            ..Default::default()
        })
    );
    for bad in [
        "put k",
        "put k v --ignore-value",
        "put k v --lease xyz",
        "get a b --prefix",
        "get a --order SIDEWAYS",
        "get a --sort-by SIZE",
        "watch a",
        "get",
        "put \"unterminated v",
    ] {
        assert!(parse_op(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn argify_handles_quotes() {
    let args = |line: &[u8]| argify(line).unwrap();
    assert_eq!(
        args(br#"put "a b" 'c d' e\x"#),
        [&b"put"[..], b"a b", b"c d", b"e\\x"]
    );
    assert_eq!(
        args(br#"put "tab\there" x"#),
        [&b"put"[..], b"tab\there", b"x"]
    );
    assert!(argify(b"put 'open").is_err());
}

#[test]
fn sections_end_at_empty_lines_or_the_end_of_input() {
    let txn = parse_txn(b"val(\"k\") = \"v\"\n\nget k\n").unwrap();
    assert_eq!(
        (txn.compare.len(), txn.success.len(), txn.failure.len()),
        (1, 1, 0)
    );
    let txn = parse_txn(b"\n\n").unwrap();
    assert_eq!(
        (txn.compare.len(), txn.success.len(), txn.failure.len()),
        (0, 0, 0)
    );
    assert!(parse_txn(b"bogus\n\n\n").is_err());
}

#[test]
fn sizes_and_status_tables_look_like_etcdctls() {
    use crate::cli::output::{human_bytes, status_simple, status_table};
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(4096), "4.1 kB");
    assert_eq!(human_bytes(25_000), "25 kB");
    assert_eq!(human_bytes(653_373_440), "653 MB");
    let s = crate::protocol::StatusResponse {
        cluster_id: 1,
        member_id: 0x8e9e05c52164694d,
        leader: 0x8e9e05c52164694d,
        raft_term: 2,
        raft_index: 10,
        raft_applied_index: 10,
        revision: 5,
        db_size: 20_480,
        db_size_in_use: 20_480,
        errors: Vec::new(),
        is_learner: false,
    };
    let mut rows = vec![("127.0.0.1:2378".to_string(), s)];
    assert_eq!(
        status_simple(&rows),
        "127.0.0.1:2378, 8e9e05c52164694d, 0.1.0, 20 kB, true, false, 2, 10, 10, \n"
    );
    // Raised alarms are the ERRORS column, as etcd lists them.
    rows[0].1.errors = vec!["memberID:10276657743932975437 alarm:NOSPACE".into()];
    assert_eq!(
        status_simple(&rows),
        "127.0.0.1:2378, 8e9e05c52164694d, 0.1.0, 20 kB, true, false, 2, 10, 10, memberID:10276657743932975437 alarm:NOSPACE\n"
    );
    rows[0].1.errors.clear();
    let table = status_table(&rows);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("+----------------+------------------+"));
    assert!(
        lines[1].starts_with("|    ENDPOINT    |        ID        | VERSION |"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("| 127.0.0.1:2378 | 8e9e05c52164694d |   0.1.0 |   20 kB |"),
        "{table}"
    );
    assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
}

#[test]
fn put_reads_a_left_out_value_from_stdin_as_etcdctl() {
    let args = PutArgs {
        key: "k".into(),
        lease: "0".into(),
        ..Default::default()
    };
    // All of the input, the trailing newline included, bytes as they are.
    let req = args.request_or_read(&b"v\xff\n\n"[..]).unwrap();
    assert_eq!((req.key, req.value), (b"k".to_vec(), b"v\xff\n\n".to_vec()));
    assert_eq!(
        args.request_or_read(&b""[..]),
        Err(CliError::Usage(
            "put command needs 1 argument and input from stdin or 2 arguments".into()
        ))
    );
    // Without stdin (a txn line) the value is required.
    assert!(args.request().is_err());
    // A value among the arguments wins; --ignore-value needs none.
    let given = PutArgs {
        value: Some("arg".into()),
        ..args.clone()
    };
    assert_eq!(given.request_or_read(&b"stdin"[..]).unwrap().value, b"arg");
    let ignore = PutArgs {
        ignore_value: true,
        ..args
    };
    let req = ignore.request_or_read(&b"stdin"[..]).unwrap();
    assert!(req.ignore_value && req.value.is_empty());
}

#[test]
fn keys_and_values_need_not_be_utf8() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());
    let get = GetArgs {
        key: bytes(b"a\xff"),
        range_end: Some(bytes(b"b\xfe")),
        ..Default::default()
    };
    let req = get.request().unwrap();
    assert_eq!(
        (req.key, req.range_end),
        (b"a\xff".to_vec(), b"b\xfe".to_vec())
    );
    let del = DelArgs {
        key: bytes(b"\xff"),
        prefix: true,
        ..Default::default()
    };
    assert_eq!(del.request().unwrap().range_end, b"\0");
    // txn input: raw bytes, and a \xHH escape is one byte (Go's unquoting).
    let txn = parse_txn(b"val(\"k\\xff\") = \"\x80\"\n\nput k\xfe \"\\xff\"\n").unwrap();
    assert_eq!(txn.compare[0].key, b"k\xff");
    assert_eq!(
        txn.compare[0].target_union,
        Some(TargetUnion::Value(b"\x80".to_vec()))
    );
    assert_eq!(
        txn.success,
        vec![RequestOp::Put(PutRequest {
            key: b"k\xfe".to_vec(),
            value: b"\xff".to_vec(),
            ..Default::default()
        })]
    );
}

#[test]
fn simple_output_writes_stored_bytes_raw() {
    use crate::cli::output::{put_simple, range_simple};
    use crate::mvcc::{KeyValue, PutResponse, RangeResponse};
    let kv = KeyValue {
        key: b"k\xff".to_vec(),
        value: b"v\x80\n".to_vec(),
        ..Default::default()
    };
    let range = RangeResponse {
        kvs: vec![kv.clone()],
        count: 1,
        ..Default::default()
    };
    assert_eq!(range_simple(&range, false, false), b"k\xff\nv\x80\n\n");
    assert_eq!(range_simple(&range, true, false), b"k\xff\n");
    let put = PutResponse {
        prev_kv: Some(kv),
        ..Default::default()
    };
    assert_eq!(put_simple(&put), b"OK\nk\xff\nv\x80\n\n");
}

fn members() -> crate::protocol::MemberResponse {
    use crate::protocol::{Member, MemberResponse};
    MemberResponse {
        cluster_id: 0x8c4281cc65c7b112,
        member_id: 0x8e9e05c52164694d,
        member: None,
        members: vec![
            Member {
                id: 0x8e9e05c52164694d,
                name: "infra1".into(),
                peer_urls: vec!["http://10.0.1.11:2380".into()],
                client_urls: vec!["http://10.0.1.11:2378".into()],
                is_learner: false,
            },
            Member {
                id: 0xced000fda4d05edf,
                name: String::new(),
                peer_urls: vec![
                    "http://10.0.1.14:2380".into(),
                    "http://10.0.2.14:2380".into(),
                ],
                client_urls: Vec::new(),
                is_learner: true,
            },
        ],
    }
}

#[test]
fn member_list_looks_like_etcdctls() {
    use crate::cli::output::{member_list_simple, member_list_table};
    let r = members();
    assert_eq!(
        member_list_simple(&r),
        "8e9e05c52164694d, started, infra1, http://10.0.1.11:2380, http://10.0.1.11:2378, false\n\
         ced000fda4d05edf, unstarted, , http://10.0.1.14:2380,http://10.0.2.14:2380, , true\n"
    );
    let table = member_list_table(&r);
    assert_eq!(
        table,
        "+------------------+-----------+--------+---------------------------------------------+-----------------------+------------+\n\
         |        ID        |  STATUS   |  NAME  |                 PEER ADDRS                  |     CLIENT ADDRS      | IS LEARNER |\n\
         +------------------+-----------+--------+---------------------------------------------+-----------------------+------------+\n\
         | 8e9e05c52164694d |   started | infra1 |                       http://10.0.1.11:2380 | http://10.0.1.11:2378 |      false |\n\
         | ced000fda4d05edf | unstarted |        | http://10.0.1.14:2380,http://10.0.2.14:2380 |                       |       true |\n\
         +------------------+-----------+--------+---------------------------------------------+-----------------------+------------+\n"
    );
}

#[test]
fn member_json_is_etcds_with_empty_fields_left_out() {
    use crate::cli::output::member_json;
    let mut r = members();
    assert_eq!(
        member_json(&r),
        "{\"header\":{\"cluster_id\":10106783228653711634,\"member_id\":10276657743932975437,\"raft_term\":0},\
         \"members\":[{\"ID\":10276657743932975437,\"name\":\"infra1\",\"peerURLs\":[\"http://10.0.1.11:2380\"],\"clientURLs\":[\"http://10.0.1.11:2378\"]},\
         {\"ID\":14902412256360816351,\"peerURLs\":[\"http://10.0.1.14:2380\",\"http://10.0.2.14:2380\"],\"isLearner\":true}]}"
    );
    // A change's reply: the member added comes before the members; names are JSON strings.
    r.members.truncate(1);
    r.members[0].name = "a \"b\"\\<\n\u{1}".into();
    r.member = Some(r.members[0].clone());
    let json = member_json(&r);
    assert!(
        json.contains(
            "\"member\":{\"ID\":10276657743932975437,\"name\":\"a \\\"b\\\"\\\\\\u003c\\n\\u0001\""
        ),
        "{json}"
    );
    assert!(json.find("\"member\"") < json.find("\"members\""), "{json}");
}

#[test]
fn member_changes_print_what_etcdctl_prints() {
    use crate::cli::output::{member_added, member_changed};
    let mut r = members();
    assert_eq!(member_added("infra4", &r), None);
    r.member = Some(r.members[1].clone());
    // The new member gets its name; a member that has not started is listed without one.
    r.members.push(crate::protocol::Member {
        id: 7,
        peer_urls: vec!["http://10.0.1.15:2380".into()],
        ..Default::default()
    });
    assert_eq!(
        member_added("infra4", &r).unwrap(),
        "Member ced000fda4d05edf added to cluster 8c4281cc65c7b112\n\
         \n\
         ETCD_NAME=\"infra4\"\n\
         ETCD_INITIAL_CLUSTER=\"infra1=http://10.0.1.11:2380,infra4=http://10.0.1.14:2380,infra4=http://10.0.2.14:2380,=http://10.0.1.15:2380\"\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://10.0.1.14:2380,http://10.0.2.14:2380\"\n\
         ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"
    );
    assert_eq!(
        member_changed(0xced000fda4d05edf, "removed from", &r),
        "Member ced000fda4d05edf removed from cluster 8c4281cc65c7b112\n"
    );
    // Go's %16x pads with spaces.
    assert_eq!(
        member_changed(0x1f, "promoted in", &r),
        "Member               1f promoted in cluster 8c4281cc65c7b112\n"
    );
}

#[test]
fn member_arguments_are_checked_as_etcdctl_checks_them() {
    use crate::cli::member::parse_member_id;
    use crate::protocol::MemberRequest;
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        member: MemberCmd,
    }
    let request = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("member").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
            .and_then(|cli| cli.member.request().map_err(|e| e.to_string()))
    };
    assert_eq!(request(&["list"]), Ok(MemberRequest::List));
    assert_eq!(
        request(&[
            "add",
            "infra4",
            "--peer-urls=http://a:2380,http://b:2380",
            "--learner"
        ]),
        Ok(MemberRequest::Add {
            peer_urls: vec!["http://a:2380".into(), "http://b:2380".into()],
            is_learner: true
        })
    );
    assert_eq!(
        request(&["update", "CED000FDA4D05EDF", "--peer-urls", "http://a:2380"]),
        Ok(MemberRequest::Update {
            id: 0xced000fda4d05edf,
            peer_urls: vec!["http://a:2380".into()]
        })
    );
    assert_eq!(
        request(&["remove", "1f"]),
        Ok(MemberRequest::Remove { id: 0x1f })
    );
    assert_eq!(
        request(&["promote", "1f"]),
        Ok(MemberRequest::Promote { id: 0x1f })
    );
    // Usage errors (exit code 128), in etcdctl's words.
    let no_urls = Err("member peer urls not provided".to_string());
    assert_eq!(request(&["add", "infra4"]), no_urls);
    assert_eq!(request(&["add", "infra4", "--peer-urls="]), no_urls);
    assert_eq!(request(&["update", "1f"]), no_urls);
    assert_eq!(
        request(&["remove", "xyz"]),
        Err(
            "bad member ID arg (strconv.ParseUint: parsing \"xyz\": invalid syntax), expecting ID in Hex"
                .to_string()
        )
    );
    assert_eq!(
        parse_member_id("1ffffffffffffffff"),
        Err(CliError::Usage(
            "bad member ID arg (strconv.ParseUint: parsing \"1ffffffffffffffff\": value out of range), expecting ID in Hex"
                .into()
        ))
    );
    for bad in ["", "+1f", "0x1f", "-1", "1f "] {
        assert!(parse_member_id(bad).is_err(), "{bad:?}");
    }
    assert!(request(&["add"]).is_err(), "the name is required");
    assert!(request(&["promote"]).is_err(), "the ID is required");
}

#[test]
fn members_are_found_through_their_client_urls() {
    use crate::cli::member::{cluster_endpoints, is_not_leader, member_endpoint};
    use crate::client::ClientError;
    use crate::protocol::ErrorCode;
    let mut r = members();
    r.members[1].client_urls = vec!["http://10.0.1.14:2378/".into(), "10.0.2.14:2378".into()];
    assert_eq!(
        cluster_endpoints(&r.members),
        ["10.0.1.11:2378", "10.0.1.14:2378", "10.0.2.14:2378"]
    );
    assert_eq!(
        member_endpoint(&r.members, 0xced000fda4d05edf).as_deref(),
        Some("10.0.1.14:2378")
    );
    r.members[1].client_urls.clear();
    assert_eq!(member_endpoint(&r.members, 0xced000fda4d05edf), None);
    assert_eq!(member_endpoint(&r.members, 1), None);
    let server = |code, message: &str| ClientError::Server {
        code,
        message: message.into(),
    };
    assert!(is_not_leader(&server(
        ErrorCode::Unavailable,
        "etcdserver: not leader: member changes are taken by the leader (1f)"
    )));
    assert!(!is_not_leader(&server(
        ErrorCode::Unavailable,
        "etcdserver: re-configuration failed due to not enough started members"
    )));
    assert!(!is_not_leader(&server(
        ErrorCode::InvalidRequest,
        "etcdserver: not leader"
    )));
}
