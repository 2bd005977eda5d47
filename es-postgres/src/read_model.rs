//! [`PostgresReadModels`]: es-core's read models of hashes, in a table, each event's writes
//! and its record in the `applied` table committed in one transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use es_core::read_model::{incremented, Applied, EventWrites, HashWrite, ReadModelStore};
use es_core::{Position, StoreError, StreamId};

use crate::error::{pool_error, store_error};

/// Read models as rows `(projection, hash, field, value)` of `<schema>.read_model_fields`,
/// with the events each projection applied in `<schema>.applied`. A projection's update
/// and the record of its event commit in one transaction, which first inserts the record:
/// a second delivery of the event finds it and writes nothing.
pub struct PostgresReadModels {
    pool: Pool,
    sql: Statements,
}

struct Statements {
    record: String,
    set: String,
    remove: String,
    current: String,
    delete: String,
    hash: String,
    hashes: String,
    applied_count: String,
    clear_fields: String,
    clear_applied: String,
}

impl PostgresReadModels {
    /// Read models in the tables of schema `quoted` (a quoted identifier).
    pub(crate) fn new(pool: Pool, quoted: &str) -> Self {
        let s = quoted;
        PostgresReadModels {
            pool,
            sql: Statements {
                record: record_sql(s),
                set: format!(
                    "INSERT INTO {s}.read_model_fields (projection, hash, field, value) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (projection, hash, field) DO UPDATE SET value = excluded.value"
                ),
                remove: format!(
                    "DELETE FROM {s}.read_model_fields WHERE projection = $1 AND hash = $2 AND field = $3"
                ),
                current: format!(
                    "SELECT value FROM {s}.read_model_fields WHERE projection = $1 AND hash = $2 AND field = $3 FOR UPDATE"
                ),
                delete: format!(
                    "DELETE FROM {s}.read_model_fields WHERE projection = $1 AND hash = $2"
                ),
                hash: format!(
                    "SELECT field, value FROM {s}.read_model_fields WHERE projection = $1 AND hash = $2"
                ),
                hashes: format!(
                    "SELECT hash, field, value FROM {s}.read_model_fields WHERE projection = $1"
                ),
                applied_count: applied_count_sql(s),
                clear_fields: format!("DELETE FROM {s}.read_model_fields WHERE projection = $1"),
                clear_applied: clear_applied_sql(s),
            },
        }
    }

    async fn write(
        &self,
        tx: &Transaction<'_>,
        projection: &str,
        write: HashWrite,
    ) -> Result<(), StoreError> {
        match write {
            HashWrite::Set { hash, field, value } => {
                execute(tx, &self.sql.set, &[&projection, &hash, &field, &value]).await?;
            }
            HashWrite::Remove { hash, field } => {
                execute(tx, &self.sql.remove, &[&projection, &hash, &field]).await?;
            }
            HashWrite::Increment { hash, field, by } => {
                let statement = tx
                    .prepare_cached(&self.sql.current)
                    .await
                    .map_err(store_error)?;
                let rows = tx
                    .query(&statement, &[&projection, &hash, &field])
                    .await
                    .map_err(store_error)?;
                let current: Option<Vec<u8>> = rows.first().map(|row| row.get(0));
                let sum = incremented(&hash, &field, current.as_deref(), by)?;
                execute(tx, &self.sql.set, &[&projection, &hash, &field, &sum]).await?;
            }
            HashWrite::Delete { hash } => {
                execute(tx, &self.sql.delete, &[&projection, &hash]).await?;
            }
        }
        Ok(())
    }
}

/// `INSERT` of an applied event's record, doing nothing if it is there: `$1` projection,
/// `$2` category, `$3`/`$4` the position's parts.
pub(crate) fn record_sql(s: &str) -> String {
    format!(
        "INSERT INTO {s}.applied (projection, category, major, minor) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING"
    )
}

pub(crate) fn applied_count_sql(s: &str) -> String {
    format!("SELECT count(*) FROM {s}.applied WHERE projection = $1 AND category = $2")
}

/// How many events of `category` `projection` applied (`sql`: [`applied_count_sql`]).
pub(crate) async fn applied_count(
    pool: &Pool,
    sql: &str,
    projection: &str,
    category: &str,
) -> Result<u64, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let statement = client.prepare_cached(sql).await.map_err(store_error)?;
    let row = client
        .query_one(&statement, &[&projection, &category])
        .await
        .map_err(store_error)?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub(crate) fn clear_applied_sql(s: &str) -> String {
    format!("DELETE FROM {s}.applied WHERE projection = $1")
}

/// Records that `projection` applied the event at `position` of `stream`'s category, in
/// `tx`; returns whether it had not before.
pub(crate) async fn record(
    tx: &Transaction<'_>,
    sql: &str,
    projection: &str,
    stream: &StreamId,
    position: Position,
) -> Result<bool, StoreError> {
    // The parts are u64s stored as bigints: the cast is a bijection, so records compare
    // equal exactly when positions do.
    let (major, minor) = (position.major() as i64, position.minor() as i64);
    let inserted = execute(
        tx,
        sql,
        &[&projection, &stream.category.as_ref(), &major, &minor],
    )
    .await?;
    Ok(inserted == 1)
}

async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = tx.prepare_cached(sql).await.map_err(store_error)?;
    tx.execute(&statement, params).await.map_err(store_error)
}

#[async_trait]
impl ReadModelStore for PostgresReadModels {
    async fn commit(
        &self,
        projection: &str,
        updates: Vec<EventWrites>,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        let mut outcomes = Vec::with_capacity(updates.len());
        for update in updates {
            if !record(
                &tx,
                &self.sql.record,
                projection,
                &update.stream,
                update.position,
            )
            .await?
            {
                outcomes.push(Applied::AlreadyApplied);
                continue;
            }
            outcomes.push(Applied::Applied);
            for write in update.writes {
                // An error drops `tx` uncommitted: nothing of the call is written.
                self.write(&tx, projection, write).await?;
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(outcomes)
    }

    async fn hash(
        &self,
        projection: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client
            .prepare_cached(&self.sql.hash)
            .await
            .map_err(store_error)?;
        let rows = client
            .query(&statement, &[&projection, &name])
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn hashes(
        &self,
        projection: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client
            .prepare_cached(&self.sql.hashes)
            .await
            .map_err(store_error)?;
        let rows = client
            .query(&statement, &[&projection])
            .await
            .map_err(store_error)?;
        let mut hashes: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        for row in rows {
            hashes
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1), row.get(2));
        }
        Ok(hashes)
    }

    async fn applied_count(&self, projection: &str, category: &str) -> Result<u64, StoreError> {
        applied_count(&self.pool, &self.sql.applied_count, projection, category).await
    }

    async fn clear(&self, projection: &str) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        let hashes = {
            let statement = tx
                .prepare_cached(&self.sql.hashes)
                .await
                .map_err(store_error)?;
            let rows = tx
                .query(&statement, &[&projection])
                .await
                .map_err(store_error)?;
            rows.iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64
        };
        execute(&tx, &self.sql.clear_fields, &[&projection]).await?;
        let records = execute(&tx, &self.sql.clear_applied, &[&projection]).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(hashes + u64::from(records > 0))
    }
}
