//! The read side: [`Projection`]s consume categories and keep read models up to date.
//!
//! A projection names the categories it reads and handles their events, decoded into its
//! own event enum: an enum of the event structs it cares about, from any of those
//! categories. Events of other types are skipped.
//!
//! One engine runs projections on every backend: [`ProjectionRunner`] owns the read loop
//! and the walk over batches, failures and dead letters; a backend only provides a
//! [`ProjectionSource`] (Redis: consumer groups; the in-memory store: [`PollingSource`]),
//! opened through its [`ProjectionBackend`] impl, and a
//! [`ReadModelStore`](crate::read_model::ReadModelStore). So one projection type runs
//! unchanged on any of them.

mod options;
mod polling;
mod redrive;
mod runner;
mod source;
mod walk;

pub use options::ProjectionOptions;
pub use polling::PollingSource;
pub use redrive::{event_at, ProjectionControl, RedriveReport};
pub use runner::{ProjectionRunner, RunStats, RunningProjection};
pub use source::{
    poll, poll_until_woken, reclaim_after, watermarks, Capabilities, Delivery, ProjectionBackend,
    ProjectionSource, ProjectionStatus, SourceStream, StreamBatch,
};

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::event::Event;
use crate::read_model::ReadModel;
use crate::store::{Position, RecordedEvent, StoredEvent};

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

    /// The read model it writes, if it keeps one in the backend: the runner clears it on
    /// [`rebuild`](ProjectionRunner::rebuild), and refuses to run a projection whose read
    /// model belongs to another projection (build it with
    /// [`ProjectionBackend::read_model`] and this projection's name, and let
    /// [`name`](Self::name) return [`ReadModel::projection`]).
    fn read_model(&self) -> Option<&ReadModel> {
        None
    }

    /// Handles one event. Delivery is at least once: make the handler idempotent (a
    /// [`ReadModel`] does this by recording applied events in the same atomic commit).
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

/// Whether a stored event is one `E` handles (else a projection skips it): its type is one
/// of `E`'s event types or one of their aliases ([`Event::reads_type`]).
pub fn handles<E: Event>(stored: &StoredEvent) -> bool {
    E::reads_type(&stored.event_type)
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

    /// Read-your-writes: waits until the projection has processed what a command wrote,
    /// every event of the aggregate's category up to
    /// [`Executed::position`](crate::Executed::position).
    pub async fn wait_for_executed<A>(
        &mut self,
        executed: &crate::Executed<A>,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_for(&executed.stream.category, executed.position, timeout)
            .await
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
