//! An erasure reaches SQL read models too: a projection over a `Shredded` Redis store keeps
//! a table of names in PostgreSQL, drops a subject's row when told of its erasure, and a
//! rebuild leaves no row for it.

use std::borrow::Cow;

use es_core::personal::{Personal, Shredded, SubjectErased, ERASURES};
use es_core::projection::{Projection, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{
    Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreError, StreamId,
};
use es_postgres::testing::{unique_schema, PostgresServer};
use es_postgres::{PostgresEventStore, SqlReadModel};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::RedisKeys;

#[derive(Event, Debug, Clone)]
struct Registered {
    #[event(personal)]
    name: Personal<String>,
}

#[derive(Event, Debug, Clone)]
enum Input {
    Registered(Registered),
    SubjectErased(SubjectErased),
}

/// Names per user in table `names`.
struct Names {
    model: SqlReadModel,
    table: String,
}

#[async_trait::async_trait]
impl Projection for Names {
    type Event = Input;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.model.projection()
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into(), ERASURES.into()]
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(self.model.as_read_model())
    }
    async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), StoreError> {
        let Some(update) = self.model.update(event).await? else {
            return Ok(());
        };
        let t = &self.table;
        match &event.event {
            // An erased event writes no row, whichever category a replay reads first.
            Input::Registered(r) => {
                if let Some(name) = r.name.known() {
                    update
                        .execute(
                            &format!("INSERT INTO {t} VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET name = $2"),
                            &[&event.stream.id, name],
                        )
                        .await?;
                }
            }
            Input::SubjectErased(erased) => {
                update
                    .execute(
                        &format!("DELETE FROM {t} WHERE user_id = $1"),
                        &[&erased.subject],
                    )
                    .await?;
            }
        }
        update.commit().await?;
        Ok(())
    }
}

async fn rows(pg: &PostgresEventStore, table: &str) -> Vec<(String, String)> {
    let client = pg.pool().get().await.expect("connection");
    client
        .query(
            &format!("SELECT user_id, name FROM {table} ORDER BY user_id"),
            &[],
        )
        .await
        .expect("select")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_drops_the_subjects_rows_from_sql_tables() {
    let redis = RedisServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&unique_namespace("sql-erasure"))
        .await
        .expect("redis");
    let store = Shredded::new(redis.clone(), RedisKeys::new(&redis));
    let pg = PostgresServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&unique_schema("sql_erasure"))
        .await
        .expect("postgres");
    let table = format!("{}.names", pg.quoted_schema());
    pg.execute_batch(&format!(
        "CREATE TABLE {table} (user_id text PRIMARY KEY, name text NOT NULL)"
    ))
    .await
    .expect("create table");
    for (id, name) in [("duffy", "Duffy"), ("bugs", "Bugs")] {
        let event = Registered {
            name: Personal::Known(name.into()),
        };
        let new = NewEvent::encode(&event, Metadata::new()).expect("encode");
        store
            .append(
                &StreamId::new("user", id),
                ExpectedVersion::NoStream,
                vec![new],
                &Default::default(),
            )
            .await
            .expect("append");
    }
    let names = Names {
        model: SqlReadModel::new(&pg, "names", [table.clone()]),
        table: table.clone(),
    };
    let runner = ProjectionRunner::connect(&store, names, ProjectionOptions::new("c1"))
        .await
        .expect("runner");
    runner.run_once().await.expect("run");
    let both = vec![
        ("bugs".to_owned(), "Bugs".to_owned()),
        ("duffy".to_owned(), "Duffy".to_owned()),
    ];
    assert_eq!(rows(&pg, &table).await, both);

    store
        .erase_subject("duffy", Metadata::new().with("reason", "request 9"))
        .await
        .expect("erase");
    runner.run_once().await.expect("run after the erasure");
    let bugs = vec![("bugs".to_owned(), "Bugs".to_owned())];
    assert_eq!(
        rows(&pg, &table).await,
        bugs,
        "the subject's row is dropped"
    );

    runner.rebuild().await.expect("rebuild");
    runner.run_once().await.expect("replay");
    assert_eq!(
        rows(&pg, &table).await,
        bugs,
        "and stays dropped after a rebuild"
    );
}
