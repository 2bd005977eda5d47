//! What the layout costs in Redis memory: 10,000 aggregates of 10 events, appended through
//! the store one event per append (each with an append id, as the repository sends them),
//! against the same entries `XADD`ed to one raw stream. The budget is 2.5×.
//!
//! A memory measurement, not a timing: it is deterministic enough to assert on. It runs on
//! a server of its own so no other test's keys are counted.

use std::sync::Arc;

use es_core::codec::Fields;
use es_core::{AppendOptions, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use es_redis::testing::RedisServer;
use es_redis::RedisConnection;

const AGGREGATES: usize = 10_000;
const EVENTS_PER_AGGREGATE: u64 = 10;
const APPENDERS: usize = 16;

/// The fields of event `version` of aggregate `aggregate`: a small, typical event.
fn item_added(aggregate: usize, version: u64) -> Vec<(&'static str, String)> {
    let n = aggregate * 31 + version as usize;
    vec![
        ("sku", format!("SKU-{:04}", n % 977)),
        ("quantity", (n % 7 + 1).to_string()),
    ]
}

async fn used_memory(connection: &mut RedisConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// `MEMORY USAGE key SAMPLES 0`: every node counted, not an estimate from a sample.
async fn memory_usage(connection: &mut RedisConnection, key: &str) -> u64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(connection)
        .await
        .expect("MEMORY USAGE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_event_is_at_most_two_and_a_half_times_a_raw_stream() {
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(server.store("es").await.expect("connect"));
    let mut admin = store.connection();
    let events = AGGREGATES as u64 * EVENTS_PER_AGGREGATE;

    // Load the append script before measuring (FLUSHALL keeps scripts).
    store
        .append(
            &StreamId::new("warmup", "x"),
            ExpectedVersion::Any,
            vec![NewEvent {
                event_type: "Warm".into(),
                fields: Fields::new(),
                metadata: Metadata::default(),
            }],
            &AppendOptions::with_append_id("warmup"),
        )
        .await
        .expect("warm-up append");
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut admin)
        .await
        .expect("FLUSHALL");

    let before = used_memory(&mut admin).await;
    for version in 0..EVENTS_PER_AGGREGATE {
        let appenders: Vec<_> = (0..APPENDERS)
            .map(|appender| {
                let store = store.clone();
                tokio::spawn(async move {
                    for aggregate in (appender..AGGREGATES).step_by(APPENDERS) {
                        let event = NewEvent {
                            event_type: "ItemAdded".into(),
                            fields: item_added(aggregate, version + 1).into_iter().collect(),
                            metadata: Metadata::default(),
                        };
                        let options = AppendOptions::with_append_id(format!(
                            "{aggregate:x}-{version:x}-{appender:x}"
                        ));
                        store
                            .append(
                                &StreamId::new("cart", format!("cart-{aggregate}")),
                                ExpectedVersion::Exact(version),
                                vec![event],
                                &options,
                            )
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for appender in appenders {
            appender.await.expect("appender");
        }
    }
    let layout = used_memory(&mut admin).await - before;
    let category_stream = memory_usage(&mut admin, &store.keys().category_stream("cart")).await;

    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut admin)
        .await
        .expect("FLUSHALL");
    let before = used_memory(&mut admin).await;
    for version in 1..=EVENTS_PER_AGGREGATE {
        for batch in (0..AGGREGATES).collect::<Vec<_>>().chunks(1_000) {
            let mut pipeline = redis::pipe();
            for &aggregate in batch {
                let command = pipeline.cmd("XADD").arg("raw").arg("*");
                command.arg("type").arg("ItemAdded");
                command.arg("aggregate_id").arg(format!("cart-{aggregate}"));
                command.arg("version").arg(version);
                for (name, value) in item_added(aggregate, version) {
                    command.arg(name).arg(value);
                }
                command.ignore();
            }
            let _: () = pipeline.query_async(&mut admin).await.expect("XADD");
        }
    }
    let raw = used_memory(&mut admin).await - before;
    let raw_stream = memory_usage(&mut admin, "raw").await;

    let ratio = layout as f64 / raw as f64;
    println!(
        "{AGGREGATES} aggregates x {EVENTS_PER_AGGREGATE} events (used_memory deltas): \
         es-redis layout {layout} bytes = {:.1} B/event; raw stream {raw} bytes = {:.1} B/event; \
         ratio {ratio:.2}. MEMORY USAGE SAMPLES 0: category stream {category_stream} B, \
         raw stream {raw_stream} B",
        layout as f64 / events as f64,
        raw as f64 / events as f64,
    );
    assert!(
        ratio <= 2.5,
        "the layout costs {ratio:.2}x a raw stream (budget 2.5x)"
    );
}
