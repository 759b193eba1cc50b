use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How strong a guarantee one call asks for. See `docs/CONSISTENCY.md` for each level's promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConsistencyLevel {
    /// Any replica's local state; writes acknowledged once durable in the leader's log.
    Eventual,
    /// Read-your-writes and monotonic reads within a session.
    Sequential,
    /// Linearizable; reads may be served by followers after a confirmed read index.
    Quorum,
    /// Linearizable; reads served by the leader after a coalesced ReadIndex.
    Strong,
    /// Writes applied on every voter before acknowledgement.
    All,
}

impl ConsistencyLevel {
    /// The gRPC metadata key that carries a per-request level.
    pub const METADATA_KEY: &'static str = "c20-consistency";

    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyLevel::Eventual => "eventual",
            ConsistencyLevel::Sequential => "sequential",
            ConsistencyLevel::Quorum => "quorum",
            ConsistencyLevel::Strong => "strong",
            ConsistencyLevel::All => "all",
        }
    }

    /// Whether a read at this level must observe every write acknowledged before it started.
    pub fn is_linearizable(self) -> bool {
        matches!(
            self,
            ConsistencyLevel::Quorum | ConsistencyLevel::Strong | ConsistencyLevel::All
        )
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsistencyLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "eventual" => Ok(ConsistencyLevel::Eventual),
            "sequential" => Ok(ConsistencyLevel::Sequential),
            "quorum" => Ok(ConsistencyLevel::Quorum),
            "strong" => Ok(ConsistencyLevel::Strong),
            "all" => Ok(ConsistencyLevel::All),
            other => Err(format!(
                "unknown consistency level {other:?}: expected one of eventual, sequential, quorum, strong, all"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_level_and_rejects_others() {
        for level in [
            ConsistencyLevel::Eventual,
            ConsistencyLevel::Sequential,
            ConsistencyLevel::Quorum,
            ConsistencyLevel::Strong,
            ConsistencyLevel::All,
        ] {
            assert_eq!(level.as_str().parse::<ConsistencyLevel>(), Ok(level));
        }
        assert_eq!(
            "STRONG".parse::<ConsistencyLevel>(),
            Ok(ConsistencyLevel::Strong)
        );
        let err = "linear".parse::<ConsistencyLevel>().unwrap_err();
        assert!(err.contains("linear"), "{err}");
    }

    #[test]
    fn only_quorum_and_above_are_linearizable() {
        assert!(!ConsistencyLevel::Eventual.is_linearizable());
        assert!(!ConsistencyLevel::Sequential.is_linearizable());
        assert!(ConsistencyLevel::Quorum.is_linearizable());
        assert!(ConsistencyLevel::Strong.is_linearizable());
        assert!(ConsistencyLevel::All.is_linearizable());
    }
}
