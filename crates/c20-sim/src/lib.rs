//! Evidence of correctness for c20: seeded workloads under faults, recorded as histories, and a
//! linearizability checker for them.
//!
//! - [`run::run`]: clients on a [`c20_distributed::LocalReplicator`] (the real node code) while
//!   replicas are isolated, healed, crashed and restarted.
//! - [`checker::check`]: is the recorded history linearizable? Unknown outcomes count as
//!   "maybe happened", never dropped.
//! - [`watch_check::check_watches`]: do the watchers' streams keep etcd's watch guarantees,
//!   agree with each other and with the clients' calls?

pub mod checker;
pub mod run;
pub mod watch_check;
