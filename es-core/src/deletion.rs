//! Deleting an aggregate: [`Deletion`] and the [`StreamDeleted`] marker every deletion
//! appends, which loads, commands and projections see.
//!
//! - **Soft:** the marker is appended to the aggregate's stream; its events stay, for
//!   projections and audit. Loads and commands say [`StoreError::Deleted`].
//! - **Hard:** the aggregate's entries, index and snapshot are removed atomically, and the
//!   marker is left as the stream's only event (version 1): a tombstone, so the id cannot
//!   silently start a new history. Projections see the marker in the category.
//!
//! Either way the marker carries the deletion's metadata (who, why; its time says when). A
//! repository refuses commands on a deleted aggregate unless it allows recreation
//! ([`Repository::with_recreation`](crate::Repository::with_recreation)): then the
//! aggregate starts again from its `Default` after the marker.

use crate::codec::{FieldValue, Fields};
use crate::error::{DecodeError, EncodeError, StoreError};
use crate::event::{Event, NamedEvent};
use crate::store::{AppendResult, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};

/// The event type of the deletion marker.
pub const STREAM_DELETED: &str = "StreamDeleted";

/// How an aggregate is deleted ([`EventStore::delete_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deletion {
    /// Mark it deleted; keep its events.
    Soft,
    /// Remove its events, index and snapshot; keep a tombstone.
    Hard,
}

/// The marker a deletion appends: add it to a projection's event enum to react to
/// deletions (say, drop the aggregate's rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDeleted {
    /// Whether the aggregate's events were removed.
    pub hard: bool,
    /// The aggregate's version when it was deleted.
    pub deleted_version: u64,
}

impl NamedEvent for StreamDeleted {
    const NAME: &'static str = STREAM_DELETED;
}

impl Event for StreamDeleted {
    const EVENT_TYPES: &'static [&'static str] = &[STREAM_DELETED];

    fn event_type(&self) -> &'static str {
        STREAM_DELETED
    }

    fn encode(&self, out: &mut Fields) -> Result<(), EncodeError> {
        out.push("hard", if self.hard { "true" } else { "false" });
        out.push("deleted_version", self.deleted_version.to_string());
        Ok(())
    }

    fn decode(event_type: &str, fields: &Fields) -> Result<Self, DecodeError> {
        let hard = bool::decode_value(fields.get("hard"))
            .map_err(|error| DecodeError::field(event_type, "hard", error))?;
        let deleted_version = u64::decode_value(fields.get("deleted_version"))
            .map_err(|error| DecodeError::field(event_type, "deleted_version", error))?;
        Ok(StreamDeleted {
            hard,
            deleted_version,
        })
    }
}

/// The refusal to delete `stream`, which has no events.
pub fn nothing_to_delete(stream: &StreamId) -> StoreError {
    StoreError::InvalidRequest(format!("{stream} has no events to delete"))
}

/// The marker of deleting `stream` at `version`, `hard` or not, with `metadata`.
pub fn marker(hard: bool, version: u64, metadata: Metadata) -> Result<NewEvent, StoreError> {
    Ok(NewEvent::encode(
        &StreamDeleted {
            hard,
            deleted_version: version,
        },
        metadata,
    )?)
}

/// A soft deletion: the marker appended to the stream, after its current events. What every
/// backend's [`EventStore::delete_stream`] does for [`Deletion::Soft`].
pub async fn soft_delete<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    metadata: Metadata,
) -> Result<AppendResult, StoreError> {
    let mut last = None;
    for _ in 0..DELETE_ATTEMPTS {
        let version = store.stream_version(stream).await?;
        if version == 0 {
            return Err(nothing_to_delete(stream));
        }
        let marker = marker(false, version, metadata.clone())?;
        match store
            .append(
                stream,
                ExpectedVersion::Exact(version),
                vec![marker],
                &Default::default(),
            )
            .await
        {
            // An append came first: mark after it.
            Err(StoreError::Conflict(conflict)) => last = Some(conflict),
            other => return other,
        }
    }
    Err(gave_up(stream, last))
}

/// How often a deletion reads the version again when appends keep coming first.
pub const DELETE_ATTEMPTS: usize = 100;

/// The conflict a deletion ends with after [`DELETE_ATTEMPTS`] attempts (retry it later).
pub fn gave_up(stream: &StreamId, last: Option<crate::error::ConflictError>) -> StoreError {
    match last {
        Some(conflict) => StoreError::Conflict(conflict),
        None => StoreError::InvalidRequest(format!("deleting {stream} made no attempt")),
    }
}
