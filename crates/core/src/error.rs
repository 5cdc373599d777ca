//! The one error type of the service core, and the one table that maps each
//! error kind to an HTTP status and a gRPC code.

use std::fmt;

/// What went wrong, as far as a client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not match the model (400).
    InvalidArgument,
    /// Unknown model, version or output (404).
    NotFound,
    /// The model or server exists but cannot serve right now (503).
    Unavailable,
    /// The request body is larger than `--max-request-bytes` (413).
    PayloadTooLarge,
    /// A queue is full (429).
    ResourceExhausted,
    /// A deadline passed before the request ran (504).
    DeadlineExceeded,
    /// The operation is not allowed in the current mode (400 / FAILED_PRECONDITION).
    FailedPrecondition,
    /// The protocol feature is not implemented by Flotilla (501).
    Unimplemented,
    /// A real engine or server failure (500).
    Internal,
    /// The server is draining (preempted or shutting down) and did not run the request:
    /// another replica can (503 / UNAVAILABLE; a fleet router retries it elsewhere).
    Draining,
    /// No credentials, or credentials the server does not know (401 / UNAUTHENTICATED).
    Unauthenticated,
    /// Known credentials without the scope the operation needs (403 / PERMISSION_DENIED).
    PermissionDenied,
}

/// Every kind, in table order (for tests and for parsing names).
pub const ALL_KINDS: [ErrorKind; 12] = [
    ErrorKind::InvalidArgument,
    ErrorKind::NotFound,
    ErrorKind::Unavailable,
    ErrorKind::PayloadTooLarge,
    ErrorKind::ResourceExhausted,
    ErrorKind::DeadlineExceeded,
    ErrorKind::FailedPrecondition,
    ErrorKind::Unimplemented,
    ErrorKind::Internal,
    ErrorKind::Draining,
    ErrorKind::Unauthenticated,
    ErrorKind::PermissionDenied,
];

/// Header (HTTP) and metadata key (gRPC) that carries [`ErrorKind::as_str`] on error answers, so
/// a router in front of a worker passes on the exact kind (UNAVAILABLE alone cannot tell a
/// draining worker, which never ran the request, from a failing one).
pub const KIND_HEADER: &str = "flotilla-error-kind";

// === impl ErrorKind ===

impl ErrorKind {
    /// The kind's stable name (`invalid_argument`, `draining`, ...), as sent in [`KIND_HEADER`].
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Unimplemented => "unimplemented",
            ErrorKind::Internal => "internal",
            ErrorKind::Draining => "draining",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
        }
    }

    /// The kind named `name` (the inverse of [`ErrorKind::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        ALL_KINDS.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind a gRPC code stands for when the answer carries no [`KIND_HEADER`] (a peer that
    /// is not Flotilla, or the transport itself): the inverse of the table where it is one to one.
    pub fn from_grpc_code(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::Unavailable | Code::Aborted | Code::Cancelled => ErrorKind::Unavailable,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::Unimplemented => ErrorKind::Unimplemented,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::Ok | Code::Unknown | Code::AlreadyExists | Code::DataLoss | Code::Internal => ErrorKind::Internal,
        }
    }
}

/// Error returned by every core operation; the message names the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl Error ===

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unimplemented, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PayloadTooLarge, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn draining(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Draining, message)
    }
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    /// HTTP status code for this error (see [`status_table`]).
    pub fn http_status(&self) -> u16 {
        status_table(self.kind).0
    }

    /// gRPC status code for this error (see [`status_table`]).
    pub fn grpc_code(&self) -> tonic::Code {
        status_table(self.kind).1
    }
}

/// The one table: error kind → (HTTP status, gRPC code). Matched exhaustively,
/// so a new kind cannot be added without deciding both.
pub const fn status_table(kind: ErrorKind) -> (u16, tonic::Code) {
    use tonic::Code;
    match kind {
        ErrorKind::InvalidArgument => (400, Code::InvalidArgument),
        ErrorKind::NotFound => (404, Code::NotFound),
        ErrorKind::Unavailable => (503, Code::Unavailable),
        ErrorKind::PayloadTooLarge => (413, Code::ResourceExhausted),
        ErrorKind::ResourceExhausted => (429, Code::ResourceExhausted),
        ErrorKind::DeadlineExceeded => (504, Code::DeadlineExceeded),
        ErrorKind::FailedPrecondition => (400, Code::FailedPrecondition),
        ErrorKind::Unimplemented => (501, Code::Unimplemented),
        ErrorKind::Internal => (500, Code::Internal),
        ErrorKind::Draining => (503, Code::Unavailable),
        ErrorKind::Unauthenticated => (401, Code::Unauthenticated),
        ErrorKind::PermissionDenied => (403, Code::PermissionDenied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internal_is_a_server_error() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::PayloadTooLarge,
            ErrorKind::ResourceExhausted,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
        ];
        for k in kinds {
            assert!(status_table(k).0 < 500, "{k:?}");
        }
        assert_eq!(status_table(ErrorKind::Internal).0, 500);
        assert_eq!(Error::invalid("x").grpc_code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn kind_names_round_trip_and_codes_map_back() {
        for k in ALL_KINDS {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
            // The code alone gives back the kind, or a kind with the same HTTP status class.
            let back = ErrorKind::from_grpc_code(status_table(k).1);
            assert_eq!(status_table(back).1, status_table(k).1, "{k:?}");
        }
        assert_eq!(ErrorKind::parse("nope"), None);
    }
}
