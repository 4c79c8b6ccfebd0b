//! The member's alarms (etcd's alarm store): NOSPACE is raised when the database goes over
//! its quota or the file system under the data directory is full, and stays raised until a
//! client disarms it (`cairn alarm disarm`), as in etcd. While it is raised, writes that add
//! data are refused; reads, deletes and compaction go on.
//!
//! A single member keeps its alarms in memory: a restart raises NOSPACE again as soon as the
//! condition is seen again (the WAL cannot create a segment, a checkpoint fails for space, a
//! put goes over the quota). With replication they become log entries, as in etcd.

use crate::protocol::{AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub(crate) struct Alarms {
    /// Raised alarms, in the order they were raised.
    raised: Mutex<Vec<AlarmType>>,
    /// Whether NOSPACE is raised, read on every write.
    nospace: AtomicBool,
}

impl Alarms {
    /// Whether writes that add data are refused.
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }

    /// Raises `alarm` (if it is not already), logging why; `cause` is only called then.
    pub fn raise(&self, alarm: AlarmType, cause: impl FnOnce() -> String) {
        let mut raised = self.raised.lock();
        if raised.contains(&alarm) {
            return;
        }
        raised.push(alarm);
        if alarm == AlarmType::Nospace {
            self.nospace.store(true, Ordering::Release);
        }
        tracing::error!(
            alarm = alarm.name(),
            cause = %cause(),
            "alarm raised: writes that add data are refused until it is disarmed (`cairn alarm disarm`)"
        );
    }

    /// Disarms `alarm`; true if it was raised.
    pub fn disarm(&self, alarm: AlarmType) -> bool {
        let mut raised = self.raised.lock();
        let before = raised.len();
        raised.retain(|&a| a != alarm);
        if alarm == AlarmType::Nospace {
            self.nospace.store(false, Ordering::Release);
        }
        let was = raised.len() < before;
        if was {
            tracing::info!(alarm = alarm.name(), "alarm disarmed");
        }
        was
    }

    /// The raised alarms of this member.
    pub fn list(&self, member_id: u64) -> Vec<AlarmMember> {
        self.raised
            .lock()
            .iter()
            .map(|&alarm| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Answers an alarm request for this member, as etcd does: `Get` lists the matching
    /// alarms, `Activate` and `Deactivate` answer with the alarm they changed.
    pub fn request(&self, member_id: u64, req: &AlarmRequest) -> AlarmResponse {
        let ours = req.member_id == 0 || req.member_id == member_id;
        let alarms = match (req.action, req.alarm) {
            (AlarmAction::Get, filter) => self
                .list(member_id)
                .into_iter()
                .filter(|a| ours && filter.is_none_or(|f| f == a.alarm))
                .collect(),
            (AlarmAction::Activate, Some(alarm)) if ours => {
                self.raise(alarm, || "activated by a client".into());
                vec![AlarmMember { member_id, alarm }]
            }
            (AlarmAction::Deactivate, Some(alarm)) if ours => {
                if self.disarm(alarm) {
                    vec![AlarmMember { member_id, alarm }]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        };
        AlarmResponse { alarms }
    }
}
