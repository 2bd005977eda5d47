//! [`ProjectionOptions`]: how a projection runner reads, retries and recovers, on any backend.

use std::time::Duration;

/// How a [`ProjectionRunner`](super::ProjectionRunner) reads, retries and recovers. The
/// same options mean the same on every backend; a backend that cannot do something (the
/// in-memory one has no other consumers to reclaim from) says so in its
/// [`Capabilities`](super::Capabilities).
///
/// ```
/// use std::time::Duration;
/// use es_core::projection::ProjectionOptions;
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
    poll_interval: Duration,
    claim_idle: Duration,
    claim_interval: Duration,
    max_deliveries: u32,
    prune_grace: Duration,
    dead_letter_limit: Option<usize>,
}

impl ProjectionOptions {
    /// The default bound of a dead-letter stream: 100,000 letters.
    pub const DEFAULT_DEAD_LETTER_LIMIT: usize = 100_000;

    /// Options for the consumer named `consumer`, which must be unique among the runners of
    /// the projection (say, `<host>-<pid>-<n>`). Defaults: batches of 100 events per
    /// stream, reads wait up to 1 s for new events (polling backends look every 10 ms),
    /// events pending 30 s are reclaimed, checked every 5 s, dead-lettered after 3
    /// deliveries, records of applied events pruned after 5 minutes.
    pub fn new(consumer: impl Into<String>) -> Self {
        ProjectionOptions {
            consumer: consumer.into(),
            batch_size: 100,
            block: Duration::from_secs(1),
            poll_interval: Duration::from_millis(10),
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

    /// At most this many events per stream per read (Redis: `COUNT`; at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch_size = entries.max(1);
        self
    }

    /// How long a read waits for new events (Redis: `BLOCK`; at least 1 ms). Shutdown waits
    /// for the read in flight, so this bounds how long stopping takes.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// How often a backend without blocking reads (the in-memory one, any store run with
    /// [`PollingSource`](super::PollingSource)) looks for new events while a read waits
    /// (at least 1 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Events pending longer than this (their worker died, or their handler failed) are
    /// reclaimed and delivered again. Keep it above the longest two batches may take: a
    /// runner catching up holds the next batch (read ahead) while it processes the current
    /// one, and an event pending longer than this is processed by another worker too.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often to look for events to reclaim (and prune the record of applied events).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval;
        self
    }

    /// An event delivered more than this many times is dead-lettered instead of handled
    /// again; a handler failing on its `max_deliveries`-th delivery dead-letters it at
    /// once (at least 1).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// Bounds the dead letters of each category (of each partition) to about `limit`
    /// letters (`None`: unbounded; default
    /// [`DEFAULT_DEAD_LETTER_LIMIT`](Self::DEFAULT_DEAD_LETTER_LIMIT)). Past the bound, the
    /// oldest letters are dropped as new ones arrive. Redis trims whole stream nodes
    /// (`XADD … MAXLEN ~`), so it may keep up to one node (about 100 letters) more than
    /// `limit`. A dropped letter is gone: its event was already acknowledged, so re-drive
    /// or inspect dead letters before that many more pile up.
    pub fn dead_letter_limit(mut self, limit: Option<usize>) -> Self {
        self.dead_letter_limit = limit;
        self
    }

    /// A [`ReadModel`](crate::read_model::ReadModel) records every applied event; the
    /// runner forgets the events that can no longer be delivered (acknowledged, at or below
    /// the projection's watermark) once they were applied this long ago. The grace covers a
    /// stalled worker that resumes after another one reclaimed, applied and acknowledged
    /// its event: within `claim_idle + prune_grace` it still finds the record.
    pub fn prune_grace(mut self, grace: Duration) -> Self {
        self.prune_grace = grace;
        self
    }

    /// The batch size.
    pub fn batch_size_value(&self) -> usize {
        self.batch_size
    }

    /// How long a read waits for new events.
    pub fn block_value(&self) -> Duration {
        self.block
    }

    /// How often a polling backend looks for new events.
    pub fn poll_interval_value(&self) -> Duration {
        self.poll_interval
    }

    /// How long an event stays pending before it is reclaimed.
    pub fn claim_idle_value(&self) -> Duration {
        self.claim_idle
    }

    /// How often the runner reclaims stale events and prunes.
    pub fn claim_interval_value(&self) -> Duration {
        self.claim_interval
    }

    /// How many deliveries an event gets before it is dead-lettered.
    pub fn max_deliveries_value(&self) -> u32 {
        self.max_deliveries
    }

    /// How long a record of an applied event outlives its last possible delivery.
    pub fn prune_grace_value(&self) -> Duration {
        self.prune_grace
    }

    /// The bound of each category's dead letters.
    pub fn dead_letter_limit_value(&self) -> Option<usize> {
        self.dead_letter_limit
    }
}
