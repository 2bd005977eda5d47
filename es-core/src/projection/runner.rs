//! [`ProjectionRunner`]: runs a [`Projection`] on any backend's [`ProjectionSource`]: the
//! read loop (blocking reads, reading ahead while catching up, reclaiming stale events,
//! retrying lost connections), spawning and stopping, progress and rebuild.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::redrive::{redrive, ProjectionControl, RedriveReport};
use super::source::{Capabilities, ProjectionBackend, ProjectionSource, StreamBatch};
use super::{is_ready, DeadLetter, Progress, Projection, ProjectionOptions, ProjectionStatus};
use crate::error::StoreError;
use crate::store::Position;

/// How often a runner that is catching up publishes its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);
/// How long the runner waits before retrying after a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// What a [`ProjectionRunner`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunStats {
    /// Events whose handler succeeded.
    pub handled: u64,
    /// Events of types the projection does not handle (acknowledged unhandled).
    pub skipped: u64,
    /// Handler failures (the event stays pending and is delivered again).
    pub failed: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Pending events reclaimed (from other consumers, or from itself after a failure).
    pub claimed: u64,
}

/// Runs a [`Projection`] as one consumer of its events, on any backend: the in-memory
/// store, Redis, or any [`ProjectionBackend`].
///
/// - **At least once.** An event is acknowledged only after its handler succeeded, after
///   it was skipped (a type the projection does not handle), or after it was
///   dead-lettered. A failed event stays pending and is delivered again once it has been
///   pending for [`claim_idle`](ProjectionOptions::claim_idle) (so are the events of a
///   runner that died).
/// - **Poison events do not stall it.** An event that does not decode, or whose handler
///   failed on its [`max_deliveries`](ProjectionOptions::max_deliveries)-th delivery, is
///   dead-lettered ([`dead_letters`](Self::dead_letters)) while later events flow.
/// - **Batches.** Each read hands the events of one stream to
///   [`Projection::handle_batch`]; what [`BatchError`](super::BatchError) says on failure
///   decides which events count as handled and which failed.
/// - **Stopping** finishes and acknowledges the batch in hand.
///
/// ```
/// # use std::borrow::Cow;
/// use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
/// use es_core::read_model::ReadModel;
/// use es_core::{Event, EventStore, InMemoryStore, Metadata, NewEvent, RecordedEvent, StreamId, StoreError};
///
/// #[derive(Event)] struct Registered { name: String }
/// #[derive(Event)] enum Input { Registered(Registered) }
///
/// struct Names(ReadModel);
///
/// #[async_trait::async_trait]
/// impl Projection for Names {
///     type Event = Input;
///     type Error = StoreError;
///     fn name(&self) -> &str { self.0.projection() }
///     fn categories(&self) -> Vec<Cow<'static, str>> { vec!["user".into()] }
///     fn read_model(&self) -> Option<&ReadModel> { Some(&self.0) }
///     async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), StoreError> {
///         let Input::Registered(e) = &event.event;
///         let _ = self.0.update(event).hset("names", &event.stream.id, e.name.as_str()).commit().await?;
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = InMemoryStore::new();
/// let event = NewEvent::encode(&Registered { name: "Duffy".into() }, Metadata::default())?;
/// store.append(&StreamId::new("user", "1"), es_core::ExpectedVersion::Any, vec![event], &Default::default()).await?;
///
/// let names = Names(store.read_model("names"));
/// let runner = ProjectionRunner::connect(&store, names, ProjectionOptions::new("worker-1")).await?;
/// let stats = runner.run_once().await?;
/// assert_eq!(stats.handled, 1);
/// let names = runner.projection().0.hash("names").await?;
/// assert_eq!(names["1"], b"Duffy");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct ProjectionRunner<P: Projection> {
    pub(super) projection: Arc<P>,
    pub(super) source: Arc<dyn ProjectionSource>,
    pub(super) options: ProjectionOptions,
    pub(super) name: String,
    progress: watch::Sender<HashMap<String, Position>>,
}

impl<P: Projection> std::fmt::Debug for ProjectionRunner<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &self.name)
            .field("options", &self.options)
            .field(
                "streams",
                &self
                    .source
                    .streams()
                    .iter()
                    .map(|s| &*s.location)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<P: Projection> ProjectionRunner<P> {
    /// A runner of `projection` on `backend`, as the consumer the options name.
    ///
    /// Refused ([`StoreError::InvalidRequest`]) when the projection reads no categories,
    /// or when its [`read_model`](Projection::read_model) belongs to another projection.
    pub async fn connect<B: ProjectionBackend + ?Sized>(
        backend: &B,
        projection: P,
        options: ProjectionOptions,
    ) -> Result<Self, StoreError> {
        check(&projection)?;
        let mut categories = projection.categories();
        let mut seen = std::collections::HashSet::new();
        categories.retain(|category| seen.insert(category.clone()));
        let source = backend
            .projection_source(projection.name(), &categories, &options)
            .await?;
        Ok(Self::with_source(source, projection, options))
    }

    /// A runner of `projection` on a source opened by hand.
    pub fn with_source(
        source: Box<dyn ProjectionSource>,
        projection: P,
        options: ProjectionOptions,
    ) -> Self {
        ProjectionRunner {
            name: projection.name().to_owned(),
            projection: Arc::new(projection),
            source: Arc::from(source),
            options,
            progress: watch::channel(HashMap::new()).0,
        }
    }

    /// The projection (say, to query its read model).
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The options it runs with.
    pub fn options(&self) -> &ProjectionOptions {
        &self.options
    }

    /// What the backend can do beyond the common contract.
    pub fn capabilities(&self) -> Capabilities {
        self.source.capabilities()
    }

    /// An in-process handle to wait until the projection has processed a position. It is
    /// fed with the projection's watermark in each category (all consumers' work, on a
    /// backend with competing consumers) after every batch and every idle read (every
    /// 50 ms while catching up), so it lags by at most the block time.
    pub fn progress(&self) -> Progress {
        Progress::new(self.name.clone(), self.progress.subscribe())
    }

    /// Gets the backend ready to deliver the projection's events (Redis: creates its
    /// consumer groups, at the beginning of each stream), so that its
    /// [`status`](Self::status) exists before a runner starts. Running does this first.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        self.source.prepare().await
    }

    /// The projection's progress in each stream it reads (each partition of a partitioned
    /// category).
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.source.status().await
    }

    /// The events of `category` the projection dead-lettered, oldest first.
    pub async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.source.dead_letters(category).await
    }

    /// Hands the dead letters of `category` to the projection again, after a fix (see
    /// [`ProjectionControl::redrive`]).
    pub async fn redrive(&self, category: &str) -> Result<RedriveReport, StoreError> {
        redrive(&*self.projection, &*self.source, category).await
    }

    /// A handle for tools to watch the projection and re-drive its dead letters.
    pub fn control(&self) -> ProjectionControl {
        ProjectionControl::new(self.projection.clone(), self.source.clone())
    }

    /// Replays the projection from the beginning: every stream back to the start, its dead
    /// letters and failure records deleted, then its [`read_model`](Projection::read_model)
    /// cleared. Stop every runner of the projection first, and start them again after.
    ///
    /// The position is reset before the read model is cleared. If the rebuild is
    /// interrupted in between, run it again until it succeeds: the kept read model records
    /// only recent events as applied (older records are pruned), so a replay onto it would
    /// apply older events a second time.
    pub async fn rebuild(&self) -> Result<(), StoreError> {
        self.source.prepare().await?;
        self.source.reset().await?;
        if let Some(read_model) = self.projection.read_model() {
            read_model.clear().await?;
        }
        self.progress.send_replace(HashMap::new());
        Ok(())
    }

    /// Processes everything stored now and returns: reads until nothing new is left, and
    /// delivers failed events again until they succeed or are dead-lettered. For tests,
    /// one-shot catch-ups and the in-memory backend: it reclaims every pending event at
    /// once, so run it only where no other runner of the projection is working.
    pub async fn run_once(&self) -> Result<RunStats, StoreError> {
        check(&*self.projection)?;
        self.source.prepare().await?;
        let mut stats = RunStats::default();
        loop {
            let batch = self.source.read(None).await?;
            if batch.is_empty() {
                let claimed = stats.claimed;
                self.reclaim(Duration::ZERO, &mut stats, None).await?;
                if stats.claimed == claimed {
                    break;
                }
            } else {
                self.process(batch, &mut stats).await?;
            }
        }
        self.source.upkeep().await?;
        self.publish_progress().await?;
        Ok(stats)
    }

    /// Runs until `shutdown` resolves, then finishes and acknowledges the batch in hand
    /// and returns what it did. Lost connections are retried; anything else (say, a
    /// category key of the wrong type) ends the run with the error.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunStats, StoreError> {
        check(&*self.projection)?;
        let mut shutdown = pin!(shutdown);
        let mut stopping = false;
        let mut stats = RunStats::default();
        let mut next_claim = Instant::now();
        let mut prepared = false;
        // Events read ahead while the previous batch was processed: delivered to this
        // consumer, so they are processed before the next read, even when stopping.
        let mut prefetched: Option<Vec<StreamBatch>> = None;
        let mut last_progress = Instant::now();
        while !stopping {
            if is_ready(&mut shutdown) {
                if prefetched.is_none() {
                    break;
                }
                // One last step for the events read ahead; an error now ends the run
                // (they stay pending and are reclaimed), so a lost connection cannot hold
                // `stop` in a retry loop.
                stopping = true;
            }
            let step = async {
                if !prepared {
                    self.source.prepare().await?;
                    prepared = true;
                }
                if Instant::now() >= next_claim && !stopping {
                    self.reclaim(
                        self.options.claim_idle_value(),
                        &mut stats,
                        prefetched.as_deref(),
                    )
                    .await?;
                    self.source.upkeep().await?;
                    next_claim = Instant::now() + self.options.claim_interval_value();
                }
                let batch = match prefetched.take() {
                    Some(batch) => batch,
                    None => {
                        let block = self
                            .options
                            .block_value()
                            .min(next_claim.saturating_duration_since(Instant::now()))
                            .max(Duration::from_millis(1));
                        let mut read = pin!(self.source.read(Some(block)));
                        // A read is never abandoned: its events would stay pending until
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
                let events: usize = batch.iter().map(|b| b.deliveries.len()).sum();
                if events >= self.options.batch_size_value() && !stopping {
                    // Catching up: read the next batch (without waiting) while this one is
                    // processed, so the backend and the handler work at the same time.
                    let (processed, next) =
                        tokio::join!(self.process(batch, &mut stats), self.source.read(None));
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
                    self.process(batch, &mut stats).await?;
                }
                // While catching up, progress is published every PROGRESS_EVERY rather than
                // after every batch (a round trip each); once caught up, after every batch.
                if prefetched.is_none() || last_progress.elapsed() >= PROGRESS_EVERY {
                    self.publish_progress().await?;
                    last_progress = Instant::now();
                }
                Ok::<(), StoreError>(())
            };
            match step.await {
                Ok(()) => {}
                // While stopping, the error is returned: the batch in hand may not be acked.
                Err(error @ StoreError::Connection { .. }) if !stopping => {
                    tracing::warn!(projection = %self.name, %error, "lost the connection; retrying");
                    prepared = false;
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(stats)
    }

    /// Runs in a background task until [`RunningProjection::stop`]: the same as
    /// [`run`](Self::run) with a stop signal, for a worker beside the rest of the program.
    pub fn spawn(self) -> RunningProjection<P> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let control = self.control();
        let progress = self.progress();
        let task = tokio::spawn(async move {
            let stats = self
                .run(async {
                    // A dropped sender stops the runner too.
                    let _ = stopped.await;
                })
                .await;
            (self, stats)
        });
        RunningProjection {
            stop,
            task,
            control,
            progress,
        }
    }

    /// Reclaims and processes the events pending longer than `idle`, in every stream.
    /// Events in `held` (read ahead, about to be processed) are not processed again here
    /// when they come up.
    async fn reclaim(
        &self,
        idle: Duration,
        stats: &mut RunStats,
        held: Option<&[StreamBatch]>,
    ) -> Result<(), StoreError> {
        let held: std::collections::HashSet<(usize, Position)> = held
            .into_iter()
            .flatten()
            .flat_map(|b| b.deliveries.iter().map(move |d| (b.stream, d.position)))
            .collect();
        for stream in 0..self.source.streams().len() {
            let mut cursor = None;
            loop {
                let (mut deliveries, next) = self.source.reclaim(stream, idle, cursor).await?;
                deliveries.retain(|d| !held.contains(&(stream, d.position)));
                if !deliveries.is_empty() {
                    stats.claimed += deliveries.len() as u64;
                    tracing::info!(projection = %self.name, stream = %self.source.streams()[stream].location, events = deliveries.len(), "reclaimed pending events");
                    self.process(vec![StreamBatch { stream, deliveries }], stats)
                        .await?;
                }
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    async fn publish_progress(&self) -> Result<(), StoreError> {
        let watermarks = self.source.watermarks().await?;
        self.progress.send_if_modified(|current| {
            let changed = *current != watermarks;
            *current = watermarks;
            changed
        });
        Ok(())
    }
}

/// Refuses a projection that reads nothing, or whose read model is another's.
fn check<P: Projection>(projection: &P) -> Result<(), StoreError> {
    if projection.categories().is_empty() {
        return Err(StoreError::InvalidRequest(format!(
            "projection `{}` reads no categories: `Projection::categories` must name at least one",
            projection.name()
        )));
    }
    if let Some(read_model) = projection.read_model() {
        if read_model.projection() != projection.name() {
            return Err(StoreError::InvalidRequest(format!(
                "projection `{}` writes the read model of projection `{}`: build it with the projection's name, and let `Projection::name` return `read_model.projection()`",
                projection.name(),
                read_model.projection()
            )));
        }
    }
    Ok(())
}

/// A [`ProjectionRunner`] running in a background task ([`ProjectionRunner::spawn`]).
pub struct RunningProjection<P: Projection> {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(ProjectionRunner<P>, Result<RunStats, StoreError>)>,
    control: ProjectionControl,
    progress: Progress,
}

impl<P: Projection> RunningProjection<P> {
    /// A handle to wait on the runner's progress (see [`ProjectionRunner::progress`]).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// The projection's progress in each stream it reads, while it runs.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.control.status().await
    }

    /// The events of `category` the projection dead-lettered, oldest first.
    pub async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.control.dead_letters(category).await
    }

    /// Hands the dead letters of `category` to the projection again, while it runs (see
    /// [`ProjectionControl::redrive`]).
    pub async fn redrive(&self, category: &str) -> Result<RedriveReport, StoreError> {
        self.control.redrive(category).await
    }

    /// A handle for tools to watch the projection and re-drive its dead letters.
    pub fn control(&self) -> ProjectionControl {
        self.control.clone()
    }

    /// Stops the runner gracefully: it finishes and acknowledges the batch in hand. Returns
    /// the runner and what it did, or the error that ended the run. A panic in a handler is
    /// resumed here.
    pub async fn stop(self) -> Result<(ProjectionRunner<P>, RunStats), StoreError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok((runner, stats)) => Ok((runner, stats?)),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(StoreError::Backend {
                message: format!("the projection's task ended without a result: {error}"),
                source: None,
            }),
        }
    }

    /// Stops the runner at once, abandoning the batch in hand as a crash would: its events
    /// stay pending until a runner of the projection reclaims them.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
