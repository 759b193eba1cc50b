//! Evidence of correctness for c20: seeded workloads under faults, recorded as histories, and a
//! linearizability checker for them.
//!
//! - [`run::run`]: clients on a [`c20_distributed::LocalReplicator`] (the real node code) while
//!   replicas are isolated, healed, crashed and restarted.
//! - [`checker::check`]: is the recorded history linearizable? Unknown outcomes count as
//!   "maybe happened", never dropped.
//! - [`watch_check::check_watches`]: do the watchers' streams keep etcd's watch guarantees,
//!   agree with each other and with the clients' calls?
//! - [`lease_check::check_leases`]: do leases live as long as their keep-alives promised, and
//!   expire once let lapse?

pub mod checker;
pub mod lease_check;
pub mod run;
pub mod watch_check;
