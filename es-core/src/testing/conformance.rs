//! The backend conformance suite: the behaviour every [`SnapshotStore`] must show.
//!
//! A backend runs all of it with one line in a test file (it needs `tokio` with the
//! `macros` and `rt-multi-thread` features as a dev-dependency):
//!
//! ```
//! es_core::conformance_tests!(|| async { es_core::InMemoryStore::new() });
//! # fn main() {}
//! ```
//!
//! The factory is called once per test and must return a fresh, empty store (on a shared
//! server: a unique namespace). Each case is also a public async function, for backends
//! that want to run them their own way.

use std::sync::Arc;
use std::time::Duration;

pub use super::cache_cases::*;
pub use super::category_cases::*;
pub use super::deletion_cases::*;
pub use super::evolution_cases::older_event_versions_upcast_on_every_read_path;
pub use super::repository_cases::*;
pub use super::validation_cases::*;
use crate::codec::Fields;
use crate::error::{DecodeError, StoreError};
use crate::store::{
    AppendOptions, ExpectedVersion, Metadata, NewEvent, Position, ReadRange, Snapshot,
    SnapshotStore, StreamId,
};

/// Stamps out one `#[tokio::test]` per conformance case, each with a fresh store from
/// `$factory` (a closure returning a future of the store).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            append_and_read_round_trip_with_metadata,
            no_stream_expectation,
            exact_expectation_conflicts_and_writes_nothing,
            any_expectation_always_appends,
            concurrent_appenders_with_same_expected_version_have_one_winner,
            idempotent_retry_returns_original_result,
            read_from_version,
            read_as_of_version_and_timestamp,
            category_is_read_in_order_across_aggregates,
            categories_and_aggregate_ids_are_listed_in_pages,
            soft_deletion_keeps_the_events_and_refuses_loads_and_commands,
            hard_deletion_leaves_only_a_tombstone,
            hard_deletion_under_concurrent_appends_is_atomic,
            snapshot_save_load_never_older,
            snapshot_of_another_schema_is_ignored_on_load,
            unknown_event_type_gives_typed_decode_error,
            empty_append_is_rejected,
            reserved_event_fields_are_refused,
            reserved_snapshot_fields_are_refused,
            hostile_ids_and_binary_values_round_trip,
            the_pre_deploy_check_finds_exactly_the_undecodable_entries,
            older_event_versions_upcast_on_every_read_path,
            repository_retries_conflicts_and_snapshots,
            one_repository_serialises_commands_to_an_aggregate,
            two_cached_repositories_interleave_without_losing_commands,
            a_stale_cached_aggregate_catches_up,
            a_lost_reply_evicts_and_the_next_command_reloads,
            the_cache_stays_within_its_bounds,
            reads_never_come_from_the_cache,
            a_held_state_is_copied_or_reloaded,
            a_cancelled_command_forgets_the_aggregate,
            cached_commands_snapshot_by_policy,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let store = ($factory)().await;
            $crate::testing::conformance::$case(store).await;
        }
    )*};
}

fn new_event(event_type: &'static str, pairs: &[(&'static str, &str)]) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        fields: pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
        metadata: Metadata::default(),
    }
}

pub(super) fn numbered(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            let mut e = new_event("Numbered", &[]);
            e.fields.push("n", i.to_string());
            e
        })
        .collect()
}

pub(super) fn none() -> AppendOptions {
    AppendOptions::default()
}

/// Appends then reads back events with their fields, metadata and envelope.
pub async fn append_and_read_round_trip_with_metadata<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "duffy");
    let mut registered = new_event("Registered", &[("name", "Duffy"), ("surname", "Duck")]);
    registered.metadata = Metadata::new()
        .correlation_id("corr-1")
        .causation_id("cause-1")
        .with("tenant", "looney")
        .with("ip", "127.0.0.1");
    let renamed = new_event("Renamed", &[("name", "Daffy")]);
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![registered.clone(), renamed.clone()],
            &none(),
        )
        .await
        .expect("append");
    assert_eq!(written.version, 2);
    assert_eq!(written.positions.len(), 2);
    assert!(written.positions[0] < written.positions[1]);
    assert_eq!(written.first_version(), 1);

    let read = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(read.len(), 2);
    for (i, (stored, sent)) in read.iter().zip([&registered, &renamed]).enumerate() {
        assert_eq!(stored.stream, stream);
        assert_eq!(stored.version, i as u64 + 1);
        assert_eq!(stored.position, written.positions[i]);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(
            stored.event, sent.fields,
            "fields keep their order and values"
        );
        assert_eq!(stored.metadata, sent.metadata);
    }
    // Timestamps come from the store's clock (which may differ from this process's).
    assert!(read[0].timestamp > 0 && read[0].timestamp <= read[1].timestamp);
    assert_eq!(store.stream_version(&stream).await.expect("version"), 2);
    let other = StreamId::new("user", "nobody");
    assert_eq!(store.stream_version(&other).await.expect("version"), 0);
    assert!(store
        .read_stream(&other, &ReadRange::all())
        .await
        .expect("read")
        .is_empty());
}

/// `NoStream` succeeds once, then conflicts with the actual version.
pub async fn no_stream_expectation<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered(3), &none())
        .await
        .expect("first append");
    let error = store
        .append(&stream, ExpectedVersion::NoStream, numbered(1), &none())
        .await
        .expect_err("second NoStream append must conflict");
    let conflict = error.as_conflict().expect("a typed conflict");
    assert_eq!(conflict.expected, ExpectedVersion::NoStream);
    assert_eq!(conflict.actual, 3);
    assert_eq!(conflict.stream, stream);
    assert!(error.is_retryable());
    // Exact(0) means the same as NoStream.
    let fresh = StreamId::new("user", "2");
    store
        .append(&fresh, ExpectedVersion::Exact(0), numbered(1), &none())
        .await
        .expect("Exact(0) on a new stream");
}

/// A wrong `Exact` version conflicts and leaves the stream as it was.
pub async fn exact_expectation_conflicts_and_writes_nothing<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    store
        .append(&stream, ExpectedVersion::Exact(0), numbered(2), &none())
        .await
        .expect("append");
    for wrong in [0, 1, 3, 100] {
        let error = store
            .append(&stream, ExpectedVersion::Exact(wrong), numbered(5), &none())
            .await
            .expect_err("stale version must conflict");
        let conflict = error.as_conflict().expect("a typed conflict");
        assert_eq!(
            (conflict.expected, conflict.actual),
            (ExpectedVersion::Exact(wrong), 2)
        );
    }
    assert_eq!(
        store
            .read_stream(&stream, &ReadRange::all())
            .await
            .expect("read")
            .len(),
        2
    );
    assert_eq!(
        store
            .read_category("user", Position::ZERO, 100)
            .await
            .expect("read")
            .len(),
        2
    );
    let written = store
        .append(&stream, ExpectedVersion::Exact(2), numbered(1), &none())
        .await
        .expect("right version");
    assert_eq!(written.version, 3);
}

/// `Any` appends whatever the version.
pub async fn any_expectation_always_appends<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    for expected_version in 1..=3 {
        let written = store
            .append(&stream, ExpectedVersion::Any, numbered(1), &none())
            .await
            .expect("append");
        assert_eq!(written.version, expected_version);
    }
}

/// Eight writers expecting the same version: exactly one wins, the rest conflict.
pub async fn concurrent_appenders_with_same_expected_version_have_one_winner<S>(store: S)
where
    S: SnapshotStore + 'static,
{
    let store = Arc::new(store);
    let stream = StreamId::new("account", "shared");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered(1), &none())
        .await
        .expect("seed");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                store
                    .append(&stream, ExpectedVersion::Exact(1), numbered(2), &none())
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(written) => {
                winners += 1;
                assert_eq!(written.version, 3);
            }
            Err(StoreError::Conflict(conflict)) => assert_eq!(conflict.actual, 3),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners, 1);
    let events = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3]);
}

/// Re-sending an append with the same id returns the first result and writes nothing.
pub async fn idempotent_retry_returns_original_result<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("order", "o-1");
    let options = AppendOptions::with_append_id("append-42");
    let first = store
        .append(&stream, ExpectedVersion::NoStream, numbered(2), &options)
        .await
        .expect("first");
    let again = store
        .append(&stream, ExpectedVersion::NoStream, numbered(2), &options)
        .await
        .expect("a retry is not a conflict");
    assert_eq!(first, again);
    // Also after another writer appended in between.
    store
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            numbered(1),
            &AppendOptions::with_append_id("other"),
        )
        .await
        .expect("other writer");
    let late = store
        .append(&stream, ExpectedVersion::NoStream, numbered(2), &options)
        .await
        .expect("a late retry is not a conflict");
    assert_eq!(first, late);
    assert_eq!(store.stream_version(&stream).await.expect("version"), 3);
    // The same id on another stream is another append.
    let other = StreamId::new("order", "o-2");
    let written = store
        .append(&other, ExpectedVersion::NoStream, numbered(1), &options)
        .await
        .expect("other stream");
    assert_eq!(written.version, 1);
}

/// Reads start at a version and stop at one.
pub async fn read_from_version<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered(10), &none())
        .await
        .expect("append");
    let tail = store
        .read_stream(&stream, &ReadRange::all().from_version(8))
        .await
        .expect("read");
    assert_eq!(
        tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    assert_eq!(tail[0].event.get("n"), Some(&b"7"[..]));
    let middle = store
        .read_stream(&stream, &ReadRange::all().from_version(3).to_version(5))
        .await
        .expect("read");
    assert_eq!(
        middle.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let past_end = store
        .read_stream(&stream, &ReadRange::all().from_version(11))
        .await
        .expect("read");
    assert!(past_end.is_empty());
}

/// Time travel: the events up to a version, and up to a time.
pub async fn read_as_of_version_and_timestamp<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered(2), &none())
        .await
        .expect("append");
    // The cut-off comes from the store's own timestamps (its clock may not be ours).
    let between = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read")[1]
        .timestamp;
    tokio::time::sleep(Duration::from_millis(15)).await;
    store
        .append(&stream, ExpectedVersion::Exact(2), numbered(3), &none())
        .await
        .expect("append");
    let as_of_time = store
        .read_stream(&stream, &ReadRange::all().until_millis(between))
        .await
        .expect("read");
    assert_eq!(as_of_time.len(), 2);
    let as_of_version = store
        .read_stream(&stream, &ReadRange::all().to_version(4))
        .await
        .expect("read");
    assert_eq!(as_of_version.len(), 4);
    let before_everything = store
        .read_stream(&stream, &ReadRange::all().until_millis(1))
        .await
        .expect("read");
    assert!(before_everything.is_empty());
}

fn snapshot(version: u64, value: &str) -> Snapshot {
    let mut fields = Fields::new();
    fields.push("balance", value);
    Snapshot {
        version,
        position: Position::new(version, 0),
        schema: 7,
        fields,
    }
}

/// Snapshots load as saved, and an older one never replaces a newer one.
pub async fn snapshot_save_load_never_older<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("account", "1");
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), None);
    assert!(store
        .save_snapshot(&stream, &snapshot(10, "100"))
        .await
        .expect("save"));
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(snapshot(10, "100"))
    );
    assert!(!store
        .save_snapshot(&stream, &snapshot(5, "50"))
        .await
        .expect("stale save"));
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(snapshot(10, "100"))
    );
    assert!(store
        .save_snapshot(&stream, &snapshot(20, "200"))
        .await
        .expect("save"));
    assert_eq!(
        store.load_snapshot(&stream).await.expect("load"),
        Some(snapshot(20, "200"))
    );
}

/// `load_snapshot_and_tail` ignores a snapshot of another layout and replays everything.
pub async fn snapshot_of_another_schema_is_ignored_on_load<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("account", "1");
    store
        .append(&stream, ExpectedVersion::NoStream, numbered(5), &none())
        .await
        .expect("append");
    let mut saved = snapshot(3, "3");
    saved.position = store
        .read_stream(&stream, &ReadRange::all().to_version(3))
        .await
        .expect("read")[2]
        .position;
    store.save_snapshot(&stream, &saved).await.expect("save");
    let (found, tail) = store
        .load_snapshot_and_tail(&stream, 7)
        .await
        .expect("load");
    assert_eq!(found, Some(saved));
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 5]);
    let (found, tail) = store
        .load_snapshot_and_tail(&stream, 8)
        .await
        .expect("load");
    assert_eq!(found, None);
    assert_eq!(tail.len(), 5);
}

#[derive(crate::Event, Debug, PartialEq)]
#[event(rename = "Numbered")]
struct Numbered {
    n: u64,
}

/// An event type the reader does not know gives a typed error naming where it is stored.
pub async fn unknown_event_type_gives_typed_decode_error<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event("Teleported", &[("to", "Mars")])],
            &none(),
        )
        .await
        .expect("a store stores any event type");
    let stored = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    match stored
        .into_iter()
        .next()
        .expect("one event")
        .decode::<Numbered>()
    {
        Err(StoreError::Decode {
            location,
            entry,
            source,
        }) => {
            assert!(!location.is_empty());
            assert_eq!(entry, written.positions[0].to_string());
            assert!(
                matches!(source, DecodeError::UnknownEventType { ref event_type, .. } if event_type == "Teleported")
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// Ids with separators, braces, whitespace, empty or very long ids, and values with every
/// byte, are stored and read back exactly, each in its own stream.
pub async fn hostile_ids_and_binary_values_round_trip<S: SnapshotStore>(store: S) {
    let long = "x".repeat(10_000);
    let ids = [
        "{user}",
        "a:b",
        "}{",
        "*",
        "with space",
        "new\nline",
        "",
        "%41",
        "é🦆",
        &long,
        "a",
        "A",
    ];
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let mut appended = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let stream = StreamId::new("user", *id);
        let mut event = new_event("Numbered", &[]);
        event.fields.push("n", i.to_string());
        event.fields.push("bytes", every_byte.clone());
        event.fields.push("empty", "");
        let written = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event.clone()],
                &none(),
            )
            .await
            .unwrap_or_else(|e| panic!("append to {id:?}: {e}"));
        appended.push(((*id).to_owned(), 1, written.positions[0]));
        let mut snap = snapshot(1, id);
        snap.fields.push("bytes", every_byte.clone());
        store.save_snapshot(&stream, &snap).await.expect("save");
        let read = store
            .read_stream(&stream, &ReadRange::all())
            .await
            .expect("read");
        assert_eq!(read.len(), 1, "stream of {id:?}");
        assert_eq!(read[0].stream.id, *id);
        assert_eq!(read[0].event, event.fields);
        assert_eq!(
            store.load_snapshot(&stream).await.expect("load"),
            Some(snap)
        );
    }
    super::category_cases::assert_category_holds(&store, "user", &appended).await;
}
