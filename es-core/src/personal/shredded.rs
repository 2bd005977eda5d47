//! [`Shredded`]: a store around any backend that seals personal values on their way in and
//! opens them on every way out (reads, snapshots, projection deliveries), with the keys of
//! a [`KeyStore`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::crypto::{self, SubjectKey, SEALED, TO_SEAL};
use super::{KeyStore, SubjectErased, ERASURES, SUBJECT_FIELD};
use crate::codec::{FieldError, Fields};
use crate::error::{DecodeError, StoreError};
use crate::projection::{
    Capabilities, DeadLetter, Delivery, ProjectionBackend, ProjectionOptions, ProjectionSource,
    ProjectionStatus, SourceStream, StreamBatch,
};
use crate::read_model::ReadModelStore;
use crate::store::{
    AggregateIds, AppendOptions, AppendResult, CategoryInfo, EventStore, ExpectedVersion, Metadata,
    NewEvent, Position, ReadRange, Snapshot, SnapshotStore, StoredEvent, StreamId,
};

/// A store that keeps personal fields encrypted, around `S` (any backend), with the
/// subjects' keys in `K`. Use it wherever the inner store would be used: repositories,
/// projections (it is a [`ProjectionBackend`] when `S` is), the inspector, the pre-deploy
/// check.
///
/// ```
/// use es_core::personal::{InMemoryKeys, Shredded};
/// use es_core::InMemoryStore;
///
/// let store = Shredded::new(InMemoryStore::new(), InMemoryKeys::new());
/// ```
pub struct Shredded<S, K> {
    inner: S,
    keys: Arc<K>,
    /// Writing keys fetched in the last [`WRITING_KEY_TTL`], so an append does not wait for
    /// the key store each time.
    writing: Arc<WritingKeys>,
}

/// How long a writing key is used without asking the key store again. An erasure in this
/// process drops it at once; one in another process is seen within this time (data sealed
/// meanwhile with the erased key reads as erased, like the subject's other data).
pub const WRITING_KEY_TTL: Duration = Duration::from_secs(1);

/// The writing keys of recently written subjects, each with when it was fetched.
type WritingKeys = quick_cache::sync::Cache<String, (SubjectKey, Instant)>;

/// How many subjects' writing keys are kept.
const WRITING_KEYS: usize = 10_000;

impl<S: Clone, K> Clone for Shredded<S, K> {
    fn clone(&self) -> Self {
        Shredded {
            inner: self.inner.clone(),
            keys: self.keys.clone(),
            writing: self.writing.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K> std::fmt::Debug for Shredded<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shredded")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, K: KeyStore> Shredded<S, K> {
    /// `inner`, with personal fields sealed with the keys in `keys`.
    pub fn new(inner: S, keys: K) -> Self {
        Shredded {
            inner,
            keys: Arc::new(keys),
            writing: Arc::new(WritingKeys::new(WRITING_KEYS)),
        }
    }

    /// The store inside, which holds the sealed values as they are stored.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The key store.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// Erases data subject `subject`: deletes its key, so its personal fields read as
    /// erased everywhere from now on, then records the erasure as a [`SubjectErased`]
    /// event in stream `subject` of category [`ERASURES`] with `metadata` (say who asked
    /// and why: the event's time says when). Returns whether the subject had a key. Run
    /// it again if recording fails: the key stays erased.
    pub async fn erase_subject(
        &self,
        subject: &str,
        metadata: Metadata,
    ) -> Result<bool, StoreError> {
        let erased = self.keys.erase(subject).await?;
        self.writing.remove(subject);
        let record = NewEvent::encode(
            &SubjectErased {
                subject: subject.to_owned(),
            },
            metadata,
        )?;
        self.inner
            .append(
                &StreamId::new(ERASURES, subject),
                ExpectedVersion::Any,
                vec![record],
                &AppendOptions::default(),
            )
            .await?;
        Ok(erased)
    }

    /// Seals the values marked to be sealed, with the subject's writing key.
    async fn seal(&self, default_subject: &str, fields: Fields) -> Result<Fields, StoreError> {
        if !fields.iter().any(|(_, value)| value.starts_with(TO_SEAL)) {
            return Ok(fields);
        }
        let subject = subject_of(&fields, default_subject);
        let key = match self.writing.get(&subject) {
            Some((key, fetched)) if fetched.elapsed() < WRITING_KEY_TTL => key,
            _ => {
                let key = self
                    .keys
                    .writing_key(&subject, SubjectKey::generate(1))
                    .await?;
                self.writing
                    .insert(subject.clone(), (key.clone(), Instant::now()));
                key
            }
        };
        crypto::seal_fields(&key, &subject, fields).map_err(|error| {
            StoreError::InvalidRequest(format!(
                "{error}, for subject {subject:?}; nothing was written"
            ))
        })
    }
}

/// An event's subject: its [`SUBJECT_FIELD`], else `default` (the aggregate id).
fn subject_of(fields: &Fields, default: &str) -> String {
    fields.get(SUBJECT_FIELD).map_or_else(
        || default.to_owned(),
        |raw| String::from_utf8_lossy(raw).into_owned(),
    )
}

/// Opens sealed values with the keys of a [`KeyStore`]: what every read path of
/// [`Shredded`] and its projection sources share.
struct Opener<K> {
    keys: Arc<K>,
}

/// Something holding fields to open: an event, or a snapshot.
struct Sealed<'a> {
    fields: &'a mut Fields,
    subject: String,
    /// For errors: where it is kept, its entry and its type.
    location: String,
    entry: String,
    what: String,
}

impl<K: KeyStore> Opener<K> {
    /// Opens every sealed value of `items` in place: with its subject's key of its
    /// generation, or as erased when the subject has no such key. One key lookup for all.
    /// Per item, the error of a value its key does not open.
    async fn open(&self, items: Vec<Sealed<'_>>) -> Result<Vec<Option<StoreError>>, StoreError> {
        let holds_sealed = |fields: &Fields| fields.iter().any(|(_, v)| v.starts_with(SEALED));
        let subjects: HashSet<&str> = items
            .iter()
            .filter(|item| holds_sealed(item.fields))
            .map(|item| item.subject.as_str())
            .collect();
        if subjects.is_empty() {
            return Ok(items.iter().map(|_| None).collect());
        }
        let subjects: Vec<&str> = subjects.into_iter().collect();
        let keys = self.keys.keys(&subjects).await?;
        Ok(items
            .into_iter()
            .map(|item| open_fields(&keys, item).err())
            .collect())
    }
}

fn open_fields(keys: &HashMap<String, SubjectKey>, item: Sealed<'_>) -> Result<(), StoreError> {
    // An event without sealed values stays as it is, not rebuilt.
    if !item.fields.iter().any(|(_, v)| v.starts_with(SEALED)) {
        return Ok(());
    }
    let fields = std::mem::take(item.fields);
    match crypto::open_fields(keys.get(&item.subject), &item.subject, fields) {
        Ok(opened) => {
            *item.fields = opened;
            Ok(())
        }
        Err((name, error)) => {
            let source = DecodeError::field(
                &item.what,
                &name,
                FieldError::Invalid(format!(
                    "cannot decrypt the personal value of subject {:?}: {error}",
                    item.subject
                )),
            );
            Err(StoreError::decode(item.location, item.entry, source))
        }
    }
}

impl<K: KeyStore> Opener<K> {
    /// Opens the events in place; the first error of any.
    async fn events(&self, events: &mut [StoredEvent]) -> Result<(), StoreError> {
        let items = events.iter_mut().map(sealed_event).collect();
        match self.open(items).await?.into_iter().flatten().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Opens the delivered events in place; one that cannot be opened is delivered as its
    /// error (and dead-lettered with it).
    async fn deliveries(&self, deliveries: &mut [Delivery]) -> Result<(), StoreError> {
        let mut events: Vec<(usize, &mut StoredEvent)> = Vec::new();
        for (index, delivery) in deliveries.iter_mut().enumerate() {
            if let Some(Ok(event)) = &mut delivery.event {
                events.push((index, event));
            }
        }
        let indexes: Vec<usize> = events.iter().map(|(index, _)| *index).collect();
        let items = events
            .into_iter()
            .map(|(_, event)| sealed_event(event))
            .collect();
        let errors = self.open(items).await?;
        for (index, error) in indexes.into_iter().zip(errors) {
            if let Some(error) = error {
                deliveries[index].event = Some(Err(error));
            }
        }
        Ok(())
    }

    /// Opens a snapshot of `stream` in place.
    async fn snapshot(&self, stream: &StreamId, snapshot: &mut Snapshot) -> Result<(), StoreError> {
        let item = Sealed {
            fields: &mut snapshot.fields,
            subject: stream.id.clone(),
            location: format!("snapshot of {stream}"),
            entry: format!("version {}", snapshot.version),
            what: format!("snapshot of {}", stream.category),
        };
        match self.open(vec![item]).await?.into_iter().flatten().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn sealed_event(event: &mut StoredEvent) -> Sealed<'_> {
    Sealed {
        subject: subject_of(&event.event, &event.stream.id),
        location: event.location.to_string(),
        entry: event.position.to_string(),
        what: event.event_type.clone(),
        fields: &mut event.event,
    }
}

impl<S, K: KeyStore> Shredded<S, K> {
    fn opener(&self) -> Opener<K> {
        Opener {
            keys: self.keys.clone(),
        }
    }
}

#[async_trait]
impl<S: EventStore, K: KeyStore> EventStore for Shredded<S, K> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        let mut sealed = Vec::with_capacity(events.len());
        for mut event in events {
            event.fields = self.seal(&stream.id, event.fields).await?;
            sealed.push(event);
        }
        self.inner.append(stream, expected, sealed, options).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = self.inner.read_stream(stream, range).await?;
        self.opener().events(&mut events).await?;
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = self.inner.read_category(category, after, limit).await?;
        self.opener().events(&mut events).await?;
        Ok(events)
    }

    async fn categories(&self) -> Result<Vec<CategoryInfo>, StoreError> {
        self.inner.categories().await
    }

    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: crate::deletion::Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError> {
        self.inner.delete_stream(stream, deletion, metadata).await
    }

    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError> {
        self.inner.aggregate_ids(category, after, limit).await
    }

    fn partitions(&self, category: &str) -> u32 {
        self.inner.partitions(category)
    }

    async fn read_partition(
        &self,
        category: &str,
        partition: u32,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = self
            .inner
            .read_partition(category, partition, after, limit)
            .await?;
        self.opener().events(&mut events).await?;
        Ok(events)
    }
}

#[async_trait]
impl<S: SnapshotStore, K: KeyStore> SnapshotStore for Shredded<S, K> {
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        let sealed = Snapshot {
            fields: self.seal(&stream.id, snapshot.fields.clone()).await?,
            ..snapshot.clone()
        };
        self.inner.save_snapshot(stream, &sealed).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let mut snapshot = self.inner.load_snapshot(stream).await?;
        if let Some(snapshot) = &mut snapshot {
            self.opener().snapshot(stream, snapshot).await?;
        }
        Ok(snapshot)
    }

    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
        schema: u64,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>), StoreError> {
        let (mut snapshot, mut tail) = self.inner.load_snapshot_and_tail(stream, schema).await?;
        if let Some(snapshot) = &mut snapshot {
            self.opener().snapshot(stream, snapshot).await?;
        }
        self.opener().events(&mut tail).await?;
        Ok((snapshot, tail))
    }
}

#[async_trait]
impl<S: ProjectionBackend, K: KeyStore> ProjectionBackend for Shredded<S, K> {
    async fn projection_source(
        &self,
        name: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Result<Box<dyn ProjectionSource>, StoreError> {
        let inner = self
            .inner
            .projection_source(name, categories, options)
            .await?;
        Ok(Box::new(ShreddedSource {
            inner,
            opener: Box::new(self.opener()),
        }))
    }

    fn read_model_store(&self) -> Arc<dyn ReadModelStore> {
        self.inner.read_model_store()
    }
}

/// A projection source of a [`Shredded`] store: the backend's, with every delivered event
/// opened.
pub struct ShreddedSource {
    inner: Box<dyn ProjectionSource>,
    opener: Box<dyn OpenDeliveries>,
}

/// [`Opener`] of any key store, for [`ShreddedSource`].
#[async_trait]
trait OpenDeliveries: Send + Sync + 'static {
    async fn open(&self, deliveries: &mut [Delivery]) -> Result<(), StoreError>;
}

#[async_trait]
impl<K: KeyStore> OpenDeliveries for Opener<K> {
    async fn open(&self, deliveries: &mut [Delivery]) -> Result<(), StoreError> {
        self.deliveries(deliveries).await
    }
}

#[async_trait]
impl ProjectionSource for ShreddedSource {
    fn streams(&self) -> &[SourceStream] {
        self.inner.streams()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        self.inner.prepare().await
    }

    async fn read(&self, block: Option<Duration>) -> Result<Vec<StreamBatch>, StoreError> {
        let mut batches = self.inner.read(block).await?;
        for batch in &mut batches {
            self.opener.open(&mut batch.deliveries).await?;
        }
        Ok(batches)
    }

    async fn reclaim(
        &self,
        stream: usize,
        idle: Duration,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        let (mut deliveries, cursor) = self.inner.reclaim(stream, idle, cursor).await?;
        self.opener.open(&mut deliveries).await?;
        Ok((deliveries, cursor))
    }

    async fn acknowledge(&self, stream: usize, positions: &[Position]) -> Result<(), StoreError> {
        self.inner.acknowledge(stream, positions).await
    }

    async fn record_failure(
        &self,
        stream: usize,
        position: Position,
        error: &str,
    ) -> Result<(), StoreError> {
        self.inner.record_failure(stream, position, error).await
    }

    async fn clear_failures(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        self.inner.clear_failures(stream, positions).await
    }

    async fn dead_letter(
        &self,
        stream: usize,
        position: Position,
        delivered: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.inner
            .dead_letter(stream, position, delivered, error)
            .await
    }

    async fn upkeep(&self) -> Result<(), StoreError> {
        self.inner.upkeep().await
    }

    async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.inner.status().await
    }

    async fn watermarks(&self) -> Result<HashMap<String, Position>, StoreError> {
        self.inner.watermarks().await
    }

    async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(category).await
    }

    async fn dead_lettered(&self, stream: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut deliveries = self.inner.dead_lettered(stream).await?;
        self.opener.open(&mut deliveries).await?;
        Ok(deliveries)
    }

    async fn forget_dead_letters(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        self.inner.forget_dead_letters(stream, positions).await
    }

    async fn reset(&self) -> Result<(), StoreError> {
        self.inner.reset().await
    }
}
