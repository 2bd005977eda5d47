//! The projection conformance suite: what every [`ProjectionBackend`] must do, run with
//! [`projection_conformance_tests!`](crate::projection_conformance_tests). Cases a backend
//! cannot support (competing consumers) check its [`Capabilities`] say so instead.
//!
//! [`Capabilities`]: crate::projection::Capabilities

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::codec::Fields;
use crate::projection::{
    BatchError, Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner,
};
use crate::read_model::ReadModel;
use crate::{
    Event, EventStore, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StoreError,
    StreamId,
};

/// Stamps out one `#[tokio::test]` per projection conformance case, each with a fresh
/// backend from `$factory` (a closure returning a future of a value that is an
/// [`EventStore`] and a [`ProjectionBackend`]).
///
/// ```rust,ignore
/// es_core::projection_conformance_tests!(|| async { MyStore::connect_fresh().await });
/// ```
#[macro_export]
macro_rules! projection_conformance_tests {
    ($factory:expr) => {
        $crate::projection_conformance_tests!(@cases $factory;
            every_event_of_its_categories_is_handled_once,
            poison_events_are_dead_lettered_while_later_events_flow,
            batch_failures_are_pinned_on_their_event,
            read_models_apply_each_event_exactly_once,
            rebuild_replays_into_a_cleared_read_model,
            progress_waits_for_new_events_and_stop_finishes_the_batch_in_hand,
            status_reports_lag_and_pending,
            competing_consumers_share_the_work,
            misconfigured_projections_are_refused,
            projections_receive_upcast_events,
            dead_letters_are_redriven_after_a_fix,
            projections_see_deletions,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let backend = ($factory)().await;
            $crate::testing::projection_cases::$case(backend).await;
        }
    )*};
}

pub use super::deletion_cases::projections_see_deletions;
pub use super::evolution_cases::projections_receive_upcast_events;
pub use super::live_projection_cases::{
    competing_consumers_share_the_work,
    progress_waits_for_new_events_and_stop_finishes_the_batch_in_hand,
    status_reports_lag_and_pending,
};
pub use super::read_model_cases::read_models_apply_each_event_exactly_once;
pub use super::redrive_cases::dead_letters_are_redriven_after_a_fix;

/// What a backend under test must be: a store to append to, and a projection backend.
pub trait Backend: EventStore + ProjectionBackend + Clone + 'static {}
impl<B: EventStore + ProjectionBackend + Clone + 'static> Backend for B {}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Registered")]
pub(super) struct Registered {
    pub(super) name: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Kicked")]
pub(super) struct Kicked {
    pub(super) times: i64,
}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Ignored")]
struct Ignored {
    note: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
pub(super) enum Input {
    Registered(Registered),
    Kicked(Kicked),
}

/// Names and kick counts per user, in a read model; fails on the names in `poison`;
/// counts batches and single calls.
#[derive(Clone)]
pub(super) struct Profiles {
    pub(super) model: ReadModel,
    pub(super) poison: Vec<String>,
    /// Batch handling reports the failing event itself (`BatchError::at`), or fails the
    /// whole batch (`BatchError::nothing_handled`).
    pinpoint: bool,
    batches: Arc<Mutex<Vec<usize>>>,
    singles: Arc<AtomicU64>,
    /// Holds the first batch in the handler until the test opens it.
    pub(super) gate: Option<Arc<Gate>>,
}

/// Holds a projection's first batch in its handler: the test sees it `entered`, then
/// `open`s it.
pub(super) struct Gate {
    entered: std::sync::atomic::AtomicBool,
    open: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: Default::default(),
            open: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Whether a batch is held (or was).
    pub(super) fn entered(&self) -> bool {
        self.entered.load(Ordering::SeqCst)
    }

    /// Lets the held batch go on (and every later one).
    pub(super) fn open(&self) {
        self.open
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    async fn pass(&self) {
        self.entered.store(true, Ordering::SeqCst);
        let _ = self.open.acquire().await;
    }
}

impl Profiles {
    pub(super) fn new<B: Backend>(backend: &B, name: &str) -> Self {
        Profiles {
            model: backend.read_model(name),
            poison: Vec::new(),
            pinpoint: false,
            batches: Arc::default(),
            singles: Arc::default(),
            gate: None,
        }
    }

    /// The same projection, counting what it is given on its own counters.
    pub(super) fn counted_apart(mut self) -> Self {
        self.batches = Arc::default();
        self.singles = Arc::default();
        self
    }

    /// How many events its handlers were given.
    pub(super) fn events_handled(&self) -> usize {
        self.batches.lock().expect("batches").iter().sum()
    }

    fn check(&self, event: &RecordedEvent<Input>) -> Result<(), StoreError> {
        match &event.event {
            Input::Registered(r) if self.poison.contains(&r.name) => Err(
                StoreError::InvalidRequest(format!("cannot store {}", r.name)),
            ),
            _ => Ok(()),
        }
    }

    fn update<'a>(
        &'a self,
        event: &RecordedEvent<Input>,
    ) -> crate::read_model::ReadModelUpdate<'a> {
        let update = self.model.update(event);
        match &event.event {
            Input::Registered(r) => update
                .hset("names", &event.stream.id, r.name.as_str())
                .hincrby("registrations", &r.name, 1),
            Input::Kicked(k) => update.hincrby("kicks", &event.stream.id, k.times),
        }
    }
}

#[async_trait::async_trait]
impl Projection for Profiles {
    type Event = Input;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.model.projection()
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into(), "activity".into()]
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }
    async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), StoreError> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        self.check(event)?;
        let _applied = self.update(event).commit().await?;
        Ok(())
    }
    async fn handle_batch(
        &self,
        events: &[RecordedEvent<Input>],
    ) -> Result<(), BatchError<StoreError>> {
        if let Some(gate) = &self.gate {
            gate.pass().await;
        }
        self.batches.lock().expect("batches").push(events.len());
        let mut batch = self.model.batch();
        for (at, event) in events.iter().enumerate() {
            if let Err(error) = self.check(event) {
                if !self.pinpoint {
                    return Err(BatchError::nothing_handled(error));
                }
                batch.commit().await.map_err(BatchError::nothing_handled)?;
                return Err(BatchError::at(at, error));
            }
            batch.push(self.update(event));
        }
        batch.commit().await.map_err(BatchError::nothing_handled)?;
        Ok(())
    }
}

pub(super) async fn append<B: Backend, E: Event>(
    backend: &B,
    category: &str,
    id: &str,
    event: &E,
) -> Position {
    let new = NewEvent::encode(event, Metadata::default()).expect("encode");
    let written = backend
        .append(
            &StreamId::new(category.to_owned(), id),
            ExpectedVersion::Any,
            vec![new],
            &Default::default(),
        )
        .await
        .expect("append");
    written.positions[0]
}

pub(super) fn registered(name: &str) -> Registered {
    Registered { name: name.into() }
}

pub(super) fn options(consumer: &str) -> ProjectionOptions {
    ProjectionOptions::new(consumer)
        .batch_size(4)
        .block(Duration::from_millis(20))
        .poll_interval(Duration::from_millis(2))
}

pub(super) async fn names(model: &ReadModel) -> Vec<(String, String)> {
    model
        .hash("names")
        .await
        .expect("names")
        .into_iter()
        .map(|(id, name)| (id, String::from_utf8_lossy(&name).into_owned()))
        .collect()
}

pub(super) fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Every event of the projection's categories reaches its read model once; events of
/// other types are skipped; a second run finds nothing new.
pub async fn every_event_of_its_categories_is_handled_once<B: Backend>(backend: B) {
    append(&backend, "user", "1", &registered("Duffy")).await;
    append(&backend, "activity", "1", &Kicked { times: 1 }).await;
    append(&backend, "user", "2", &registered("Bugs")).await;
    append(&backend, "user", "1", &Ignored { note: "x".into() }).await;
    append(&backend, "activity", "1", &Kicked { times: 2 }).await;
    append(&backend, "elsewhere", "9", &registered("Nobody")).await;
    append(&backend, "user", "1", &registered("Daffy")).await;
    let profiles = Profiles::new(&backend, "profiles");
    let runner = ProjectionRunner::connect(&backend, profiles, options("c1"))
        .await
        .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(
        (stats.handled, stats.skipped, stats.dead_lettered),
        (5, 1, 0)
    );
    let again = runner.run_once().await.expect("run again");
    assert_eq!(again.handled + again.skipped, 0, "nothing new: {again:?}");
    let model = &runner.projection().model;
    assert_eq!(names(model).await, pairs(&[("1", "Daffy"), ("2", "Bugs")]));
    assert_eq!(model.hash("kicks").await.expect("kicks")["1"], b"3");
    assert_eq!(model.applied_count("user").await.expect("count"), 3);
    assert!(runner
        .dead_letters("user")
        .await
        .expect("letters")
        .is_empty());
}

/// A failing event is delivered again, then dead-lettered after its last delivery; an
/// undecodable one at once; later events flow meanwhile.
pub async fn poison_events_are_dead_lettered_while_later_events_flow<B: Backend>(backend: B) {
    append(&backend, "user", "1", &registered("Poison")).await;
    let bad = NewEvent {
        event_type: "Registered".into(),
        fields: Fields::new(),
        metadata: Metadata::default(),
    };
    let undecodable = backend
        .append(
            &StreamId::new("user", "2"),
            ExpectedVersion::Any,
            vec![bad],
            &Default::default(),
        )
        .await
        .expect("append")
        .positions[0];
    append(&backend, "user", "3", &registered("Fine")).await;
    let mut profiles = Profiles::new(&backend, "poisoned");
    profiles.poison = vec!["Poison".into()];
    let runner = ProjectionRunner::connect(&backend, profiles, options("c1").max_deliveries(3))
        .await
        .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    assert_eq!(
        names(&runner.projection().model).await,
        pairs(&[("3", "Fine")])
    );
    // Found by what they say: across the partitions of a partitioned category, positions
    // do not order events.
    let letters = runner.dead_letters("user").await.expect("letters");
    assert_eq!(letters.len(), 2, "{letters:?}");
    let poison = letters
        .iter()
        .find(|l| l.error.contains("cannot store Poison"))
        .unwrap_or_else(|| panic!("no letter for the failing handler: {letters:?}"));
    assert_eq!(poison.attempts, 3);
    let broken = letters
        .iter()
        .find(|l| l.error.contains("field `name` is missing"))
        .unwrap_or_else(|| panic!("no letter for the undecodable event: {letters:?}"));
    assert_eq!(
        (broken.position, broken.event_type.as_str()),
        (undecodable, "Registered")
    );
    let status = runner.status().await.expect("status");
    assert!(status.iter().all(|s| s.pending == 0), "{status:?}");
}

/// Batch handlers get whole reads; a failure is pinned on its event (reported by the
/// batch, or found by handling the rest one at a time) and the others are handled.
pub async fn batch_failures_are_pinned_on_their_event<B: Backend>(backend: B) {
    // One aggregate: its events are one stream's, whatever the partitioning.
    for n in 0..10 {
        append(&backend, "user", "u", &registered(&format!("n{n}"))).await;
    }
    for pinpoint in [false, true] {
        let mut profiles = Profiles::new(&backend, if pinpoint { "pinpoint" } else { "whole" });
        profiles.poison = vec!["n6".into()];
        profiles.pinpoint = pinpoint;
        let runner = ProjectionRunner::connect(&backend, profiles, options("c1").max_deliveries(2))
            .await
            .expect("runner");
        runner.run_once().await.expect("run");
        let projection = runner.projection();
        let mut expected: Vec<String> = (0..10)
            .filter(|n| *n != 6)
            .map(|n| format!("n{n}"))
            .collect();
        expected.sort();
        let registrations = projection.model.hash("registrations").await.expect("read");
        assert!(
            registrations.values().all(|count| count == b"1"),
            "each once: {registrations:?}"
        );
        let got: Vec<String> = registrations.into_keys().collect();
        assert_eq!(got, expected, "pinpoint: {pinpoint}");
        let batches = projection.batches.lock().expect("batches").clone();
        let singles = projection.singles.load(Ordering::SeqCst);
        if pinpoint {
            // n0-n3 | n4 n5, n6 fails | n7 | n8 n9 | n6 again (its second delivery) fails.
            assert_eq!((batches.as_slice(), singles), (&[4, 4, 1, 2, 1][..], 0));
        } else {
            // n4-n7 fails as a whole: its events are handled alone (n4 n5 n6 n7), and n6's
            // second delivery fails as a batch of one, then alone.
            assert_eq!((batches.as_slice(), singles), (&[4, 4, 2, 1][..], 5));
        }
        let letters = runner.dead_letters("user").await.expect("letters");
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].attempts, 2);
        assert!(
            letters[0].error.contains("cannot store n6"),
            "{}",
            letters[0].error
        );
    }
}

/// Rebuild replays everything into a cleared read model.
pub async fn rebuild_replays_into_a_cleared_read_model<B: Backend>(backend: B) {
    append(&backend, "user", "1", &registered("Duffy")).await;
    append(&backend, "activity", "1", &Kicked { times: 2 }).await;
    let runner =
        ProjectionRunner::connect(&backend, Profiles::new(&backend, "rebuilt"), options("c1"))
            .await
            .expect("runner");
    runner.run_once().await.expect("run");
    let model = &runner.projection().model;
    let before = model.hashes().await.expect("before");
    // The read model drifts (say, a bug fixed since), then is rebuilt.
    let drift = RecordedEvent {
        position: Position::new(u64::MAX, 0),
        ..backend
            .read_category("user", Position::ZERO, 100)
            .await
            .expect("read")[0]
            .clone()
    };
    let _ = model
        .update(&drift)
        .hset("names", "1", "Drifted")
        .commit()
        .await
        .expect("drift");
    runner.rebuild().await.expect("rebuild");
    assert!(model.hashes().await.expect("cleared").is_empty());
    let stats = runner.run_once().await.expect("replay");
    assert_eq!(stats.handled, 2);
    assert_eq!(model.hashes().await.expect("after"), before);
}

/// A projection reading nothing, or writing another projection's read model, is refused.
pub async fn misconfigured_projections_are_refused<B: Backend>(backend: B) {
    let mut profiles = Profiles::new(&backend, "mine");
    profiles.model = backend.read_model("theirs");
    // `name()` follows the model; a projection naming itself otherwise is refused.
    struct Renamed(Profiles);
    #[async_trait::async_trait]
    impl Projection for Renamed {
        type Event = Input;
        type Error = StoreError;
        fn name(&self) -> &str {
            "mine"
        }
        fn categories(&self) -> Vec<Cow<'static, str>> {
            self.0.categories()
        }
        fn read_model(&self) -> Option<&ReadModel> {
            Some(&self.0.model)
        }
        async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), StoreError> {
            self.0.handle(event).await
        }
    }
    let refused = ProjectionRunner::connect(&backend, Renamed(profiles), options("c1")).await;
    assert!(matches!(refused, Err(StoreError::InvalidRequest(ref why)) if why.contains("theirs")));
    struct Nothing;
    #[async_trait::async_trait]
    impl Projection for Nothing {
        type Event = Input;
        type Error = StoreError;
        fn name(&self) -> &str {
            "nothing"
        }
        fn categories(&self) -> Vec<Cow<'static, str>> {
            Vec::new()
        }
        async fn handle(&self, _: &RecordedEvent<Input>) -> Result<(), StoreError> {
            Ok(())
        }
    }
    let refused = ProjectionRunner::connect(&backend, Nothing, options("c1")).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidRequest(ref why)) if why.contains("reads no categories"))
    );
}
