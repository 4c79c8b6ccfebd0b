//! The arguments of `get`, `put` and `del` as etcdctl takes them, and the requests they make.
//! Shared by the top-level commands and by the lines of `txn`.
//!
//! Keys, values and range ends are taken as the bytes of the arguments (etcdctl's are Go
//! strings, which are bytes): they need not be UTF-8.

use super::CliError;
use crate::mvcc::{DeleteRangeRequest, PutRequest, RangeRequest, SortOrder, SortTarget};
use clap::Args;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

/// etcd's `GetPrefixRangeEnd`: the smallest key greater than every key starting with
/// `prefix`; `"\0"` (all keys from `prefix` on) if there is none.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Key and range end for `--prefix` / `--from-key`, as etcdctl resolves them (an empty key
/// with either flag means every key).
pub(crate) fn key_range(
    key: &[u8],
    range_end: Option<&[u8]>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), CliError> {
    if range_end.is_some() && (prefix || from_key) {
        return Err(CliError::Usage(
            "too many arguments, only accept one argument when `--prefix` or `--from-key` is set."
                .into(),
        ));
    }
    if prefix && from_key {
        return Err(CliError::Usage(
            "`--prefix` and `--from-key` cannot be set at the same time".into(),
        ));
    }
    let key = key.to_vec();
    Ok(match (prefix, from_key, range_end) {
        (true, _, _) if key.is_empty() => (vec![0], vec![0]),
        (true, _, _) => {
            let end = prefix_range_end(&key);
            (key, end)
        }
        (_, true, _) if key.is_empty() => (vec![0], vec![0]),
        (_, true, _) => (key, vec![0]),
        (_, _, Some(end)) => (key, end.to_vec()),
        _ => (key, Vec::new()),
    })
}

/// `get key [range_end]`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct GetArgs {
    pub key: OsString,
    pub range_end: Option<OsString>,
    /// Get keys with matching prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare.
    #[arg(long)]
    pub from_key: bool,
    /// Maximum number of results.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Specify the kv revision.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Get only the keys.
    #[arg(long)]
    pub keys_only: bool,
    /// Get only the count.
    #[arg(long)]
    pub count_only: bool,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION.
    #[arg(long, default_value = "")]
    pub sort_by: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default).
    #[arg(long, default_value = "")]
    pub order: String,
}

impl GetArgs {
    pub fn request(&self) -> Result<RangeRequest, CliError> {
        let (key, range_end) = key_range(
            self.key.as_bytes(),
            self.range_end.as_deref().map(OsStrExt::as_bytes),
            self.prefix,
            self.from_key,
        )?;
        let sort_order = match self.order.to_uppercase().as_str() {
            "" => SortOrder::None,
            "ASCEND" => SortOrder::Ascend,
            "DESCEND" => SortOrder::Descend,
            _ => return Err(CliError::Usage(format!("bad sort order {}", self.order))),
        };
        let sort_target = match self.sort_by.to_uppercase().as_str() {
            "" | "KEY" => SortTarget::Key,
            "CREATE" => SortTarget::Create,
            "MODIFY" => SortTarget::Mod,
            "VALUE" => SortTarget::Value,
            "VERSION" => SortTarget::Version,
            _ => return Err(CliError::Usage(format!("bad sort target {}", self.sort_by))),
        };
        // As etcd's client: ascending by key is the natural order, so no sort is asked for.
        let sort_order = if sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
            SortOrder::None
        } else {
            sort_order
        };
        Ok(RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.rev,
            sort_order,
            sort_target,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        })
    }
}

/// `put key value`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct PutArgs {
    pub key: OsString,
    /// The value; the `put` command reads it from standard input when it is left out.
    pub value: Option<OsString>,
    /// Lease ID (in hexadecimal) to attach to the key.
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// Return the previous key-value pair before modification.
    #[arg(long)]
    pub prev_kv: bool,
    /// Update the key using its current value.
    #[arg(long)]
    pub ignore_value: bool,
    /// Update the key using its current lease.
    #[arg(long)]
    pub ignore_lease: bool,
}

fn put_needs_a_value() -> CliError {
    CliError::Usage("put command needs 1 argument and input from stdin or 2 arguments".into())
}

impl PutArgs {
    /// The request; the value must be among the arguments (a `put` line of `txn`).
    pub fn request(&self) -> Result<PutRequest, CliError> {
        self.request_or_read(std::io::empty())
    }

    /// The request, with the value read from `stdin` when the arguments leave it out, as
    /// etcdctl's `put`: all of the input, bytes as they are (a trailing newline stays part
    /// of the value); no input at all is an error. With `--ignore-value` the input is not
    /// read.
    pub fn request_or_read(&self, mut stdin: impl Read) -> Result<PutRequest, CliError> {
        if self.ignore_value && self.value.is_some() {
            return Err(CliError::Usage(
                "value should not be provided with --ignore-value".into(),
            ));
        }
        let value = match (&self.value, self.ignore_value) {
            (Some(v), _) => v.as_bytes().to_vec(),
            (None, true) => Vec::new(),
            (None, false) => {
                let mut input = Vec::new();
                match stdin.read_to_end(&mut input) {
                    Ok(_) if !input.is_empty() => input,
                    _ => return Err(put_needs_a_value()),
                }
            }
        };
        let lease = i64::from_str_radix(&self.lease, 16)
            .map_err(|e| CliError::Usage(format!("bad lease ID ({e}), expecting ID in Hex")))?;
        Ok(PutRequest {
            key: self.key.as_bytes().to_vec(),
            value,
            lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

/// `del key [range_end]`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct DelArgs {
    pub key: OsString,
    pub range_end: Option<OsString>,
    /// Delete keys with matching prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Return deleted key-value pairs.
    #[arg(long)]
    pub prev_kv: bool,
    /// Delete keys that are greater than or equal to the given key using byte compare.
    #[arg(long)]
    pub from_key: bool,
}

impl DelArgs {
    pub fn request(&self) -> Result<DeleteRangeRequest, CliError> {
        let (key, range_end) = key_range(
            self.key.as_bytes(),
            self.range_end.as_deref().map(OsStrExt::as_bytes),
            self.prefix,
            self.from_key,
        )?;
        Ok(DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        })
    }
}
