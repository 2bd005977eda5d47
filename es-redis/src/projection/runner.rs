//! The runner: connecting, the read/handle/acknowledge loop, spawning and stopping, rebuild,
//! and its upkeep (pruning applied records, publishing progress).

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::projection::{is_ready, Progress, Projection};
use es_core::Position;
use redis::cluster_routing::Slot;
use tokio::sync::watch;

use crate::config::RedisConfig;
use crate::connection::RedisConnection;
use crate::entry::RawEntry;
use crate::error::Error;
use crate::read_model::clear_read_model;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

use super::monitor::combine;
use super::{
    CategoryStream, ProjectionRunner, RunStats, PROGRESS_EVERY, PRUNE_LIMIT, READ_TIMEOUT_MARGIN,
    RECONNECT_PAUSE,
};
use super::{GroupStatus, ProjectionMonitor, ProjectionOptions};

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

    /// Forgets applied entry ids at or below the group's watermark (see
    /// [`ProjectionOptions::prune_grace`]).
    pub(super) async fn prune_applied(&self) -> Result<(), Error> {
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

    pub(super) async fn publish_progress(&self) -> Result<(), Error> {
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
