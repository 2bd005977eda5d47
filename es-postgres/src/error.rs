//! PostgreSQL and pool errors as [`StoreError`]s: a lost or refused connection is a
//! [`StoreError::Connection`] (the operation may or may not have taken effect; an append
//! is one transaction, so it took effect whole or not at all), anything the server
//! refused is a [`StoreError::Backend`] naming it.

use es_core::StoreError;

/// A driver error as a store error.
pub(crate) fn store_error(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => StoreError::Backend {
            message: format!(
                "PostgreSQL refused a statement: {} ({}){}",
                db.message(),
                db.code().code(),
                db.detail().map(|d| format!(": {d}")).unwrap_or_default()
            ),
            source: Some(Box::new(error)),
        },
        None => StoreError::Connection {
            message: match std::error::Error::source(&error) {
                Some(cause) => format!("PostgreSQL: {error}: {cause}"),
                None => format!("PostgreSQL: {error}"),
            },
            source: Some(Box::new(error)),
        },
    }
}

/// A pool error (no connection could be had) as a store error.
pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => store_error(error),
        other => StoreError::Connection {
            message: format!("PostgreSQL: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

/// A store error shared by every append of a group-commit call (the call failed as a
/// whole), as a cloneable value.
#[derive(Clone)]
pub(crate) struct Shared(pub(crate) std::sync::Arc<StoreError>);

impl From<StoreError> for Shared {
    fn from(error: StoreError) -> Self {
        Shared(std::sync::Arc::new(error))
    }
}

impl Shared {
    /// The error back: itself when no other append holds it, else a copy (the driver's
    /// own error, which cannot be copied, is then left out of the copy's source).
    pub(crate) fn into_error(self) -> StoreError {
        match std::sync::Arc::try_unwrap(self.0) {
            Ok(error) => error,
            Err(shared) => match &*shared {
                StoreError::Conflict(conflict) => StoreError::Conflict(conflict.clone()),
                StoreError::InvalidRequest(message) => StoreError::InvalidRequest(message.clone()),
                StoreError::Connection { message, .. } => StoreError::Connection {
                    message: message.clone(),
                    source: None,
                },
                other => StoreError::Backend {
                    message: other.to_string(),
                    source: None,
                },
            },
        }
    }
}
