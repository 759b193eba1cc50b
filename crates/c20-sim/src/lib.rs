//! Evidence of correctness for c20: seeded workloads under faults, recorded as histories, and a
//! linearizability checker for them.
//!
//! - [`run::run`]: clients on a [`c20_distributed::LocalReplicator`] (the real node code) while
//!   replicas are isolated, healed, crashed and restarted.
//! - [`checker::check`]: is the recorded history linearizable? Unknown outcomes count as
//!   "maybe happened", never dropped.

pub mod checker;
pub mod run;
