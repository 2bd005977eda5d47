//! Typed errors: decoding, encoding, version conflicts and store failures.

use crate::codec::FieldError;
use crate::store::{ExpectedVersion, StreamId};

/// An event or snapshot that could not be decoded from its stored fields.
///
/// It names the event type and the field, and says what was wrong; a backend adds where the
/// entry is stored ([`StoreError::Decode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// One field was missing or held an undecodable value.
    #[error("event `{event_type}`: field `{field}` is {source}")]
    Field {
        /// The event type (or `snapshot of <aggregate>` for snapshots).
        event_type: String,
        /// The stored field name.
        field: String,
        /// What was wrong with it.
        #[source]
        source: FieldError,
    },
    /// The stored event type is not one of the types the event enum knows.
    #[error("unknown event type `{event_type}` (expected one of: {})", expected.join(", "))]
    UnknownEventType {
        /// The stored type.
        event_type: String,
        /// The types the decoding enum knows.
        expected: Vec<&'static str>,
    },
    /// Anything else a hand-written decoder wants to report.
    #[error("event `{event_type}`: {message}")]
    Other {
        /// The event type.
        event_type: String,
        /// What was wrong.
        message: String,
    },
}

impl DecodeError {
    /// A field error for `field` of `event_type`.
    pub fn field(event_type: &str, field: &str, source: FieldError) -> Self {
        DecodeError::Field {
            event_type: event_type.to_owned(),
            field: field.to_owned(),
            source,
        }
    }

    /// The field this error names, if any.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            DecodeError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// An event or snapshot that could not be encoded (a `json` field whose `Serialize` failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode `{event_type}`: field `{field}` {source}")]
pub struct EncodeError {
    /// The event type (or `snapshot of <aggregate>`).
    pub event_type: String,
    /// The field.
    pub field: String,
    /// What went wrong.
    #[source]
    pub source: FieldError,
}

impl EncodeError {
    /// An encode error for `field` of `event_type`.
    pub fn field(event_type: &str, field: &str, source: FieldError) -> Self {
        EncodeError {
            event_type: event_type.to_owned(),
            field: field.to_owned(),
            source,
        }
    }
}

/// An append whose expected version did not match the stream: nothing was written.
///
/// Callers reload (or read the events after `expected`) and retry; the
/// [`Repository`](crate::Repository) does this for you.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version conflict on {stream}: expected {expected}, actual version is {actual}")]
pub struct ConflictError {
    /// The stream appended to.
    pub stream: StreamId,
    /// What the caller expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append was refused (0: no stream).
    pub actual: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The expected version did not match; nothing was written. Retry after catching up.
    #[error(transparent)]
    Conflict(#[from] ConflictError),
    /// A stored entry could not be decoded. Other entries are unaffected.
    #[error("cannot decode entry {entry} of `{location}`: {source}")]
    Decode {
        /// Where the backend keeps the entry (a stream key, a table).
        location: String,
        /// The entry's id there (its position, or the backend's own id).
        entry: String,
        /// What was wrong, naming the field.
        #[source]
        source: DecodeError,
    },
    /// An event or snapshot could not be encoded; nothing was written.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The backend could not be reached, or the connection was lost. The operation may or
    /// may not have taken effect; appends are atomic and can be retried with the same
    /// [`AppendOptions::append_id`](crate::store::AppendOptions::append_id).
    #[error("connection to the store failed: {message}")]
    Connection {
        /// What the backend said.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The aggregate was deleted ([`EventStore::delete_stream`](crate::EventStore::delete_stream)):
    /// loads and commands say so.
    #[error("{stream} was deleted ({}) at version {version}", if *hard { "hard" } else { "soft" })]
    Deleted {
        /// The aggregate's stream.
        stream: String,
        /// The version of the deletion marker.
        version: u64,
        /// Whether its events were removed.
        hard: bool,
    },
    /// The request was invalid (e.g. an append of no events, a limit of zero).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Any other backend failure (a script error, a corrupt layout, …).
    #[error("{message}")]
    Backend {
        /// What failed.
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A decode error located at `entry` of `location`.
    pub fn decode(
        location: impl Into<String>,
        entry: impl Into<String>,
        source: DecodeError,
    ) -> Self {
        StoreError::Decode {
            location: location.into(),
            entry: entry.into(),
            source,
        }
    }

    /// The conflict, if this is one.
    pub fn as_conflict(&self) -> Option<&ConflictError> {
        match self {
            StoreError::Conflict(conflict) => Some(conflict),
            _ => None,
        }
    }

    /// Whether retrying the same operation later may succeed (conflicts and lost connections).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_) | StoreError::Connection { .. }
        )
    }
}
