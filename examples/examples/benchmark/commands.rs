//! P3: commands through the repository, hot (from its cache) and cold (loaded each time).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use es_core::{Repository, SnapshotPolicy};
use es_redis::RedisEventStore;
use redis::aio::ConnectionManager;
use redis::Value;

use crate::appends::append_rate;
use crate::common::*;

/// P3 cold: the repository's round trip with its cache off (load with snapshot + handle +
/// append, a snapshot every 100 events), 50 aggregates at once, whose events interleave in
/// the category stream. The raw baseline does the same work by hand on a stream per
/// aggregate: HGETALL the state hash, XRANGE the events after it, XADD the new event, and
/// HSET the state every 100 events.
///
/// `copies` is a store with tail copies (`RedisConfig::tail_copies`), measured in the same
/// rounds.
pub(crate) async fn p3_cold_commands(
    sizes: &Sizes,
    store: &RedisEventStore,
    copies: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Vec<Row>, BoxError> {
    let commands = CONCURRENCY * sizes.p3_commands;
    let repositories = [store, copies].map(|store| {
        Arc::new(
            Repository::<Cart, _>::new(store.clone())
                .with_snapshot_policy(SnapshotPolicy::EveryNEvents(SNAPSHOT_EVERY))
                .without_cache(),
        )
    });
    let mut best: [Option<(f64, Vec<Duration>)>; 2] = [None, None];
    let mut best_raw: Option<(f64, Vec<Duration>)> = None;
    for round in 0..sizes.rounds {
        for (variant, repository) in repositories.iter().enumerate() {
            let repo = repository.clone();
            let (elapsed, latencies) =
                concurrently(CONCURRENCY, sizes.p3_commands, move |task, i| {
                    let repo = repo.clone();
                    async move {
                        let command = AddItems {
                            count: 1,
                            seed: i as u64,
                        };
                        repo.execute(&format!("p3-{round}-{variant}-{task}"), &command)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(())
                    }
                })
                .await?;
            let rate = per_second(commands, elapsed);
            if best[variant].as_ref().is_none_or(|(b, _)| rate > *b) {
                best[variant] = Some((rate, latencies));
            }
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
    let [plain, copied] = best.map(|best| {
        let (rate, mut latencies) = best.unwrap_or_default();
        latencies.sort();
        (rate, latencies)
    });
    let (rate, latencies) = plain;
    let (copies_rate, copies_latencies) = copied;
    let (raw_rate, mut raw_latencies) = best_raw.unwrap_or_default();
    raw_latencies.sort();
    Ok(vec![
        Row {
            id: "P3 cold",
            what: "command round trip via Repository, cache off (load + handle + append), 50 \
                   aggregates, interleaved"
                .to_owned(),
            framework: format!("{} commands/s", thousands(rate)),
            raw: format!("{} commands/s", thousands(raw_rate)),
            ratio: Some(rate / raw_rate),
            ratio_means: "",
            // Three times the 0.41 of the round before the cache (issue 12).
            target: Target::AtLeast(1.23),
        },
        latency_row("P3 cold", &latencies, &raw_latencies),
        Row {
            id: "P3 cold copies",
            what: format!(
                "the same with `tail_copies({TAIL_COPIES})`: snapshot and tail in one round trip"
            ),
            framework: format!("{} commands/s", thousands(copies_rate)),
            raw: format!("{} commands/s", thousands(raw_rate)),
            ratio: Some(copies_rate / raw_rate),
            ratio_means: "",
            target: Target::AtLeast(1.23),
        },
        latency_row("P3 cold copies", &copies_latencies, &raw_latencies),
    ])
}

/// P3 hot: the same commands through a repository with its cache (the default), 50
/// aggregates × `p3_hot_commands`, against the store's own appends with an append id at
/// the same concurrency (P1'), in alternating rounds: what the repository adds to an append.
pub(crate) async fn p3_hot_commands(
    sizes: &Sizes,
    store: &RedisEventStore,
) -> Result<Vec<Row>, BoxError> {
    let per_task = sizes.p3_hot_commands;
    let commands = CONCURRENCY * per_task;
    let repository = Arc::new(
        Repository::<Cart, _>::new(store.clone())
            .with_snapshot_policy(SnapshotPolicy::EveryNEvents(SNAPSHOT_EVERY)),
    );
    let mut best: Option<(f64, Vec<Duration>)> = None;
    let mut best_appends = 0f64;
    for round in 0..sizes.rounds {
        let repo = repository.clone();
        let (elapsed, latencies) = concurrently(CONCURRENCY, per_task, move |task, i| {
            let repo = repo.clone();
            async move {
                let command = AddItems {
                    count: 1,
                    seed: i as u64,
                };
                repo.execute(&format!("p3-hot-{round}-{task}"), &command)
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
        let appends = append_rate(store, format!("p3-appends-{round}"), per_task, true).await?;
        best_appends = best_appends.max(appends);
    }
    let (rate, mut latencies) = best.unwrap_or_default();
    latencies.sort();
    Ok(vec![
        Row {
            id: "P3 hot",
            what: format!(
                "command round trip via Repository, cache on, 50 aggregates × {per_task} \
                 (against P1': appends with an append id, same concurrency)"
            ),
            framework: format!("{} commands/s", thousands(rate)),
            raw: format!("{} appends/s", thousands(best_appends)),
            ratio: Some(rate / best_appends),
            ratio_means: "",
            target: Target::AtLeast(0.8),
        },
        Row {
            id: "P3 hot",
            what: "command latency p50 / p99".to_owned(),
            framework: format!(
                "{} / {}",
                micros(percentile(&latencies, 0.5)),
                micros(percentile(&latencies, 0.99))
            ),
            raw: "-".to_owned(),
            ratio: None,
            ratio_means: "",
            target: Target::None,
        },
    ])
}

/// The p50 / p99 latency row of `id`, framework against raw.
fn latency_row(id: &'static str, latencies: &[Duration], raw_latencies: &[Duration]) -> Row {
    Row {
        id,
        what: "command latency p50 / p99".to_owned(),
        framework: format!(
            "{} / {}",
            micros(percentile(latencies, 0.5)),
            micros(percentile(latencies, 0.99))
        ),
        raw: format!(
            "{} / {}",
            micros(percentile(raw_latencies, 0.5)),
            micros(percentile(raw_latencies, 0.99))
        ),
        ratio: Some(
            percentile(latencies, 0.5).as_secs_f64() / percentile(raw_latencies, 0.5).as_secs_f64(),
        ),
        ratio_means: " (p50 time)",
        target: Target::None,
    }
}
