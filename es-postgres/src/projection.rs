//! [`PostgresSource`]: projections on PostgreSQL, their cursor, pending events and dead
//! letters in tables, so a new runner continues where the last one stopped.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use es_core::projection::{
    event_at, poll_until_woken, reclaim_after, Capabilities, DeadLetter, Delivery,
    ProjectionBackend, ProjectionOptions, ProjectionSource, ProjectionStatus, SourceStream,
    StreamBatch,
};
use es_core::read_model::ReadModelStore;
use es_core::store::millis_since_epoch;
use es_core::{Position, StoreError};

use crate::error::store_error;
use crate::store::{event_from_row, EVENT_COLUMNS};
use crate::wakeups::Wakeups;
use crate::PostgresEventStore;

/// Delivers a projection's categories from the events table: each read takes the events
/// after the projection's cursor, records them as pending and moves the cursor, in one
/// transaction; acknowledging deletes them from pending. Failed events stay pending and are
/// delivered again after the options' `claim_idle`; dead letters go to a table. A blocked
/// read wakes when an append commits (`LISTEN`/`NOTIFY` on a connection of its own), and
/// polls every `poll_interval` as a fallback.
///
/// Runners of one projection compete ([`Capabilities`]: durable, competing consumers): the
/// cursor is the projection's, and a read locks its row until it commits, so each event is
/// delivered to one runner; an event pending longer than `claim_idle` (its runner stalled
/// or died) is reclaimed by whichever runner asks next.
pub struct PostgresSource {
    store: PostgresEventStore,
    projection: String,
    streams: Vec<SourceStream>,
    batch_size: i64,
    poll_interval: Duration,
    dead_letter_limit: Option<i64>,
    sql: Statements,
    /// The listening connection, opened by the first blocking read (`None` inside if it
    /// could not be: reads then poll).
    wakeups: tokio::sync::OnceCell<Option<Wakeups>>,
}

struct Statements {
    create_cursor: String,
    lock_cursor: String,
    read: String,
    pend: String,
    move_cursor: String,
    reclaim: String,
    acknowledge: String,
    record_failure: String,
    clear_failures: String,
    dead_letter: String,
    trim_dead_letters: String,
    status: String,
    dead_letters: String,
    forget_dead_letters: String,
    reset: [String; 3],
}

impl Statements {
    fn new(s: &str) -> Self {
        Statements {
            create_cursor: format!(
                "INSERT INTO {s}.projection_cursors (projection, category, position) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING"
            ),
            lock_cursor: format!(
                "SELECT position FROM {s}.projection_cursors WHERE projection = $1 AND category = $2 FOR UPDATE"
            ),
            read: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE category = $1 AND position > $2 \
                 ORDER BY position LIMIT $3"
            ),
            pend: format!(
                "INSERT INTO {s}.projection_pending (projection, category, position, delivered, since_ms) \
                 SELECT $1, $2, p, 1, $4 FROM unnest($3::bigint[]) AS p ON CONFLICT DO NOTHING"
            ),
            move_cursor: format!(
                "UPDATE {s}.projection_cursors SET position = $3 WHERE projection = $1 AND category = $2"
            ),
            reclaim: format!(
                "WITH claimed AS ( \
                   UPDATE {s}.projection_pending p SET delivered = p.delivered + 1, since_ms = $5 \
                   WHERE (p.projection, p.category, p.position) IN ( \
                     SELECT projection, category, position FROM {s}.projection_pending \
                     WHERE projection = $1 AND category = $2 AND position > $3 AND since_ms <= $4 \
                     ORDER BY position LIMIT $6 FOR UPDATE) \
                   RETURNING p.position AS claimed, p.delivered) \
                 SELECT c.claimed, c.delivered, e.position IS NOT NULL, {columns} \
                 FROM claimed c LEFT JOIN {s}.events e ON e.category = $2 AND e.position = c.claimed \
                 ORDER BY c.claimed",
                columns = EVENT_COLUMNS
                    .split(", ")
                    .map(|c| format!("e.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            acknowledge: format!(
                "DELETE FROM {s}.projection_pending WHERE projection = $1 AND category = $2 AND position = ANY($3)"
            ),
            record_failure: format!(
                "UPDATE {s}.projection_pending SET failure = $4 WHERE projection = $1 AND category = $2 AND position = $3"
            ),
            clear_failures: format!(
                "UPDATE {s}.projection_pending SET failure = NULL WHERE projection = $1 AND category = $2 AND position = ANY($3)"
            ),
            dead_letter: format!(
                "WITH gone AS ( \
                   DELETE FROM {s}.projection_pending WHERE projection = $1 AND category = $2 AND position = $3 \
                   RETURNING failure) \
                 INSERT INTO {s}.projection_dead_letters (projection, category, position, event_type, attempts, error) \
                 SELECT $1, $2, $3, coalesce((SELECT event_type FROM {s}.events WHERE category = $2 AND position = $3), ''), $4, \
                   CASE WHEN gone.failure IS NOT NULL AND gone.failure <> $5 THEN $5 || '; last handler error: ' || gone.failure ELSE $5 END \
                 FROM gone ON CONFLICT DO NOTHING"
            ),
            trim_dead_letters: format!(
                "DELETE FROM {s}.projection_dead_letters WHERE projection = $1 AND category = $2 AND position < ( \
                   SELECT position FROM {s}.projection_dead_letters WHERE projection = $1 AND category = $2 \
                   ORDER BY position DESC OFFSET $3::bigint - 1 LIMIT 1)"
            ),
            status: format!(
                "SELECT c.position, \
                   (SELECT count(*) FROM {s}.projection_pending p WHERE p.projection = $1 AND p.category = $2), \
                   (SELECT min(p.position) FROM {s}.projection_pending p WHERE p.projection = $1 AND p.category = $2), \
                   (SELECT count(*) FROM (SELECT 1 FROM {s}.events e WHERE e.category = $2 \
                      AND e.position > coalesce(c.position, 0) LIMIT $3) l) \
                 FROM (SELECT 1) AS one \
                 LEFT JOIN {s}.projection_cursors c ON c.projection = $1 AND c.category = $2"
            ),
            dead_letters: format!(
                "SELECT position, event_type, attempts, error FROM {s}.projection_dead_letters \
                 WHERE projection = $1 AND category = $2 ORDER BY position"
            ),
            forget_dead_letters: format!(
                "DELETE FROM {s}.projection_dead_letters \
                 WHERE projection = $1 AND category = $2 AND position = ANY($3)"
            ),
            reset: [
                format!("DELETE FROM {s}.projection_cursors WHERE projection = $1"),
                format!("DELETE FROM {s}.projection_pending WHERE projection = $1"),
                format!("DELETE FROM {s}.projection_dead_letters WHERE projection = $1"),
            ],
        }
    }
}

impl PostgresSource {
    /// A source of projection `projection` over `store`'s `categories`.
    pub fn new(
        store: PostgresEventStore,
        projection: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Self {
        let streams = categories
            .iter()
            .map(|category| SourceStream {
                category: category.clone(),
                partition: 0,
                location: Arc::from(format!("{} of category `{category}`", store.location())),
            })
            .collect();
        PostgresSource {
            sql: Statements::new(store.quoted_schema()),
            store,
            projection: projection.to_owned(),
            streams,
            batch_size: options.batch_size_value() as i64,
            poll_interval: options.poll_interval_value(),
            dead_letter_limit: options.dead_letter_limit_value().map(|l| l as i64),
            wakeups: tokio::sync::OnceCell::new(),
        }
    }

    /// The listening connection, opened on first use.
    async fn wakeups(&self) -> Option<&Wakeups> {
        self.wakeups
            .get_or_init(|| async {
                self.store
                    .wakeups()
                    .await
                    .inspect_err(|error| {
                        tracing::warn!(%error, "projection source: no LISTEN connection, polling instead")
                    })
                    .ok()
            })
            .await
            .as_ref()
    }

    fn category(&self, stream: usize) -> &str {
        &self.streams[stream].category
    }

    /// One read of stream `index` after its cursor, in one transaction.
    async fn read_stream(&self, index: usize) -> Result<Vec<Delivery>, StoreError> {
        let category = self.category(index);
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let cursor_row = {
            let statement = tx
                .prepare_cached(&self.sql.lock_cursor)
                .await
                .map_err(store_error)?;
            tx.query_opt(&statement, &[&self.projection, &category])
                .await
                .map_err(store_error)?
        };
        let Some(cursor_row) = cursor_row else {
            return Err(StoreError::InvalidRequest(format!(
                "projection `{}` has no cursor in category `{category}`: prepare the source first",
                self.projection
            )));
        };
        let cursor: i64 = cursor_row.get(0);
        let statement = tx
            .prepare_cached(&self.sql.read)
            .await
            .map_err(store_error)?;
        let rows = tx
            .query(&statement, &[&category, &cursor, &self.batch_size])
            .await
            .map_err(store_error)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let positions: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        let now = now_millis();
        let statement = tx
            .prepare_cached(&self.sql.pend)
            .await
            .map_err(store_error)?;
        tx.execute(&statement, &[&self.projection, &category, &positions, &now])
            .await
            .map_err(store_error)?;
        let last = positions[positions.len() - 1];
        let statement = tx
            .prepare_cached(&self.sql.move_cursor)
            .await
            .map_err(store_error)?;
        tx.execute(&statement, &[&self.projection, &category, &last])
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|row| {
                let event = event_from_row(row, 0, category, self.store.location());
                Delivery {
                    position: Position::from_sequence(row.get::<_, i64>(0) as u64),
                    delivered: 1,
                    event: Some(event),
                }
            })
            .collect())
    }

    async fn read_now(&self) -> Result<Vec<StreamBatch>, StoreError> {
        let mut batch = Vec::new();
        for stream in 0..self.streams.len() {
            let deliveries = self.read_stream(stream).await?;
            if !deliveries.is_empty() {
                batch.push(StreamBatch { stream, deliveries });
            }
        }
        Ok(batch)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.store.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(store_error)?;
        client
            .execute(&statement, params)
            .await
            .map_err(store_error)
    }

    async fn statuses(&self, at_most: Option<i64>) -> Result<Vec<ProjectionStatus>, StoreError> {
        let mut statuses = Vec::with_capacity(self.streams.len());
        for stream in &self.streams {
            let mut status = ProjectionStatus::new(stream.category.to_string(), 0);
            let rows = self
                .store
                .query(
                    &self.sql.status,
                    &[
                        &self.projection,
                        &stream.category.as_ref(),
                        &at_most.unwrap_or(i64::MAX),
                    ],
                )
                .await?;
            let row = rows.first().ok_or_else(|| StoreError::Backend {
                message: "the projection status query returned no row".into(),
                source: None,
            })?;
            let cursor: Option<i64> = row.get(0);
            if let Some(cursor) = cursor {
                status.exists = true;
                status.consumers = 1;
                status.last_delivered = Position::from_sequence(cursor as u64);
            }
            status.pending = row.get::<_, i64>(1) as u64;
            status.oldest_pending = row
                .get::<_, Option<i64>>(2)
                .map(|p| Position::from_sequence(p as u64));
            status.lag = Some(row.get::<_, i64>(3) as u64);
            statuses.push(status);
        }
        Ok(statuses)
    }
}

fn now_millis() -> i64 {
    millis_since_epoch(SystemTime::now()) as i64
}

fn sequences(positions: &[Position]) -> Vec<i64> {
    positions.iter().map(|p| p.major() as i64).collect()
}

#[async_trait]
impl ProjectionSource for PostgresSource {
    fn streams(&self) -> &[SourceStream] {
        &self.streams
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_durable(true)
            .with_competing_consumers(true)
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        for stream in &self.streams {
            self.execute(
                &self.sql.create_cursor,
                &[&self.projection, &stream.category.as_ref()],
            )
            .await?;
        }
        Ok(())
    }

    async fn read(&self, block: Option<Duration>) -> Result<Vec<StreamBatch>, StoreError> {
        let wakeups = match block {
            Some(_) => self.wakeups().await,
            None => None,
        };
        poll_until_woken(
            block,
            self.poll_interval,
            || self.read_now(),
            |at_most| async move {
                match wakeups {
                    Some(wakeups) => wakeups.wait(at_most).await,
                    None => tokio::time::sleep(at_most).await,
                }
            },
        )
        .await
    }

    async fn reclaim(
        &self,
        stream: usize,
        idle: Duration,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        let after = reclaim_after(cursor)?;
        let category = self.category(stream);
        let now = now_millis();
        let idle_since = now - idle.as_millis() as i64;
        let rows = self
            .store
            .query(
                &self.sql.reclaim,
                &[
                    &self.projection,
                    &category,
                    &(after.major() as i64),
                    &idle_since,
                    &now,
                    &self.batch_size,
                ],
            )
            .await?;
        let deliveries: Vec<Delivery> = rows
            .iter()
            .map(|row| {
                let exists: bool = row.get(2);
                Delivery {
                    position: Position::from_sequence(row.get::<_, i64>(0) as u64),
                    delivered: row.get::<_, i32>(1) as u32,
                    event: exists.then(|| event_from_row(row, 3, category, self.store.location())),
                }
            })
            .collect();
        let next = (deliveries.len() as i64 == self.batch_size)
            .then(|| deliveries.last().map(|d| d.position.to_string()))
            .flatten();
        Ok((deliveries, next))
    }

    async fn acknowledge(&self, stream: usize, positions: &[Position]) -> Result<(), StoreError> {
        self.execute(
            &self.sql.acknowledge,
            &[
                &self.projection,
                &self.category(stream),
                &sequences(positions),
            ],
        )
        .await
        .map(drop)
    }

    async fn record_failure(
        &self,
        stream: usize,
        position: Position,
        error: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            &self.sql.record_failure,
            &[
                &self.projection,
                &self.category(stream),
                &(position.major() as i64),
                &error,
            ],
        )
        .await
        .map(drop)
    }

    async fn clear_failures(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        self.execute(
            &self.sql.clear_failures,
            &[
                &self.projection,
                &self.category(stream),
                &sequences(positions),
            ],
        )
        .await
        .map(drop)
    }

    async fn dead_letter(
        &self,
        stream: usize,
        position: Position,
        delivered: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        let category = self.category(stream);
        let moved = self
            .execute(
                &self.sql.dead_letter,
                &[
                    &self.projection,
                    &category,
                    &(position.major() as i64),
                    &(delivered as i32),
                    &error,
                ],
            )
            .await?;
        if let Some(limit) = self.dead_letter_limit {
            self.execute(
                &self.sql.trim_dead_letters,
                &[&self.projection, &category, &limit.max(1)],
            )
            .await?;
        }
        Ok(moved == 1)
    }

    async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.statuses(None).await
    }

    async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = self
            .store
            .query(&self.sql.dead_letters, &[&self.projection, &category])
            .await?;
        Ok(rows
            .iter()
            .map(|row| DeadLetter {
                category: category.to_owned(),
                position: Position::from_sequence(row.get::<_, i64>(0) as u64),
                event_type: row.get(1),
                attempts: row.get::<_, i32>(2) as u32,
                error: row.get(3),
            })
            .collect())
    }

    async fn dead_lettered(&self, stream: usize) -> Result<Vec<Delivery>, StoreError> {
        let category = self.category(stream);
        let letters = self.dead_letters(category).await?;
        let mut deliveries = Vec::with_capacity(letters.len());
        for letter in letters {
            deliveries.push(Delivery {
                position: letter.position,
                delivered: letter.attempts,
                event: event_at(&self.store, category, 0, letter.position).await,
            });
        }
        Ok(deliveries)
    }

    async fn forget_dead_letters(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        self.execute(
            &self.sql.forget_dead_letters,
            &[
                &self.projection,
                &self.category(stream),
                &sequences(positions),
            ],
        )
        .await?;
        Ok(())
    }

    async fn reset(&self) -> Result<(), StoreError> {
        let mut client = self.store.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        for sql in &self.sql.reset {
            let statement = tx.prepare_cached(sql).await.map_err(store_error)?;
            tx.execute(&statement, &[&self.projection])
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

#[async_trait]
impl ProjectionBackend for PostgresEventStore {
    async fn projection_source(
        &self,
        name: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Result<Box<dyn ProjectionSource>, StoreError> {
        Ok(Box::new(PostgresSource::new(
            self.clone(),
            name,
            categories,
            options,
        )))
    }

    fn read_model_store(&self) -> Arc<dyn ReadModelStore> {
        self.read_models().clone()
    }
}
