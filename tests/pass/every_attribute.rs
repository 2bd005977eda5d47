//! Every attribute of both derives, under `#![deny(warnings)]`, from inside a module.
#![deny(warnings)]

mod domain {
    use std::collections::BTreeMap;

    use es_core::{Aggregate, Apply, Event};

    #[derive(Event)]
    #[event(rename = "UserRegistered", alias = "Registered")]
    #[event(alias = "SignedUp")]
    pub struct Registered {
        #[event(rename = "first_name")]
        pub name: String,
        pub surname: Option<String>,
        #[event(json)]
        pub tags: BTreeMap<String, Vec<u8>>,
        #[event(rename = "nick", json)]
        pub nicknames: Vec<String>,
        #[event(default)]
        pub age: u32,
        #[event(default = String::from("en"), rename = "lang")]
        pub language: String,
        #[event(json, default = vec![1])]
        pub scores: Vec<u8>,
    }

    #[derive(Event)]
    pub struct Deleted;

    pub mod old {
        #[derive(es_core::Event)]
        #[event(rename = "Closed", alias = "Shut")]
        pub struct ClosedV1 {
            pub reason: String,
        }

        #[derive(es_core::Event)]
        #[event(rename = "Closed", version = 2, upcast_from = ClosedV1, alias = "Shut")]
        pub struct ClosedV2 {
            #[event(json)]
            pub reasons: Vec<String>,
        }

        impl From<ClosedV1> for ClosedV2 {
            fn from(old: ClosedV1) -> Self {
                ClosedV2 {
                    reasons: vec![old.reason],
                }
            }
        }
    }

    /// Version 3, upcast from a struct in another module, read under the same alias.
    #[derive(Event)]
    #[event(version = 3, upcast_from = self::old::ClosedV2)]
    #[event(alias = "Shut")]
    pub struct Closed {
        #[event(json)]
        pub reasons: Vec<String>,
        #[event(default)]
        pub reopened: bool,
    }

    impl From<old::ClosedV2> for Closed {
        fn from(old: old::ClosedV2) -> Self {
            Closed {
                reasons: old.reasons,
                reopened: false,
            }
        }
    }

    #[derive(Event)]
    pub enum UserEvent {
        Registered(Registered),
        Deleted(Deleted),
    }

    #[derive(Aggregate, Default)]
    #[aggregate(event = UserEvent, name = "user-v2", snapshot_version = 3)]
    pub struct User {
        #[aggregate(rename = "display_name")]
        pub name: String,
        #[aggregate(json)]
        pub tags: BTreeMap<String, Vec<u8>>,
        #[aggregate(skip)]
        pub loaded_at: Option<std::time::Instant>,
        pub deleted: bool,
    }

    impl Apply<Registered> for User {
        fn apply(&mut self, e: &Registered) {
            self.name = e.name.clone();
            self.tags = e.tags.clone();
        }
    }

    impl Apply<Deleted> for User {
        fn apply(&mut self, _: &Deleted) {
            self.deleted = true;
        }
    }

    /// An aggregate whose event type is a single event struct, with no state.
    #[derive(Aggregate, Default)]
    #[aggregate(event = Deleted)]
    pub struct Tombstone;

    impl Apply<Deleted> for Tombstone {
        fn apply(&mut self, _: &Deleted) {}
    }
}

fn main() {
    use es_core::{Aggregate, Event};
    assert_eq!(domain::User::NAME, "user-v2");
    assert_eq!(domain::Tombstone::NAME, "tombstone");
    assert_eq!(domain::UserEvent::EVENT_TYPES, ["UserRegistered", "Deleted"]);
    assert_eq!(domain::UserEvent::EVENT_ALIASES, ["Registered", "SignedUp"]);
    let mut shut = es_core::codec::Fields::new();
    shut.push("reason", "done");
    let closed = domain::Closed::decode("Shut", &shut).expect("version 1 upcasts");
    assert_eq!((closed.reasons, closed.reopened), (vec!["done".to_owned()], false));
    assert_eq!(<domain::Closed as es_core::NamedEvent>::VERSION, 3);
    let mut user = domain::User::default();
    user.apply_event(&domain::Deleted.into());
    assert!(user.deleted);
}
