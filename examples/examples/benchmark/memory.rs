//! P7: memory per event.

use es_core::{AppendOptions, EventStore, ExpectedVersion, StreamId};
use es_redis::testing::RedisServer;
use redis::aio::ConnectionManager;

use crate::common::*;

pub(crate) async fn used_memory(connection: &mut ConnectionManager) -> Result<u64, BoxError> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| "no used_memory in INFO memory".into())
}

/// P7: Redis memory per stored event, 10,000 aggregates × 10 events appended one per append
/// with an append id (as the repository appends), against the same entries in one raw
/// stream; on a server of its own so nothing else is counted.
pub(crate) async fn p7_memory(sizes: &Sizes) -> Result<Row, BoxError> {
    const EVENTS_PER_AGGREGATE: u64 = 10;
    let server = RedisServer::start()?;
    let store = server.store("es").await?;
    let mut admin = server.config("es").connect().await?;
    let aggregates = sizes.p7_aggregates;
    let events = aggregates as u64 * EVENTS_PER_AGGREGATE;
    // Load the append script, then start from an empty database (FLUSHALL keeps scripts).
    store
        .append(
            &StreamId::new("warmup", "x"),
            ExpectedVersion::Any,
            vec![new_event(0)?],
            &AppendOptions::with_append_id("warmup"),
        )
        .await?;
    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut admin)
        .await?;

    let before = used_memory(&mut admin).await?;
    for version in 0..EVENTS_PER_AGGREGATE {
        let store = store.clone();
        concurrently(CONCURRENCY, aggregates / CONCURRENCY, move |task, i| {
            let store = store.clone();
            async move {
                let aggregate = i * CONCURRENCY + task;
                let n = aggregate as u64 * 31 + version;
                store
                    .append(
                        &StreamId::new("cart", format!("cart-{aggregate}")),
                        ExpectedVersion::Exact(version),
                        vec![new_event(n)?],
                        &AppendOptions::with_append_id(format!("{aggregate:x}-{version:x}")),
                    )
                    .await?;
                Ok(())
            }
        })
        .await?;
    }
    let layout = used_memory(&mut admin).await? - before;

    let _: () = redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async(&mut admin)
        .await?;
    let before = used_memory(&mut admin).await?;
    for version in 0..EVENTS_PER_AGGREGATE {
        for chunk in (0..aggregates).collect::<Vec<_>>().chunks(1_000) {
            let mut pipeline = redis::pipe();
            for &aggregate in chunk {
                let n = aggregate as u64 * 31 + version;
                let mut command = redis::cmd("XADD");
                command.arg("raw").arg("*");
                raw_entry(&mut command, &format!("cart-{aggregate}"), version + 1, n);
                pipeline.add_command(command).ignore();
            }
            let _: () = pipeline.query_async(&mut admin).await?;
        }
    }
    let raw = used_memory(&mut admin).await? - before;
    let per_event = |bytes: u64| bytes as f64 / events as f64;
    Ok(Row {
        id: "P7",
        what: format!(
            "memory per event, {} aggregates × 10 events",
            thousands(aggregates as f64)
        ),
        framework: format!("{:.1} B/event", per_event(layout)),
        raw: format!("{:.1} B/event (one stream)", per_event(raw)),
        ratio: Some(layout as f64 / raw as f64),
        ratio_means: "×",
        target: Target::AtMost(2.5),
    })
}
