//! `lease grant|revoke|keep-alive|timetolive|list` as etcdctl 3.4 takes them and prints
//! their answers. Lease ids are hexadecimal on the command line and in the output, as
//! etcdctl has them.

use super::CliError;
use clap::Subcommand;

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum LeaseCmd {
    /// Creates leases.
    Grant {
        /// TTL in seconds.
        ttl: String,
    },
    /// Revokes leases (and deletes every key attached to them).
    Revoke {
        /// The lease ID in hex.
        id: String,
    },
    /// Keeps leases alive (renew), sending renewals to the leader every third of the TTL
    /// until the lease expires or is revoked.
    KeepAlive {
        /// Resets the keep-alive time to its original value once, then exits.
        #[arg(long)]
        once: bool,
        /// The lease ID in hex.
        id: String,
    },
    /// Gets lease information (asked of the leader).
    Timetolive {
        /// Get keys attached to this lease.
        #[arg(long)]
        keys: bool,
        /// The lease ID in hex.
        id: String,
    },
    /// Lists all active leases.
    List,
}

/// A lease ID as etcdctl parses it (Go's `strconv.ParseInt(id, 16, 64)`).
pub fn parse_lease_id(id: &str) -> Result<i64, CliError> {
    // from_str_radix takes a leading '+', which Go does not.
    let parsed = if id.starts_with('+') {
        None
    } else {
        i64::from_str_radix(id, 16).ok()
    };
    parsed.ok_or_else(|| CliError::Usage(format!("bad lease ID arg ({id:?}), expecting ID in Hex")))
}

/// A TTL as etcdctl parses it (decimal seconds).
pub fn parse_ttl(ttl: &str) -> Result<i64, CliError> {
    ttl.parse::<i64>()
        .map_err(|_| CliError::Usage(format!("bad TTL ({ttl:?})")))
}

/// A lease ID as etcdctl prints it (`%016x`).
pub fn hex(id: i64) -> String {
    format!("{id:016x}")
}

/// `lease grant`: etcdctl's line.
pub fn granted(id: i64, ttl: i64) -> String {
    format!("lease {} granted with TTL({ttl}s)\n", hex(id))
}

/// `lease revoke`.
pub fn revoked(id: i64) -> String {
    format!("lease {} revoked\n", hex(id))
}

/// `lease keep-alive`: one line per renewal.
pub fn keepalived(id: i64, ttl: i64) -> String {
    format!("lease {} keepalived with TTL({ttl})\n", hex(id))
}

/// `lease keep-alive`: the lease is gone.
pub fn expired_or_revoked(id: i64) -> String {
    format!("lease {} expired or revoked.\n", hex(id))
}

/// `lease timetolive [--keys]`.
pub fn time_to_live(r: &crate::lease::LeaseTimeToLiveResponse, with_keys: bool) -> Vec<u8> {
    if r.granted_ttl == 0 && r.ttl == -1 {
        return format!("lease {} already expired\n", hex(r.id)).into_bytes();
    }
    let mut out = format!(
        "lease {} granted with TTL({}s), remaining({}s)",
        hex(r.id),
        r.granted_ttl,
        r.ttl
    )
    .into_bytes();
    if with_keys {
        out.extend_from_slice(b", attached keys([");
        for (i, k) in r.keys.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(k);
        }
        out.extend_from_slice(b"])");
    }
    out.push(b'\n');
    out
}

/// `lease list`.
pub fn list(r: &crate::lease::LeaseLeasesResponse) -> String {
    let mut out = format!("found {} leases\n", r.leases.len());
    for l in &r.leases {
        out.push_str(&hex(l.id));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse};

    #[test]
    fn lines_are_etcdctls() {
        let id = 0x694d_7a3b_2c8c_6a0f;
        assert_eq!(
            granted(id, 60),
            "lease 694d7a3b2c8c6a0f granted with TTL(60s)\n"
        );
        assert_eq!(revoked(id), "lease 694d7a3b2c8c6a0f revoked\n");
        assert_eq!(
            keepalived(id, 60),
            "lease 694d7a3b2c8c6a0f keepalived with TTL(60)\n"
        );
        assert_eq!(
            expired_or_revoked(id),
            "lease 694d7a3b2c8c6a0f expired or revoked.\n"
        );
        let mut r = LeaseTimeToLiveResponse {
            id,
            ttl: 55,
            granted_ttl: 60,
            keys: vec![b"k1".to_vec(), b"k2".to_vec()],
            ..Default::default()
        };
        assert_eq!(
            time_to_live(&r, false),
            b"lease 694d7a3b2c8c6a0f granted with TTL(60s), remaining(55s)\n"
        );
        assert_eq!(
            time_to_live(&r, true),
            b"lease 694d7a3b2c8c6a0f granted with TTL(60s), remaining(55s), attached keys([k1 k2])\n"
        );
        r.ttl = -1;
        r.granted_ttl = 0;
        assert_eq!(
            time_to_live(&r, true),
            b"lease 694d7a3b2c8c6a0f already expired\n"
        );
        let leases = LeaseLeasesResponse {
            leases: vec![LeaseStatus { id: 1 }, LeaseStatus { id }],
            ..Default::default()
        };
        assert_eq!(
            list(&leases),
            "found 2 leases\n0000000000000001\n694d7a3b2c8c6a0f\n"
        );
    }

    #[test]
    fn ids_parse_as_hex() {
        assert_eq!(
            parse_lease_id("694d7a3b2c8c6a0f"),
            Ok(0x694d_7a3b_2c8c_6a0f)
        );
        assert!(parse_lease_id("+1").is_err());
        assert!(parse_lease_id("xyz").is_err());
        assert!(parse_lease_id("ffffffffffffffff").is_err());
        assert_eq!(parse_ttl("60"), Ok(60));
        assert!(parse_ttl("6O").is_err());
    }
}
