//! Deleting aggregates ([`EventStore::delete_stream`]): soft and hard, loads and commands,
//! what the category and projections see, and a hard deletion racing appends.

use std::sync::Arc;

use super::projection_cases::{append, options, pairs, registered};
use super::repository_cases::{Counter, Deposit};
use crate::deletion::{Deletion, StreamDeleted, STREAM_DELETED};
use crate::store::{
    ExpectedVersion, Metadata, NewEvent, Position, ReadRange, SnapshotStore, StreamId,
};
use crate::{Repository, RepositoryError, SnapshotPolicy, StoreError};

fn audit() -> Metadata {
    Metadata::new()
        .with("requested_by", "admin")
        .with("reason", "account closed")
}

fn is_deleted<T: std::fmt::Debug>(result: &Result<T, StoreError>, hard: bool) -> bool {
    matches!(result, Err(StoreError::Deleted { hard: h, .. }) if *h == hard)
}

/// A soft deletion appends the marker (with its metadata) after the aggregate's events,
/// which stay in its stream and its category; loads, time travel to the marker and commands
/// say "deleted"; earlier versions still load; a repository that allows recreation starts
/// the aggregate again from its default; other aggregates are untouched.
pub async fn soft_deletion_keeps_the_events_and_refuses_loads_and_commands<S: SnapshotStore>(
    store: S,
) {
    let store = Arc::new(store);
    let counters = Repository::<Counter, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(2));
    counters.execute("a", &Deposit(5)).await.expect("deposit");
    counters
        .execute("a", &Deposit(7))
        .await
        .expect("deposit (snapshot)");
    counters.execute("b", &Deposit(1)).await.expect("elsewhere");
    let stream = counters.stream_id("a");
    let marked = store
        .delete_stream(&stream, Deletion::Soft, audit())
        .await
        .expect("soft delete");
    assert_eq!(marked.version, 3);

    let events = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(events.len(), 3, "the events stay");
    let marker = events[2]
        .clone()
        .decode::<StreamDeleted>()
        .expect("the marker");
    assert_eq!(
        marker.event,
        StreamDeleted {
            hard: false,
            deleted_version: 2
        }
    );
    assert_eq!(marker.metadata.extra["reason"], "account closed");
    let category = store
        .read_category("counter", Position::ZERO, 100)
        .await
        .expect("category");
    assert_eq!(category.len(), 4);
    assert_eq!(category[3].event_type, STREAM_DELETED);

    assert!(
        is_deleted(&counters.load("a").await, false),
        "a load says deleted"
    );
    assert!(is_deleted(
        &counters.load_as_of("a", crate::AsOf::Version(3)).await,
        false
    ));
    assert_eq!(
        counters
            .load_as_of("a", crate::AsOf::Version(2))
            .await
            .expect("before the deletion")
            .state
            .total,
        12
    );
    let command = counters.execute("a", &Deposit(1)).await;
    assert!(
        matches!(
            &command,
            Err(RepositoryError::Store(StoreError::Deleted {
                version: 3,
                ..
            }))
        ),
        "a command says deleted: {command:?}"
    );
    assert_eq!(counters.load("b").await.expect("b").state.total, 1);

    let recreating = Repository::<Counter, _>::new(store.clone()).with_recreation(true);
    let again = recreating
        .execute("a", &Deposit(2))
        .await
        .expect("recreated");
    assert_eq!(
        (again.state.total, again.version),
        (2, 4),
        "from its default, after the marker"
    );
    assert_eq!(counters.load("a").await.expect("recreated").state.total, 2);

    let nothing = store
        .delete_stream(
            &StreamId::new("counter", "nobody"),
            Deletion::Soft,
            Metadata::new(),
        )
        .await;
    assert!(
        matches!(nothing, Err(StoreError::InvalidRequest(_))),
        "{nothing:?}"
    );
}

/// A hard deletion removes every entry of the aggregate from its category, and its
/// snapshot, and leaves the marker as its only event (version 1): a tombstone that loads
/// and commands see, that a `NoStream` append cannot pass, and that projections read in
/// the category. Other aggregates are untouched.
pub async fn hard_deletion_leaves_only_a_tombstone<S: SnapshotStore>(store: S) {
    let store = Arc::new(store);
    let counters = Repository::<Counter, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(2));
    for amount in [5, 7, 9] {
        counters
            .execute("a", &Deposit(amount))
            .await
            .expect("deposit");
    }
    counters.execute("b", &Deposit(1)).await.expect("elsewhere");
    let stream = counters.stream_id("a");
    assert!(store
        .load_snapshot(&stream)
        .await
        .expect("snapshot")
        .is_some());
    let tombstone = store
        .delete_stream(&stream, Deletion::Hard, audit())
        .await
        .expect("hard delete");
    assert_eq!(tombstone.version, 1);

    let events = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(events.len(), 1, "only the tombstone: {events:?}");
    let marker = events[0]
        .clone()
        .decode::<StreamDeleted>()
        .expect("the marker");
    assert_eq!(
        marker.event,
        StreamDeleted {
            hard: true,
            deleted_version: 3
        }
    );
    assert_eq!(marker.metadata.extra["requested_by"], "admin");
    assert_eq!(store.stream_version(&stream).await.expect("version"), 1);
    assert!(store
        .load_snapshot(&stream)
        .await
        .expect("snapshot")
        .is_none());
    let mut of_a = Vec::new();
    for partition in 0..store.partitions("counter") {
        let events = store
            .read_partition("counter", partition, Position::ZERO, 100)
            .await
            .expect("partition");
        of_a.extend(events.into_iter().filter(|e| e.stream.id == "a"));
    }
    assert_eq!(of_a.len(), 1, "no entry of the aggregate but the tombstone");
    assert_eq!(of_a[0].event_type, STREAM_DELETED);

    assert!(is_deleted(&counters.load("a").await, true));
    let command = counters.execute("a", &Deposit(1)).await;
    assert!(matches!(
        command,
        Err(RepositoryError::Store(StoreError::Deleted {
            hard: true,
            ..
        }))
    ));
    let start = NewEvent::encode(
        &super::repository_cases::Deposited { amount: 1 },
        Metadata::new(),
    )
    .expect("encode");
    let restart = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![start],
            &Default::default(),
        )
        .await;
    assert!(
        matches!(&restart, Err(StoreError::Conflict(c)) if c.actual == 1),
        "no new history starts unnoticed: {restart:?}"
    );
    assert_eq!(counters.load("b").await.expect("b").state.total, 1);
    let categories = store.categories().await.expect("categories");
    assert_eq!(
        categories[0].events, 2,
        "b's event and the tombstone: {categories:?}"
    );
}

/// A hard deletion racing appends to the same aggregate is atomic: afterwards the
/// aggregate's history is the tombstone then the appends that came after it, every earlier
/// entry gone from the category.
pub async fn hard_deletion_under_concurrent_appends_is_atomic<S: SnapshotStore + 'static>(
    store: S,
) {
    let store = Arc::new(store);
    let stream = StreamId::new("counter", "hot");
    let deposit = || {
        NewEvent::encode(
            &super::repository_cases::Deposited { amount: 1 },
            Metadata::new(),
        )
        .expect("encode")
    };
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![deposit()],
            &Default::default(),
        )
        .await
        .expect("first");
    let appenders: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    let event = NewEvent::encode(
                        &super::repository_cases::Deposited { amount: 1 },
                        Metadata::new(),
                    )
                    .expect("encode");
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            vec![event],
                            &Default::default(),
                        )
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let deleted = store
        .delete_stream(&stream, Deletion::Hard, Metadata::new())
        .await
        .expect("delete among appends");
    for appender in appenders {
        appender.await.expect("appender");
    }
    let events = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    let tombstones: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event_type == STREAM_DELETED)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(
        tombstones,
        [0],
        "the history starts at the tombstone: {versions:?}"
    );
    assert_eq!(events[0].position, deleted.positions[0]);
    let mut in_category = 0;
    for partition in 0..store.partitions("counter") {
        let mut after = Position::ZERO;
        loop {
            let page = store
                .read_partition("counter", partition, after, 50)
                .await
                .expect("partition");
            let Some(last) = page.last() else {
                break;
            };
            after = last.position;
            in_category += page.iter().filter(|e| e.stream == stream).count();
        }
    }
    assert_eq!(
        in_category,
        events.len(),
        "no entry from before the tombstone is left"
    );
}

/// Records the deletion markers it is given, and the events of aggregates it sees.
struct Deletions {
    seen: std::sync::Mutex<Vec<(String, String)>>,
}

#[derive(crate::Event, Debug, Clone, PartialEq)]
enum DeletionInput {
    Registered(super::projection_cases::Registered),
    StreamDeleted(crate::deletion::StreamDeleted),
}

#[async_trait::async_trait]
impl crate::projection::Projection for Deletions {
    type Event = DeletionInput;
    type Error = StoreError;
    fn name(&self) -> &str {
        "deletions"
    }
    fn categories(&self) -> Vec<std::borrow::Cow<'static, str>> {
        vec!["user".into()]
    }
    async fn handle(&self, event: &crate::RecordedEvent<DeletionInput>) -> Result<(), StoreError> {
        let what = match &event.event {
            DeletionInput::Registered(r) => r.name.clone(),
            DeletionInput::StreamDeleted(d) => format!("deleted hard={}", d.hard),
        };
        self.seen
            .lock()
            .expect("seen")
            .push((event.stream.id.clone(), what));
        Ok(())
    }
}

/// Projections see deletions: the marker of a soft deletion after the aggregate's events,
/// and of a hard one instead of them (its removed entries are never delivered).
pub async fn projections_see_deletions<B: super::projection_cases::Backend>(backend: B) {
    use crate::deletion::Deletion;
    append(&backend, "user", "soft", &registered("Soft")).await;
    append(&backend, "user", "hard", &registered("Hard")).await;
    for (id, deletion) in [("soft", Deletion::Soft), ("hard", Deletion::Hard)] {
        backend
            .delete_stream(
                &crate::StreamId::new("user", id),
                deletion,
                crate::Metadata::new().with("reason", "test"),
            )
            .await
            .expect("delete");
    }
    let deletions = Deletions {
        seen: Default::default(),
    };
    let runner = crate::projection::ProjectionRunner::connect(&backend, deletions, options("c1"))
        .await
        .expect("runner");
    runner.run_once().await.expect("run");
    let mut seen = runner.projection().seen.lock().expect("seen").clone();
    seen.sort();
    assert_eq!(
        seen,
        pairs(&[
            ("hard", "deleted hard=true"),
            ("soft", "Soft"),
            ("soft", "deleted hard=false")
        ])
    );
}
