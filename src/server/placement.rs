//! Roles and placement: which executors run, on which cores, hosting which roles.
//!
//! Roles: `net` (a native-protocol listener per shard, SO_REUSEPORT, serializable reads),
//! `raft` (RawNode, WAL, ticks; one per member) and `apply` (the MVCC store writer and its
//! checkpoints; one per member). A role is a set of tasks on an executor; placement maps the
//! roles onto executors (one glommio `LocalExecutor` per thread):
//!
//! - `spread` (default): one executor per core this process may run on (or `--executors`),
//!   each pinned to its core and running a net shard; raft on the first, apply on the last.
//! - `one`: a single executor, pinned to the first core, runs every role.
//! - `unpinned`: the `spread` layout on executors the kernel may move between cores: for
//!   tests and laptops that run several members on few cores.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlacementMode {
    #[default]
    Spread,
    One,
    Unpinned,
}

impl FromStr for PlacementMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(PlacementMode::Spread),
            "one" => Ok(PlacementMode::One),
            "unpinned" => Ok(PlacementMode::Unpinned),
            other => Err(format!(
                "unknown placement {other:?}: use spread, one or unpinned"
            )),
        }
    }
}

impl fmt::Display for PlacementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementMode::Spread => "spread",
            PlacementMode::One => "one",
            PlacementMode::Unpinned => "unpinned",
        })
    }
}

/// The configured placement: a mode and, for `spread` and `unpinned`, how many executors
/// (0: one per core this process may run on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub mode: PlacementMode,
    pub executors: usize,
}

/// One executor of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorPlan {
    /// The core it is pinned to, if pinned.
    pub cpu: Option<usize>,
    pub net: bool,
    pub raft: bool,
    pub apply: bool,
}

impl Placement {
    /// The executors to start, given the cores this process may run on.
    pub fn layout(&self, cpus: &[usize]) -> Result<Vec<ExecutorPlan>, String> {
        let Some(&first) = cpus.first() else {
            return Err("no usable core found (sched_getaffinity)".into());
        };
        let n = match self.mode {
            PlacementMode::One => 1,
            _ if self.executors == 0 => cpus.len(),
            _ => self.executors,
        };
        if self.mode == PlacementMode::Spread && n > cpus.len() {
            return Err(format!(
                "--executors {n} is more than the {} cores this process may use; pinned \
                 executors sharing a core slow each other down (use --placement unpinned)",
                cpus.len()
            ));
        }
        Ok((0..n)
            .map(|i| ExecutorPlan {
                cpu: match self.mode {
                    PlacementMode::Spread => Some(cpus[i]),
                    PlacementMode::One => Some(first),
                    PlacementMode::Unpinned => None,
                },
                net: true,
                raft: i == 0,
                apply: i == n - 1,
            })
            .collect())
    }
}

/// The cores this process may run on.
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set filled in by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(plan: &[ExecutorPlan]) -> Vec<(Option<usize>, bool, bool, bool)> {
        plan.iter()
            .map(|p| (p.cpu, p.net, p.raft, p.apply))
            .collect()
    }

    #[test]
    fn spread_puts_raft_first_and_apply_last_with_a_net_shard_on_every_core() {
        let p = Placement::default();
        assert_eq!(
            roles(&p.layout(&[2, 5]).unwrap()),
            vec![(Some(2), true, true, false), (Some(5), true, false, true)]
        );
        assert_eq!(
            roles(&p.layout(&[0]).unwrap()),
            vec![(Some(0), true, true, true)]
        );
        let three = Placement {
            mode: PlacementMode::Spread,
            executors: 3,
        };
        let err = three.layout(&[0, 1]).unwrap_err();
        assert!(err.contains("more than the 2 cores"), "{err}");
    }

    #[test]
    fn one_hosts_every_role_and_unpinned_pins_nothing() {
        let one = Placement {
            mode: PlacementMode::One,
            executors: 4,
        };
        assert_eq!(
            roles(&one.layout(&[3, 4]).unwrap()),
            vec![(Some(3), true, true, true)]
        );
        let unpinned = Placement {
            mode: PlacementMode::Unpinned,
            executors: 3,
        };
        assert_eq!(
            roles(&unpinned.layout(&[0]).unwrap()),
            vec![
                (None, true, true, false),
                (None, true, false, false),
                (None, true, false, true)
            ]
        );
        assert!("sideways".parse::<PlacementMode>().is_err());
        assert_eq!("unpinned".parse(), Ok(PlacementMode::Unpinned));
    }
}
