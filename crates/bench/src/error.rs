//! The errors that stop a benchmark before or while it sets up. Errors of
//! individual measured requests never appear here: they are counted by gRPC
//! code in the report, as etcd's benchmark does.

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag or a combination of flags makes no sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An endpoint is not a `host:port`, `http://host:port` or
    /// `https://host:port`, or is a TLS endpoint without `--cacert`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// An endpoint did not accept a connection within the dial timeout.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },

    /// A request made to set the workload up (grant the leases to keep
    /// alive, create the watchers) failed; nothing was measured.
    #[error("{step} failed: {code:?}: {message}")]
    Setup {
        step: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl BenchError {
    pub(crate) fn setup(step: &'static str, status: &tonic::Status) -> Self {
        BenchError::Setup {
            step,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    pub(crate) fn setup_timeout(step: &'static str) -> Self {
        BenchError::Setup {
            step,
            code: tonic::Code::DeadlineExceeded,
            message: "no answer within --request-timeout".to_owned(),
        }
    }
}
