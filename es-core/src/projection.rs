//! The read side: [`Projection`]s consume categories and keep read models up to date.
//!
//! A projection names the categories it reads and handles their events, decoded into its
//! own event enum: an enum of the event structs it cares about, from any of those
//! categories. Events of other types are skipped. Backends run projections their own way
//! (Redis: consumer groups); [`CatchUpRunner`] runs one over any [`EventStore`] by polling
//! category reads, which is what the in-memory backend and unit tests use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::Event;
use crate::store::{EventStore, Position, RecordedEvent, StoredEvent};

/// A read-side consumer of one or more categories.
///
/// ```
/// use std::sync::Mutex;
/// use es_core::{Event, RecordedEvent};
/// use es_core::projection::Projection;
///
/// #[derive(Event)] struct Registered { name: String }
/// #[derive(Event)] enum Input { Registered(Registered) }
///
/// #[derive(Default)]
/// struct Names(Mutex<Vec<String>>);
///
/// #[async_trait::async_trait]
/// impl Projection for Names {
///     type Event = Input;
///     type Error = std::convert::Infallible;
///     fn name(&self) -> &str { "names" }
///     fn categories(&self) -> Vec<std::borrow::Cow<'static, str>> { vec!["user".into()] }
///     async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), Self::Error> {
///         let Input::Registered(e) = &event.event;
///         self.0.lock().unwrap().push(e.name.clone());
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The events it handles; stored events of other types are skipped.
    type Event: Event;
    /// Why handling an event failed. Runners retry, then dead-letter the event.
    type Error: fmt::Display + Send + Sync + 'static;

    /// A stable name: the consumer group and checkpoint key. Changing it replays history.
    fn name(&self) -> &str;

    /// The categories (aggregate type names) it reads.
    fn categories(&self) -> Vec<Cow<'static, str>>;

    /// Handles one event. Delivery is at least once: make the handler idempotent (the
    /// Redis read-model helper does this with a checkpoint written atomically).
    async fn handle(&self, event: &RecordedEvent<Self::Event>) -> Result<(), Self::Error>;

    /// Handles the events of one read of one category, in order; runners call this rather
    /// than [`handle`](Self::handle). The default calls `handle` for each event and stops
    /// at the first failure ([`BatchError::at`]).
    ///
    /// Override it to do a batch's work in one step (one read-model commit instead of one
    /// per event): that is where catch-up speed comes from. On failure, say how far the
    /// batch got:
    /// - [`BatchError::at`]`(n, error)`: the first `n` events were handled and event `n`
    ///   failed with `error`. The runner counts the `n` as done, treats event `n` as a failed
    ///   delivery (retried, in time dead-lettered) and hands the events after it to
    ///   `handle_batch` again.
    /// - [`BatchError::nothing_handled`]`(error)` (a batch that commits all or nothing), or
    ///   [`BatchError::after`]`(n, error)`: the runner cannot tell which event failed, so it
    ///   hands every event not handled to `handle`, one at a time, and the failure is pinned
    ///   on the event that causes it.
    async fn handle_batch(
        &self,
        events: &[RecordedEvent<Self::Event>],
    ) -> Result<(), BatchError<Self::Error>> {
        for (handled, event) in events.iter().enumerate() {
            self.handle(event)
                .await
                .map_err(|error| BatchError::at(handled, error))?;
        }
        Ok(())
    }
}

/// Why [`Projection::handle_batch`] stopped, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError<E> {
    /// How many events at the front of the batch were handled: they are not handled again.
    pub handled: usize,
    /// Why the batch stopped.
    pub error: E,
    /// Whether `error` is the failure of the event right after the handled ones (else the
    /// runner finds the failing event by handling the rest one at a time).
    pub failed_next: bool,
}

impl<E> BatchError<E> {
    /// The first `handled` events were handled, and the next one failed with `error`.
    pub fn at(handled: usize, error: E) -> Self {
        BatchError {
            handled,
            error,
            failed_next: true,
        }
    }

    /// The first `handled` events were handled; then something failed, and which event
    /// caused it is unknown.
    pub fn after(handled: usize, error: E) -> Self {
        BatchError {
            handled,
            error,
            failed_next: false,
        }
    }

    /// Nothing in the batch was handled (say, its one commit failed), and which event
    /// caused it is unknown.
    pub fn nothing_handled(error: E) -> Self {
        Self::after(0, error)
    }
}

impl<E: fmt::Display> fmt::Display for BatchError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (after {} events of the batch were handled)",
            self.error, self.handled
        )
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for BatchError<E> {}

/// Whether a stored event is one `E` handles (else a projection skips it).
pub fn handles<E: Event>(stored: &StoredEvent) -> bool {
    E::EVENT_TYPES.contains(&stored.event_type.as_str())
}

/// An event a projection could not process: kept aside so later events still flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The category it came from.
    pub category: String,
    /// Its position there.
    pub position: Position,
    /// Its event type.
    pub event_type: String,
    /// How often processing was tried.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// Waiting for a projection to reach a position took longer than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("projection `{projection}` did not reach {position} of `{category}` within {timeout:?}")]
pub struct WaitTimeout {
    /// The projection.
    pub projection: String,
    /// The category.
    pub category: String,
    /// The position waited for.
    pub position: Position,
    /// How long it waited.
    pub timeout: Duration,
}

/// Runs a [`Projection`] over any [`EventStore`] by reading its categories from a
/// checkpoint, in batches. The checkpoint is kept in memory: a new runner starts from the
/// beginning, which is what the in-memory backend and tests want.
///
/// ```
/// # use std::sync::Mutex;
/// # use es_core::{Event, RecordedEvent, InMemoryStore, EventStore, NewEvent, StreamId, ExpectedVersion, Metadata};
/// # use es_core::projection::{CatchUpRunner, Projection};
/// # #[derive(Event)] struct Registered { name: String }
/// # #[derive(Event)] enum Input { Registered(Registered) }
/// # #[derive(Default)] struct Names(Mutex<Vec<String>>);
/// # #[async_trait::async_trait]
/// # impl Projection for Names {
/// #     type Event = Input; type Error = std::convert::Infallible;
/// #     fn name(&self) -> &str { "names" }
/// #     fn categories(&self) -> Vec<std::borrow::Cow<'static, str>> { vec!["user".into()] }
/// #     async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), Self::Error> {
/// #         let Input::Registered(e) = &event.event; self.0.lock().unwrap().push(e.name.clone()); Ok(())
/// #     }
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = InMemoryStore::new();
/// let event = NewEvent::encode(&Registered { name: "Duffy".into() }, Metadata::default())?;
/// store.append(&StreamId::new("user", "1"), ExpectedVersion::Any, vec![event], &Default::default()).await?;
/// let mut runner = CatchUpRunner::new(store, Names::default());
/// assert_eq!(runner.run_once().await?, 1);
/// assert_eq!(*runner.projection().0.lock().unwrap(), ["Duffy"]);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct CatchUpRunner<S, P> {
    store: S,
    projection: P,
    batch_size: usize,
    max_attempts: u32,
    poll_interval: Duration,
    checkpoints: HashMap<String, Position>,
    progress: watch::Sender<HashMap<String, Position>>,
    dead_letters: Vec<DeadLetter>,
}

impl<S: EventStore, P: Projection> CatchUpRunner<S, P> {
    /// A runner from the beginning of every category: batches of 100, 3 attempts per event,
    /// polling every 10 ms when idle.
    pub fn new(store: S, projection: P) -> Self {
        CatchUpRunner {
            store,
            projection,
            batch_size: 100,
            max_attempts: 3,
            poll_interval: Duration::from_millis(10),
            checkpoints: HashMap::new(),
            progress: watch::channel(HashMap::new()).0,
            dead_letters: Vec::new(),
        }
    }

    /// Reads at most `size` events per category read.
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Tries an event this many times before dead-lettering it.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long [`run`](Self::run) sleeps when there is nothing new.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The projection (e.g. to query its read model).
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Events that failed every attempt or did not decode.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// The last position processed in `category`.
    pub fn checkpoint(&self, category: &str) -> Position {
        self.checkpoints.get(category).copied().unwrap_or_default()
    }

    /// A handle to wait on this runner's progress from other tasks.
    pub fn progress(&self) -> Progress {
        Progress {
            projection: self.projection.name().to_owned(),
            receiver: self.progress.subscribe(),
        }
    }

    /// Processes everything stored now; returns how many events were read.
    pub async fn run_once(&mut self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let (read, more) = self.run_batches().await?;
            total += read;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Reads and processes one batch of each category; returns how many events were read
    /// and whether any category may have more.
    async fn run_batches(&mut self) -> Result<(usize, bool), StoreError> {
        let (mut total, mut more) = (0, false);
        for category in self.projection.categories() {
            let after = self.checkpoint(&category);
            let batch = self
                .store
                .read_category(&category, after, self.batch_size)
                .await?;
            let read = batch.len();
            if let Some(last) = batch.last() {
                let last = last.position;
                self.process(&category, batch).await;
                self.checkpoints.insert(category.to_string(), last);
            }
            if read > 0 {
                self.progress.send_replace(self.checkpoints.clone());
            }
            total += read;
            more |= read == self.batch_size;
        }
        Ok((total, more))
    }

    /// Runs until `shutdown` resolves, finishing the batches in hand (shutdown is checked
    /// between batches). Store errors are logged and retried after the poll interval.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let idle = match self.run_batches().await {
                Ok((read, _)) => read == 0,
                Err(error) => {
                    tracing::warn!(projection = self.projection.name(), %error, "reading failed; retrying");
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
            } else if is_ready(&mut shutdown) {
                return;
            }
        }
    }

    /// Decodes the events of one read that the projection handles and hands them to
    /// [`Projection::handle_batch`], following what [`BatchError`] says on failure.
    async fn process(&mut self, category: &str, batch: Vec<StoredEvent>) {
        let mut events = Vec::with_capacity(batch.len());
        for stored in batch {
            if !handles::<P::Event>(&stored) {
                continue;
            }
            let (position, event_type) = (stored.position, stored.event_type.clone());
            match stored.decode::<P::Event>() {
                Ok(event) => events.push(event),
                Err(error) => {
                    // The events before it first, so that dead letters come in order.
                    self.handle_events(category, std::mem::take(&mut events))
                        .await;
                    self.dead_letter(category, position, event_type, 1, error.to_string());
                }
            }
        }
        self.handle_events(category, events).await;
    }

    async fn handle_events(&mut self, category: &str, events: Vec<RecordedEvent<P::Event>>) {
        let mut start = 0;
        while start < events.len() {
            let failure = match self.projection.handle_batch(&events[start..]).await {
                Ok(()) => return,
                Err(failure) => failure,
            };
            start += failure.handled.min(events.len() - start);
            if start == events.len() {
                return;
            }
            if failure.failed_next {
                // That was the event's first attempt.
                let error = failure.error.to_string();
                self.process_one(category, &events[start], 1, error).await;
                start += 1;
            } else {
                tracing::debug!(projection = self.projection.name(), error = %failure.error, "batch handler failed; handling the rest one by one");
                for event in &events[start..] {
                    self.process_one(category, event, 0, String::new()).await;
                }
                return;
            }
        }
    }

    /// Handles one event until it succeeds or has had `max_attempts` attempts (`attempts`
    /// were made already, the last failing with `error`), then dead-letters it.
    async fn process_one(
        &mut self,
        category: &str,
        event: &RecordedEvent<P::Event>,
        mut attempts: u32,
        mut error: String,
    ) {
        while attempts < self.max_attempts {
            attempts += 1;
            match self.projection.handle(event).await {
                Ok(()) => return,
                Err(failure) => {
                    tracing::debug!(projection = self.projection.name(), error = %failure, attempt = attempts, "handler failed");
                    error = failure.to_string();
                }
            }
        }
        let event_type = event.event_type.clone();
        self.dead_letter(category, event.position, event_type, attempts, error);
    }

    fn dead_letter(
        &mut self,
        category: &str,
        position: Position,
        event_type: String,
        attempts: u32,
        error: String,
    ) {
        tracing::warn!(projection = self.projection.name(), category, %position, %error, "dead-lettering an event");
        self.dead_letters.push(DeadLetter {
            category: category.to_owned(),
            position,
            event_type,
            attempts,
            error,
        });
    }
}

/// Whether `future` is already complete (polled once, without waiting): how a runner checks
/// its shutdown signal between batches.
pub fn is_ready<F: std::future::Future<Output = ()>>(future: &mut std::pin::Pin<&mut F>) -> bool {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    future.as_mut().poll(&mut context).is_ready()
}

/// Waits on a runner's progress: read-your-writes for queries and tests.
#[derive(Clone)]
pub struct Progress {
    projection: String,
    receiver: watch::Receiver<HashMap<String, Position>>,
}

impl Progress {
    /// A handle over `receiver`, which a runner of projection `projection` feeds with the
    /// last position it has processed in each category (everything up to and including it
    /// is processed). Backends with runners of their own use it to offer the same wait.
    pub fn new(
        projection: impl Into<String>,
        receiver: watch::Receiver<HashMap<String, Position>>,
    ) -> Self {
        Progress {
            projection: projection.into(),
            receiver,
        }
    }

    /// Waits until the projection has processed `position` of `category`.
    pub async fn wait_for(
        &mut self,
        category: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let reached = |checkpoints: &HashMap<String, Position>| {
            checkpoints.get(category).is_some_and(|p| *p >= position)
        };
        match tokio::time::timeout(timeout, self.receiver.wait_for(reached)).await {
            Ok(Ok(_)) => Ok(()),
            // The runner is gone: it will not get there.
            Ok(Err(_)) | Err(_) => Err(WaitTimeout {
                projection: self.projection.clone(),
                category: category.to_owned(),
                position,
                timeout,
            }),
        }
    }
}
