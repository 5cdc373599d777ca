//! The feature store's error type; [`FeatureError::into_core`] maps it onto the service's one
//! error table (HTTP status and gRPC code) for the API adapters.

use flotilla_core::Error as CoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// The feature repository or a model's features.toml is wrong; the message names the file and line.
    #[error("{0}")]
    Definition(String),
    /// A request or a row does not match the declarations (unknown column, wrong type, bad key).
    #[error("{0}")]
    Invalid(String),
    /// An unknown feature view, feature, feature service or push source.
    #[error("{0}")]
    NotFound(String),
    /// The online store failed (disk, Redis connection, corrupt record).
    #[error("online store: {0}")]
    Store(String),
    /// The online store cannot be reached right now (Redis down, timeout).
    #[error("online store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = FeatureError> = std::result::Result<T, E>;

// === impl FeatureError ===

impl FeatureError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn store(e: impl std::fmt::Display) -> Self {
        Self::Store(e.to_string())
    }

    /// The service error with the kind the API adapters answer with.
    pub fn into_core(self) -> CoreError {
        let message = self.to_string();
        match self {
            Self::Definition(_) => CoreError::precondition(message),
            Self::Invalid(_) => CoreError::invalid(message),
            Self::NotFound(_) => CoreError::not_found(message),
            Self::Store(_) => CoreError::internal(message),
            Self::Unavailable(_) => CoreError::unavailable(message),
        }
    }
}

impl From<FeatureError> for CoreError {
    fn from(e: FeatureError) -> Self {
        e.into_core()
    }
}
