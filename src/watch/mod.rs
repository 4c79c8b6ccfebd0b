//! Streaming watch, sans-IO: the [`WatchHub`] keeps every watcher of a member and feeds
//! them the events applying produces, in log order, so a watch works alike on every member
//! and across leader changes.
//!
//! # Guarantees (etcd's, in its API guarantees)
//!
//! - **Ordered, unique**: a watcher gets events in revision order, each once.
//! - **Atomic**: the events of one revision are never split across responses (unless the
//!   watcher asked for fragments of an oversized revision, marked `fragment`).
//! - **Reliable**: no event between a watcher's start and its last response is skipped:
//!   a watcher whose connection cannot take more falls behind into the unsynced group and
//!   catches up from the revision-keyed tree, in chunks of whole revisions; one that asks
//!   for revisions already compacted is canceled with the compaction revision.
//! - **Resumable**: a new watch from `last revision + 1` continues where one left off.
//! - **Bookmarkable**: a progress response carries a revision R when every event up to R
//!   has been sent to the watchers it concerns.
//!
//! # Layout
//!
//! - `types`: the requests and responses (etcd's `WatchRequest`, `WatchResponse`).
//! - `groups`: which watchers an event's key matches, watchers of one range sharing the
//!   work.
//! - `hub`: the watchers, synced and unsynced, and what each step sends them.

mod groups;
mod hub;
mod types;

pub use hub::{ConnId, HubConfig, Sink, WatchHub, WatchInput, WatchOut};
pub use types::*;
