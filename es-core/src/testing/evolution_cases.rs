//! Conformance cases for events that changed after they were stored: entries written by
//! older code — as raw field pairs, the way a `redis-cli` `XADD` or an old release wrote
//! them — read through a v1 → v2 → v3 upcast chain and a renamed type, on every read path:
//! loads, time travel, a stream's events, category reads, the pre-deploy check and
//! projections.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use super::projection_cases::{options, Backend};
use crate::evolution::check_category;
use crate::projection::{Projection, ProjectionRunner};
use crate::repository::{AsOf, Repository};
use crate::store::{
    AppendOptions, ExpectedVersion, Metadata, NewEvent, Position, ReadRange, SnapshotStore,
    StreamId,
};
use crate::{Aggregate, Apply, Event, EventStore, RecordedEvent, StoreError};

/// Version 1 of `Joined`: one `name`.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Joined")]
struct JoinedV1 {
    name: String,
}

/// Version 2: the name split in two.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Joined", version = 2, upcast_from = JoinedV1)]
struct JoinedV2 {
    first_name: String,
    last_name: String,
}

impl From<JoinedV1> for JoinedV2 {
    fn from(old: JoinedV1) -> Self {
        let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
        JoinedV2 {
            first_name: first.to_owned(),
            last_name: last.to_owned(),
        }
    }
}

/// Version 3, today's: a display name, built from the parts for older entries.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(version = 3, upcast_from = JoinedV2)]
struct Joined {
    first_name: String,
    last_name: String,
    display_name: String,
}

impl From<JoinedV2> for Joined {
    fn from(old: JoinedV2) -> Self {
        Joined {
            display_name: format!("{} {}", old.first_name, old.last_name),
            first_name: old.first_name,
            last_name: old.last_name,
        }
    }
}

/// Stored as `EmailUpdated` before it was renamed.
#[derive(Event, Debug, Clone, PartialEq)]
#[event(alias = "EmailUpdated")]
struct EmailChanged {
    email: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum MemberEvent {
    Joined(Joined),
    EmailChanged(EmailChanged),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = MemberEvent, name = "member")]
struct Member {
    display_name: String,
    email: Option<String>,
}

impl Apply<Joined> for Member {
    fn apply(&mut self, event: &Joined) {
        self.display_name = event.display_name.clone();
    }
}

impl Apply<EmailChanged> for Member {
    fn apply(&mut self, event: &EmailChanged) {
        self.email = Some(event.email.clone());
    }
}

/// An entry as older code wrote it: raw pairs, whatever the current types say.
fn raw(event_type: &'static str, pairs: &[(&'static str, &str)]) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        fields: pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
        metadata: Metadata::default(),
    }
}

fn joined(first: &str, last: &str, display: &str) -> MemberEvent {
    MemberEvent::Joined(Joined {
        first_name: first.into(),
        last_name: last.into(),
        display_name: display.into(),
    })
}

/// One history of every age: a v1 entry, an entry under the old name, a v2 entry, and two
/// written by today's code. Returns what each decodes to.
async fn write_history<S: EventStore + ?Sized>(store: &S, id: &str) -> Vec<MemberEvent> {
    let today = [
        joined("Daisy", "Duck", "Aunt Daisy"),
        MemberEvent::EmailChanged(EmailChanged {
            email: "daisy@acme.test".into(),
        }),
    ];
    let mut entries = vec![
        raw("Joined", &[("name", "Duffy Duck")]),
        raw("EmailUpdated", &[("email", "duffy@acme.test")]),
        raw(
            "Joined",
            &[
                ("event_version", "2"),
                ("first_name", "Daffy"),
                ("last_name", "Duck"),
            ],
        ),
    ];
    for event in &today {
        entries.push(NewEvent::encode(event, Metadata::default()).expect("encode"));
    }
    store
        .append(
            &StreamId::new("member", id),
            ExpectedVersion::NoStream,
            entries,
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    let mut expected = vec![
        joined("Duffy", "Duck", "Duffy Duck"),
        MemberEvent::EmailChanged(EmailChanged {
            email: "duffy@acme.test".into(),
        }),
        joined("Daffy", "Duck", "Daffy Duck"),
    ];
    expected.extend(today);
    expected
}

/// Entries of versions 1 and 2 and of a renamed type load through today's types on every
/// read path; today's code writes version 3 under the current name; an entry of a version
/// newer than the code, or of a malformed version, is a decode error naming
/// `event_version`, and the pre-deploy check reports exactly those with their versions.
pub async fn older_event_versions_upcast_on_every_read_path<S: SnapshotStore + 'static>(store: S) {
    let store = Arc::new(store);
    let expected = write_history(&*store, "1").await;
    let members = Repository::<Member, _>::new(store.clone()).without_cache();

    let events: Vec<MemberEvent> = members
        .events("1", &ReadRange::all())
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events, expected);

    let loaded = members.load("1").await.expect("load");
    assert_eq!(loaded.version, 5);
    assert_eq!(
        loaded.state,
        Member {
            display_name: "Aunt Daisy".into(),
            email: Some("daisy@acme.test".into()),
        }
    );
    let then = members
        .load_as_of("1", AsOf::Version(2))
        .await
        .expect("as of");
    assert_eq!(
        then.state,
        Member {
            display_name: "Duffy Duck".into(),
            email: Some("duffy@acme.test".into()),
        }
    );

    let read = store
        .read_category("member", Position::ZERO, 100)
        .await
        .expect("category");
    let stored: Vec<(&str, Option<&[u8]>)> = read
        .iter()
        .map(|e| (e.event_type.as_str(), e.event.get("event_version")))
        .collect();
    assert_eq!(
        stored,
        [
            ("Joined", None),
            ("EmailUpdated", None),
            ("Joined", Some(&b"2"[..])),
            ("Joined", Some(&b"3"[..])),
            ("EmailChanged", None),
        ],
        "today's code writes version 3 under the current name; older entries are left as they are"
    );
    let decoded: Vec<MemberEvent> = read
        .into_iter()
        .map(|e| e.decode::<MemberEvent>().expect("decode").event)
        .collect();
    assert_eq!(decoded, expected);

    // Entries the code cannot read: a newer version, a malformed one, a v1 without its field.
    let bad = [
        raw(
            "Joined",
            &[
                ("event_version", "4"),
                ("first_name", "Donald"),
                ("last_name", "Duck"),
            ],
        ),
        raw("Joined", &[("event_version", "two"), ("name", "Huey")]),
        raw("Joined", &[("nickname", "Louie")]),
    ];
    let mut bad_positions = Vec::new();
    for (i, entry) in bad.into_iter().enumerate() {
        let id = format!("bad-{i}");
        let written = store
            .append(
                &StreamId::new("member", &id),
                ExpectedVersion::NoStream,
                vec![entry],
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        bad_positions.push(written.positions[0].to_string());
    }
    match members.load("bad-0").await {
        Err(StoreError::Decode { source, .. }) => {
            assert_eq!(source.field_name(), Some("event_version"));
            assert!(source.to_string().contains("newer"), "{source}");
        }
        other => panic!("a newer version must not load: {other:?}"),
    }
    let report = check_category::<MemberEvent, _>(&*store, "member")
        .await
        .expect("check");
    assert_eq!(report.checked, 8);
    let found: Vec<(String, Option<u32>, Option<&str>)> = report
        .undecodable
        .iter()
        .map(|e| (e.entry.clone(), e.version, e.field.as_deref()))
        .collect();
    let mut found = found;
    found.sort();
    let mut wanted = vec![
        (bad_positions[0].clone(), Some(4), Some("event_version")),
        (bad_positions[1].clone(), None, Some("event_version")),
        (bad_positions[2].clone(), Some(1), Some("name")),
    ];
    wanted.sort();
    assert_eq!(found, wanted, "{report}");
}

/// Records what a projection is given.
#[derive(Clone, Default)]
struct Seen {
    events: Arc<Mutex<Vec<MemberEvent>>>,
}

#[async_trait::async_trait]
impl Projection for Seen {
    type Event = MemberEvent;
    type Error = StoreError;
    fn name(&self) -> &str {
        "members-seen"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![Member::NAME.into()]
    }
    async fn handle(&self, event: &RecordedEvent<MemberEvent>) -> Result<(), StoreError> {
        self.events.lock().expect("seen").push(event.event.clone());
        Ok(())
    }
}

/// A projection receives entries of older versions and of a renamed type upcast to today's
/// types, in order.
pub async fn projections_receive_upcast_events<B: Backend>(backend: B) {
    let expected = write_history(&backend, "1").await;
    let seen = Seen::default();
    let runner = ProjectionRunner::connect(&backend, seen.clone(), options("c1"))
        .await
        .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(stats.handled, expected.len() as u64);
    assert_eq!(*seen.events.lock().expect("seen"), expected);
}
