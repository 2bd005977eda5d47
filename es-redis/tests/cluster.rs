//! The Redis backend on a real local Redis Cluster (three masters, started by the test):
//! the conformance suite with one partition per category and with partitioned categories,
//! partitioned category reads, consumer-group projections over every partition and over
//! categories in several slots (with a dead letter), and the partitions of a category
//! spread over every master.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{
    AppendOptions, Event, EventStore, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent,
    StoreError, StreamId,
};
use es_redis::testing::{unique_namespace, RedisCluster};
use es_redis::{ProjectionMonitor, RedisConfig, RedisEventStore};

fn cluster() -> &'static RedisCluster {
    RedisCluster::shared().unwrap_or_else(|e| panic!("{e}"))
}

/// The conformance categories in partitions: `user` in 6, `account` in 3, `counter` (the
/// repository case) in 4.
fn partitioned(namespace: &str) -> RedisConfig {
    cluster()
        .config(namespace)
        .partitions("user", 6)
        .partitions("account", 3)
        .partitions("counter", 4)
}

async fn connect(config: &RedisConfig) -> RedisEventStore {
    RedisEventStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"))
}

/// Every conformance case, each category in one slot (the single-node layout).
mod unpartitioned {
    use super::*;

    es_core::conformance_tests!(|| async {
        connect(&cluster().config(&unique_namespace("conformance"))).await
    });
}

/// Every conformance case on partitioned categories: category reads are checked per
/// partition, as `EventStore::read_category` documents for them.
mod partitioned {
    use super::*;

    es_core::conformance_tests!(|| async {
        connect(&partitioned(&unique_namespace("conformance-p"))).await
    });
}

/// Personal data on partitioned categories: the keys hash lives in a slot of its own.
mod personal_data {
    use super::*;

    es_core::personal_data_tests!(|| async {
        let store = connect(&partitioned(&unique_namespace("personal"))).await;
        let keys = es_redis::RedisKeys::new(&store);
        (store, keys)
    });
}

const CATEGORY: &str = "user";
const PARTITIONS: u32 = 6;

#[derive(Event, Debug, Clone, PartialEq)]
struct Deposited {
    amount: i64,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserEvent {
    Deposited(Deposited),
}

fn deposit(amount: i64) -> NewEvent {
    NewEvent::encode(&Deposited { amount }, Metadata::default()).expect("encode")
}

/// Appends deposits 1..=`count`, deposit `n` to user `u-<n % users>`, in appends of up
/// to 5 events per user; returns each user's deposits and every append's last position.
async fn append_deposits(
    store: &RedisEventStore,
    count: i64,
    users: i64,
) -> (BTreeMap<String, Vec<i64>>, Vec<(StreamId, Position)>) {
    let mut by_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for n in 1..=count {
        by_user
            .entry(format!("u-{}", n % users))
            .or_default()
            .push(n);
    }
    let mut appended = Vec::new();
    for (user, amounts) in &by_user {
        let stream = StreamId::new(CATEGORY, user.clone());
        for chunk in amounts.chunks(5) {
            let written = store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    chunk.iter().copied().map(deposit).collect(),
                    &AppendOptions::default(),
                )
                .await
                .expect("append");
            appended.push((
                stream.clone(),
                *written.positions.last().expect("positions"),
            ));
        }
    }
    (by_user, appended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_category_reads_every_event_once_in_partition_order() {
    let config = partitioned(&unique_namespace("read-category"));
    let store = connect(&config).await;
    let (by_user, _) = append_deposits(&store, 300, 40).await;

    // Paged across partitions with the smallest allowed page: every event exactly once,
    // each user's in version order, positions never decreasing.
    let mut read = Vec::new();
    let mut after = Position::ZERO;
    loop {
        let page = store
            .read_category(CATEGORY, after, PARTITIONS as usize)
            .await
            .expect("read");
        assert!(page.len() <= PARTITIONS as usize);
        let Some(last) = page.last() else { break };
        after = last.position;
        read.extend(page);
    }
    assert_eq!(read.len(), 300);
    assert!(read.windows(2).all(|w| w[0].position <= w[1].position));
    let mut read_by_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for event in &read {
        let UserEvent::Deposited(Deposited { amount }) =
            event.clone().decode::<UserEvent>().expect("decode").event;
        let amounts = read_by_user.entry(event.stream.id.clone()).or_default();
        assert_eq!(event.version, amounts.len() as u64 + 1, "{}", event.stream);
        amounts.push(amount);
    }
    assert_eq!(read_by_user, by_user);

    // One partition: exactly its users' events, in strictly increasing positions.
    let keys = store.keys();
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let events = store
            .read_partition(CATEGORY, partition, Position::ZERO, 1_000)
            .await
            .expect("read partition");
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        assert!(events
            .iter()
            .all(|e| keys.partition_of(&e.stream) == partition));
        total += events.len();
    }
    assert_eq!(total, 300);

    let error = store
        .read_category(CATEGORY, Position::ZERO, 5)
        .await
        .expect_err("a page smaller than the partition count");
    assert!(matches!(error, StoreError::InvalidRequest(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_partitions_land_on_all_three_masters() {
    let namespace = unique_namespace("spread");
    let config = cluster()
        .config(&namespace)
        .partitions(CATEGORY, PARTITIONS);
    let store = connect(&config).await;
    append_deposits(&store, 120, 60).await;

    // Ask each master which of the category's streams it holds.
    let mut streams_by_node: Vec<Vec<String>> = Vec::new();
    for url in cluster().urls() {
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut node = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a node");
        let mut held = Vec::new();
        for key in store.keys().category_streams(CATEGORY) {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut node)
                .await
                .expect("CLUSTER KEYSLOT");
            let here: u64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query_async(&mut node)
                .await
                .expect("CLUSTER COUNTKEYSINSLOT");
            let owned: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(here.max(1))
                .query_async(&mut node)
                .await
                .expect("CLUSTER GETKEYSINSLOT");
            if owned.contains(&key) {
                held.push(key);
            }
        }
        streams_by_node.push(held);
    }
    assert_eq!(streams_by_node.len(), RedisCluster::MASTERS);
    assert!(
        streams_by_node.iter().all(|held| !held.is_empty()),
        "every master holds a partition: {streams_by_node:?}"
    );
    let all: HashSet<&String> = streams_by_node.iter().flatten().collect();
    assert_eq!(all.len(), PARTITIONS as usize, "{streams_by_node:?}");

    // Each user's index and snapshot live in the slot of its partition's stream.
    let mut connection = store.connection();
    for n in 0..60 {
        let stream = StreamId::new(CATEGORY, format!("u-{n}"));
        let mut slots = HashSet::new();
        for key in [
            store.keys().aggregate_stream(&stream),
            store.keys().index(&stream),
            store.keys().snapshot(&stream),
        ] {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .expect("CLUSTER KEYSLOT");
            slots.insert(slot);
        }
        assert_eq!(slots.len(), 1, "{stream}: {slots:?}");
    }
}

/// Balances per user in a [`ReadModel`]; records every position it handled.
#[derive(Clone)]
struct Balances {
    model: ReadModel,
    handled: Arc<Mutex<Vec<(StreamId, Position)>>>,
}

#[async_trait::async_trait]
impl Projection for Balances {
    type Event = UserEvent;
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

    async fn handle(&self, event: &RecordedEvent<UserEvent>) -> Result<(), StoreError> {
        let UserEvent::Deposited(deposit) = &event.event;
        let hash = format!("balance:{}", event.stream.id);
        let _ = self
            .model
            .update(event)
            .hincrby(&hash, "balance", deposit.amount)
            .hincrby(&hash, "deposits", 1)
            .commit()
            .await?;
        self.handled
            .lock()
            .unwrap()
            .push((event.stream.clone(), event.position));
        Ok(())
    }
}

fn options(consumer: &str) -> ProjectionOptions {
    ProjectionOptions::new(consumer)
        .batch_size(50)
        .block(Duration::from_millis(100))
        .claim_idle(Duration::from_secs(60))
        .claim_interval(Duration::from_millis(200))
}

/// Every user's expected `balance` and `deposits`.
fn expected_balances(by_user: &BTreeMap<String, Vec<i64>>) -> BTreeMap<String, (i64, i64)> {
    by_user
        .iter()
        .map(|(user, amounts)| {
            (
                format!("balance:{user}"),
                (amounts.iter().sum(), amounts.len() as i64),
            )
        })
        .collect()
}

async fn read_balances(model: &ReadModel) -> BTreeMap<String, (i64, i64)> {
    let number = |fields: &BTreeMap<String, Vec<u8>>, name: &str| -> i64 {
        String::from_utf8_lossy(&fields[name]).parse().expect(name)
    };
    model
        .hashes()
        .await
        .expect("read model")
        .into_iter()
        .map(|(name, fields)| {
            let values = (number(&fields, "balance"), number(&fields, "deposits"));
            (name, values)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_handle_every_event_of_every_partition_once() {
    let config = cluster()
        .config(&unique_namespace("project"))
        .partitions(CATEGORY, PARTITIONS);
    let store = connect(&config).await;
    let (by_user, appended) = append_deposits(&store, 1_200, 48).await;
    let projection = Balances {
        model: store.read_model("balances"),
        handled: Arc::default(),
    };
    let runner_a = ProjectionRunner::connect(&store, projection.clone(), options("a"))
        .await
        .expect("runner a");
    let runner_b = ProjectionRunner::connect(&store, projection.clone(), options("b"))
        .await
        .expect("runner b");
    let monitor = ProjectionMonitor::of(&store, runner_a.projection());
    let (a, b) = (runner_a.spawn(), runner_b.spawn());
    // Wait for the last append of every partition's last user.
    let mut last_of_partition: HashMap<u32, Position> = HashMap::new();
    for (stream, position) in &appended {
        let partition = store.keys().partition_of(stream);
        let last = last_of_partition.entry(partition).or_insert(*position);
        *last = (*last).max(*position);
    }
    assert_eq!(last_of_partition.len(), PARTITIONS as usize);
    let newest = *last_of_partition.values().max().expect("positions");
    monitor
        .wait_for(CATEGORY, newest, Duration::from_secs(30))
        .await
        .expect("every partition caught up");
    let (_, stats_a) = a.stop().await.expect("stop");
    let (_, stats_b) = b.stop().await.expect("stop");

    let handled = projection.handled.lock().unwrap().clone();
    let distinct: HashSet<(String, Position)> = handled
        .iter()
        .map(|(stream, position)| (stream.id.clone(), *position))
        .collect();
    assert_eq!(handled.len(), 1_200, "every event handled");
    assert_eq!(distinct.len(), 1_200, "and only once");
    assert_eq!(stats_a.handled + stats_b.handled, 1_200);
    assert_eq!(
        read_balances(&projection.model).await,
        expected_balances(&by_user)
    );
    assert_eq!(
        projection
            .model
            .applied_count(CATEGORY)
            .await
            .expect("applied"),
        1_200
    );

    let statuses = monitor.status().await.expect("status");
    assert_eq!(statuses.len(), PARTITIONS as usize);
    for status in &statuses {
        assert!(status.exists, "{status:?}");
        assert_eq!((status.pending, status.lag), (0, Some(0)), "{status:?}");
        assert_eq!(
            status.last_delivered, last_of_partition[&status.partition],
            "{status:?}"
        );
    }
    let summary = monitor.category_status(CATEGORY).await.expect("summary");
    assert!(summary.has_processed(newest), "{summary:?}");
    assert_eq!((summary.pending, summary.lag), (0, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_position_covers_every_partition() {
    let config = cluster()
        .config(&unique_namespace("wait"))
        .partitions(CATEGORY, PARTITIONS);
    let store = connect(&config).await;
    let projection = Balances {
        model: store.read_model("balances"),
        handled: Arc::default(),
    };
    let runner = ProjectionRunner::connect(&store, projection.clone(), options("w"))
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let (by_user, appended) = append_deposits(&store, 60, 12).await;
    let newest = appended.iter().map(|(_, p)| *p).max().expect("appended");

    // Nothing runs yet: the wait times out, naming the projection.
    let error = monitor
        .wait_for(CATEGORY, newest, Duration::from_millis(200))
        .await
        .expect_err("no runner yet");
    assert!(matches!(error, es_redis::Error::WaitTimeout(_)), "{error}");

    let running = runner.spawn();
    // Read-your-writes: once the wait returns, every user's deposits are in the model.
    monitor
        .wait_for(CATEGORY, newest, Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(
        read_balances(&projection.model).await,
        expected_balances(&by_user)
    );

    // A later append to one user: waiting for its position sees it applied.
    let stream = StreamId::new(CATEGORY, "u-late");
    let written = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![deposit(7)],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    monitor
        .wait_for(CATEGORY, written.positions[0], Duration::from_secs(20))
        .await
        .expect("caught up with the late append");
    let late = projection.model.hash("balance:u-late").await.expect("hash");
    assert_eq!(late.get("balance").map(Vec::as_slice), Some(&b"7"[..]));
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(stats.handled, 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replays_every_partition_into_a_cleared_read_model() {
    let config = cluster()
        .config(&unique_namespace("rebuild"))
        .partitions(CATEGORY, PARTITIONS);
    let store = connect(&config).await;
    let (by_user, appended) = append_deposits(&store, 90, 18).await;
    let newest = appended.iter().map(|(_, p)| *p).max().expect("appended");
    let projection = Balances {
        model: store.read_model("balances"),
        handled: Arc::default(),
    };
    let runner = ProjectionRunner::connect(&store, projection.clone(), options("r"))
        .await
        .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, newest, Duration::from_secs(20))
        .await
        .expect("first run");
    let (runner, _) = running.stop().await.expect("stop");
    assert_eq!(
        read_balances(&projection.model).await,
        expected_balances(&by_user)
    );

    // The read-model keys live on one master; rebuild finds and deletes them there.
    runner.rebuild().await.expect("rebuild");
    assert!(projection.model.hashes().await.expect("hashes").is_empty());
    assert_eq!(
        projection
            .model
            .applied_count(CATEGORY)
            .await
            .expect("applied"),
        0
    );
    assert!(!monitor
        .category_status(CATEGORY)
        .await
        .expect("status")
        .has_processed(newest));

    let running = runner.spawn();
    monitor
        .wait_for(CATEGORY, newest, Duration::from_secs(20))
        .await
        .expect("replay");
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(stats.handled, 90);
    assert_eq!(
        read_balances(&projection.model).await,
        expected_balances(&by_user)
    );
}

/// Sums deposits of `user` and `account` into one hash per category; fails on one amount.
#[derive(Clone)]
struct Totals {
    model: ReadModel,
    fail_on: i64,
}

#[async_trait::async_trait]
impl Projection for Totals {
    type Event = UserEvent;
    type Error = StoreError;

    fn name(&self) -> &str {
        self.model.projection()
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }

    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![CATEGORY.into(), "account".into()]
    }

    async fn handle(&self, event: &RecordedEvent<UserEvent>) -> Result<(), StoreError> {
        let UserEvent::Deposited(deposit) = &event.event;
        if deposit.amount == self.fail_on {
            return Err(StoreError::InvalidRequest(format!(
                "cannot take {}",
                deposit.amount
            )));
        }
        let _ = self
            .model
            .update(event)
            .hincrby(
                &format!("total:{}", event.stream.category),
                "sum",
                deposit.amount,
            )
            .commit()
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_over_categories_in_many_slots_dead_letters_in_the_partition() {
    let config = cluster()
        .config(&unique_namespace("slots"))
        .partitions(CATEGORY, PARTITIONS);
    let store = connect(&config).await;
    let (by_user, _) = append_deposits(&store, 60, 12).await;
    let mut newest_account = Position::ZERO;
    for n in 1..=10 {
        let written = store
            .append(
                &StreamId::new("account", format!("a-{}", n % 3)),
                ExpectedVersion::Any,
                vec![deposit(n * 1_000)],
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        newest_account = written.positions[0];
    }
    // Deposit 13 went to user `u-1`: its handler always fails.
    let poison = store
        .read_stream(&StreamId::new(CATEGORY, "u-1"), &es_core::ReadRange::all())
        .await
        .expect("read")
        .into_iter()
        .find(|e| e.event.get("amount") == Some(&b"13"[..]))
        .expect("deposit 13");
    let projection = Totals {
        model: store.read_model("totals"),
        fail_on: 13,
    };
    let runner =
        ProjectionRunner::connect(&store, projection.clone(), options("s").max_deliveries(1))
            .await
            .expect("runner");
    let monitor = ProjectionMonitor::of(&store, runner.projection());
    let running = runner.spawn();
    let newest_user = store
        .read_category(CATEGORY, Position::ZERO, 1_000)
        .await
        .expect("read")
        .last()
        .expect("events")
        .position;
    for (category, newest) in [(CATEGORY, newest_user), ("account", newest_account)] {
        monitor
            .wait_for(category, newest, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{category}: {e}"));
    }
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!((stats.handled, stats.dead_lettered), (69, 1), "{stats:?}");

    let letters = monitor.dead_letters(CATEGORY).await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].position, poison.position);
    assert!(letters[0].error.contains("cannot take 13"), "{letters:?}");
    // The dead letter sits in the poison entry's partition, beside its stream.
    let partition = store.keys().partition_of(&poison.stream);
    let length: u64 = redis::cmd("XLEN")
        .arg(store.keys().dead_letters(CATEGORY, partition, "totals"))
        .query_async(&mut store.connection())
        .await
        .expect("XLEN");
    assert_eq!(length, 1);

    let user_sum: i64 = by_user.values().flatten().sum::<i64>() - 13;
    let totals = projection.model.hashes().await.expect("read model");
    let sum = |name: &str| String::from_utf8_lossy(&totals[name]["sum"]).parse::<i64>();
    assert_eq!(sum("total:user"), Ok(user_sum));
    assert_eq!(sum("total:account"), Ok((1..=10).map(|n| n * 1_000).sum()));
}

/// The projection conformance suite on the cluster, each category in one slot.
mod projections_unpartitioned {
    use super::*;

    es_core::projection_conformance_tests!(|| async {
        connect(&cluster().config(&unique_namespace("projection-conformance"))).await
    });
}

/// The projection conformance suite on partitioned categories: every partition stream is
/// read by the projection's consumer group.
mod projections_partitioned {
    use super::*;

    es_core::projection_conformance_tests!(|| async {
        connect(&partitioned(&unique_namespace("projection-conformance-p"))).await
    });
}
