//! Replicated durability (`RedisConfig::wait_for_replicas`) with a real replica on
//! loopback: acknowledged appends survive killing the primary and promoting the replica,
//! and an append no replica acknowledged is an outcome-unknown error that a re-send with
//! the same append id completes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use es_core::{
    AppendOptions, EventStore, ExpectedVersion, Metadata, NewEvent, ReadRange, StoreError, StreamId,
};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::{RedisConfig, RedisEventStore};

fn numbered(n: usize) -> NewEvent {
    NewEvent {
        event_type: "Numbered".into(),
        fields: [("n", n.to_string())].into_iter().collect(),
        metadata: Metadata::default(),
    }
}

async fn query(url: &str, command: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    command.query_async(&mut connection).await
}

/// A replica of `primary`, once its link to it is up.
async fn replica_of(primary: &RedisServer) -> RedisServer {
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).expect("replica");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = query(&replica.url(), redis::cmd("INFO").arg("replication")).await;
        if info_says_up(&info) {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "the replica's link to its primary did not come up: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn info_says_up(info: &redis::RedisResult<redis::Value>) -> bool {
    match info {
        Ok(redis::Value::BulkString(text)) => {
            String::from_utf8_lossy(text).contains("master_link_status:up")
        }
        Ok(redis::Value::VerbatimString { text, .. }) => text.contains("master_link_status:up"),
        _ => false,
    }
}

fn config(server: &RedisServer, namespace: &str) -> RedisConfig {
    server
        .config(namespace)
        .wait_for_replicas(1, Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_killing_the_primary_and_promoting_its_replica() {
    let mut primary = RedisServer::start().expect("primary");
    let replica = replica_of(&primary).await;
    let namespace = unique_namespace("failover");
    let store = RedisEventStore::connect(&config(&primary, &namespace))
        .await
        .expect("connect");

    // Writers append until the primary dies; each keeps what was acknowledged.
    let acknowledged: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (store, acknowledged, count) = (store.clone(), acknowledged.clone(), count.clone());
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in 0.. {
                assert!(Instant::now() < deadline, "writer {w} never stopped");
                let id = format!("w{w}");
                let stream = StreamId::new("meter", id.clone());
                let options = AppendOptions::with_append_id(format!("{id}-{n}"));
                match store
                    .append(&stream, ExpectedVersion::Any, vec![numbered(n)], &options)
                    .await
                {
                    Ok(written) => {
                        acknowledged.lock().unwrap().push((id, written.version, n));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(StoreError::Connection { .. }) => return,
                    Err(other) => panic!("writer {w}: {other}"),
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::SeqCst) < 400 {
        assert!(
            Instant::now() < deadline,
            "awaited 400 acknowledged appends, got {}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    primary.kill();
    for writer in writers {
        writer.await.expect("writer");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 400);

    // Fail over: the replica becomes the primary, and holds every acknowledged append.
    query(&replica.url(), redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
        .await
        .expect("promote the replica");
    let promoted = RedisEventStore::connect(&replica.config(&namespace))
        .await
        .expect("connect to the promoted replica");
    let mut missing = Vec::new();
    for (id, version, n) in &acknowledged {
        let events = promoted
            .read_stream(
                &StreamId::new("meter", id.clone()),
                &ReadRange::all().from_version(*version).to_version(*version),
            )
            .await
            .expect("read");
        let found = events
            .first()
            .and_then(|e| e.event.get("n"))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if found != Some(n.to_string()) {
            missing.push((id.clone(), *version, *n, found));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged appends are not on the promoted replica: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_no_replica_acknowledged_is_outcome_unknown_until_a_resend_completes_it() {
    let primary = RedisServer::start().expect("primary");
    let namespace = unique_namespace("unreplicated");
    let store = RedisEventStore::connect(
        &primary
            .config(&namespace)
            .wait_for_replicas(1, Duration::from_millis(100)),
    )
    .await
    .expect("connect");
    let stream = StreamId::new("meter", "m1");
    let options = AppendOptions::with_append_id("first");
    let unknown = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![numbered(1)],
            &options,
        )
        .await
        .expect_err("no replica acknowledges");
    assert!(
        matches!(unknown, StoreError::Connection { .. }) && unknown.is_retryable(),
        "{unknown}"
    );
    assert!(unknown.to_string().contains("0 of 1 replica"), "{unknown}");
    // A conflict wrote nothing, so it stays a conflict: only written appends wait.
    let conflict = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![numbered(2)],
            &AppendOptions::with_append_id("second"),
        )
        .await
        .expect_err("the stream exists");
    assert!(
        matches!(conflict, StoreError::Conflict(ref c) if c.actual == 1),
        "{conflict}"
    );
    // Applied on the primary all the same: the outcome is unknown, not a failure.
    let stored = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(stored.len(), 1);

    // With a replica attached, the re-send returns the first result and writes nothing.
    let _replica = replica_of(&primary).await;
    let resent = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![numbered(1)],
            &options,
        )
        .await
        .expect("the re-send completes");
    assert_eq!(resent.version, 1);
    assert_eq!(resent.positions, vec![stored[0].position]);
    let stored = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    assert_eq!(stored.len(), 1, "written once");
}

#[test]
fn a_replica_timeout_under_a_millisecond_is_refused() {
    let config = RedisConfig::new("redis://127.0.0.1:1").wait_for_replicas(1, Duration::ZERO);
    let error = config.validate().expect_err("WAIT 1 0 waits forever");
    assert!(error.to_string().contains("waits forever"), "{error}");
}
