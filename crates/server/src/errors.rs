//! The one place where request errors become wire errors.
//!
//! Everything a client request can fail with is a [`RequestError`]: one of etcd's errors
//! ([`EtcdError`], with etcd's exact code and message), one of the few answers etcd gives
//! without a message of its own (an unknown method, an unknown health service, an alarm
//! type etcd does not define), or an internal failure. The client-facing services return
//! `Result<_, RequestError>` and convert at their edge with `Status::from`, so no other
//! client-facing module builds a `tonic::Status`. (The peer protocol, between members,
//! builds its own: no client sees it. Its `HashKv` answers with these, as
//! Maintenance.HashKV does, so the asking member recognizes etcd's revision errors.)

use retcd_api::errors::EtcdError;
use retcd_mvcc::MvccError;
use tonic::Status;

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// An error etcd sends too: the client sees etcd's code and message.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// A failure of this member (storage, a stopped loop) that etcd has no message for.
    #[error("etcdserver: {0}")]
    Internal(String),
    /// A method or feature this server does not serve (gRPC's `Unimplemented`).
    #[error("{0}")]
    Unimplemented(String),
    /// A malformed request etcd refuses without an `etcdserver:` message.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something asked for by name that does not exist (gRPC's `NotFound`).
    #[error("{0}")]
    NotFound(String),
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        match e {
            RequestError::Etcd(e) => Status::from(e),
            RequestError::Internal(msg) => Status::internal(format!("etcdserver: {msg}")),
            RequestError::Unimplemented(msg) => Status::unimplemented(msg),
            RequestError::InvalidArgument(msg) => Status::invalid_argument(msg),
            RequestError::NotFound(msg) => Status::not_found(msg),
        }
    }
}

/// The status etcd's Lock and Election services send for `e`. etcd serves them with a
/// client (`clientv3/concurrency`) running inside the server, so what they fail with is
/// a client-side error value that carries no gRPC code: gRPC-Go sends every one as
/// `Unknown` with etcd's message (an unknown lease is `Unknown` "etcdserver: requested
/// lease not found", not `NotFound`; seen on etcd 3.4.23). Clients match on both, so
/// retcd sends the same. Failures etcd has no message for keep their own code.
pub fn embedded_client_status(e: RequestError) -> Status {
    match e {
        RequestError::Etcd(e) => Status::unknown(e.message()),
        other => Status::from(other),
    }
}

/// gRPC-Go's text of a status (`status.Error().Error()`), which etcd puts where an error
/// travels as a string, such as a refused watch create's cancel reason.
pub fn grpc_go_text(status: &Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// The client-facing meaning of an MVCC error, if it has one. `Compacted` and
/// `FutureRevision` are deterministic answers to a request; everything else is a storage
/// failure.
pub fn client_error(e: &MvccError) -> Option<EtcdError> {
    match e {
        MvccError::Compacted { .. } => Some(EtcdError::Compacted),
        MvccError::FutureRevision { .. } => Some(EtcdError::FutureRev),
        _ => None,
    }
}

impl From<MvccError> for RequestError {
    fn from(e: MvccError) -> RequestError {
        match client_error(&e) {
            Some(etcd) => RequestError::Etcd(etcd),
            None => {
                tracing::error!(error = %e, "storage error while serving a read");
                RequestError::Internal(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: MVCC's deterministic errors reach the wire as etcd's, byte for byte.
    #[test]
    fn mvcc_errors_map_to_etcds() {
        let s = Status::from(RequestError::from(MvccError::Compacted {
            requested: 1,
            compact_revision: 5,
        }));
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = Status::from(RequestError::from(MvccError::FutureRevision {
            requested: 9,
            current_revision: 5,
        }));
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        let s = Status::from(RequestError::from(EtcdError::Stopped));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.message(), "etcdserver: server stopped");
    }

    // Goal: Lock and Election errors keep etcd's message and go out as Unknown, as the
    // client inside etcd's server sends them.
    #[test]
    fn embedded_client_errors_are_unknown_with_etcds_message() {
        let s = embedded_client_status(EtcdError::LeaseNotFound.into());
        assert_eq!(s.code(), tonic::Code::Unknown);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s = embedded_client_status(RequestError::Internal("x".into()));
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
