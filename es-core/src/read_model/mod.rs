//! Read models: named hashes of fields that a projection keeps up to date, each event
//! applied **exactly once**, on any backend.
//!
//! Delivery to a projection is at least once: a worker may crash after updating the read
//! model but before acknowledging the event, or stall while another worker reclaims it.
//! So an update and the record that its event was applied commit together, in one atomic
//! step that first checks the record: a second delivery of the same event changes nothing.
//! The record is a set of applied positions per category (per partition), not a "last
//! applied position": consumers of one projection may apply a category's events out of
//! order, and an older event applied after a newer one must not be skipped.
//!
//! Projection code is written once against [`ReadModel`]; where the hashes live is the
//! backend's choice ([`ReadModelStore`]): Redis hashes on Redis, memory in the in-memory
//! backend (which is what makes a projection unit-testable without a server).
//!
//! ```
//! use es_core::projection::ProjectionBackend;
//! use es_core::read_model::Applied;
//! use es_core::{Event, EventStore, InMemoryStore, Metadata, NewEvent, StreamId};
//!
//! #[derive(Event)] struct Renamed { name: String }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = InMemoryStore::new();
//! let new = NewEvent::encode(&Renamed { name: "Duffy".into() }, Metadata::default())?;
//! store.append(&StreamId::new("user", "1"), es_core::ExpectedVersion::Any, vec![new], &Default::default()).await?;
//! let event = store.read_category("user", Default::default(), 1).await?.remove(0).decode::<Renamed>()?;
//!
//! let profiles = store.read_model("profiles");
//! let hash = format!("user_{}", event.stream.id);
//! let update = || profiles.update(&event).hset(&hash, "name", event.event.name.as_str()).hincrby(&hash, "renames", 1);
//! assert_eq!(update().commit().await?, Applied::Applied);
//! // Delivered again: nothing changes.
//! assert_eq!(update().commit().await?, Applied::AlreadyApplied);
//! assert_eq!(profiles.hash(&hash).await?["renames"], b"1");
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod memory;

pub use memory::InMemoryReadModels;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::store::{Position, RecordedEvent, StreamId};

/// Whether an update changed the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The update was applied and its event recorded.
    Applied,
    /// The event had been applied before: nothing was written.
    AlreadyApplied,
}

/// One write of an update, as a [`ReadModelStore`] receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashWrite {
    /// Sets `field` of hash `hash` to `value`.
    Set {
        /// The hash's name.
        hash: String,
        /// The field.
        field: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `field` from hash `hash`.
    Remove {
        /// The hash's name.
        hash: String,
        /// The field.
        field: String,
    },
    /// Adds `by` to the integer in `field` of hash `hash` (a missing field counts as 0).
    Increment {
        /// The hash's name.
        hash: String,
        /// The field.
        field: String,
        /// The increment.
        by: i64,
    },
    /// Deletes hash `hash`.
    Delete {
        /// The hash's name.
        hash: String,
    },
}

/// The largest magnitude an increment, a counter, or a sum of the two may reach: every
/// backend checks this range exactly, and refuses the commit beyond it.
pub const INCREMENT_LIMIT: i64 = 1 << 53;

/// The value of `field` of `hash` after [`HashWrite::Increment`] by `by`, from its stored
/// value `current` (`None`: absent, counts as 0): the decimal text of the sum. A stored
/// value that is not an integer, an increment or a sum beyond [`INCREMENT_LIMIT`] is refused
/// ([`StoreError::InvalidRequest`]). Every backend's read models check increments with it.
pub fn incremented(
    hash: &str,
    field: &str,
    current: Option<&[u8]>,
    by: i64,
) -> Result<Vec<u8>, StoreError> {
    let refused = |why: String| {
        StoreError::InvalidRequest(format!(
            "HINCRBY of field {field} of read-model hash {hash} by {by} refused: {why}"
        ))
    };
    let current = match current {
        None => 0,
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|text| text.parse::<i64>().ok().filter(|n| n.to_string() == text))
            .filter(|n| n.unsigned_abs() < INCREMENT_LIMIT.unsigned_abs())
            .ok_or_else(|| {
                refused(format!(
                    "holds {}, not an integer within |n| < 2^53",
                    String::from_utf8_lossy(raw)
                ))
            })?,
    };
    if by.unsigned_abs() >= INCREMENT_LIMIT.unsigned_abs() {
        return Err(refused("the increment is beyond |n| < 2^53".into()));
    }
    let sum = current + by;
    if sum.unsigned_abs() >= INCREMENT_LIMIT.unsigned_abs() {
        return Err(refused("the sum leaves the range |n| < 2^53".into()));
    }
    Ok(sum.to_string().into_bytes())
}

/// The writes of one event, as a [`ReadModelStore`] receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventWrites {
    /// The event's stream.
    pub stream: StreamId,
    /// The event's position in its category: the record of applied events holds it.
    pub position: Position,
    /// The writes, in order.
    pub writes: Vec<HashWrite>,
}

/// Where a backend keeps read models. Implement it for a backend; projections use
/// [`ReadModel`].
#[async_trait]
pub trait ReadModelStore: Send + Sync {
    /// Applies, atomically, the writes of every event of `updates` that projection
    /// `projection` has not applied before, and records those events: one [`Applied`] per
    /// update, in order (an event twice in one call counts once). If any write would fail
    /// (an increment of a field that is not an integer, or beyond [`INCREMENT_LIMIT`]),
    /// nothing is written and the error is [`StoreError::InvalidRequest`]. Later updates see
    /// what earlier ones wrote.
    async fn commit(
        &self,
        projection: &str,
        updates: Vec<EventWrites>,
    ) -> Result<Vec<Applied>, StoreError>;

    /// Every field of hash `name` of `projection`'s read model (empty if none).
    async fn hash(
        &self,
        projection: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError>;

    /// Every hash of `projection`'s read model, by name (for tests and debugging: a
    /// backend may scan for them).
    async fn hashes(
        &self,
        projection: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, StoreError>;

    /// How many events of `category` `projection` has recorded as applied (a backend may
    /// prune records of events that can no longer be delivered).
    async fn applied_count(&self, projection: &str, category: &str) -> Result<u64, StoreError>;

    /// Deletes `projection`'s read model and its record of applied events; returns how
    /// many hashes and records were deleted.
    async fn clear(&self, projection: &str) -> Result<u64, StoreError>;
}

/// The read model of one projection: hashes of fields, written with
/// [`update`](Self::update) and [`batch`](Self::batch).
///
/// Get it from the backend, [`ProjectionBackend::read_model`], with the projection's
/// name, and let the projection's [`name`](crate::projection::Projection::name) return
/// [`projection`](Self::projection) and its
/// [`read_model`](crate::projection::Projection::read_model) return it: the runner then
/// clears it on rebuild, and refuses a read model of another projection.
///
/// [`ProjectionBackend::read_model`]: crate::projection::ProjectionBackend::read_model
#[derive(Clone)]
pub struct ReadModel {
    store: Arc<dyn ReadModelStore>,
    projection: Arc<str>,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

impl ReadModel {
    /// The read model of `projection` in `store`.
    pub fn new(store: Arc<dyn ReadModelStore>, projection: impl AsRef<str>) -> Self {
        ReadModel {
            store,
            projection: Arc::from(projection.as_ref()),
        }
    }

    /// The projection it belongs to.
    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// Starts the update that handling `event` makes. Nothing is written until
    /// [`commit`](ReadModelUpdate::commit), or until a [`ReadModelBatch`] it is pushed
    /// onto commits.
    pub fn update<E>(&self, event: &RecordedEvent<E>) -> ReadModelUpdate<'_> {
        ReadModelUpdate {
            model: self,
            writes: EventWrites {
                stream: event.stream.clone(),
                position: event.position,
                writes: Vec::new(),
            },
            invalid: None,
        }
    }

    /// Starts a batch: the updates of many events, committed in one atomic step. This is
    /// what [`Projection::handle_batch`](crate::projection::Projection::handle_batch) is
    /// for: one commit per delivered batch instead of one per event.
    pub fn batch(&self) -> ReadModelBatch<'_> {
        ReadModelBatch {
            model: self,
            updates: Vec::new(),
        }
    }

    /// Every field of hash `name` (empty if it does not exist).
    pub async fn hash(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.store.hash(&self.projection, name).await
    }

    /// Every hash of the read model by name (for tests and debugging).
    pub async fn hashes(&self) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, StoreError> {
        self.store.hashes(&self.projection).await
    }

    /// How many events of `category` (of all its partitions) are recorded as applied
    /// (pruned ones are not).
    pub async fn applied_count(&self, category: &str) -> Result<u64, StoreError> {
        self.store.applied_count(&self.projection, category).await
    }

    /// Deletes every hash of the read model and its record of applied events; returns how
    /// many were deleted.
    pub async fn clear(&self) -> Result<u64, StoreError> {
        self.store.clear(&self.projection).await
    }
}

/// The hash writes of one event, applied by [`commit`](Self::commit) in one atomic step
/// together with the record that the event was applied.
#[derive(Debug)]
#[must_use = "nothing is written until `commit`"]
pub struct ReadModelUpdate<'a> {
    model: &'a ReadModel,
    writes: EventWrites,
    invalid: Option<String>,
}

impl ReadModelUpdate<'_> {
    /// Sets `field` of hash `name` (Redis: `HSET`).
    pub fn hset(self, name: &str, field: &str, value: impl Into<Vec<u8>>) -> Self {
        let (hash, field, value) = (name.to_owned(), field.to_owned(), value.into());
        self.push(HashWrite::Set { hash, field, value })
    }

    /// Removes `field` from hash `name` (Redis: `HDEL`).
    pub fn hdel(self, name: &str, field: &str) -> Self {
        let (hash, field) = (name.to_owned(), field.to_owned());
        self.push(HashWrite::Remove { hash, field })
    }

    /// Adds `increment` to the integer in `field` of hash `name` (Redis: `HINCRBY`; a
    /// missing field counts as 0). A field holding something else, or a value or sum of
    /// [`INCREMENT_LIMIT`] (2^53) or more in magnitude, fails the whole commit and writes
    /// nothing.
    pub fn hincrby(self, name: &str, field: &str, increment: i64) -> Self {
        let (hash, field) = (name.to_owned(), field.to_owned());
        self.push(HashWrite::Increment {
            hash,
            field,
            by: increment,
        })
    }

    /// Deletes hash `name` (Redis: `DEL`).
    pub fn del(self, name: &str) -> Self {
        self.push(HashWrite::Delete {
            hash: name.to_owned(),
        })
    }

    fn push(mut self, write: HashWrite) -> Self {
        let name = match &write {
            HashWrite::Set { hash, .. }
            | HashWrite::Remove { hash, .. }
            | HashWrite::Increment { hash, .. }
            | HashWrite::Delete { hash } => hash,
        };
        if name.starts_with('_') && self.invalid.is_none() {
            self.invalid = Some(format!(
                "read-model hash name {name:?} starts with `_`, which is reserved for the backend"
            ));
        }
        self.writes.writes.push(write);
        self
    }

    /// Applies the writes and records the event, unless it was applied before.
    pub async fn commit(self) -> Result<Applied, StoreError> {
        let model = self.model;
        let mut batch = model.batch();
        batch.push(self);
        let applied = batch.commit().await?;
        applied.first().copied().ok_or_else(|| StoreError::Backend {
            message: "the read-model store gave no outcome for the update".into(),
            source: None,
        })
    }
}

/// The updates of many events, applied by [`commit`](Self::commit) in one atomic step:
/// every update whose event was not applied before is applied and recorded, or (if any
/// write would fail) nothing is written at all.
///
/// Later updates see what earlier ones wrote: two `hincrby`s of one field add up, and an
/// update after a `del` starts from an empty hash.
#[derive(Debug)]
#[must_use = "nothing is written until `commit`"]
pub struct ReadModelBatch<'a> {
    model: &'a ReadModel,
    updates: Vec<ReadModelUpdate<'a>>,
}

impl<'a> ReadModelBatch<'a> {
    /// Adds the update of one more event (of this batch's read model).
    pub fn push(&mut self, update: ReadModelUpdate<'a>) {
        self.updates.push(update);
    }

    /// How many updates it holds.
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    /// Whether it holds no update.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Applies every update whose event was not applied before and records those events,
    /// atomically; returns one [`Applied`] per update, in the order they were pushed.
    ///
    /// An invalid update (a hash name starting with `_`, an update of another read model)
    /// or a write the store refuses (say, `hincrby` of a field that holds text) fails the
    /// whole batch with [`StoreError::InvalidRequest`], and nothing is written.
    pub async fn commit(self) -> Result<Vec<Applied>, StoreError> {
        if self.updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut updates = Vec::with_capacity(self.updates.len());
        for update in self.updates {
            if let Some(why) = update.invalid {
                return Err(StoreError::InvalidRequest(why));
            }
            if update.model.projection != self.model.projection {
                return Err(StoreError::InvalidRequest(format!(
                    "an update of read model `{}` pushed onto a batch of read model `{}`",
                    update.model.projection, self.model.projection
                )));
            }
            updates.push(update.writes);
        }
        let count = updates.len();
        let applied = self
            .model
            .store
            .commit(&self.model.projection, updates)
            .await?;
        if applied.len() != count {
            return Err(StoreError::Backend {
                message: format!(
                    "the read-model store gave {} outcomes for {count} updates",
                    applied.len()
                ),
                source: None,
            });
        }
        Ok(applied)
    }
}
