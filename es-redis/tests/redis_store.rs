//! Behaviour specific to the Redis layout, on a real Redis started by the test harness.

use std::time::{Duration, Instant};

use es_core::codec::Fields;
use es_core::{
    AppendOptions, EventStore, ExpectedVersion, Metadata, NewEvent, Position, ReadRange, Snapshot,
    SnapshotStore, StoreError, StreamId,
};
use es_redis::testing::{unique_namespace, write_by_hand, RedisServer};
use es_redis::RedisConnection;
use es_redis::{RedisConfig, RedisEventStore};
use redis::Value;

fn server() -> &'static RedisServer {
    RedisServer::shared().unwrap_or_else(|e| panic!("{e}"))
}

async fn store() -> RedisEventStore {
    server()
        .store(&unique_namespace("redis-store"))
        .await
        .expect("connect")
}

async fn store_with(configure: impl FnOnce(RedisConfig) -> RedisConfig) -> RedisEventStore {
    let config = configure(server().config(&unique_namespace("redis-store")));
    RedisEventStore::connect(&config).await.expect("connect")
}

fn event(event_type: &'static str, pairs: &[(&'static str, &str)]) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        fields: pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
        metadata: Metadata::default(),
    }
}

fn numbered(range: std::ops::Range<usize>) -> Vec<NewEvent> {
    range
        .map(|n| {
            let mut e = event("Numbered", &[]);
            e.fields.push("n", n.to_string());
            e
        })
        .collect()
}

async fn run<T: redis::FromRedisValue>(
    connection: &mut RedisConnection,
    command: &redis::Cmd,
) -> T {
    command
        .query_async(connection)
        .await
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

/// Every key in the store's namespace, sorted.
async fn keys_of(store: &RedisEventStore) -> Vec<String> {
    let mut connection = store.connection();
    let pattern = format!("{}:*", store.keys().namespace());
    let mut keys: Vec<String> = run(&mut connection, redis::cmd("KEYS").arg(pattern)).await;
    keys.sort();
    keys
}

#[tokio::test]
async fn hostile_ids_round_trip_through_append_read_snapshot_and_key_layout() {
    let store = store().await;
    let long = "{x:y} ".repeat(1_700); // ~10 KB
    let ids = [
        "",
        "{user}",
        "}{",
        "a:b",
        "*",
        "?",
        "[ab]",
        "with space",
        "new\nline",
        "tab\there",
        "%",
        "%7B",
        "é🦆",
        "\u{0}",
        &long,
    ];
    for (i, id) in ids.iter().enumerate() {
        let stream = StreamId::new("user", *id);
        let written = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                numbered(i..i + 2),
                &AppendOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("append to {id:?}: {e}"));
        assert_eq!(written.version, 2);
        let mut fields = Fields::new();
        fields.push("id", *id);
        let snapshot = Snapshot {
            version: 1,
            position: written.positions[0],
            schema: 3,
            fields,
        };
        assert!(store.save_snapshot(&stream, &snapshot).await.expect("save"));
    }
    for (i, id) in ids.iter().enumerate() {
        let stream = StreamId::new("user", *id);
        let read = store
            .read_stream(&stream, &ReadRange::all())
            .await
            .expect("read");
        let numbers: Vec<_> = read
            .iter()
            .map(|e| e.event.get("n").map(<[u8]>::to_vec))
            .collect();
        assert_eq!(
            numbers,
            [
                Some(i.to_string().into_bytes()),
                Some((i + 1).to_string().into_bytes())
            ]
        );
        assert!(read.iter().all(|e| e.stream == stream));
        let (snapshot, tail) = store
            .load_snapshot_and_tail(&stream, 3)
            .await
            .expect("load");
        let snapshot = snapshot.expect("snapshot of the right schema");
        assert_eq!(snapshot.fields.get("id"), Some(id.as_bytes()));
        assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [2]);
    }
    // One index and one snapshot per id, plus the category stream, the record of its
    // partition count and its aggregates; every key has exactly one hash tag, `{user}`, but
    // the namespace's set of categories.
    let mut keys = keys_of(&store).await;
    let categories = store.keys().categories();
    assert!(keys.contains(&categories), "{categories} is kept");
    keys.retain(|key| *key != categories);
    assert_eq!(keys.len(), 2 * ids.len() + 3, "{keys:?}");
    let prefix = format!("{}:{{user}}:", store.keys().namespace());
    for key in &keys {
        assert!(key.starts_with(&prefix), "{key:?}");
        assert_eq!(key.matches('{').count(), 1, "{key:?}");
        assert_eq!(key.matches('}').count(), 1, "{key:?}");
    }
}

#[tokio::test]
async fn aggregate_of_10_000_events_loads_in_pages_of_1000() {
    // A server of its own, so its command statistics count only this test's round trips.
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = server.store("paging").await.expect("connect");
    let stream = StreamId::new("ledger", "big");
    for batch in 0..10 {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(batch as u64 * 1_000),
                numbered(batch * 1_000..(batch + 1) * 1_000),
                &AppendOptions::default(),
            )
            .await
            .expect("append 1,000 events");
    }
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        10_000
    );

    let mut connection = store.connection();
    let script_calls = |connection: &mut RedisConnection| {
        let mut connection = connection.clone();
        async move {
            let stats: String = run(&mut connection, redis::cmd("INFO").arg("commandstats")).await;
            stats
                .lines()
                .filter(|line| {
                    line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:")
                })
                .filter_map(|line| {
                    line.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        }
    };
    // Load the scripts first: a script's first use costs one more call (EVALSHA answered
    // NOSCRIPT, then SCRIPT LOAD).
    store
        .read_stream(&stream, &ReadRange::all().to_version(1))
        .await
        .expect("read");
    store
        .load_snapshot_and_tail(&stream, 1)
        .await
        .expect("load");
    let _: () = run(&mut connection, redis::cmd("CONFIG").arg("RESETSTAT")).await;

    let all = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(all.len(), 10_000);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1);
        assert_eq!(e.event.get("n"), Some(i.to_string().as_bytes()));
    }
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(
        script_calls(&mut connection).await,
        10,
        "one round trip per 1,000 events"
    );

    let _: () = run(&mut connection, redis::cmd("CONFIG").arg("RESETSTAT")).await;
    let (snapshot, tail) = store
        .load_snapshot_and_tail(&stream, 1)
        .await
        .expect("load");
    assert!(snapshot.is_none());
    assert_eq!(tail, all, "a load without snapshot is the whole stream");
    assert_eq!(script_calls(&mut connection).await, 10);

    let mut fields = Fields::new();
    fields.push("total", "whatever");
    let snapshot = Snapshot {
        version: 9_500,
        position: all[9_499].position,
        schema: 1,
        fields,
    };
    store.save_snapshot(&stream, &snapshot).await.expect("save");
    let _: () = run(&mut connection, redis::cmd("CONFIG").arg("RESETSTAT")).await;
    let (found, tail) = store
        .load_snapshot_and_tail(&stream, 1)
        .await
        .expect("load");
    assert_eq!(found, Some(snapshot));
    assert_eq!(tail, all[9_500..]);
    assert_eq!(
        script_calls(&mut connection).await,
        1,
        "snapshot and tail in one round trip"
    );

    let middle = store
        .read_stream(
            &stream,
            &ReadRange::all().from_version(999).to_version(3_001),
        )
        .await
        .expect("read");
    assert_eq!(middle, all[998..3_001]);
}

#[tokio::test]
async fn small_pages_and_time_travel_agree_with_a_single_read() {
    let paged = store_with(|c| c.page_size(3)).await;
    let stream = StreamId::new("user", "traveller");
    for round in 0..4 {
        paged
            .append(
                &stream,
                ExpectedVersion::Any,
                numbered(round * 5..round * 5 + 5),
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = paged
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(all.len(), 20);
    for from in [1, 2, 3, 4, 7, 19, 20, 21] {
        for to in [None, Some(3), Some(10), Some(20), Some(25)] {
            let mut range = ReadRange::all().from_version(from);
            range.to_version = to;
            let read = paged.read_stream(&stream, &range).await.expect("read");
            let expected: Vec<_> = all
                .iter()
                .filter(|e| range.contains(e.version, e.timestamp))
                .cloned()
                .collect();
            assert_eq!(read, expected, "from {from} to {to:?}");
        }
    }
    for cut in [
        all[0].timestamp - 1,
        all[4].timestamp,
        all[12].timestamp,
        all[19].timestamp,
    ] {
        let read = paged
            .read_stream(&stream, &ReadRange::all().until_millis(cut))
            .await
            .expect("read");
        let expected: Vec<_> = all.iter().filter(|e| e.timestamp <= cut).cloned().collect();
        assert_eq!(read, expected, "until {cut}");
    }
}

fn snapshot_at(version: u64, balance: &str) -> Snapshot {
    let mut fields = Fields::new();
    fields.push("balance", balance);
    Snapshot {
        version,
        position: Position::new(version, 0),
        schema: 1,
        fields,
    }
}

#[tokio::test]
async fn stale_snapshot_writer_cannot_overwrite_a_newer_snapshot() {
    let store = store().await;
    let stream = StreamId::new("account", "1");
    assert!(store
        .save_snapshot(&stream, &snapshot_at(10, "100"))
        .await
        .expect("save"));
    assert!(!store
        .save_snapshot(&stream, &snapshot_at(9, "90"))
        .await
        .expect("stale save"));
    assert!(!store
        .save_snapshot(&stream, &snapshot_at(2, "2"))
        .await
        .expect("stale save"));
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(snapshot_at(10, "100"))
    );

    // Versions compare as numbers, not as text ("9" > "10" as text).
    assert!(store
        .save_snapshot(&stream, &snapshot_at(100, "1000"))
        .await
        .expect("save"));
    assert!(!store
        .save_snapshot(&stream, &snapshot_at(99, "990"))
        .await
        .expect("stale"));

    // Writers racing with every version from 1 to 40: the newest one stays.
    let tasks: Vec<_> = (1..=40u64)
        .rev()
        .chain(1..=40)
        .map(|v| {
            let (store, stream) = (store.clone(), StreamId::new("account", "raced"));
            tokio::spawn(async move {
                store
                    .save_snapshot(&stream, &snapshot_at(v, &v.to_string()))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("save");
    }
    let raced = store
        .load_snapshot(&StreamId::new("account", "raced"))
        .await
        .expect("load");
    assert_eq!(raced, Some(snapshot_at(40, "40")));

    // A newer snapshot with fewer fields leaves none of the old ones behind.
    let mut slim = snapshot_at(200, "1");
    slim.fields = Fields::new();
    assert!(store.save_snapshot(&stream, &slim).await.expect("save"));
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(slim)
    );
}

#[tokio::test]
async fn snapshot_fields_with_the_reserved_prefix_are_rejected() {
    let store = store().await;
    let mut snapshot = snapshot_at(1, "1");
    snapshot.fields.push("_version", "999");
    let error = store
        .save_snapshot(&StreamId::new("account", "1"), &snapshot)
        .await
        .expect_err("reserved field");
    assert!(matches!(error, StoreError::InvalidRequest(_)), "{error}");
    assert!(keys_of(&store).await.is_empty());
}

/// The decode error of `result`: (stream key, entry id, field).
fn decode_error<T: std::fmt::Debug>(result: Result<T, StoreError>) -> (String, String, String) {
    match result {
        Err(StoreError::Decode {
            location,
            entry,
            source,
        }) => (
            location,
            entry,
            source.field_name().unwrap_or_default().to_owned(),
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn hand_written_undecodable_entries_name_stream_entry_and_field() {
    let store = store().await;
    let category_key = store.keys().category_stream("user");
    let fine = StreamId::new("user", "fine");
    let broken = StreamId::new("user", "broken");
    store
        .append(
            &fine,
            ExpectedVersion::NoStream,
            numbered(0..2),
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    store
        .append(
            &broken,
            ExpectedVersion::NoStream,
            numbered(0..1),
            &AppendOptions::default(),
        )
        .await
        .expect("append");

    // By hand: an entry without `version`, appended to the category stream and to the
    // broken aggregate's index.
    let bad_id = write_by_hand(
        &store,
        &broken,
        &[("type", "Numbered"), ("aggregate_id", "broken"), ("n", "1")],
    )
    .await
    .expect("write by hand");
    let mut connection = store.connection();
    store
        .append(
            &fine,
            ExpectedVersion::Exact(2),
            numbered(2..3),
            &AppendOptions::default(),
        )
        .await
        .expect("appends go on");

    let (key, entry, field) = decode_error(store.read_stream(&broken, &ReadRange::all()).await);
    assert_eq!(
        (key.as_str(), entry.as_str(), field.as_str()),
        (category_key.as_str(), bad_id.as_str(), "version")
    );
    let message = store
        .read_stream(&broken, &ReadRange::all())
        .await
        .expect_err("bad")
        .to_string();
    assert!(
        message.contains(&category_key) && message.contains(&bad_id) && message.contains("version"),
        "{message}"
    );
    let (_, entry, field) = decode_error(store.load_snapshot_and_tail(&broken, 1).await);
    assert_eq!(
        (entry.as_str(), field.as_str()),
        (bad_id.as_str(), "version")
    );
    // The events before it still read.
    assert_eq!(
        store
            .read_stream(&broken, &ReadRange::all().to_version(1))
            .await
            .expect("read")
            .len(),
        1
    );

    // Other aggregates are unaffected.
    let fine_events = store
        .read_stream(&fine, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(
        fine_events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // A category read stops at the entry with the same error, and reads on after it.
    let (_, entry, field) = decode_error(store.read_category("user", Position::ZERO, 100).await);
    assert_eq!(
        (entry.as_str(), field.as_str()),
        (bad_id.as_str(), "version")
    );
    let after: Position = bad_id.parse().expect("position");
    let rest = store
        .read_category("user", after, 100)
        .await
        .expect("read after it");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].stream, fine);

    // Other broken envelopes: no aggregate id; a type that is not UTF-8.
    for (fields, expected_field) in [
        (
            vec![("type", b"Numbered".to_vec()), ("version", b"1".to_vec())],
            "aggregate_id",
        ),
        (
            vec![
                ("type", b"\xff\xfe".to_vec()),
                ("aggregate_id", b"x".to_vec()),
                ("version", b"1".to_vec()),
            ],
            "type",
        ),
    ] {
        let last: Value = run(
            &mut connection,
            redis::cmd("XREVRANGE")
                .arg(&category_key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await;
        let last: Vec<(String, Vec<Vec<u8>>)> = redis::from_redis_value(last).expect("entry");
        let start: Position = last[0].0.parse().expect("position");
        let mut command = redis::cmd("XADD");
        command.arg(&category_key).arg("*");
        for (name, value) in &fields {
            command.arg(*name).arg(value.as_slice());
        }
        let id: String = run(&mut connection, &command).await;
        let (key, entry, field) = decode_error(store.read_category("user", start, 10).await);
        assert_eq!(
            (key.as_str(), entry.as_str(), field.as_str()),
            (category_key.as_str(), id.as_str(), expected_field)
        );
    }
}

#[tokio::test]
async fn index_entry_missing_from_the_stream_is_a_backend_error_naming_it() {
    let store = store().await;
    let stream = StreamId::new("user", "trimmed");
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            numbered(0..2),
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    let mut connection = store.connection();
    let first = written.positions[0].to_string();
    let _: i64 = run(
        &mut connection,
        redis::cmd("XDEL")
            .arg(store.keys().category_stream("user"))
            .arg(&first),
    )
    .await;
    let error = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect_err("missing entry");
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert!(error.to_string().contains(&first), "{error}");
}

#[tokio::test]
async fn retry_after_a_lost_reply_returns_the_original_result() {
    let store = store_with(|c| c.response_timeout(Some(Duration::from_millis(100)))).await;
    let stream = StreamId::new("order", "o-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            numbered(0..1),
            &AppendOptions::default(),
        )
        .await
        .expect("seed");

    // Pause writes for longer than the reply timeout: the append is queued on the server,
    // the client gives up waiting, and the append runs once the pause ends.
    let mut admin = server().config("admin").open().await.expect("connect");
    let _: () = run(
        &mut admin,
        redis::cmd("CLIENT").arg("PAUSE").arg(400).arg("WRITE"),
    )
    .await;
    let options = AppendOptions::with_append_id("req-7");
    let lost = store
        .append(&stream, ExpectedVersion::Exact(1), numbered(1..3), &options)
        .await
        .expect_err("the reply is lost");
    assert!(matches!(lost, StoreError::Connection { .. }), "{lost:?}");
    assert!(lost.is_retryable());
    // The append whose reply was lost did happen, once the pause ended (reads queued
    // behind it on the connection time out until then).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.stream_version(&stream).await {
            Ok(3) => break,
            Ok(_) | Err(StoreError::Connection { .. }) => {}
            Err(other) => panic!("reading the version: {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "waited 10 s for the paused append to be written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let retried = store
        .append(&stream, ExpectedVersion::Exact(1), numbered(1..3), &options)
        .await
        .expect("the retry is neither a conflict nor a duplicate");
    assert_eq!(retried.version, 3);
    let events = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(events.len(), 3, "written once");
    assert_eq!(retried.positions, [events[1].position, events[2].position]);
}

#[tokio::test]
async fn append_ids_are_remembered_for_the_configured_number_of_appends() {
    let store = store_with(|c| c.remembered_append_ids(3)).await;
    let stream = StreamId::new("order", "o-1");
    let mut results = Vec::new();
    for i in 0..5u64 {
        let options = AppendOptions::with_append_id(format!("append-{i}"));
        results.push(
            store
                .append(&stream, ExpectedVersion::Exact(i), numbered(0..1), &options)
                .await
                .expect("append"),
        );
    }
    // The last three are remembered, and more (up to twice the window) may be: records are
    // cut back to the newest three each time the version passes a multiple of three.
    let newest_three_are_remembered = || async {
        for (i, first) in results.iter().enumerate().skip(2) {
            let options = AppendOptions::with_append_id(format!("append-{i}"));
            let again = store
                .append(
                    &stream,
                    ExpectedVersion::Exact(i as u64),
                    numbered(0..1),
                    &options,
                )
                .await
                .expect("remembered");
            assert_eq!(&again, first);
        }
    };
    newest_three_are_remembered().await;
    // Version 6 passes a multiple of three: only the newest three records are kept
    // (appends 2 to 4, versions 3 to 5), so appends 0 and 1 are forgotten.
    store
        .append(
            &stream,
            ExpectedVersion::Exact(5),
            numbered(0..1),
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    for i in 0..2u64 {
        let forgotten = store
            .append(
                &stream,
                ExpectedVersion::Exact(i),
                numbered(0..1),
                &AppendOptions::with_append_id(format!("append-{i}")),
            )
            .await
            .expect_err("forgotten: an ordinary append that conflicts");
        assert_eq!(forgotten.as_conflict().map(|c| c.actual), Some(6));
    }
    newest_three_are_remembered().await;
    let records: usize = run(
        &mut store.connection(),
        redis::cmd("HLEN").arg(store.keys().append_ids(&stream)),
    )
    .await;
    assert_eq!(records, 3, "the newest three records are kept");
    assert_eq!(store.stream_version(&stream).await.expect("version"), 6);
}

#[tokio::test]
async fn conflicting_append_writes_nothing() {
    let store = store().await;
    let stream = StreamId::new("user", "1");
    let options = AppendOptions::with_append_id("first");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered(0..3), &options)
        .await
        .expect("append");
    let connection = store.connection();
    let category_key = store.keys().category_stream("user");
    let index_key = store.keys().index(&stream);
    let snapshot_of_keys = |mut connection: RedisConnection| {
        let (category_key, index_key) = (category_key.clone(), index_key.clone());
        async move {
            let entries: Value = run(
                &mut connection,
                redis::cmd("XRANGE").arg(&category_key).arg("-").arg("+"),
            )
            .await;
            let info: Value = run(
                &mut connection,
                redis::cmd("XINFO").arg("STREAM").arg(&category_key),
            )
            .await;
            let index: Vec<Vec<u8>> = run(
                &mut connection,
                redis::cmd("LRANGE").arg(&index_key).arg(0).arg(-1),
            )
            .await;
            (entries, info, index)
        }
    };
    let before = snapshot_of_keys(connection.clone()).await;
    for (expected, id) in [
        (ExpectedVersion::NoStream, None),
        (ExpectedVersion::Exact(2), Some("second")),
        (ExpectedVersion::Exact(7), Some("third")),
    ] {
        let options = AppendOptions {
            append_id: id.map(str::to_owned),
        };
        let error = store
            .append(&stream, expected, numbered(0..5), &options)
            .await
            .expect_err("conflict");
        let conflict = error.as_conflict().expect("a typed conflict");
        assert_eq!((conflict.expected, conflict.actual), (expected, 3));
    }
    assert_eq!(
        snapshot_of_keys(connection.clone()).await,
        before,
        "stream, its last id and the index are unchanged"
    );
    // A conflicting append's id is not remembered: sent again at the right version it appends.
    let written = store
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            numbered(0..1),
            &AppendOptions::with_append_id("second"),
        )
        .await
        .expect("append");
    assert_eq!(written.version, 4);
}

#[tokio::test]
async fn invalid_appends_are_rejected_before_anything_is_written() {
    let store = store().await;
    let stream = StreamId::new("user", "1");
    let mut reserved = event("Renamed", &[("name", "x")]);
    reserved.fields.push("aggregate_id", "someone-else");
    let mut huge = event("Huge", &[]);
    for i in 0..3_001 {
        huge.fields.push(format!("f{i}"), "v");
    }
    for events in [vec![], vec![event("Ok", &[]), reserved], vec![huge]] {
        let error = store
            .append(
                &stream,
                ExpectedVersion::Any,
                events,
                &AppendOptions::default(),
            )
            .await
            .expect_err("invalid");
        assert!(matches!(error, StoreError::InvalidRequest(_)), "{error}");
    }
    assert!(keys_of(&store).await.is_empty());

    // 3,000 fields is the most one event may have.
    let mut largest = event("Large", &[]);
    for i in 0..3_000 {
        largest.fields.push(format!("f{i}"), i.to_string());
    }
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![largest.clone()],
            &AppendOptions::default(),
        )
        .await
        .expect("3,000 fields");
    let read = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(read[0].event, largest.fields);
}

#[tokio::test]
async fn a_layout_key_of_the_wrong_type_fails_the_append_without_writing() {
    let store = store().await;
    let stream = StreamId::new("user", "1");
    let mut connection = store.connection();
    let _: () = run(
        &mut connection,
        redis::cmd("SET")
            .arg(store.keys().index(&stream))
            .arg("oops"),
    )
    .await;
    let error = store
        .append(
            &stream,
            ExpectedVersion::Any,
            numbered(0..1),
            &AppendOptions::default(),
        )
        .await
        .expect_err("wrong type");
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&store.keys().index(&stream)),
        "{error}"
    );
    let length: u64 = run(
        &mut connection,
        redis::cmd("EXISTS").arg(store.keys().category_stream("user")),
    )
    .await;
    assert_eq!(length, 0, "no event was written");
}

#[tokio::test]
async fn unreachable_server_is_a_retryable_connection_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = RedisConfig::new(format!("redis://127.0.0.1:{port}")).reconnect_retries(0);
    let error = RedisEventStore::connect(&config)
        .await
        .expect_err("nothing listens there");
    assert!(error.is_connection(), "{error:?}");
    let error = StoreError::from(error);
    assert!(
        matches!(error, StoreError::Connection { .. }) && error.is_retryable(),
        "{error:?}"
    );
}

#[tokio::test]
async fn metadata_is_stored_as_readable_fields() {
    let store = store().await;
    let stream = StreamId::new("user", "42");
    let mut registered = event("Registered", &[("name", "Duffy")]);
    registered.metadata = Metadata::new()
        .correlation_id("req-7")
        .with("tenant", "acme");
    let plain = event("Renamed", &[("name", "Daffy")]);
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![registered, plain],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    let mut connection = store.connection();
    let entries: Vec<(String, Vec<(String, String)>)> = {
        let reply: Value = run(
            &mut connection,
            redis::cmd("XRANGE")
                .arg(store.keys().category_stream("user"))
                .arg("-")
                .arg("+"),
        )
        .await;
        let Value::Array(items) = reply else {
            panic!("{reply:?}")
        };
        items
            .into_iter()
            .map(|item| {
                let Value::Array(mut parts) = item else {
                    panic!()
                };
                let fields: Vec<String> = redis::from_redis_value(parts.remove(1)).expect("fields");
                let id: String = redis::from_redis_value(parts.remove(0)).expect("id");
                (
                    id,
                    fields
                        .chunks(2)
                        .map(|p| (p[0].clone(), p[1].clone()))
                        .collect(),
                )
            })
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(entries[0].0, written.positions[0].to_string());
    assert_eq!(
        entries[0].1,
        pairs(&[
            ("type", "Registered"),
            ("aggregate_id", "42"),
            ("version", "1"),
            ("correlation_id", "req-7"),
            ("metadata", r#"{"tenant":"acme"}"#),
            ("name", "Duffy")
        ])
    );
    assert_eq!(
        entries[1].1,
        pairs(&[
            ("type", "Renamed"),
            ("aggregate_id", "42"),
            ("version", "2"),
            ("name", "Daffy")
        ])
    );
}

#[tokio::test]
async fn a_corrupt_snapshot_falls_back_to_full_replay() {
    let store = store().await;
    let stream = StreamId::new("account", "corrupt");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            numbered(0..5),
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    let mut fields = Fields::new();
    fields.push("balance", "3");
    let snapshot = Snapshot {
        version: 3,
        position: Position::new(1, 0),
        schema: 7,
        fields,
    };
    assert!(store.save_snapshot(&stream, &snapshot).await.expect("save"));
    let key = store.keys().snapshot(&stream);
    for (field, value) in [("_position", "not-a-position"), ("_version", "many")] {
        redis::cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(value)
            .exec_async(&mut store.connection())
            .await
            .expect("HSET");
        let (found, tail) = store
            .load_snapshot_and_tail(&stream, 7)
            .await
            .expect("load");
        assert_eq!(found, None, "{field}: the corrupt snapshot is ignored");
        assert_eq!(
            tail.iter().map(|e| e.version).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5],
            "{field}: every event is replayed"
        );
    }
}

/// Reads fetch an aggregate's entries from the category stream as ranges where they sit
/// together and one by one where other aggregates' entries are in between: either way
/// every event comes back, in order, and an entry missing from the stream is named.
#[tokio::test]
async fn reads_are_exact_however_the_aggregates_entries_interleave() {
    for page_size in [7, 1_000] {
        let store = store_with(|c| c.page_size(page_size)).await;
        let target = StreamId::new("user", "target");
        let mut expected = Vec::new();
        let append = |stream: StreamId, events: Vec<NewEvent>| {
            let store = store.clone();
            async move {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        events,
                        &AppendOptions::default(),
                    )
                    .await
                    .expect("append")
            }
        };
        // Together: 30 events in one append.
        append(target.clone(), numbered(0..30)).await;
        expected.extend(0..30);
        // Sparse: one in ten entries of the category is the target's.
        for n in 30..45 {
            append(target.clone(), numbered(n..n + 1)).await;
            expected.push(n);
            for other in 0..9 {
                append(
                    StreamId::new("user", format!("other-{other}")),
                    numbered(0..1),
                )
                .await;
            }
        }
        // Every other entry.
        for n in 45..60 {
            append(target.clone(), numbered(n..n + 1)).await;
            expected.push(n);
            append(StreamId::new("user", "neighbour"), numbered(0..1)).await;
        }
        let numbers = |events: &[es_core::StoredEvent]| -> Vec<usize> {
            events
                .iter()
                .map(|e| {
                    String::from_utf8_lossy(e.event.get("n").expect("n"))
                        .parse()
                        .unwrap()
                })
                .collect()
        };
        let events = store
            .read_stream(&target, &ReadRange::all())
            .await
            .expect("read");
        assert_eq!(numbers(&events), expected, "page size {page_size}");
        assert!(events.iter().zip(1..).all(|(e, v)| e.version == v));
        let middle = store
            .read_stream(&target, &ReadRange::all().from_version(25).to_version(50))
            .await
            .expect("read part");
        assert_eq!(numbers(&middle), expected[24..50], "page size {page_size}");

        // Entries gone from the stream are named, wherever they sat.
        for version in [60, 31, 10] {
            let gone = events[version - 1].position.to_string();
            let mut connection = store.connection();
            let _: i64 = run(
                &mut connection,
                redis::cmd("XDEL")
                    .arg(store.keys().category_stream("user"))
                    .arg(&gone),
            )
            .await;
            let error = store
                .read_stream(&target, &ReadRange::all())
                .await
                .expect_err("missing entry");
            assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
            assert!(error.to_string().contains(&gone), "{version}: {error}");
        }
    }
}

/// Appends made while others are on their way go to Redis together, in one script call,
/// and each keeps its own version check, result and failure.
#[tokio::test]
async fn concurrent_appends_share_script_calls_but_keep_their_own_outcomes() {
    let server = RedisServer::start().expect("redis");
    let store = server.store("batched").await.expect("connect");
    let mut connection = store.connection();
    let broken = StreamId::new("user", "broken");
    let _: () = run(
        &mut connection,
        redis::cmd("SET")
            .arg(store.keys().index(&broken))
            .arg("oops"),
    )
    .await;
    let retried = StreamId::new("user", "retried");
    let first = store
        .append(
            &retried,
            ExpectedVersion::NoStream,
            numbered(0..2),
            &AppendOptions::with_append_id("once"),
        )
        .await
        .expect("first append");
    let _: () = run(&mut connection, redis::cmd("CONFIG").arg("RESETSTAT")).await;

    let mut tasks = tokio::task::JoinSet::new();
    // Two appends race for version 1 of each of 20 aggregates.
    for n in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            let stream = StreamId::new("user", format!("u-{}", n % 20));
            let outcome = store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    numbered(n..n + 1),
                    &AppendOptions::default(),
                )
                .await;
            ("race", n, outcome)
        });
    }
    // An append to a broken key fails alone.
    let store_b = store.clone();
    tasks.spawn(async move {
        let outcome = store_b
            .append(
                &broken,
                ExpectedVersion::Any,
                numbered(0..1),
                &AppendOptions::default(),
            )
            .await;
        ("broken", 0, outcome)
    });
    // An append-id record corrupted by hand (the append id's record, without its version)
    // fails that append alone, even as a runtime error of the script.
    let corrupt = StreamId::new("user", "corrupt");
    let _: () = run(
        &mut connection,
        redis::cmd("EVAL")
            .arg(
                "local digest = string.gsub(string.sub(redis.sha1hex(ARGV[1]), 1, 12), '..', \
                 function(h) return string.char(tonumber(h, 16)) end) \
                 redis.call('HSET', KEYS[1], digest, 'x:y')",
            )
            .arg(1)
            .arg(store.keys().append_ids(&corrupt))
            .arg("mangled"),
    )
    .await;
    let store_c = store.clone();
    tasks.spawn(async move {
        let outcome = store_c
            .append(
                &corrupt,
                ExpectedVersion::Any,
                numbered(0..1),
                &AppendOptions::with_append_id("mangled"),
            )
            .await;
        ("corrupt", 0, outcome)
    });
    // A retry of a remembered append gets the first result back.
    let store_r = store.clone();
    tasks.spawn(async move {
        let outcome = store_r
            .append(
                &retried,
                ExpectedVersion::NoStream,
                numbered(0..2),
                &AppendOptions::with_append_id("once"),
            )
            .await;
        ("retried", 0, outcome)
    });
    let mut winners = std::collections::BTreeMap::new();
    let mut conflicts = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            ("race", n, Ok(written)) => {
                assert_eq!(written.version, 1);
                assert!(
                    winners.insert(n % 20, n).is_none(),
                    "two winners for u-{}",
                    n % 20
                );
            }
            ("race", _, Err(StoreError::Conflict(conflict))) => {
                assert_eq!(conflict.actual, 1);
                conflicts += 1;
            }
            ("broken", _, Err(error)) => {
                assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
                assert!(error.to_string().contains("ESLAYOUT"), "{error}");
            }
            ("corrupt", _, Err(error)) => {
                assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
                assert!(error.to_string().contains("ESAPPEND"), "{error}");
            }
            ("retried", _, Ok(again)) => assert_eq!(again, first),
            other => panic!("unexpected outcome: {other:?}"),
        }
    }
    assert_eq!((winners.len(), conflicts), (20, 20));
    for (aggregate, n) in winners {
        let events = store
            .read_stream(
                &StreamId::new("user", format!("u-{aggregate}")),
                &ReadRange::all(),
            )
            .await
            .expect("read");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.get("n"), Some(n.to_string().as_bytes()));
    }
    let stats: String = run(&mut connection, redis::cmd("INFO").arg("commandstats")).await;
    let calls: usize = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .expect("evalsha calls");
    assert!(calls < 43, "43 appends took {calls} script calls");
}
