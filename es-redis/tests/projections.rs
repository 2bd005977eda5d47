//! Consumer-group projections on a real Redis: work sharing, crash recovery, dead letters,
//! catch-up, exactly-once read-model updates, shutdown, rebuild, monitoring and waiting.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::read_model::{Applied, ReadModel};
use es_core::{
    AppendOptions, Event, EventStore, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent,
    StoreError, StreamId,
};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::{ProjectionMonitor, RedisEventStore};
use redis::Value;

const CATEGORY: &str = "account";

#[derive(Event, Debug, Clone, PartialEq)]
struct Deposited {
    amount: i64,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct Frozen {
    reason: String,
}

/// What the projections read: only deposits (`Frozen` events are skipped).
#[derive(Event, Debug, Clone, PartialEq)]
enum AccountEvent {
    Deposited(Deposited),
}

fn server() -> &'static RedisServer {
    RedisServer::shared().unwrap_or_else(|e| panic!("{e}"))
}

async fn setup(label: &str) -> RedisEventStore {
    let config = server().config(&unique_namespace(label));
    RedisEventStore::connect(&config).await.expect("connect")
}

fn deposit(amount: i64) -> NewEvent {
    NewEvent::encode(&Deposited { amount }, Metadata::default()).expect("encode")
}

/// Appends `count` deposits of 1..=count spread over `aggregates` accounts, 100 per append;
/// returns the last position.
async fn append_deposits(
    store: &RedisEventStore,
    first: i64,
    count: i64,
    aggregates: i64,
) -> Position {
    let mut last = Position::ZERO;
    let mut next = first;
    while next < first + count {
        let end = (next + 100).min(first + count);
        let account = StreamId::new(CATEGORY, format!("acc-{}", next / 100 % aggregates));
        let events = (next..end).map(deposit).collect();
        let written = store
            .append(
                &account,
                ExpectedVersion::Any,
                events,
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        last = *written.positions.last().expect("positions");
        next = end;
    }
    last
}

fn options(consumer: &str) -> ProjectionOptions {
    ProjectionOptions::new(consumer)
        .batch_size(100)
        .block(Duration::from_millis(100))
        .claim_idle(Duration::from_secs(60))
        .claim_interval(Duration::from_millis(100))
}

async fn query<T: redis::FromRedisValue>(store: &RedisEventStore, command: &redis::Cmd) -> T {
    command
        .query_async(&mut store.connection())
        .await
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

async fn pending_count(store: &RedisEventStore, group: &str) -> u64 {
    let summary: Vec<Value> = query(
        store,
        redis::cmd("XPENDING")
            .arg(store.keys().category_stream(CATEGORY))
            .arg(group),
    )
    .await;
    match summary.first() {
        Some(Value::Int(n)) => *n as u64,
        other => panic!("XPENDING summary: {other:?}"),
    }
}

/// A runner in a task, stopped on request.
/// Records which consumer handled which entry; optionally fails on some amounts.
#[derive(Clone)]
struct Recorder {
    name: String,
    label: &'static str,
    seen: Arc<Mutex<Vec<(Position, &'static str)>>>,
    /// Handling an event with this amount fails.
    fail_on: Option<i64>,
    /// Handling an event with this amount never finishes.
    hang_on: Option<i64>,
    /// Time each event takes.
    delay: Duration,
}

impl Recorder {
    fn new(name: &str, label: &'static str) -> Self {
        Recorder {
            name: name.to_owned(),
            label,
            seen: Arc::default(),
            fail_on: None,
            hang_on: None,
            delay: Duration::ZERO,
        }
    }

    fn sharing(&self, label: &'static str) -> Self {
        Recorder {
            label,
            ..self.clone()
        }
    }

    fn positions(&self) -> Vec<Position> {
        self.seen.lock().unwrap().iter().map(|(p, _)| *p).collect()
    }
}

#[async_trait::async_trait]
impl Projection for Recorder {
    type Event = AccountEvent;
    type Error = String;

    fn name(&self) -> &str {
        &self.name
    }

    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![CATEGORY.into()]
    }

    async fn handle(&self, event: &RecordedEvent<AccountEvent>) -> Result<(), String> {
        let AccountEvent::Deposited(deposit) = &event.event;
        if Some(deposit.amount) == self.hang_on {
            std::future::pending::<()>().await;
        }
        if Some(deposit.amount) == self.fail_on {
            return Err(format!("cannot deposit {}", deposit.amount));
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.seen.lock().unwrap().push((event.position, self.label));
        Ok(())
    }
}

/// Balances per account in a [`ReadModel`]: `balance:<account>` holds `balance` and
/// `deposits`.
#[derive(Clone)]
struct Balances {
    model: ReadModel,
    handled: Arc<AtomicU64>,
    /// Simulates a crash after the read model committed but before the ack, once, on the
    /// event with this amount.
    crash_after_commit_on: Option<i64>,
    crashed: Arc<AtomicBool>,
}

impl Balances {
    fn new(store: &RedisEventStore, name: &str) -> Self {
        Balances {
            model: store.read_model(name),
            handled: Arc::default(),
            crash_after_commit_on: None,
            crashed: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = AccountEvent;
    type Error = StoreError;

    fn name(&self) -> &str {
        self.model.projection()
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }

    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![CATEGORY.into()]
    }

    async fn handle(&self, event: &RecordedEvent<AccountEvent>) -> Result<(), StoreError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let AccountEvent::Deposited(deposit) = &event.event;
        let hash = format!("balance:{}", event.stream.id);
        let _ = self
            .model
            .update(event)
            .hincrby(&hash, "balance", deposit.amount)
            .hincrby(&hash, "deposits", 1)
            .hset(&hash, "last_version", event.version.to_string())
            .commit()
            .await?;
        if Some(deposit.amount) == self.crash_after_commit_on
            && !self.crashed.swap(true, Ordering::Relaxed)
        {
            return Err(StoreError::InvalidRequest(
                "simulated crash before the ack".into(),
            ));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_share_the_work_without_duplicates() {
    let store = setup("share").await;
    let last = append_deposits(&store, 1, 10_000, 50).await;
    let a = Recorder::new("ledger", "a");
    let b = a.sharing("b");
    let runner_a = ProjectionRunner::connect(&store, a.clone(), options("a"))
        .await
        .expect("runner a");
    let runner_b = ProjectionRunner::connect(&store, b, options("b"))
        .await
        .expect("runner b");
    let monitor = ProjectionMonitor::of(&store, runner_a.projection());
    let (a_running, b_running) = (runner_a.spawn(), runner_b.spawn());
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(30))
        .await
        .expect("caught up");
    let (_, stats_a) = a_running.stop().await.expect("stop");
    let (_, stats_b) = b_running.stop().await.expect("stop");

    let seen = a.seen.lock().unwrap().clone();
    let distinct: HashSet<Position> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(seen.len(), 10_000, "every event handled exactly once");
    assert_eq!(distinct.len(), 10_000);
    let by_a = seen.iter().filter(|(_, label)| *label == "a").count() as u64;
    assert_eq!((stats_a.handled, stats_b.handled), (by_a, 10_000 - by_a));
    assert!(
        by_a > 0 && by_a < 10_000,
        "both shared the work: a did {by_a}"
    );
    assert_eq!(stats_a.claimed + stats_b.claimed, 0);
    assert_eq!(pending_count(&store, "ledger").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_by_a_vanished_consumer_are_reclaimed() {
    let store = setup("reclaim").await;
    let last = append_deposits(&store, 1, 50, 5).await;
    let recorder = Recorder::new("ledger", "live");
    let options = options("live").claim_idle(Duration::from_millis(300));
    let runner = ProjectionRunner::connect(&store, recorder.clone(), options)
        .await
        .expect("runner");
    runner.prepare().await.expect("groups");
    // A consumer reads 20 entries and disappears without acknowledging them.
    let _: Value = query(
        &store,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("ledger")
            .arg("ghost")
            .arg("COUNT")
            .arg(20)
            .arg("STREAMS")
            .arg(store.keys().category_stream(CATEGORY))
            .arg(">"),
    )
    .await;
    assert_eq!(pending_count(&store, "ledger").await, 20);

    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("caught up");
    let (_, stats) = running.stop().await.expect("stop");
    let positions = recorder.positions();
    let distinct: HashSet<Position> = positions.iter().copied().collect();
    assert_eq!((positions.len(), distinct.len()), (50, 50));
    assert_eq!(stats.claimed, 20);
    assert_eq!(pending_count(&store, "ledger").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_dropped_mid_batch_leaves_its_batch_to_the_others() {
    let store = setup("dropped").await;
    let last = append_deposits(&store, 1, 30, 3).await;
    let stuck = Recorder {
        hang_on: Some(1),
        ..Recorder::new("ledger", "stuck")
    };
    let survivor = stuck.sharing("survivor");
    let stuck_runner = ProjectionRunner::connect(&store, stuck.clone(), options("stuck"))
        .await
        .expect("stuck runner");
    let monitor = ProjectionMonitor::of(&store, stuck_runner.projection());
    stuck_runner.prepare().await.expect("groups");
    // The stuck runner takes the whole batch and hangs on its first entry.
    let stuck_running = stuck_runner.spawn();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending_count(&store, "ledger").await < 30 {
        assert!(Instant::now() < deadline, "the stuck runner never read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stuck_running.abort().await;

    let survivor_options = options("survivor").claim_idle(Duration::from_millis(200));
    let survivor_runner = ProjectionRunner::connect(
        &store,
        Recorder {
            hang_on: None,
            ..survivor
        },
        survivor_options,
    )
    .await
    .expect("survivor");
    let running = survivor_runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("caught up");
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(
        stats.claimed, 30,
        "the dropped runner's batch was reclaimed"
    );
    let seen = stuck.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|(_, label)| *label == "survivor"));
    assert_eq!(pending_count(&store, "ledger").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered_while_later_events_flow() {
    let store = setup("poison").await;
    let key = store.keys().category_stream(CATEGORY);
    append_deposits(&store, 1, 10, 1).await;
    // Written by hand: no `version`, so it does not decode.
    let undecodable: String = query(
        &store,
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("type")
            .arg("Deposited")
            .arg("aggregate_id")
            .arg("hand")
            .arg("amount")
            .arg("5"),
    )
    .await;
    // Written by hand, decodes, but the handler always fails on it.
    let failing: String = query(
        &store,
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("type")
            .arg("Deposited")
            .arg("aggregate_id")
            .arg("hand")
            .arg("version")
            .arg("1")
            .arg("amount")
            .arg("-13"),
    )
    .await;
    let last = append_deposits(&store, 11, 10, 1).await;

    let recorder = Recorder {
        fail_on: Some(-13),
        ..Recorder::new("ledger", "only")
    };
    let options = options("only")
        .claim_idle(Duration::from_millis(50))
        .claim_interval(Duration::from_millis(50))
        .max_deliveries(3);
    let runner = ProjectionRunner::connect(&store, recorder.clone(), options)
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    // Later events flow while the failing entry waits for its retries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while recorder.positions().len() < 20 {
        assert!(Instant::now() < deadline, "later events did not flow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("caught up past the poison");
    let (_, stats) = running.stop().await.expect("stop");

    assert_eq!(recorder.positions().len(), 20);
    assert_eq!(stats.dead_lettered, 2);
    assert_eq!(
        stats.failed, 3,
        "the failing entry was tried max_deliveries times"
    );
    let letters = monitor.dead_letters(CATEGORY).await.expect("dead letters");
    assert_eq!(letters.len(), 2);
    let undecodable_letter = &letters[0];
    assert_eq!(undecodable_letter.position.to_string(), undecodable);
    assert_eq!(undecodable_letter.attempts, 1);
    assert!(
        undecodable_letter.error.contains(&key)
            && undecodable_letter.error.contains(&undecodable)
            && undecodable_letter.error.contains("version"),
        "{}",
        undecodable_letter.error
    );
    let failing_letter = &letters[1];
    assert_eq!(failing_letter.position.to_string(), failing);
    assert_eq!(failing_letter.attempts, 3);
    assert_eq!(failing_letter.event_type, "Deposited");
    assert!(
        failing_letter.error.contains("cannot deposit -13"),
        "{}",
        failing_letter.error
    );
    // The dead letter keeps the original fields.
    let dead_key = store.keys().dead_letters(CATEGORY, 0, "ledger");
    let raw: Vec<(String, HashMap<String, String>)> = query(
        &store,
        redis::cmd("XRANGE").arg(&dead_key).arg("-").arg("+"),
    )
    .await;
    assert_eq!(raw[1].1["_entry_id"], failing);
    assert_eq!(raw[1].1["amount"], "-13");
    assert_eq!(raw[1].1["aggregate_id"], "hand");
    assert_eq!(pending_count(&store, "ledger").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_started_late_catches_up_to_the_same_read_model() {
    let store = setup("late").await;
    let live = Balances::new(&store, "balances-live");
    let live_runner = ProjectionRunner::connect(&store, live.clone(), options("live"))
        .await
        .expect("live runner");
    let live_monitor = ProjectionMonitor::of(&store, live_runner.projection());
    let live_running = live_runner.spawn();
    let last = append_deposits(&store, 1, 10_000, 40).await;
    // Events of a type the projections do not handle are skipped.
    let frozen = NewEvent::encode(
        &Frozen {
            reason: "audit".into(),
        },
        Metadata::default(),
    )
    .expect("encode");
    let frozen_at = store
        .append(
            &StreamId::new(CATEGORY, "acc-0"),
            ExpectedVersion::Any,
            vec![frozen],
            &AppendOptions::default(),
        )
        .await
        .expect("append")
        .positions[0];
    assert!(frozen_at > last);
    live_monitor
        .wait_for(CATEGORY, frozen_at, Duration::from_secs(30))
        .await
        .expect("live caught up");
    let (_, live_stats) = live_running.stop().await.expect("stop");
    assert_eq!((live_stats.handled, live_stats.skipped), (10_000, 1));

    let late = Balances::new(&store, "balances-late");
    let late_runner = ProjectionRunner::connect(&store, late.clone(), options("late"))
        .await
        .expect("late runner");
    let late_monitor = ProjectionMonitor::of(&store, late_runner.projection());
    let started = Instant::now();
    let late_running = late_runner.spawn();
    late_monitor
        .wait_for(CATEGORY, frozen_at, Duration::from_secs(30))
        .await
        .expect("late caught up");
    let took = started.elapsed();
    let (_, late_stats) = late_running.stop().await.expect("stop");
    eprintln!(
        "caught up 10,000 events in {took:?}: {:.0} events/s (one read-model script per event)",
        10_000.0 / took.as_secs_f64()
    );
    assert_eq!(late_stats.handled, 10_000);

    let live_model = live.model.hashes().await.expect("live model");
    let late_model = late.model.hashes().await.expect("late model");
    assert_eq!(live_model.len(), 40);
    assert_eq!(live_model, late_model);
    let total: i64 = live_model
        .values()
        .map(|hash| {
            std::str::from_utf8(&hash["balance"])
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, (1..=10_000).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_not_applied_twice() {
    let store = setup("redeliver").await;
    let last = append_deposits(&store, 1, 20, 1).await;
    let balances = Balances {
        crash_after_commit_on: Some(7),
        ..Balances::new(&store, "balances")
    };
    let options = options("only")
        .claim_idle(Duration::from_millis(100))
        .claim_interval(Duration::from_millis(50));
    let runner = ProjectionRunner::connect(&store, balances.clone(), options)
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("caught up");
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(
        (stats.failed, stats.claimed),
        (1, 1),
        "event 7 was delivered again"
    );
    assert_eq!(balances.handled.load(Ordering::Relaxed), 21);
    let hash = balances.model.hash("balance:acc-0").await.expect("hash");
    assert_eq!(hash["deposits"], b"20", "each event counted once");
    assert_eq!(
        hash["balance"],
        (1..=20).sum::<i64>().to_string().into_bytes()
    );
}

#[tokio::test]
async fn read_model_updates_apply_once_in_any_order() {
    let store = setup("commit").await;
    let model = store.read_model("counts");
    let event = |millis: u64| RecordedEvent {
        stream: StreamId::new(CATEGORY, "acc-1"),
        version: 1,
        position: Position::new(millis, 0),
        timestamp: millis,
        event_type: "Deposited".into(),
        metadata: Metadata::default(),
        event: (),
        location: Arc::from("test"),
    };
    let (newer, older) = (event(2_000), event(1_000));
    let bump = |e: &RecordedEvent<()>| model.update(e).hincrby("totals", "n", 1).commit();
    // Another consumer applied a newer entry first: the older one must still apply.
    assert_eq!(bump(&newer).await.expect("newer"), Applied::Applied);
    assert_eq!(bump(&older).await.expect("older"), Applied::Applied);
    assert_eq!(bump(&newer).await.expect("again"), Applied::AlreadyApplied);
    assert_eq!(model.hash("totals").await.expect("hash")["n"], b"2");
    assert_eq!(model.applied_count(CATEGORY).await.expect("count"), 2);

    let refused = model
        .update(&event(3_000))
        .hset("_applied", "x", "y")
        .commit()
        .await
        .expect_err("reserved name");
    assert!(
        matches!(refused, StoreError::InvalidRequest(_)),
        "{refused}"
    );
    // A failing operation writes nothing, not even the applied record.
    let _: () = query(
        &store,
        redis::cmd("HSET")
            .arg(store.keys().read_model_hash(model.projection(), "totals"))
            .arg("text")
            .arg("x"),
    )
    .await;
    model
        .update(&event(4_000))
        .hset("totals", "touched", "yes")
        .hincrby("totals", "text", 1)
        .commit()
        .await
        .expect_err("not an integer");
    // Also when the text comes from an earlier operation of the same update.
    model
        .update(&event(4_000))
        .hset("totals", "touched", "yes")
        .hset("totals", "n", "many")
        .hincrby("totals", "n", 1)
        .commit()
        .await
        .expect_err("not an integer after the hset");
    let totals = model.hash("totals").await.expect("hash");
    assert!(!totals.contains_key("touched"));
    assert_eq!(totals["n"], b"2");
    assert_eq!(model.applied_count(CATEGORY).await.expect("count"), 2);
    // A hash deleted first starts over: its old text no longer matters.
    let applied = model
        .update(&event(5_000))
        .del("totals")
        .hincrby("totals", "text", 5)
        .commit()
        .await
        .expect("del then hincrby");
    assert_eq!(applied, Applied::Applied);
    let totals = model.hash("totals").await.expect("hash");
    assert_eq!(
        totals.into_iter().collect::<Vec<_>>(),
        [("text".to_owned(), b"5".to_vec())]
    );
    // Integers HINCRBY itself refuses (leading zeros, overflow) are refused before any
    // write, not half-way through the update.
    for (value, increment) in [
        ("007", 1),
        ("9223372036854775807", 1),
        ("9007199254740990", 5),
    ] {
        let _: () = query(
            &store,
            redis::cmd("HSET")
                .arg(store.keys().read_model_hash(model.projection(), "limits"))
                .arg("v")
                .arg(value),
        )
        .await;
        let refused = model
            .update(&event(6_000))
            .hincrby("limits", "before", 1)
            .hincrby("limits", "v", increment)
            .commit()
            .await
            .expect_err(value);
        assert!(refused.to_string().contains("refused"), "{refused}");
        let limits = model.hash("limits").await.expect("hash");
        assert!(
            !limits.contains_key("before"),
            "{value}: nothing was written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_acknowledges_the_batch_in_hand() {
    let store = setup("shutdown").await;
    append_deposits(&store, 1, 300, 3).await;
    let recorder = Recorder {
        delay: Duration::from_millis(1),
        ..Recorder::new("ledger", "only")
    };
    let runner =
        ProjectionRunner::connect(&store, recorder.clone(), options("only").batch_size(50))
            .await
            .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.positions().len() < 10 {
        assert!(
            Instant::now() < deadline,
            "waited 10 s for the runner to handle 10 events"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (_, stats) = running.stop().await.expect("stop");
    let handled = recorder.positions().len() as u64;
    assert_eq!(stats.handled, handled);
    assert!(handled < 300, "stopped early ({handled})");
    assert_eq!(handled % 50, 0, "whole batches: {handled}");
    assert_eq!(
        pending_count(&store, "ledger").await,
        0,
        "nothing left pending"
    );
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert_eq!((status.pending, status.lag), (0, Some(300 - handled)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replays_into_a_cleared_read_model() {
    let store = setup("rebuild").await;
    let last = append_deposits(&store, 1, 500, 5).await;
    let balances = Balances::new(&store, "balances");
    let runner = ProjectionRunner::connect(&store, balances.clone(), options("only"))
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("caught up");
    let (runner, _) = running.stop().await.expect("stop");
    let before = balances.model.hashes().await.expect("model");
    // The read model drifts (say, a bug fixed since), then is rebuilt.
    let _: () = query(
        &store,
        redis::cmd("HSET")
            .arg(
                store
                    .keys()
                    .read_model_hash(balances.model.projection(), "balance:acc-1"),
            )
            .arg("balance")
            .arg(-1),
    )
    .await;

    runner.rebuild().await.expect("rebuild");
    assert!(balances.model.hashes().await.expect("model").is_empty());
    assert_eq!(
        balances
            .model
            .applied_count(CATEGORY)
            .await
            .expect("applied"),
        0
    );
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert_eq!(
        (status.last_delivered, status.lag),
        (Position::ZERO, Some(500))
    );

    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("rebuilt");
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(stats.handled, 500);
    assert_eq!(balances.model.hashes().await.expect("model"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_pending_are_reported() {
    let store = setup("lag").await;
    let recorder = Recorder::new("ledger", "only");
    let runner = ProjectionRunner::connect(&store, recorder, options("only"))
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert!(!status.exists);

    let first = append_deposits(&store, 1, 1, 1).await;
    append_deposits(&store, 2, 29, 1).await;
    runner.prepare().await.expect("groups");
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert!(status.exists);
    assert_eq!((status.lag, status.pending), (Some(30), 0));
    let _: Value = query(
        &store,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("ledger")
            .arg("ghost")
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(store.keys().category_stream(CATEGORY))
            .arg(">"),
    )
    .await;
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert_eq!((status.lag, status.pending), (Some(20), 10));
    assert_eq!(status.consumers, 1);
    assert_eq!(status.oldest_pending, Some(first));
    assert!(status.watermark() < first, "nothing is processed yet");
    assert!(!status.has_processed(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_position_times_out_then_succeeds() {
    let store = setup("wait").await;
    let recorder = Recorder::new("ledger", "only");
    let runner = ProjectionRunner::connect(&store, recorder, options("only"))
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let mut progress = runner.progress();
    let last = append_deposits(&store, 1, 100, 2).await;

    let started = Instant::now();
    let error = monitor
        .wait_for(CATEGORY, last, Duration::from_millis(150))
        .await
        .expect_err("no runner yet");
    assert!(matches!(error, es_redis::Error::WaitTimeout(_)), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    progress
        .wait_for(CATEGORY, last, Duration::from_millis(50))
        .await
        .expect_err("no runner yet");

    let running = runner.spawn();
    progress
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("in-process wait");
    monitor
        .wait_for(CATEGORY, last, Duration::from_millis(1))
        .await
        .expect("Redis-side wait agrees");
    running.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_entries_are_pruned_once_acknowledged() {
    let store = setup("prune").await;
    let last = append_deposits(&store, 1, 200, 2).await;
    let balances = Balances::new(&store, "balances");
    let options = options("only").prune_grace(Duration::ZERO);
    let runner = ProjectionRunner::connect(&store, balances.clone(), options)
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(10))
        .await
        .expect("caught up");
    let deadline = Instant::now() + Duration::from_secs(5);
    while balances.model.applied_count(CATEGORY).await.expect("count") > 0 {
        assert!(Instant::now() < deadline, "applied ids were not pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await.expect("stop");
    let hashes = balances.model.hashes().await.expect("model");
    let deposits: i64 = hashes
        .values()
        .map(|h| {
            std::str::from_utf8(&h["deposits"])
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(deposits, 200);
}

#[tokio::test]
async fn read_model_batches_apply_each_event_once_and_all_or_nothing() {
    let store = setup("batch-commit").await;
    let model = store.read_model("batched");
    let event = |millis: u64| RecordedEvent {
        stream: StreamId::new(CATEGORY, format!("acc-{}", millis % 2)),
        version: 1,
        position: Position::new(millis, 0),
        timestamp: millis,
        event_type: "Deposited".into(),
        metadata: Metadata::default(),
        event: (),
        location: Arc::from("test"),
    };
    let events: Vec<_> = (1..=6).map(|n| event(n * 1_000)).collect();
    // Event 2 was applied before this batch.
    let first = model
        .update(&events[1])
        .hincrby("totals", "n", 1)
        .commit()
        .await
        .expect("single");
    assert_eq!(first, Applied::Applied);

    let mut batch = model.batch();
    for event in &events {
        batch.push(
            model
                .update(event)
                .hincrby("totals", "n", 1)
                .hset("totals", "last", event.position.to_string())
                .hset("scratch", "seen", "yes"),
        );
    }
    // The same entry twice in one batch counts once.
    batch.push(model.update(&events[0]).hincrby("totals", "n", 100));
    // Later updates see earlier ones: a delete, then a fresh count.
    batch.push(
        model
            .update(&event(7_000))
            .del("scratch")
            .hincrby("scratch", "after", 2)
            .hdel("totals", "last"),
    );
    assert_eq!(batch.len(), 8);
    let outcomes = batch.commit().await.expect("batch");
    use Applied::{AlreadyApplied as Old, Applied as New};
    assert_eq!(outcomes, [New, Old, New, New, New, New, Old, New]);
    let totals = model.hash("totals").await.expect("totals");
    assert_eq!(totals["n"], b"6", "five new events and the one before");
    assert!(!totals.contains_key("last"), "removed by the last update");
    let scratch = model.hash("scratch").await.expect("scratch");
    assert_eq!(
        scratch.into_iter().collect::<Vec<_>>(),
        [("after".to_owned(), b"2".to_vec())]
    );
    assert_eq!(model.applied_count(CATEGORY).await.expect("count"), 7);

    // One bad operation anywhere fails the whole batch: nothing is written or recorded.
    let _: () = query(
        &store,
        redis::cmd("HSET")
            .arg(store.keys().read_model_hash(model.projection(), "totals"))
            .arg("text")
            .arg("x"),
    )
    .await;
    let mut batch = model.batch();
    batch.push(model.update(&event(8_000)).hincrby("totals", "n", 1));
    batch.push(model.update(&event(9_000)).hset("other", "touched", "yes"));
    batch.push(model.update(&event(10_000)).hincrby("totals", "text", 1));
    let refused = batch.commit().await.expect_err("not an integer");
    assert!(refused.to_string().contains("refused"), "{refused}");
    assert_eq!(model.hash("totals").await.expect("totals")["n"], b"6");
    assert!(model.hash("other").await.expect("other").is_empty());
    assert_eq!(model.applied_count(CATEGORY).await.expect("count"), 7);
    // An update of another read model is refused before anything is sent.
    let elsewhere = store.read_model("elsewhere");
    let mut batch = model.batch();
    batch.push(elsewhere.update(&event(11_000)).hset("x", "y", "z"));
    let refused = batch.commit().await.expect_err("another read model");
    assert!(
        matches!(refused, StoreError::InvalidRequest(_)),
        "{refused}"
    );
    // An empty batch sends nothing.
    assert!(model.batch().commit().await.expect("empty").is_empty());
}

/// Balances committed one batch per read, with a poison amount that fails the whole batch.
#[derive(Clone)]
struct BatchBalances {
    model: ReadModel,
    batches: Arc<Mutex<Vec<usize>>>,
    singles: Arc<AtomicU64>,
    poison: i64,
}

impl BatchBalances {
    fn update<'a>(
        &'a self,
        event: &RecordedEvent<AccountEvent>,
    ) -> Result<es_core::read_model::ReadModelUpdate<'a>, StoreError> {
        let AccountEvent::Deposited(deposit) = &event.event;
        if deposit.amount == self.poison {
            return Err(StoreError::InvalidRequest(format!(
                "cannot deposit {}",
                deposit.amount
            )));
        }
        let hash = format!("balance:{}", event.stream.id);
        Ok(self
            .model
            .update(event)
            .hincrby(&hash, "balance", deposit.amount)
            .hincrby(&hash, "deposits", 1))
    }
}

#[async_trait::async_trait]
impl Projection for BatchBalances {
    type Event = AccountEvent;
    type Error = StoreError;

    fn name(&self) -> &str {
        self.model.projection()
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }

    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![CATEGORY.into()]
    }

    async fn handle(&self, event: &RecordedEvent<AccountEvent>) -> Result<(), StoreError> {
        self.singles.fetch_add(1, Ordering::Relaxed);
        let _ = self.update(event)?.commit().await?;
        Ok(())
    }

    async fn handle_batch(
        &self,
        events: &[RecordedEvent<AccountEvent>],
    ) -> Result<(), es_core::projection::BatchError<StoreError>> {
        use es_core::projection::BatchError;
        self.batches.lock().unwrap().push(events.len());
        let mut batch = self.model.batch();
        for event in events {
            batch.push(self.update(event).map_err(BatchError::nothing_handled)?);
        }
        batch.commit().await.map_err(BatchError::nothing_handled)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_handlers_commit_once_per_read_and_isolate_a_poison_event() {
    let store = setup("batch-runner").await;
    let poison = 250;
    let last = append_deposits(&store, 1, 1_000, 4).await;
    let projection = BatchBalances {
        model: store.read_model("batch-balances"),
        batches: Arc::default(),
        singles: Arc::default(),
        poison,
    };
    let options = options("only")
        .claim_idle(Duration::from_millis(300))
        .claim_interval(Duration::from_millis(50))
        .max_deliveries(2);
    let runner = ProjectionRunner::connect(&store, projection.clone(), options)
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(20))
        .await
        .expect("caught up");
    let (_, stats) = running.stop().await.expect("stop");

    // Every deposit but the poison is in the balances, once.
    let mut total = 0;
    let mut deposits = 0;
    for account in 0..4 {
        let hash = projection
            .model
            .hash(&format!("balance:acc-{account}"))
            .await
            .expect("hash");
        total += std::str::from_utf8(&hash["balance"])
            .unwrap()
            .parse::<i64>()
            .unwrap();
        deposits += std::str::from_utf8(&hash["deposits"])
            .unwrap()
            .parse::<i64>()
            .unwrap();
    }
    assert_eq!(deposits, 999);
    assert_eq!(total, (1..=1_000).sum::<i64>() - poison);
    // Every other deposit handled at least once (a batch held longer than `claim_idle` may
    // be claimed and handled again; the read model above shows it applied once).
    assert!(stats.handled >= 999, "{stats:?}");
    assert_eq!(stats.dead_lettered, 1);
    let letters = monitor.dead_letters(CATEGORY).await.expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].error.contains("cannot deposit 250"),
        "{}",
        letters[0].error
    );
    // Reads of 100 went to the batch handler whole; only the batch holding the poison
    // (and the poison's redelivery) was handled one event at a time.
    let batches = projection.batches.lock().unwrap().clone();
    assert!(
        batches.iter().filter(|n| **n == 100).count() >= 9,
        "{batches:?}"
    );
    let singles = projection.singles.load(Ordering::Relaxed);
    assert!(
        (100..=101).contains(&singles),
        "{singles} events handled alone"
    );
    assert_eq!(pending_count(&store, "batch-balances").await, 0);
}

/// A runner catching up holds the next batch while it processes the current one; when Redis
/// goes away then, `stop` still returns: with the outage's connection error (the held
/// entries stay pending), or with what it did if it finished before meeting the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_during_an_outage_while_catching_up() {
    let mut server = RedisServer::start().expect("redis");
    let config = server
        .config(&unique_namespace("outage"))
        .response_timeout(Some(Duration::from_millis(200)))
        .connection_timeout(Some(Duration::from_millis(200)))
        .reconnect_retries(1);
    let store = RedisEventStore::connect(&config).await.expect("connect");
    append_deposits(&store, 1, 5_000, 10).await;
    let recorder = Recorder {
        delay: Duration::from_micros(200),
        ..Recorder::new("outage", "only")
    };
    // Small batches, a claim due before almost every step.
    let options = options("only")
        .batch_size(20)
        .claim_interval(Duration::from_millis(10));
    let runner = ProjectionRunner::connect(&store, recorder.clone(), options)
        .await
        .expect("runner");
    let running = runner.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.positions().len() < 200 {
        assert!(Instant::now() < deadline, "the runner did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let stopped = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("stop hung during the outage");
    // It stops with what it did, or with the outage's connection error; never a hang.
    match stopped {
        Ok((_, stats)) => assert!(stats.handled < 5_000, "stopped while catching up"),
        Err(error) => assert!(
            matches!(
                error,
                StoreError::Connection { .. } | StoreError::Backend { .. }
            ),
            "expected the outage's connection error, got {error:?}"
        ),
    }
}

#[derive(es_core::Aggregate, Default, Debug)]
#[aggregate(event = AccountEvent, name = "account")]
struct Account {
    balance: i64,
}

impl es_core::Apply<Deposited> for Account {
    fn apply(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

struct Deposit(i64);

impl es_core::Handle<Deposit> for Account {
    type Error = std::convert::Infallible;
    fn handle(&self, c: &Deposit) -> Result<Vec<AccountEvent>, Self::Error> {
        Ok(vec![Deposited { amount: c.0 }.into()])
    }
}

/// Read-your-writes: after `wait_for_executed(&done)`, the read model shows the command,
/// on a category split into partitions (the wait is on the aggregate's own partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_executed_command_shows_it_in_the_read_model() {
    let config = server()
        .config(&unique_namespace("read-your-writes"))
        .partitions(CATEGORY, 3);
    let store = RedisEventStore::connect(&config).await.expect("connect");
    let balances = Balances::new(&store, "balances");
    let model = balances.model.clone();
    let runner = ProjectionRunner::connect(&store, balances, options("only"))
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    let accounts = es_core::Repository::<Account, _>::new(store.clone());
    for round in 1..=3i64 {
        for account in ["a", "b", "c", "d", "e"] {
            let done = accounts
                .execute(account, &Deposit(round))
                .await
                .expect("deposit");
            monitor
                .wait_for_executed(&done, Duration::from_secs(10))
                .await
                .expect("waited 10 s for the projection to process the deposit");
            let hash = model
                .hash(&format!("balance:{account}"))
                .await
                .expect("read model");
            let balance = hash
                .get("balance")
                .map(|value| String::from_utf8_lossy(value).into_owned());
            assert_eq!(
                balance.as_deref(),
                Some(done.state.balance.to_string().as_str()),
                "{account} after round {round}"
            );
        }
    }
    running.stop().await.expect("stop");
}

/// Fails on every event.
struct AlwaysFails;

#[async_trait::async_trait]
impl Projection for AlwaysFails {
    type Event = AccountEvent;
    type Error = StoreError;
    fn name(&self) -> &str {
        "always-fails"
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![CATEGORY.into()]
    }
    async fn handle(&self, event: &RecordedEvent<AccountEvent>) -> Result<(), StoreError> {
        Err(StoreError::InvalidRequest(format!(
            "cannot handle {}",
            event.position
        )))
    }
}

/// A dead-letter stream keeps about its bound of letters (the newest), not every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_stream_is_bounded() {
    let store = setup("dead-letter-bound").await;
    let last = append_deposits(&store, 1, 400, 2).await;
    let options = options("only")
        .max_deliveries(1)
        .dead_letter_limit(Some(100));
    let runner = ProjectionRunner::connect(&store, AlwaysFails, options)
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(20))
        .await
        .expect("every entry dead-lettered");
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(stats.dead_lettered, 400);
    let key = store.keys().dead_letters(CATEGORY, 0, "always-fails");
    let letters: usize = query(&store, redis::cmd("XLEN").arg(&key)).await;
    // `MAXLEN ~ 100` trims whole nodes of 100 entries: 100 to 199 remain.
    assert!((100..200).contains(&letters), "{letters} letters kept");
    let kept = monitor.dead_letters(CATEGORY).await.expect("dead letters");
    assert_eq!(
        kept.last().map(|l| l.position),
        Some(last),
        "the newest is kept"
    );
}
