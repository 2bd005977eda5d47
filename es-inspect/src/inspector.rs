//! [`Inspector`]: what the application registers (its store, aggregate types and
//! projections, whether writes are allowed, a token), and the queries every view is built
//! from, shared by the HTTP API and the CLI.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use es_core::projection::{ProjectionControl, ProjectionStatus};
use es_core::{Aggregate, EventStore, Position, ReadRange, StreamId};
use futures_util::Stream;

use crate::error::InspectError;
use crate::replay::{events_only, Replayer, Typed};
use crate::views::{
    AggregatePage, CategoryView, DeadLetterView, DeadLettersView, EventView,
    ProjectionCategoryView, ProjectionView, RedriveView, ReplayView, StillFailing, StreamEvents,
    TailEvent,
};

/// The most ids one page of aggregates may ask for.
pub const MAX_PAGE: usize = 1000;

/// How far a replay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Until {
    /// Every event.
    #[default]
    Latest,
    /// The events up to this version.
    Version(u64),
    /// The events stored at or before this time.
    Time(SystemTime),
}

/// An inspector of one store: browse its categories and aggregates, replay an aggregate's
/// state event by event with the application's own types, watch projections and re-drive
/// their dead letters. Serve it over HTTP ([`serve`](Self::serve), [`router`](Self::router))
/// or run its CLI ([`run_cli`](Self::run_cli)).
///
/// Read-only unless [`allow_writes`](Self::allow_writes) is set.
///
/// ```
/// # use es_core::{Aggregate, Apply, Event, InMemoryStore};
/// # #[derive(Event)] struct Registered { name: String }
/// # #[derive(Event)] enum UserEvent { Registered(Registered) }
/// # #[derive(Aggregate, Default)] #[aggregate(event = UserEvent)] struct User { name: String }
/// # impl Apply<Registered> for User { fn apply(&mut self, e: &Registered) { self.name = e.name.clone(); } }
/// use es_inspect::Inspector;
///
/// let inspector = Inspector::new(InMemoryStore::new()).aggregate::<User>();
/// ```
#[derive(Clone)]
pub struct Inspector {
    pub(crate) store: Arc<dyn EventStore>,
    replayers: BTreeMap<String, Arc<dyn Replayer>>,
    projections: Vec<ProjectionControl>,
    pub(crate) writes: bool,
    pub(crate) token: Option<Arc<str>>,
    tail_poll: Duration,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("aggregates", &self.replayers.keys().collect::<Vec<_>>())
            .field(
                "projections",
                &self
                    .projections
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .field("writes", &self.writes)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// An inspector of `store`, read-only, with no aggregate type or projection registered.
    pub fn new(store: impl EventStore + 'static) -> Self {
        Inspector {
            store: Arc::new(store),
            replayers: BTreeMap::new(),
            projections: Vec::new(),
            writes: false,
            token: None,
            tail_poll: Duration::from_millis(250),
        }
    }

    /// Registers aggregate type `A`: its category's aggregates can be replayed, the state
    /// after each event derived with `A`'s own `apply` code and shown as its snapshot
    /// fields.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.replayers
            .insert(A::NAME.to_owned(), Arc::new(Typed::<A>::new()));
        self
    }

    /// Registers a projection, by the handle of its runner
    /// ([`ProjectionRunner::control`](es_core::projection::ProjectionRunner::control) or
    /// [`RunningProjection::control`](es_core::projection::RunningProjection::control)).
    pub fn projection(mut self, projection: ProjectionControl) -> Self {
        self.projections.push(projection);
        self
    }

    /// Registers projections (see [`projection`](Self::projection)).
    pub fn projections(self, projections: impl IntoIterator<Item = ProjectionControl>) -> Self {
        projections.into_iter().fold(self, Self::projection)
    }

    /// Allows (or forbids, the default) the requests that change something: re-driving
    /// dead letters.
    pub fn allow_writes(mut self, allow: bool) -> Self {
        self.writes = allow;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every API request. Required to
    /// [`serve`](Self::serve) on an address that is not loopback.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// How often a live tail looks for new events (250 ms by default).
    pub fn tail_poll(mut self, interval: Duration) -> Self {
        self.tail_poll = interval.max(Duration::from_millis(1));
        self
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writes
    }

    /// The categories with a registered aggregate type.
    pub fn replayable(&self) -> Vec<String> {
        self.replayers.keys().cloned().collect()
    }

    /// Every category that holds events.
    pub async fn categories(&self) -> Result<Vec<CategoryView>, InspectError> {
        Ok(self
            .store
            .categories()
            .await?
            .into_iter()
            .map(|info| {
                let replayable = self.replayers.contains_key(&info.name);
                CategoryView::new(info, replayable)
            })
            .collect())
    }

    /// Up to `limit` (1 to [`MAX_PAGE`]) aggregate ids of `category`, in the order they
    /// started, after cursor `after` (the `next` of the page before).
    pub async fn aggregates(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregatePage, InspectError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(InspectError::BadRequest(format!(
                "a page holds 1 to {MAX_PAGE} ids, not {limit}"
            )));
        }
        let page = self.store.aggregate_ids(category, after, limit).await?;
        if page.ids.is_empty() && after.is_none() {
            return Err(no_category(category));
        }
        Ok(AggregatePage {
            category: category.to_owned(),
            ids: page.ids,
            next: page.next,
        })
    }

    /// The events of aggregate `id` of `category`, from version `from` to `to` (both
    /// included; all by default).
    pub async fn events(
        &self,
        category: &str,
        id: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<StreamEvents, InspectError> {
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(InspectError::BadRequest(format!(
                    "version {from} comes after version {to}"
                )));
            }
        }
        let stream = self.stream(category, id).await?;
        let mut range = ReadRange::all().from_version(from.unwrap_or(1));
        if let Some(to) = to {
            range = range.to_version(to);
        }
        let events = self.store.read_stream(&stream, &range).await?;
        Ok(StreamEvents {
            category: category.to_owned(),
            id: id.to_owned(),
            events: events.iter().map(EventView::from).collect(),
        })
    }

    /// Aggregate `id` of `category` replayed up to `until`: each event and the state after
    /// it, derived with the registered aggregate type (the events alone without one).
    pub async fn replay(
        &self,
        category: &str,
        id: &str,
        until: Until,
    ) -> Result<ReplayView, InspectError> {
        let stream = self.stream(category, id).await?;
        let range = match until {
            Until::Latest => ReadRange::all(),
            Until::Version(version) => ReadRange::all().to_version(version),
            Until::Time(time) => ReadRange::all().until(time),
        };
        let events = self.store.read_stream(&stream, &range).await?;
        let replayer = self.replayers.get(category);
        let (initial, steps) = match replayer {
            Some(replayer) => replayer.replay(events)?,
            None => (Vec::new(), events_only(events)),
        };
        Ok(ReplayView {
            category: category.to_owned(),
            id: id.to_owned(),
            replayable: replayer.is_some(),
            initial,
            steps,
        })
    }

    /// Every registered projection, with its progress in each category it reads.
    pub async fn projection_views(&self) -> Result<Vec<ProjectionView>, InspectError> {
        let mut views = Vec::with_capacity(self.projections.len());
        for projection in &self.projections {
            let statuses = projection.status().await?;
            let mut categories = Vec::new();
            for category in projection.categories() {
                let parts: Vec<ProjectionStatus> = statuses
                    .iter()
                    .filter(|status| status.category == category)
                    .cloned()
                    .collect();
                let status = ProjectionStatus::combine(&category, &parts);
                let dead_letters = projection.dead_letters(&category).await?.len();
                categories.push(ProjectionCategoryView::new(&status, dead_letters));
            }
            views.push(ProjectionView {
                name: projection.name().to_owned(),
                categories,
            });
        }
        Ok(views)
    }

    /// The dead letters of projection `name`, per category.
    pub async fn dead_letters(&self, name: &str) -> Result<DeadLettersView, InspectError> {
        let projection = self.projection_named(name)?;
        let mut dead_letters = Vec::new();
        for category in projection.categories() {
            dead_letters.extend(
                projection
                    .dead_letters(&category)
                    .await?
                    .into_iter()
                    .map(DeadLetterView::from),
            );
        }
        Ok(DeadLettersView {
            projection: name.to_owned(),
            dead_letters,
        })
    }

    /// Hands every dead letter of projection `name` to it again (after a fix); refused
    /// unless writes are allowed.
    pub async fn redrive(&self, name: &str) -> Result<RedriveView, InspectError> {
        let projection = self.projection_named(name)?;
        if !self.writes {
            return Err(InspectError::Forbidden(
                "the inspector is read-only: re-driving dead letters needs `Inspector::allow_writes(true)`"
                    .to_owned(),
            ));
        }
        let mut view = RedriveView {
            projection: name.to_owned(),
            redriven: 0,
            still_failing: Vec::new(),
        };
        for category in projection.categories() {
            let report = projection.redrive(&category).await?;
            view.redriven += report.redriven.len();
            view.still_failing
                .extend(
                    report
                        .still_failing
                        .into_iter()
                        .map(|(position, error)| StillFailing {
                            category: category.to_string(),
                            position: position.to_string(),
                            error,
                        }),
                );
        }
        Ok(view)
    }

    /// The events appended to `category` after `after` (by default: after its newest
    /// event now), as they come, looking every [`tail_poll`](Self::tail_poll). On a
    /// partitioned category, see what [`EventStore::read_category`] promises.
    pub async fn tail(
        &self,
        category: &str,
        after: Option<Position>,
    ) -> Result<impl Stream<Item = Result<TailEvent, InspectError>> + Send + 'static, InspectError>
    {
        let start = match after {
            Some(after) => after,
            None => self
                .store
                .categories()
                .await?
                .into_iter()
                .find(|info| info.name == category)
                .map_or(Position::ZERO, |info| info.head),
        };
        let state = Tail {
            store: self.store.clone(),
            category: category.to_owned(),
            cursor: start,
            ready: std::collections::VecDeque::new(),
            poll: self.tail_poll,
            waited: false,
        };
        Ok(futures_util::stream::unfold(state, Tail::next))
    }

    /// The stream of aggregate `id`, refused as unknown when it holds no event.
    async fn stream(&self, category: &str, id: &str) -> Result<StreamId, InspectError> {
        let stream = StreamId::new(category.to_owned(), id);
        if self.store.stream_version(&stream).await? > 0 {
            return Ok(stream);
        }
        let category_is_empty = self
            .store
            .aggregate_ids(category, None, 1)
            .await?
            .ids
            .is_empty();
        if category_is_empty {
            Err(no_category(category))
        } else {
            Err(InspectError::NotFound(format!(
                "category `{category}` has no aggregate {id:?}"
            )))
        }
    }

    fn projection_named(&self, name: &str) -> Result<&ProjectionControl, InspectError> {
        self.projections
            .iter()
            .find(|projection| projection.name() == name)
            .ok_or_else(|| InspectError::NotFound(format!("no projection named {name:?}")))
    }
}

fn no_category(category: &str) -> InspectError {
    InspectError::NotFound(format!("no category named {category:?} holds events"))
}

/// A live tail's state between events.
struct Tail {
    store: Arc<dyn EventStore>,
    category: String,
    cursor: Position,
    ready: std::collections::VecDeque<TailEvent>,
    poll: Duration,
    /// Whether the last read found nothing (the next one waits first).
    waited: bool,
}

impl Tail {
    async fn next(mut self) -> Option<(Result<TailEvent, InspectError>, Self)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some((Ok(event), self));
            }
            if self.waited {
                tokio::time::sleep(self.poll).await;
            }
            match self
                .store
                .read_category(&self.category, self.cursor, 100)
                .await
            {
                Ok(events) => {
                    self.waited = events.is_empty();
                    if let Some(last) = events.last() {
                        self.cursor = last.position;
                    }
                    self.ready.extend(events.iter().map(|event| TailEvent {
                        id: event.stream.id.clone(),
                        event: EventView::from(event),
                    }));
                }
                Err(error) => {
                    self.waited = true;
                    return Some((Err(error.into()), self));
                }
            }
        }
    }
}

/// Parses a time as RFC 3339 (`2026-12-02T06:31:07Z`, fractions and offsets `Z` only;
/// `2026-12-02 06:31:07` is read as UTC too) or as milliseconds since the epoch.
pub fn parse_time(text: &str) -> Result<SystemTime, InspectError> {
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(millis));
    }
    humantime::parse_rfc3339_weak(text).map_err(|error| {
        InspectError::BadRequest(format!(
            "{text:?} is no time: give RFC 3339 (2026-12-02T06:31:07Z) or milliseconds since the epoch ({error})"
        ))
    })
}
