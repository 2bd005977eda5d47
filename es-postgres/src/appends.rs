//! Appends, sent in groups: es-core's group commit queues the appends callers make while
//! earlier ones are on their way, and each call of `append_events` runs a group in one
//! transaction, so one flush to disk commits them all; each append keeps its own version
//! check and its own result.

use deadpool_postgres::Pool;
use es_core::group_commit::BatchSend;
use es_core::{
    AppendResult, ConflictError, ExpectedVersion, NewEvent, Position, StoreError, StreamId,
};

use crate::error::{pool_error, store_error, Shared};

/// One append, as queued.
pub(crate) struct Append {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) append_id: Option<String>,
    pub(crate) events: Vec<NewEvent>,
}

/// Refuses text PostgreSQL cannot store (a NUL character, in `text` or `jsonb`), before the
/// append joins a group: one such append would fail the whole call, and every other append
/// of the group with it.
pub(crate) fn refuse_nul(stream: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    let refuse = |what: &str| {
        Err(StoreError::InvalidRequest(format!(
            "{what} of an append to {stream} contains a NUL character, which PostgreSQL cannot store in text"
        )))
    };
    if stream.category.contains('\0') || stream.id.contains('\0') {
        return refuse("the stream id");
    }
    for event in events {
        if event.event_type.contains('\0') {
            return refuse("an event type");
        }
        if event.fields.iter().any(|(name, _)| name.contains('\0')) {
            return refuse("a field name");
        }
        let metadata = &event.metadata;
        let texts = metadata
            .correlation_id
            .iter()
            .chain(&metadata.causation_id)
            .chain(metadata.extra.iter().flat_map(|(k, v)| [k, v]));
        for text in texts {
            if text.contains('\0') {
                return refuse("the metadata");
            }
        }
    }
    Ok(())
}

/// Sends groups of appends as one call of the append function.
pub(crate) struct AppendSender {
    pub(crate) pool: Pool,
    /// `SELECT outcome, version, first_position, event_count FROM <schema>.append_events($1 … $13)`.
    pub(crate) sql: String,
}

impl AppendSender {
    async fn call(&self, appends: &[Append]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut categories = Vec::with_capacity(appends.len());
        let mut aggregates = Vec::with_capacity(appends.len());
        let mut expected = Vec::with_capacity(appends.len());
        let mut append_ids = Vec::with_capacity(appends.len());
        let mut event_counts = Vec::with_capacity(appends.len());
        let mut types = Vec::new();
        let mut starts = Vec::new();
        let mut counts = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut values: Vec<&[u8]> = Vec::new();
        let mut correlation = Vec::new();
        let mut causation = Vec::new();
        let mut metadata: Vec<Option<serde_json::Value>> = Vec::new();
        for append in appends {
            categories.push(append.stream.category.as_ref());
            aggregates.push(append.stream.id.as_str());
            expected.push(match append.expected {
                ExpectedVersion::Any => -1,
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Exact(version) => i64::try_from(version).unwrap_or(i64::MAX),
            });
            append_ids.push(append.append_id.as_deref());
            event_counts.push(append.events.len() as i32);
            for event in &append.events {
                types.push(event.event_type.as_ref());
                starts.push(names.len() as i32);
                counts.push(event.fields.len() as i32);
                for (name, value) in event.fields.iter() {
                    names.push(name);
                    values.push(value);
                }
                correlation.push(event.metadata.correlation_id.as_deref());
                causation.push(event.metadata.causation_id.as_deref());
                // A JSON object of strings, by serde, as es-redis stores it.
                metadata.push(if event.metadata.extra.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::to_value(&event.metadata.extra).map_err(|error| {
                            StoreError::InvalidRequest(format!(
                                "metadata of {}: {error}",
                                append.stream
                            ))
                        })?,
                    )
                });
            }
        }
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client
            .prepare_cached(&self.sql)
            .await
            .map_err(store_error)?;
        client
            .query(
                &statement,
                &[
                    &categories,
                    &aggregates,
                    &expected,
                    &append_ids,
                    &event_counts,
                    &types,
                    &starts,
                    &counts,
                    &names,
                    &values,
                    &correlation,
                    &causation,
                    &metadata,
                ],
            )
            .await
            .map_err(store_error)
    }
}

/// One append's outcome from its row.
fn outcome(append: &Append, row: &tokio_postgres::Row) -> Result<AppendResult, StoreError> {
    let outcome: &str = row.try_get(0).map_err(store_error)?;
    let version: i64 = row.try_get(1).map_err(store_error)?;
    if outcome == "conflict" {
        return Err(ConflictError {
            stream: append.stream.clone(),
            expected: append.expected,
            actual: version as u64,
        }
        .into());
    }
    let first: i64 = row.try_get(2).map_err(store_error)?;
    let count: i32 = row.try_get(3).map_err(store_error)?;
    Ok(AppendResult {
        version: version as u64,
        positions: (0..i64::from(count))
            .map(|i| Position::from_sequence((first + i) as u64))
            .collect(),
    })
}

impl BatchSend for AppendSender {
    type Item = Append;
    type Reply = AppendResult;
    type Error = Shared;

    fn weight(append: &Append) -> usize {
        append.events.len()
    }

    async fn send(
        &self,
        appends: Vec<Append>,
    ) -> Result<Vec<Result<AppendResult, Shared>>, Shared> {
        let rows = self.call(&appends).await?;
        if rows.len() != appends.len() {
            return Err(StoreError::Backend {
                message: format!(
                    "the append function answered {} appends with {} rows",
                    appends.len(),
                    rows.len()
                ),
                source: None,
            }
            .into());
        }
        Ok(appends
            .iter()
            .zip(&rows)
            .map(|(append, row)| outcome(append, row).map_err(Shared::from))
            .collect())
    }

    fn stopped() -> Shared {
        StoreError::Connection {
            message: "the append queue stopped before the append's reply came: its outcome is unknown (retry it with the same append id)".into(),
            source: None,
        }
        .into()
    }
}
