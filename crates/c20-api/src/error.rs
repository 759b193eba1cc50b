use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

/// Every error c20 answers at its edge. Each maps to etcd's gRPC code and exact message
/// (etcd's `rpctypes`), because clients match on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: the member has been permanently removed from the cluster")]
    MemberRemoved,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: {0}")]
    Internal(String),
    #[error("etcdserver: storage failed, writes stopped on this member: {0}")]
    StorageFailed(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("c20: the write was discarded by a leader change and never committed")]
    Discarded,
    #[error("c20: the write committed, but these voters did not apply it in time: {}", .0.join(", "))]
    NotAppliedEverywhere(Vec<String>),
    #[error(
        "c20: the session has seen revision {wanted}; no replica reached it in time (best {best})"
    )]
    SessionAhead { wanted: i64, best: i64 },
}

impl EtcdError {
    pub fn code(&self) -> Code {
        match self {
            EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::RequestTooLarge => Code::InvalidArgument,
            EtcdError::Compacted | EtcdError::FutureRev | EtcdError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            EtcdError::LeaseExist
            | EtcdError::MemberExist
            | EtcdError::PeerUrlExist
            | EtcdError::MemberNotLearner
            | EtcdError::LearnerNotReady
            | EtcdError::TooManyLearners => Code::FailedPrecondition,
            EtcdError::MemberBadUrls => Code::InvalidArgument,
            EtcdError::MemberRemoved => Code::Unavailable,
            EtcdError::LeaseNotFound | EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::NotLeader | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
            EtcdError::TimeoutLeaderTransfer => Code::DeadlineExceeded,
            EtcdError::NoLeader
            | EtcdError::Timeout
            | EtcdError::TimeoutDueToLeaderFail
            | EtcdError::Stopped
            | EtcdError::Unhealthy => Code::Unavailable,
            EtcdError::Corrupt => Code::DataLoss,
            EtcdError::Internal(_) => Code::Internal,
            EtcdError::StorageFailed(_) => Code::Unavailable,
            EtcdError::Unimplemented(_) => Code::Unimplemented,
            EtcdError::Discarded => Code::Aborted,
            EtcdError::NotAppliedEverywhere(_) | EtcdError::SessionAhead { .. } => {
                Code::DeadlineExceeded
            }
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_etcd() {
        let cases = [
            (
                EtcdError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                EtcdError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                EtcdError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                EtcdError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                EtcdError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                EtcdError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                EtcdError::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                EtcdError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                EtcdError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                EtcdError::NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
        ];
        for (err, code, msg) in cases {
            let status: Status = err.into();
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), msg);
        }
    }
}
