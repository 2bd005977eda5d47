//! Personal data on Redis, as `redis-cli` sees it: the category stream holds only
//! ciphertext for personal fields, the subject's key sits in `<ns>:subject_keys`, and an
//! erasure leaves only the key's generation there.

use es_core::personal::{Shredded, SEALED};
use es_core::{Aggregate, Apply, Event, Metadata, Repository};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::RedisKeys;
use redis::Value;

/// The seed's event, its name and surname personal.
#[derive(Event, Debug, Clone, PartialEq)]
struct Registered {
    #[event(personal)]
    name: String,
    #[event(personal)]
    surname: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    Registered(Registered),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = UserEvent)]
struct User {
    name: String,
    surname: String,
}

impl Apply<Registered> for User {
    fn apply(&mut self, event: &Registered) {
        self.name = event.name.clone();
        self.surname = event.surname.clone();
    }
}

/// `XRANGE key - +` as (entry id, field pairs).
async fn xrange(
    connection: &mut es_redis::RedisConnection,
    key: &str,
) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .expect("XRANGE");
    let Value::Array(entries) = reply else {
        panic!("entries: {reply:?}");
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                panic!("an entry");
            };
            let Value::Array(pairs) = parts.remove(1) else {
                panic!("pairs");
            };
            pairs
                .chunks(2)
                .map(|pair| match (&pair[0], &pair[1]) {
                    (Value::BulkString(n), Value::BulkString(v)) => (n.clone(), v.clone()),
                    other => panic!("a pair: {other:?}"),
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrange_shows_only_ciphertext_and_erasure_leaves_the_generation() {
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let inner = server
        .store(&unique_namespace("personal-raw"))
        .await
        .expect("connect");
    let store = Shredded::new(inner.clone(), RedisKeys::new(&inner));
    let registered = Registered {
        name: "Duffy".into(),
        surname: "Duck".into(),
    };
    let new = es_core::NewEvent::encode(&registered, Metadata::new()).expect("encode");
    es_core::EventStore::append(
        &store,
        &es_core::StreamId::new("user", "duffy"),
        es_core::ExpectedVersion::NoStream,
        vec![new],
        &Default::default(),
    )
    .await
    .expect("append");

    let mut connection = inner.connection();
    let entries = xrange(&mut connection, &inner.keys().category_stream("user")).await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    let value = |name: &str| {
        entry
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no field {name}: {entry:?}"))
    };
    assert_eq!(value("type"), b"Registered");
    assert_eq!(value("aggregate_id"), b"duffy");
    for (field, plain) in [("name", "Duffy"), ("surname", "Duck")] {
        let sealed = value(field);
        assert!(sealed.starts_with(SEALED), "{field}: {sealed:?}");
        assert!(
            !sealed.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "{field} holds its plain text"
        );
    }
    let keys_hash = inner.keys().subject_keys();
    let record: Vec<u8> = redis::cmd("HGET")
        .arg(&keys_hash)
        .arg("duffy")
        .query_async(&mut connection)
        .await
        .expect("HGET");
    assert_eq!(
        (record.len(), &record[..2]),
        (34, &b"1:"[..]),
        "generation 1 and 32 key bytes"
    );

    let users = Repository::<User, _>::new(store.clone());
    assert_eq!(users.load("duffy").await.expect("load").state.name, "Duffy");
    assert!(store
        .erase_subject("duffy", Metadata::new().with("reason", "request 7"))
        .await
        .expect("erase"));
    let record: Vec<u8> = redis::cmd("HGET")
        .arg(&keys_hash)
        .arg("duffy")
        .query_async(&mut connection)
        .await
        .expect("HGET");
    assert_eq!(record, b"1:", "only the generation is left");
    let after = xrange(&mut connection, &inner.keys().category_stream("user")).await;
    assert_eq!(after, entries, "the log is untouched");
    assert_eq!(
        users.load("duffy").await.expect("load after erasure").state,
        User::default()
    );
}
