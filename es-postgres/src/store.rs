//! [`PostgresEventStore`]: the [`EventStore`] and [`SnapshotStore`] on PostgreSQL.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use es_core::codec::Fields;
use es_core::group_commit::{BatchLimits, GroupCommit};
use es_core::store::{validate_append, validate_snapshot};
use es_core::{
    AggregateIds, AppendOptions, AppendResult, CategoryInfo, DecodeError, EventStore,
    ExpectedVersion, Metadata, NewEvent, Position, ReadRange, Snapshot, SnapshotStore, StoreError,
    StoredEvent, StreamId,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::appends::{refuse_nul, Append, AppendSender};
use crate::config::PostgresConfig;
use crate::error::{pool_error, store_error, Shared};
use crate::read_model::PostgresReadModels;
use crate::schema;

/// A group-commit call closes once it holds this many events.
const MAX_EVENTS_PER_CALL: usize = 1_000;

/// Group-commit calls on their way at once: one committing while the next waits for the
/// category's lock, and a third filling.
const IN_FLIGHT: usize = 2;

/// The columns every event read selects, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "position, aggregate_id, version, recorded_at, event_type, correlation_id, causation_id, metadata, field_names, field_values";

/// An event store in PostgreSQL: every category's events in one table, in one order per
/// category with no gaps a reader could skip; snapshots; projections with their cursors in
/// the database ([`ProjectionBackend`](es_core::projection::ProjectionBackend)); read
/// models as hashes ([`PostgresReadModels`]) or in your own tables
/// ([`SqlReadModel`](crate::SqlReadModel)).
///
/// Cloning it gives another handle to the same pool.
///
/// ```no_run
/// use es_postgres::{PostgresConfig, PostgresEventStore};
/// # async fn run() -> Result<(), es_core::StoreError> {
/// let store = PostgresEventStore::connect(
///     &PostgresConfig::new("postgres://postgres@127.0.0.1:5432/postgres").schema("bank"),
/// )
/// .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    schema: String,
    /// The schema as a quoted identifier, for building statements.
    quoted: String,
    /// `<schema>.events`: where decode errors say an entry is.
    location: Arc<str>,
    read_models: Arc<PostgresReadModels>,
    appends: GroupCommit<AppendSender>,
    /// How to open a connection of its own (a projection source's listening one).
    pg_config: tokio_postgres::Config,
    sql: Statements,
}

/// The store's statements, built once for its schema.
struct Statements {
    read_stream: String,
    stream_version: String,
    read_category: String,
    categories: String,
    aggregate_ids: String,
    save_snapshot: String,
    load_snapshot: String,
    snapshot_and_tail: String,
}

impl Statements {
    fn new(s: &str) -> Self {
        Statements {
            read_stream: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE category = $1 AND aggregate_id = $2 \
                 AND version >= $3 AND version <= $4 AND recorded_at <= $5 ORDER BY version"
            ),
            stream_version: format!(
                "SELECT coalesce(max(version), 0) FROM {s}.events WHERE category = $1 AND aggregate_id = $2"
            ),
            read_category: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE category = $1 AND position > $2 \
                 ORDER BY position LIMIT $3"
            ),
            // Counted: a hard deletion removes events, so positions do not count them.
            categories: format!(
                "SELECT category, count(*), max(position) FROM {s}.events \
                 GROUP BY category ORDER BY category COLLATE \"C\""
            ),
            aggregate_ids: format!(
                "SELECT aggregate_id, position FROM {s}.events \
                 WHERE category = $1 AND position > $2 AND version = 1 ORDER BY position LIMIT $3"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots AS t (category, aggregate_id, version, position, schema, field_names, field_values) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (category, aggregate_id) DO UPDATE SET version = excluded.version, \
                 position = excluded.position, schema = excluded.schema, \
                 field_names = excluded.field_names, field_values = excluded.field_values \
                 WHERE t.version <= excluded.version"
            ),
            load_snapshot: format!(
                "SELECT version, position, schema, field_names, field_values FROM {s}.snapshots \
                 WHERE category = $1 AND aggregate_id = $2"
            ),
            // One statement, so the snapshot and the tail after it come from one snapshot
            // of the database (a snapshot saved in between cannot make them disagree).
            snapshot_and_tail: format!(
                "WITH snap AS (SELECT version, position, field_names, field_values FROM {s}.snapshots \
                   WHERE category = $1 AND aggregate_id = $2 AND schema = $3) \
                 SELECT 0 AS kind, position, NULL::text AS aggregate_id, version, NULL::bigint AS recorded_at, \
                   NULL::text AS event_type, NULL::text AS correlation_id, NULL::text AS causation_id, \
                   NULL::jsonb AS metadata, field_names, field_values FROM snap \
                 UNION ALL \
                 SELECT 1, {EVENT_COLUMNS} FROM {s}.events WHERE category = $1 AND aggregate_id = $2 \
                   AND version > coalesce((SELECT version FROM snap), 0) \
                 ORDER BY kind, version"
            ),
        }
    }
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresEventStore {
    /// Connects and creates the store's schema, tables and append function if they are
    /// missing. An unreachable server is a [`StoreError::Connection`].
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        let quoted = schema::quote_schema(config.schema_name()).ok_or_else(|| {
            StoreError::InvalidRequest(format!(
                "schema name {:?} is not valid: use letters, digits and `_` (at most 63 bytes, not starting with a digit)",
                config.schema_name()
            ))
        })?;
        let (pool, pg_config) = pool(config)?;
        let client = pool.get().await.map_err(pool_error)?;
        let migrate = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('es-postgres schema ' || {name})); {ddl} COMMIT;",
            name = literal(config.schema_name()),
            ddl = schema::ddl(&quoted, &crate::wakeups::channel(config.schema_name()))
        );
        client.batch_execute(&migrate).await.map_err(store_error)?;
        drop(client);
        let location: Arc<str> = Arc::from(format!("{}.events", config.schema_name()));
        Ok(PostgresEventStore {
            inner: Arc::new(Inner {
                read_models: Arc::new(PostgresReadModels::new(pool.clone(), &quoted)),
                appends: GroupCommit::new(
                    AppendSender {
                        pool: pool.clone(),
                        sql: format!(
                            "SELECT outcome, version, first_position, event_count FROM {quoted}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                        ),
                    },
                    BatchLimits {
                        max_items: config.append_batch_value(),
                        max_weight: MAX_EVENTS_PER_CALL,
                        in_flight: IN_FLIGHT,
                    },
                ),
                sql: Statements::new(&quoted),
                pg_config,
                pool,
                schema: config.schema_name().to_owned(),
                quoted,
                location,
            }),
        })
    }

    /// The schema of its tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The schema as a quoted identifier (`"bank"`), to build statements with.
    pub fn quoted_schema(&self) -> &str {
        &self.inner.quoted
    }

    /// Its connection pool (for your own queries, in the same database).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Its read models of hashes, in tables of its schema.
    pub fn read_models(&self) -> &Arc<PostgresReadModels> {
        &self.inner.read_models
    }

    /// Runs `sql` (one or more statements, no parameters) on a pooled connection: for your
    /// own tables in the same database, like a read model's.
    pub async fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .batch_execute(sql)
            .await
            .map_err(store_error)
    }

    /// Opens a connection that listens for appends (see [`crate::wakeups`]).
    pub(crate) async fn wakeups(&self) -> Result<crate::wakeups::Wakeups, tokio_postgres::Error> {
        crate::wakeups::Wakeups::listen(&self.inner.pg_config, &self.channel()).await
    }

    /// The channel appends notify.
    pub(crate) fn channel(&self) -> String {
        crate::wakeups::channel(&self.inner.schema)
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// `<schema>.events`.
    pub(crate) fn location(&self) -> &Arc<str> {
        &self.inner.location
    }

    /// The rows of `sql` with `params`, on a pooled connection, through its statement cache.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(store_error)?;
        client.query(&statement, params).await.map_err(store_error)
    }

    /// Events of `category` from `rows` (selected with [`EVENT_COLUMNS`]).
    pub(crate) fn events(
        &self,
        category: &str,
        rows: &[Row],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        rows.iter()
            .map(|row| event_from_row(row, 0, category, &self.inner.location))
            .collect()
    }
}

/// The pool for `config` (connections open on first use).
fn pool(config: &PostgresConfig) -> Result<(Pool, tokio_postgres::Config), StoreError> {
    let mut pg: tokio_postgres::Config = config.url().parse().map_err(|error| {
        StoreError::InvalidRequest(format!("PostgreSQL URL {:?}: {error}", config.url()))
    })?;
    pg.connect_timeout(config.connect_timeout_value());
    pg.application_name("es-postgres");
    let manager = Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.pool_size_value())
        .build()
        .map_err(|error| StoreError::InvalidRequest(format!("PostgreSQL pool: {error}")))?;
    Ok((pool, pg))
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Reads an event from `row`, whose [`EVENT_COLUMNS`] start at column `first`.
pub(crate) fn event_from_row(
    row: &Row,
    first: usize,
    category: &str,
    location: &Arc<str>,
) -> Result<StoredEvent, StoreError> {
    let get = |error: tokio_postgres::Error| store_error(error);
    let position: i64 = row.try_get(first).map_err(get)?;
    let position = Position::from_sequence(position as u64);
    let entry = || position.to_string();
    let event_type: String = row.try_get(first + 4).map_err(get)?;
    let names: Vec<String> = row.try_get(first + 8).map_err(get)?;
    let values: Vec<Vec<u8>> = row.try_get(first + 9).map_err(get)?;
    if names.len() != values.len() {
        return Err(StoreError::decode(
            location.to_string(),
            entry(),
            DecodeError::Other {
                event_type,
                message: format!("{} field names but {} values", names.len(), values.len()),
            },
        ));
    }
    let metadata: Option<serde_json::Value> = row.try_get(first + 7).map_err(get)?;
    // The same codec as es-redis's `metadata` field: a JSON object of strings, by serde.
    let extra = match metadata {
        None => Default::default(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|error| {
            StoreError::decode(
                location.to_string(),
                entry(),
                DecodeError::field(
                    &event_type,
                    "metadata",
                    es_core::codec::FieldError::Invalid(format!(
                        "expected a JSON object of strings ({error}), found {value}"
                    )),
                ),
            )
        })?,
    };
    let version: i64 = row.try_get(first + 2).map_err(get)?;
    let timestamp: i64 = row.try_get(first + 3).map_err(get)?;
    Ok(StoredEvent {
        stream: StreamId::new(
            category.to_owned(),
            row.try_get::<_, String>(first + 1).map_err(get)?,
        ),
        version: version as u64,
        position,
        timestamp: timestamp as u64,
        event_type,
        metadata: Metadata {
            correlation_id: row.try_get(first + 5).map_err(get)?,
            causation_id: row.try_get(first + 6).map_err(get)?,
            extra,
        },
        event: names.into_iter().zip(values).collect(),
        location: location.clone(),
    })
}

/// A snapshot from a row of `version, position, schema, field_names, field_values`.
fn snapshot_from_row(row: &Row) -> Result<Snapshot, StoreError> {
    let version: i64 = row.try_get(0).map_err(store_error)?;
    let position: i64 = row.try_get(1).map_err(store_error)?;
    let schema: i64 = row.try_get(2).map_err(store_error)?;
    let names: Vec<String> = row.try_get(3).map_err(store_error)?;
    let values: Vec<Vec<u8>> = row.try_get(4).map_err(store_error)?;
    Ok(Snapshot {
        version: version as u64,
        position: Position::from_sequence(position as u64),
        schema: schema as u64,
        fields: names.into_iter().zip(values).collect::<Fields>(),
    })
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        refuse_nul(stream, &events)?;
        let append = Append {
            stream: stream.clone(),
            expected,
            append_id: options.append_id.clone(),
            events,
        };
        self.inner
            .appends
            .submit(append)
            .await
            .map_err(Shared::into_error)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let from = i64::try_from(range.from_version.max(1)).unwrap_or(i64::MAX);
        let to = range
            .to_version
            .map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let until = range
            .until_millis
            .map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let rows = self
            .query(
                &self.inner.sql.read_stream,
                &[&stream.category.as_ref(), &stream.id, &from, &to, &until],
            )
            .await?;
        self.events(&stream.category, &rows)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let rows = self
            .query(
                &self.inner.sql.stream_version,
                &[&stream.category.as_ref(), &stream.id],
            )
            .await?;
        let version: i64 = rows[0].try_get(0).map_err(store_error)?;
        Ok(version as u64)
    }

    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let after = i64::try_from(after.major()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.inner.sql.read_category, &[&category, &after, &limit])
            .await?;
        self.events(category, &rows)
    }

    /// Soft: the marker appended; hard: one transaction under the category's row lock.
    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: es_core::deletion::Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError> {
        self.delete(stream, deletion, metadata).await
    }

    async fn categories(&self) -> Result<Vec<CategoryInfo>, StoreError> {
        let rows = self.query(&self.inner.sql.categories, &[]).await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get(0).map_err(store_error)?;
                let events: i64 = row.try_get(1).map_err(store_error)?;
                let head: i64 = row.try_get(2).map_err(store_error)?;
                Ok(CategoryInfo::new(
                    name,
                    events as u64,
                    Position::from_sequence(head as u64),
                ))
            })
            .collect()
    }

    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError> {
        let after = i64::try_from(AggregateIds::parse_cursor(after)?.major()).unwrap_or(i64::MAX);
        let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.inner.sql.aggregate_ids, &[&category, &after, &wanted])
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            ids.push(row.try_get::<_, String>(0).map_err(store_error)?);
            last = Some(row.try_get::<_, i64>(1).map_err(store_error)?);
        }
        let next = last
            .filter(|_| ids.len() == limit)
            .map(|position| Position::from_sequence(position as u64).to_string());
        Ok(AggregateIds::new(ids, next))
    }
}

#[async_trait]
impl SnapshotStore for PostgresEventStore {
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        validate_snapshot(stream, snapshot)?;
        let names: Vec<&str> = snapshot.fields.iter().map(|(n, _)| n).collect();
        let values: Vec<&[u8]> = snapshot.fields.iter().map(|(_, v)| v).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.save_snapshot)
            .await
            .map_err(store_error)?;
        let saved = client
            .execute(
                &statement,
                &[
                    &stream.category.as_ref(),
                    &stream.id,
                    &(snapshot.version as i64),
                    &(snapshot.position.major() as i64),
                    &(snapshot.schema as i64),
                    &names,
                    &values,
                ],
            )
            .await
            .map_err(store_error)?;
        Ok(saved == 1)
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let rows = self
            .query(
                &self.inner.sql.load_snapshot,
                &[&stream.category.as_ref(), &stream.id],
            )
            .await?;
        rows.first().map(snapshot_from_row).transpose()
    }

    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
        schema: u64,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>), StoreError> {
        let rows = self
            .query(
                &self.inner.sql.snapshot_and_tail,
                &[&stream.category.as_ref(), &stream.id, &(schema as i64)],
            )
            .await?;
        let mut snapshot = None;
        let mut tail = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: i32 = row.try_get(0).map_err(store_error)?;
            if kind == 0 {
                // Columns: kind, position, _, version, …, field_names (9), field_values (10).
                let version: i64 = row.try_get(3).map_err(store_error)?;
                let position: i64 = row.try_get(1).map_err(store_error)?;
                let names: Vec<String> = row.try_get(9).map_err(store_error)?;
                let values: Vec<Vec<u8>> = row.try_get(10).map_err(store_error)?;
                snapshot = Some(Snapshot {
                    version: version as u64,
                    position: Position::from_sequence(position as u64),
                    schema,
                    fields: names.into_iter().zip(values).collect(),
                });
            } else {
                tail.push(event_from_row(
                    row,
                    1,
                    &stream.category,
                    &self.inner.location,
                )?);
            }
        }
        Ok((snapshot, tail))
    }
}
