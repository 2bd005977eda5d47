//! [`SqlReadModel`]: a projection's read model in ordinary tables of your own, each event's
//! statements and the record that it was applied committed in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use es_core::read_model::{Applied, EventWrites, ReadModel, ReadModelStore};
use es_core::{RecordedEvent, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{pool_error, store_error};
use crate::read_model::{applied_count, applied_count_sql, clear_applied_sql, record_sql};
use crate::PostgresEventStore;

/// A projection's read model in tables the application defines (and queries with SQL).
///
/// [`update`](Self::update) opens a transaction for one event and records the event as
/// applied in it first; if the projection had applied it before (delivery is at least
/// once), it returns `None` and nothing is written. Run the event's statements on the
/// [`SqlUpdate`] and [`commit`](SqlUpdate::commit): statements and record commit together,
/// so each event's update is applied exactly once. Dropped without a commit, the update is
/// rolled back.
///
/// The events can come from any backend: the runner of a projection over Redis Streams
/// (or memory) can write PostgreSQL tables. Give the projection's
/// [`read_model`](es_core::projection::Projection::read_model)
/// [`as_read_model`](Self::as_read_model): the runner's `rebuild` then truncates the tables
/// and forgets the applied events, and the replay fills them again.
///
/// ```no_run
/// use es_core::RecordedEvent;
/// use es_postgres::{PostgresConfig, PostgresEventStore, SqlReadModel};
/// # #[derive(es_core::Event)] struct Deposited { amount: i64 }
/// # async fn run(event: RecordedEvent<Deposited>) -> Result<(), es_core::StoreError> {
/// let pg = PostgresEventStore::connect(&PostgresConfig::new("postgres://postgres@127.0.0.1/postgres")).await?;
/// pg.execute_batch("CREATE TABLE IF NOT EXISTS balances (account text PRIMARY KEY, cents bigint NOT NULL)").await?;
/// let balances = SqlReadModel::new(&pg, "balances", ["balances"]);
///
/// // In the projection's `handle`:
/// if let Some(update) = balances.update(&event).await? {
///     update
///         .execute(
///             "INSERT INTO balances VALUES ($1, $2) ON CONFLICT (account) DO UPDATE SET cents = balances.cents + $2",
///             &[&event.stream.id, &event.event.amount],
///         )
///         .await?;
///     update.commit().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqlReadModel {
    tables: Arc<SqlTables>,
    model: ReadModel,
}

/// What [`SqlReadModel`] shares with its [`ReadModel`] handle.
struct SqlTables {
    pool: Pool,
    tables: Vec<String>,
    record: String,
    applied_count: String,
    clear_applied: String,
}

impl std::fmt::Debug for SqlReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlReadModel")
            .field("projection", &self.model.projection())
            .field("tables", &self.tables.tables)
            .finish()
    }
}

impl SqlReadModel {
    /// The read model of projection `projection`, kept in `tables` (names as SQL writes
    /// them, schema-qualified if need be) of `store`'s database; its record of applied
    /// events is in `store`'s schema.
    pub fn new<T: Into<String>>(
        store: &PostgresEventStore,
        projection: &str,
        tables: impl IntoIterator<Item = T>,
    ) -> Self {
        let s = store.quoted_schema();
        let tables = Arc::new(SqlTables {
            pool: store.pool().clone(),
            tables: tables.into_iter().map(Into::into).collect(),
            record: record_sql(s),
            applied_count: applied_count_sql(s),
            clear_applied: clear_applied_sql(s),
        });
        let model = ReadModel::new(tables.clone(), projection);
        SqlReadModel { tables, model }
    }

    /// The projection's name.
    pub fn projection(&self) -> &str {
        self.model.projection()
    }

    /// Its tables.
    pub fn tables(&self) -> &[String] {
        &self.tables.tables
    }

    /// The handle the projection returns from
    /// [`read_model`](es_core::projection::Projection::read_model): the runner checks its
    /// name and clears it on rebuild (truncating the tables).
    pub fn as_read_model(&self) -> &ReadModel {
        &self.model
    }

    /// A transaction for `event`'s statements, with the event recorded as applied; `None`
    /// if the projection applied it before.
    pub async fn update<E>(
        &self,
        event: &RecordedEvent<E>,
    ) -> Result<Option<SqlUpdate>, StoreError> {
        let client = self.tables.pool.get().await.map_err(pool_error)?;
        client.batch_execute("BEGIN").await.map_err(store_error)?;
        let update = SqlUpdate {
            client: Some(client),
        };
        let (major, minor) = (event.position.major() as i64, event.position.minor() as i64);
        let recorded = update
            .execute(
                &self.tables.record,
                &[
                    &self.model.projection(),
                    &event.stream.category.as_ref(),
                    &major,
                    &minor,
                ],
            )
            .await?;
        if recorded == 0 {
            update.rollback().await?;
            return Ok(None);
        }
        Ok(Some(update))
    }

    /// How many events of `category` the projection has applied.
    pub async fn applied_count(&self, category: &str) -> Result<u64, StoreError> {
        self.model.applied_count(category).await
    }
}

/// One event's transaction (see [`SqlReadModel::update`]).
pub struct SqlUpdate {
    client: Option<Object>,
}

impl SqlUpdate {
    fn client(&self) -> &Object {
        self.client
            .as_ref()
            .expect("an SqlUpdate is used until commit or rollback")
    }

    /// Runs a statement; returns how many rows it changed.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client();
        let statement = client.prepare_cached(sql).await.map_err(store_error)?;
        client
            .execute(&statement, params)
            .await
            .map_err(store_error)
    }

    /// Runs a query; returns its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client();
        let statement = client.prepare_cached(sql).await.map_err(store_error)?;
        client.query(&statement, params).await.map_err(store_error)
    }

    /// Commits the statements and the record of the event.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let client = self.client.take().expect("committed once");
        client.batch_execute("COMMIT").await.map_err(store_error)
    }

    /// Rolls everything back, the record of the event too (it will be applied when
    /// delivered again).
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        let client = self.client.take().expect("rolled back once");
        client.batch_execute("ROLLBACK").await.map_err(store_error)
    }
}

impl Drop for SqlUpdate {
    fn drop(&mut self) {
        // Neither committed nor rolled back (an error, a panic, a cancelled future): the
        // connection leaves the pool and closes, and the server rolls the transaction back.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

#[async_trait]
impl ReadModelStore for SqlTables {
    async fn commit(
        &self,
        projection: &str,
        _updates: Vec<EventWrites>,
    ) -> Result<Vec<Applied>, StoreError> {
        Err(StoreError::InvalidRequest(format!(
            "the read model of `{projection}` is SQL tables: write them with `SqlReadModel::update`, not hash updates"
        )))
    }

    async fn hash(
        &self,
        projection: &str,
        _name: &str,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, StoreError> {
        Err(StoreError::InvalidRequest(format!(
            "the read model of `{projection}` is SQL tables ({}): query them with SQL",
            self.tables.join(", ")
        )))
    }

    async fn hashes(
        &self,
        projection: &str,
    ) -> Result<
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<u8>>>,
        StoreError,
    > {
        self.hash(projection, "").await.map(|_| Default::default())
    }

    async fn applied_count(&self, projection: &str, category: &str) -> Result<u64, StoreError> {
        applied_count(&self.pool, &self.applied_count, projection, category).await
    }

    /// Truncates the tables and forgets the applied events, in one transaction.
    async fn clear(&self, projection: &str) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        if !self.tables.is_empty() {
            tx.batch_execute(&format!("TRUNCATE {}", self.tables.join(", ")))
                .await
                .map_err(store_error)?;
        }
        let statement = tx
            .prepare_cached(&self.clear_applied)
            .await
            .map_err(store_error)?;
        let records = tx
            .execute(&statement, &[&projection])
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(self.tables.len() as u64 + u64::from(records > 0))
    }
}
