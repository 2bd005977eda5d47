//! What the derives generate: field pairs, renames, codecs, dispatch and snapshots.

use std::collections::BTreeMap;

use es_core::codec::Fields;
use es_core::{Aggregate, Apply, DecodeError, Event, NamedEvent};
use proptest::prelude::*;

#[derive(Event, Debug, Clone, PartialEq)]
struct Registered {
    name: String,
    surname: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "EmailChanged")]
struct EmailUpdated {
    #[event(rename = "address")]
    email: String,
    verified: bool,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct Tagged {
    #[event(json)]
    tags: BTreeMap<String, u32>,
    note: Option<String>,
    r#type_hint: u8,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct Deactivated;

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    Registered(Registered),
    EmailUpdated(EmailUpdated),
    Tagged(Tagged),
    Deactivated(Deactivated),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = UserEvent)]
struct UserProfile {
    name: String,
    #[aggregate(rename = "mail")]
    email: Option<String>,
    #[aggregate(json)]
    tags: BTreeMap<String, u32>,
    #[aggregate(skip)]
    cache_hits: u64,
    active: bool,
}

impl Apply<Registered> for UserProfile {
    fn apply(&mut self, e: &Registered) {
        self.name = format!("{} {}", e.name, e.surname);
        self.active = true;
    }
}
impl Apply<EmailUpdated> for UserProfile {
    fn apply(&mut self, e: &EmailUpdated) {
        self.email = Some(e.email.clone());
    }
}
impl Apply<Tagged> for UserProfile {
    fn apply(&mut self, e: &Tagged) {
        self.tags.extend(e.tags.clone());
    }
}
impl Apply<Deactivated> for UserProfile {
    fn apply(&mut self, _: &Deactivated) {
        self.active = false;
    }
}

fn encode(event: &impl Event) -> Fields {
    let mut fields = Fields::new();
    event.encode(&mut fields).expect("encode");
    fields
}

#[test]
fn struct_fields_become_ordered_field_pairs() {
    let fields = encode(&Registered {
        name: "Duffy".into(),
        surname: "Duck".into(),
    });
    let pairs: Vec<_> = fields.iter().collect();
    assert_eq!(pairs, [("name", &b"Duffy"[..]), ("surname", &b"Duck"[..])]);
    assert_eq!(Registered::NAME, "Registered");
}

#[test]
fn renames_apply_to_event_types_and_fields() {
    let event = EmailUpdated {
        email: "d@acme.test".into(),
        verified: true,
    };
    assert_eq!(event.event_type(), "EmailChanged");
    let fields = encode(&event);
    assert_eq!(fields.get("address"), Some(&b"d@acme.test"[..]));
    assert_eq!(fields.get("verified"), Some(&b"true"[..]));
    assert_eq!(
        EmailUpdated::decode("EmailChanged", &fields).unwrap(),
        event
    );
}

#[test]
fn json_fields_options_and_raw_identifiers() {
    let event = Tagged {
        tags: [("vip".to_owned(), 3)].into(),
        note: None,
        r#type_hint: 1,
    };
    let fields = encode(&event);
    assert_eq!(fields.get("tags"), Some(&br#"{"vip":3}"#[..]));
    assert_eq!(fields.get("note"), None, "None is an absent field");
    assert_eq!(fields.get("type_hint"), Some(&b"1"[..]));
    assert_eq!(Tagged::decode("Tagged", &fields).unwrap(), event);
}

#[test]
fn enum_dispatches_by_event_type_and_converts_from_structs() {
    assert_eq!(
        UserEvent::EVENT_TYPES,
        ["Registered", "EmailChanged", "Tagged", "Deactivated"]
    );
    let event = UserEvent::from(Deactivated);
    assert_eq!(event.event_type(), "Deactivated");
    assert!(encode(&event).is_empty());
    assert_eq!(
        UserEvent::decode("Deactivated", &Fields::new()).unwrap(),
        event
    );
}

#[test]
fn decode_errors_name_the_event_type_and_field() {
    let fields: Fields = [("name", "Duffy")].into_iter().collect();
    let error = UserEvent::decode("Registered", &fields).unwrap_err();
    assert_eq!(error.field_name(), Some("surname"));
    assert_eq!(
        error.to_string(),
        "event `Registered`: field `surname` is missing"
    );

    let fields: Fields = [("address", "x"), ("verified", "maybe")]
        .into_iter()
        .collect();
    let error = UserEvent::decode("EmailChanged", &fields).unwrap_err();
    assert_eq!(
        error.to_string(),
        "event `EmailChanged`: field `verified` is expected `true` or `false`, found \"maybe\""
    );

    let error = UserEvent::decode("Teleported", &Fields::new()).unwrap_err();
    assert!(
        matches!(error, DecodeError::UnknownEventType { ref event_type, .. } if event_type == "Teleported")
    );
    assert!(
        error
            .to_string()
            .contains("Registered, EmailChanged, Tagged, Deactivated"),
        "{error}"
    );

    let error = Registered::decode("EmailChanged", &Fields::new()).unwrap_err();
    assert!(matches!(error, DecodeError::UnknownEventType { .. }));
}

#[test]
fn aggregate_applies_events_through_its_apply_impls() {
    let mut user = UserProfile::default();
    user.apply_event(
        &Registered {
            name: "Duffy".into(),
            surname: "Duck".into(),
        }
        .into(),
    );
    user.apply_event(
        &EmailUpdated {
            email: "d@acme.test".into(),
            verified: false,
        }
        .into(),
    );
    user.apply_event(&Deactivated.into());
    assert_eq!(user.name, "Duffy Duck");
    assert_eq!(user.email.as_deref(), Some("d@acme.test"));
    assert!(!user.active);
    assert_eq!(UserProfile::NAME, "user_profile");
}

#[test]
fn snapshot_round_trips_and_skips_skipped_fields() {
    let user = UserProfile {
        name: "Duffy".into(),
        email: Some("d@acme.test".into()),
        tags: [("a".to_owned(), 1)].into(),
        cache_hits: 99,
        active: true,
    };
    let mut fields = Fields::new();
    user.encode_snapshot(&mut fields).unwrap();
    let names: Vec<_> = fields.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["name", "mail", "tags", "active"]);
    let back = UserProfile::decode_snapshot(&fields).unwrap();
    assert_eq!(
        back,
        UserProfile {
            cache_hits: 0,
            ..user
        }
    );
}

#[test]
fn snapshot_schema_is_a_stable_fingerprint_of_the_layout() {
    #[derive(Aggregate, Default)]
    #[aggregate(event = UserEvent, name = "user_profile")]
    struct Renamed {
        name: String,
        #[aggregate(rename = "email")]
        email: Option<String>,
        #[aggregate(json)]
        tags: BTreeMap<String, u32>,
        active: bool,
    }
    impl<E> Apply<E> for Renamed {
        fn apply(&mut self, _: &E) {}
    }
    assert_ne!(Renamed::SNAPSHOT_SCHEMA, UserProfile::SNAPSHOT_SCHEMA);
    assert_eq!(UserProfile::SNAPSHOT_SCHEMA, UserProfile::SNAPSHOT_SCHEMA);
}

mod generated_code_uses_absolute_paths {
    // No prelude names in scope that generated code could lean on.
    #[allow(dead_code)]
    type Result = ();
    #[allow(dead_code)]
    type Option = ();
    #[allow(dead_code)]
    struct Fields;

    #[derive(es_core::Event)]
    pub struct Moved {
        pub to: String,
    }

    #[derive(es_core::Event)]
    pub enum PieceEvent {
        Moved(Moved),
    }

    #[derive(es_core::Aggregate, Default)]
    #[aggregate(event = PieceEvent)]
    pub struct Piece {
        pub at: String,
    }

    impl es_core::Apply<Moved> for Piece {
        fn apply(&mut self, e: &Moved) {
            self.at = e.to.clone();
        }
    }

    #[test]
    fn derives_compile_and_work_without_prelude_names() {
        use es_core::Aggregate as _;
        let mut piece = Piece::default();
        piece.apply_event(&PieceEvent::from(Moved { to: "e4".into() }));
        assert_eq!(piece.at, "e4");
    }
}

proptest! {
    #[test]
    fn events_round_trip_through_field_pairs(name in any::<String>(), surname in any::<String>(), verified in any::<bool>(), note in proptest::option::of(any::<String>())) {
        for event in [
            UserEvent::from(Registered { name: name.clone(), surname }),
            UserEvent::from(EmailUpdated { email: name.clone(), verified }),
            UserEvent::from(Tagged { tags: [(name, 1)].into(), note, r#type_hint: 7 }),
        ] {
            let fields = encode(&event);
            prop_assert_eq!(UserEvent::decode(event.event_type(), &fields).unwrap(), event);
        }
    }

    #[test]
    fn decoding_arbitrary_field_pairs_never_panics(
        event_type in prop_oneof![Just("Registered".to_owned()), Just("EmailChanged".to_owned()), Just("Tagged".to_owned()), any::<String>()],
        pairs in proptest::collection::vec((prop_oneof![Just("name".to_owned()), Just("surname".to_owned()), Just("address".to_owned()), Just("verified".to_owned()), Just("tags".to_owned()), Just("type_hint".to_owned()), any::<String>()], proptest::collection::vec(any::<u8>(), 0..24)), 0..8),
    ) {
        let fields: Fields = pairs.into_iter().collect();
        let _ = UserEvent::decode(&event_type, &fields);
        let _ = UserProfile::decode_snapshot(&fields);
    }
}

#[test]
fn reserved_event_fields_are_the_ones_the_derive_rejects() {
    // `ui/event_every_reserved_field_name.rs` pins that the derive rejects each of these.
    assert_eq!(
        es_core::event::RESERVED_EVENT_FIELDS,
        [
            "type",
            "aggregate_id",
            "version",
            "timestamp",
            "correlation_id",
            "causation_id",
            "metadata"
        ]
    );
}
