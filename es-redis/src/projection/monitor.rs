//! Watching a projection from any process: its groups' status, progress, lag and dead
//! letters, and waiting for a position.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use es_core::projection::{DeadLetter, Projection, ProjectionStatus, WaitTimeout};
use es_core::Position;
use redis::Value;

use crate::entry::{as_u64, into_array, into_bytes, RawEntry};
use crate::error::Error;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

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
    store: RedisEventStore,
    group: String,
    categories: Vec<Cow<'static, str>>,
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

    /// The monitor of `projection` (its name and categories) on `store`.
    pub fn of<P: Projection>(store: &RedisEventStore, projection: &P) -> Self {
        Self::new(store.clone(), projection.name(), projection.categories())
    }

    /// The group's progress on each category stream, one per partition (one round trip
    /// per stream).
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, Error> {
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
    ) -> Result<ProjectionStatus, Error> {
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
    /// positions). So [`ProjectionStatus::watermark`] and [`ProjectionStatus::has_processed`] of the
    /// summary answer for the whole category.
    pub async fn category_status(&self, category: &str) -> Result<ProjectionStatus, Error> {
        let mut partitions = Vec::new();
        for partition in 0..self.store.keys().partitions(category) {
            partitions.push(self.partition_status(category, partition).await?);
        }
        Ok(ProjectionStatus::combine(category, &partitions))
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
        Ok(self
            .dead_letter_entries(category, partition)
            .await?
            .into_iter()
            .map(|(_, letter)| letter)
            .collect())
    }

    /// The dead letters of `partition` of `category`, oldest first, each with the id of
    /// its entry in the dead-letter stream.
    pub(super) async fn dead_letter_entries(
        &self,
        category: &str,
        partition: u32,
    ) -> Result<Vec<(String, DeadLetter)>, Error> {
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
                let id = raw.id.clone();
                letters.push((id, parse_dead_letter(category, &key, raw)?));
            }
            if read < 1000 {
                return Ok(letters);
            }
        }
    }
}

fn parse_status(category: &str, reply: Value) -> Result<ProjectionStatus, Error> {
    let operation = "group_status";
    let items = into_array(reply, operation)?;
    if items.is_empty() {
        return Ok(ProjectionStatus::new(category, 0));
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
    let mut status = ProjectionStatus::new(category, 0);
    status.exists = true;
    status.consumers = number(&consumers)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(malformed)?;
    status.pending = number(&pending)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(malformed)?;
    status.lag = number(&lag).and_then(|n| u64::try_from(n).ok());
    status.last_delivered = position(last_delivered)?.unwrap_or(Position::ZERO);
    status.oldest_pending = position(oldest)?;
    Ok(status)
}

fn parse_dead_letter(category: &str, key: &str, raw: RawEntry) -> Result<DeadLetter, Error> {
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
