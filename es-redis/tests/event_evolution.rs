//! Entries written by older code, by hand in the store's layout (`XADD` to the category
//! stream, `RPUSH` to the index) as `redis-cli` or an old release wrote them, decode
//! through today's types: added fields take their defaults, renamed types are read under
//! their aliases, older versions are upcast; new entries are stored under today's name and
//! version. The same behaviours run on every backend in the conformance suites; this file
//! pins the Redis layout they produce.

use es_core::{
    Aggregate, AppendOptions, Apply, Event, EventStore, ExpectedVersion, Handle, Metadata,
    NewEvent, ReadRange, Repository, StreamId,
};
use es_redis::testing::{unique_namespace, write_by_hand, RedisServer};
use es_redis::RedisEventStore;

async fn store() -> RedisEventStore {
    RedisServer::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .store(&unique_namespace("evolution"))
        .await
        .expect("connect")
}

/// Every entry of `category`'s stream as `XRANGE - +` shows it: field/value pairs.
async fn xrange(store: &RedisEventStore, category: &str) -> Vec<Vec<(String, String)>> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(store.keys().category_stream(category))
        .arg("-")
        .arg("+")
        .query_async(&mut store.connection())
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(_, pairs)| pairs).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Entries written by an older version of the code: one appended through the store under
/// an old type name, one by hand in the store's layout without the fields added since.
/// Both decode through today's types, the aggregate loads, and a new append is stored
/// under the current name.
#[tokio::test]
async fn entries_of_an_older_shape_decode_through_the_current_types() {
    #[derive(Event, Debug, PartialEq)]
    #[event(alias = "UserSignedUp", alias = "SignedUp")]
    struct Registered {
        name: String,
        #[event(default = 18)]
        age: u32,
        #[event(default)]
        nickname: String,
    }

    #[derive(Event, Debug, PartialEq)]
    enum UserEvent {
        Registered(Registered),
    }

    #[derive(Aggregate, Default, Debug)]
    #[aggregate(event = UserEvent, name = "user")]
    struct User {
        #[aggregate(skip)]
        names: Vec<String>,
        #[aggregate(skip)]
        ages: Vec<u32>,
    }

    impl Apply<Registered> for User {
        fn apply(&mut self, e: &Registered) {
            self.names.push(e.name.clone());
            self.ages.push(e.age);
        }
    }

    struct Register;

    impl Handle<Register> for User {
        type Error = String;
        fn handle(&self, _: &Register) -> Result<Vec<UserEvent>, String> {
            let event = Registered {
                name: "Daisy".into(),
                age: 30,
                nickname: "D".into(),
            };
            Ok(vec![event.into()])
        }
    }

    let store = store().await;
    let stream = StreamId::new("user", "evolved");
    let old = NewEvent {
        event_type: "UserSignedUp".into(),
        fields: [("name", "Duffy")].into_iter().collect(),
        metadata: Metadata::default(),
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![old],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    write_by_hand(
        &store,
        &stream,
        &[
            ("type", "SignedUp"),
            ("aggregate_id", "evolved"),
            ("version", "2"),
            ("name", "Daffy"),
            ("age", "7"),
        ],
    )
    .await
    .expect("write by hand");

    let decoded: Vec<UserEvent> = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read")
        .into_iter()
        .map(|stored| stored.decode::<UserEvent>().expect("decodes").event)
        .collect();
    let registered = |name: &str, age, nickname: &str| {
        UserEvent::Registered(Registered {
            name: name.into(),
            age,
            nickname: nickname.into(),
        })
    };
    assert_eq!(
        decoded,
        [registered("Duffy", 18, ""), registered("Daffy", 7, "")]
    );

    let users = Repository::<User, _>::new(store.clone());
    let loaded = users.load("evolved").await.expect("load");
    assert_eq!(
        (loaded.state.names.as_slice(), loaded.state.ages.as_slice()),
        (&["Duffy".to_owned(), "Daffy".to_owned()][..], &[18, 7][..])
    );
    let done = users.execute("evolved", &Register).await.expect("execute");
    assert_eq!(done.version, 3);
    let stored = xrange(&store, "user").await;
    assert_eq!(
        stored.iter().map(|e| e[0].1.as_str()).collect::<Vec<_>>(),
        ["UserSignedUp", "SignedUp", "Registered"],
        "a new append is stored under the current name"
    );
}

mod readme {
    //! The README's worked example: `Registered { name }` became `Registered { first_name,
    //! last_name }` (version 2), and `EmailUpdated` was renamed `EmailChanged`.
    use es_core::{Aggregate, Apply, Event, Handle};

    /// Version 1, kept to read old entries.
    #[derive(Event)]
    #[event(rename = "Registered")]
    pub struct RegisteredV1 {
        pub name: String,
    }

    #[derive(Event, Debug, PartialEq)]
    #[event(version = 2, upcast_from = RegisteredV1)]
    pub struct Registered {
        pub first_name: String,
        pub last_name: String,
    }

    impl From<RegisteredV1> for Registered {
        fn from(old: RegisteredV1) -> Self {
            let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
            Registered {
                first_name: first.to_owned(),
                last_name: last.to_owned(),
            }
        }
    }

    #[derive(Event, Debug, PartialEq)]
    #[event(alias = "EmailUpdated")]
    pub struct EmailChanged {
        pub email: String,
    }

    #[derive(Event, Debug, PartialEq)]
    pub enum UserEvent {
        Registered(Registered),
        EmailChanged(EmailChanged),
    }

    #[derive(Aggregate, Default, Debug, PartialEq)]
    #[aggregate(event = UserEvent, name = "user")]
    pub struct User {
        pub first_name: String,
        pub last_name: String,
        pub email: Option<String>,
    }

    impl Apply<Registered> for User {
        fn apply(&mut self, e: &Registered) {
            self.first_name = e.first_name.clone();
            self.last_name = e.last_name.clone();
        }
    }

    impl Apply<EmailChanged> for User {
        fn apply(&mut self, e: &EmailChanged) {
            self.email = Some(e.email.clone());
        }
    }

    pub struct Register(pub &'static str, pub &'static str);
    pub struct ChangeEmail(pub &'static str);

    impl Handle<Register> for User {
        type Error = String;
        fn handle(&self, c: &Register) -> Result<Vec<UserEvent>, String> {
            let event = Registered {
                first_name: c.0.into(),
                last_name: c.1.into(),
            };
            Ok(vec![event.into()])
        }
    }

    impl Handle<ChangeEmail> for User {
        type Error = String;
        fn handle(&self, c: &ChangeEmail) -> Result<Vec<UserEvent>, String> {
            Ok(vec![EmailChanged { email: c.0.into() }.into()])
        }
    }
}

/// What the README shows: entries `XADD`ed by the first version load through the upcast
/// chain and the alias, and today's code stores `event_version 2` and the new name; the
/// old entries are left exactly as they were.
#[tokio::test]
async fn the_readme_example_reads_version_1_entries_and_writes_version_2() {
    use readme::{ChangeEmail, Register, User};

    let store = store().await;
    let duffy = StreamId::new("user", "42");
    let before = [
        pairs(&[
            ("type", "Registered"),
            ("aggregate_id", "42"),
            ("version", "1"),
            ("name", "Duffy Duck"),
        ]),
        pairs(&[
            ("type", "EmailUpdated"),
            ("aggregate_id", "42"),
            ("version", "2"),
            ("email", "duffy@acme.test"),
        ]),
    ];
    for entry in &before {
        let entry: Vec<(&str, &str)> = entry.iter().map(|(n, v)| (&**n, &**v)).collect();
        write_by_hand(&store, &duffy, &entry).await.expect("XADD");
    }
    assert_eq!(xrange(&store, "user").await, before);

    let users = Repository::<User, _>::new(store.clone());
    let loaded = users.load("42").await.expect("load");
    assert_eq!(
        loaded.state,
        User {
            first_name: "Duffy".into(),
            last_name: "Duck".into(),
            email: Some("duffy@acme.test".into()),
        }
    );
    assert_eq!(loaded.version, 2);
    users
        .execute("42", &ChangeEmail("duffy@looney.test"))
        .await
        .expect("change email");
    users
        .execute("7", &Register("Daisy", "Duck"))
        .await
        .expect("register");

    let after = xrange(&store, "user").await;
    assert_eq!(after[..2], before, "old entries are never rewritten");
    assert_eq!(
        after[2..],
        [
            pairs(&[
                ("type", "EmailChanged"),
                ("aggregate_id", "42"),
                ("version", "3"),
                ("email", "duffy@looney.test"),
            ]),
            pairs(&[
                ("type", "Registered"),
                ("aggregate_id", "7"),
                ("version", "1"),
                ("event_version", "2"),
                ("first_name", "Daisy"),
                ("last_name", "Duck"),
            ]),
        ]
    );
    let report = es_core::evolution::check_category::<readme::UserEvent, _>(&store, "user")
        .await
        .expect("check");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.checked, 4);
}
