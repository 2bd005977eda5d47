//! How a projection runner reads, retries and recovers.

use std::time::Duration;

/// How a [`ProjectionRunner`](super::ProjectionRunner) reads, retries and recovers.
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
    pub(super) consumer: String,
    pub(super) batch_size: usize,
    pub(super) block: Duration,
    pub(super) claim_idle: Duration,
    pub(super) claim_interval: Duration,
    pub(super) max_deliveries: u32,
    pub(super) prune_grace: Duration,
    pub(super) dead_letter_limit: Option<usize>,
}

impl ProjectionOptions {
    /// The default bound of a dead-letter stream: 100,000 letters.
    pub const DEFAULT_DEAD_LETTER_LIMIT: usize = 100_000;

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
            dead_letter_limit: Some(Self::DEFAULT_DEAD_LETTER_LIMIT),
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

    /// Bounds each dead-letter stream to about `limit` letters (`None`: unbounded; default
    /// [`DEFAULT_DEAD_LETTER_LIMIT`](Self::DEFAULT_DEAD_LETTER_LIMIT)). Past the bound, the
    /// oldest letters are trimmed as new ones arrive: Redis trims whole stream nodes
    /// (`XADD … MAXLEN ~`), so a stream may hold up to one node (about 100 letters) more
    /// than `limit`. A trimmed letter is gone: its entry was already acknowledged, so
    /// re-drive or inspect dead letters before that many more pile up.
    pub fn dead_letter_limit(mut self, limit: Option<usize>) -> Self {
        self.dead_letter_limit = limit;
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
