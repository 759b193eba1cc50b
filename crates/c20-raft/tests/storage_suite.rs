//! openraft's own conformance suite for log and state-machine storage, run against c20's WAL
//! log store and MVCC state machine.

use c20_raft::log_store::LogStore;
use c20_raft::state_machine::StateMachine;
use c20_raft::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft")).expect("open log");
        let sm = StateMachine::open(&dir.path().join("kv")).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_store_and_state_machine_pass_openraft_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}

/// The WAL log store with no entry kept in memory: every read goes back to the WAL.
struct UncachedBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for UncachedBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let (dir, log, sm) = Builder.build().await?;
        log.set_cache_bytes_max(0);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_keeps_no_entry_in_memory_passes_openraft_suite() {
    Suite::test_all(UncachedBuilder)
        .await
        .expect("openraft storage suite");
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let sm = StateMachine::in_memory().expect("in-memory state machine");
        Ok(((), LogStore::in_memory(), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_stores_pass_openraft_suite() {
    Suite::test_all(MemoryBuilder)
        .await
        .expect("openraft storage suite");
}
