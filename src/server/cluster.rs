//! Cluster flags and member identity, as etcd has them: `--initial-cluster`,
//! `--initial-advertise-peer-urls`, `--listen-peer-urls`, `--initial-cluster-state`,
//! `--initial-cluster-token`. IDs are computed as etcd computes them (SHA-1 of the sorted
//! peer URLs and the cluster token; the cluster ID from the member IDs), so a member has
//! the ID etcd would give it.
//!
//! The identity is decided once, when the data directory is new, and kept in the WAL's
//! metadata record; on later starts the `--initial-*` flags are ignored, as in etcd.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

impl std::str::FromStr for ClusterState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            other => Err(format!(
                "invalid --initial-cluster-state {other:?}: use new or existing"
            )),
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        })
    }
}

/// The cluster flags as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `name=url,name=url,...`
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub state: ClusterState,
    pub token: String,
}

impl Default for ClusterConfig {
    /// etcd's defaults.
    fn default() -> Self {
        ClusterConfig {
            initial_cluster: "default=http://localhost:2380".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            listen_peer_urls: vec!["http://localhost:2380".into()],
            state: ClusterState::New,
            token: "etcd-cluster".into(),
        }
    }
}

/// Who this member is: kept in the WAL from the first start on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Identity {
    const ENCODED_BYTES: usize = 25;
    /// Version 2 added the start epoch (and came with the versioned log command: a WAL of
    /// version 1 holds entries in the older format).
    const VERSION: u8 = 2;

    /// The WAL metadata record's payload: the identity and the start epoch it was
    /// written at (raised at every start, so proposal ids never repeat).
    pub fn encode(&self, epoch: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_BYTES);
        out.push(Self::VERSION);
        out.extend_from_slice(&self.member_id.to_le_bytes());
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out
    }

    /// The identity and epoch in a metadata record.
    pub fn decode(payload: &[u8]) -> Result<(Identity, u64), String> {
        if payload.first() == Some(&1) {
            return Err(
                "the WAL was written by an earlier version of cairn (log format 1), which \
                 this version does not read"
                    .into(),
            );
        }
        if payload.len() != Self::ENCODED_BYTES || payload[0] != Self::VERSION {
            return Err(format!(
                "the WAL's member metadata record is malformed ({} bytes)",
                payload.len()
            ));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Ok((
            Identity {
                member_id: word(1),
                cluster_id: word(9),
            },
            word(17),
        ))
    }
}

/// Checks a peer URL: `http://host:port` (TLS comes with the security work).
fn parse_peer_url(url: &str, flag: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            format!("{flag}: {url}: https peer URLs need TLS, which cairn does not have yet")
        } else {
            format!("{flag}: {url} is not a URL like http://127.0.0.1:2380")
        });
    };
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{flag}: {url} must name a host and a port, like http://127.0.0.1:2380"
        )),
    }
}

/// The socket address a `--listen-peer-urls` URL binds.
pub fn listen_addr(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.strip_suffix('/').unwrap_or(rest).to_string()
}

impl ClusterConfig {
    /// Members listed in `--initial-cluster`, each with its peer URLs, in order.
    pub fn members(&self) -> Result<Vec<(String, Vec<String>)>, String> {
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for item in self.initial_cluster.split(',').filter(|s| !s.is_empty()) {
            let Some((name, url)) = item.split_once('=') else {
                return Err(format!(
                    "--initial-cluster: {item:?} is not name=url (as in default=http://localhost:2380)"
                ));
            };
            parse_peer_url(url, "--initial-cluster")?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if members.is_empty() {
            return Err("--initial-cluster is empty".into());
        }
        Ok(members)
    }

    /// Checks the flags for a member named `name` starting a new data directory, and
    /// returns its identity. A cluster of more than one member, or joining an existing
    /// one, needs replication, which this version does not have: those are refused
    /// clearly rather than started as something else.
    pub fn bootstrap(&self, name: &str) -> Result<Identity, String> {
        for url in &self.initial_advertise_peer_urls {
            parse_peer_url(url, "--initial-advertise-peer-urls")?;
        }
        for url in &self.listen_peer_urls {
            parse_peer_url(url, "--listen-peer-urls")?;
        }
        let members = self.members()?;
        let Some((_, urls)) = members.iter().find(|(n, _)| n == name) else {
            return Err(format!(
                "couldn't find local name {name:?} in the initial cluster configuration \
                 (--initial-cluster={}); add {name}=<its peer URL> or set --name",
                self.initial_cluster
            ));
        };
        let mut listed = urls.clone();
        let mut advertised = self.initial_advertise_peer_urls.clone();
        listed.sort();
        advertised.sort();
        if listed != advertised {
            return Err(format!(
                "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={} \
                 (they must name the same URLs)",
                urls.join(","),
                self.initial_advertise_peer_urls.join(",")
            ));
        }
        if self.state == ClusterState::Existing {
            return Err(
                "--initial-cluster-state existing: joining a running cluster needs replication, \
                 which this version of cairn does not have yet; start a new member with \
                 --initial-cluster-state new"
                    .into(),
            );
        }
        if members.len() > 1 {
            return Err(format!(
                "--initial-cluster lists {} members: this version of cairn runs one member \
                 (replication comes in a later version); list only {name}",
                members.len()
            ));
        }
        let ids: Vec<u64> = members
            .iter()
            .map(|(_, urls)| member_id(urls, &self.token))
            .collect();
        Ok(Identity {
            member_id: member_id(urls, &self.token),
            cluster_id: cluster_id(&ids),
        })
    }
}

/// etcd's `computeMemberId`: SHA-1 of the sorted peer URLs joined, then the cluster token;
/// the first 8 bytes, big-endian.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    first_word(&h.digest().bytes())
}

/// etcd's `genID`: SHA-1 of the sorted member IDs (8 bytes big-endian each).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    first_word(&h.digest().bytes())
}

fn first_word(digest: &[u8; 20]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_ones_etcd_computes() {
        // A default etcd 3.4 member (`etcd` with no flags) reports member 8e9e05c52164694d
        // in cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".into()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
        let identity = ClusterConfig::default().bootstrap("default").unwrap();
        assert_eq!(identity.member_id, id);
        assert_eq!(Identity::decode(&identity.encode(7)), Ok((identity, 7)));
        assert!(Identity::decode(&identity.encode(7)[1..]).is_err());
    }

    #[test]
    fn bad_cluster_flags_are_clear_errors() {
        let base = ClusterConfig::default();
        let err = |c: &ClusterConfig, name: &str| c.bootstrap(name).unwrap_err();
        assert!(err(&base, "other").contains("couldn't find local name \"other\""));
        let mismatch = ClusterConfig {
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            ..base.clone()
        };
        assert!(err(&mismatch, "default").contains("--initial-advertise-peer-urls"));
        let three = ClusterConfig {
            initial_cluster: "default=http://localhost:2380,b=http://b:2380,c=http://c:2380".into(),
            ..base.clone()
        };
        assert!(err(&three, "default").contains("lists 3 members"));
        let existing = ClusterConfig {
            state: ClusterState::Existing,
            ..base.clone()
        };
        assert!(err(&existing, "default").contains("existing"));
        let garbage = ClusterConfig {
            initial_cluster: "default".into(),
            ..base.clone()
        };
        assert!(err(&garbage, "default").contains("not name=url"));
        let tls = ClusterConfig {
            listen_peer_urls: vec!["https://localhost:2380".into()],
            ..base.clone()
        };
        assert!(err(&tls, "default").contains("TLS"));
        let no_port = ClusterConfig {
            listen_peer_urls: vec!["http://localhost".into()],
            ..base
        };
        assert!(err(&no_port, "default").contains("host and a port"));
        assert!("old".parse::<ClusterState>().is_err());
    }
}
