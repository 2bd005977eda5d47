//! The storage contract: streams, envelopes, [`EventStore`] and [`SnapshotStore`].
//!
//! A backend stores events in per-aggregate streams (identified by a [`StreamId`]: the
//! aggregate type, called its *category*, and the aggregate id) and keeps every category in
//! one global order, so projections can read all `user` events as one log.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::position::{ParsePositionError, Position};

mod envelope;

pub use envelope::{ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoredEvent, StreamId};

use async_trait::async_trait;

use crate::codec::Fields;
use crate::error::StoreError;

/// Checks an append before a backend writes anything: it carries at least one event, and
/// no event has a field named like an envelope field
/// ([`RESERVED_EVENT_FIELDS`](crate::event::RESERVED_EVENT_FIELDS)). Every backend calls it
/// first in [`EventStore::append`], so every backend refuses the same appends with the same
/// [`StoreError::InvalidRequest`] (the conformance suite checks it).
pub fn validate_append(stream: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidRequest(format!(
            "an append to {stream} must carry at least one event"
        )));
    }
    for event in events {
        if let Some((name, _)) = event
            .fields
            .iter()
            .find(|(name, _)| crate::event::RESERVED_EVENT_FIELDS.contains(name))
        {
            return Err(StoreError::InvalidRequest(format!(
                "event `{}` for {stream} has a field named `{name}`, which is reserved for the \
                 envelope",
                event.event_type
            )));
        }
        refuse_unsealed(stream, &event.event_type, &event.fields)?;
    }
    Ok(())
}

/// Refuses personal values still in the clear (marked to be sealed): they are sealed by a
/// [`Shredded`](crate::personal::Shredded) store, so plain personal data never reaches a
/// backend.
fn refuse_unsealed(stream: &StreamId, what: &str, fields: &Fields) -> Result<(), StoreError> {
    match fields
        .iter()
        .find(|(_, value)| value.starts_with(crate::personal::TO_SEAL))
    {
        Some((name, _)) => Err(StoreError::InvalidRequest(format!(
            "`{what}` for {stream} has personal field `{name}` in the clear: store personal data \
             through `es_core::personal::Shredded`, which encrypts it with its subject's key"
        ))),
        None => Ok(()),
    }
}

/// Checks a snapshot before a backend saves it: no field starts with
/// [`RESERVED_SNAPSHOT_PREFIX`](crate::aggregate::RESERVED_SNAPSHOT_PREFIX) (those are the
/// snapshot's own metadata) and no field appears twice. Every backend calls it first in
/// [`SnapshotStore::save_snapshot`] (the conformance suite checks it).
pub fn validate_snapshot(stream: &StreamId, snapshot: &Snapshot) -> Result<(), StoreError> {
    use crate::aggregate::RESERVED_SNAPSHOT_PREFIX;
    let mut seen = std::collections::HashSet::with_capacity(snapshot.fields.len());
    for (name, _) in snapshot.fields.iter() {
        if name.starts_with(RESERVED_SNAPSHOT_PREFIX) {
            return Err(StoreError::InvalidRequest(format!(
                "snapshot field `{name}` of {stream} starts with `{RESERVED_SNAPSHOT_PREFIX}`, \
                 which is reserved for the snapshot's own metadata"
            )));
        }
        if !seen.insert(name) {
            return Err(StoreError::InvalidRequest(format!(
                "snapshot of {stream} has field `{name}` twice"
            )));
        }
    }
    refuse_unsealed(stream, "snapshot", &snapshot.fields)?;
    Ok(())
}

/// Options of one append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// An idempotency key. Sending the same append again with the same id (after a lost
    /// reply) returns the first append's result instead of writing the events twice or
    /// reporting a conflict.
    pub append_id: Option<String>,
}

impl AppendOptions {
    /// Options with this idempotency key.
    pub fn with_append_id(id: impl Into<String>) -> Self {
        AppendOptions {
            append_id: Some(id.into()),
        }
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (the version of the last event written).
    pub version: u64,
    /// The category position of each event written, in order.
    pub positions: Vec<Position>,
}

impl AppendResult {
    /// The version of the first event written.
    pub fn first_version(&self) -> u64 {
        (self.version + 1).saturating_sub(self.positions.len() as u64)
    }
}

/// Which events of a stream to read: versions `from..=to`, optionally only those stored at
/// or before a time (time travel).
///
/// ```
/// use es_core::ReadRange;
/// let range = ReadRange::all().from_version(3).to_version(10);
/// assert!(range.contains(5, 0));
/// assert!(!range.contains(11, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadRange {
    /// First version to read (1-based; 0 and 1 both mean from the start).
    pub from_version: u64,
    /// Last version to read, inclusive.
    pub to_version: Option<u64>,
    /// Only events stored at or before this time (milliseconds since the Unix epoch).
    pub until_millis: Option<u64>,
}

impl ReadRange {
    /// The whole stream.
    pub fn all() -> Self {
        ReadRange {
            from_version: 1,
            to_version: None,
            until_millis: None,
        }
    }

    /// Starting at `version`.
    pub fn from_version(mut self, version: u64) -> Self {
        self.from_version = version;
        self
    }

    /// Up to and including `version`.
    pub fn to_version(mut self, version: u64) -> Self {
        self.to_version = Some(version);
        self
    }

    /// Only events stored at or before `time`.
    pub fn until(mut self, time: SystemTime) -> Self {
        self.until_millis = Some(millis_since_epoch(time));
        self
    }

    /// Only events stored at or before `millis` since the Unix epoch.
    pub fn until_millis(mut self, millis: u64) -> Self {
        self.until_millis = Some(millis);
        self
    }

    /// Whether an event at `version` stored at `timestamp` is in range.
    pub fn contains(&self, version: u64, timestamp: u64) -> bool {
        version >= self.from_version.max(1)
            && self.to_version.is_none_or(|to| version <= to)
            && self.until_millis.is_none_or(|until| timestamp <= until)
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An aggregate's saved state, as field pairs, at a version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The version of the last event folded into it.
    pub version: u64,
    /// The category position of that event.
    pub position: Position,
    /// The aggregate's snapshot layout (`Aggregate::SNAPSHOT_SCHEMA`): a snapshot of another
    /// layout is ignored, and the aggregate is rebuilt by full replay.
    pub schema: u64,
    /// The encoded state.
    pub fields: Fields,
}

/// Where events are stored: atomic appends with optimistic concurrency, stream reads with
/// time travel, category reads in global order.
///
/// Every backend proves it keeps this contract by running the conformance suite
/// (`es_core::conformance_tests!`, feature `testing`).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` atomically (all or none) if its version matches
    /// `expected`, and returns the new version. A mismatch writes nothing and returns
    /// [`StoreError::Conflict`] with the actual version.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError>;

    /// The events of `stream` in `range`, in version order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The stream's current version (0: no stream).
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError>;

    /// Up to `limit` events of `category` stored after `after`, in category order.
    ///
    /// A partitioned category (see [`partitions`](Self::partitions)) has one order per
    /// partition, not one for the category: its pages merge the partitions by position, so
    /// each event comes once and each partition's events come in their order, but events of
    /// different partitions are ordered only by their positions, and a page read while the
    /// category is written may pass an event that a lagging partition stores later. Read a
    /// live partitioned category per partition ([`read_partition`](Self::read_partition),
    /// one cursor each) or with a projection.
    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Deletes aggregate `stream`: [`Deletion::Soft`](crate::deletion::Deletion::Soft) appends the deletion marker after
    /// its events ([`crate::deletion::soft_delete`]); [`Deletion::Hard`](crate::deletion::Deletion::Hard) removes its events,
    /// index and snapshot and leaves the marker as its only event (version 1), atomically
    /// with respect to concurrent appends. The marker carries `metadata`. A stream without
    /// events is refused.
    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: crate::deletion::Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError>;

    /// The categories that hold events, sorted by name (byte order), each with how many
    /// events it holds: what a browser of the store (es-inspect) lists first.
    async fn categories(&self) -> Result<Vec<CategoryInfo>, StoreError>;

    /// A page of the ids of the aggregates of `category`, in the order they started (their
    /// first event), at most `limit`, continuing after cursor `after` (a page's
    /// [`next`](AggregateIds::next); `None`: from the first). An unknown category has none.
    /// A partitioned category's partitions are merged by the position of each aggregate's
    /// first event.
    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError>;

    /// How many partitions `category` has: 1 (the default) when the category has one
    /// order. Each partition holds whole aggregates and orders its own events.
    fn partitions(&self, _category: &str) -> u32 {
        1
    }

    /// Up to `limit` events of `partition` of `category` stored after `after`, in that
    /// partition's exact order. The default serves a store without partitions: partition 0
    /// is the category.
    async fn read_partition(
        &self,
        category: &str,
        partition: u32,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if partition != 0 {
            return Err(StoreError::InvalidRequest(format!(
                "category {category:?} has 1 partition; there is no partition {partition}"
            )));
        }
        self.read_category(category, after, limit).await
    }
}

/// A category as [`EventStore::categories`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CategoryInfo {
    /// The category's name.
    pub name: String,
    /// How many events it holds.
    pub events: u64,
    /// The position of its newest event (of a partitioned category: the greatest of its
    /// partitions'): a live reader starts after it to see only what comes next.
    pub head: Position,
}

impl CategoryInfo {
    /// Category `name`, holding `events` events, the newest at `head`.
    pub fn new(name: impl Into<String>, events: u64, head: Position) -> Self {
        CategoryInfo {
            name: name.into(),
            events,
            head,
        }
    }
}

/// A page of aggregate ids ([`EventStore::aggregate_ids`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AggregateIds {
    /// The ids, in the order the aggregates started.
    pub ids: Vec<String>,
    /// The cursor to continue after (opaque, the backend's own), when the page is full:
    /// more may follow. `None` on the last page.
    pub next: Option<String>,
}

impl AggregateIds {
    /// A page of `ids` continuing after `next`.
    pub fn new(ids: Vec<String>, next: Option<String>) -> Self {
        AggregateIds { ids, next }
    }

    /// The cursor `after` as a position (memory, PostgreSQL): a malformed one is refused.
    pub fn parse_cursor(after: Option<&str>) -> Result<Position, StoreError> {
        match after {
            None => Ok(Position::ZERO),
            Some(text) => text.parse().map_err(|_| Self::invalid_cursor(text)),
        }
    }

    /// The refusal of cursor `text`, which the backend did not hand out.
    pub fn invalid_cursor(text: &str) -> StoreError {
        StoreError::InvalidRequest(format!("{text:?} is no cursor of aggregate ids"))
    }
}

/// Where snapshots are kept.
#[async_trait]
pub trait SnapshotStore: EventStore {
    /// Saves `snapshot` unless the stored one is newer (has a higher version); returns
    /// whether it was saved.
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError>;

    /// The stored snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// The snapshot (if any, and only if of layout `schema`) and the events after it.
    ///
    /// Backends that can do both in one round trip override this.
    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
        schema: u64,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>), StoreError> {
        let snapshot = self
            .load_snapshot(stream)
            .await?
            .filter(|s| s.schema == schema);
        let from = snapshot.as_ref().map_or(1, |s| s.version + 1);
        let tail = self
            .read_stream(stream, &ReadRange::all().from_version(from))
            .await?;
        Ok((snapshot, tail))
    }
}

#[async_trait]
impl<T: EventStore + ?Sized> EventStore for Arc<T> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        (**self).append(stream, expected, events, options).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        (**self).read_stream(stream, range).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        (**self).stream_version(stream).await
    }
    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        (**self).read_category(category, after, limit).await
    }
    async fn categories(&self) -> Result<Vec<CategoryInfo>, StoreError> {
        (**self).categories().await
    }
    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: crate::deletion::Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError> {
        (**self).delete_stream(stream, deletion, metadata).await
    }
    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError> {
        (**self).aggregate_ids(category, after, limit).await
    }
    fn partitions(&self, category: &str) -> u32 {
        (**self).partitions(category)
    }
    async fn read_partition(
        &self,
        category: &str,
        partition: u32,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        (**self)
            .read_partition(category, partition, after, limit)
            .await
    }
}

#[async_trait]
impl<T: SnapshotStore + ?Sized> SnapshotStore for Arc<T> {
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        (**self).save_snapshot(stream, snapshot).await
    }
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        (**self).load_snapshot(stream).await
    }
    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
        schema: u64,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>), StoreError> {
        (**self).load_snapshot_and_tail(stream, schema).await
    }
}
