//! Category reads never skip an event a slower concurrent transaction commits later: many
//! appenders write one category at once while a reader pages through it with a cursor,
//! and the reader sees every event exactly once, in one order, the order a full read
//! gives afterwards.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use es_core::{
    AppendOptions, EventStore, ExpectedVersion, Metadata, NewEvent, Position, StoreError, StreamId,
};
use es_postgres::testing::{unique_schema, PostgresServer};
use es_postgres::PostgresEventStore;

const WRITERS: usize = 16;
const APPENDS_PER_WRITER: usize = 60;
/// Each append holds 1 to 3 events.
fn events_in(append: usize) -> usize {
    1 + append % 3
}

fn event(writer: usize, append: usize, n: usize) -> NewEvent {
    NewEvent {
        event_type: "Posted".into(),
        fields: [
            ("writer", writer.to_string()),
            ("append", append.to_string()),
            ("n", n.to_string()),
        ]
        .into_iter()
        .collect(),
        metadata: Metadata::default(),
    }
}

async fn store() -> PostgresEventStore {
    let server = PostgresServer::shared().unwrap_or_else(|e| panic!("{e}"));
    server
        .store(&unique_schema("category_order"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paging_reader_sees_every_concurrently_appended_event_once_in_one_order() {
    let store = store().await;
    let total: usize = WRITERS * (0..APPENDS_PER_WRITER).map(events_in).sum::<usize>();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for append in 0..APPENDS_PER_WRITER {
                    // Several writers share each aggregate, so appends also conflict-free
                    // interleave within streams (ExpectedVersion::Any).
                    let stream =
                        StreamId::new("ledger", format!("account-{}", (writer + append) % 5));
                    let events = (0..events_in(append))
                        .map(|n| event(writer, append, n))
                        .collect();
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            events,
                            &AppendOptions::default(),
                        )
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();

    // The reader pages while the writers write, and goes on until it has every event.
    let mut seen: Vec<(Position, String, u64)> = Vec::with_capacity(total);
    let mut after = Position::ZERO;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total {
        assert!(
            Instant::now() < deadline,
            "waited 60 s for the reader to see all {total} events; it saw {}",
            seen.len()
        );
        let page = store.read_category("ledger", after, 7).await.expect("read");
        if page.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        for event in page {
            assert!(event.position > after, "positions go forward");
            after = event.position;
            seen.push((event.position, event.stream.id.clone(), event.version));
        }
    }
    for writer in writers {
        writer.await.expect("writer task").expect("append");
    }

    let keys: HashSet<(String, u64)> = seen.iter().map(|(_, id, v)| (id.clone(), *v)).collect();
    assert_eq!(keys.len(), total, "each event seen exactly once");
    let again = store
        .read_category("ledger", Position::ZERO, total + 10)
        .await
        .expect("full read");
    let full: Vec<(Position, String, u64)> = again
        .into_iter()
        .map(|e| (e.position, e.stream.id, e.version))
        .collect();
    assert_eq!(
        seen, full,
        "the paging reader saw the one order a full read gives"
    );
    let mut versions: std::collections::HashMap<String, u64> = Default::default();
    for (_, id, version) in &full {
        let last = versions.entry(id.clone()).or_default();
        assert_eq!(
            *version,
            *last + 1,
            "versions of {id} are contiguous in category order"
        );
        *last = *version;
    }
}
