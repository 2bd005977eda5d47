//! Changing events after they are stored (#15): entries written by an older version of the
//! code, as raw fields, decode through today's types — added fields take their defaults,
//! renamed event types are read under their aliases, and a raised `snapshot_version`
//! ignores older snapshots.

use std::borrow::Cow;
use std::sync::Mutex;

use es_core::codec::Fields;
use es_core::projection::{handles, Projection, ProjectionOptions, ProjectionRunner};
use es_core::{
    Aggregate, AppendOptions, Apply, DecodeError, Event, EventStore, ExpectedVersion, Handle,
    InMemoryStore, Metadata, NewEvent, ReadRange, RecordedEvent, Repository, SnapshotPolicy,
    SnapshotStore, StoreError, StreamId,
};

/// Today's `Registered`. Version 1 stored it as `UserSignedUp` with only `name` (and, for a
/// while, as `SignedUp`); `nickname`, `age` and `roles` were added later.
#[derive(Event, Debug, PartialEq)]
#[event(alias = "UserSignedUp", alias = "SignedUp")]
struct Registered {
    name: String,
    #[event(default)]
    nickname: String,
    #[event(default = 18)]
    age: u32,
    #[event(json, default = vec!["member".to_owned()])]
    roles: Vec<String>,
    email: Option<String>,
}

#[derive(Event, Debug, PartialEq)]
struct Renamed {
    name: String,
}

#[derive(Event, Debug, PartialEq)]
enum UserEvent {
    Registered(Registered),
    Renamed(Renamed),
}

#[derive(Aggregate, Default, Debug)]
#[aggregate(event = UserEvent, name = "user")]
struct User {
    name: String,
    age: u32,
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
        self.age = e.age;
    }
}

impl Apply<Renamed> for User {
    fn apply(&mut self, e: &Renamed) {
        self.name = e.name.clone();
    }
}

struct Register {
    name: String,
}

impl Handle<Register> for User {
    type Error = String;
    fn handle(&self, c: &Register) -> Result<Vec<UserEvent>, String> {
        Ok(vec![Registered {
            name: c.name.clone(),
            nickname: String::new(),
            age: 30,
            roles: vec![],
            email: None,
        }
        .into()])
    }
}

/// An entry as an older version of the code wrote it.
fn old_entry(event_type: &'static str, pairs: &[(&'static str, &str)]) -> NewEvent {
    NewEvent {
        event_type: Cow::Borrowed(event_type),
        fields: pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
        metadata: Metadata::default(),
    }
}

async fn append_old(store: &InMemoryStore, id: &str, events: Vec<NewEvent>) {
    store
        .append(
            &StreamId::new("user", id),
            ExpectedVersion::Any,
            events,
            &AppendOptions::default(),
        )
        .await
        .expect("append");
}

async fn read_user(store: &InMemoryStore, id: &str) -> Vec<Result<UserEvent, StoreError>> {
    store
        .read_stream(&StreamId::new("user", id), &ReadRange::all())
        .await
        .expect("read")
        .into_iter()
        .map(|stored| stored.decode::<UserEvent>().map(|r| r.event))
        .collect()
}

#[tokio::test]
async fn a_field_added_later_takes_its_default_in_older_entries() {
    let store = InMemoryStore::new();
    append_old(
        &store,
        "1",
        vec![old_entry("Registered", &[("name", "Duffy")])],
    )
    .await;
    let events = read_user(&store, "1").await;
    assert_eq!(
        events[0].as_ref().expect("decodes"),
        &UserEvent::Registered(Registered {
            name: "Duffy".into(),
            nickname: String::new(),
            age: 18,
            roles: vec!["member".into()],
            email: None,
        })
    );
}

#[tokio::test]
async fn a_field_with_a_default_still_decodes_when_present_and_fails_naming_it_when_invalid() {
    let store = InMemoryStore::new();
    append_old(
        &store,
        "1",
        vec![
            old_entry(
                "Registered",
                &[
                    ("name", "Duffy"),
                    ("nickname", "duff"),
                    ("age", "40"),
                    ("roles", r#"["admin"]"#),
                    ("email", "d@acme.test"),
                ],
            ),
            old_entry("Registered", &[("name", "Daffy"), ("age", "forty")]),
            old_entry("Registered", &[("name", "Daisy"), ("roles", "[")]),
        ],
    )
    .await;
    let events = read_user(&store, "1").await;
    assert_eq!(
        events[0].as_ref().expect("decodes"),
        &UserEvent::Registered(Registered {
            name: "Duffy".into(),
            nickname: "duff".into(),
            age: 40,
            roles: vec!["admin".into()],
            email: Some("d@acme.test".into()),
        })
    );
    for (event, field) in events[1..].iter().zip(["age", "roles"]) {
        match event {
            Err(StoreError::Decode { source, .. }) => {
                assert_eq!(source.field_name(), Some(field), "{source}")
            }
            other => panic!("expected a decode error naming `{field}`, got {other:?}"),
        }
    }
    // A field without a default is still required.
    let error = Registered::decode("Registered", &Fields::new()).expect_err("no name");
    assert_eq!(error.field_name(), Some("name"));
}

#[tokio::test]
async fn an_entry_stored_under_an_alias_decodes_into_the_current_struct() {
    assert_eq!(UserEvent::EVENT_TYPES, ["Registered", "Renamed"]);
    assert_eq!(UserEvent::EVENT_ALIASES, ["UserSignedUp", "SignedUp"]);
    assert_eq!(Registered::EVENT_ALIASES, ["UserSignedUp", "SignedUp"]);
    assert!(UserEvent::reads_type("SignedUp") && UserEvent::reads_type("Renamed"));
    assert!(!UserEvent::reads_type("Deleted"));

    let store = InMemoryStore::new();
    append_old(
        &store,
        "1",
        vec![
            old_entry("UserSignedUp", &[("name", "Duffy")]),
            old_entry("SignedUp", &[("name", "Daffy"), ("age", "7")]),
        ],
    )
    .await;
    let events: Vec<_> = read_user(&store, "1")
        .await
        .into_iter()
        .map(|e| match e.expect("decodes") {
            UserEvent::Registered(r) => (r.name, r.age),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(events, [("Duffy".into(), 18), ("Daffy".to_owned(), 7)]);
    // The struct alone reads its aliases too, and nothing else.
    let mut fields = Fields::new();
    fields.push("name", "Duffy");
    assert_eq!(
        Registered::decode("UserSignedUp", &fields).map(|r| r.name),
        Ok("Duffy".to_owned())
    );
    assert!(matches!(
        Registered::decode("Renamed", &fields),
        Err(DecodeError::UnknownEventType { .. })
    ));
}

/// A projection whose event enum names only the current struct.
#[derive(Event)]
enum Input {
    Registered(Registered),
}

#[derive(Default)]
struct Names(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Projection for Names {
    type Event = Input;
    type Error = std::convert::Infallible;
    fn name(&self) -> &str {
        "t"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into()]
    }
    async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), Self::Error> {
        let Input::Registered(e) = &event.event;
        self.0.lock().unwrap().push(format!("{} {}", e.name, e.age));
        Ok(())
    }
}

#[tokio::test]
async fn a_projection_handles_entries_stored_under_an_alias() -> Result<(), StoreError> {
    let store = InMemoryStore::new();
    append_old(
        &store,
        "1",
        vec![
            old_entry("UserSignedUp", &[("name", "Duffy")]),
            old_entry("Renamed", &[("name", "Daffy")]),
            old_entry("Registered", &[("name", "Daisy"), ("age", "20")]),
        ],
    )
    .await;
    let stored = store
        .read_stream(&StreamId::new("user", "1"), &ReadRange::all())
        .await?;
    assert_eq!(
        stored.iter().map(handles::<Input>).collect::<Vec<_>>(),
        [true, false, true]
    );

    let runner =
        ProjectionRunner::connect(&store, Names::default(), ProjectionOptions::new("t")).await?;
    let stats = runner.run_once().await?;
    assert_eq!((stats.handled, stats.skipped, stats.failed), (2, 1, 0));
    assert_eq!(
        *runner.projection().0.lock().unwrap(),
        ["Duffy 18", "Daisy 20"]
    );
    Ok(())
}

#[tokio::test]
async fn an_aggregate_loads_older_entries_and_new_ones_are_stored_under_the_current_name() {
    let store = InMemoryStore::new();
    append_old(
        &store,
        "1",
        vec![old_entry("UserSignedUp", &[("name", "Duffy")])],
    )
    .await;
    let users = Repository::<User, _>::new(store.clone());
    let loaded = users.load("1").await.expect("load");
    assert_eq!(
        (loaded.state.name.as_str(), loaded.state.age, loaded.version),
        ("Duffy", 18, 1)
    );

    let done = users
        .execute(
            "1",
            &Register {
                name: "Daffy".into(),
            },
        )
        .await
        .expect("execute");
    assert_eq!((done.state.name.as_str(), done.version), ("Daffy", 2));
    let stored = store
        .read_stream(&StreamId::new("user", "1"), &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(
        stored.iter().map(|e| &*e.event_type).collect::<Vec<_>>(),
        ["UserSignedUp", "Registered"]
    );
}

/// A counter's one event.
#[derive(Event, Debug)]
pub struct Added {
    /// How much.
    pub amount: u64,
}

/// The counter's events.
#[derive(Event, Debug)]
pub enum CounterEvent {
    /// An amount was added.
    Added(Added),
}

/// Adds an amount.
pub struct Add(pub u64);

/// The counter as first deployed: it adds each amount.
mod v1 {
    use super::*;

    #[derive(Aggregate, Default, Debug)]
    #[aggregate(event = CounterEvent, name = "counter", snapshot_version = 1)]
    pub struct Counter {
        pub total: u64,
    }

    impl Apply<Added> for Counter {
        fn apply(&mut self, e: &Added) {
            self.total += e.amount;
        }
    }

    impl Handle<Add> for Counter {
        type Error = String;
        fn handle(&self, c: &Add) -> Result<Vec<CounterEvent>, String> {
            Ok(vec![Added { amount: c.0 }.into()])
        }
    }
}

/// The same layout with another `apply` (amounts now count double), and the snapshot
/// version raised.
mod v2 {
    use super::*;

    #[derive(Aggregate, Default, Debug)]
    #[aggregate(event = CounterEvent, name = "counter", snapshot_version = 2)]
    pub struct Counter {
        pub total: u64,
    }

    impl Apply<Added> for Counter {
        fn apply(&mut self, e: &Added) {
            self.total += 2 * e.amount;
        }
    }
}

/// The same change to `apply`, deployed without raising the version.
mod v2_forgotten {
    use super::*;

    #[derive(Aggregate, Default, Debug)]
    #[aggregate(event = CounterEvent, name = "counter", snapshot_version = 1)]
    pub struct Counter {
        pub total: u64,
    }

    impl Apply<Added> for Counter {
        fn apply(&mut self, e: &Added) {
            self.total += 2 * e.amount;
        }
    }
}

/// No `snapshot_version`, and `snapshot_version = 0`: one schema.
mod unversioned {
    use super::*;

    #[derive(Aggregate, Default, Debug)]
    #[aggregate(event = CounterEvent, name = "counter")]
    pub struct Counter {
        pub total: u64,
    }

    #[derive(Aggregate, Default, Debug)]
    #[aggregate(event = CounterEvent, name = "counter", snapshot_version = 0)]
    pub struct CounterV0 {
        pub total: u64,
    }

    impl Apply<Added> for Counter {
        fn apply(&mut self, e: &Added) {
            self.total += e.amount;
        }
    }

    impl Apply<Added> for CounterV0 {
        fn apply(&mut self, e: &Added) {
            self.total += e.amount;
        }
    }
}

#[test]
fn snapshot_version_changes_the_snapshot_schema() {
    assert_ne!(v1::Counter::SNAPSHOT_SCHEMA, v2::Counter::SNAPSHOT_SCHEMA);
    assert_ne!(
        v1::Counter::SNAPSHOT_SCHEMA,
        unversioned::Counter::SNAPSHOT_SCHEMA
    );
    assert_eq!(
        v1::Counter::SNAPSHOT_SCHEMA,
        v2_forgotten::Counter::SNAPSHOT_SCHEMA
    );
    assert_eq!(
        unversioned::Counter::SNAPSHOT_SCHEMA,
        unversioned::CounterV0::SNAPSHOT_SCHEMA
    );
}

#[tokio::test]
async fn a_raised_snapshot_version_ignores_older_snapshots_and_replays() {
    let store = InMemoryStore::new();
    let counters = Repository::<v1::Counter, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(1));
    for amount in [1, 2, 3] {
        counters.execute("c", &Add(amount)).await.expect("execute");
    }
    let snapshot = store
        .load_snapshot(&StreamId::new("counter", "c"))
        .await
        .expect("load snapshot")
        .expect("a snapshot was saved");
    assert_eq!(
        (snapshot.version, snapshot.schema),
        (3, v1::Counter::SNAPSHOT_SCHEMA)
    );

    // Version 2 ignores it and replays every event with its own `apply`.
    let loaded = Repository::<v2::Counter, _>::new(store.clone())
        .load("c")
        .await
        .expect("load");
    assert_eq!((loaded.state.total, loaded.version), (12, 3));

    // Without the raised version, the old snapshot is used as it is: the state the old
    // `apply` built.
    let loaded = Repository::<v2_forgotten::Counter, _>::new(store.clone())
        .load("c")
        .await
        .expect("load");
    assert_eq!((loaded.state.total, loaded.version), (6, 3));
}
