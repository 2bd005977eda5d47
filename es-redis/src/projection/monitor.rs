//! Watching a projection from any process: its groups' status, progress, lag and dead
//! letters, and waiting for a position.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use es_core::projection::{DeadLetter, WaitTimeout};
use es_core::Position;
use redis::Value;

use crate::entry::{as_u64, into_array, into_bytes, RawEntry};
use crate::error::Error;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// A consumer group's progress on one category stream (`XINFO GROUPS` and `XPENDING`,
/// read atomically), or on every partition of a category
/// ([`ProjectionMonitor::category_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The category.
    pub category: String,
    /// The partition (0 for an unpartitioned category, and for a summary of all
    /// partitions).
    pub partition: u32,
    /// Whether the group exists (it does once a runner started).
    pub exists: bool,
    /// How many consumers the group has seen.
    pub consumers: u64,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Entries not delivered yet; `None` when Redis cannot tell (after entries were
    /// deleted from the middle of the stream).
    pub lag: Option<u64>,
    /// The last entry delivered to the group.
    pub last_delivered: Position,
    /// The oldest entry delivered but not acknowledged.
    pub oldest_pending: Option<Position>,
}

impl GroupStatus {
    /// The last position up to which every entry is processed: handled, skipped or
    /// dead-lettered, and acknowledged.
    pub fn watermark(&self) -> Position {
        match self.oldest_pending {
            Some(oldest) => self.last_delivered.min(before(oldest)),
            None => self.last_delivered,
        }
    }

    /// Whether every entry up to `position` is processed.
    pub fn has_processed(&self, position: Position) -> bool {
        self.watermark() >= position
    }
}

/// The greatest position below `position` (no entry lies between the two).
pub(super) fn before(position: Position) -> Position {
    match (position.millis, position.seq) {
        (0, 0) => Position::ZERO,
        (millis, 0) => Position::new(millis - 1, u64::MAX),
        (millis, seq) => Position::new(millis, seq - 1),
    }
}

/// A projection's progress, lag and dead letters, readable from any process (it needs no
/// runner, only the projection's name and categories).
///
/// ```no_run
/// use std::time::Duration;
/// use es_redis::{ProjectionMonitor, RedisConfig, RedisEventStore};
///
/// # async fn run(position: es_core::Position) -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisEventStore::connect(&RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let monitor = ProjectionMonitor::new(store, "profiles", ["user"]);
/// for status in monitor.status().await? {
///     println!("{}: lag {:?}, pending {}", status.category, status.lag, status.pending);
/// }
/// // Read-your-writes: wait until the projection has processed an append.
/// monitor.wait_for("user", position, Duration::from_secs(2)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ProjectionMonitor {
    pub(super) store: RedisEventStore,
    pub(super) group: String,
    pub(super) categories: Vec<Cow<'static, str>>,
}

impl ProjectionMonitor {
    /// The monitor of projection `projection` (its [`Projection::name`](es_core::projection::Projection::name)) over `categories`.
    pub fn new<C: Into<Cow<'static, str>>>(
        store: RedisEventStore,
        projection: impl Into<String>,
        categories: impl IntoIterator<Item = C>,
    ) -> Self {
        ProjectionMonitor {
            store,
            group: projection.into(),
            categories: categories.into_iter().map(Into::into).collect(),
        }
    }

    /// The group's progress on each category stream, one per partition (one round trip
    /// per stream).
    pub async fn status(&self) -> Result<Vec<GroupStatus>, Error> {
        let mut statuses = Vec::with_capacity(self.categories.len());
        for category in &self.categories {
            for partition in 0..self.store.keys().partitions(category) {
                statuses.push(self.partition_status(category, partition).await?);
            }
        }
        Ok(statuses)
    }

    /// The group's progress on the stream of `partition` of `category` (0 for an
    /// unpartitioned one).
    pub async fn partition_status(
        &self,
        category: &str,
        partition: u32,
    ) -> Result<GroupStatus, Error> {
        let mut invocation = SCRIPTS.group_status.prepare_invoke();
        invocation
            .key(self.store.keys().partition_stream(category, partition))
            .arg(&self.group);
        let reply = self.store.run_script("group_status", &invocation).await?;
        let mut status = parse_status(category, reply)?;
        status.partition = partition;
        Ok(status)
    }

    /// The group's progress on `category`: its stream's status, or for a partitioned
    /// category a summary of its partitions' (one round trip per partition). The summary
    /// exists if every partition's group does; it adds up `pending` and `lag` (`None` if
    /// any is unknown), counts the most `consumers` of a partition, gives the oldest
    /// pending entry of any partition, and as `last_delivered` the category's watermark:
    /// the position up to which every partition has processed every entry (a partition
    /// with nothing pending and nothing left to deliver counts as done, whatever its
    /// positions). So [`GroupStatus::watermark`] and [`GroupStatus::has_processed`] of the
    /// summary answer for the whole category.
    pub async fn category_status(&self, category: &str) -> Result<GroupStatus, Error> {
        let mut partitions = Vec::new();
        for partition in 0..self.store.keys().partitions(category) {
            partitions.push(self.partition_status(category, partition).await?);
        }
        Ok(combine(category, partitions))
    }

    /// Whether every entry of `category` (of every partition) up to `position` is
    /// processed.
    pub async fn has_processed(&self, category: &str, position: Position) -> Result<bool, Error> {
        Ok(self
            .category_status(category)
            .await?
            .has_processed(position))
    }

    /// Waits until every entry of `category` up to `position` is processed (say, the
    /// position an append returned), polling Redis every 10 ms; [`Error::WaitTimeout`]
    /// after `timeout`. For a partitioned category, in every partition: see
    /// [`category_status`](Self::category_status).
    pub async fn wait_for(
        &self,
        category: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.wait_until(category, None, position, timeout).await
    }

    /// Read-your-writes: waits until the projection has processed what a command wrote,
    /// every entry of the aggregate's category (of its partition, for a partitioned one)
    /// up to [`Executed::position`](es_core::Executed::position), polling Redis every
    /// 10 ms; [`Error::WaitTimeout`] after `timeout`.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn run<A>(monitor: es_redis::ProjectionMonitor, done: es_core::Executed<A>) -> Result<(), es_redis::Error> {
    /// monitor.wait_for_executed(&done, Duration::from_secs(5)).await?;
    /// // The projection's read model now reflects the command.
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_executed<A>(
        &self,
        executed: &es_core::Executed<A>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let partition = self.store.keys().partition_of(&executed.stream);
        self.wait_until(
            &executed.stream.category,
            Some(partition),
            executed.position,
            timeout,
        )
        .await
    }

    /// Polls until `position` of `category` (of `partition`, or of the whole category) is
    /// processed.
    async fn wait_until(
        &self,
        category: &str,
        partition: Option<u32>,
        position: Position,
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = match partition {
                Some(partition) => self.partition_status(category, partition).await?,
                None => self.category_status(category).await?,
            };
            if status.has_processed(position) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(WaitTimeout {
                    projection: self.group.clone(),
                    category: category.to_owned(),
                    position,
                    timeout,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The entries of `category` (of all its partitions) the projection dead-lettered,
    /// by original position.
    pub async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, Error> {
        let mut letters = Vec::new();
        for partition in 0..self.store.keys().partitions(category) {
            letters.extend(self.partition_dead_letters(category, partition).await?);
        }
        letters.sort_by_key(|letter| letter.position);
        Ok(letters)
    }

    /// The entries of `partition` of `category` the projection dead-lettered, oldest first.
    async fn partition_dead_letters(
        &self,
        category: &str,
        partition: u32,
    ) -> Result<Vec<DeadLetter>, Error> {
        let key = self
            .store
            .keys()
            .dead_letters(category, partition, &self.group);
        let mut letters = Vec::new();
        let mut after = "-".to_owned();
        loop {
            let entries = self.store.xrange_page(&key, &after, 1000).await?;
            let read = entries.len();
            for raw in entries {
                after = format!("({}", raw.id);
                letters.push(parse_dead_letter(category, &key, raw)?);
            }
            if read < 1000 {
                return Ok(letters);
            }
        }
    }
}

/// The summary of the statuses of every partition of `category` (see
/// [`ProjectionMonitor::category_status`]); a single partition's status as it is.
pub(super) fn combine(category: &str, mut partitions: Vec<GroupStatus>) -> GroupStatus {
    if partitions.len() == 1 {
        if let Some(only) = partitions.pop() {
            return only;
        }
    }
    let done = |s: &GroupStatus| s.exists && s.pending == 0 && s.lag == Some(0);
    let behind = partitions
        .iter()
        .filter(|s| !done(s))
        .map(GroupStatus::watermark)
        .min();
    let watermark = behind.unwrap_or_else(|| {
        partitions
            .iter()
            .map(|s| s.last_delivered)
            .max()
            .unwrap_or(Position::ZERO)
    });
    GroupStatus {
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

pub(super) fn parse_status(category: &str, reply: Value) -> Result<GroupStatus, Error> {
    let operation = "group_status";
    let items = into_array(reply, operation)?;
    if items.is_empty() {
        return Ok(GroupStatus {
            category: category.to_owned(),
            partition: 0,
            exists: false,
            consumers: 0,
            pending: 0,
            lag: None,
            last_delivered: Position::ZERO,
            oldest_pending: None,
        });
    }
    let malformed = || Error::unexpected(operation, format!("for {category}: a malformed reply"));
    let number = |value: &Value| match value {
        Value::Int(n) => Some(*n),
        other => as_u64(other).and_then(|n| i64::try_from(n).ok()),
    };
    let position = |value: Value| {
        into_bytes(value)
            .and_then(|raw| String::from_utf8(raw).ok())
            .map(|text| {
                if text.is_empty() {
                    Ok(None)
                } else {
                    text.parse::<Position>().map(Some).map_err(|_| malformed())
                }
            })
            .unwrap_or_else(|| Err(malformed()))
    };
    let mut items = items.into_iter();
    let (
        Some(consumers),
        Some(pending),
        Some(last_delivered),
        Some(_entries_read),
        Some(lag),
        Some(oldest),
    ) = (
        items.next(),
        items.next(),
        items.next(),
        items.next(),
        items.next(),
        items.next(),
    )
    else {
        return Err(malformed());
    };
    Ok(GroupStatus {
        category: category.to_owned(),
        partition: 0,
        exists: true,
        consumers: number(&consumers)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(malformed)?,
        pending: number(&pending)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(malformed)?,
        lag: number(&lag).and_then(|n| u64::try_from(n).ok()),
        last_delivered: position(last_delivered)?.unwrap_or(Position::ZERO),
        oldest_pending: position(oldest)?,
    })
}

pub(super) fn parse_dead_letter(
    category: &str,
    key: &str,
    raw: RawEntry,
) -> Result<DeadLetter, Error> {
    let operation = format!("reading dead letters of {key}");
    let pairs = raw
        .pairs
        .ok_or_else(|| Error::unexpected(&operation, format!("entry {} has no fields", raw.id)))?;
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let position = field("_entry_id")
        .and_then(|id| id.parse::<Position>().ok())
        .ok_or_else(|| {
            Error::unexpected(&operation, format!("entry {} has no `_entry_id`", raw.id))
        })?;
    let mut error = field("_error").unwrap_or_default();
    if let Some(last) = field("_last_failure") {
        error = format!("{error}; last handler error: {last}");
    }
    Ok(DeadLetter {
        category: category.to_owned(),
        position,
        event_type: field("type").unwrap_or_default(),
        attempts: field("_deliveries")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last_delivered: Position, oldest_pending: Option<Position>) -> GroupStatus {
        GroupStatus {
            category: "user".into(),
            partition: 0,
            exists: true,
            consumers: 1,
            pending: u64::from(oldest_pending.is_some()),
            lag: Some(0),
            last_delivered,
            oldest_pending,
        }
    }

    #[test]
    fn the_watermark_stops_just_below_the_oldest_pending_entry() {
        let delivered = Position::new(50, 3);
        assert_eq!(status(delivered, None).watermark(), delivered);
        let pending = status(delivered, Some(Position::new(20, 2)));
        assert_eq!(pending.watermark(), Position::new(20, 1));
        assert!(pending.has_processed(Position::new(20, 1)));
        assert!(!pending.has_processed(Position::new(20, 2)));
        // Every id of an earlier millisecond is below `20-0`.
        let at_zero = status(delivered, Some(Position::new(20, 0)));
        assert!(at_zero.has_processed(Position::new(19, u64::MAX)));
        assert!(!at_zero.has_processed(Position::new(20, 0)));
        assert_eq!(before(Position::ZERO), Position::ZERO);
    }
}
