//! Every gRPC error etcd v3 sends, with etcd's status code and message.
//!
//! Clients do not look at codes alone: Go's `clientv3` turns a status back
//! into a typed error by its exact message text, and its retry policy depends
//! on the code. So each variant here is pinned to the `(code, message)` pair
//! etcd 3.5 sends, and the server converts its internal errors into these in
//! one place (`From<EtcdError> for tonic::Status`).
//!
//! Codes follow etcd 3.5. Where etcd 3.6 changed one, the variant says so;
//! variants that only 3.6 sends are marked too.
//!
//! A code is what reaches the wire, not what etcd's error table seems to say: etcd
//! maps a few server errors to its *client-side* error values, which carry no gRPC
//! status, so gRPC-Go sends them as `Unknown` (seen on etcd 3.4.23; 3.5's table is the
//! same). Those variants are `Unknown` here too.

use tonic::{Code, Status};

/// Declares [`EtcdError`] and its code and message tables from one list, so
/// the three can never disagree and [`EtcdError::ALL`] is always complete.
macro_rules! etcd_errors {
    ($( $(#[$attr:meta])* $variant:ident => $code:ident, $message:literal; )*) => {
        /// A gRPC error as etcd sends it. Convert with `tonic::Status::from`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
        pub enum EtcdError {
            $(
                $(#[$attr])*
                #[error($message)]
                $variant,
            )*
        }

        impl EtcdError {
            /// Every variant, in declaration order.
            pub const ALL: &'static [EtcdError] = &[$(EtcdError::$variant),*];

            /// The gRPC status code etcd sends with this error.
            pub const fn code(&self) -> Code {
                match self {
                    $(EtcdError::$variant => Code::$code,)*
                }
            }

            /// The status message, identical to etcd's byte for byte.
            pub const fn message(&self) -> &'static str {
                match self {
                    $(EtcdError::$variant => $message,)*
                }
            }
        }
    };
}

etcd_errors! {
    // ---- request validation (KV)
    /// A Range, Put or DeleteRange with an empty key.
    EmptyKey => InvalidArgument, "etcdserver: key is not provided";
    /// A Put with `ignore_value` or `ignore_lease` on a key that does not exist.
    KeyNotFound => InvalidArgument, "etcdserver: key not found";
    /// A Put with `ignore_value` that also carries a value.
    ValueProvided => InvalidArgument, "etcdserver: value is provided";
    /// A Put with `ignore_lease` that also carries a lease.
    LeaseProvided => InvalidArgument, "etcdserver: lease is provided";
    /// A Txn with more operations than `--max-txn-ops` in one branch.
    TooManyOps => InvalidArgument, "etcdserver: too many operations in txn request";
    /// A Txn branch that writes the same key twice.
    DuplicateKey => InvalidArgument, "etcdserver: duplicate key given in txn request";
    /// A Range with an unknown sort order or target. etcd 3.6 and later.
    InvalidSortOption => InvalidArgument, "etcdserver: invalid sort option";
    /// A malformed `client-api-version` metadata value. etcd 3.6 and later.
    InvalidClientApiVersion => InvalidArgument, "etcdserver: invalid client api version";

    // ---- MVCC
    /// The requested revision is at or below the compaction point.
    Compacted => OutOfRange, "etcdserver: mvcc: required revision has been compacted";
    /// The requested revision is newer than the store's current revision.
    FutureRev => OutOfRange, "etcdserver: mvcc: required revision is a future revision";
    /// The backend is over `--quota-backend-bytes` and the NOSPACE alarm is raised.
    NoSpace => ResourceExhausted, "etcdserver: mvcc: database space exceeded";

    // ---- leases
    LeaseNotFound => NotFound, "etcdserver: requested lease not found";
    /// A LeaseGrant with an ID that is already in use.
    LeaseExist => FailedPrecondition, "etcdserver: lease already exists";
    /// A LeaseGrant above the maximum TTL of 9,000,000,000 seconds.
    LeaseTtlTooLarge => OutOfRange, "etcdserver: too large lease TTL";

    // ---- watch
    /// Closes a watch stream that the server canceled.
    WatchCanceled => Cancelled, "etcdserver: watch canceled";

    // ---- membership
    MemberExist => FailedPrecondition, "etcdserver: member ID already exist";
    PeerUrlExist => FailedPrecondition, "etcdserver: Peer URLs already exists";
    /// The change would leave too few started members for a quorum. `Unknown` on the
    /// wire: etcd maps it to a client-side error value (see the module docs).
    MemberNotEnoughStarted => Unknown, "etcdserver: re-configuration failed due to not enough started members";
    MemberBadUrls => InvalidArgument, "etcdserver: given member URLs are invalid";
    MemberNotFound => NotFound, "etcdserver: member not found";
    /// A MemberPromote of a member that is already a voter.
    MemberNotLearner => FailedPrecondition, "etcdserver: can only promote a learner member";
    /// A MemberPromote of a learner whose log is behind the leader's.
    LearnerNotReady => FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader";
    TooManyLearners => FailedPrecondition, "etcdserver: too many learner members in cluster";
    ClusterIdMismatch => FailedPrecondition, "etcdserver: cluster ID mismatch";

    // ---- limits
    /// A request above `--max-request-bytes`.
    RequestTooLarge => InvalidArgument, "etcdserver: request is too large";
    /// Too many proposals are committed but not yet applied. `Unknown` on the wire, as
    /// `MemberNotEnoughStarted`.
    TooManyRequests => Unknown, "etcdserver: too many requests";

    // ---- auth
    RootUserNotExist => FailedPrecondition, "etcdserver: root user does not exist";
    RootRoleNotExist => FailedPrecondition, "etcdserver: root user does not have root role";
    UserAlreadyExist => FailedPrecondition, "etcdserver: user name already exists";
    /// Also what a request without credentials gets while auth is on.
    UserEmpty => InvalidArgument, "etcdserver: user name is empty";
    UserNotFound => FailedPrecondition, "etcdserver: user name not found";
    RoleAlreadyExist => FailedPrecondition, "etcdserver: role name already exists";
    RoleNotFound => FailedPrecondition, "etcdserver: role name not found";
    RoleEmpty => InvalidArgument, "etcdserver: role name is empty";
    AuthFailed => InvalidArgument, "etcdserver: authentication failed, invalid user ID or password";
    PermissionNotGiven => InvalidArgument, "etcdserver: permission not given";
    PermissionDenied => PermissionDenied, "etcdserver: permission denied";
    RoleNotGranted => FailedPrecondition, "etcdserver: role is not granted to the user";
    PermissionNotGranted => FailedPrecondition, "etcdserver: permission is not granted to the role";
    AuthNotEnabled => FailedPrecondition, "etcdserver: authentication is not enabled";
    InvalidAuthToken => Unauthenticated, "etcdserver: invalid auth token";
    InvalidAuthMgmt => InvalidArgument, "etcdserver: invalid auth management";
    /// The auth store changed between the permission check and apply.
    AuthOldRevision => InvalidArgument, "etcdserver: revision of auth store is old";
    /// Authenticate for a user added with `no_password` (etcd has no gRPC error for it:
    /// gRPC-Go sends its auth store's error as `Unknown`).
    NoPasswordUser => Unknown, "auth: authentication failed, password was given for no password user";
    /// Authenticate on a member given only the JWT public key (etcd's `ErrVerifyOnly`,
    /// unmapped in gRPC too).
    JwtVerifyOnly => Unknown, "auth: token signing attempted with verify-only key";

    // ---- cluster state
    NoLeader => Unavailable, "etcdserver: no leader";
    NotLeader => FailedPrecondition, "etcdserver: not leader";
    LeaderChanged => Unavailable, "etcdserver: leader changed";
    /// etcd 3.6 sends this with `FailedPrecondition`.
    NotCapable => Unavailable, "etcdserver: not capable";
    Stopped => Unavailable, "etcdserver: server stopped";
    Timeout => Unavailable, "etcdserver: request timed out";
    /// MoveLeader did not see the transferee lead in time. Not in etcd's error table,
    /// so gRPC-Go sends it as `Unknown`.
    TimeoutLeaderTransfer => Unknown, "etcdserver: request timed out, leader transfer took too long";
    TimeoutDueToLeaderFail => Unavailable, "etcdserver: request timed out, possibly due to previous leader failure";
    TimeoutDueToConnectionLost => Unavailable, "etcdserver: request timed out, possibly due to connection lost";
    TimeoutWaitAppliedIndex => Unavailable, "etcdserver: request timed out, waiting for the applied index took too long";
    Unhealthy => Unavailable, "etcdserver: unhealthy cluster";
    Corrupt => DataLoss, "etcdserver: corrupt cluster";
    /// A learner refuses everything but serializable Range and Status.
    /// `Unavailable` makes 3.5 clients try another endpoint; etcd 3.6 sends
    /// `FailedPrecondition`.
    NotSupportedForLearner => Unavailable, "etcdserver: rpc not supported for learner";
    BadLeaderTransferee => FailedPrecondition, "etcdserver: bad leader transferee";

    // ---- downgrade
    /// etcd 3.6 sends this with `FailedPrecondition`.
    ClusterVersionUnavailable => Unavailable, "etcdserver: cluster version not found during downgrade";
    WrongDowngradeVersionFormat => InvalidArgument, "etcdserver: wrong downgrade target version format";
    InvalidDowngradeTargetVersion => InvalidArgument, "etcdserver: invalid downgrade target version";
    DowngradeInProcess => FailedPrecondition, "etcdserver: cluster has a downgrade job in progress";
    NoInflightDowngrade => FailedPrecondition, "etcdserver: no inflight downgrade job";

    // ---- request context
    Canceled => Cancelled, "etcdserver: request canceled";
    DeadlineExceeded => DeadlineExceeded, "etcdserver: context deadline exceeded";

    // ---- Election service. etcd returns these as plain errors, which gRPC
    // sends with code Unknown and without the "etcdserver: " prefix.
    /// Leader (or Observe) on an election nobody has campaigned in.
    ElectionNoLeader => Unknown, "election: no leader";
    /// Proclaim or Resign with a leader key that no longer leads.
    ElectionNotLeader => Unknown, "election: not leader";
    /// Proclaim or Resign without the `leader` field.
    ElectionMissingLeaderKey => Unknown, "\"leader\" field must be provided";
    /// Lock or Campaign whose own key went (its lease expired or was revoked) while it
    /// waited (clientv3/concurrency's `ErrSessionExpired`).
    SessionExpired => Unknown, "session: session is expired";
}

impl EtcdError {
    /// The variant whose message is exactly `message`, if any. Clients use
    /// this to turn a received status back into a typed error; tests use it to
    /// check that no two variants share a message.
    pub fn from_message(message: &str) -> Option<EtcdError> {
        EtcdError::ALL
            .iter()
            .copied()
            .find(|error| error.message() == message)
    }

    /// The variant matching both the code and the message of `status`.
    pub fn from_status(status: &Status) -> Option<EtcdError> {
        EtcdError::from_message(status.message()).filter(|error| error.code() == status.code())
    }
}

impl From<EtcdError> for Status {
    fn from(error: EtcdError) -> Status {
        Status::new(error.code(), error.message())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// etcd 3.5's errors, written out a second time, independently of the
    /// macro table above: a typo in either place fails this test.
    const EXPECTED: &[(EtcdError, Code, &str)] = &[
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
            EtcdError::ValueProvided,
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            EtcdError::LeaseProvided,
            Code::InvalidArgument,
            "etcdserver: lease is provided",
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
            EtcdError::InvalidSortOption,
            Code::InvalidArgument,
            "etcdserver: invalid sort option",
        ),
        (
            EtcdError::InvalidClientApiVersion,
            Code::InvalidArgument,
            "etcdserver: invalid client api version",
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
            EtcdError::NoSpace,
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        (
            EtcdError::LeaseNotFound,
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            EtcdError::LeaseExist,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        ),
        (
            EtcdError::LeaseTtlTooLarge,
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        ),
        (
            EtcdError::WatchCanceled,
            Code::Cancelled,
            "etcdserver: watch canceled",
        ),
        (
            EtcdError::MemberExist,
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
        ),
        (
            EtcdError::PeerUrlExist,
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        (
            EtcdError::MemberNotEnoughStarted,
            Code::Unknown,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        (
            EtcdError::MemberBadUrls,
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        (
            EtcdError::MemberNotFound,
            Code::NotFound,
            "etcdserver: member not found",
        ),
        (
            EtcdError::MemberNotLearner,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        (
            EtcdError::LearnerNotReady,
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        (
            EtcdError::TooManyLearners,
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        (
            EtcdError::ClusterIdMismatch,
            Code::FailedPrecondition,
            "etcdserver: cluster ID mismatch",
        ),
        (
            EtcdError::RequestTooLarge,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        ),
        (
            EtcdError::TooManyRequests,
            Code::Unknown,
            "etcdserver: too many requests",
        ),
        (
            EtcdError::RootUserNotExist,
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ),
        (
            EtcdError::RootRoleNotExist,
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        (
            EtcdError::UserAlreadyExist,
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        (
            EtcdError::UserEmpty,
            Code::InvalidArgument,
            "etcdserver: user name is empty",
        ),
        (
            EtcdError::UserNotFound,
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        (
            EtcdError::RoleAlreadyExist,
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        (
            EtcdError::RoleNotFound,
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        (
            EtcdError::RoleEmpty,
            Code::InvalidArgument,
            "etcdserver: role name is empty",
        ),
        (
            EtcdError::AuthFailed,
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        (
            EtcdError::PermissionNotGiven,
            Code::InvalidArgument,
            "etcdserver: permission not given",
        ),
        (
            EtcdError::PermissionDenied,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        ),
        (
            EtcdError::RoleNotGranted,
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        (
            EtcdError::PermissionNotGranted,
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        (
            EtcdError::AuthNotEnabled,
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        ),
        (
            EtcdError::InvalidAuthToken,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        ),
        (
            EtcdError::InvalidAuthMgmt,
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        (
            EtcdError::AuthOldRevision,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        ),
        (
            EtcdError::NoPasswordUser,
            Code::Unknown,
            "auth: authentication failed, password was given for no password user",
        ),
        (
            EtcdError::JwtVerifyOnly,
            Code::Unknown,
            "auth: token signing attempted with verify-only key",
        ),
        (
            EtcdError::NoLeader,
            Code::Unavailable,
            "etcdserver: no leader",
        ),
        (
            EtcdError::NotLeader,
            Code::FailedPrecondition,
            "etcdserver: not leader",
        ),
        (
            EtcdError::LeaderChanged,
            Code::Unavailable,
            "etcdserver: leader changed",
        ),
        (
            EtcdError::NotCapable,
            Code::Unavailable,
            "etcdserver: not capable",
        ),
        (
            EtcdError::Stopped,
            Code::Unavailable,
            "etcdserver: server stopped",
        ),
        (
            EtcdError::Timeout,
            Code::Unavailable,
            "etcdserver: request timed out",
        ),
        (
            EtcdError::TimeoutLeaderTransfer,
            Code::Unknown,
            "etcdserver: request timed out, leader transfer took too long",
        ),
        (
            EtcdError::TimeoutDueToLeaderFail,
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
        ),
        (
            EtcdError::TimeoutDueToConnectionLost,
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to connection lost",
        ),
        (
            EtcdError::TimeoutWaitAppliedIndex,
            Code::Unavailable,
            "etcdserver: request timed out, waiting for the applied index took too long",
        ),
        (
            EtcdError::Unhealthy,
            Code::Unavailable,
            "etcdserver: unhealthy cluster",
        ),
        (
            EtcdError::Corrupt,
            Code::DataLoss,
            "etcdserver: corrupt cluster",
        ),
        (
            EtcdError::NotSupportedForLearner,
            Code::Unavailable,
            "etcdserver: rpc not supported for learner",
        ),
        (
            EtcdError::BadLeaderTransferee,
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        (
            EtcdError::ClusterVersionUnavailable,
            Code::Unavailable,
            "etcdserver: cluster version not found during downgrade",
        ),
        (
            EtcdError::WrongDowngradeVersionFormat,
            Code::InvalidArgument,
            "etcdserver: wrong downgrade target version format",
        ),
        (
            EtcdError::InvalidDowngradeTargetVersion,
            Code::InvalidArgument,
            "etcdserver: invalid downgrade target version",
        ),
        (
            EtcdError::DowngradeInProcess,
            Code::FailedPrecondition,
            "etcdserver: cluster has a downgrade job in progress",
        ),
        (
            EtcdError::NoInflightDowngrade,
            Code::FailedPrecondition,
            "etcdserver: no inflight downgrade job",
        ),
        (
            EtcdError::Canceled,
            Code::Cancelled,
            "etcdserver: request canceled",
        ),
        (
            EtcdError::DeadlineExceeded,
            Code::DeadlineExceeded,
            "etcdserver: context deadline exceeded",
        ),
        (
            EtcdError::ElectionNoLeader,
            Code::Unknown,
            "election: no leader",
        ),
        (
            EtcdError::ElectionNotLeader,
            Code::Unknown,
            "election: not leader",
        ),
        (
            EtcdError::ElectionMissingLeaderKey,
            Code::Unknown,
            "\"leader\" field must be provided",
        ),
        (
            EtcdError::SessionExpired,
            Code::Unknown,
            "session: session is expired",
        ),
    ];

    #[test]
    fn every_variant_has_etcds_code_and_message() {
        for &(error, code, message) in EXPECTED {
            assert_eq!(error.code(), code, "code of {error:?}");
            assert_eq!(error.message(), message, "message of {error:?}");
            assert_eq!(error.to_string(), message, "Display of {error:?}");
        }
    }

    #[test]
    fn expected_table_covers_every_variant_once() {
        let expected: HashSet<EtcdError> = EXPECTED.iter().map(|&(error, _, _)| error).collect();
        assert_eq!(
            expected.len(),
            EXPECTED.len(),
            "a variant is listed twice in EXPECTED"
        );
        let all: HashSet<EtcdError> = EtcdError::ALL.iter().copied().collect();
        assert_eq!(all.len(), EtcdError::ALL.len(), "ALL lists a variant twice");
        let missing: Vec<_> = all.difference(&expected).collect();
        assert!(
            missing.is_empty(),
            "variants without an expected row: {missing:?}"
        );
    }

    #[test]
    fn messages_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &error in EtcdError::ALL {
            assert!(
                seen.insert(error.message()),
                "duplicate message {:?}",
                error.message()
            );
            assert_eq!(EtcdError::from_message(error.message()), Some(error));
        }
        assert_eq!(EtcdError::from_message("etcdserver: no such error"), None);
        // Matching is exact: etcd's clients compare whole strings.
        assert_eq!(EtcdError::from_message("etcdserver: no leader "), None);
        assert_eq!(EtcdError::from_message("Etcdserver: no leader"), None);
    }

    #[test]
    fn status_conversion_keeps_code_and_message() {
        for &error in EtcdError::ALL {
            let status = Status::from(error);
            assert_eq!(status.code(), error.code(), "{error:?}");
            assert_eq!(status.message(), error.message(), "{error:?}");
            assert_eq!(EtcdError::from_status(&status), Some(error));
        }
    }

    #[test]
    fn from_status_requires_the_code_to_match() {
        let status = Status::new(Code::Internal, EtcdError::NoLeader.message());
        assert_eq!(EtcdError::from_status(&status), None);
    }
}
