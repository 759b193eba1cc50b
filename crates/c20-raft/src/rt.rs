//! openraft's async runtime for c20: Tokio, with a source of randomness the simulator can seed.
//!
//! openraft draws its election timeouts from the runtime's per-thread random generator. Tokio's
//! is seeded by the operating system, so two runs of one simulated cluster elect differently;
//! with [`seed_thread_rng`] every draw on this thread comes from a seeded sequence instead, and
//! a seeded, single-threaded run elects the same way every time. Everything else is Tokio's.

use openraft::async_runtime::AsyncRuntime;
use openraft::OptionalSend;
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[allow(deprecated)] // openraft asks for the `openraft-rt-tokio` crate instead; same type.
type Tokio = openraft::impls::TokioRuntime;

/// Tokio, with [`RaftRng`] as openraft's random source.
#[derive(Debug)]
pub struct C20Runtime(Tokio);

thread_local! {
    /// The state of this thread's seeded sequence, when seeded.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes openraft's random draws on this thread follow `seed` (`None`: unpredictable again,
/// the default). The simulator calls it before each seeded run.
pub fn seed_thread_rng(seed: Option<u64>) {
    SEEDED.set(seed);
}

pub use c20_storage::splitmix;

/// A multi-threaded Tokio runtime of `threads` worker threads, with Tokio's LIFO slot only if
/// `lifo_slot`: what `c20 serve` and the `LocalReplicator` (crate `c20_distributed`) run on.
///
/// Why the slot is off by default: a task woken by the running task otherwise runs next, ahead
/// of every task already waiting. That favours one request's chain of wakeups over the others:
/// the batcher and each connection's writer see one more request or reply at a time instead of
/// the many that are ready. Without it batches grow, and puts, reads and the LocalReplicator's
/// writes go faster on the 2-CPU test machine (docs/BENCHMARKS.md, "Runtime: the LIFO slot").
/// The setting needs `--cfg tokio_unstable` (`.cargo/config.toml` sets it); a build without it
/// keeps the slot.
pub fn multi_thread_runtime(threads: usize, lifo_slot: bool) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads);
    #[cfg(tokio_unstable)]
    if !lifo_slot {
        builder.disable_lifo_slot();
    }
    #[cfg(not(tokio_unstable))]
    let _ = lifo_slot;
    builder
}

/// The generator openraft gets from [`C20Runtime`]: seeded from this thread's sequence when
/// there is one, else from the process's hash keys (random per process and per call).
#[derive(Debug)]
pub struct RaftRng(u64);

impl RaftRng {
    fn for_this_thread() -> RaftRng {
        match SEEDED.get() {
            Some(mut state) => {
                let seed = splitmix(&mut state);
                SEEDED.set(Some(state));
                RaftRng(seed)
            }
            None => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(0x5eed);
                RaftRng(h.finish())
            }
        }
    }
}

impl rand_core::TryRng for RaftRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((splitmix(&mut self.0) >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(splitmix(&mut self.0))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = splitmix(&mut self.0).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl AsyncRuntime for C20Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng::for_this_thread()
    }

    fn new(threads: usize) -> Self {
        C20Runtime(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    /// The order in which two tasks spawned one after the other by a task on the runtime's
    /// only worker thread first run.
    fn spawn_order(lifo_slot: bool) -> Vec<&'static str> {
        let rt = multi_thread_runtime(1, lifo_slot)
            .enable_all()
            .build()
            .expect("runtime");
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = order.clone();
        rt.block_on(async move {
            let spawned = tokio::spawn(async move {
                let mut spawned = Vec::new();
                for name in ["first", "second"] {
                    let log = log.clone();
                    spawned.push(tokio::spawn(async move {
                        log.lock().expect("order lock").push(name);
                    }));
                }
                spawned
            })
            .await
            .expect("spawner");
            for task in spawned {
                task.await.expect("spawned task");
            }
        });
        let order = order.lock().expect("order lock").clone();
        order
    }

    #[test]
    fn the_runtime_runs_woken_tasks_in_order_unless_told_otherwise() {
        // Only a build with `--cfg tokio_unstable` can turn the slot off.
        #[cfg(tokio_unstable)]
        assert_eq!(spawn_order(false), ["first", "second"]);
        // With the slot, the task spawned last runs first.
        assert_eq!(spawn_order(true), ["second", "first"]);
    }

    fn draws() -> Vec<u64> {
        (0..3)
            .map(|_| C20Runtime::thread_rng().next_u64())
            .collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_and_an_unseeded_one_does_not() {
        seed_thread_rng(Some(7));
        let a = draws();
        seed_thread_rng(Some(7));
        assert_eq!(draws(), a);
        seed_thread_rng(Some(8));
        assert_ne!(draws(), a);
        seed_thread_rng(None);
        let b = draws();
        assert_ne!(b[0], b[1], "unseeded draws differ from call to call");
        let mut buf = [0u8; 13];
        C20Runtime::thread_rng().fill_bytes(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
    }
}
