//! P3: commands through the repository, hot (from its cache) and cold (loaded each time).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use es_core::{Repository, SnapshotPolicy};
use es_redis::RedisEventStore;
use redis::aio::ConnectionManager;
use redis::Value;

use crate::common::*;

/// P3: the repository's round trip (load with snapshot + handle + append, a snapshot every
/// 100 events), 50 aggregates at once. The raw baseline does the same work by hand on a
/// stream per aggregate: HGETALL the state hash, XRANGE the events after it, XADD the new
/// event, and HSET the state every 100 events.
pub(crate) async fn p3_commands(
    sizes: &Sizes,
    store: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Vec<Row>, BoxError> {
    let commands = CONCURRENCY * sizes.p3_commands;
    let repository = Arc::new(
        Repository::<Cart, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(SNAPSHOT_EVERY)),
    );
    let mut best: Option<(f64, Vec<Duration>)> = None;
    let mut best_raw: Option<(f64, Vec<Duration>)> = None;
    for round in 0..sizes.rounds {
        let repo = repository.clone();
        let (elapsed, latencies) = concurrently(CONCURRENCY, sizes.p3_commands, move |task, i| {
            let repo = repo.clone();
            async move {
                let command = AddItems {
                    count: 1,
                    seed: i as u64,
                };
                repo.execute(&format!("p3-{round}-{task}"), &command)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
        })
        .await?;
        let rate = per_second(commands, elapsed);
        if best.as_ref().is_none_or(|(b, _)| rate > *b) {
            best = Some((rate, latencies));
        }

        let raw = raw.clone();
        let (elapsed, latencies) = concurrently(CONCURRENCY, sizes.p3_commands, move |task, i| {
            let mut raw = raw.clone();
            async move {
                let key = format!("raw:p3:{round}:{task}");
                let state_key = format!("{key}:state");
                let state: Vec<Vec<u8>> = redis::cmd("HGETALL")
                    .arg(&state_key)
                    .query_async(&mut raw)
                    .await?;
                let after = match state.chunks(2).find(|p| p[0] == b"_position") {
                    Some(pair) => format!("({}", String::from_utf8_lossy(&pair[1])),
                    None => "-".to_owned(),
                };
                let tail: Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(after)
                    .arg("+")
                    .query_async(&mut raw)
                    .await?;
                black_box(tail);
                let version = i as u64 + 1;
                let mut command = redis::cmd("XADD");
                command.arg(&key).arg("*");
                raw_entry(&mut command, &key, version, i as u64);
                let id: String = command.query_async(&mut raw).await?;
                if version.is_multiple_of(SNAPSHOT_EVERY) {
                    let _: () = redis::cmd("HSET")
                        .arg(&state_key)
                        .arg("_position")
                        .arg(id)
                        .arg("items")
                        .arg(version)
                        .query_async(&mut raw)
                        .await?;
                }
                Ok(())
            }
        })
        .await?;
        let rate = per_second(commands, elapsed);
        if best_raw.as_ref().is_none_or(|(b, _)| rate > *b) {
            best_raw = Some((rate, latencies));
        }
    }
    let (rate, mut latencies) = best.unwrap_or_default();
    let (raw_rate, mut raw_latencies) = best_raw.unwrap_or_default();
    latencies.sort();
    raw_latencies.sort();
    Ok(vec![
        Row {
            id: "P3",
            what: "command round trip via Repository (load + handle + append), 50 aggregates"
                .to_owned(),
            framework: format!("{} commands/s", thousands(rate)),
            raw: format!("{} commands/s", thousands(raw_rate)),
            ratio: Some(rate / raw_rate),
            ratio_means: "",
            target: Target::None,
        },
        Row {
            id: "P3",
            what: "command latency p50 / p99".to_owned(),
            framework: format!(
                "{} / {}",
                micros(percentile(&latencies, 0.5)),
                micros(percentile(&latencies, 0.99))
            ),
            raw: format!(
                "{} / {}",
                micros(percentile(&raw_latencies, 0.5)),
                micros(percentile(&raw_latencies, 0.99))
            ),
            ratio: Some(
                percentile(&latencies, 0.5).as_secs_f64()
                    / percentile(&raw_latencies, 0.5).as_secs_f64(),
            ),
            ratio_means: " (p50 time)",
            target: Target::None,
        },
    ])
}
