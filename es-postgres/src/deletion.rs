//! Deleting an aggregate on PostgreSQL: soft by appending the marker, hard in one
//! transaction that holds its category's row lock (so appends to the category wait), removes
//! its events, snapshot and append ids, and inserts the marker as its version 1.

use std::time::SystemTime;

use es_core::deletion::{self, soft_delete, Deletion};
use es_core::store::millis_since_epoch;
use es_core::{AppendResult, Metadata, Position, StoreError, StreamId};

use crate::error::store_error;
use crate::store::PostgresEventStore;

impl PostgresEventStore {
    pub(crate) async fn delete(
        &self,
        stream: &StreamId,
        deletion: Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError> {
        if deletion == Deletion::Soft {
            return soft_delete(self, stream, metadata).await;
        }
        let s = self.quoted_schema();
        let no_events = || deletion::nothing_to_delete(stream);
        let category = stream.category.as_ref();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let locked = tx
            .query(
                &format!("SELECT 1 FROM {s}.categories WHERE category = $1 FOR UPDATE"),
                &[&category],
            )
            .await
            .map_err(store_error)?;
        if locked.is_empty() {
            return Err(no_events());
        }
        let version: i64 = tx
            .query_one(
                &format!(
                    "SELECT coalesce(max(version), 0) FROM {s}.events \
                     WHERE category = $1 AND aggregate_id = $2"
                ),
                &[&category, &stream.id],
            )
            .await
            .map_err(store_error)?
            .get(0);
        if version == 0 {
            return Err(no_events());
        }
        for table in ["events", "snapshots", "appends"] {
            tx.execute(
                &format!("DELETE FROM {s}.{table} WHERE category = $1 AND aggregate_id = $2"),
                &[&category, &stream.id],
            )
            .await
            .map_err(store_error)?;
        }
        let now = millis_since_epoch(SystemTime::now()) as i64;
        let row = tx
            .query_one(
                &format!(
                    "UPDATE {s}.categories SET last_position = last_position + 1, \
                     last_millis = greatest(last_millis, $2) WHERE category = $1 \
                     RETURNING last_position, last_millis"
                ),
                &[&category, &now],
            )
            .await
            .map_err(store_error)?;
        let (position, recorded_at): (i64, i64) = (row.get(0), row.get(1));
        let marker = deletion::marker(true, version as u64, metadata)?;
        let names: Vec<&str> = marker.fields.iter().map(|(name, _)| name).collect();
        let values: Vec<&[u8]> = marker.fields.iter().map(|(_, value)| value).collect();
        let extra = (!marker.metadata.extra.is_empty())
            .then(|| serde_json::to_value(&marker.metadata.extra))
            .transpose()
            .map_err(|error| {
                StoreError::InvalidRequest(format!("metadata of {stream}: {error}"))
            })?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.events (category, position, aggregate_id, version, event_type, \
                 recorded_at, correlation_id, causation_id, metadata, field_names, field_values) \
                 VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10)"
            ),
            &[
                &category,
                &position,
                &stream.id,
                &marker.event_type.as_ref(),
                &recorded_at,
                &marker.metadata.correlation_id,
                &marker.metadata.causation_id,
                &extra,
                &names,
                &values,
            ],
        )
        .await
        .map_err(store_error)?;
        tx.execute("SELECT pg_notify($1, '')", &[&self.channel()])
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(AppendResult {
            version: 1,
            positions: vec![Position::from_sequence(position as u64)],
        })
    }
}
