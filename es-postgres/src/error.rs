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
