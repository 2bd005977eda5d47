//! A projection blocked waiting for events wakes when an append commits (`LISTEN`/`NOTIFY`),
//! not at its next poll: with a poll interval of two minutes, new events still arrive within
//! seconds.

use std::borrow::Cow;
use std::time::Duration;

use es_core::projection::{Projection, ProjectionOptions, ProjectionRunner};
use es_core::{
    AppendOptions, EventStore, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent,
    StoreError, StreamId,
};
use es_postgres::testing::{unique_schema, PostgresServer};
use es_postgres::PostgresEventStore;

#[derive(es_core::Event, Debug)]
struct Pinged {
    n: u32,
}

struct Pings;

#[async_trait::async_trait]
impl Projection for Pings {
    type Event = Pinged;
    type Error = StoreError;
    fn name(&self) -> &str {
        "pings"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["ping".into()]
    }
    async fn handle(&self, _: &RecordedEvent<Pinged>) -> Result<(), StoreError> {
        Ok(())
    }
}

async fn ping(store: &PostgresEventStore, n: u32) -> Position {
    let event = NewEvent::encode(&Pinged { n }, Metadata::default()).expect("encode");
    store
        .append(
            &StreamId::new("ping", "1"),
            ExpectedVersion::Any,
            vec![event],
            &AppendOptions::default(),
        )
        .await
        .expect("append")
        .positions[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_projection_wakes_when_an_append_commits() {
    let store = PostgresServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&unique_schema("wakeups"))
        .await
        .expect("connect");
    let options = ProjectionOptions::new("c1")
        .block(Duration::from_secs(120))
        .poll_interval(Duration::from_secs(120))
        .claim_interval(Duration::from_secs(120));
    let running = ProjectionRunner::connect(&store, Pings, options)
        .await
        .expect("runner")
        .spawn();
    let mut progress = running.progress();
    // The first event may be read by the runner's first read; the second arrives while the
    // runner waits in a read that, by polling alone, would wake in two minutes.
    for n in 0..2 {
        let position = ping(&store, n).await;
        progress
            .wait_for("ping", position, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("event {n} was not handled within 5 s of its append: {e}"));
    }
    running.abort().await;
}
