//! What a backend provides for projections: a [`ProjectionSource`] delivers a
//! projection's events to one consumer, and a [`ProjectionBackend`] opens sources and
//! holds read models. The [`ProjectionRunner`](super::ProjectionRunner) does the rest,
//! the same way on every backend.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{DeadLetter, ProjectionOptions};
use crate::error::StoreError;
use crate::read_model::ReadModelStore;
use crate::store::{Position, StoredEvent};

/// One of the streams a source reads: a category, or one partition of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStream {
    /// The category.
    pub category: Cow<'static, str>,
    /// The partition (0 for an unpartitioned category).
    pub partition: u32,
    /// Where the backend keeps it (the Redis stream key, a table name), for logs.
    pub location: Arc<str>,
}

/// One event delivered to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// Its position in its stream: what acknowledging, failing and dead-lettering name.
    pub position: Position,
    /// How many times it has been delivered, this time included (1 when fresh).
    pub delivered: u32,
    /// The stored event; `None` when it vanished while pending (say, trimmed): it is
    /// acknowledged unhandled. An entry the backend cannot read gives the error, and the
    /// event is dead-lettered with it.
    pub event: Option<Result<StoredEvent, StoreError>>,
}

/// The events of one read of one stream, in stream order.
#[derive(Debug)]
pub struct StreamBatch {
    /// The index of the stream in [`ProjectionSource::streams`].
    pub stream: usize,
    /// The events.
    pub deliveries: Vec<Delivery>,
}

/// What a backend's projection source can do beyond the common contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Several runners of one projection (each its own consumer name, in one process or
    /// many) share the work, each event going to one of them (Redis consumer groups).
    /// Without it, each runner keeps its own position: run one per projection.
    pub competing_consumers: bool,
    /// The position, pending events and dead letters survive the process: a new runner
    /// continues where the last one stopped. Without it, a new runner starts from the
    /// beginning (the in-memory backend).
    pub durable: bool,
}

impl Capabilities {
    /// With (or without) competing consumers.
    pub const fn with_competing_consumers(mut self, yes: bool) -> Self {
        self.competing_consumers = yes;
        self
    }

    /// Durable (or not).
    pub const fn with_durable(mut self, yes: bool) -> Self {
        self.durable = yes;
        self
    }
}

/// A projection's progress in one stream (a category, or one partition of one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The category.
    pub category: String,
    /// The partition (0 for an unpartitioned category, and for a summary of all
    /// partitions).
    pub partition: u32,
    /// Whether the projection has started reading it (a Redis consumer group exists).
    pub exists: bool,
    /// How many consumers have read it.
    pub consumers: u64,
    /// Events delivered but not acknowledged.
    pub pending: u64,
    /// Events not delivered yet; `None` when the backend cannot tell (Redis, after
    /// entries were deleted from the middle of the stream).
    pub lag: Option<u64>,
    /// The last event delivered.
    pub last_delivered: Position,
    /// The oldest event delivered but not acknowledged.
    pub oldest_pending: Option<Position>,
}

impl ProjectionStatus {
    /// The status of a stream the projection has not started reading.
    pub fn new(category: impl Into<String>, partition: u32) -> Self {
        ProjectionStatus {
            category: category.into(),
            partition,
            exists: false,
            consumers: 0,
            pending: 0,
            lag: None,
            last_delivered: Position::ZERO,
            oldest_pending: None,
        }
    }

    /// The last position up to which every event is processed: handled, skipped or
    /// dead-lettered, and acknowledged.
    pub fn watermark(&self) -> Position {
        match self.oldest_pending {
            Some(oldest) => self.last_delivered.min(oldest.previous()),
            None => self.last_delivered,
        }
    }

    /// Whether every event up to `position` is processed.
    pub fn has_processed(&self, position: Position) -> bool {
        self.watermark() >= position
    }

    /// One category's status from the statuses of its partitions; a single partition's
    /// status as it is. The summary exists if every partition's does; it adds up `pending`
    /// and `lag` (`None` if any is unknown), counts the most `consumers` of a partition,
    /// gives the oldest pending event of any partition, and as `last_delivered` the
    /// category's watermark: the position up to which every partition has processed every
    /// event (a partition with nothing pending and nothing left to deliver counts as done,
    /// whatever its positions). So [`watermark`](Self::watermark) and
    /// [`has_processed`](Self::has_processed) of the summary answer for the whole category.
    pub fn combine(category: &str, partitions: &[ProjectionStatus]) -> ProjectionStatus {
        if let [only] = partitions {
            return only.clone();
        }
        let done = |s: &ProjectionStatus| s.exists && s.pending == 0 && s.lag == Some(0);
        let behind = partitions
            .iter()
            .filter(|s| !done(s))
            .map(ProjectionStatus::watermark)
            .min();
        let watermark = behind.unwrap_or_else(|| {
            partitions
                .iter()
                .map(|s| s.last_delivered)
                .max()
                .unwrap_or(Position::ZERO)
        });
        ProjectionStatus {
            category: category.to_owned(),
            partition: 0,
            exists: !partitions.is_empty() && partitions.iter().all(|s| s.exists),
            consumers: partitions.iter().map(|s| s.consumers).max().unwrap_or(0),
            pending: partitions.iter().map(|s| s.pending).sum(),
            lag: partitions.iter().map(|s| s.lag).sum(),
            last_delivered: watermark,
            oldest_pending: partitions.iter().filter_map(|s| s.oldest_pending).min(),
        }
    }
}

/// Delivers one projection's events to one consumer, and keeps what the consumer did:
/// what a backend implements so that [`ProjectionRunner`](super::ProjectionRunner) runs
/// projections on it. The runner owns the walk over batches, failures and dead letters;
/// a source only stores its outcome.
///
/// Every event is delivered until it is acknowledged or dead-lettered (at least once). A
/// delivered event that is neither stays *pending*: [`reclaim`](Self::reclaim) hands it
/// out again once it has been pending for the options' `claim_idle`.
#[async_trait]
pub trait ProjectionSource: Send + Sync + 'static {
    /// The streams it reads, in a fixed order: [`StreamBatch::stream`] indexes this.
    fn streams(&self) -> &[SourceStream];

    /// What it can do beyond the common contract.
    fn capabilities(&self) -> Capabilities;

    /// Gets ready to read (Redis: creates the consumer groups). The runner calls it before
    /// its first read, and again after a lost connection; it must be harmless to repeat.
    async fn prepare(&self) -> Result<(), StoreError>;

    /// Events never delivered to this projection, from every stream: at most the batch
    /// size per stream. With `block`, waits up to that long for one to arrive; with
    /// `None`, returns at once what there is.
    async fn read(&self, block: Option<Duration>) -> Result<Vec<StreamBatch>, StoreError>;

    /// Events of stream `stream` pending longer than `idle` (from any consumer), delivered
    /// to this one now, with their delivery counts: one page, from `cursor` (`None` at
    /// first). Returns the page and the cursor of the next, `None` after the last.
    async fn reclaim(
        &self,
        stream: usize,
        idle: Duration,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError>;

    /// Acknowledges processed events: they are not delivered again.
    async fn acknowledge(&self, stream: usize, positions: &[Position]) -> Result<(), StoreError>;

    /// Records why the handling of a pending event failed (it stays pending).
    async fn record_failure(
        &self,
        stream: usize,
        position: Position,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Forgets the failures recorded for events that were handled on a later delivery.
    async fn clear_failures(&self, stream: usize, positions: &[Position])
        -> Result<(), StoreError>;

    /// Keeps the event at `position` aside with `error` and how often it was `delivered`,
    /// and acknowledges it, in one step. Returns `false` when it was not pending any more
    /// (another consumer finished it first).
    async fn dead_letter(
        &self,
        stream: usize,
        position: Position,
        delivered: u32,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// Periodic upkeep, run with each reclaim (Redis: prunes records of applied events).
    async fn upkeep(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The projection's progress in each of its streams.
    async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError>;

    /// The watermark of each category: what the runner publishes as progress after its
    /// batches. The default derives it from [`status`](Self::status); a backend whose
    /// exact lag is costly overrides it.
    async fn watermarks(&self) -> Result<HashMap<String, Position>, StoreError> {
        Ok(watermarks(&self.status().await?))
    }

    /// The events of `category` it dead-lettered, oldest first.
    async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError>;

    /// The dead letters of stream `stream`, oldest first, each with its event read again
    /// from the log (for a re-drive): a delivery's `delivered` is the dead letter's
    /// attempts, and its `event` is `None` when the event is no longer in the log
    /// ([`event_at`](super::event_at) reads one).
    async fn dead_lettered(&self, stream: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Deletes the dead letters of stream `stream` at `positions` (a re-drive handled
    /// them); positions that are no dead letters are ignored.
    async fn forget_dead_letters(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError>;

    /// Starts the projection over: every stream back to the beginning, and its dead
    /// letters and failure records deleted.
    async fn reset(&self) -> Result<(), StoreError>;
}

/// A backend that runs projections: it opens a [`ProjectionSource`] per runner and holds
/// read models. `es-core`'s [`InMemoryStore`](crate::InMemoryStore) is one, and so is each
/// durable backend's store, which is what lets one projection run unchanged on any of
/// them.
#[async_trait]
pub trait ProjectionBackend: Send + Sync {
    /// A source delivering the events of `categories` to one consumer of projection
    /// `name`.
    async fn projection_source(
        &self,
        name: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Result<Box<dyn ProjectionSource>, StoreError>;

    /// Where this backend keeps read models.
    fn read_model_store(&self) -> Arc<dyn ReadModelStore>;

    /// The read model of projection `projection`, kept by this backend.
    fn read_model(&self, projection: &str) -> crate::read_model::ReadModel {
        crate::read_model::ReadModel::new(self.read_model_store(), projection)
    }
}

/// A read for sources that poll: reads with `read_now` until it returns events or `block`
/// has passed, waiting `poll_interval` between reads (with no `block`, reads once). What
/// [`ProjectionSource::read`] does on a backend without a blocking read of its own.
pub async fn poll<F, Fut>(
    block: Option<Duration>,
    poll_interval: Duration,
    read_now: F,
) -> Result<Vec<StreamBatch>, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<StreamBatch>, StoreError>>,
{
    poll_until_woken(block, poll_interval, read_now, tokio::time::sleep).await
}

/// [`poll`], with the wait between reads given by the backend: `wait(at_most)` returns after
/// at most `at_most`, and earlier when the backend hears of new events (PostgreSQL's
/// `LISTEN`), so a blocked read wakes at once without polling often.
pub async fn poll_until_woken<F, Fut, W, WFut>(
    block: Option<Duration>,
    poll_interval: Duration,
    mut read_now: F,
    mut wait: W,
) -> Result<Vec<StreamBatch>, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<StreamBatch>, StoreError>>,
    W: FnMut(Duration) -> WFut,
    WFut: std::future::Future<Output = ()>,
{
    let deadline = block.map(|block| std::time::Instant::now() + block);
    loop {
        let batch = read_now().await?;
        let Some(deadline) = deadline else {
            return Ok(batch);
        };
        let now = std::time::Instant::now();
        if !batch.is_empty() || now >= deadline {
            return Ok(batch);
        }
        wait(poll_interval.min(deadline - now)).await;
    }
}

/// The position after which a reclaim continues, from the cursor a source returned with
/// its last page (a [`Position`] as text; `None`: from the start).
pub fn reclaim_after(cursor: Option<String>) -> Result<Position, StoreError> {
    match cursor {
        Some(cursor) => cursor.parse::<Position>().map_err(|error| {
            StoreError::InvalidRequest(format!("a reclaim cursor that is not ours: {error}"))
        }),
        None => Ok(Position::ZERO),
    }
}

/// The watermark of each category (the least of its partitions').
pub fn watermarks(statuses: &[ProjectionStatus]) -> HashMap<String, Position> {
    let mut by_category: HashMap<&str, Vec<ProjectionStatus>> = HashMap::new();
    for status in statuses {
        by_category
            .entry(status.category.as_str())
            .or_default()
            .push(status.clone());
    }
    by_category
        .into_iter()
        .map(|(category, partitions)| {
            let watermark = ProjectionStatus::combine(category, &partitions).watermark();
            (category.to_owned(), watermark)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last_delivered: Position, oldest_pending: Option<Position>) -> ProjectionStatus {
        ProjectionStatus {
            exists: true,
            consumers: 1,
            pending: u64::from(oldest_pending.is_some()),
            lag: Some(0),
            last_delivered,
            oldest_pending,
            ..ProjectionStatus::new("user", 0)
        }
    }

    #[test]
    fn the_watermark_stops_just_below_the_oldest_pending_event() {
        let delivered = Position::new(50, 3);
        assert_eq!(status(delivered, None).watermark(), delivered);
        let pending = status(delivered, Some(Position::new(20, 2)));
        assert_eq!(pending.watermark(), Position::new(20, 1));
        assert!(pending.has_processed(Position::new(20, 1)));
        assert!(!pending.has_processed(Position::new(20, 2)));
        // Every position with a smaller first part is below `20-0`.
        let at_zero = status(delivered, Some(Position::new(20, 0)));
        assert!(at_zero.has_processed(Position::new(19, u64::MAX)));
        assert!(!at_zero.has_processed(Position::new(20, 0)));
        assert_eq!(Position::ZERO.previous(), Position::ZERO);
    }

    #[test]
    fn a_category_is_processed_up_to_its_slowest_unfinished_partition() {
        let done = status(Position::new(90, 0), None);
        let behind = status(Position::new(50, 0), Some(Position::new(40, 0)));
        let summary = ProjectionStatus::combine("user", &[done.clone(), behind]);
        assert_eq!(summary.watermark(), Position::new(39, u64::MAX));
        assert_eq!(summary.pending, 1);
        let finished =
            ProjectionStatus::combine("user", &[done, status(Position::new(10, 0), None)]);
        assert_eq!(finished.watermark(), Position::new(90, 0));
    }
}
