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

/// Parses a whole txn from text.
pub fn parse_txn(input: &str) -> Result<TxnRequest, CliError> {
    let mut sections = vec![Vec::new()];
    for line in input.lines() {
        if line.trim().is_empty() {
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

/// Reads a Go-style double-quoted string at the start of `s`; returns it and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    '\\' | '"' | '\'' => out.push(e),
                    'x' => {
                        let hex: String = (0..2)
                            .filter_map(|_| chars.next().map(|(_, h)| h))
                            .collect();
                        out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

fn malformed(line: &str) -> CliError {
    CliError::Usage(format!("malformed comparison: {line}"))
}

/// `target("key") op "value"`.
pub fn parse_compare(line: &str) -> Result<Compare, CliError> {
    let (target, rest) = line.trim().split_once('(').ok_or_else(|| malformed(line))?;
    let (key, rest) = quoted(rest).ok_or_else(|| malformed(line))?;
    let rest = rest
        .strip_prefix(')')
        .ok_or_else(|| malformed(line))?
        .trim_start();
    let (op, rest) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| malformed(line))?;
    let (value, tail) = quoted(rest.trim_start()).ok_or_else(|| malformed(line))?;
    if !tail.trim().is_empty() {
        return Err(malformed(line));
    }
    let result = match op {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => {
            return Err(CliError::Usage(format!(
                "malformed comparison: {line} (unknown op {op})"
            )))
        }
    };
    let number = |radix: u32| {
        i64::from_str_radix(&value, radix)
            .map_err(|e| CliError::Usage(format!("malformed comparison: {line} ({e})")))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number(10)?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number(10)?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number(10)?)),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value.into_bytes())),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(number(16)?)),
        other => {
            return Err(CliError::Usage(format!(
                "malformed comparison: {line} (unknown target {other})"
            )))
        }
    };
    Ok(Compare {
        result,
        target,
        key: key.into_bytes(),
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

/// Splits a request line into arguments: whitespace-separated, with Go-style "double" and
/// 'single' quoted arguments (etcdctl's `Argify`).
pub fn argify(line: &str) -> Result<Vec<String>, CliError> {
    let mut args = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (arg, tail) = if rest.starts_with('"') {
            quoted(rest).ok_or_else(|| CliError::Usage(format!("bad quoting in: {line}")))?
        } else if let Some(body) = rest.strip_prefix('\'') {
            let end = body
                .find('\'')
                .ok_or_else(|| CliError::Usage(format!("bad quoting in: {line}")))?;
            (body[..end].to_string(), &body[end + 1..])
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        args.push(arg);
        rest = tail.trim_start();
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
pub fn parse_op(line: &str) -> Result<RequestOp, CliError> {
    let args = argify(line)?;
    let parsed = OpLine::try_parse_from(&args)
        .map_err(|e| CliError::Usage(format!("invalid txn request {line:?}: {}", e.kind())))?;
    Ok(match parsed.op {
        Op::Get(g) => RequestOp::Range(g.request()?),
        Op::Put(p) => RequestOp::Put(p.request()?),
        Op::Del(d) => RequestOp::DeleteRange(d.request()?),
    })
}
