//! Re-driving dead letters after a fix: each dead-lettered event is read again from the log
//! and handed to the projection; those it now handles stop being dead letters. And
//! [`ProjectionControl`], the handle that tools (es-inspect) watch and re-drive a
//! projection with, whatever its type and whether it runs.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;

use super::source::ProjectionSource;
use super::{handles, DeadLetter, Projection, ProjectionStatus};
use crate::error::StoreError;
use crate::store::{EventStore, Position, StoredEvent};

/// What a re-drive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// The positions of the events the projection handled: no longer dead letters.
    pub redriven: Vec<Position>,
    /// The events that failed again, with the new error: still dead letters (each keeps
    /// its first error in [`DeadLetter::error`]).
    pub still_failing: Vec<(Position, String)>,
}

/// Hands the dead letters of `category` to `projection` again, oldest first per stream.
/// An event the projection handles (or no longer reads: its type left the projection's
/// event enum) stops being a dead letter, one at a time, so an interrupted re-drive never
/// hands an event over twice but for the one in hand. Its read model's updates are applied
/// once, as always.
pub(super) async fn redrive<P: Projection>(
    projection: &P,
    source: &dyn ProjectionSource,
    category: &str,
) -> Result<RedriveReport, StoreError> {
    let streams: Vec<usize> = source
        .streams()
        .iter()
        .enumerate()
        .filter(|(_, stream)| stream.category == category)
        .map(|(index, _)| index)
        .collect();
    if streams.is_empty() {
        return Err(StoreError::InvalidRequest(format!(
            "projection `{}` does not read category `{category}`",
            projection.name()
        )));
    }
    let mut report = RedriveReport::default();
    for stream in streams {
        for delivery in source.dead_lettered(stream).await? {
            let outcome = match delivery.event {
                None => Err("the event is no longer in the log".to_owned()),
                Some(Err(error)) => Err(error.to_string()),
                Some(Ok(stored)) => handle(projection, stored).await,
            };
            match outcome {
                Ok(()) => {
                    source
                        .forget_dead_letters(stream, &[delivery.position])
                        .await?;
                    report.redriven.push(delivery.position);
                }
                Err(error) => report.still_failing.push((delivery.position, error)),
            }
        }
    }
    Ok(report)
}

async fn handle<P: Projection>(projection: &P, stored: StoredEvent) -> Result<(), String> {
    if !handles::<P::Event>(&stored) {
        return Ok(());
    }
    let event = stored
        .decode::<P::Event>()
        .map_err(|error| error.to_string())?;
    projection
        .handle(&event)
        .await
        .map_err(|error| error.to_string())
}

/// The event at `position` of `partition` of `category`, read again from the log for a
/// re-drive: `None` when it is no longer there.
pub async fn event_at<S: EventStore + ?Sized>(
    store: &S,
    category: &str,
    partition: u32,
    position: Position,
) -> Option<Result<StoredEvent, StoreError>> {
    match store
        .read_partition(category, partition, position.previous(), 1)
        .await
    {
        Ok(events) => events
            .into_iter()
            .next()
            .filter(|event| event.position == position)
            .map(Ok),
        Err(error) => Some(Err(error)),
    }
}

/// A projection's handle for tools: its name and categories, its status and dead letters,
/// and re-driving them. Cheap to clone; works while the projection runs
/// ([`RunningProjection::control`](super::RunningProjection::control)) and while it does not
/// ([`ProjectionRunner::control`](super::ProjectionRunner::control)).
#[derive(Clone)]
pub struct ProjectionControl {
    name: Arc<str>,
    source: Arc<dyn ProjectionSource>,
    projection: Arc<dyn Redrive>,
}

impl std::fmt::Debug for ProjectionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionControl")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A projection of any type, as re-drives see it.
#[async_trait]
trait Redrive: Send + Sync {
    async fn redrive(
        &self,
        source: &dyn ProjectionSource,
        category: &str,
    ) -> Result<RedriveReport, StoreError>;
}

struct Typed<P>(Arc<P>);

#[async_trait]
impl<P: Projection> Redrive for Typed<P> {
    async fn redrive(
        &self,
        source: &dyn ProjectionSource,
        category: &str,
    ) -> Result<RedriveReport, StoreError> {
        redrive(&*self.0, source, category).await
    }
}

impl ProjectionControl {
    pub(super) fn new<P: Projection>(
        projection: Arc<P>,
        source: Arc<dyn ProjectionSource>,
    ) -> Self {
        ProjectionControl {
            name: Arc::from(projection.name()),
            source,
            projection: Arc::new(Typed(projection)),
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The categories it reads, in its order.
    pub fn categories(&self) -> Vec<Cow<'static, str>> {
        let mut categories: Vec<Cow<'static, str>> = Vec::new();
        for stream in self.source.streams() {
            if !categories.contains(&stream.category) {
                categories.push(stream.category.clone());
            }
        }
        categories
    }

    /// Its progress in each stream it reads (each partition of a partitioned category).
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.source.status().await
    }

    /// The events of `category` it dead-lettered, oldest first.
    pub async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        self.source.dead_letters(category).await
    }

    /// Hands the dead letters of `category` to the projection again, after a fix: those
    /// it handles now stop being dead letters, the others stay (see [`RedriveReport`]).
    /// While the projection runs, re-driven events are handled beside its new ones, as by
    /// a competing consumer: they come out of their order in the category.
    pub async fn redrive(&self, category: &str) -> Result<RedriveReport, StoreError> {
        self.projection.redrive(&*self.source, category).await
    }
}
