//! Group commit: appends made at once share calls of the append function (one transaction
//! each), yet each keeps its own outcome: conflicts write nothing and fail alone, the
//! others land; calls that write several categories lock them in one order and never
//! deadlock.

use std::collections::HashMap;

use es_core::{
    AppendOptions, EventStore, ExpectedVersion, Metadata, NewEvent, Position, StoreError, StreamId,
};
use es_postgres::testing::{unique_schema, PostgresServer};
use es_postgres::PostgresEventStore;

fn event(n: usize) -> NewEvent {
    NewEvent {
        event_type: "Counted".into(),
        fields: [("n", n.to_string())].into_iter().collect(),
        metadata: Metadata::default(),
    }
}

async fn store() -> PostgresEventStore {
    PostgresServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&unique_schema("group_commit"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_sent_together_keep_their_own_outcomes() {
    let store = store().await;
    // 40 aggregates at version 1.
    for id in 0..40 {
        store
            .append(
                &StreamId::new("counter", id.to_string()),
                ExpectedVersion::NoStream,
                vec![event(0)],
                &AppendOptions::default(),
            )
            .await
            .expect("first event");
    }
    // At once: the even ones expect the right version, the odd ones a wrong one.
    let tasks: Vec<_> = (0..40)
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                let expected = if id % 2 == 0 { 1 } else { 7 };
                store
                    .append(
                        &StreamId::new("counter", id.to_string()),
                        ExpectedVersion::Exact(expected),
                        vec![event(1), event(2)],
                        &AppendOptions::default(),
                    )
                    .await
            })
        })
        .collect();
    for (id, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.expect("task");
        let stream = StreamId::new("counter", id.to_string());
        if id % 2 == 0 {
            let written = outcome.unwrap_or_else(|e| panic!("{stream}: {e}"));
            assert_eq!((written.version, written.positions.len()), (3, 2));
        } else {
            match outcome {
                Err(StoreError::Conflict(conflict)) => assert_eq!(conflict.actual, 1),
                other => panic!("{stream}: expected a conflict, got {other:?}"),
            }
        }
        let version = store.stream_version(&stream).await.expect("version");
        assert_eq!(version, if id % 2 == 0 { 3 } else { 1 }, "{stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_across_categories_never_deadlock_and_lose_nothing() {
    let store = store().await;
    let categories = ["alpha", "beta", "gamma"];
    let tasks: Vec<_> = (0..60)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    // Each task walks the categories in its own order.
                    let category = categories[(task + n) % 3];
                    store
                        .append(
                            &StreamId::new(category, format!("t{task}")),
                            ExpectedVersion::Any,
                            vec![event(n)],
                            &AppendOptions::default(),
                        )
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("appends");
    }
    let mut total = 0;
    for category in categories {
        let events = store
            .read_category(category, Position::ZERO, 10_000)
            .await
            .expect("read");
        let mut versions: HashMap<String, u64> = HashMap::new();
        for event in &events {
            let last = versions.entry(event.stream.id.clone()).or_default();
            assert_eq!(event.version, *last + 1, "{category}/{}", event.stream.id);
            *last = event.version;
        }
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        total += events.len();
    }
    assert_eq!(total, 600);
}

/// Text PostgreSQL cannot store (a NUL) is refused before the append joins a group, so the
/// appends sent with it still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_postgres_cannot_store_fails_alone() {
    let store = store().await;
    let tasks: Vec<_> = (0..20)
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                let aggregate = if id == 7 {
                    "bad\0id".to_owned()
                } else {
                    id.to_string()
                };
                let mut events = vec![event(id)];
                if id == 11 {
                    events[0].metadata = Metadata::new().with("tenant", "a\0b");
                }
                store
                    .append(
                        &StreamId::new("counter", aggregate),
                        ExpectedVersion::NoStream,
                        events,
                        &AppendOptions::default(),
                    )
                    .await
            })
        })
        .collect();
    for (id, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.expect("task");
        if id == 7 || id == 11 {
            assert!(
                matches!(outcome, Err(StoreError::InvalidRequest(ref why)) if why.contains("NUL")),
                "{id}: {outcome:?}"
            );
        } else {
            assert_eq!(outcome.expect("append").version, 1, "{id}");
        }
    }
}
