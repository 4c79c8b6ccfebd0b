//! Client command-line pieces in etcdctl's spirit: the arguments of `get`, `put`, `del`,
//! `member`, `lease` and `watch` and the requests they make, `txn`'s text format, the output
//! formats, and `lock`, `elect` and `sem`, which hold a session while they run.

pub mod lease;
pub mod lock;
pub mod member;
pub mod ops;
pub mod output;
pub mod txn;
pub mod watch;

pub use lease::LeaseCmd;
pub use lock::{ElectArgs, LockArgs, SemCmd};
pub use member::MemberCmd;
pub use ops::{prefix_range_end, DelArgs, GetArgs, PutArgs};
pub use txn::{argify, parse_compare, parse_op, parse_txn};
pub use watch::WatchArgs;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// Bad arguments or input (etcdctl's ExitBadArgs / ExitInvalidInput).
    #[error("{0}")]
    Usage(String),
}

#[cfg(test)]
mod tests;
