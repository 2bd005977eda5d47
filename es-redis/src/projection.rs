//! [`ProjectionRunner`]: runs an [`es_core::projection::Projection`] on Redis consumer
//! groups, and [`ProjectionMonitor`]: its progress, lag and dead letters, from any process.
//!
//! Each projection has one consumer group, named after it, on the category stream of every
//! category it reads (on every partition stream of a partitioned category), created at `0`
//! so a projection added later replays all history. Runners are the group's consumers:
//! several of them (in one process or several, each with its own consumer name) share the
//! work.
//!
//! - **Reading:** `XREADGROUP … COUNT <batch> BLOCK <block> STREAMS <every stream> > …`
//!   on a connection of its own whose reply timeout exceeds the block time. On a Redis
//!   Cluster a command may only name keys of one slot, so the runner sends one
//!   `XREADGROUP` per slot, all at once, each blocking for the block time divided by their
//!   number (reads on one node wait on each other, and together stay within the block time).
//! - **Acknowledging:** an entry is acknowledged (`XACK`) only after the handler succeeded,
//!   after it was skipped (an event type the projection does not handle), or after it was
//!   dead-lettered. Delivery is therefore at least once; [`HashReadModel`] makes updates
//!   idempotent.
//! - **Retries and crash recovery:** a failed entry stays pending. Every
//!   [`claim_interval`](ProjectionOptions::claim_interval) (and at start) the runner
//!   `XAUTOCLAIM`s entries pending longer than [`claim_idle`](ProjectionOptions::claim_idle)
//!   from any consumer of the group, including dead ones, and processes them again.
//! - **Dead letters:** an entry that does not decode, or that was delivered more than
//!   [`max_deliveries`](ProjectionOptions::max_deliveries) times (counts from `XPENDING`), is
//!   copied with the error, its entry id and its fields to
//!   `<namespace>:{<category>}:dead:<projection>` (of its partition) and acknowledged, in
//!   one script.
//! - **Progress:** the group's watermark in a stream is the last entry id up to which
//!   every entry is acknowledged (at most the group's last-delivered id, below its oldest
//!   pending entry); a partitioned category's is the least of its partitions' (see
//!   [`ProjectionMonitor::category_status`]). [`ProjectionMonitor::wait_for`] polls it from any process;
//!   [`ProjectionRunner::progress`] is an in-process [`Progress`] fed after every batch
//!   (every 50 ms while catching up).
//!
//! [`HashReadModel`]: crate::HashReadModel

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::projection::{handles, DeadLetter, Progress, Projection, WaitTimeout};
use es_core::Position;
use redis::cluster_routing::Slot;
use redis::Value;
use tokio::sync::watch;

use crate::config::RedisConfig;
use crate::connection::RedisConnection;
use crate::entry::{self, as_u64, into_array, into_bytes, EntrySource, RawEntry};
use crate::error::Error;
use crate::read_model::clear_read_model;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// How much longer than the block time the reading connection waits for a reply.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// How long the runner waits before retrying after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// How many applied entry ids one prune looks at per category.
const PRUNE_LIMIT: usize = 10_000;

/// How a [`ProjectionRunner`] reads, retries and recovers.
///
/// ```
/// use std::time::Duration;
/// use es_redis::ProjectionOptions;
///
/// let options = ProjectionOptions::new("worker-1")
///     .batch_size(200)
///     .block(Duration::from_millis(500))
///     .claim_idle(Duration::from_secs(10))
///     .max_deliveries(5);
/// assert_eq!(options.consumer(), "worker-1");
/// ```
#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    consumer: String,
    batch_size: usize,
    block: Duration,
    claim_idle: Duration,
    claim_interval: Duration,
    max_deliveries: u32,
    prune_grace: Duration,
}

impl ProjectionOptions {
    /// Options for the consumer named `consumer`, which must be unique among the runners of
    /// the projection (say, `<host>-<pid>-<n>`). Defaults: batches of 100 entries per
    /// stream, reads block up to 1 s, entries pending 30 s are reclaimed, checked every
    /// 5 s, dead-lettered after 3 deliveries, applied ids pruned after 5 minutes.
    pub fn new(consumer: impl Into<String>) -> Self {
        ProjectionOptions {
            consumer: consumer.into(),
            batch_size: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            max_deliveries: 3,
            prune_grace: Duration::from_secs(300),
        }
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// At most this many entries per stream per read (`COUNT`; at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch_size = entries.max(1);
        self
    }

    /// How long a read waits for new entries (`BLOCK`; at least 1 ms). Shutdown waits for
    /// the read in flight, so this bounds how long stopping takes.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Entries pending longer than this (their worker died, or their handler failed) are
    /// reclaimed. Keep it above the longest two batches may take: a runner catching up
    /// holds the next batch (read ahead) while it processes the current one, and an entry
    /// pending longer than this is processed by another worker too.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often to look for entries to reclaim (and prune the applied-entry record).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval;
        self
    }

    /// An entry delivered more than this many times is dead-lettered instead of handled
    /// again; a handler failing on its `max_deliveries`-th delivery dead-letters it at
    /// once (at least 1).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// [`HashReadModel`](crate::HashReadModel) keeps the id of every applied entry; the
    /// runner forgets ids that can no longer be delivered (acknowledged entries at or below
    /// the group's watermark) once they were applied this long ago. The grace covers a
    /// stalled worker that resumes after another one reclaimed, applied and acknowledged
    /// its entry: within `claim_idle + prune_grace` it still finds the record.
    pub fn prune_grace(mut self, grace: Duration) -> Self {
        self.prune_grace = grace;
        self
    }
}

/// What a [`ProjectionRunner`] did, returned by [`run`](ProjectionRunner::run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunStats {
    /// Entries whose handler succeeded.
    pub handled: u64,
    /// Entries of event types the projection does not handle (acknowledged unhandled).
    pub skipped: u64,
    /// Handler failures (the entry stays pending and is retried).
    pub failed: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries taken over from other consumers (or from itself) with `XAUTOCLAIM`.
    pub claimed: u64,
}

/// How often a runner that is catching up publishes its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// One category stream (of one partition) a projection reads.
#[derive(Debug, Clone)]
struct CategoryStream {
    category: Cow<'static, str>,
    partition: u32,
    key: Arc<str>,
    dead_letters: String,
    failures: String,
    applied: String,
}

/// What to do with an entry once processed.
enum Outcome {
    /// Acknowledge it.
    Ack,
    /// Leave it pending (failed, to be retried) or already acknowledged (dead-lettered).
    Keep,
}

/// An entry sorted before its batch is handled.
enum Prepared<E> {
    /// Acknowledge it unhandled (deleted, or of a type the projection skips).
    Ack,
    /// Dead-letter it, for this reason.
    DeadLetter(String),
    /// Hand it to the projection.
    Ready(Box<es_core::RecordedEvent<E>>),
}

/// Runs a [`Projection`] as one consumer of its Redis consumer groups.
///
/// ```no_run
/// # use es_core::projection::Projection;
/// use std::time::Duration;
/// use es_redis::{ProjectionOptions, ProjectionRunner, RedisConfig};
///
/// # async fn run<P: Projection>(projection: P) -> Result<(), Box<dyn std::error::Error>> {
/// let config = RedisConfig::new("redis://127.0.0.1:6379");
/// let runner = ProjectionRunner::connect(&config, projection, ProjectionOptions::new("worker-1")).await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let task = tokio::spawn(async move {
///     let stats = runner.run(async { let _ = stopped.await; }).await;
///     (runner, stats)
/// });
/// // … later: finish the batch in hand, acknowledge it, and return.
/// let _ = stop.send(());
/// let (runner, stats) = task.await?;
/// println!("{:?}", stats?);
/// # Ok(())
/// # }
/// ```
pub struct ProjectionRunner<P: Projection> {
    projection: P,
    store: RedisEventStore,
    reader: RedisConnection,
    options: ProjectionOptions,
    group: String,
    streams: Vec<CategoryStream>,
    /// The indices in `streams` read by one `XREADGROUP` each: all of them on a single
    /// server, the streams of one slot on a cluster (a command may not span slots).
    read_groups: Vec<Vec<usize>>,
    progress: watch::Sender<HashMap<String, Position>>,
}

impl<P: Projection> std::fmt::Debug for ProjectionRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("group", &self.group)
            .field("options", &self.options)
            .field(
                "streams",
                &self.streams.iter().map(|s| &*s.key).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<P: Projection> ProjectionRunner<P> {
    /// Connects twice with `config`: once for commands and once for blocking reads, whose
    /// reply timeout is the block time plus 5 s (a read that timed out on the client would
    /// leave its late reply to confuse the next command).
    pub async fn connect(
        config: &RedisConfig,
        projection: P,
        options: ProjectionOptions,
    ) -> Result<Self, Error> {
        let store = RedisEventStore::connect(config).await?;
        let read_timeout = options.block + READ_TIMEOUT_MARGIN;
        // No timeout stays no timeout; a shorter one is raised above the block time.
        let read_timeout = config
            .response_timeout_value()
            .map(|timeout| timeout.max(read_timeout));
        let reader = config.clone().response_timeout(read_timeout).open().await?;
        Ok(Self::with_connections(store, reader, projection, options))
    }

    /// A runner over `store` (commands) and `reader` (blocking reads: its reply timeout
    /// must exceed [`ProjectionOptions::block`]; a cluster connection if `store` is on a
    /// cluster).
    ///
    /// It reads every partition stream of every category of the projection. On a cluster
    /// it reads the streams of each slot with an `XREADGROUP` of its own (one command may
    /// not name keys of several slots), all at once.
    pub fn with_connections(
        store: RedisEventStore,
        reader: impl Into<RedisConnection>,
        projection: P,
        options: ProjectionOptions,
    ) -> Self {
        let reader = reader.into();
        let group = projection.name().to_owned();
        let keys = store.keys();
        let mut streams: Vec<CategoryStream> = Vec::new();
        for category in projection.categories() {
            if streams.iter().any(|s| s.category == category) {
                continue;
            }
            for partition in 0..keys.partitions(&category) {
                streams.push(CategoryStream {
                    key: Arc::from(keys.partition_stream(&category, partition)),
                    dead_letters: keys.dead_letters(&category, partition, &group),
                    failures: keys.failures(&category, partition, &group),
                    applied: keys.applied_entries(&group, &category, partition),
                    partition,
                    category: category.clone(),
                });
            }
        }
        let read_groups = if reader.is_cluster() || store.connection().is_cluster() {
            let mut by_slot: Vec<(Slot, Vec<usize>)> = Vec::new();
            for (index, stream) in streams.iter().enumerate() {
                let slot = Slot::for_key(stream.key.as_bytes());
                match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, indices)) => indices.push(index),
                    None => by_slot.push((slot, vec![index])),
                }
            }
            by_slot.into_iter().map(|(_, indices)| indices).collect()
        } else {
            vec![(0..streams.len()).collect()]
        };
        ProjectionRunner {
            projection,
            store,
            reader,
            options,
            group,
            streams,
            read_groups,
            progress: watch::channel(HashMap::new()).0,
        }
    }

    /// The projection (e.g. to query an in-memory read model).
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The options it runs with.
    pub fn options(&self) -> &ProjectionOptions {
        &self.options
    }

    /// Progress and dead letters of this projection's groups.
    pub fn monitor(&self) -> ProjectionMonitor {
        ProjectionMonitor {
            store: self.store.clone(),
            group: self.group.clone(),
            // One stream per partition: each category once.
            categories: self
                .streams
                .iter()
                .filter(|s| s.partition == 0)
                .map(|s| s.category.clone())
                .collect(),
        }
    }

    /// An in-process handle to wait until the projection has processed a position. It is
    /// fed with the group's watermark (all consumers' work, not only this runner's) after
    /// every batch and every idle read (every 50 ms while catching up), so it lags by at
    /// most the block time.
    pub fn progress(&self) -> Progress {
        Progress::new(self.group.clone(), self.progress.subscribe())
    }

    /// Creates the consumer groups that do not exist yet, at `0` (with `MKSTREAM`).
    /// [`run`](Self::run) does this first.
    pub async fn create_groups(&self) -> Result<(), Error> {
        for stream in &self.streams {
            let operation = format!("XGROUP CREATE {} {}", stream.key, self.group);
            let created = self
                .store
                .query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&*stream.key)
                        .arg(&self.group)
                        .arg("0")
                        .arg("MKSTREAM")
                        .arg("ENTRIESREAD")
                        .arg(0),
                    &operation,
                )
                .await;
            match created {
                Ok(_) => {}
                Err(Error::Redis { source, .. }) if source.code() == Some("BUSYGROUP") => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Replays the projection from the beginning: sets every group back to `0`
    /// (`XGROUP SETID … 0 ENTRIESREAD 0`), then deletes its
    /// [`HashReadModel`](crate::HashReadModel) keys, its dead letters and its recorded
    /// failures. Stop every runner of the projection first, and start them again after.
    ///
    /// The groups are reset first: if the rebuild is interrupted in between, the kept
    /// read model still records every entry as applied and replay changes nothing.
    pub async fn rebuild(&self) -> Result<(), Error> {
        self.create_groups().await?;
        for stream in &self.streams {
            self.store
                .query(
                    redis::cmd("XGROUP")
                        .arg("SETID")
                        .arg(&*stream.key)
                        .arg(&self.group)
                        .arg("0")
                        .arg("ENTRIESREAD")
                        .arg(0),
                    &format!("XGROUP SETID {} {}", stream.key, self.group),
                )
                .await?;
        }
        let connection = self.store.connection();
        clear_read_model(&connection, self.store.keys(), &self.group).await?;
        for stream in &self.streams {
            self.store
                .query(
                    redis::cmd("DEL")
                        .arg(&stream.dead_letters)
                        .arg(&stream.failures),
                    &format!("DEL of {}", stream.dead_letters),
                )
                .await?;
        }
        self.progress.send_replace(HashMap::new());
        Ok(())
    }

    /// Runs in a background task until [`RunningProjection::stop`]: the same as
    /// [`run`](Self::run) with a stop signal, for a worker beside the rest of the program.
    ///
    /// ```no_run
    /// # use es_redis::{ProjectionOptions, ProjectionRunner, RedisConfig};
    /// # async fn demo<P: es_core::projection::Projection>(config: RedisConfig, projection: P) -> Result<(), es_redis::Error> {
    /// let runner = ProjectionRunner::connect(&config, projection, ProjectionOptions::new("worker-1")).await?;
    /// let running = runner.spawn();
    /// // … serve queries, append events …
    /// let (runner, stats) = running.stop().await?;
    /// println!("handled {} events", stats.handled);
    /// # drop(runner);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn(self) -> RunningProjection<P> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stats = self
                .run(async {
                    // A dropped sender stops the runner too.
                    let _ = stopped.await;
                })
                .await;
            (self, stats)
        });
        RunningProjection { stop, task }
    }

    /// Runs until `shutdown` resolves, then finishes and acknowledges the batch in hand
    /// and returns what it did. Lost connections are retried; anything else (say, a
    /// category key of the wrong type) ends the run with the error.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunStats, Error> {
        if self.streams.is_empty() {
            return Err(Error::Config(format!(
                "projection `{}` reads no categories: `Projection::categories` must name at least one",
                self.group
            )));
        }
        let mut shutdown = pin!(shutdown);
        let mut stopping = false;
        let mut stats = RunStats::default();
        let mut next_claim = Instant::now();
        let mut groups_ready = false;
        // Entries read ahead while the previous batch was processed: delivered to this
        // consumer, so they are processed before the next read, even when stopping.
        let mut prefetched: Option<Vec<(usize, Vec<RawEntry>)>> = None;
        let mut last_progress = Instant::now();
        while !stopping {
            if is_ready(&mut shutdown) {
                if prefetched.is_none() {
                    break;
                }
                // One last step for the entries read ahead; an error now ends the run
                // (they stay pending and are reclaimed), so a lost connection cannot hold
                // `stop` in a retry loop.
                stopping = true;
            }
            let step = async {
                if !groups_ready {
                    self.create_groups().await?;
                    groups_ready = true;
                }
                if Instant::now() >= next_claim && !stopping {
                    self.claim_stale(&mut stats, prefetched.as_ref()).await?;
                    self.prune_applied().await?;
                    next_claim = Instant::now() + self.options.claim_interval;
                }
                let batch = match prefetched.take() {
                    Some(batch) => batch,
                    None => {
                        let block = self
                            .options
                            .block
                            .min(next_claim.saturating_duration_since(Instant::now()))
                            .max(Duration::from_millis(1));
                        let mut read = pin!(self.read_new(Some(block)));
                        // A read is never abandoned: its entries would stay pending until
                        // reclaimed.
                        tokio::select! {
                            batch = &mut read => batch?,
                            () = shutdown.as_mut() => {
                                stopping = true;
                                read.await?
                            }
                        }
                    }
                };
                let entries: usize = batch.iter().map(|(_, entries)| entries.len()).sum();
                if entries >= self.options.batch_size && !stopping {
                    // Catching up: read the next batch (without blocking) while this one is
                    // processed, so Redis and the handler work at the same time.
                    let (processed, next) = tokio::join!(
                        self.process_batch(batch, None, &mut stats),
                        self.read_new(None)
                    );
                    match next {
                        Ok(next) if !next.is_empty() => prefetched = Some(next),
                        Ok(_) => {}
                        Err(error) => {
                            processed?;
                            return Err(error);
                        }
                    }
                    processed?;
                } else {
                    self.process_batch(batch, None, &mut stats).await?;
                }
                // While catching up, progress is published every PROGRESS_EVERY rather than
                // after every batch (a round trip each); once caught up, after every batch.
                if prefetched.is_none() || last_progress.elapsed() >= PROGRESS_EVERY {
                    self.publish_progress().await?;
                    last_progress = Instant::now();
                }
                Ok(())
            };
            match step.await {
                Ok(()) => {}
                // While stopping, the error is returned: the batch in hand may not be acked.
                Err(error) if error.is_connection() && !stopping => {
                    tracing::warn!(projection = %self.group, %error, "lost the connection; retrying");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(Error::Redis { source, .. }) if source.code() == Some("NOGROUP") => {
                    // A stream was deleted under the runner: start its group again.
                    groups_ready = false;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(stats)
    }

    /// Reads entries never delivered to the group, from every stream at once: one
    /// `XREADGROUP` per read group, all sent together.
    /// Blocks up to `block` for entries; with `None`, returns at once what is there.
    async fn read_new(
        &self,
        block: Option<Duration>,
    ) -> Result<Vec<(usize, Vec<RawEntry>)>, Error> {
        let operation = format!("XREADGROUP of group {}", self.group);
        let command = |indices: &[usize], block: Option<Duration>| {
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.options.consumer)
                .arg("COUNT")
                .arg(self.options.batch_size);
            if let Some(block) = block {
                command
                    .arg("BLOCK")
                    .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX));
            }
            command.arg("STREAMS");
            for index in indices {
                command.arg(&*self.streams[*index].key);
            }
            for _ in indices {
                command.arg(">");
            }
            command
        };
        if let [indices] = self.read_groups.as_slice() {
            let mut reader = self.reader.clone();
            let reply: Value = command(indices, block)
                .query_async(&mut reader)
                .await
                .map_err(|e| Error::redis(&operation, e))?;
            return self.parse_read_reply(reply, &operation);
        }
        // Reads on one node run one after the other: together they block at most `block`.
        let groups = u32::try_from(self.read_groups.len()).unwrap_or(u32::MAX);
        let block = block.map(|block| (block / groups.max(1)).max(Duration::from_millis(1)));
        let mut reads = tokio::task::JoinSet::new();
        for indices in &self.read_groups {
            let command = command(indices, block);
            let mut reader = self.reader.clone();
            reads.spawn(async move { command.query_async::<Value>(&mut reader).await });
        }
        // Entries of the reads that succeeded are delivered to this consumer: process
        // them even if another read failed (that one is retried by the next read).
        let mut batch = Vec::new();
        let mut failure = None;
        while let Some(joined) = reads.join_next().await {
            let reply = match joined {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    failure = Some(Error::redis(&operation, error));
                    continue;
                }
                Err(panicked) => {
                    failure = Some(Error::unexpected(&operation, panicked.to_string()));
                    continue;
                }
            };
            match self.parse_read_reply(reply, &operation) {
                Ok(entries) => batch.extend(entries),
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) if batch.is_empty() => Err(error),
            Some(error) => {
                tracing::warn!(projection = %self.group, %error, "a read failed; the others are processed");
                Ok(batch)
            }
            None => Ok(batch),
        }
    }

    /// Parses `[[key, entries], …]` (RESP2) or `{key: entries, …}` (RESP3); nil when the
    /// read timed out.
    fn parse_read_reply(
        &self,
        reply: Value,
        operation: &str,
    ) -> Result<Vec<(usize, Vec<RawEntry>)>, Error> {
        let pairs: Vec<(Value, Value)> = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Map(pairs) => pairs,
            other => into_array(other, operation)?
                .into_iter()
                .map(|item| {
                    let mut parts = into_array(item, operation)?.into_iter();
                    match (parts.next(), parts.next()) {
                        (Some(key), Some(entries)) => Ok((key, entries)),
                        _ => Err(Error::unexpected(operation, "a stream without entries")),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let mut batch = Vec::with_capacity(pairs.len());
        for (key, entries) in pairs {
            let key = into_bytes(key)
                .ok_or_else(|| Error::unexpected(operation, "a stream key that is not a string"))?;
            let Some(index) = self.streams.iter().position(|s| s.key.as_bytes() == key) else {
                return Err(Error::unexpected(
                    operation,
                    format!(
                        "entries of a stream not read: {}",
                        String::from_utf8_lossy(&key)
                    ),
                ));
            };
            let entries = into_array(entries, operation)?
                .into_iter()
                .map(|item| RawEntry::parse(item, operation))
                .collect::<Result<Vec<_>, _>>()?;
            batch.push((index, entries));
        }
        Ok(batch)
    }

    /// Processes a batch and acknowledges what is done, one `XACK` per stream.
    /// `deliveries` holds delivery counts of reclaimed entries; fresh ones count 1.
    async fn process_batch(
        &self,
        batch: Vec<(usize, Vec<RawEntry>)>,
        deliveries: Option<&HashMap<String, u32>>,
        stats: &mut RunStats,
    ) -> Result<(), Error> {
        for (index, entries) in batch {
            let stream = &self.streams[index];
            let mut done = Vec::with_capacity(entries.len());
            let processed = self
                .process_entries(stream, entries, deliveries, stats, &mut done)
                .await;
            // Entries already handled are acknowledged even when a later one failed, so
            // their handlers are not run again after a reclaim.
            if !done.is_empty() {
                let acked = self
                    .store
                    .query(
                        redis::cmd("XACK")
                            .arg(&*stream.key)
                            .arg(&self.group)
                            .arg(&done),
                        &format!("XACK of {}", stream.key),
                    )
                    .await;
                if let Err(error) = acked {
                    return Err(processed.err().unwrap_or(error));
                }
            }
            processed?;
        }
        Ok(())
    }

    /// Processes the entries of one stream: those the projection handles go to
    /// [`Projection::handle_batch`] together, and what that does not handle to
    /// [`Projection::handle`] one by one. The ids to acknowledge are pushed onto `done`.
    async fn process_entries(
        &self,
        stream: &CategoryStream,
        entries: Vec<RawEntry>,
        deliveries: Option<&HashMap<String, u32>>,
        stats: &mut RunStats,
        done: &mut Vec<String>,
    ) -> Result<(), Error> {
        let mut events = Vec::with_capacity(entries.len());
        let mut ready = Vec::with_capacity(entries.len());
        for raw in entries {
            let delivered = deliveries
                .and_then(|counts| counts.get(&raw.id).copied())
                .unwrap_or(1);
            let id = raw.id.clone();
            match self.prepare_entry(stream, raw, delivered, stats) {
                Prepared::Ack => done.push(id),
                Prepared::Ready(event) => {
                    events.push(*event);
                    ready.push((id, delivered));
                }
                Prepared::DeadLetter(why) => {
                    // The entries before it first, so that dead letters come in order.
                    let events = std::mem::take(&mut events);
                    let ready = std::mem::take(&mut ready);
                    self.handle_entries(stream, events, ready, stats, done)
                        .await?;
                    self.dead_letter(stream, &id, &why, delivered, stats)
                        .await?;
                }
            }
        }
        self.handle_entries(stream, events, ready, stats, done)
            .await
    }

    /// Hands decoded entries to [`Projection::handle_batch`], following what
    /// [`BatchError`](es_core::projection::BatchError) says on failure.
    async fn handle_entries(
        &self,
        stream: &CategoryStream,
        events: Vec<es_core::RecordedEvent<P::Event>>,
        ready: Vec<(String, u32)>,
        stats: &mut RunStats,
        done: &mut Vec<String>,
    ) -> Result<(), Error> {
        let mut start = 0;
        while start < events.len() {
            let (handled, failure) = match self.projection.handle_batch(&events[start..]).await {
                Ok(()) => (events.len() - start, None),
                Err(failure) => (failure.handled.min(events.len() - start), Some(failure)),
            };
            self.handled(stream, &ready[start..start + handled], stats, done)
                .await?;
            start += handled;
            let Some(failure) = failure else {
                break;
            };
            if start == events.len() {
                break;
            }
            if failure.failed_next {
                let (id, delivered) = &ready[start];
                self.failed(stream, id, *delivered, &failure.error.to_string(), stats)
                    .await?;
                start += 1;
            } else {
                tracing::debug!(projection = %self.group, error = %failure.error, "batch handler failed; handling the rest one by one");
                for (event, (id, delivered)) in events[start..].iter().zip(&ready[start..]) {
                    if let Outcome::Ack = self
                        .handle_one(stream, event, id, *delivered, stats)
                        .await?
                    {
                        done.push(id.clone());
                    }
                }
                break;
            }
        }
        Ok(())
    }

    /// Counts entries as handled: clears the failure records of redelivered ones, and
    /// pushes their ids onto `done`.
    async fn handled(
        &self,
        stream: &CategoryStream,
        entries: &[(String, u32)],
        stats: &mut RunStats,
        done: &mut Vec<String>,
    ) -> Result<(), Error> {
        stats.handled += entries.len() as u64;
        // Acknowledged even if clearing their failure records fails below.
        done.extend(entries.iter().map(|(id, _)| id.clone()));
        let retried: Vec<&str> = entries
            .iter()
            .filter(|(_, delivered)| *delivered > 1)
            .map(|(id, _)| id.as_str())
            .collect();
        if !retried.is_empty() {
            self.store
                .query(
                    redis::cmd("HDEL").arg(&stream.failures).arg(&retried),
                    &format!("HDEL of {}", stream.failures),
                )
                .await?;
        }
        Ok(())
    }

    /// Decodes an entry and sorts it: acknowledge it unhandled, hand it to the
    /// projection, or dead-letter it (and why).
    fn prepare_entry(
        &self,
        stream: &CategoryStream,
        raw: RawEntry,
        delivered: u32,
        stats: &mut RunStats,
    ) -> Prepared<P::Event> {
        let Some(pairs) = raw.pairs else {
            // Deleted from the stream while pending: nothing to process.
            return Prepared::Ack;
        };
        let source = EntrySource {
            storage_key: &stream.key,
            category: &stream.category,
        };
        let stored = match entry::decode_entry(&source, &raw.id, pairs) {
            Ok(stored) => stored,
            Err(error) => return Prepared::DeadLetter(error.to_string()),
        };
        if !handles::<P::Event>(&stored) {
            stats.skipped += 1;
            return Prepared::Ack;
        }
        if delivered > self.options.max_deliveries {
            return Prepared::DeadLetter(format!(
                "delivered {delivered} times, more than the limit of {}",
                self.options.max_deliveries
            ));
        }
        match stored.decode::<P::Event>() {
            Ok(event) => Prepared::Ready(Box::new(event)),
            Err(error) => Prepared::DeadLetter(error.to_string()),
        }
    }

    /// Runs [`Projection::handle`] on one event; a failure is recorded for the retry, or
    /// dead-letters the entry on its last delivery.
    async fn handle_one(
        &self,
        stream: &CategoryStream,
        event: &es_core::RecordedEvent<P::Event>,
        id: &str,
        delivered: u32,
        stats: &mut RunStats,
    ) -> Result<Outcome, Error> {
        match self.projection.handle(event).await {
            Ok(()) => {
                let mut done = Vec::with_capacity(1);
                self.handled(stream, &[(id.to_owned(), delivered)], stats, &mut done)
                    .await?;
                Ok(Outcome::Ack)
            }
            Err(error) => {
                self.failed(stream, id, delivered, &error.to_string(), stats)
                    .await?;
                Ok(Outcome::Keep)
            }
        }
    }

    /// Records a failed delivery of entry `id`: kept pending for a retry, or dead-lettered
    /// on its last delivery.
    async fn failed(
        &self,
        stream: &CategoryStream,
        id: &str,
        delivered: u32,
        error: &str,
        stats: &mut RunStats,
    ) -> Result<(), Error> {
        stats.failed += 1;
        if delivered >= self.options.max_deliveries {
            let why = format!("the handler failed on delivery {delivered}: {error}");
            self.dead_letter(stream, id, &why, delivered, stats).await
        } else {
            tracing::debug!(projection = %self.group, entry = %id, %error, delivered, "handler failed; the entry will be retried");
            self.store
                .query(
                    redis::cmd("HSET").arg(&stream.failures).arg(id).arg(error),
                    &format!("HSET of {}", stream.failures),
                )
                .await?;
            Ok(())
        }
    }

    async fn dead_letter(
        &self,
        stream: &CategoryStream,
        id: &str,
        error: &str,
        delivered: u32,
        stats: &mut RunStats,
    ) -> Result<(), Error> {
        tracing::warn!(projection = %self.group, stream = %stream.key, entry = %id, %error, "dead-lettering an entry");
        let mut invocation = SCRIPTS.dead_letter.prepare_invoke();
        invocation
            .key(&*stream.key)
            .key(&stream.dead_letters)
            .key(&stream.failures)
            .arg(&self.group)
            .arg(id)
            .arg(error)
            .arg(delivered)
            .arg(&self.options.consumer);
        let reply = self.store.run_script("dead_letter", &invocation).await?;
        if as_u64(&reply) == Some(1) {
            stats.dead_lettered += 1;
        }
        Ok(())
    }

    /// Claims and processes entries pending longer than `claim_idle`, in every stream.
    /// Entries in `held` (read ahead, about to be processed) are not processed again here
    /// when they come up.
    async fn claim_stale(
        &self,
        stats: &mut RunStats,
        held: Option<&Vec<(usize, Vec<RawEntry>)>>,
    ) -> Result<(), Error> {
        let idle = u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let held: std::collections::HashSet<(usize, &str)> = held
            .into_iter()
            .flatten()
            .flat_map(|(index, entries)| entries.iter().map(move |e| (*index, e.id.as_str())))
            .collect();
        for (index, stream) in self.streams.iter().enumerate() {
            let operation = format!("XAUTOCLAIM of {}", stream.key);
            let mut start = "0-0".to_owned();
            loop {
                let reply = self
                    .store
                    .query(
                        redis::cmd("XAUTOCLAIM")
                            .arg(&*stream.key)
                            .arg(&self.group)
                            .arg(&self.options.consumer)
                            .arg(idle)
                            .arg(&start)
                            .arg("COUNT")
                            .arg(self.options.batch_size),
                        &operation,
                    )
                    .await?;
                let mut parts = into_array(reply, &operation)?.into_iter();
                let (Some(next), Some(entries)) = (parts.next(), parts.next()) else {
                    return Err(Error::unexpected(&operation, "a reply without cursor"));
                };
                let next = into_bytes(next)
                    .and_then(|id| String::from_utf8(id).ok())
                    .ok_or_else(|| Error::unexpected(&operation, "a cursor that is not text"))?;
                let mut entries = into_array(entries, &operation)?
                    .into_iter()
                    .map(|item| RawEntry::parse(item, &operation))
                    .collect::<Result<Vec<_>, _>>()?;
                entries.retain(|entry| !held.contains(&(index, entry.id.as_str())));
                if !entries.is_empty() {
                    stats.claimed += entries.len() as u64;
                    tracing::info!(projection = %self.group, stream = %stream.key, entries = entries.len(), "reclaimed stale entries");
                    let deliveries = self.delivery_counts(stream, &entries).await?;
                    self.process_batch(vec![(index, entries)], Some(&deliveries), stats)
                        .await?;
                }
                if next == "0-0" {
                    break;
                }
                start = next;
            }
        }
        Ok(())
    }

    /// How often each entry was delivered (`XPENDING key group id id 1`, pipelined).
    async fn delivery_counts(
        &self,
        stream: &CategoryStream,
        entries: &[RawEntry],
    ) -> Result<HashMap<String, u32>, Error> {
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("XPENDING")
                .arg(&*stream.key)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let operation = format!("XPENDING of {}", stream.key);
        let mut connection = self.store.connection();
        let replies: Vec<Value> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| Error::redis(&operation, e))?;
        let mut counts = HashMap::with_capacity(entries.len());
        for reply in replies {
            // `[[id, consumer, idle, deliveries]]`, or `[]` if acknowledged meanwhile.
            if let Some(item) = into_array(reply, &operation)?.into_iter().next() {
                let mut fields = into_array(item, &operation)?.into_iter();
                let id = fields.next().and_then(into_bytes);
                let count = fields.nth(2).as_ref().and_then(as_u64);
                if let (Some(id), Some(count)) = (id, count) {
                    counts.insert(
                        String::from_utf8_lossy(&id).into_owned(),
                        u32::try_from(count).unwrap_or(u32::MAX),
                    );
                }
            }
        }
        Ok(counts)
    }

    /// Forgets applied entry ids at or below the group's watermark (see
    /// [`ProjectionOptions::prune_grace`]).
    async fn prune_applied(&self) -> Result<(), Error> {
        let grace = u64::try_from(self.options.prune_grace.as_millis()).unwrap_or(u64::MAX);
        for status in self.monitor().status().await? {
            let Some(stream) = self
                .streams
                .iter()
                .find(|s| s.category == status.category && s.partition == status.partition)
            else {
                continue;
            };
            let watermark = status.watermark();
            if watermark == Position::ZERO {
                continue;
            }
            let mut invocation = SCRIPTS.prune_applied.prepare_invoke();
            invocation
                .key(&stream.applied)
                .arg(watermark.to_string())
                .arg(grace)
                .arg(PRUNE_LIMIT);
            self.store.run_script("prune_applied", &invocation).await?;
        }
        Ok(())
    }

    async fn publish_progress(&self) -> Result<(), Error> {
        let statuses = self.monitor().status().await?;
        let mut watermarks: HashMap<String, Position> = HashMap::new();
        for status in &statuses {
            if !watermarks.contains_key(&status.category) {
                let partitions: Vec<GroupStatus> = statuses
                    .iter()
                    .filter(|s| s.category == status.category)
                    .cloned()
                    .collect();
                let watermark = combine(&status.category, partitions).watermark();
                watermarks.insert(status.category.clone(), watermark);
            }
        }
        self.progress.send_if_modified(|current| {
            let changed = *current != watermarks;
            *current = watermarks;
            changed
        });
        Ok(())
    }
}

/// A [`ProjectionRunner`] running in a background task ([`ProjectionRunner::spawn`]).
pub struct RunningProjection<P: Projection> {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(ProjectionRunner<P>, Result<RunStats, Error>)>,
}

impl<P: Projection> RunningProjection<P> {
    /// Stops the runner gracefully: it finishes and acknowledges the batch in hand. Returns
    /// the runner and what it did, or the error that ended the run. A panic in a handler is
    /// resumed here.
    pub async fn stop(self) -> Result<(ProjectionRunner<P>, RunStats), Error> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok((runner, stats)) => Ok((runner, stats?)),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(Error::Stopped),
        }
    }

    /// Stops the runner at once, abandoning the batch in hand as a crash would: its entries
    /// stay pending until a runner of the group reclaims them.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Whether `future` is already complete (polled once, without waiting).
fn is_ready<F: Future<Output = ()>>(future: &mut Pin<&mut F>) -> bool {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    future.as_mut().poll(&mut context).is_ready()
}

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
fn before(position: Position) -> Position {
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
    store: RedisEventStore,
    group: String,
    categories: Vec<Cow<'static, str>>,
}

impl ProjectionMonitor {
    /// The monitor of projection `projection` (its [`Projection::name`]) over `categories`.
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
fn combine(category: &str, mut partitions: Vec<GroupStatus>) -> GroupStatus {
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

fn parse_status(category: &str, reply: Value) -> Result<GroupStatus, Error> {
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
