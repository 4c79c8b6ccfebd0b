//! `txn` input in etcdctl's format: compares, an empty line, success requests, an empty
//! line, failure requests. For example:
//!
//! ```text
//! mod("key1") > "0"
//!
//! put key1 "overwrote-key1"
//!
//! put key1 "created-key1"
//! put key2 "some extra key"
//! ```
//!
//! A compare is `target("key") op "value"` with target `ver`/`version`, `c`/`create`,
//! `m`/`mod`, `val`/`value` or `lease` (hexadecimal), and op `=`, `!=`, `<` or `>`. A request
//! is a `get`, `put` or `del` line with the same arguments and flags as those commands.

use super::ops::{DelArgs, GetArgs, PutArgs};
use super::CliError;
use crate::mvcc::{Compare, CompareResult, CompareTarget, RequestOp, TargetUnion, TxnRequest};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Parses a whole txn from its input, taken as bytes: keys and values need not be UTF-8.
pub fn parse_txn(input: &[u8]) -> Result<TxnRequest, CliError> {
    let mut sections = vec![Vec::new()];
    for line in input.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
        if line.is_empty() {
            if sections.len() == 3 {
                break;
            }
            sections.push(Vec::new());
        } else if let Some(section) = sections.last_mut() {
            section.push(line);
        }
    }
    sections.resize(3, Vec::new());
    Ok(TxnRequest {
        compare: sections[0]
            .iter()
            .map(|l| parse_compare(l))
            .collect::<Result<_, _>>()?,
        success: sections[1]
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
        failure: sections[2]
            .iter()
            .map(|l| parse_op(l))
            .collect::<Result<_, _>>()?,
    })
}

/// Input bytes in an error message.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads a Go-style double-quoted string at the start of `s`; returns it and the rest. A
/// `\xHH` escape is one byte, as in Go.
fn quoted(s: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let body = s.strip_prefix(b"\"")?;
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = body.get(i) {
        i += 1;
        match c {
            b'"' => return Some((out, &body[i..])),
            b'\\' => {
                let e = *body.get(i)?;
                i += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'0' => out.push(0),
                    b'\\' | b'"' | b'\'' => out.push(e),
                    b'x' => {
                        let hex = body.get(i..i + 2)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 2;
                        out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

/// `target("key") op "value"`.
pub fn parse_compare(line: &[u8]) -> Result<Compare, CliError> {
    let malformed = || CliError::Usage(format!("malformed comparison: {}", text(line)));
    let trimmed = line.trim_ascii();
    let open = trimmed
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(malformed)?;
    let (target, rest) = (&trimmed[..open], &trimmed[open + 1..]);
    let (key, rest) = quoted(rest).ok_or_else(malformed)?;
    let rest = rest
        .strip_prefix(b")")
        .ok_or_else(malformed)?
        .trim_ascii_start();
    let space = rest
        .iter()
        .position(u8::is_ascii_whitespace)
        .ok_or_else(malformed)?;
    let (op, rest) = (&rest[..space], &rest[space + 1..]);
    let (value, tail) = quoted(rest.trim_ascii_start()).ok_or_else(malformed)?;
    if !tail.trim_ascii().is_empty() {
        return Err(malformed());
    }
    let result = match op {
        b"=" => CompareResult::Equal,
        b"!=" => CompareResult::NotEqual,
        b"<" => CompareResult::Less,
        b">" => CompareResult::Greater,
        _ => {
            return Err(CliError::Usage(format!(
                "malformed comparison: {} (unknown op {})",
                text(line),
                text(op)
            )))
        }
    };
    let number = |radix: u32| {
        std::str::from_utf8(&value)
            .map_err(|e| e.to_string())
            .and_then(|v| i64::from_str_radix(v, radix).map_err(|e| e.to_string()))
            .map_err(|e| CliError::Usage(format!("malformed comparison: {} ({e})", text(line))))
    };
    let (target, union) = match target.trim_ascii() {
        b"ver" | b"version" => (CompareTarget::Version, TargetUnion::Version(number(10)?)),
        b"c" | b"create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number(10)?),
        ),
        b"m" | b"mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number(10)?)),
        b"val" | b"value" => (CompareTarget::Value, TargetUnion::Value(value)),
        b"lease" => (CompareTarget::Lease, TargetUnion::Lease(number(16)?)),
        other => {
            return Err(CliError::Usage(format!(
                "malformed comparison: {} (unknown target {})",
                text(line),
                text(other)
            )))
        }
    };
    Ok(Compare {
        result,
        target,
        key,
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

/// Splits a request line into arguments: whitespace-separated, with Go-style "double" and
/// 'single' quoted arguments (etcdctl's `Argify`).
pub fn argify(line: &[u8]) -> Result<Vec<Vec<u8>>, CliError> {
    let bad = || CliError::Usage(format!("bad quoting in: {}", text(line)));
    let mut args = Vec::new();
    let mut rest = line.trim_ascii_start();
    while !rest.is_empty() {
        let (arg, tail) = if rest.starts_with(b"\"") {
            quoted(rest).ok_or_else(bad)?
        } else if let Some(body) = rest.strip_prefix(b"'") {
            let end = body.iter().position(|&b| b == b'\'').ok_or_else(bad)?;
            (body[..end].to_vec(), &body[end + 1..])
        } else {
            let end = rest
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(rest.len());
            (rest[..end].to_vec(), &rest[end..])
        };
        args.push(arg);
        rest = tail.trim_ascii_start();
    }
    Ok(args)
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct OpLine {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    Get(GetArgs),
    Put(PutArgs),
    #[command(alias = "delete")]
    Del(DelArgs),
}

/// One `get`, `put` or `del` request line.
pub fn parse_op(line: &[u8]) -> Result<RequestOp, CliError> {
    let args = argify(line)?.into_iter().map(OsString::from_vec);
    let parsed = OpLine::try_parse_from(args).map_err(|e| {
        CliError::Usage(format!(
            "invalid txn request {:?}: {}",
            text(line),
            e.kind()
        ))
    })?;
    Ok(match parsed.op {
        Op::Get(g) => RequestOp::Range(g.request()?),
        Op::Put(p) => RequestOp::Put(p.request()?),
        Op::Del(d) => RequestOp::DeleteRange(d.request()?),
    })
}
