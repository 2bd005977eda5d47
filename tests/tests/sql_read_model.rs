//! SQL tables as read models, fed by any backend: a projection over Redis Streams (and one
//! over memory) keeps a table of balances in PostgreSQL, each event applied exactly once
//! under redelivery; `rebuild` truncates the table and the replay fills it again.

use std::borrow::Cow;

use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{
    AppendOptions, Event, EventStore, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent,
    StoreError, StreamId,
};
use es_postgres::testing::{unique_schema, PostgresServer};
use es_postgres::{PostgresEventStore, SqlReadModel};

#[derive(Event, Debug, Clone)]
struct Deposited {
    cents: i64,
}

#[derive(Event, Debug, Clone)]
enum AccountEvent {
    Deposited(Deposited),
}

/// Balances per account in the table `balances` of its own schema.
struct Balances {
    model: SqlReadModel,
    table: String,
}

impl Balances {
    async fn new(pg: &PostgresEventStore) -> Self {
        let table = format!("{}.balances", pg.quoted_schema());
        pg.execute_batch(&format!(
            "CREATE TABLE {table} (account text PRIMARY KEY, cents bigint NOT NULL, deposits int NOT NULL)"
        ))
        .await
        .expect("create table");
        Balances {
            model: SqlReadModel::new(pg, "balances", [table.clone()]),
            table,
        }
    }

    async fn rows(&self, pg: &PostgresEventStore) -> Vec<(String, i64, i32)> {
        let client = pg.pool().get().await.expect("connection");
        client
            .query(
                &format!(
                    "SELECT account, cents, deposits FROM {} ORDER BY account",
                    self.table
                ),
                &[],
            )
            .await
            .expect("select")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    }
}

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = AccountEvent;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.model.projection()
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["account".into()]
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(self.model.as_read_model())
    }
    async fn handle(&self, event: &RecordedEvent<AccountEvent>) -> Result<(), StoreError> {
        let AccountEvent::Deposited(deposit) = &event.event;
        if let Some(update) = self.model.update(event).await? {
            update
                .execute(
                    &format!(
                        "INSERT INTO {t} VALUES ($1, $2, 1) ON CONFLICT (account) \
                         DO UPDATE SET cents = {t}.cents + $2, deposits = {t}.deposits + 1",
                        t = self.table
                    ),
                    &[&event.stream.id, &deposit.cents],
                )
                .await?;
            update.commit().await?;
        }
        Ok(())
    }
}

async fn deposit<S: EventStore>(store: &S, account: &str, cents: i64) {
    let new = NewEvent::encode(
        &AccountEvent::Deposited(Deposited { cents }),
        Metadata::default(),
    )
    .expect("encode");
    store
        .append(
            &StreamId::new("account", account),
            ExpectedVersion::Any,
            vec![new],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
}

async fn postgres() -> PostgresEventStore {
    PostgresServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&unique_schema("sql_read_model"))
        .await
        .expect("connect")
}

/// The whole behaviour, with events from `events`.
async fn balances_are_applied_once_and_rebuilt<B: EventStore + ProjectionBackend>(events: B) {
    let pg = postgres().await;
    let balances = Balances::new(&pg).await;
    for (account, cents) in [("a", 100), ("b", 5), ("a", 20), ("c", 7), ("b", -1)] {
        deposit(&events, account, cents).await;
    }
    let runner = ProjectionRunner::connect(&events, balances, ProjectionOptions::new("c1"))
        .await
        .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(stats.handled, 5);
    let balances = runner.projection();
    let expected = vec![
        ("a".to_owned(), 120, 2),
        ("b".to_owned(), 4, 2),
        ("c".to_owned(), 7, 1),
    ];
    assert_eq!(balances.rows(&pg).await, expected);
    assert_eq!(
        balances
            .model
            .applied_count("account")
            .await
            .expect("count"),
        5
    );

    // At-least-once delivery: the same events handled again change nothing.
    let delivered = events
        .read_category("account", Position::ZERO, 100)
        .await
        .expect("read");
    for stored in delivered {
        let event = stored.decode::<AccountEvent>().expect("decode");
        balances.handle(&event).await.expect("handle again");
        assert!(balances
            .model
            .update(&event)
            .await
            .expect("update")
            .is_none());
    }
    assert_eq!(
        balances.rows(&pg).await,
        expected,
        "redelivery applies nothing"
    );

    // An update dropped without a commit leaves neither rows nor the record.
    deposit(&events, "d", 1).await;
    let fresh = events
        .read_category("account", Position::ZERO, 100)
        .await
        .expect("read")
        .pop()
        .expect("the new deposit")
        .decode::<AccountEvent>()
        .expect("decode");
    {
        let update = balances
            .model
            .update(&fresh)
            .await
            .expect("update")
            .expect("new");
        update
            .execute(
                &format!("INSERT INTO {} VALUES ('d', 1, 1)", balances.table),
                &[],
            )
            .await
            .expect("insert");
    }
    assert_eq!(
        balances.rows(&pg).await,
        expected,
        "a dropped update is rolled back"
    );
    assert_eq!(
        balances
            .model
            .applied_count("account")
            .await
            .expect("count"),
        5
    );

    // Rebuild truncates the table and the record; the replay fills both again.
    runner.rebuild().await.expect("rebuild");
    assert!(runner.projection().rows(&pg).await.is_empty());
    assert_eq!(
        runner
            .projection()
            .model
            .applied_count("account")
            .await
            .expect("count"),
        0
    );
    let stats = runner.run_once().await.expect("replay");
    assert_eq!(stats.handled, 6);
    let mut replayed = expected.clone();
    replayed.push(("d".to_owned(), 1, 1));
    assert_eq!(runner.projection().rows(&pg).await, replayed);
}

/// The seed's CQRS split: events on Redis Streams, the read model in PostgreSQL tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_redis_feed_sql_tables_exactly_once() {
    let redis = es_redis::testing::RedisServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&es_redis::testing::unique_namespace("sql-read-model"))
        .await
        .expect("redis");
    balances_are_applied_once_and_rebuilt(redis).await;
}

/// The same projection over the in-memory backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_memory_feed_sql_tables_exactly_once() {
    balances_are_applied_once_and_rebuilt(es_core::InMemoryStore::new()).await;
}

/// And over PostgreSQL itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_postgres_feed_sql_tables_exactly_once() {
    balances_are_applied_once_and_rebuilt(postgres().await).await;
}
