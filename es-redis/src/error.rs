//! Errors of the Redis backend, and how they map into [`es_core::StoreError`].

use es_core::StoreError;
use redis::RedisError;

/// Why a Redis operation failed.
///
/// The [`EventStore`](es_core::EventStore) and [`SnapshotStore`](es_core::SnapshotStore)
/// methods return [`StoreError`]; this type is what [`RedisEventStore::connect`]
/// returns, and what those methods convert from (see the `From` impl): a lost or refused
/// connection or a timeout becomes [`StoreError::Connection`] (retryable; an append can be
/// retried safely with the same append id), anything else [`StoreError::Backend`].
/// Version conflicts and undecodable entries never come through here: they are
/// [`StoreError::Conflict`] and [`StoreError::Decode`] directly.
///
/// [`RedisEventStore::connect`]: crate::RedisEventStore::connect
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid (a malformed URL, a namespace with a brace, …).
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    /// A Redis command failed, or could not be sent or answered.
    #[error("Redis {operation} failed: {source}")]
    Redis {
        /// What was being done (e.g. `XRANGE of es:{user}:events`).
        operation: String,
        /// The client's error.
        #[source]
        source: RedisError,
    },
    /// A Lua script failed or refused its arguments (a layout key of the wrong type, …).
    #[error("script `{script}` failed: {message}")]
    Script {
        /// The script's name (`append`, `read_stream`, …).
        script: &'static str,
        /// What Redis said.
        message: String,
        /// The client's error.
        #[source]
        source: RedisError,
    },
    /// A request the backend refuses before sending it (e.g. a read-model hash name that
    /// is reserved).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A projection did not reach a position in time.
    #[error(transparent)]
    WaitTimeout(#[from] es_core::projection::WaitTimeout),
    /// An append call was applied on the primary, but fewer replicas than
    /// [`RedisConfig::wait_for_replicas`](crate::RedisConfig::wait_for_replicas) asks
    /// acknowledged it in time: whether it survives a failover is unknown. A connection
    /// error to the repository, which re-sends it with the same append id.
    #[error(
        "the append was applied on the primary, but {acknowledged} of {wanted} replica(s) \
         acknowledged it within {timeout:?}: whether it survives a failover is unknown \
         (re-send it with the same append id)"
    )]
    NotReplicated {
        /// How many replicas acknowledged it.
        acknowledged: u64,
        /// How many were asked for.
        wanted: usize,
        /// How long it waited.
        timeout: std::time::Duration,
    },
    /// Redis replied in a shape the backend does not expect (a corrupt layout, an entry the
    /// index names but the stream no longer holds, …).
    #[error("unexpected reply to {operation}: {detail}")]
    UnexpectedReply {
        /// What was being done.
        operation: String,
        /// What was wrong with the reply.
        detail: String,
    },
}

impl Error {
    /// A failed command.
    pub(crate) fn redis(operation: impl Into<String>, source: RedisError) -> Self {
        Error::Redis {
            operation: operation.into(),
            source,
        }
    }

    /// A failed script: connection trouble stays a [`Error::Redis`] (so it maps to a
    /// retryable [`StoreError::Connection`]); anything the server said is an [`Error::Script`].
    pub(crate) fn script(script: &'static str, source: RedisError) -> Self {
        if is_connection_error(&source) {
            return Error::redis(format!("script `{script}`"), source);
        }
        Error::Script {
            script,
            message: source.to_string(),
            source,
        }
    }

    /// What a script refused, as it said it in its reply (not as an error reply).
    pub(crate) fn refused(script: &'static str, message: String) -> Self {
        Error::Script {
            script,
            source: redis::RedisError::from((
                redis::ErrorKind::Extension,
                "refused by the script",
                message.clone(),
            )),
            message,
        }
    }

    /// A reply of the wrong shape.
    pub(crate) fn unexpected(operation: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::UnexpectedReply {
            operation: operation.into(),
            detail: detail.into(),
        }
    }

    /// Whether this is a lost, refused or timed-out connection.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Redis { source, .. } => is_connection_error(source),
            Error::NotReplicated { .. } => true,
            _ => false,
        }
    }
}

/// Whether the error is transient: the connection, or a server that is failing over,
/// loading or resharding (`TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, …). Such errors
/// are retryable [`StoreError::Connection`]s.
fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || matches!(
            error.retry_method(),
            redis::RetryMethod::WaitAndRetry | redis::RetryMethod::ReconnectFromInitialConnections
        )
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        if let Error::InvalidRequest(why) = error {
            return StoreError::InvalidRequest(why);
        }
        if error.is_connection() {
            StoreError::Connection {
                message,
                source: Some(Box::new(error)),
            }
        } else {
            StoreError::Backend {
                message,
                source: Some(Box::new(error)),
            }
        }
    }
}
