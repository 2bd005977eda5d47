//! Personal data: sealed on the way in, erased on every read path after its subject's key
//! is deleted, on every backend and key store (`personal_data_tests!`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::personal::{
    InMemoryKeys, KeyStore, Personal, Shredded, SubjectErased, SubjectKey, ERASURES, SEALED,
};
use crate::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use crate::read_model::ReadModel;
use crate::store::{
    ExpectedVersion, Metadata, NewEvent, ReadRange, Snapshot, SnapshotStore, StreamId,
};
use crate::{evolution::check_category, StoreError};
use crate::{Aggregate, Apply, AsOf, Event, EventStore, Position, RecordedEvent, Repository};

/// Stamps out one `#[tokio::test]` per personal-data case, each with a fresh backend and
/// key store from `$factory` (a closure returning a future of `(backend, keys)`).
#[macro_export]
macro_rules! personal_data_tests {
    ($factory:expr) => {
        $crate::personal_data_tests!(@cases $factory;
            personal_fields_are_sealed_then_erased_on_every_read_path,
            projections_and_rebuilds_see_erased_fields_and_the_erasure,
            a_wrong_or_missing_key_is_an_error_or_an_erasure_never_a_panic,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (backend, keys) = ($factory)().await;
            $crate::testing::personal_cases::$case(backend, keys).await;
        }
    )*};
}

/// What a backend under test must be.
pub trait Backend: SnapshotStore + ProjectionBackend + Clone + 'static {}
impl<B: SnapshotStore + ProjectionBackend + Clone + 'static> Backend for B {}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Registered")]
struct Registered {
    #[event(personal)]
    name: String,
    #[event(personal)]
    email: Personal<String>,
    plan: String,
}

/// An event whose subject is a field, not the aggregate id.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Shipped")]
struct Shipped {
    #[event(subject)]
    customer: String,
    #[event(personal)]
    address: String,
    parcel: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    Registered(Registered),
}

#[derive(Event, Debug, Clone, PartialEq)]
enum OrderEvent {
    Shipped(Shipped),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = UserEvent, name = "user")]
struct User {
    #[aggregate(personal)]
    name: String,
    #[aggregate(personal)]
    email: Personal<String>,
    plan: String,
}

impl Apply<Registered> for User {
    fn apply(&mut self, event: &Registered) {
        self.name = event.name.clone();
        self.email = event.email.clone();
        self.plan = event.plan.clone();
    }
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = OrderEvent, name = "order")]
struct Order {
    #[aggregate(personal)]
    address: String,
    parcel: String,
}

impl Apply<Shipped> for Order {
    fn apply(&mut self, event: &Shipped) {
        self.address = event.address.clone();
        self.parcel = event.parcel.clone();
    }
}

fn registered(name: &str, plan: &str) -> Registered {
    Registered {
        name: name.to_owned(),
        email: Personal::Known(format!("{}@acme.test", name.to_lowercase())),
        plan: plan.to_owned(),
    }
}

async fn append<S: EventStore, E: Event>(
    store: &S,
    category: &str,
    id: &str,
    event: E,
) -> Position {
    let new = NewEvent::encode(&event, Metadata::new()).expect("encode");
    store
        .append(
            &StreamId::new(category.to_owned(), id),
            ExpectedVersion::Any,
            vec![new],
            &Default::default(),
        )
        .await
        .expect("append")
        .positions[0]
}

/// Duffy and Bugs registered (Duffy twice), an order of Duffy's shipped, and a snapshot of
/// Duffy's state; returns the stores.
async fn seeded<B: Backend, K: KeyStore>(backend: B, keys: K) -> Shredded<B, K> {
    let store = Shredded::new(backend, keys);
    append(&store, "user", "duffy", registered("Duffy", "free")).await;
    append(&store, "user", "bugs", registered("Bugs", "pro")).await;
    append(&store, "user", "duffy", registered("Duffy", "pro")).await;
    let shipped = Shipped {
        customer: "duffy".into(),
        address: "1 Pond Lane".into(),
        parcel: "p-7".into(),
    };
    append(&store, "order", "o-1", shipped).await;
    let repository = Repository::<User, _>::new(store.clone());
    let loaded = repository.load("duffy").await.expect("load");
    let mut fields = crate::codec::Fields::new();
    loaded.state.encode_snapshot(&mut fields).expect("encode");
    let snapshot = Snapshot {
        version: loaded.version,
        position: loaded.position,
        schema: User::SNAPSHOT_SCHEMA,
        fields,
    };
    store
        .save_snapshot(&StreamId::new("user", "duffy"), &snapshot)
        .await
        .expect("save snapshot");
    store
}

/// Whether any stored value holds `text`.
fn holds(fields: &crate::codec::Fields, text: &str) -> bool {
    fields
        .iter()
        .any(|(_, value)| value.windows(text.len()).any(|w| w == text.as_bytes()))
}

/// Personal values are stored sealed (the inner store holds no plain text, snapshots
/// included) and read back in the clear; after the subject's erasure, loads, time travel,
/// stream and category reads and the pre-deploy check all succeed with its personal fields
/// erased, other subjects and other fields untouched, and the erasure recorded with its
/// metadata. A subject written again after its erasure gets a new key.
pub async fn personal_fields_are_sealed_then_erased_on_every_read_path<B: Backend, K: KeyStore>(
    backend: B,
    keys: K,
) {
    let store = seeded(backend.clone(), keys).await;
    let duffy = StreamId::new("user", "duffy");
    for event in backend
        .read_stream(&duffy, &ReadRange::all())
        .await
        .expect("raw read")
    {
        assert!(
            !holds(&event.event, "Duffy") && !holds(&event.event, "duffy@"),
            "{event:?}"
        );
        assert!(event.event.get("name").expect("name").starts_with(SEALED));
        assert!(
            holds(&event.event, "free") || holds(&event.event, "pro"),
            "plain fields stay"
        );
    }
    let raw_snapshot = backend
        .load_snapshot(&duffy)
        .await
        .expect("raw")
        .expect("snapshot");
    assert!(!holds(&raw_snapshot.fields, "Duffy"), "{raw_snapshot:?}");
    let order = backend
        .read_stream(&StreamId::new("order", "o-1"), &ReadRange::all())
        .await
        .expect("raw order");
    assert!(!holds(&order[0].event, "Pond"), "{order:?}");
    assert!(
        holds(&order[0].event, "p-7"),
        "other fields stay in the clear"
    );

    let users = Repository::<User, _>::new(store.clone());
    let orders = Repository::<Order, _>::new(store.clone());
    let before = users.load("duffy").await.expect("load").state;
    assert_eq!(
        (
            before.name.as_str(),
            before.email.known().map(String::as_str),
            before.plan.as_str()
        ),
        ("Duffy", Some("duffy@acme.test"), "pro")
    );
    assert_eq!(
        orders.load("o-1").await.expect("order").state.address,
        "1 Pond Lane"
    );

    let audit = Metadata::new()
        .with("requested_by", "duffy")
        .with("reason", "GDPR art. 17, ticket 42");
    assert!(store.erase_subject("duffy", audit).await.expect("erase"));
    assert!(
        !store
            .erase_subject("duffy", Metadata::new())
            .await
            .expect("again"),
        "no key left"
    );

    let erased = User {
        name: String::new(),
        email: Personal::Erased,
        plan: "pro".into(),
    };
    assert_eq!(
        users.load("duffy").await.expect("load after erasure").state,
        erased
    );
    let first = users
        .load_as_of("duffy", AsOf::Version(1))
        .await
        .expect("time travel after erasure")
        .state;
    assert_eq!(
        (
            first.name.as_str(),
            first.email.clone(),
            first.plan.as_str()
        ),
        ("", Personal::Erased, "free")
    );
    let order = orders.load("o-1").await.expect("order after erasure").state;
    assert_eq!((order.address.as_str(), order.parcel.as_str()), ("", "p-7"));
    let bugs = users.load("bugs").await.expect("bugs").state;
    assert_eq!(
        (bugs.name.as_str(), bugs.email.known().map(String::as_str)),
        ("Bugs", Some("bugs@acme.test"))
    );

    for event in store
        .read_stream(&duffy, &ReadRange::all())
        .await
        .expect("read")
    {
        let event = event.decode::<UserEvent>().expect("decodes");
        let UserEvent::Registered(registered) = event.event;
        assert_eq!(
            (registered.name.as_str(), registered.email),
            ("", Personal::Erased)
        );
    }
    let category = store
        .read_category("user", Position::ZERO, 100)
        .await
        .expect("category");
    assert_eq!(category.len(), 3);
    for event in category {
        let id = event.stream.id.clone();
        let UserEvent::Registered(registered) = event.decode::<UserEvent>().expect("decodes").event;
        let expected = if id == "bugs" { "Bugs" } else { "" };
        assert_eq!(registered.name, expected, "{id}");
    }
    let report = check_category::<UserEvent, _>(&store, "user")
        .await
        .expect("check");
    assert!(report.is_clean(), "{report}");

    let records = store
        .read_stream(&StreamId::new(ERASURES, "duffy"), &ReadRange::all())
        .await
        .expect("the erasures");
    assert_eq!(records.len(), 2, "each erasure is recorded");
    let record = records[0]
        .clone()
        .decode::<SubjectErased>()
        .expect("a record");
    assert_eq!(record.event.subject, "duffy");
    assert_eq!(record.metadata.extra["reason"], "GDPR art. 17, ticket 42");
    assert_eq!(record.metadata.extra["requested_by"], "duffy");

    // Written again: a new key; the old events stay erased.
    append(&store, "user", "duffy", registered("Daffy", "pro")).await;
    let events = store
        .read_stream(&duffy, &ReadRange::all())
        .await
        .expect("read");
    let names: Vec<String> = events
        .into_iter()
        .map(|e| {
            let UserEvent::Registered(r) = e.decode::<UserEvent>().expect("decodes").event;
            r.name
        })
        .collect();
    assert_eq!(names, ["", "", "Daffy"]);
}

/// Names per user in a read model; drops a subject's row when it is erased, and writes none
/// for an erased event.
struct Names {
    model: ReadModel,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum NamesInput {
    Registered(Registered),
    SubjectErased(SubjectErased),
}

#[async_trait]
impl Projection for Names {
    type Event = NamesInput;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.model.projection()
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into(), ERASURES.into()]
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }
    async fn handle(&self, event: &RecordedEvent<NamesInput>) -> Result<(), StoreError> {
        let update = self.model.update(event);
        let update = match &event.event {
            // An erased event (its `Personal` email tells) writes no row: a replay in any
            // order, the erasure first or last, ends with no row for the subject.
            NamesInput::Registered(r) if r.email.is_erased() => update,
            NamesInput::Registered(r) => update.hset("names", &event.stream.id, r.name.as_str()),
            NamesInput::SubjectErased(e) => update.hdel("names", &e.subject),
        };
        let _applied = update.commit().await?;
        Ok(())
    }
}

async fn names(model: &ReadModel) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = model
        .hash("names")
        .await
        .expect("names")
        .into_iter()
        .map(|(id, name)| (id, String::from_utf8_lossy(&name).into_owned()))
        .collect();
    names.sort();
    names
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// A projection reads personal fields in the clear, then erased; it is told of the erasure
/// and drops the subject's row; a rebuild replays everything with the fields erased.
pub async fn projections_and_rebuilds_see_erased_fields_and_the_erasure<B: Backend, K: KeyStore>(
    backend: B,
    keys: K,
) {
    let store = seeded(backend, keys).await;
    let names_projection = Names {
        model: store.read_model("names"),
    };
    let runner = ProjectionRunner::connect(&store, names_projection, ProjectionOptions::new("c1"))
        .await
        .expect("runner");
    runner.run_once().await.expect("run");
    let model = &runner.projection().model;
    assert_eq!(
        names(model).await,
        pairs(&[("bugs", "Bugs"), ("duffy", "Duffy")])
    );

    store
        .erase_subject("duffy", Metadata::new().with("reason", "test"))
        .await
        .expect("erase");
    let stats = runner.run_once().await.expect("run after the erasure");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(
        names(model).await,
        pairs(&[("bugs", "Bugs")]),
        "the row is dropped"
    );

    runner.rebuild().await.expect("rebuild");
    let stats = runner.run_once().await.expect("replay");
    assert_eq!((stats.handled, stats.dead_lettered), (4, 0), "{stats:?}");
    assert_eq!(names(model).await, pairs(&[("bugs", "Bugs")]));
}

/// Keys that open nothing: every key of the inner store with its bytes changed.
struct WrongKeys<K>(K);

#[async_trait]
impl<K: KeyStore> KeyStore for WrongKeys<K> {
    async fn writing_key(
        &self,
        subject: &str,
        fresh: SubjectKey,
    ) -> Result<SubjectKey, StoreError> {
        self.0.writing_key(subject, fresh).await
    }
    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        let mut keys = self.0.keys(subjects).await?;
        for key in keys.values_mut() {
            key.key[0] ^= 0xFF;
        }
        Ok(keys)
    }
    async fn erase(&self, subject: &str) -> Result<bool, StoreError> {
        self.0.erase(subject).await
    }
}

/// A key that does not open a value is a decode error naming the entry and the field, for
/// a read and for a projection (which dead-letters the event); a subject with no key reads
/// as erased; plain personal data never reaches a store that does not seal it.
pub async fn a_wrong_or_missing_key_is_an_error_or_an_erasure_never_a_panic<
    B: Backend,
    K: KeyStore,
>(
    backend: B,
    keys: K,
) {
    let keys = Arc::new(keys);
    seeded(backend.clone(), keys.clone()).await;
    let wrong = Shredded::new(backend.clone(), InMemoryKeys::new());
    // A store whose key store knows no subject: every sealed value reads as erased.
    let user = Repository::<User, _>::new(wrong.clone())
        .load("bugs")
        .await
        .expect("no key: erased, not an error")
        .state;
    assert_eq!((user.name.as_str(), user.plan.as_str()), ("", "pro"));

    let mistaken = Shredded::new(backend.clone(), WrongKeys(keys));
    let read = mistaken
        .read_stream(&StreamId::new("user", "bugs"), &ReadRange::all())
        .await;
    match read {
        Err(StoreError::Decode { entry, source, .. }) => {
            assert!(!entry.is_empty());
            assert_eq!(source.field_name(), Some("name"), "{source}");
            assert!(source.to_string().contains("cannot decrypt"), "{source}");
        }
        other => panic!("a wrong key must be a decode error: {other:?}"),
    }
    let runner = ProjectionRunner::connect(
        &mistaken,
        Names {
            model: mistaken.read_model("mistaken"),
        },
        ProjectionOptions::new("c1").max_deliveries(1),
    )
    .await
    .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(
        stats.dead_lettered, 3,
        "every sealed event, with its error: {stats:?}"
    );
    let letters = runner.dead_letters("user").await.expect("letters");
    assert!(
        letters.iter().all(|l| l.error.contains("cannot decrypt")),
        "{letters:?}"
    );

    let plain = NewEvent::encode(&registered("Porky", "free"), Metadata::new()).expect("encode");
    let refused = backend
        .append(
            &StreamId::new("user", "porky"),
            ExpectedVersion::Any,
            vec![plain],
            &Default::default(),
        )
        .await;
    assert!(
        matches!(&refused, Err(StoreError::InvalidRequest(m)) if m.contains("personal field `name` in the clear")),
        "{refused:?}"
    );
}
