//! The repository: load an aggregate (snapshot + tail), run a command, append its events
//! with optimistic concurrency, retry on conflicts, snapshot by policy.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::aggregate::{Aggregate, Handle};
use crate::cache::{AggregateCache, CacheConfig, CacheStats};
use crate::codec::Fields;
use crate::deletion::STREAM_DELETED;
use crate::error::StoreError;
mod fold;
mod results;

pub use results::{AsOf, Executed, Loaded, RepositoryError};

use fold::{fold, restore};

use crate::store::{
    AppendOptions, ExpectedVersion, Metadata, NewEvent, Position, ReadRange, RecordedEvent,
    Snapshot, SnapshotStore, StreamId,
};

/// When the repository saves a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotPolicy {
    /// Never: every load replays the whole stream.
    #[default]
    Never,
    /// Whenever an append crosses a multiple of this many events.
    EveryNEvents(u64),
}

impl SnapshotPolicy {
    fn due(self, old_version: u64, new_version: u64) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::EveryNEvents(0) => false,
            SnapshotPolicy::EveryNEvents(n) => old_version / n != new_version / n,
        }
    }
}

/// Loads aggregates and runs commands against them.
///
/// ```
/// # use es_core::{Aggregate, Apply, Event, Handle, InMemoryStore, Repository, SnapshotPolicy};
/// # #[derive(Event)] struct Deposited { amount: u64 }
/// # #[derive(Event)] enum AccountEvent { Deposited(Deposited) }
/// # #[derive(Aggregate, Default, Debug)] #[aggregate(event = AccountEvent)] struct Account { balance: u64 }
/// # impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount; } }
/// # struct Deposit(u64);
/// # impl Handle<Deposit> for Account {
/// #     type Error = std::convert::Infallible;
/// #     fn handle(&self, c: &Deposit) -> Result<Vec<AccountEvent>, Self::Error> { Ok(vec![Deposited { amount: c.0 }.into()]) }
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let accounts = Repository::<Account, _>::new(InMemoryStore::new())
///     .with_snapshot_policy(SnapshotPolicy::EveryNEvents(100));
/// accounts.execute("acc-1", &Deposit(40)).await?;
/// let done = accounts.execute("acc-1", &Deposit(2)).await?;
/// assert_eq!((done.state.balance, done.version), (42, 2));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Repository<A, S> {
    store: S,
    snapshot_policy: SnapshotPolicy,
    max_attempts: u32,
    resends: u32,
    append_ids: AppendIds,
    cache: AggregateCache<A>,
    recreation: bool,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: SnapshotStore> Repository<A, S> {
    /// A repository over `store`: no snapshots, up to 10 attempts per command, lost append
    /// replies re-sent twice, up to [`CacheConfig::DEFAULT_AGGREGATES`] hot aggregates kept
    /// in memory.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            snapshot_policy: SnapshotPolicy::Never,
            max_attempts: 10,
            resends: 2,
            append_ids: AppendIds::new(),
            cache: AggregateCache::new(CacheConfig::default()),
            recreation: false,
            _aggregate: PhantomData,
        }
    }

    /// Keeps recently used aggregates in memory within `config`'s bounds, so a command on
    /// one of them runs with no read: it handles the cached state and appends expecting the
    /// cached version. A writer elsewhere that moved the aggregate on makes that append
    /// conflict; the repository then reads only the newer events and retries. A rejection
    /// (or a command that emits nothing) decided on cached state is confirmed against the
    /// stored version first. An error whose outcome is unknown forgets the aggregate.
    pub fn with_cache(mut self, config: CacheConfig<A>) -> Self {
        self.cache = AggregateCache::new(config);
        self
    }

    /// Keeps no aggregate in memory: every command loads its aggregate (snapshot + tail).
    pub fn without_cache(self) -> Self {
        self.with_cache(CacheConfig::aggregates(0))
    }

    /// Whether commands may recreate a deleted aggregate (no by default: they fail with
    /// [`StoreError::Deleted`]). With recreation, a command on a deleted aggregate starts
    /// from its `Default`, after the deletion marker.
    pub fn with_recreation(mut self, allow: bool) -> Self {
        self.recreation = allow;
        self
    }

    /// What the cache holds now, and its bounds.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Drops aggregate `id` from this repository's cache, waiting for a command on it to
    /// finish: its next command loads it from the store. Call it after erasing a data
    /// subject ([`Shredded::erase_subject`](crate::personal::Shredded::erase_subject)) whose
    /// aggregate a command may have cached, so no command decides on its personal data in
    /// the clear.
    pub async fn forget(&self, id: &str) {
        let _serialised = self.cache.lock(id).await;
        drop(self.cache.lend(id));
    }

    /// Saves snapshots by `policy`.
    pub fn with_snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshot_policy = policy;
        self
    }

    /// Tries a command at most `attempts` times (at least 1) when writers conflict.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Re-sends an append whose reply was lost (a [`StoreError::Connection`]) up to `resends`
    /// times, with the same append id, so it is never written twice (default 2; 0 returns
    /// the connection error at once).
    pub fn with_resends_on_lost_replies(mut self, resends: u32) -> Self {
        self.resends = resends;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream of aggregate `id`.
    pub fn stream_id(&self, id: &str) -> StreamId {
        StreamId::new(A::category(), id)
    }

    /// The current state: the latest snapshot of this layout (if any) plus the events after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stream = self.stream_id(id);
        let (snapshot, tail) = self
            .store
            .load_snapshot_and_tail(&stream, A::SNAPSHOT_SCHEMA)
            .await?;
        let mut loaded = match snapshot.map(|s| restore::<A>(&stream, s)) {
            Some(Some(loaded)) => loaded,
            Some(None) => {
                // The snapshot did not decode (and says so in the log): replay everything.
                let events = self.store.read_stream(&stream, &ReadRange::all()).await?;
                return fold(Loaded::empty(stream), events);
            }
            None => Loaded::empty(stream),
        };
        // A concurrent snapshot may have raced the tail read; skip what it already holds.
        let tail: Vec<_> = tail
            .into_iter()
            .filter(|e| e.version > loaded.version)
            .collect();
        loaded = fold(loaded, tail)?;
        Ok(loaded)
    }

    /// A past state, by version or by time (time travel). Replays from the start.
    pub async fn load_as_of(&self, id: &str, as_of: AsOf) -> Result<Loaded<A>, StoreError> {
        let stream = self.stream_id(id);
        let range = match as_of {
            AsOf::Version(v) => ReadRange::all().to_version(v),
            AsOf::Time(t) => ReadRange::all().until(t),
        };
        let events = self.store.read_stream(&stream, &range).await?;
        fold(Loaded::empty(stream), events)
    }

    /// The aggregate's decoded events in `range` (a deletion marker is not one of them:
    /// read the stream from the store to see it).
    pub async fn events(
        &self,
        id: &str,
        range: &ReadRange,
    ) -> Result<Vec<RecordedEvent<A::Event>>, StoreError> {
        let stream = self.stream_id(id);
        self.store
            .read_stream(&stream, range)
            .await?
            .into_iter()
            .filter(|e| e.event_type != STREAM_DELETED)
            .map(|e| e.decode())
            .collect()
    }

    /// Runs `command` against aggregate `id` (see [`execute_with`](Self::execute_with)).
    pub async fn execute<C>(
        &self,
        id: &str,
        command: &C,
    ) -> Result<Executed<A>, RepositoryError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        self.execute_with(id, command, Metadata::default()).await
    }

    /// Handles `command` and appends its events (with `metadata`) expecting the version the
    /// state is at. The state comes from the cache when it holds the aggregate, else from
    /// the store (snapshot + tail). On a conflict it reads only the events after the version
    /// it had, applies them, and handles the command again, up to the configured number of
    /// attempts. Saves a snapshot when the policy says so.
    ///
    /// Commands to one aggregate through one repository run one at a time, in the order
    /// they arrive, so they do not conflict with each other; conflicts come only from other
    /// repositories or processes.
    pub async fn execute_with<C>(
        &self,
        id: &str,
        command: &C,
        metadata: Metadata,
    ) -> Result<Executed<A>, RepositoryError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Sync,
    {
        let _serialised = self.cache.lock(id).await;
        // The aggregate is out of the cache until the command succeeds: an error, or a
        // cancelled call, leaves it forgotten.
        let mut lent = self.cache.lend(id);
        let cached = lent.take().and_then(|(state, version, position)| {
            // A caller may still hold this state (an earlier `Executed`): then a copy, if
            // the aggregate can make one, else a load.
            let state = Arc::try_unwrap(state).or_else(|shared| shared.try_clone().ok_or(()));
            Some(Loaded {
                stream: self.stream_id(id),
                state: state.ok()?,
                version,
                position,
            })
        });
        let (mut loaded, mut from_cache) = match cached {
            Some(loaded) => (loaded, true),
            None => (self.load_for_command(id).await?, false),
        };
        let mut conflicts = 0;
        let mut attempts = 0;
        loop {
            let decided = loaded.state.handle(command);
            let writes = matches!(&decided, Ok(events) if !events.is_empty());
            if from_cache && !writes {
                // Nothing to append means no version check: make sure the decision was
                // not made on a state that another writer has moved past.
                from_cache = false;
                let stored = self.store.stream_version(&loaded.stream).await?;
                if stored != loaded.version {
                    loaded = self
                        .for_command(&loaded.stream.clone(), self.refresh(loaded, stored).await)?;
                    continue;
                }
            }
            let events = match decided {
                Err(rejection) => {
                    lent.keep(Arc::new(loaded.state), loaded.version, loaded.position);
                    return Err(RepositoryError::Rejected(rejection));
                }
                Ok(events) => events,
            };
            if events.is_empty() {
                let state = Arc::new(loaded.state);
                lent.keep(state.clone(), loaded.version, loaded.position);
                return Ok(Executed {
                    state,
                    version: loaded.version,
                    stream: loaded.stream,
                    position: loaded.position,
                    positions: Vec::new(),
                    appended: 0,
                    conflicts_retried: conflicts,
                });
            }
            let new_events = events
                .iter()
                .map(|e| NewEvent::encode(e, metadata.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?;
            let options = AppendOptions::with_append_id(self.append_ids.next());
            let expected = ExpectedVersion::Exact(loaded.version);
            match self
                .append_resending_on_lost_replies(&loaded.stream, expected, new_events, &options)
                .await
            {
                Ok(written) => {
                    let old_version = loaded.version;
                    for event in &events {
                        loaded.state.apply_event(event);
                    }
                    loaded.version = written.version;
                    if let Some(last) = written.positions.last() {
                        loaded.position = *last;
                    }
                    if self.snapshot_policy.due(old_version, loaded.version) {
                        self.save_snapshot(&loaded).await;
                    }
                    let state = Arc::new(loaded.state);
                    lent.keep(state.clone(), loaded.version, loaded.position);
                    return Ok(Executed {
                        state,
                        version: loaded.version,
                        stream: loaded.stream,
                        position: loaded.position,
                        positions: written.positions,
                        appended: events.len(),
                        conflicts_retried: conflicts,
                    });
                }
                Err(StoreError::Conflict(conflict)) => {
                    conflicts += 1;
                    // A cached state that another writer moved past is not an attempt: the
                    // command has not yet been tried on the stored state.
                    if !from_cache {
                        attempts += 1;
                    }
                    if attempts >= self.max_attempts {
                        return Err(RepositoryError::TooManyConflicts {
                            attempts,
                            last: conflict,
                        });
                    }
                    tracing::debug!(%conflict, attempts, "catching up after a version conflict");
                    from_cache = false;
                    loaded = self.for_command(
                        &loaded.stream.clone(),
                        self.refresh(loaded, conflict.actual).await,
                    )?;
                }
                Err(other) => return Err(RepositoryError::Store(other)),
            }
        }
    }

    /// Brings `loaded` up to the store's version `stored`: reads only the newer events, or,
    /// if the store is behind it (a failover lost acknowledged appends, or the data was
    /// removed), loads the aggregate afresh.
    async fn refresh(&self, loaded: Loaded<A>, stored: u64) -> Result<Loaded<A>, StoreError> {
        if stored < loaded.version {
            tracing::warn!(
                stream = %loaded.stream,
                held = loaded.version,
                stored,
                "the store is behind the state this repository held; reloading"
            );
            return self.load(&loaded.stream.id).await;
        }
        self.catch_up(loaded).await
    }

    /// The state a command starts from: the current one, or, for a deleted aggregate when
    /// this repository allows recreation, its `Default` after the deletion marker.
    async fn load_for_command(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stream = self.stream_id(id);
        self.for_command(&stream, self.load(id).await)
    }

    fn for_command(
        &self,
        stream: &StreamId,
        loaded: Result<Loaded<A>, StoreError>,
    ) -> Result<Loaded<A>, StoreError> {
        match loaded {
            Err(StoreError::Deleted { version, .. }) if self.recreation => Ok(Loaded {
                stream: stream.clone(),
                state: A::default(),
                version,
                position: Position::ZERO,
            }),
            other => other,
        }
    }

    /// Reads the events after `loaded`'s version and applies them.
    async fn catch_up(&self, loaded: Loaded<A>) -> Result<Loaded<A>, StoreError> {
        let tail = self
            .store
            .read_stream(
                &loaded.stream,
                &ReadRange::all().from_version(loaded.version + 1),
            )
            .await?;
        fold(loaded, tail)
    }

    /// Appends; when the reply is lost (a connection error), sends the same append again with
    /// the same append id: a store that already wrote it returns the first result. A conflict
    /// on a re-send is reported as a connection error (the outcome is unknown), never caught
    /// up on and retried, so the command is never written twice.
    async fn append_resending_on_lost_replies(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<crate::store::AppendResult, StoreError> {
        if self.resends == 0 {
            return self.store.append(stream, expected, events, options).await;
        }
        let mut resent = 0;
        loop {
            match self
                .store
                .append(stream, expected, events.clone(), options)
                .await
            {
                Err(error @ StoreError::Connection { .. }) if resent < self.resends => {
                    resent += 1;
                    tracing::debug!(%stream, %error, resent, "append reply lost; resending");
                    tokio::time::sleep(RESEND_DELAY * resent).await;
                }
                // A conflict after a lost reply may be our own first append, which the store
                // no longer recognises by its id: catching up and handling the command again
                // could write it twice. Whether it was written is unknown; say so.
                Err(StoreError::Conflict(conflict)) if resent > 0 => {
                    return Err(StoreError::Connection {
                        message: format!(
                            "the reply to an append to {stream} was lost, and re-sending it met \
                             a conflict ({conflict}): it may or may not have been written; \
                             reload the aggregate before deciding again"
                        ),
                        source: None,
                    });
                }
                other => return other,
            }
        }
    }

    /// Saves a snapshot of `loaded` now. A failure is logged, not returned: the events are
    /// the truth and the next load replays them.
    pub async fn save_snapshot(&self, loaded: &Loaded<A>) {
        let mut fields = Fields::new();
        if let Err(error) = loaded.state.encode_snapshot(&mut fields) {
            tracing::warn!(stream = %loaded.stream, %error, "snapshot not saved");
            return;
        }
        let snapshot = Snapshot {
            version: loaded.version,
            position: loaded.position,
            schema: A::SNAPSHOT_SCHEMA,
            fields,
        };
        if let Err(error) = self.store.save_snapshot(&loaded.stream, &snapshot).await {
            tracing::warn!(stream = %loaded.stream, %error, "snapshot not saved");
        }
    }
}

/// How long to wait before re-sending an append whose reply was lost (times the attempt).
const RESEND_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Unique append ids: a per-repository random prefix and a counter.
struct AppendIds {
    prefix: u64,
    counter: AtomicU64,
}

impl AppendIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        AppendIds {
            prefix: hasher.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.prefix)
    }
}
