//! Conformance cases for the [`Repository`] on a backend: conflicts and snapshots (its
//! cache has cases of its own, in `cache_cases.rs`), and what the cases share: a counter
//! aggregate and a store wrapper that counts reads. Stamped by
//! [`conformance_tests!`](crate::conformance_tests) with the store cases.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::store::{
    AppendOptions, AppendResult, EventStore, ExpectedVersion, NewEvent, Position, ReadRange,
    Snapshot, SnapshotStore, StoredEvent, StreamId,
};
use crate::{Aggregate, Apply, AsOf, Handle, Repository, SnapshotPolicy};

#[derive(crate::Event, Debug, PartialEq)]
pub(super) struct Deposited {
    pub(super) amount: u64,
}

#[derive(crate::Event, Debug, PartialEq)]
pub(super) struct Withdrawn {
    amount: u64,
}

#[derive(crate::Event, Debug, PartialEq)]
pub(super) enum CounterEvent {
    Deposited(Deposited),
    Withdrawn(Withdrawn),
}

#[derive(crate::Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = CounterEvent, name = "counter")]
pub(super) struct Counter {
    pub(super) total: u64,
    pub(super) deposits: u64,
}

impl Apply<Deposited> for Counter {
    fn apply(&mut self, event: &Deposited) {
        self.total += event.amount;
        self.deposits += 1;
    }
}

impl Apply<Withdrawn> for Counter {
    fn apply(&mut self, event: &Withdrawn) {
        self.total -= event.amount;
    }
}

pub(super) struct Deposit(pub(super) u64);

impl Handle<Deposit> for Counter {
    type Error = std::convert::Infallible;
    fn handle(&self, command: &Deposit) -> Result<Vec<CounterEvent>, Self::Error> {
        Ok(vec![Deposited { amount: command.0 }.into()])
    }
}

pub(super) struct Withdraw(pub(super) u64);

#[derive(Debug, PartialEq)]
pub(super) struct Insufficient {
    pub(super) total: u64,
}

impl Handle<Withdraw> for Counter {
    type Error = Insufficient;
    fn handle(&self, command: &Withdraw) -> Result<Vec<CounterEvent>, Self::Error> {
        if command.0 > self.total {
            return Err(Insufficient { total: self.total });
        }
        Ok(vec![Withdrawn { amount: command.0 }.into()])
    }
}

/// The repository on this backend: concurrent writers, each through a repository of its
/// own (as separate processes), all land (conflicts are caught up and retried), snapshots
/// are taken by policy and loads agree with a full replay.
pub async fn repository_retries_conflicts_and_snapshots<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(store);
    let repository = || {
        Repository::<Counter, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(5))
            .with_max_attempts(100)
    };
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let repository = repository();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for i in 0..10 {
                    let done = repository
                        .execute("shared", &Deposit(task * 100 + i))
                        .await
                        .expect("execute");
                    conflicts += done.conflicts_retried;
                    tokio::task::yield_now().await;
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let repository = repository();
    let loaded = repository.load("shared").await.expect("load");
    assert_eq!(loaded.version, 40);
    assert_eq!(loaded.state.deposits, 40);
    let expected_total: u64 = (0..4).flat_map(|t| (0..10).map(move |i| t * 100 + i)).sum();
    assert_eq!(loaded.state.total, expected_total);
    let snapshot = repository
        .store()
        .load_snapshot(&repository.stream_id("shared"))
        .await
        .expect("load snapshot")
        .expect("a snapshot was taken");
    assert_eq!(snapshot.schema, Counter::SNAPSHOT_SCHEMA);
    assert!(
        snapshot.version >= 35,
        "latest snapshot is recent: {}",
        snapshot.version
    );
    let replayed = repository
        .load_as_of("shared", AsOf::Version(40))
        .await
        .expect("replay");
    assert_eq!(replayed.state, loaded.state);
    let events = repository
        .events("shared", &ReadRange::all())
        .await
        .expect("events");
    assert_eq!(events.len(), 40);
    assert!(events
        .iter()
        .all(|e| e.event_type == <Deposited as crate::NamedEvent>::NAME));
}

/// Forwards to a store, counting the reads a command makes (loads, tail reads and version
/// checks) and losing the replies of the next `lose_replies` appends (after writing them).
///
/// While a test holds `hold_appends`, appends wait for it (counted in `appends_waiting`).
pub(super) struct CountingStore<S> {
    pub(super) inner: S,
    pub(super) reads: AtomicUsize,
    pub(super) lose_replies: AtomicU32,
    pub(super) hold_appends: Arc<tokio::sync::Mutex<()>>,
    pub(super) appends_waiting: AtomicUsize,
}

impl<S> CountingStore<S> {
    pub(super) fn new(inner: S) -> Self {
        CountingStore {
            inner,
            reads: AtomicUsize::new(0),
            lose_replies: AtomicU32::new(0),
            hold_appends: Arc::default(),
            appends_waiting: AtomicUsize::new(0),
        }
    }

    pub(super) fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: SnapshotStore> EventStore for CountingStore<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        self.appends_waiting.fetch_add(1, Ordering::SeqCst);
        let held = self.hold_appends.lock().await;
        self.appends_waiting.fetch_sub(1, Ordering::SeqCst);
        drop(held);
        let written = self.inner.append(stream, expected, events, options).await?;
        let lose = self
            .lose_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(StoreError::Connection {
                message: "reply lost (test)".into(),
                source: None,
            });
        }
        Ok(written)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read();
        self.inner.read_stream(stream, range).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.read();
        self.inner.stream_version(stream).await
    }

    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_category(category, after, limit).await
    }

    async fn categories(&self) -> Result<Vec<crate::store::CategoryInfo>, StoreError> {
        self.inner.categories().await
    }

    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: crate::deletion::Deletion,
        metadata: crate::store::Metadata,
    ) -> Result<AppendResult, StoreError> {
        self.inner.delete_stream(stream, deletion, metadata).await
    }

    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::AggregateIds, StoreError> {
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
        self.read();
        self.inner
            .read_partition(category, partition, after, limit)
            .await
    }
}

#[async_trait]
impl<S: SnapshotStore> SnapshotStore for CountingStore<S> {
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }

    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
        schema: u64,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>), StoreError> {
        self.read();
        self.inner.load_snapshot_and_tail(stream, schema).await
    }
}
