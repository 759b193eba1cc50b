//! Bugs planted on purpose, to show that the simulator (`c20-sim --plant BUG`) finds them.
//!
//! Each bug is compiled in only with the `planted-bugs` feature; without it [`active`] is a
//! constant `false` and the code behind it is removed, as in every `cargo build --release`.
//! The simulator's dev-dependency turns the feature on, and Cargo unifies features, so
//! workspace-wide test and bench builds contain the code too, inert: a bug acts only once
//! [`plant`] switches it on, which only `c20-sim`'s `tests/planted.rs` (in its own process) and
//! its `--plant` option do. One bug at a time is on, for the whole process.

use std::fmt;
use std::str::FromStr;

/// A known-bad behaviour the simulator must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The WAL acknowledges appends before their fdatasync, which comes only with its next
    /// operation: a crash (on the simulator's disk) loses or tears the newest acknowledged ones.
    AckBeforeFsync,
    /// A replica that believes it leads serves `Strong` reads from its own state, without
    /// confirming its leadership with a quorum (no ReadIndex).
    StrongReadWithoutReadIndex,
    /// A txn's second and later writes each take one more revision instead of sharing one.
    TxnAtTwoRevisions,
    /// A `Sequential` read is served from whatever the replica has applied, without waiting
    /// until it reached what the session has seen (no read-your-writes, no monotonic reads).
    SequentialReadIgnoresSession,
    /// A watch resumed from revision `r` (after a broken stream) starts at `r + 1`: the
    /// off-by-one that loses the first event after a reconnect.
    WatchResumeSkipsARevision,
    /// A leader answers a lease keep-alive from what it has applied, without confirming its
    /// leadership and applying everything committed first (no read barrier).
    KeepAliveWithoutReadBarrier,
    /// A write with no answer after 100 ms (or whose replica stopped) is proposed again, as a
    /// client library retrying without request ids would: with no deduplication, it may apply
    /// twice.
    RetryWithoutDedup,
}

impl Bug {
    pub const ALL: [Bug; 7] = [
        Bug::AckBeforeFsync,
        Bug::StrongReadWithoutReadIndex,
        Bug::TxnAtTwoRevisions,
        Bug::SequentialReadIgnoresSession,
        Bug::WatchResumeSkipsARevision,
        Bug::KeepAliveWithoutReadBarrier,
        Bug::RetryWithoutDedup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::StrongReadWithoutReadIndex => "strong-read-without-read-index",
            Bug::TxnAtTwoRevisions => "txn-at-two-revisions",
            Bug::SequentialReadIgnoresSession => "sequential-read-ignores-session",
            Bug::WatchResumeSkipsARevision => "watch-resume-skips-a-revision",
            Bug::KeepAliveWithoutReadBarrier => "keep-alive-without-read-barrier",
            Bug::RetryWithoutDedup => "retry-without-dedup",
        }
    }

    #[cfg(feature = "planted-bugs")]
    fn code(self) -> u8 {
        match self {
            Bug::AckBeforeFsync => 1,
            Bug::StrongReadWithoutReadIndex => 2,
            Bug::TxnAtTwoRevisions => 3,
            Bug::SequentialReadIgnoresSession => 4,
            Bug::WatchResumeSkipsARevision => 5,
            Bug::KeepAliveWithoutReadBarrier => 6,
            Bug::RetryWithoutDedup => 7,
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bug {
    type Err = String;

    fn from_str(s: &str) -> Result<Bug, String> {
        Bug::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| {
            let names: Vec<_> = Bug::ALL.iter().map(|b| b.name()).collect();
            format!("unknown bug {s:?}; known: {}", names.join(", "))
        })
    }
}

#[cfg(feature = "planted-bugs")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switches `bug` on for the whole process (`None` switches every bug off).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    ACTIVE.store(
        bug.map_or(0, Bug::code),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// Whether `bug` is switched on; always `false` without the `planted-bugs` feature.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == bug.code()
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_are_refused() {
        for b in Bug::ALL {
            assert_eq!(b.name().parse::<Bug>().unwrap(), b);
        }
        let err = "fsync-later".parse::<Bug>().unwrap_err();
        assert!(
            err.contains("unknown bug") && err.contains("ack-before-fsync"),
            "{err}"
        );
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn without_the_feature_no_bug_is_active() {
        assert!(Bug::ALL.into_iter().all(|b| !active(b)));
    }
}
