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

/// A member of the cluster as the others know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl PeerInfo {
    pub fn to_member(&self) -> crate::raftlog::MemberInfo {
        crate::raftlog::MemberInfo {
            id: self.id,
            name: self.name.clone(),
            peer_urls: self.peer_urls.clone(),
            client_urls: Vec::new(),
        }
    }

    pub fn from_member(m: &crate::raftlog::MemberInfo) -> PeerInfo {
        PeerInfo {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
        }
    }
}

/// What the WAL's metadata record holds: who this member is, its start epoch, and the
/// cluster's members as bootstrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub identity: Identity,
    pub epoch: u64,
    pub members: Vec<PeerInfo>,
}

impl Identity {
    const FIXED_BYTES: usize = 25;
    /// Version 2 added the start epoch and the member list (and came with the versioned
    /// log command: a WAL of version 1 holds entries in the older format).
    const VERSION: u8 = 2;
    /// Members, names and URLs a metadata record may hold (a record is read whole).
    const MEMBERS_MAX: usize = 1024;
    const STRINGS_MAX: usize = 64;
    const STRING_BYTES_MAX: usize = 4096;

    /// The WAL metadata record's payload:
    /// `version u8 | member u64 | cluster u64 | epoch u64 | members u16 |` then per member
    /// `id u64 | name | urls u16 | url...`, each string `len u16 | UTF-8`; little-endian.
    pub fn encode(&self, epoch: u64, members: &[PeerInfo]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED_BYTES + 64 * members.len());
        out.push(Self::VERSION);
        out.extend_from_slice(&self.member_id.to_le_bytes());
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&(members.len().min(Self::MEMBERS_MAX) as u16).to_le_bytes());
        let string = |out: &mut Vec<u8>, s: &str| {
            let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        };
        for m in members.iter().take(Self::MEMBERS_MAX) {
            out.extend_from_slice(&m.id.to_le_bytes());
            string(&mut out, &m.name);
            let urls = m.peer_urls.len().min(Self::STRINGS_MAX);
            out.extend_from_slice(&(urls as u16).to_le_bytes());
            for u in &m.peer_urls[..urls] {
                string(&mut out, u);
            }
        }
        out
    }

    /// The identity, epoch and members in a metadata record.
    pub fn decode(payload: &[u8]) -> Result<Metadata, String> {
        if payload.first() == Some(&1) {
            return Err(
                "the WAL was written by an earlier version of cairn (log format 1), which \
                 this version does not read"
                    .into(),
            );
        }
        let malformed = || {
            format!(
                "the WAL's member metadata record is malformed ({} bytes)",
                payload.len()
            )
        };
        if payload.len() < Self::FIXED_BYTES + 2 || payload[0] != Self::VERSION {
            return Err(malformed());
        }
        let mut r = Reader {
            buf: payload,
            at: 1,
        };
        let member_id = r.u64().ok_or_else(malformed)?;
        let cluster_id = r.u64().ok_or_else(malformed)?;
        let epoch = r.u64().ok_or_else(malformed)?;
        let count = r.u16().ok_or_else(malformed)? as usize;
        let mut members = Vec::with_capacity(count.min(Self::MEMBERS_MAX));
        for _ in 0..count {
            let id = r.u64().ok_or_else(malformed)?;
            let name = r.string().ok_or_else(malformed)?;
            let urls = r.u16().ok_or_else(malformed)? as usize;
            if urls > Self::STRINGS_MAX {
                return Err(malformed());
            }
            let peer_urls = (0..urls)
                .map(|_| r.string())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(malformed)?;
            members.push(PeerInfo {
                id,
                name,
                peer_urls,
            });
        }
        if r.at != payload.len() {
            return Err(malformed());
        }
        Ok(Metadata {
            identity: Identity {
                member_id,
                cluster_id,
            },
            epoch,
            members,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Checks a peer URL: `http://host:port` (TLS comes with the security work).
pub fn parse_peer_url(url: &str, flag: &str) -> Result<(), String> {
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

    /// Checks the flags for a member named `name` joining a running cluster
    /// (`--initial-cluster-state existing`) and returns its own peer URLs and the peer
    /// addresses of the others, to ask for the membership.
    pub fn join_targets(&self, name: &str) -> Result<(Vec<String>, Vec<String>), String> {
        let (_, members) = self.bootstrap(name)?;
        let mine = members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.peer_urls.clone())
            .unwrap_or_default();
        let others: Vec<String> = members
            .iter()
            .filter(|m| m.name != name)
            .flat_map(|m| m.peer_urls.iter().map(|u| listen_addr(u)))
            .collect();
        if others.is_empty() {
            return Err(format!(
                "--initial-cluster-state existing: --initial-cluster names no member besides \
                 {name:?} to join (list the running members too, as `cairn member add` prints)"
            ));
        }
        Ok((mine, others))
    }

    /// Checks the flags for a member named `name` starting a new data directory, and
    /// returns its identity and the cluster's members (as `--initial-cluster` lists them:
    /// for a new cluster, its members).
    pub fn bootstrap(&self, name: &str) -> Result<(Identity, Vec<PeerInfo>), String> {
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
        // What the metadata record can hold, refused here rather than cut there.
        if members.len() > Identity::MEMBERS_MAX {
            return Err(format!(
                "--initial-cluster lists {} members; at most {} are supported",
                members.len(),
                Identity::MEMBERS_MAX
            ));
        }
        for (n, urls) in &members {
            if n.len() > Identity::STRING_BYTES_MAX
                || urls.len() > Identity::STRINGS_MAX
                || urls.iter().any(|u| u.len() > Identity::STRING_BYTES_MAX)
            {
                return Err(format!(
                    "--initial-cluster: member {:?} has a name or URLs too long (at most {} \
                     URLs of {} bytes each)",
                    n.chars().take(64).collect::<String>(),
                    Identity::STRINGS_MAX,
                    Identity::STRING_BYTES_MAX
                ));
            }
        }
        // URLs sorted, as the ids are computed: every member writes the same bootstrap
        // entries whatever order its flags list them in.
        let peers: Vec<PeerInfo> = members
            .iter()
            .map(|(n, urls)| {
                let mut peer_urls = urls.clone();
                peer_urls.sort();
                peer_urls.dedup();
                PeerInfo {
                    id: member_id(urls, &self.token),
                    name: n.clone(),
                    peer_urls,
                }
            })
            .collect();
        let ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != ids.len() {
            return Err("--initial-cluster lists two members with the same peer URLs".to_string());
        }
        Ok((
            Identity {
                member_id: member_id(urls, &self.token),
                cluster_id: cluster_id(&ids),
            },
            peers,
        ))
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
        let (identity, members) = ClusterConfig::default().bootstrap("default").unwrap();
        assert_eq!(identity.member_id, id);
        assert_eq!(members.len(), 1);
        let meta = Identity::decode(&identity.encode(7, &members)).unwrap();
        assert_eq!(
            (meta.identity, meta.epoch, meta.members),
            (identity, 7, members.clone())
        );
        let encoded = identity.encode(7, &members);
        for cut in 0..encoded.len() {
            assert!(Identity::decode(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_three_member_cluster_has_etcds_ids() {
        let c = ClusterConfig {
            initial_cluster:
                "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381,c=http://127.0.0.1:2382".into(),
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2381".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2381".into()],
            ..ClusterConfig::default()
        };
        let (identity, members) = c.bootstrap("b").unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[1].name, "b");
        assert_eq!(identity.member_id, members[1].id);
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        assert_eq!(identity.cluster_id, cluster_id(&ids));
        // Every member computes the same cluster id.
        let (a, _) = ClusterConfig {
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            ..c.clone()
        }
        .bootstrap("a")
        .unwrap();
        assert_eq!(a.cluster_id, identity.cluster_id);
        // Another token, another cluster.
        let (other, _) = ClusterConfig {
            token: "other".into(),
            ..c
        }
        .bootstrap("b")
        .unwrap();
        assert_ne!(other.cluster_id, identity.cluster_id);
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
        let twice = ClusterConfig {
            initial_cluster: "default=http://localhost:2380,b=http://localhost:2380".into(),
            ..base.clone()
        };
        assert!(err(&twice, "default").contains("same peer URLs"));
        let long = ClusterConfig {
            initial_cluster: format!("{}=http://localhost:2380", "n".repeat(5000)),
            ..base.clone()
        };
        assert!(err(&long, &"n".repeat(5000)).contains("too long"));
        let existing = ClusterConfig {
            state: ClusterState::Existing,
            ..base.clone()
        };
        // Joining needs someone to ask.
        assert!(existing
            .join_targets("default")
            .unwrap_err()
            .contains("no member besides"));
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
