//! Projections on Redis: [`RedisSource`], the [`ProjectionSource`] that es-core's
//! [`ProjectionRunner`](es_core::projection::ProjectionRunner) runs a projection with, on
//! consumer groups, and [`ProjectionMonitor`]: a projection's progress, lag and dead
//! letters, from any process.
//!
//! [`RedisEventStore`] is a [`ProjectionBackend`]:
//! `ProjectionRunner::connect(&store, projection, options)`.
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
//!   dead-lettered. Delivery is therefore at least once; a
//!   [`ReadModel`](es_core::read_model::ReadModel) makes updates idempotent.
//! - **Retries and crash recovery:** a failed entry stays pending. Every
//!   [`claim_interval`](ProjectionOptions::claim_interval) (and at start) the runner
//!   `XAUTOCLAIM`s entries pending longer than [`claim_idle`](ProjectionOptions::claim_idle)
//!   from any consumer of the group, including dead ones, and processes them again.
//! - **Dead letters:** an entry that does not decode, or that was delivered more than
//!   [`max_deliveries`](es_core::projection::ProjectionOptions::max_deliveries) times (counts from `XPENDING`), is
//!   copied with the error, its entry id and its fields to
//!   `<namespace>:{<category>}:dead:<projection>` (of its partition) and acknowledged, in
//!   one script.
//! - **Progress:** the group's watermark in a stream is the last entry id up to which
//!   every entry is acknowledged (at most the group's last-delivered id, below its oldest
//!   pending entry); a partitioned category's is the least of its partitions' (see
//!   [`ProjectionMonitor::category_status`]). [`ProjectionMonitor::wait_for`] polls it from
//!   any process; the runner's `progress()` is an in-process
//!   [`Progress`](es_core::projection::Progress) fed after every batch (every 50 ms while
//!   catching up).

mod monitor;
mod read;
mod source;

pub use monitor::ProjectionMonitor;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::projection::{ProjectionBackend, ProjectionOptions, ProjectionSource, SourceStream};
use es_core::read_model::ReadModelStore;
use es_core::StoreError;
use redis::cluster_routing::Slot;

use crate::connection::RedisConnection;
use crate::read_model::RedisReadModels;
use crate::store::RedisEventStore;

/// How much longer than the block time the reading connection waits for a reply.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// How many applied entry ids one prune looks at per category.
const PRUNE_LIMIT: usize = 10_000;

/// The keys of one category stream (of one partition) a projection reads.
#[derive(Debug, Clone)]
struct StreamKeys {
    dead_letters: String,
    failures: String,
    applied: String,
}

/// A projection's consumer on Redis consumer groups: the [`ProjectionSource`] es-core's
/// [`ProjectionRunner`](es_core::projection::ProjectionRunner) runs it with. Several
/// sources of one projection (each with its own consumer name, in one process or many)
/// share the work.
///
/// Usually opened by `ProjectionRunner::connect(&store, …)`; [`new`](Self::new) builds one
/// over connections of your own.
pub struct RedisSource {
    store: RedisEventStore,
    reader: RedisConnection,
    group: String,
    consumer: String,
    batch_size: usize,
    prune_grace: Duration,
    dead_letter_limit: Option<usize>,
    streams: Vec<SourceStream>,
    keys: Vec<StreamKeys>,
    /// The indices in `streams` read by one `XREADGROUP` each: all of them on a single
    /// server, the streams of one slot on a cluster (a command may not span slots).
    read_groups: Vec<Vec<usize>>,
    monitor: ProjectionMonitor,
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource")
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field(
                "streams",
                &self
                    .streams
                    .iter()
                    .map(|s| &*s.location)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl RedisSource {
    /// A consumer of projection `name` (its consumer group) over `store` (commands) and
    /// `reader` (blocking reads: its reply timeout must exceed the options' block time; a
    /// cluster connection if `store` is on a cluster).
    ///
    /// It reads every partition stream of every category. On a cluster it reads the
    /// streams of each slot with an `XREADGROUP` of its own (one command may not name keys
    /// of several slots), all at once.
    pub fn new(
        store: RedisEventStore,
        reader: impl Into<RedisConnection>,
        name: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Self {
        let reader = reader.into();
        let group = name.to_owned();
        let layout = store.keys();
        let (mut streams, mut keys) = (Vec::new(), Vec::new());
        for category in categories {
            if streams
                .iter()
                .any(|s: &SourceStream| s.category == *category)
            {
                continue;
            }
            for partition in 0..layout.partitions(category) {
                streams.push(SourceStream {
                    category: category.clone(),
                    partition,
                    location: Arc::from(layout.partition_stream(category, partition)),
                });
                keys.push(StreamKeys {
                    dead_letters: layout.dead_letters(category, partition, &group),
                    failures: layout.failures(category, partition, &group),
                    applied: layout.applied_entries(&group, category, partition),
                });
            }
        }
        let read_groups = if reader.is_cluster() || store.connection().is_cluster() {
            let mut by_slot: Vec<(Slot, Vec<usize>)> = Vec::new();
            for (index, stream) in streams.iter().enumerate() {
                let slot = Slot::for_key(stream.location.as_bytes());
                match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, indices)) => indices.push(index),
                    None => by_slot.push((slot, vec![index])),
                }
            }
            by_slot.into_iter().map(|(_, indices)| indices).collect()
        } else {
            vec![(0..streams.len()).collect()]
        };
        let monitor = ProjectionMonitor::new(store.clone(), group.clone(), categories.to_vec());
        RedisSource {
            store,
            reader,
            group,
            consumer: options.consumer().to_owned(),
            batch_size: options.batch_size_value(),
            prune_grace: options.prune_grace_value(),
            dead_letter_limit: options.dead_letter_limit_value(),
            streams,
            keys,
            read_groups,
            monitor,
        }
    }

    /// Its projection's monitor: progress and dead letters, readable from any process.
    pub fn monitor(&self) -> ProjectionMonitor {
        self.monitor.clone()
    }
}

#[async_trait]
impl ProjectionBackend for RedisEventStore {
    /// Opens a second connection for blocking reads, with the store's settings and a reply
    /// timeout of the block time plus 5 s (a read that timed out on the client would leave
    /// its late reply to confuse the next command).
    async fn projection_source(
        &self,
        name: &str,
        categories: &[Cow<'static, str>],
        options: &ProjectionOptions,
    ) -> Result<Box<dyn ProjectionSource>, StoreError> {
        // A projection configured with another partition count would read empty streams.
        for category in categories {
            self.check_partition_count(category, false).await?;
        }
        let config = self.config();
        let read_timeout = options.block_value() + READ_TIMEOUT_MARGIN;
        // No timeout stays no timeout; a shorter one is raised above the block time.
        let read_timeout = config
            .response_timeout_value()
            .map(|timeout| timeout.max(read_timeout));
        let reader = config.clone().response_timeout(read_timeout).open().await?;
        Ok(Box::new(RedisSource::new(
            self.clone(),
            reader,
            name,
            categories,
            options,
        )))
    }

    fn read_model_store(&self) -> Arc<dyn ReadModelStore> {
        Arc::new(RedisReadModels::new(self))
    }
}
