//! PG1–PG6: es-postgres against raw SQL doing the same work, on a PostgreSQL the benchmark
//! starts itself with durable commits (`fsync` and `synchronous_commit` on).
//!
//! The raw baselines write the same rows to the same table layout in another schema, with
//! one statement per append (a CTE that bumps the category's counter, which locks its row,
//! and inserts the events; the version comes from the client, the unique index refuses a
//! duplicate), through the same driver and pool size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::projection::{Projection, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::{
    AppendOptions, EventStore, ExpectedVersion, RecordedEvent, Repository, SnapshotPolicy,
    StoreError, StreamId,
};
use es_postgres::testing::PostgresServer;
use es_postgres::PostgresEventStore;

use crate::common::*;

/// The schema of the raw baselines.
const RAW: &str = "raw";

struct Bench {
    store: PostgresEventStore,
    raw: PostgresEventStore,
    append: String,
}

impl Bench {
    /// Raw: appends `count` copies of `item(n)` to `aggregate` at versions after `version`.
    async fn raw_append(
        &self,
        aggregate: &str,
        version: i64,
        n: u64,
        count: i64,
    ) -> Result<(), BoxError> {
        let client = self.raw.pool().get().await?;
        let statement = client.prepare_cached(&self.append).await?;
        let event = item(n);
        let names = ["sku", "quantity", "price_cents", "gift_wrap"];
        let values: [Vec<u8>; 4] = [
            event.sku.into_bytes(),
            event.quantity.to_string().into_bytes(),
            event.price_cents.to_string().into_bytes(),
            if event.gift_wrap {
                &b"true"[..]
            } else {
                &b"false"[..]
            }
            .to_vec(),
        ];
        let millis = es_core::store::millis_since_epoch(std::time::SystemTime::now()) as i64;
        client
            .execute(
                &statement,
                &[
                    &"cart",
                    &aggregate,
                    &version,
                    &millis,
                    &&names[..],
                    &&values[..],
                    &count,
                ],
            )
            .await?;
        Ok(())
    }
}

pub(crate) async fn postgres_rows(sizes: &Sizes) -> Result<Vec<Row>, BoxError> {
    let server = PostgresServer::start_with(&[
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
    ])?;
    let config = |schema: &str| server.config(schema).pool_size(CONCURRENCY);
    let store = PostgresEventStore::connect(&config("bench")).await?;
    let raw = PostgresEventStore::connect(&config(RAW)).await?;
    raw.execute_batch("INSERT INTO raw.categories VALUES ('cart', 0, 0) ON CONFLICT DO NOTHING")
        .await?;
    let version: String = raw
        .pool()
        .get()
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    println!(
        "es-postgres rows: PostgreSQL {version} on 127.0.0.1:{}, durable commits",
        server.port()
    );
    let bench = Bench {
        append: "WITH c AS (UPDATE raw.categories SET last_position = last_position + $7, \
                 last_millis = greatest(last_millis, $4) WHERE category = $1 RETURNING last_position) \
                 INSERT INTO raw.events (category, position, aggregate_id, version, event_type, recorded_at, field_names, field_values) \
                 SELECT $1, c.last_position - $7 + i, $2, $3 + i, 'ItemAdded', $4, $5, $6 \
                 FROM c, generate_series(1, $7) AS i"
            .to_owned(),
        store,
        raw,
    };
    let bench = Arc::new(bench);
    let mut rows = vec![pg1_appends(sizes, &bench).await?];
    rows.push(pg2_batches(sizes, &bench).await?);
    rows.extend(pg3_commands(sizes, &bench).await?);
    rows.push(pg4_projection(sizes, &bench).await?);
    rows.extend(pg6_load(sizes, &bench).await?);
    Ok(rows)
}

/// PG1: single-event appends, 50 aggregates at once, interleaving in the category.
async fn pg1_appends(sizes: &Sizes, bench: &Arc<Bench>) -> Result<Row, BoxError> {
    let appends = CONCURRENCY * sizes.p1_appends;
    let (mut best, mut best_raw) = (0f64, 0f64);
    for round in 0..sizes.rounds {
        let b = bench.clone();
        let (elapsed, _) = concurrently(CONCURRENCY, sizes.p1_appends, move |task, i| {
            let b = b.clone();
            async move {
                b.store
                    .append(
                        &StreamId::new("cart", format!("pg1-{round}-{task}")),
                        ExpectedVersion::Exact(i as u64),
                        vec![new_event(i as u64)?],
                        &AppendOptions::default(),
                    )
                    .await?;
                Ok(())
            }
        })
        .await?;
        best = best.max(per_second(appends, elapsed));
        let b = bench.clone();
        let (elapsed, _) = concurrently(CONCURRENCY, sizes.p1_appends, move |task, i| {
            let b = b.clone();
            async move {
                b.raw_append(&format!("pg1-{round}-{task}"), i as i64, i as u64, 1)
                    .await
            }
        })
        .await?;
        best_raw = best_raw.max(per_second(appends, elapsed));
    }
    Ok(rate_row(
        "PG1",
        "single-event appends/s, 50 aggregates at once",
        best,
        best_raw,
    ))
}

/// PG2: 100-event appends, 4 appenders.
async fn pg2_batches(sizes: &Sizes, bench: &Arc<Bench>) -> Result<Row, BoxError> {
    let events = P2_APPENDERS * sizes.p2_calls * BATCH;
    let (mut best, mut best_raw) = (0f64, 0f64);
    for round in 0..sizes.rounds {
        let b = bench.clone();
        let (elapsed, _) = concurrently(P2_APPENDERS, sizes.p2_calls, move |task, i| {
            let b = b.clone();
            async move {
                let batch = (0..BATCH as u64)
                    .map(new_event)
                    .collect::<Result<Vec<_>, _>>()?;
                b.store
                    .append(
                        &StreamId::new("cart", format!("pg2-{round}-{task}")),
                        ExpectedVersion::Exact((i * BATCH) as u64),
                        batch,
                        &AppendOptions::default(),
                    )
                    .await?;
                Ok(())
            }
        })
        .await?;
        best = best.max(per_second(events, elapsed));
        let b = bench.clone();
        let (elapsed, _) = concurrently(P2_APPENDERS, sizes.p2_calls, move |task, i| {
            let b = b.clone();
            async move {
                b.raw_append(
                    &format!("pg2-{round}-{task}"),
                    (i * BATCH) as i64,
                    i as u64,
                    BATCH as i64,
                )
                .await
            }
        })
        .await?;
        best_raw = best_raw.max(per_second(events, elapsed));
    }
    Ok(rate_row(
        "PG2",
        "events/s in 100-event appends, 4 appenders",
        best,
        best_raw,
    ))
}

/// PG3: cqrs-es's workload: 50 accounts × 100 commands (one event each), one task per
/// account, a snapshot every 100 events; hot (the repository's cache) and cold (a load
/// per command). Raw: an append per command (hot); a read of the aggregate's events then
/// an append (cold).
async fn pg3_commands(sizes: &Sizes, bench: &Arc<Bench>) -> Result<Vec<Row>, BoxError> {
    let per_account = if sizes.rounds == 1 { 20 } else { 100 };
    let commands = CONCURRENCY * per_account;
    let mut out = Vec::new();
    for hot in [true, false] {
        let (mut best, mut best_raw) = (0f64, 0f64);
        for round in 0..sizes.rounds {
            let repository = Repository::<Cart, _>::new(bench.store.clone())
                .with_snapshot_policy(SnapshotPolicy::EveryNEvents(SNAPSHOT_EVERY));
            let repository = Arc::new(if hot {
                repository
            } else {
                repository.without_cache()
            });
            let (elapsed, _) = concurrently(CONCURRENCY, per_account, move |task, i| {
                let repository = repository.clone();
                async move {
                    repository
                        .execute(
                            &format!("pg3-{hot}-{round}-{task}"),
                            &AddItems {
                                count: 1,
                                seed: i as u64,
                            },
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                }
            })
            .await?;
            best = best.max(per_second(commands, elapsed));
            let b = bench.clone();
            let (elapsed, _) = concurrently(CONCURRENCY, per_account, move |task, i| {
                let b = b.clone();
                async move {
                    let aggregate = format!("pg3-{hot}-{round}-{task}");
                    if !hot {
                        let client = b.raw.pool().get().await?;
                        let statement = client
                            .prepare_cached(
                                "SELECT version, field_names, field_values FROM raw.events \
                                 WHERE category = 'cart' AND aggregate_id = $1 ORDER BY version",
                            )
                            .await?;
                        let rows = client.query(&statement, &[&aggregate]).await?;
                        std::hint::black_box(rows);
                    }
                    b.raw_append(&aggregate, i as i64, i as u64, 1).await
                }
            })
            .await?;
            best_raw = best_raw.max(per_second(commands, elapsed));
        }
        let what = format!(
            "commands/s, {} ({CONCURRENCY} accounts × {per_account}, snapshot every {SNAPSHOT_EVERY}; cqrs-es + postgres-es: 2,014–2,032)",
            if hot { "hot" } else { "cold" }
        );
        out.push(rate_row(
            if hot { "PG3 hot" } else { "PG3 cold" },
            &what,
            best,
            best_raw,
        ));
    }
    Ok(out)
}

/// Counts items per cart in a hash read model, each event exactly once.
struct Items {
    model: ReadModel,
}

#[async_trait]
impl Projection for Items {
    type Event = CartEvent;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.model.projection()
    }
    fn categories(&self) -> Vec<std::borrow::Cow<'static, str>> {
        vec!["pg4".into()]
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }
    async fn handle(&self, event: &RecordedEvent<CartEvent>) -> Result<(), StoreError> {
        if let CartEvent::ItemAdded(item) = &event.event {
            let _ = self
                .model
                .update(event)
                .hincrby("items", &event.stream.id, i64::from(item.quantity))
                .commit()
                .await?;
        }
        Ok(())
    }
}

/// PG4: a projection catching up on N events of 50 interleaved aggregates into a read model
/// (an increment per event, exactly once). Raw: pages of 100 by position, then per event a
/// transaction recording it as applied and incrementing the counter.
async fn pg4_projection(sizes: &Sizes, bench: &Arc<Bench>) -> Result<Row, BoxError> {
    let events = (sizes.p4_events / 10).max(1_000);
    let per_aggregate = events / CONCURRENCY;
    for i in 0..per_aggregate {
        for task in 0..CONCURRENCY {
            bench
                .store
                .append(
                    &StreamId::new("pg4", format!("cart-{task}")),
                    ExpectedVersion::Exact(i as u64),
                    vec![new_event(i as u64)?],
                    &AppendOptions::default(),
                )
                .await?;
        }
    }
    let events = per_aggregate * CONCURRENCY;
    let (mut best, mut best_raw) = (Duration::MAX, Duration::MAX);
    for round in 0..sizes.rounds {
        let name = format!("pg4-{round}");
        let projection = Items {
            model: bench.store.read_model(&name),
        };
        let runner = ProjectionRunner::connect(
            &bench.store,
            projection,
            ProjectionOptions::new("bench").batch_size(100),
        )
        .await?;
        let started = Instant::now();
        let stats = runner.run_once().await?;
        best = best.min(started.elapsed());
        assert_eq!(stats.handled as usize, events);

        let client = bench.raw.pool().get().await?;
        let started = Instant::now();
        let mut after = 0i64;
        let projection = format!("raw-pg4-{round}");
        loop {
            let page = client
                .query(
                    "SELECT position, aggregate_id, field_values FROM bench.events WHERE category = 'pg4' \
                     AND position > $1 ORDER BY position LIMIT 100",
                    &[&after],
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = last.get(0);
            for row in &page {
                let position: i64 = row.get(0);
                let aggregate: String = row.get(1);
                let values: Vec<Vec<u8>> = row.get(2);
                let quantity: i64 = String::from_utf8_lossy(&values[1]).parse()?;
                client.batch_execute("BEGIN").await?;
                let recorded = client
                    .execute(
                        "INSERT INTO raw.applied VALUES ($1, 'pg4', $2, 0) ON CONFLICT DO NOTHING",
                        &[&projection, &position],
                    )
                    .await?;
                if recorded == 1 {
                    let current = client
                        .query_opt(
                            "SELECT value FROM raw.read_model_fields WHERE projection = $1 AND hash = 'items' AND field = $2 FOR UPDATE",
                            &[&projection, &aggregate],
                        )
                        .await?
                        .map_or(0, |row| {
                            String::from_utf8_lossy(&row.get::<_, Vec<u8>>(0)).parse::<i64>().unwrap_or(0)
                        });
                    client
                        .execute(
                            "INSERT INTO raw.read_model_fields VALUES ($1, 'items', $2, $3) \
                             ON CONFLICT (projection, hash, field) DO UPDATE SET value = excluded.value",
                            &[&projection, &aggregate, &(current + quantity).to_string().into_bytes()],
                        )
                        .await?;
                }
                client.batch_execute("COMMIT").await?;
            }
        }
        best_raw = best_raw.min(started.elapsed());
    }
    let framework = per_second(events, best);
    let raw = per_second(events, best_raw);
    Ok(rate_row(
        "PG4",
        &format!("events/s, a projection catching up on {events} events into a read model"),
        framework,
        raw,
    ))
}

/// PG6: loading one aggregate of N events with no snapshot (full replay), its events
/// appended together; and, as users' aggregates are, one whose events interleave with 49
/// other aggregates' (50 appenders at once, one event per append), so its rows lie on as
/// many pages as events. Raw: the same rows fetched, not decoded.
async fn pg6_load(sizes: &Sizes, bench: &Arc<Bench>) -> Result<Vec<Row>, BoxError> {
    let events = sizes.p6_events;
    let stream = StreamId::new("cart", "pg6-long");
    for start in (0..events).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(events))
            .map(|n| new_event(n as u64))
            .collect::<Result<Vec<_>, _>>()?;
        bench
            .store
            .append(
                &stream,
                ExpectedVersion::Exact(start as u64),
                batch,
                &AppendOptions::default(),
            )
            .await?;
    }
    let interleaved = (events / 10).max(100);
    let b = bench.clone();
    concurrently(CONCURRENCY, interleaved, move |task, i| {
        let b = b.clone();
        async move {
            b.store
                .append(
                    &StreamId::new("cart", format!("pg6-interleaved-{task}")),
                    ExpectedVersion::Exact(i as u64),
                    vec![new_event(i as u64)?],
                    &AppendOptions::default(),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(vec![
        load_row(
            sizes,
            bench,
            "PG6",
            format!("load of a {events}-event aggregate, no snapshot (time per load)"),
            "pg6-long",
            events,
        )
        .await?,
        load_row(
            sizes,
            bench,
            "PG6 interleaved",
            format!(
                "load of a {interleaved}-event aggregate interleaved with {} others', no snapshot",
                CONCURRENCY - 1
            ),
            "pg6-interleaved-0",
            interleaved,
        )
        .await?,
    ])
}

/// Times loads of aggregate `id` (of `events` events) through the repository and as a raw
/// fetch of its rows.
async fn load_row(
    sizes: &Sizes,
    bench: &Arc<Bench>,
    row: &'static str,
    what: String,
    id: &str,
    events: usize,
) -> Result<Row, BoxError> {
    let repository = Repository::<Cart, _>::new(bench.store.clone()).without_cache();
    let loads = sizes.p6_loads.clamp(5, 50);
    let (mut best, mut best_raw) = (Duration::MAX, Duration::MAX);
    for _ in 0..sizes.rounds {
        let started = Instant::now();
        for _ in 0..loads {
            let loaded = repository.load(id).await?;
            assert_eq!(loaded.version as usize, events);
        }
        best = best.min(started.elapsed() / loads as u32);
        let client = bench.store.pool().get().await?;
        let started = Instant::now();
        for _ in 0..loads {
            let rows = client
                .query(
                    "SELECT position, aggregate_id, version, recorded_at, event_type, field_names, field_values \
                     FROM bench.events WHERE category = 'cart' AND aggregate_id = $1 ORDER BY version",
                    &[&id],
                )
                .await?;
            assert_eq!(rows.len(), events);
        }
        best_raw = best_raw.min(started.elapsed() / loads as u32);
    }
    Ok(Row {
        id: row,
        what,
        framework: format!("{:.2} ms", best.as_secs_f64() * 1e3),
        raw: format!("{:.2} ms", best_raw.as_secs_f64() * 1e3),
        ratio: Some(best.as_secs_f64() / best_raw.as_secs_f64()),
        ratio_means: "× the time",
        target: Target::None,
    })
}

fn rate_row(id: &'static str, what: &str, framework: f64, raw: f64) -> Row {
    Row {
        id,
        what: what.to_owned(),
        framework: thousands(framework),
        raw: thousands(raw),
        ratio: Some(framework / raw),
        ratio_means: "× raw",
        target: Target::None,
    }
}
