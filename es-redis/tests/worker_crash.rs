//! Reliability scenario 2: a projection worker running in a child process is killed with
//! SIGKILL while it holds unacknowledged entries; another worker in the group finishes, and
//! the read model equals a clean replay with no event applied twice.
//!
//! The child is this same test binary, re-run with `ES_WORKER_*` variables set, so the
//! worker is real separate-process code, not a simulation.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{
    AppendOptions, Event, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::{ProjectionMonitor, RedisConfig, RedisEventStore};

const CATEGORY: &str = "meter";
const PROJECTION: &str = "meter_totals";
const EVENTS: u64 = 1_500;
/// How many events the doomed worker handles before it hangs mid-batch.
const STALL_AFTER: u64 = 120;
const METERS: u64 = 15;

#[derive(Event, Debug, Clone, PartialEq)]
struct Reading {
    units: u64,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum MeterEvent {
    Reading(Reading),
}

/// Per meter: how many readings were applied and their sum. A double-applied event shows
/// as a count above the number of readings.
struct Totals {
    read_model: ReadModel,
    delay: Duration,
    /// After handling this many events, the next handler call never returns: the worker
    /// is then certainly mid-batch, holding unacknowledged entries, when it is killed.
    stall_after: Option<u64>,
    handled: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Projection for Totals {
    type Event = MeterEvent;
    type Error = es_core::StoreError;
    fn name(&self) -> &str {
        self.read_model.projection()
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.read_model)
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![CATEGORY.into()]
    }
    async fn handle(&self, event: &RecordedEvent<MeterEvent>) -> Result<(), Self::Error> {
        let handled = self
            .handled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.stall_after.is_some_and(|limit| handled >= limit) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        let MeterEvent::Reading(reading) = &event.event;
        let hash = format!("meter:{}", event.stream.id);
        // `AlreadyApplied` on a re-delivery: nothing changes, which is the point.
        let _applied = self
            .read_model
            .update(event)
            .hincrby(&hash, "count", 1)
            .hincrby(&hash, "units", reading.units as i64)
            .commit()
            .await?;
        Ok(())
    }
}

async fn runner(
    config: &RedisConfig,
    consumer: &str,
    delay: Duration,
    stall_after: Option<u64>,
) -> ProjectionRunner<Totals> {
    let store = RedisEventStore::connect(config).await.expect("connect");
    let projection = Totals {
        read_model: store.read_model(PROJECTION),
        delay,
        stall_after,
        handled: Default::default(),
    };
    let options = ProjectionOptions::new(consumer)
        .batch_size(50)
        .block(Duration::from_millis(100))
        .claim_idle(Duration::from_millis(500))
        .claim_interval(Duration::from_millis(200));
    ProjectionRunner::connect(&store, projection, options)
        .await
        .expect("runner")
}

/// The child process's body (the crash test runs it in a process of its own): a worker that
/// handles `STALL_AFTER` events, then hangs mid-batch until it is killed.
#[test]
#[ignore = "a subprocess entry point, run by the worker-crash test"]
fn child_worker() {
    let (Ok(url), Ok(namespace)) = (
        std::env::var("ES_WORKER_URL"),
        std::env::var("ES_WORKER_NAMESPACE"),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let config = RedisConfig::new(url).namespace(namespace);
        let worker = runner(&config, "doomed", Duration::ZERO, Some(STALL_AFTER)).await;
        let _ = worker.run(std::future::pending()).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_is_finished_by_another_without_double_applying() {
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let config = server.config(&unique_namespace("worker-crash"));
    let store = RedisEventStore::connect(&config).await.expect("connect");
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut last = es_core::Position::ZERO;
    for i in 0..EVENTS {
        let meter = format!("m{}", i % METERS);
        let units = i * 3 % 17 + 1;
        let entry = expected.entry(meter.clone()).or_default();
        entry.0 += 1;
        entry.1 += units;
        let event = NewEvent::encode(&Reading { units }, Metadata::default()).expect("encode");
        last = store
            .append(
                &StreamId::new(CATEGORY, meter),
                ExpectedVersion::Any,
                vec![event],
                &AppendOptions::default(),
            )
            .await
            .expect("append")
            .positions[0];
    }

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_worker",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ES_WORKER_URL", server.url())
        .env("ES_WORKER_NAMESPACE", config.keys().namespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the worker process");

    // Let it apply some events, then kill it while it holds a batch.
    let read_model = store.read_model(PROJECTION);
    let started = Instant::now();
    loop {
        let applied = read_model
            .applied_count(CATEGORY)
            .await
            .expect("applied count");
        if applied >= STALL_AFTER {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited 30 s for the worker process to apply {STALL_AFTER} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL the worker");
    child.wait().expect("reap the worker");
    let monitor = ProjectionMonitor::new(store.clone(), PROJECTION, [CATEGORY]);
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert!(
        status.pending > 0,
        "the killed worker held unacknowledged entries: {status:?}"
    );
    let applied_at_kill = read_model
        .applied_count(CATEGORY)
        .await
        .expect("applied count");
    assert!(applied_at_kill < EVENTS, "killed before the end");

    // A second worker in the group reclaims and finishes.
    let survivor = runner(&config, "survivor", Duration::ZERO, None)
        .await
        .spawn();
    monitor
        .wait_for(CATEGORY, last, Duration::from_secs(60))
        .await
        .expect("the survivor finishes");
    let (_, stats) = survivor.stop().await.expect("run");
    assert!(
        stats.claimed > 0,
        "the survivor reclaimed the dead worker's entries: {stats:?}"
    );
    let status = monitor.category_status(CATEGORY).await.expect("status");
    assert_eq!(status.pending, 0, "{status:?}");

    let hashes = read_model.hashes().await.expect("read model");
    for (meter, (count, units)) in &expected {
        let hash = hashes
            .get(&format!("meter:{meter}"))
            .unwrap_or_else(|| panic!("no totals for {meter}"));
        let field = |name: &str| -> u64 {
            String::from_utf8_lossy(hash.get(name).map(Vec::as_slice).unwrap_or(b"0"))
                .parse()
                .expect("number")
        };
        assert_eq!(
            (field("count"), field("units")),
            (*count, *units),
            "{meter}: equals a clean replay, nothing applied twice"
        );
    }
}
