//! A linearizability checker for a history of puts and reads of registers (one per key),
//! after Wing & Gong with Lowe's memoization (as porcupine does it).
//!
//! Keys are independent registers, so each key's history is checked alone. A put whose
//! outcome the client does not know (a timeout, a crash, "leader changed") never returns:
//! it may take effect at any point after its call, or never. A request the member said was
//! certainly not applied is left out of the history by the caller.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Wrote a value (values are unique within a key's history).
    Put(u64),
    /// Read the register: `None` for an absent key.
    Get(Option<u64>),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub key: u64,
    pub kind: Kind,
    /// Simulated time of the call and of the answer; `None` when the answer never came
    /// (or came without telling whether the put took effect).
    pub call: u64,
    pub ret: Option<u64>,
}

/// Checks every key's history; on failure, names the key and shows its history.
pub fn check(history: &[Op]) -> Result<(), String> {
    let mut keys: Vec<u64> = history.iter().map(|o| o.key).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let ops: Vec<&Op> = history.iter().filter(|o| o.key == key).collect();
        if !linearizable(&ops) {
            let mut lines = vec![format!(
                "key {key}: no linearization of its {} operations exists:",
                ops.len()
            )];
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| o.call);
            for o in sorted {
                lines.push(format!(
                    "  client {:>2} [{:>7} .. {:>7}] {:?}",
                    o.client,
                    o.call,
                    o.ret.map_or("unknown".to_string(), |r| r.to_string()),
                    o.kind
                ));
            }
            return Err(lines.join("\n"));
        }
    }
    Ok(())
}

/// One call or return event in the doubly linked event list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call, the index of its return event.
    matching: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

fn linearizable(ops: &[&Op]) -> bool {
    // Events by time; at equal times calls come first (the operations overlap, which
    // allows more orders: never a false alarm).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        order.push((o.call, false, i));
        order.push((o.ret.unwrap_or(u64::MAX), true, i));
    }
    order.sort();
    let head = order.len(); // a sentinel before the first event
    let mut ev: Vec<Event> = order
        .iter()
        .enumerate()
        .map(|(at, &(_, is_ret, op))| Event {
            op,
            is_call: !is_ret,
            matching: NONE,
            prev: if at == 0 { head } else { at - 1 },
            next: if at + 1 == order.len() { NONE } else { at + 1 },
        })
        .collect();
    let mut ret_of = vec![NONE; ops.len()];
    for (at, e) in ev.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = at;
        }
    }
    for e in ev.iter_mut() {
        if e.is_call {
            e.matching = ret_of[e.op];
        }
    }
    ev.push(Event {
        op: NONE,
        is_call: false,
        matching: NONE,
        prev: NONE,
        next: if order.is_empty() { NONE } else { 0 },
    });

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut entry = ev[head].next;
    // Each step either lifts an operation or backtracks one; the cache bounds the states.
    while ev[head].next != NONE {
        if entry == NONE {
            // Every remaining call was tried at this point: backtrack.
            let Some((call, old)) = stack.pop() else {
                return false;
            };
            linearized[ev[call].op / 64] &= !(1 << (ev[call].op % 64));
            state = old;
            unlift(&mut ev, call);
            entry = ev[call].next;
            continue;
        }
        let e = ev[entry];
        if e.is_call {
            let op = ops[e.op];
            let next_state = match &op.kind {
                Kind::Put(v) => Some(Some(*v)),
                Kind::Get(seen) if *seen == state => Some(state),
                Kind::Get(_) => None,
            };
            if let Some(next_state) = next_state {
                let mut with = linearized.clone();
                with[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((with.clone(), next_state)) {
                    stack.push((entry, state));
                    linearized = with;
                    state = next_state;
                    lift(&mut ev, entry);
                    entry = ev[head].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // A return whose call is not linearized yet: this order fails here.
            let Some((call, old)) = stack.pop() else {
                return false;
            };
            linearized[ev[call].op / 64] &= !(1 << (ev[call].op % 64));
            state = old;
            unlift(&mut ev, call);
            entry = ev[call].next;
        }
    }
    true
}

/// Takes a call and its return out of the list.
fn lift(ev: &mut [Event], call: usize) {
    for at in [call, ev[call].matching] {
        let (p, n) = (ev[at].prev, ev[at].next);
        ev[p].next = n;
        if n != NONE {
            ev[n].prev = p;
        }
    }
}

/// Puts them back (in the reverse order of [`lift`]).
fn unlift(ev: &mut [Event], call: usize) {
    for at in [ev[call].matching, call] {
        let (p, n) = (ev[at].prev, ev[at].next);
        ev[p].next = at;
        if n != NONE {
            ev[n].prev = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, kind: Kind, call: u64, ret: Option<u64>) -> Op {
        Op {
            client,
            key: 1,
            kind,
            call,
            ret,
        }
    }

    #[test]
    fn sequential_and_overlapping_histories() {
        use Kind::*;
        // put 1, then read 1: fine.
        assert!(check(&[
            op(0, Put(1), 0, Some(10)),
            op(1, Get(Some(1)), 11, Some(12))
        ])
        .is_ok());
        // A read after a put returned must see it (or something newer).
        assert!(check(&[op(0, Put(1), 0, Some(10)), op(1, Get(None), 11, Some(12))]).is_err());
        // Overlapping: either order.
        assert!(check(&[op(0, Put(1), 0, Some(10)), op(1, Get(None), 5, Some(12))]).is_ok());
        // A stale read after a newer value was read.
        assert!(check(&[
            op(0, Put(1), 0, Some(10)),
            op(0, Put(2), 11, Some(20)),
            op(1, Get(Some(2)), 21, Some(22)),
            op(2, Get(Some(1)), 23, Some(24)),
        ])
        .is_err());
        // A put of unknown outcome may apply late, or never.
        assert!(check(&[
            op(0, Put(1), 0, None),
            op(1, Get(None), 5, Some(6)),
            op(1, Get(Some(1)), 7, Some(8)),
        ])
        .is_ok());
        assert!(check(&[op(0, Put(1), 0, None), op(1, Get(None), 50, Some(60))]).is_ok());
        // But not before its call.
        assert!(check(&[op(1, Get(Some(1)), 0, Some(4)), op(0, Put(1), 5, None)]).is_err());
        // Once seen, an unknown put stays (no flip-flop back to the old value).
        assert!(check(&[
            op(0, Put(1), 0, None),
            op(1, Get(Some(1)), 5, Some(6)),
            op(1, Get(None), 7, Some(8)),
        ])
        .is_err());
    }

    #[test]
    fn many_concurrent_operations_check_quickly() {
        // 8 clients, 40 rounds of overlapping puts and reads that a register explains.
        let mut ops = Vec::new();
        let mut value = None;
        for round in 0..40u64 {
            let t = round * 100;
            for c in 0..4 {
                ops.push(op(c, Kind::Get(value), t, Some(t + 50)));
            }
            let v = round + 1;
            ops.push(op(4, Kind::Put(v), t + 10, Some(t + 60)));
            for c in 5..8 {
                ops.push(op(c, Kind::Get(Some(v)), t + 70, Some(t + 90)));
            }
            value = Some(v);
        }
        assert!(check(&ops).is_ok());
    }
}
