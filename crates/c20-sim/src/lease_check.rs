//! The promises of leases, checked on a lease client's calls stamped with the run's clock.
//!
//! A lease client holds one lease at a time, attaches one key of its own to it, keeps it alive,
//! reads the key (linearizably), revokes the lease now and then, and at the end lets it lapse.
//! Its calls carry times on the run's (simulated) clock, the clock TTLs are promised on:
//!
//! - **Not early.** A grant or keep-alive acknowledged with TTL `t` and called at `c` promises
//!   the lease lives until `c + t` at least (the leader restarted its clock at some point after
//!   `c`). Its key, once attached by an acknowledged put, is there for every linearizable read
//!   that returns before that, and a keep-alive that returns before it does not find the lease
//!   gone, unless the client revoked the lease first.
//! - **But eventually.** Once the client stops keeping it alive, with the faults over, the lease
//!   expires: its key is gone within [`LAPSE_WITHIN`] of the last keep-alive's call.
//!
//! The key's puts, reads and deletes (a revoke, and the expiry as a delete that may happen any
//! time from the grant on) are in the key-value history as well, so the linearizability and
//! watch checks cover them too.

use crate::checker::Violation;
use std::time::Duration;

/// A lease whose keep-alives stopped is gone by this long after the last one was called: its
/// TTL, the new leader's extension (an election timeout), an expiry check's interval, and the
/// revoke's commit, with room to spare.
pub const LAPSE_WITHIN: Duration = Duration::from_secs(10);

/// What a lease call was and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseKind {
    /// A grant answered with this TTL, in seconds.
    Granted { ttl: i64 },
    /// A keep-alive answered with this TTL (0: the lease no longer exists).
    KeptAlive { ttl: i64 },
    /// A keep-alive with no answer: it may have renewed the lease, or not.
    KeepAliveUnknown,
    /// The put that attached the lease's key, acknowledged.
    Attached,
    /// A revoke, called (acknowledged or not).
    Revoke,
    /// A linearizable read of the lease's key and whether it was there.
    Read { present: bool },
    /// The read after the client let the lease lapse, the faults over.
    ReadAfterLapse { present: bool },
}

/// One call of a lease client. `lease` numbers the client's grants (its own leases in
/// order), so that an id a clock step made repeat cannot mix two leases up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCall {
    pub client: usize,
    pub lease: usize,
    pub kind: LeaseKind,
    /// When it was called and returned, on the run's clock since the run began.
    pub call: Duration,
    pub ret: Duration,
}

/// What the lease check covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeaseChecked {
    pub leases: usize,
    /// Reads and keep-alives that a promise constrained.
    pub promised_calls: usize,
    /// Leases seen to expire after their client let them lapse.
    pub lapsed: usize,
}

impl std::ops::AddAssign for LeaseChecked {
    fn add_assign(&mut self, o: LeaseChecked) {
        self.leases += o.leases;
        self.promised_calls += o.promised_calls;
        self.lapsed += o.lapsed;
    }
}

/// When the last grant or keep-alive of `calls` (one lease's) was called: every one called,
/// answered or not, may have restarted the lease's clock.
pub fn last_renewal<'a>(calls: impl Iterator<Item = &'a LeaseCall>) -> Duration {
    calls
        .filter(|k| {
            matches!(
                k.kind,
                LeaseKind::Granted { .. }
                    | LeaseKind::KeptAlive { .. }
                    | LeaseKind::KeepAliveUnknown
            )
        })
        .map(|k| k.call)
        .max()
        .unwrap_or_default()
}

fn show(calls: &[&LeaseCall]) -> String {
    calls
        .iter()
        .map(|c| {
            format!(
                "  [{:>9.3}s, {:>9.3}s] client {} lease #{}: {:?}\n",
                c.call.as_secs_f64(),
                c.ret.as_secs_f64(),
                c.client,
                c.lease,
                c.kind
            )
        })
        .collect()
}

/// Checks every lease of `calls` (see the module's doc).
pub fn check_leases(calls: &[LeaseCall]) -> Result<LeaseChecked, Violation> {
    let mut checked = LeaseChecked::default();
    let mut leases: std::collections::BTreeMap<(usize, usize), Vec<&LeaseCall>> =
        Default::default();
    for c in calls {
        leases.entry((c.client, c.lease)).or_default().push(c);
    }
    for ((client, lease), of) in &leases {
        checked.leases += 1;
        let fail = |why: String, shown: Vec<&LeaseCall>| {
            Err(Violation::of_run(format!(
                "client {client}'s lease #{lease}: {why}:\n{}",
                show(&shown)
            )))
        };
        // The latest promise among the grants and keep-alives called before `before` and
        // answered with a TTL: each found the lease alive at some point after its call.
        let promise = |before: Duration| {
            of.iter()
                .filter(|c| c.call < before)
                .filter_map(|c| match c.kind {
                    LeaseKind::Granted { ttl } | LeaseKind::KeptAlive { ttl } if ttl > 0 => {
                        Some((c.call + Duration::from_secs(ttl as u64), *c))
                    }
                    _ => None,
                })
                .max_by_key(|(until, _)| *until)
        };
        let revoked_before =
            |t: Duration| of.iter().any(|c| c.kind == LeaseKind::Revoke && c.call < t);
        let attached = of.iter().find(|c| c.kind == LeaseKind::Attached);
        for c in of {
            let gone = match c.kind {
                LeaseKind::KeptAlive { ttl } => ttl == 0,
                // The key is there only once its put was acknowledged.
                LeaseKind::Read { present } if attached.is_some_and(|a| a.ret < c.call) => !present,
                _ => continue,
            };
            // A keep-alive called before this call returned counts even if it returned later:
            // either it renewed before this call saw the lease gone (and the promise holds
            // from then), or it found alive a lease already seen gone.
            let Some((until, by)) = promise(c.ret) else {
                continue;
            };
            if c.ret >= until || revoked_before(c.ret) {
                continue;
            }
            checked.promised_calls += 1;
            if gone {
                let mut shown = vec![by, *c];
                shown.extend(attached);
                shown.sort_by_key(|c| c.call);
                return fail(
                    format!(
                        "gone at {:.3}s, though kept alive until {:.3}s at least",
                        c.ret.as_secs_f64(),
                        until.as_secs_f64()
                    ),
                    shown,
                );
            }
        }
        for c in of {
            let LeaseKind::ReadAfterLapse { present } = c.kind else {
                continue;
            };
            if revoked_before(c.call) || attached.is_none_or(|a| a.ret > c.call) {
                continue;
            }
            let last = last_renewal(of.iter().copied());
            if !present {
                checked.lapsed += 1;
            } else if c.call >= last + LAPSE_WITHIN {
                return fail(
                    format!(
                        "its key was still there {:.3}s after the last keep-alive was called",
                        (c.call - last).as_secs_f64()
                    ),
                    of.clone(),
                );
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: LeaseKind, call_ms: u64, ret_ms: u64) -> LeaseCall {
        LeaseCall {
            client: 5,
            lease: 0,
            kind,
            call: Duration::from_millis(call_ms),
            ret: Duration::from_millis(ret_ms),
        }
    }

    fn base() -> Vec<LeaseCall> {
        vec![
            at(LeaseKind::Granted { ttl: 2 }, 0, 10),
            at(LeaseKind::Attached, 20, 30),
            at(LeaseKind::KeptAlive { ttl: 2 }, 1000, 1010),
        ]
    }

    #[test]
    fn a_key_read_while_promised_is_there() {
        let mut h = base();
        h.push(at(LeaseKind::Read { present: true }, 2000, 2900));
        h.push(at(LeaseKind::Read { present: false }, 3100, 3200));
        let c = check_leases(&h).unwrap();
        assert_eq!(c.leases, 1);
        // The keep-alive (inside the grant's promise) and the first read.
        assert_eq!(c.promised_calls, 2);
    }

    #[test]
    fn a_key_gone_before_its_promise_is_a_violation() {
        let mut h = base();
        h.push(at(LeaseKind::Read { present: false }, 2000, 2900));
        let v = check_leases(&h).unwrap_err();
        assert!(v.reason.contains("gone at 2.900s"), "{v}");
        assert!(v.reason.contains("until 3.000s"), "{v}");
    }

    #[test]
    fn a_keep_alive_that_finds_the_lease_gone_early_is_a_violation() {
        let mut h = base();
        h.push(at(LeaseKind::KeptAlive { ttl: 0 }, 1500, 1600));
        assert!(check_leases(&h).is_err());
        // After the promise ran out it may well be gone.
        let mut h = base();
        h.push(at(LeaseKind::KeptAlive { ttl: 0 }, 3000, 3001));
        assert!(check_leases(&h).is_ok());
    }

    #[test]
    fn a_revoke_or_an_unattached_key_explains_absence() {
        let mut h = base();
        h.push(at(LeaseKind::Revoke, 1500, 1700));
        h.push(at(LeaseKind::Read { present: false }, 1600, 1800));
        assert!(check_leases(&h).is_ok());
        // A read that began before the put was acknowledged may miss the key.
        let mut h = base();
        h.push(at(LeaseKind::Read { present: false }, 25, 40));
        assert!(check_leases(&h).is_ok());
    }

    #[test]
    fn a_lease_must_expire_once_let_lapse() {
        let mut h = base();
        h.push(at(LeaseKind::ReadAfterLapse { present: true }, 5000, 5001));
        h.push(at(LeaseKind::ReadAfterLapse { present: false }, 6000, 6001));
        assert_eq!(check_leases(&h).unwrap().lapsed, 1);
        let mut h = base();
        h.push(at(LeaseKind::KeepAliveUnknown, 2000, 2500));
        h.push(at(
            LeaseKind::ReadAfterLapse { present: true },
            11_500,
            11_501,
        ));
        assert!(
            check_leases(&h).is_ok(),
            "the unanswered keep-alive may have renewed it"
        );
        h.push(at(
            LeaseKind::ReadAfterLapse { present: true },
            12_500,
            12_501,
        ));
        let v = check_leases(&h).unwrap_err();
        assert!(v.reason.contains("still there"), "{v}");
    }
}
