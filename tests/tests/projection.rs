//! The backend-neutral catch-up runner over the in-memory store.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use es_core::projection::{BatchError, CatchUpRunner, Projection};
use es_core::{
    Event, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent, RecordedEvent, StreamId,
};

#[derive(Event, Debug, Clone, PartialEq)]
struct Registered {
    name: String,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct Renamed {
    name: String,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct Kicked {
    object: String,
}
#[derive(Event, Debug, Clone, PartialEq)]
struct Ignored;

/// Events from two categories, as one projection's input.
#[derive(Event, Debug, Clone, PartialEq)]
enum ProfileInput {
    Registered(Registered),
    Renamed(Renamed),
    Kicked(Kicked),
}

#[derive(Default)]
struct Profiles {
    names: Mutex<HashMap<String, String>>,
    kicks: Mutex<HashMap<String, u32>>,
    fail_on: Option<String>,
}

#[async_trait::async_trait]
impl Projection for Profiles {
    type Event = ProfileInput;
    type Error = String;
    fn name(&self) -> &str {
        "profiles"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into(), "activity".into()]
    }
    async fn handle(&self, event: &RecordedEvent<ProfileInput>) -> Result<(), String> {
        let id = event.stream.id.clone();
        match &event.event {
            ProfileInput::Registered(Registered { name })
            | ProfileInput::Renamed(Renamed { name }) => {
                if self.fail_on.as_deref() == Some(name.as_str()) {
                    return Err(format!("cannot store {name}"));
                }
                self.names.lock().unwrap().insert(id, name.clone());
            }
            ProfileInput::Kicked(_) => *self.kicks.lock().unwrap().entry(id).or_default() += 1,
        }
        Ok(())
    }
}

async fn append(
    store: &InMemoryStore,
    category: &'static str,
    id: &str,
    event: &impl Event,
) -> es_core::Position {
    let event = NewEvent::encode(event, Metadata::default()).unwrap();
    store
        .append(
            &StreamId::new(category, id),
            ExpectedVersion::Any,
            vec![event],
            &Default::default(),
        )
        .await
        .unwrap()
        .positions[0]
}

#[tokio::test]
async fn a_projection_reads_several_categories_and_skips_other_event_types() {
    let store = InMemoryStore::new();
    append(
        &store,
        "user",
        "1",
        &Registered {
            name: "Duffy".into(),
        },
    )
    .await;
    append(
        &store,
        "user",
        "2",
        &Registered {
            name: "Bugs".into(),
        },
    )
    .await;
    append(&store, "user", "1", &Ignored).await;
    append(
        &store,
        "activity",
        "1",
        &Kicked {
            object: "Bugs".into(),
        },
    )
    .await;
    append(
        &store,
        "activity",
        "1",
        &Kicked {
            object: "Bugs".into(),
        },
    )
    .await;
    append(
        &store,
        "user",
        "1",
        &Renamed {
            name: "Daffy".into(),
        },
    )
    .await;

    let mut runner = CatchUpRunner::new(store.clone(), Profiles::default()).with_batch_size(2);
    assert_eq!(runner.run_once().await.unwrap(), 6);
    assert_eq!(runner.run_once().await.unwrap(), 0, "nothing new");
    let names = runner.projection().names.lock().unwrap().clone();
    assert_eq!(
        names,
        HashMap::from([("1".into(), "Daffy".into()), ("2".into(), "Bugs".into())])
    );
    assert_eq!(runner.projection().kicks.lock().unwrap()["1"], 2);
    assert!(runner.dead_letters().is_empty());
}

#[tokio::test]
async fn failing_and_undecodable_events_are_dead_lettered_and_later_events_flow() {
    let store = InMemoryStore::new();
    append(
        &store,
        "user",
        "1",
        &Registered {
            name: "Poison".into(),
        },
    )
    .await;
    let bad = NewEvent {
        event_type: "Registered".into(),
        fields: es_core::codec::Fields::new(),
        metadata: Metadata::default(),
    };
    store
        .append(
            &StreamId::new("user", "2"),
            ExpectedVersion::Any,
            vec![bad],
            &Default::default(),
        )
        .await
        .unwrap();
    append(
        &store,
        "user",
        "3",
        &Registered {
            name: "Fine".into(),
        },
    )
    .await;
    let profiles = Profiles {
        fail_on: Some("Poison".into()),
        ..Default::default()
    };
    let mut runner = CatchUpRunner::new(store, profiles).with_max_attempts(3);
    runner.run_once().await.unwrap();
    let dead = runner.dead_letters();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].attempts, dead[0].error.as_str()),
        (3, "cannot store Poison")
    );
    assert!(
        dead[1].error.contains("field `name` is missing"),
        "{}",
        dead[1].error
    );
    assert_eq!(runner.projection().names.lock().unwrap()["3"], "Fine");
}

#[tokio::test]
async fn callers_can_wait_until_a_position_is_processed() {
    let store = InMemoryStore::new();
    let mut runner = CatchUpRunner::new(store.clone(), Profiles::default())
        .with_poll_interval(Duration::from_millis(1));
    let mut progress = runner.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await;
        runner
    });
    let position = append(
        &store,
        "user",
        "1",
        &Registered {
            name: "Duffy".into(),
        },
    )
    .await;
    progress
        .wait_for("user", position, Duration::from_secs(5))
        .await
        .unwrap();
    let later = es_core::Position::new(u64::MAX, 0);
    let error = progress
        .wait_for("user", later, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("did not reach"), "{error}");
    stop.send(()).unwrap();
    let runner = task.await.unwrap();
    assert_eq!(runner.projection().names.lock().unwrap()["1"], "Duffy");
    assert_eq!(runner.checkpoint("user"), position);
}

/// Counts events per batch; handles each batch all or nothing (as one read-model commit
/// would), failing a batch that holds the name `fail_on`, and optionally reports the failing
/// event itself instead (`pinpoint`).
#[derive(Default)]
struct Batched {
    batches: Mutex<Vec<usize>>,
    singles: Mutex<Vec<String>>,
    names: Mutex<Vec<String>>,
    fail_on: String,
    pinpoint: bool,
}

fn name_of(event: &RecordedEvent<ProfileInput>) -> String {
    match &event.event {
        ProfileInput::Registered(Registered { name }) | ProfileInput::Renamed(Renamed { name }) => {
            name.clone()
        }
        ProfileInput::Kicked(Kicked { object }) => object.clone(),
    }
}

#[async_trait::async_trait]
impl Projection for Batched {
    type Event = ProfileInput;
    type Error = String;
    fn name(&self) -> &str {
        "batched"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into()]
    }
    async fn handle(&self, event: &RecordedEvent<ProfileInput>) -> Result<(), String> {
        let name = name_of(event);
        self.singles.lock().unwrap().push(name.clone());
        if name == self.fail_on {
            return Err(format!("cannot store {name}"));
        }
        self.names.lock().unwrap().push(name);
        Ok(())
    }
    async fn handle_batch(
        &self,
        events: &[RecordedEvent<ProfileInput>],
    ) -> Result<(), BatchError<String>> {
        self.batches.lock().unwrap().push(events.len());
        let names: Vec<String> = events.iter().map(name_of).collect();
        if let Some(at) = names.iter().position(|name| *name == self.fail_on) {
            let error = format!("cannot store {}", self.fail_on);
            if self.pinpoint {
                self.names.lock().unwrap().extend_from_slice(&names[..at]);
                return Err(BatchError::at(at, error));
            }
            return Err(BatchError::nothing_handled(error));
        }
        self.names.lock().unwrap().extend(names);
        Ok(())
    }
}

#[tokio::test]
async fn batch_handlers_get_whole_reads_and_failures_are_pinned_on_their_event() {
    for pinpoint in [false, true] {
        let store = InMemoryStore::new();
        for n in 0..10 {
            let name = format!("n{n}");
            append(&store, "user", &name, &Registered { name: name.clone() }).await;
        }
        let projection = Batched {
            fail_on: "n6".into(),
            pinpoint,
            ..Batched::default()
        };
        let mut runner = CatchUpRunner::new(store, projection)
            .with_batch_size(4)
            .with_max_attempts(2);
        assert_eq!(runner.run_once().await.unwrap(), 10);
        let projection = runner.projection();
        let all_but_n6: Vec<String> = (0..10)
            .filter(|n| *n != 6)
            .map(|n| format!("n{n}"))
            .collect();
        assert_eq!(
            *projection.names.lock().unwrap(),
            all_but_n6,
            "pinpoint: {pinpoint}"
        );
        let letters = runner.dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].attempts, 2);
        assert_eq!(letters[0].error, "cannot store n6");
        let (batches, singles) = (
            projection.batches.lock().unwrap().clone(),
            projection.singles.lock().unwrap().clone(),
        );
        if pinpoint {
            // n4 n5 | n6 fails, its second attempt alone | n7 goes to the batch handler.
            assert_eq!(batches, [4, 4, 1, 2]);
            assert_eq!(singles, ["n6"]);
        } else {
            // The batch n4..n7 fails as a whole: each of its events is handled alone.
            assert_eq!(batches, [4, 4, 2]);
            assert_eq!(singles, ["n4", "n5", "n6", "n6", "n7"]);
        }
    }
}
