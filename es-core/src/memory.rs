//! The in-memory backend: thread-safe, for tests and for examples' `--in-memory` mode.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;

use crate::deletion::{self, soft_delete, Deletion};
use crate::error::{ConflictError, StoreError};
use crate::projection::{PollingSource, ProjectionBackend, ProjectionOptions, ProjectionSource};
use crate::read_model::{InMemoryReadModels, ReadModelStore};
use crate::store::{
    millis_since_epoch, validate_append, validate_snapshot, AggregateIds, AppendOptions,
    AppendResult, CategoryInfo, EventStore, ExpectedVersion, Metadata, NewEvent, Position,
    ReadRange, Snapshot, SnapshotStore, StoredEvent, StreamId,
};

/// How many appends with an id each stream remembers (the durable backends' default too):
/// a retry of an older one is no longer recognised.
pub const REMEMBERED_APPEND_IDS: usize = 8;

/// An [`EventStore`] and [`SnapshotStore`] in process memory.
///
/// Cloning it gives another handle to the same data. Positions number each category's
/// events (`1-0`, `2-0`, …: [`Position::from_sequence`]); timestamps are the time of the
/// append, never decreasing within a category.
///
/// ```
/// use es_core::{EventStore, ExpectedVersion, InMemoryStore, NewEvent, StreamId, AppendOptions};
/// use es_core::codec::Fields;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("user", "1");
/// let event = NewEvent { event_type: "Registered".into(), fields: Fields::new(), metadata: Default::default() };
/// let written = store.append(&stream, ExpectedVersion::NoStream, vec![event], &AppendOptions::default()).await?;
/// assert_eq!(written.version, 1);
/// # Ok::<_, es_core::StoreError>(())
/// # }).unwrap();
/// ```
///
/// It is also a [`ProjectionBackend`]: projections run on it with a [`PollingSource`], and
/// their read models live in its [`InMemoryReadModels`].
#[derive(Clone, Default)]
pub struct InMemoryStore {
    state: Arc<Mutex<State>>,
    read_models: Arc<InMemoryReadModels>,
}

#[derive(Default)]
struct State {
    /// Each category's events in order.
    categories: HashMap<String, Category>,
    /// Each stream's events: indexes into its category's log, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    snapshots: HashMap<StreamId, Snapshot>,
    /// Per stream, the last appends that carried an id (at most
    /// [`REMEMBERED_APPEND_IDS`]), for idempotent retries.
    appends: HashMap<StreamId, VecDeque<(String, AppendResult)>>,
}

struct Category {
    location: Arc<str>,
    events: Vec<StoredEvent>,
    last: Position,
    last_timestamp: u64,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section validates before it mutates, so a panic elsewhere cannot
        // leave the state half-changed: a poisoned lock is safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("InMemoryStore")
            .field("streams", &state.streams.len())
            .field("snapshots", &state.snapshots.len())
            .finish()
    }
}

impl Category {
    fn new(name: &str) -> Self {
        Category {
            location: Arc::from(format!("memory:{name}")),
            events: Vec::new(),
            last: Position::ZERO,
            last_timestamp: 0,
        }
    }

    /// The next position: the category's next sequence number.
    fn next_position(&mut self) -> Position {
        self.last = Position::from_sequence(self.last.major() + 1);
        self.last
    }

    /// The time of an append: now, but never before the category's last append (so the
    /// times of a stream's events never decrease, whatever the clock does).
    fn timestamp(&mut self, now: u64) -> u64 {
        self.last_timestamp = self.last_timestamp.max(now);
        self.last_timestamp
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        if let (Some(id), Some(done)) = (&options.append_id, state.appends.get(stream)) {
            if let Some((_, result)) = done.iter().find(|(done_id, _)| done_id == id) {
                return Ok(result.clone());
            }
        }
        let actual = state.streams.get(stream).map_or(0, Vec::len) as u64;
        if !expected.matches(actual) {
            return Err(ConflictError {
                stream: stream.clone(),
                expected,
                actual,
            }
            .into());
        }
        let now = millis_since_epoch(SystemTime::now());
        let category = state
            .categories
            .entry(stream.category.to_string())
            .or_insert_with(|| Category::new(&stream.category));
        let indexes = state.streams.entry(stream.clone()).or_default();
        let mut positions = Vec::with_capacity(events.len());
        let timestamp = category.timestamp(now);
        for (offset, event) in events.into_iter().enumerate() {
            let position = category.next_position();
            positions.push(position);
            indexes.push(category.events.len());
            category.events.push(StoredEvent {
                stream: stream.clone(),
                version: actual + 1 + offset as u64,
                position,
                timestamp,
                event_type: event.event_type.into_owned(),
                metadata: event.metadata,
                event: event.fields,
                location: category.location.clone(),
            });
        }
        let result = AppendResult {
            version: indexes.len() as u64,
            positions,
        };
        if let Some(id) = &options.append_id {
            let done = state.appends.entry(stream.clone()).or_default();
            if done.len() == REMEMBERED_APPEND_IDS {
                done.pop_front();
            }
            done.push_back((id.clone(), result.clone()));
        }
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let state = self.lock();
        let (Some(indexes), Some(category)) = (
            state.streams.get(stream),
            state.categories.get(stream.category.as_ref()),
        ) else {
            return Ok(Vec::new());
        };
        let from = range.from_version.max(1) as usize - 1;
        Ok(indexes
            .iter()
            .skip(from)
            .map(|&i| &category.events[i])
            .take_while(|e| range.contains(e.version, e.timestamp))
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.lock().streams.get(stream).map_or(0, Vec::len) as u64)
    }

    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let state = self.lock();
        let Some(category) = state.categories.get(category) else {
            return Ok(Vec::new());
        };
        let start = category.events.partition_point(|e| e.position <= after);
        Ok(category.events[start..]
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn categories(&self) -> Result<Vec<CategoryInfo>, StoreError> {
        let state = self.lock();
        let mut categories: Vec<CategoryInfo> = state
            .categories
            .iter()
            .filter(|(_, category)| !category.events.is_empty())
            .map(|(name, category)| {
                CategoryInfo::new(name, category.events.len() as u64, category.last)
            })
            .collect();
        categories.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(categories)
    }

    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError> {
        if deletion == Deletion::Soft {
            return soft_delete(self, stream, metadata).await;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let version = state.streams.get(stream).map_or(0, Vec::len) as u64;
        let category = state.categories.get_mut(stream.category.as_ref());
        let (Some(category), 1..) = (category, version) else {
            return Err(deletion::nothing_to_delete(stream));
        };
        let marker = deletion::marker(true, version, metadata)?;
        // Its entries go; every other aggregate of the category is indexed anew.
        category.events.retain(|event| event.stream != *stream);
        let position = category.next_position();
        let timestamp = category.timestamp(millis_since_epoch(SystemTime::now()));
        category.events.push(StoredEvent {
            stream: stream.clone(),
            version: 1,
            position,
            timestamp,
            event_type: marker.event_type.into_owned(),
            metadata: marker.metadata,
            event: marker.fields,
            location: category.location.clone(),
        });
        for indexes in state
            .streams
            .iter_mut()
            .filter(|(id, _)| id.category == stream.category)
            .map(|(_, indexes)| indexes)
        {
            indexes.clear();
        }
        for (index, event) in category.events.iter().enumerate() {
            if let Some(indexes) = state.streams.get_mut(&event.stream) {
                indexes.push(index);
            }
        }
        state.snapshots.remove(stream);
        state.appends.remove(stream);
        Ok(AppendResult {
            version: 1,
            positions: vec![position],
        })
    }

    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError> {
        let after = AggregateIds::parse_cursor(after)?;
        let state = self.lock();
        let Some(category) = state.categories.get(category) else {
            return Ok(AggregateIds::default());
        };
        let start = category.events.partition_point(|e| e.position <= after);
        let firsts: Vec<&StoredEvent> = category.events[start..]
            .iter()
            .filter(|event| event.version == 1)
            .take(limit)
            .collect();
        let next = (firsts.len() == limit && limit > 0)
            .then(|| firsts.last().map(|event| event.position.to_string()))
            .flatten();
        let ids = firsts.iter().map(|event| event.stream.id.clone()).collect();
        Ok(AggregateIds::new(ids, next))
    }
}

#[async_trait]
impl SnapshotStore for InMemoryStore {
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        validate_snapshot(stream, snapshot)?;
        let mut state = self.lock();
        match state.snapshots.get(stream) {
            Some(stored) if stored.version > snapshot.version => Ok(false),
            _ => {
                state.snapshots.insert(stream.clone(), snapshot.clone());
                Ok(true)
            }
        }
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }
}

#[async_trait]
impl ProjectionBackend for InMemoryStore {
    async fn projection_source(
        &self,
        _name: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Result<Box<dyn ProjectionSource>, StoreError> {
        Ok(Box::new(PollingSource::new(
            self.clone(),
            categories,
            options,
        )))
    }

    fn read_model_store(&self) -> Arc<dyn ReadModelStore> {
        self.read_models.clone()
    }
}
