//! Faults for the tests of the WAL and the store: [`IoFaults`](crate::IoFaults) that fail a
//! chosen write or sync, or all of them ([`FailNth`]), or every sync ([`FailSyncs`]).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Once armed, fails the `n`-th write or sync it is asked about (counting from 1), and with
/// `!once` every one after it, like a disk that starts returning EIO. Which operation is the
/// `n`-th is fixed only where one thread makes them all: a log written inline, or one that
/// prepares no segments in the background.
pub(crate) struct FailNth {
    n: u64,
    once: bool,
    armed: AtomicBool,
    pub(crate) seen: AtomicU64,
}

impl FailNth {
    pub(crate) fn new(n: u64, once: bool) -> FailNth {
        FailNth {
            n,
            once,
            armed: Default::default(),
            seen: Default::default(),
        }
    }

    /// Fails every write and sync while armed.
    pub(crate) fn every() -> FailNth {
        FailNth::new(1, false)
    }

    pub(crate) fn arm(&self, on: bool) {
        self.armed.store(on, SeqCst);
    }

    fn check(&self) -> std::io::Result<()> {
        if !self.armed.load(SeqCst) {
            return Ok(());
        }
        let i = self.seen.fetch_add(1, SeqCst) + 1;
        if i == self.n || (!self.once && i > self.n) {
            return Err(std::io::Error::other("injected EIO"));
        }
        Ok(())
    }
}

impl crate::IoFaults for FailNth {
    fn before_write(&self) -> std::io::Result<()> {
        self.check()
    }
    fn before_sync(&self) -> std::io::Result<()> {
        self.check()
    }
}

/// Fails every sync, and nothing else, once armed.
#[derive(Default)]
pub(crate) struct FailSyncs(AtomicBool);

impl FailSyncs {
    pub(crate) fn arm(&self, on: bool) {
        self.0.store(on, SeqCst);
    }
}

impl crate::IoFaults for FailSyncs {
    fn before_sync(&self) -> std::io::Result<()> {
        if self.0.load(SeqCst) {
            return Err(std::io::Error::other("injected EIO on fsync"));
        }
        Ok(())
    }
}
