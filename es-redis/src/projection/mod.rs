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
//!   [`ProjectionRunner::progress`] is an in-process [`Progress`](es_core::projection::Progress) fed after every batch
//!   (every 50 ms while catching up).
//!
//! [`HashReadModel`]: crate::HashReadModel

mod dispatch;
mod monitor;
mod options;
mod read;
mod runner;

pub use monitor::{GroupStatus, ProjectionMonitor};
pub use options::ProjectionOptions;
pub use runner::RunningProjection;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use es_core::projection::Projection;
use es_core::Position;
use tokio::sync::watch;

use crate::connection::RedisConnection;
use crate::store::RedisEventStore;

/// How much longer than the block time the reading connection waits for a reply.
pub(super) const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// How long the runner waits before retrying after a lost connection.
pub(super) const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// How many applied entry ids one prune looks at per category.
pub(super) const PRUNE_LIMIT: usize = 10_000;

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
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(50);

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
