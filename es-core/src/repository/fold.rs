//! The one fold of stored events into an aggregate's state: from a snapshot or from the
//! start, through deletion markers.

use crate::aggregate::Aggregate;
use crate::deletion::{StreamDeleted, STREAM_DELETED};
use crate::error::StoreError;
use crate::store::{Position, Snapshot, StoredEvent, StreamId};

use super::Loaded;

impl<A: Aggregate> Loaded<A> {
    pub(super) fn empty(stream: StreamId) -> Self {
        Loaded {
            stream,
            state: A::default(),
            version: 0,
            position: Position::ZERO,
        }
    }
}

pub(super) fn restore<A: Aggregate>(stream: &StreamId, snapshot: Snapshot) -> Option<Loaded<A>> {
    match A::decode_snapshot(&snapshot.fields) {
        Ok(state) => Some(Loaded {
            stream: stream.clone(),
            state,
            version: snapshot.version,
            position: snapshot.position,
        }),
        Err(error) => {
            tracing::warn!(%stream, %error, "ignoring a snapshot that does not decode; replaying");
            None
        }
    }
}

/// Applies `events` to `loaded`. A deletion marker resets the state to its `Default` (an
/// aggregate recreated after it starts again); if the last event is one, the aggregate is
/// deleted: [`StoreError::Deleted`].
pub(super) fn fold<A: Aggregate>(
    mut loaded: Loaded<A>,
    events: Vec<StoredEvent>,
) -> Result<Loaded<A>, StoreError> {
    let mut deleted = None;
    for stored in events {
        if stored.event_type == STREAM_DELETED {
            let marker = stored.decode::<StreamDeleted>()?;
            loaded.state = A::default();
            loaded.version = marker.version;
            loaded.position = marker.position;
            deleted = Some(marker.event.hard);
            continue;
        }
        deleted = None;
        let event = stored.decode::<A::Event>()?;
        loaded.state.apply_event(&event.event);
        loaded.version = event.version;
        loaded.position = event.position;
    }
    match deleted {
        Some(hard) => Err(StoreError::Deleted {
            stream: loaded.stream.to_string(),
            version: loaded.version,
            hard,
        }),
        None => Ok(loaded),
    }
}
