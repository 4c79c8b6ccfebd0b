//! `member list|add|remove|update|promote` as etcdctl takes them, and what the CLI needs to
//! find members: whether a member refused a change for not leading, and the endpoint a
//! member's client URL names.

use super::CliError;
use crate::client::ClientError;
use crate::protocol::{ErrorCode, Member, MemberRequest};
use clap::Subcommand;

/// How a member that does not lead refuses a change (the start of the server's message):
/// the change was not applied, and may be sent to the leader.
const NOT_LEADER: &str = "etcdserver: not leader";

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum MemberCmd {
    /// Lists all members in the cluster.
    ///
    /// Simple output is one line per member: ID, status (unstarted until the member has
    /// started), name, peer addrs, client addrs, is learner.
    List,
    /// Adds a member into the cluster (sent to the leader), and prints the variables
    /// `cairn serve` takes to start it.
    Add {
        /// The new member's name.
        name: String,
        /// Comma separated peer URLs for the new member.
        #[arg(long)]
        peer_urls: Option<String>,
        /// Indicates if the new member is a raft learner.
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member from the cluster (sent to the leader).
    Remove {
        /// The member's ID in hex, as `member list` prints it.
        id: String,
    },
    /// Updates a member's peer URLs (sent to the leader).
    Update {
        /// The member's ID in hex, as `member list` prints it.
        id: String,
        /// Comma separated peer URLs for the updated member.
        #[arg(long)]
        peer_urls: Option<String>,
    },
    /// Promotes a learner that is in sync with the leader to a voting member (sent to the
    /// leader).
    Promote {
        /// The member's ID in hex, as `member list` prints it.
        id: String,
    },
}

impl MemberCmd {
    /// The request this command sends, its arguments checked as etcdctl checks them.
    pub fn request(&self) -> Result<MemberRequest, CliError> {
        Ok(match self {
            MemberCmd::List => MemberRequest::List,
            MemberCmd::Add {
                peer_urls, learner, ..
            } => MemberRequest::Add {
                peer_urls: split_peer_urls(peer_urls.as_deref())?,
                is_learner: *learner,
            },
            MemberCmd::Remove { id } => MemberRequest::Remove {
                id: parse_member_id(id)?,
            },
            MemberCmd::Update { id, peer_urls } => MemberRequest::Update {
                id: parse_member_id(id)?,
                peer_urls: split_peer_urls(peer_urls.as_deref())?,
            },
            MemberCmd::Promote { id } => MemberRequest::Promote {
                id: parse_member_id(id)?,
            },
        })
    }
}

/// A member ID as etcdctl parses it (Go's `strconv.ParseUint(id, 16, 64)`), with its words
/// when it is not one.
pub fn parse_member_id(id: &str) -> Result<u64, CliError> {
    use std::num::IntErrorKind;
    // from_str_radix takes a leading '+', which Go does not.
    let parsed = if id.starts_with('+') {
        None
    } else {
        Some(u64::from_str_radix(id, 16))
    };
    match parsed {
        Some(Ok(id)) => Ok(id),
        Some(Err(e)) if *e.kind() == IntErrorKind::PosOverflow => {
            Err(bad_member_id(id, "value out of range"))
        }
        _ => Err(bad_member_id(id, "invalid syntax")),
    }
}

fn bad_member_id(id: &str, why: &str) -> CliError {
    CliError::Usage(format!(
        "bad member ID arg (strconv.ParseUint: parsing {id:?}: {why}), expecting ID in Hex"
    ))
}

/// `--peer-urls` split at commas, as etcdctl splits it; required.
fn split_peer_urls(urls: Option<&str>) -> Result<Vec<String>, CliError> {
    match urls {
        Some(urls) if !urls.is_empty() => Ok(urls.split(',').map(str::to_string).collect()),
        _ => Err(CliError::Usage("member peer urls not provided".into())),
    }
}

/// Whether a member refused a request for not being the leader (it was not applied there).
pub fn is_not_leader(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { code: ErrorCode::Unavailable, message } if message.starts_with(NOT_LEADER))
}

/// The `--endpoints` entry a client URL names: members publish `http://host:port`, the
/// address of their native protocol.
pub fn client_endpoint(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.strip_suffix('/').unwrap_or(rest).to_string()
}

/// The endpoint of a member, through its first client URL; `None` if the member is not in
/// the list or has not published one (it has not started).
pub fn member_endpoint(members: &[Member], id: u64) -> Option<String> {
    let member = members.iter().find(|m| m.id == id)?;
    member.client_urls.first().map(|url| client_endpoint(url))
}

/// Every client URL of every member, as endpoints (`endpoint ... --cluster`); members that
/// have not started have none.
pub fn cluster_endpoints(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .flat_map(|m| m.client_urls.iter().map(|url| client_endpoint(url)))
        .collect()
}
