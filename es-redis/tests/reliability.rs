//! The reliability suite: concurrency, Redis restarts and crashes, durability, hostile and
//! foreign data. Every scenario runs real `redis-server` processes that the test starts,
//! kills and restarts on loopback, and is bounded in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::codec::Fields;
use es_core::{
    Aggregate, AppendOptions, Apply, Event, EventStore, ExpectedVersion, Handle, Metadata,
    NewEvent, Position, ReadRange, Repository, RepositoryError, SnapshotPolicy, StoreError,
    StreamId,
};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::{RedisConfig, RedisEventStore};
use proptest::prelude::*;

#[derive(Event, Debug, Clone, PartialEq)]
struct Incremented {
    by: u64,
    task: u64,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum CounterEvent {
    Incremented(Incremented),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = CounterEvent, name = "counter")]
struct Counter {
    total: u64,
    count: u64,
}

impl Apply<Incremented> for Counter {
    fn apply(&mut self, e: &Incremented) {
        self.total += e.by;
        self.count += 1;
    }
}

struct Increment {
    by: u64,
    task: u64,
}

impl Handle<Increment> for Counter {
    type Error = std::convert::Infallible;
    fn handle(&self, c: &Increment) -> Result<Vec<CounterEvent>, Self::Error> {
        Ok(vec![Incremented {
            by: c.by,
            task: c.task,
        }
        .into()])
    }
}

fn shared() -> &'static RedisServer {
    RedisServer::shared().unwrap_or_else(|e| panic!("{e}"))
}

/// Every entry of `category`, read in pages.
async fn read_category(store: &RedisEventStore, category: &str) -> Vec<es_core::StoredEvent> {
    let mut all = Vec::new();
    let mut after = Position::ZERO;
    loop {
        let page = store
            .read_category(category, after, 1000)
            .await
            .expect("read category");
        let Some(last) = page.last() else { break };
        after = last.position;
        all.extend(page);
    }
    all
}

/// Checks one aggregate's stream against its category: versions contiguous 1..=n, and the
/// index and the category stream agree entry for entry.
async fn assert_consistent_with(
    store: &RedisEventStore,
    stream: &StreamId,
    category: &[es_core::StoredEvent],
) -> Vec<es_core::StoredEvent> {
    let events = store
        .read_stream(stream, &ReadRange::all())
        .await
        .expect("read stream");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "{stream}: contiguous versions"
    );
    let in_category: Vec<_> = category
        .iter()
        .filter(|e| e.stream == *stream)
        .cloned()
        .collect();
    assert_eq!(
        in_category, events,
        "{stream}: the index and the category stream agree entry for entry"
    );
    events
}

async fn assert_consistent(
    store: &RedisEventStore,
    stream: &StreamId,
) -> Vec<es_core::StoredEvent> {
    let category = read_category(store, &stream.category).await;
    assert_consistent_with(store, stream, &category).await
}

/// Runs `tasks` tasks of `commands_per_task` commands, each task through a repository of
/// its own (with its own cache, as separate processes would), so they conflict and retry.
/// Returns the commands accepted and the conflicts retried.
async fn run_commands(
    repository: impl Fn() -> Repository<Counter, RedisEventStore>,
    tasks: u64,
    commands_per_task: u64,
    aggregates: u64,
) -> (u64, u64) {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let repository = repository();
            tokio::spawn(async move {
                let (mut accepted, mut conflicts) = (0, 0);
                for i in 0..commands_per_task {
                    let id = format!("c{}", (task * commands_per_task + i) % aggregates);
                    let done = repository
                        .execute(&id, &Increment { by: i + 1, task })
                        .await
                        .unwrap_or_else(|e| panic!("task {task}: {e}"));
                    accepted += 1;
                    conflicts += u64::from(done.conflicts_retried);
                }
                (accepted, conflicts)
            })
        })
        .collect();
    let (mut accepted, mut conflicts) = (0, 0);
    for handle in handles {
        let (a, c) = handle.await.expect("task");
        accepted += a;
        conflicts += c;
    }
    (accepted, conflicts)
}

async fn check_counters(
    repository: &Repository<Counter, RedisEventStore>,
    tasks: u64,
    commands_per_task: u64,
    aggregates: u64,
) {
    let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
    for task in 0..tasks {
        for i in 0..commands_per_task {
            let entry = expected
                .entry(format!("c{}", (task * commands_per_task + i) % aggregates))
                .or_default();
            entry.0 += i + 1;
            entry.1 += 1;
        }
    }
    let category = read_category(repository.store(), Counter::NAME).await;
    let mut seen = HashMap::new();
    for (id, (total, count)) in &expected {
        let loaded = repository.load(id).await.expect("load");
        assert_eq!(
            (loaded.version, loaded.state.count, loaded.state.total),
            (*count, *count, *total),
            "aggregate {id}"
        );
        let replayed = repository
            .load_as_of(id, es_core::AsOf::Version(u64::MAX))
            .await
            .expect("replay");
        assert_eq!(
            replayed.state, loaded.state,
            "{id}: snapshot + tail equals a full replay"
        );
        let events =
            assert_consistent_with(repository.store(), &repository.stream_id(id), &category).await;
        for event in events {
            let event = event.decode::<CounterEvent>().expect("decode");
            let CounterEvent::Incremented(e) = event.event;
            *seen.entry((e.task, e.by, id.clone())).or_insert(0u32) += 1;
        }
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "no event lost or duplicated"
    );
    assert_eq!(seen.len() as u64, tasks * commands_per_task);
}

/// Scenario 1: 16 writers × 500 commands on one aggregate, each through a repository of its
/// own: they conflict, retry, and lose or duplicate nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_one_aggregate_lose_and_duplicate_nothing() {
    let store = shared()
        .store(&unique_namespace("one-aggregate"))
        .await
        .expect("connect");
    let repository = || {
        Repository::<Counter, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(100))
            .with_max_attempts(10_000)
    };
    let (accepted, conflicts) = run_commands(repository, 16, 500, 1).await;
    assert_eq!(accepted, 8_000);
    assert!(conflicts > 0, "16 writers on one aggregate conflicted");
    check_counters(&repository(), 16, 500, 1).await;
}

/// Scenario 1, spread: 16 writers × 500 commands over 200 aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_200_aggregates_lose_and_duplicate_nothing() {
    let store = shared()
        .store(&unique_namespace("many-aggregates"))
        .await
        .expect("connect");
    let repository = || {
        Repository::<Counter, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(10))
            .with_max_attempts(1_000)
    };
    let (accepted, _) = run_commands(repository, 16, 500, 200).await;
    assert_eq!(accepted, 8_000);
    check_counters(&repository(), 16, 500, 200).await;
}

fn timeouts(config: RedisConfig) -> RedisConfig {
    config
        .response_timeout(Some(Duration::from_millis(500)))
        .connection_timeout(Some(Duration::from_millis(500)))
}

/// How long Redis stays down in the restart scenario.
const OUTAGE: Duration = Duration::from_millis(700);

/// How long any one call may take while Redis is away: the configured timeouts plus slack.
const CALL_BOUND: Duration = Duration::from_secs(5);

/// Scenario 3: appends running while redis-server is stopped and started again on the same
/// port (with persistence): callers get connection errors, never a panic or a hang; the
/// store recovers by itself; no append is half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restart_under_load_gives_errors_then_recovers_with_nothing_half_written() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("redis-server");
    let config = timeouts(server.config(&unique_namespace("restart")));
    let store = RedisEventStore::connect(&config).await.expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, stop, errors, acknowledged) = (
                store.clone(),
                stop.clone(),
                errors.clone(),
                acknowledged.clone(),
            );
            tokio::spawn(async move {
                let stream = StreamId::new("counter", format!("w{w}"));
                let mut slowest = Duration::ZERO;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let events: Vec<NewEvent> = (0..3)
                        .map(|k| {
                            let e = CounterEvent::from(Incremented {
                                by: i * 10 + k,
                                task: w,
                            });
                            NewEvent::encode(&e, Metadata::default()).expect("encode")
                        })
                        .collect();
                    let started = Instant::now();
                    let result = store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            events,
                            &AppendOptions::with_append_id(format!("{w}-{i}")),
                        )
                        .await;
                    slowest = slowest.max(started.elapsed());
                    match result {
                        Ok(_) => {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e @ StoreError::Connection { .. }) => {
                            assert!(e.is_retryable());
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(other) => panic!("unexpected error during the outage: {other}"),
                    }
                }
                slowest
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged.load(Ordering::Relaxed) < 50 {
        assert!(
            Instant::now() < deadline,
            "waited 10 s for 50 appends before the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before_outage = acknowledged.load(Ordering::Relaxed);
    server.kill();
    // The outage itself: Redis stays down this long (a scenario's length, not a wait for
    // a condition), then comes back on the same port.
    tokio::time::sleep(OUTAGE).await;
    // Kept alive until the end of the test.
    let _server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart");
        server
    })
    .await
    .expect("restart task");
    let recovered_at = Instant::now();
    let mut recovered = false;
    while recovered_at.elapsed() < Duration::from_secs(15) {
        if acknowledged.load(Ordering::Relaxed) > before_outage + 20 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let slowest = writer.await.expect("writer");
        assert!(
            slowest < CALL_BOUND,
            "a call took {slowest:?} during the outage"
        );
    }
    assert!(
        errors.load(Ordering::Relaxed) > 0,
        "the outage was seen as connection errors"
    );
    assert!(
        recovered,
        "appends succeed again after the restart without intervention"
    );
    for w in 0..4 {
        let events = assert_consistent(&store, &StreamId::new("counter", format!("w{w}"))).await;
        assert_eq!(events.len() % 3, 0, "appends are all or nothing");
    }
}

/// Scenario 4: with `appendonly yes` and `appendfsync always`, every acknowledged append
/// survives a SIGKILL of redis-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_redis_crash_with_appendfsync_always() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("redis-server");
    let config = timeouts(server.config(&unique_namespace("durability")));
    let store = RedisEventStore::connect(&config).await.expect("connect");
    let stream = StreamId::new("counter", "durable");
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stream, acknowledged) = (store.clone(), stream.clone(), acknowledged.clone());
        tokio::spawn(async move {
            for i in 1..=100_000u64 {
                let e = CounterEvent::from(Incremented { by: i, task: 0 });
                let event = NewEvent::encode(&e, Metadata::default()).expect("encode");
                match store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(i - 1),
                        vec![event],
                        &AppendOptions::default(),
                    )
                    .await
                {
                    Ok(written) => {
                        assert_eq!(written.version, i);
                        acknowledged.store(i, Ordering::SeqCst);
                    }
                    Err(StoreError::Connection { .. }) => return,
                    Err(other) => panic!("{other}"),
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged.load(Ordering::SeqCst) <= 10 {
        assert!(
            Instant::now() < deadline,
            "waited 10 s for more than 10 acknowledged appends before the crash"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    writer.await.expect("writer");
    let acked = acknowledged.load(Ordering::SeqCst);
    assert!(
        acked > 10,
        "some appends were acknowledged before the crash ({acked})"
    );
    let server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart");
        server
    })
    .await
    .expect("restart task");
    let store = RedisEventStore::connect(&config).await.expect("reconnect");
    let events = assert_consistent(&store, &stream).await;
    assert!(
        events.len() as u64 >= acked,
        "acknowledged {acked}, found {}",
        events.len()
    );
    for (i, event) in events.into_iter().enumerate() {
        let CounterEvent::Incremented(e) = event.decode::<CounterEvent>().expect("decode").event;
        assert_eq!(e.by, i as u64 + 1);
    }
    drop(server);
}

/// A field and its value, as raw bytes.
type RawPair<'a> = (&'a [u8], &'a [u8]);

async fn raw_xadd(store: &RedisEventStore, key: &str, pairs: &[(&[u8], &[u8])]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(key).arg("*");
    for (field, value) in pairs {
        command.arg(*field).arg(*value);
    }
    command
        .query_async(&mut store.connection())
        .await
        .expect("XADD")
}

/// Scenario 5: entries written by hand (missing fields, unknown type, non-UTF-8 bytes, huge
/// values) are typed errors naming key, entry and field; nothing else is affected.
#[tokio::test]
async fn foreign_entries_are_typed_errors_and_affect_nothing_else() {
    let store = shared()
        .store(&unique_namespace("foreign"))
        .await
        .expect("connect");
    let repository = Repository::<Counter, _>::new(store.clone());
    repository
        .execute("good", &Increment { by: 1, task: 0 })
        .await
        .expect("good");
    let key = store.keys().category_stream("counter");
    let huge = vec![b'9'; 2 * 1024 * 1024];
    let cases: Vec<(&str, Vec<RawPair>, &str)> = vec![
        (
            "no type",
            vec![(b"aggregate_id", b"x"), (b"version", b"1")],
            "type",
        ),
        (
            "no version",
            vec![(b"type", b"Incremented"), (b"aggregate_id", b"x")],
            "version",
        ),
        (
            "bad version",
            vec![
                (b"type", b"Incremented"),
                (b"aggregate_id", b"x"),
                (b"version", b"one"),
            ],
            "version",
        ),
        (
            "non-UTF-8 id",
            vec![
                (b"type", b"Incremented"),
                (b"aggregate_id", &[0xff, 0xfe]),
                (b"version", b"1"),
            ],
            "aggregate_id",
        ),
    ];
    for (what, pairs, field) in &cases {
        let id = raw_xadd(&store, &key, pairs).await;
        let error = store
            .read_category("counter", Position::ZERO, 1000)
            .await
            .expect_err(what);
        let message = error.to_string();
        assert!(
            matches!(error, StoreError::Decode { .. }),
            "{what}: {message}"
        );
        assert!(
            message.contains(&key) && message.contains(&id) && message.contains(field),
            "{what}: {message}"
        );
        // Reading on from just after the bad entry works: one entry never blocks the rest.
        let position: Position = id.parse().expect("entry id");
        store
            .read_category("counter", position, 1000)
            .await
            .expect("read past it");
        redis::cmd("XDEL")
            .arg(&key)
            .arg(&id)
            .exec_async(&mut store.connection())
            .await
            .expect("XDEL");
    }
    // Well-formed envelopes with undecodable payloads: typed errors when decoded.
    let bad_payloads: Vec<(&[u8], &[u8], &str)> = vec![
        (b"by", b"\xff\xfe", "by"),
        (b"by", &huge, "by"),
        (b"nothing", b"here", "by"),
    ];
    for (i, (field, value, expected_field)) in bad_payloads.iter().enumerate() {
        let stream = StreamId::new("counter", format!("bad{i}"));
        let mut fields = Fields::new();
        fields.push(
            std::str::from_utf8(field).expect("name").to_owned(),
            value.to_vec(),
        );
        fields.push("task", "0");
        let event = NewEvent {
            event_type: "Incremented".into(),
            fields,
            metadata: Metadata::default(),
        };
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event],
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        match repository.load(&stream.id).await {
            Err(StoreError::Decode {
                source, location, ..
            }) => {
                assert_eq!(source.field_name(), Some(*expected_field));
                assert_eq!(location, key);
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
    let unknown = StreamId::new("counter", "unknown");
    store
        .append(
            &unknown,
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_type: "Teleported".into(),
                fields: Fields::new(),
                metadata: Metadata::default(),
            }],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    assert!(matches!(
        repository.load("unknown").await,
        Err(StoreError::Decode { .. })
    ));
    // The good aggregate is untouched and still takes commands.
    let done = repository
        .execute("good", &Increment { by: 2, task: 0 })
        .await
        .expect("good");
    assert_eq!((done.version, done.state.total), (2, 3));
    assert!(matches!(
        repository
            .execute("unknown", &Increment { by: 1, task: 0 })
            .await,
        Err(RepositoryError::Store(StoreError::Decode { .. }))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Scenario 7: arbitrary field pairs written by hand to a category stream never make a
    /// read panic; each is either an event or a typed decode error.
    #[test]
    fn reading_arbitrary_entries_never_panics(
        pairs in proptest::collection::vec((
            prop_oneof![Just(b"type".to_vec()), Just(b"aggregate_id".to_vec()), Just(b"version".to_vec()), Just(b"metadata".to_vec()), Just(b"correlation_id".to_vec()), proptest::collection::vec(any::<u8>(), 0..8)],
            proptest::collection::vec(any::<u8>(), 0..16),
        ), 1..8)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let store = shared().store(&unique_namespace("fuzz")).await.expect("connect");
            let key = store.keys().category_stream("counter");
            let pairs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(f, v)| (f.as_slice(), v.as_slice())).collect();
            raw_xadd(&store, &key, &pairs).await;
            match store.read_category("counter", Position::ZERO, 10).await {
                Ok(events) => {
                    for event in events {
                        let _ = event.decode::<CounterEvent>();
                    }
                }
                Err(StoreError::Decode { .. }) => {}
                Err(other) => panic!("unexpected error: {other}"),
            }
        });
    }
}
