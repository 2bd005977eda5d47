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
/// stream; on a server of its own so nothing else is counted. A second row keeps tail
/// copies (`RedisConfig::tail_copies`), the faster cold loads' cost in memory.
pub(crate) async fn p7_memory(sizes: &Sizes) -> Result<Vec<Row>, BoxError> {
    let server = RedisServer::start()?;
    let mut admin = server.config("es").connect().await?;
    let aggregates = sizes.p7_aggregates;
    let events = aggregates as u64 * EVENTS_PER_AGGREGATE;
    let layout = layout_bytes(&mut admin, server.config("es"), aggregates).await?;
    let with_copies = layout_bytes(
        &mut admin,
        server.config("es").tail_copies(TAIL_COPIES),
        aggregates,
    )
    .await?;

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
    let row = |id, what: String, bytes: u64, target| Row {
        id,
        what,
        framework: format!("{:.1} B/event", per_event(bytes)),
        raw: format!("{:.1} B/event (one stream)", per_event(raw)),
        ratio: Some(bytes as f64 / raw as f64),
        ratio_means: "×",
        target,
    };
    Ok(vec![
        row(
            "P7",
            format!(
                "memory per event, {} aggregates × 10 events",
                thousands(aggregates as f64)
            ),
            layout,
            Target::AtMost(2.5),
        ),
        row(
            "P7 tail copies",
            format!(
                "the same with `tail_copies({TAIL_COPIES})`: every event also copied (no snapshots)"
            ),
            with_copies,
            Target::None,
        ),
    ])
}

const EVENTS_PER_AGGREGATE: u64 = 10;

/// Redis memory taken by `aggregates` × 10 events appended through a store with `config`,
/// from an empty database.
async fn layout_bytes(
    admin: &mut ConnectionManager,
    config: es_redis::RedisConfig,
    aggregates: usize,
) -> Result<u64, BoxError> {
    let store = es_redis::RedisEventStore::connect(&config).await?;
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
        .query_async(admin)
        .await?;
    let before = used_memory(admin).await?;
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
    Ok(used_memory(admin).await? - before)
}
