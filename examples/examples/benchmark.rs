//! The framework against raw Redis, side by side, in one run (issue 6).
//!
//! ```text
//! cargo run --release --example benchmark             # the full run (a few minutes)
//! cargo run --release --example benchmark -- --quick  # a smoke run of a few seconds
//! cargo run --release --example benchmark -- --only P1,P6 --commandstats
//! ```
//!
//! `--only` runs some measurements; `--commandstats` prints the server's time per command
//! after each one, which tells a script's own cost from the commands it calls.
//!
//! Starts its own `redis-server` (never the one on port 6379) and measures each framework
//! figure next to a baseline doing the same work with raw commands through the same client
//! library (`redis`, one multiplexed connection each), then prints one table with the
//! absolute numbers, the ratio and whether the issue's target is met. The figures and the
//! machine they came from are in `BENCHMARKS.md`.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::codec::Fields;
use es_core::projection::BatchError;
use es_core::{
    Aggregate, AppendOptions, Apply, Event, EventStore, ExpectedVersion, Handle, Metadata,
    NewEvent, Repository, SnapshotPolicy, StreamId,
};
use es_redis::testing::RedisServer;
use es_redis::{
    HashReadModel, ProjectionOptions, ProjectionRunner, ReadModelUpdate, RedisEventStore,
};
use redis::aio::ConnectionManager;
use redis::Value;
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ItemAdded {
    sku: String,
    quantity: u32,
    price_cents: u64,
    gift_wrap: bool,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CartCleared {
    reason: Option<String>,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CartEvent {
    ItemAdded(ItemAdded),
    CartCleared(CartCleared),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = CartEvent, name = "cart")]
struct Cart {
    items: u64,
    total_cents: u64,
}

impl Apply<ItemAdded> for Cart {
    fn apply(&mut self, e: &ItemAdded) {
        self.items += u64::from(e.quantity);
        self.total_cents += u64::from(e.quantity) * e.price_cents;
    }
}

impl Apply<CartCleared> for Cart {
    fn apply(&mut self, _: &CartCleared) {
        *self = Cart::default();
    }
}

/// Adds `count` items (one event each).
struct AddItems {
    count: usize,
    seed: u64,
}

impl Handle<AddItems> for Cart {
    type Error = std::convert::Infallible;
    fn handle(&self, command: &AddItems) -> Result<Vec<CartEvent>, Self::Error> {
        Ok((0..command.count as u64)
            .map(|i| item(command.seed + i).into())
            .collect())
    }
}

/// A small, typical event: `sku SKU-0042 quantity 3 price_cents 1299 gift_wrap false`.
fn item(n: u64) -> ItemAdded {
    ItemAdded {
        sku: format!("SKU-{:04}", n % 977),
        quantity: (n % 7 + 1) as u32,
        price_cents: 99 + (n * 37) % 5_000,
        gift_wrap: n.is_multiple_of(5),
    }
}

/// The entry the store writes for `item(n)` at `version` of `aggregate`, as raw `XADD`
/// arguments after the id: the same bytes the baselines write.
fn raw_entry(command: &mut redis::Cmd, aggregate: &str, version: u64, n: u64) {
    command
        .arg("type")
        .arg("ItemAdded")
        .arg("aggregate_id")
        .arg(aggregate)
        .arg("version")
        .arg(version);
    item_pairs(command, n);
}

/// The four field pairs of `item(n)`, as the store writes them.
fn item_pairs(command: &mut redis::Cmd, n: u64) {
    let event = item(n);
    command
        .arg("sku")
        .arg(event.sku)
        .arg("quantity")
        .arg(event.quantity)
        .arg("price_cents")
        .arg(event.price_cents)
        .arg("gift_wrap")
        .arg(if event.gift_wrap { "true" } else { "false" });
}

fn new_event(n: u64) -> Result<NewEvent, BoxError> {
    Ok(NewEvent::encode(
        &CartEvent::from(item(n)),
        Metadata::default(),
    )?)
}

/// How much work each measurement does.
struct Sizes {
    /// P1: appends per aggregate (50 aggregates).
    p1_appends: usize,
    /// P2: 100-event calls per appender (4 appenders).
    p2_calls: usize,
    /// P3: commands per aggregate (50 aggregates).
    p3_commands: usize,
    /// P4: events the projection catches up on.
    p4_events: usize,
    /// P5: encodes and decodes of each kind.
    p5_iterations: usize,
    /// P6: events of the long aggregate, and how many loads are timed.
    p6_events: usize,
    p6_loads: usize,
    /// P7: aggregates (10 events each).
    p7_aggregates: usize,
    /// Measurements alternate framework and raw this many times; the best of each counts.
    rounds: usize,
}

const FULL: Sizes = Sizes {
    p1_appends: 400,
    p2_calls: 50,
    p3_commands: 200,
    p4_events: 100_000,
    p5_iterations: 1_000_000,
    p6_events: 10_000,
    p6_loads: 200,
    p7_aggregates: 10_000,
    rounds: 3,
};

const QUICK: Sizes = Sizes {
    p1_appends: 20,
    p2_calls: 5,
    p3_commands: 20,
    p4_events: 5_000,
    p5_iterations: 20_000,
    p6_events: 1_000,
    p6_loads: 10,
    p7_aggregates: 500,
    rounds: 1,
};

const CONCURRENCY: usize = 50;
const P2_APPENDERS: usize = 4;
const BATCH: usize = 100;
const SNAPSHOT_EVERY: u64 = 100;

/// Which way a ratio should go to meet its target.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

struct Row {
    id: &'static str,
    what: String,
    framework: String,
    raw: String,
    ratio: Option<f64>,
    ratio_means: &'static str,
    target: Target,
}

impl Row {
    fn verdict(&self) -> &'static str {
        match (self.target, self.ratio) {
            (Target::AtLeast(t), Some(r)) if r >= t => "met",
            (Target::AtMost(t), Some(r)) if r <= t => "met",
            (Target::None, _) => "-",
            (_, None) => "pending",
            _ => "MISSED",
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::AtLeast(t) => format!(">= {t}"),
            Target::AtMost(t) => format!("<= {t}"),
            Target::None => "-".to_owned(),
        }
    }
}

/// The command line: `[--quick] [--only P1,P6] [--commandstats]`.
struct Options {
    quick: bool,
    /// Only these measurements.
    only: Option<Vec<String>>,
    /// After each measurement, print the server's time per call of each command (for
    /// telling server time from client time).
    commandstats: bool,
}

fn main() -> Result<(), BoxError> {
    let mut options = Options {
        quick: false,
        only: None,
        commandstats: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--commandstats" => options.commandstats = true,
            "--only" => {
                let list = args.next().ok_or("--only needs a list, e.g. P1,P6")?;
                options.only = Some(list.split(',').map(str::to_owned).collect());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let sizes = if options.quick { &QUICK } else { &FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(sizes, options))
}

/// Prints (with `--commandstats`) the server's calls and microseconds per call of each
/// command since the last reset, then resets them.
async fn commandstats(
    options: &Options,
    section: &str,
    connection: &mut ConnectionManager,
) -> Result<(), BoxError> {
    if !options.commandstats {
        return Ok(());
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await?;
    println!("{section} server time:");
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("  {line}");
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(connection)
        .await?;
    Ok(())
}

async fn run(sizes: &Sizes, options: Options) -> Result<(), BoxError> {
    let quick = options.quick;
    let server = RedisServer::start()?;
    let store = server.store("bench").await?;
    let mut raw = server.config("raw").connect().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut raw)
        .await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    println!(
        "es-redis benchmark{}: redis {version} on 127.0.0.1:{}, {} cores",
        if quick { " (--quick)" } else { "" },
        server.port(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let wanted = |id: &str| {
        options
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o.eq_ignore_ascii_case(id)))
    };
    let mut rows = Vec::new();
    if wanted("P1") {
        let unbatched = RedisEventStore::connect(&server.config("bench").append_batch(1)).await?;
        rows.extend(p1_single_appends(sizes, &store, &unbatched, &raw).await?);
        commandstats(&options, "P1", &mut raw).await?;
        rows.extend(p1_server_time(sizes, &raw).await?);
    }
    if wanted("P2") {
        rows.push(p2_batch_appends(sizes, &store, &raw).await?);
        commandstats(&options, "P2", &mut raw).await?;
    }
    if wanted("P3") {
        rows.extend(p3_commands(sizes, &store, &raw).await?);
        commandstats(&options, "P3", &mut raw).await?;
    }
    if wanted("P4") {
        rows.push(p4_projection(sizes, &server, &store, &raw).await?);
        commandstats(&options, "P4", &mut raw).await?;
    }
    if wanted("P5") {
        rows.extend(p5_codec(sizes));
    }
    if wanted("P6") {
        rows.extend(p6_loads(sizes, &store, &raw).await?);
        commandstats(&options, "P6", &mut raw).await?;
    }
    drop(store);
    drop(server);
    if wanted("P7") {
        rows.push(p7_memory(sizes).await?);
    }

    println!();
    println!("| | measurement | framework | raw Redis | ratio | target | |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        let ratio = match row.ratio {
            Some(r) => format!("{r:.2}{}", row.ratio_means),
            None => "-".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.id,
            row.what,
            row.framework,
            row.raw,
            ratio,
            row.target_text(),
            row.verdict()
        );
    }
    Ok(())
}

/// Runs `tasks` tasks of `per_task` operations each, all at once; returns the wall time and
/// every operation's latency.
async fn concurrently<F, Fut>(
    tasks: usize,
    per_task: usize,
    operation: F,
) -> Result<(Duration, Vec<Duration>), BoxError>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    let operation = Arc::new(operation);
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let operation = operation.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                barrier.wait().await;
                for i in 0..per_task {
                    let started = Instant::now();
                    operation(task, i).await?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, BoxError>(latencies)
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(tasks * per_task);
    for handle in handles {
        latencies.extend(handle.await??);
    }
    Ok((started.elapsed(), latencies))
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn thousands(value: f64) -> String {
    let whole = value.round() as u64;
    let text = whole.to_string();
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i > 0 && (text.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// P1: one event per append with an expected version, 50 aggregates at once; the raw
/// baseline XADDs the same entries to one stream at the same concurrency. A second row sends
/// an append id too, as the repository does.
async fn p1_single_appends(
    sizes: &Sizes,
    store: &RedisEventStore,
    unbatched: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Vec<Row>, BoxError> {
    let appends = CONCURRENCY * sizes.p1_appends;
    // Best rate of: appends batched (the default), with an append id, not batched.
    let mut best = [0f64; 3];
    let mut best_raw = 0f64;
    for round in 0..sizes.rounds {
        for (variant, (store, with_id)) in [(store, false), (store, true), (unbatched, false)]
            .into_iter()
            .enumerate()
        {
            let store = store.clone();
            let (elapsed, _) = concurrently(CONCURRENCY, sizes.p1_appends, move |task, i| {
                let store = store.clone();
                async move {
                    let stream = StreamId::new("cart", format!("p1-{round}-{variant}-{task}"));
                    let options = if with_id {
                        AppendOptions::with_append_id(format!("p1-{round}-{task}-{i}"))
                    } else {
                        AppendOptions::default()
                    };
                    let expected = ExpectedVersion::Exact(i as u64);
                    store
                        .append(&stream, expected, vec![new_event(i as u64)?], &options)
                        .await?;
                    Ok(())
                }
            })
            .await?;
            best[variant] = best[variant].max(per_second(appends, elapsed));
        }
        let raw = raw.clone();
        let (elapsed, _) = concurrently(CONCURRENCY, sizes.p1_appends, move |task, i| {
            let mut raw = raw.clone();
            async move {
                let mut command = redis::cmd("XADD");
                command.arg("raw:{cart}:events").arg("*");
                raw_entry(&mut command, &format!("p1-{task}"), i as u64 + 1, i as u64);
                let _: String = command.query_async(&mut raw).await?;
                Ok(())
            }
        })
        .await?;
        best_raw = best_raw.max(per_second(appends, elapsed));
    }
    let row = |id, what: &str, rate: f64| Row {
        id,
        what: what.to_owned(),
        framework: format!("{} appends/s", thousands(rate)),
        raw: format!("{} XADD/s", thousands(best_raw)),
        ratio: Some(rate / best_raw),
        ratio_means: "",
        target: Target::AtLeast(0.7),
    };
    let untargeted = |row: Row| Row {
        target: Target::None,
        ..row
    };
    Ok(vec![
        row(
            "P1",
            "single-event appends, expected version, 50 aggregates",
            best[0],
        ),
        untargeted(row(
            "P1'",
            "the same with an append id (as the repository sends)",
            best[1],
        )),
        untargeted(row(
            "P1\"",
            "the same as P1, each append sent alone (`append_batch(1)`)",
            best[2],
        )),
    ])
}

/// The store's append script, exactly as es-redis loads it.
const ES_APPEND: &str = concat!(
    "#!lua\n",
    include_str!("../../es-redis/src/scripts/entry_ids.lua"),
    include_str!("../../es-redis/src/scripts/append.lua")
);

/// The smallest Lua append there can be: check the version (`LLEN` of the index), `XADD`
/// the entry, index it (`RPUSH`); 50 appends per call. `KEYS` are stream, index pairs; each
/// append's `ARGV` are its type, aggregate id and four field pairs.
const MINIMAL_APPEND: &str = r"
local at = 1
for a = 1, #KEYS / 2 do
  local index = KEYS[2 * a]
  local version = redis.call('LLEN', index)
  local id = redis.call('XADD', KEYS[2 * a - 1], '*', 'type', ARGV[at], 'aggregate_id',
    ARGV[at + 1], 'version', version + 1, unpack(ARGV, at + 2, at + 9))
  redis.call('RPUSH', index, id)
  at = at + 10
end
return 1
";

/// Server time (`INFO commandstats`, µs per call) of `command` since the last reset, and the
/// number of calls.
async fn server_time(raw: &mut ConnectionManager, command: &str) -> Result<(f64, f64), BoxError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await?;
    let prefix = format!("cmdstat_{command}:");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| format!("no {command} in INFO commandstats"))?;
    let field = |name: &str| -> f64 {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok((field("usec="), field("calls=")))
}

async fn reset_stats(raw: &mut ConnectionManager) -> Result<(), BoxError> {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(raw)
        .await?;
    Ok(())
}

/// Loads `source`, resets the server's statistics and sends `calls` calls of it, each
/// appending one event to each of [`CONCURRENCY`] new aggregates (`KEYS`: a stream and an
/// index per append, under `prefix`); `header` are the arguments before the appends',
/// `append` adds one append's. Returns Redis's time in the script, in µs.
async fn script_time(
    raw: &mut ConnectionManager,
    source: &str,
    prefix: &str,
    calls: usize,
    header: &[usize],
    append: impl Fn(&mut redis::Cmd, String, u64),
) -> Result<f64, BoxError> {
    let script = redis::Script::new(source);
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query_async(raw)
        .await?;
    reset_stats(raw).await?;
    for call in 0..calls {
        let mut invocation = redis::cmd("EVALSHA");
        invocation.arg(script.get_hash()).arg(2 * CONCURRENCY);
        for a in 0..CONCURRENCY {
            invocation
                .arg(format!("{prefix}:{{cart}}:events"))
                .arg(format!("{prefix}:{{cart}}:index:{call}-{a}"));
        }
        invocation.arg(header);
        for a in 0..CONCURRENCY {
            append(
                &mut invocation,
                format!("{call}-{a}"),
                (call * CONCURRENCY + a) as u64,
            );
        }
        let _: Value = invocation.query_async(raw).await?;
    }
    Ok(server_time(raw, "evalsha").await?.0)
}

/// What limits P1: Redis's own time per append (`INFO commandstats`) on a server with nothing
/// else to do, for the store's append script and for the smallest Lua append there can be
/// ([`MINIMAL_APPEND`]), both sent by hand 50 appends per call, and for a raw `XADD`. With
/// the server as the bottleneck, these bound the rate any Lua append can reach against raw
/// `XADD`.
async fn p1_server_time(sizes: &Sizes, raw: &ConnectionManager) -> Result<Vec<Row>, BoxError> {
    let appends = CONCURRENCY * sizes.p1_appends;
    let calls = appends.div_ceil(CONCURRENCY);
    let mut raw = raw.clone();
    // The store's own script: the remembered-id window and the number of appends, then per
    // append its aggregate id, expected version (none yet), no append id, one event: its
    // type and four field pairs.
    let script_usec = script_time(
        &mut raw,
        ES_APPEND,
        "es",
        calls,
        &[8, CONCURRENCY],
        |c, id, n| {
            c.arg(id).arg(0).arg("").arg(1).arg("ItemAdded").arg(4);
            item_pairs(c, n);
        },
    )
    .await?;
    let minimal_usec = script_time(
        &mut raw,
        MINIMAL_APPEND,
        "minimal",
        calls,
        &[],
        |c, id, n| {
            c.arg("ItemAdded").arg(id);
            item_pairs(c, n);
        },
    )
    .await?;

    reset_stats(&mut raw).await?;
    for call in 0..calls {
        let mut pipe = redis::pipe();
        for a in 0..CONCURRENCY {
            let mut command = redis::cmd("XADD");
            command.arg("raw:{cart}:events").arg("*");
            raw_entry(
                &mut command,
                &format!("{call}-{a}"),
                1,
                (call * CONCURRENCY + a) as u64,
            );
            pipe.add_command(command);
        }
        let _: Vec<String> = pipe.query_async(&mut raw).await?;
    }
    let (xadd_usec, xadd_calls) = server_time(&mut raw, "xadd").await?;
    let per_xadd = xadd_usec / xadd_calls.max(1.0);

    let row = |what: String, per_append: f64| Row {
        id: "P1 server",
        what,
        framework: format!("{per_append:.1} µs/append"),
        raw: format!("{per_xadd:.1} µs/XADD"),
        ratio: Some(per_xadd / per_append),
        ratio_means: " (Redis time: XADD / append)",
        target: Target::None,
    };
    Ok(vec![
        row(
            format!("Redis time per append, es-redis append script ({CONCURRENCY} per call)"),
            script_usec / appends as f64,
        ),
        row(
            format!(
                "Redis time per append, smallest Lua append (LLEN + XADD + RPUSH, {CONCURRENCY} per call)"
            ),
            minimal_usec / appends as f64,
        ),
    ])
}

/// P2: 100 events per append, 4 appenders; the raw baseline sends the same 100 entries as
/// one pipeline of XADDs.
async fn p2_batch_appends(
    sizes: &Sizes,
    store: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Row, BoxError> {
    let events = P2_APPENDERS * sizes.p2_calls * BATCH;
    let mut best_framework = 0f64;
    let mut best_raw = 0f64;
    for round in 0..sizes.rounds {
        let store = store.clone();
        let (elapsed, _) = concurrently(P2_APPENDERS, sizes.p2_calls, move |task, i| {
            let store = store.clone();
            async move {
                let stream = StreamId::new("cart", format!("p2-{round}-{task}"));
                let first = (i * BATCH) as u64;
                let batch = (first..first + BATCH as u64)
                    .map(new_event)
                    .collect::<Result<Vec<_>, _>>()?;
                store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(first),
                        batch,
                        &AppendOptions::default(),
                    )
                    .await?;
                Ok(())
            }
        })
        .await?;
        best_framework = best_framework.max(per_second(events, elapsed));

        let raw = raw.clone();
        let (elapsed, _) = concurrently(P2_APPENDERS, sizes.p2_calls, move |task, i| {
            let mut raw = raw.clone();
            async move {
                let mut pipeline = redis::pipe();
                let first = (i * BATCH) as u64;
                for n in first..first + BATCH as u64 {
                    let mut command = redis::cmd("XADD");
                    command.arg("raw:{cart}:events").arg("*");
                    raw_entry(&mut command, &format!("p2-{task}"), n + 1, n);
                    pipeline.add_command(command);
                }
                let ids: Vec<String> = pipeline.query_async(&mut raw).await?;
                black_box(ids);
                Ok(())
            }
        })
        .await?;
        best_raw = best_raw.max(per_second(events, elapsed));
    }
    Ok(Row {
        id: "P2",
        what: "batch appends, 100 events per call, 4 appenders".to_owned(),
        framework: format!("{} events/s", thousands(best_framework)),
        raw: format!("{} events/s (pipelined XADD)", thousands(best_raw)),
        ratio: Some(best_framework / best_raw),
        ratio_means: "",
        target: Target::AtLeast(0.8),
    })
}

/// P3: the repository's round trip (load with snapshot + handle + append, a snapshot every
/// 100 events), 50 aggregates at once. The raw baseline does the same work by hand on a
/// stream per aggregate: HGETALL the state hash, XRANGE the events after it, XADD the new
/// event, and HSET the state every 100 events.
async fn p3_commands(
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

/// Counts items per cart in a hash read model: read → decode → handle → hash write → ack.
struct ItemsPerCart {
    model: HashReadModel,
}

#[async_trait::async_trait]
impl es_core::projection::Projection for ItemsPerCart {
    type Event = CartEvent;
    type Error = es_redis::Error;

    fn name(&self) -> &str {
        "items-per-cart"
    }

    fn categories(&self) -> Vec<std::borrow::Cow<'static, str>> {
        vec!["p4cart".into()]
    }

    async fn handle(&self, event: &es_core::RecordedEvent<CartEvent>) -> Result<(), Self::Error> {
        let _applied = self.update(event).commit().await?;
        Ok(())
    }

    /// One read-model commit for the whole delivered batch.
    async fn handle_batch(
        &self,
        events: &[es_core::RecordedEvent<CartEvent>],
    ) -> Result<(), BatchError<Self::Error>> {
        let mut batch = self.model.batch();
        for event in events {
            batch.push(self.update(event));
        }
        batch.commit().await.map_err(BatchError::nothing_handled)?;
        Ok(())
    }
}

impl ItemsPerCart {
    fn update(&self, event: &es_core::RecordedEvent<CartEvent>) -> ReadModelUpdate<'_> {
        let update = self.model.update(event);
        match &event.event {
            CartEvent::ItemAdded(item) => {
                update.hincrby(&event.stream.id, "items", i64::from(item.quantity))
            }
            CartEvent::CartCleared(_) => update.hset(&event.stream.id, "items", "0"),
        }
    }
}

/// P4: a projection catching up on 100,000 events through the projection runner (consumer
/// group read, decode, handle, idempotent hash write, ack), against a raw XREADGROUP +
/// XACK loop over the same entries with no decoding and no writes.
async fn p4_projection(
    sizes: &Sizes,
    server: &RedisServer,
    store: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Row, BoxError> {
    const STREAMS: usize = 100;
    let events = sizes.p4_events;
    let per_stream = events / STREAMS;
    let mut last = es_core::Position::ZERO;
    for s in 0..STREAMS {
        for first in (0..per_stream).step_by(BATCH) {
            let count = BATCH.min(per_stream - first);
            let batch = (first..first + count)
                .map(|n| new_event(n as u64))
                .collect::<Result<Vec<_>, _>>()?;
            let written = store
                .append(
                    &StreamId::new("p4cart", format!("c{s}")),
                    ExpectedVersion::Exact(first as u64),
                    batch,
                    &AppendOptions::default(),
                )
                .await?;
            last = last.max(written.positions.last().copied().unwrap_or(last));
        }
    }
    let total = STREAMS * per_stream;

    let projection = ItemsPerCart {
        model: HashReadModel::new(store, "items-per-cart"),
    };
    let runner = ProjectionRunner::connect(
        &server.config("bench"),
        projection,
        ProjectionOptions::new("bench-1").batch_size(BATCH * 5),
    )
    .await?;
    let monitor = runner.monitor();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    monitor
        .wait_for("p4cart", last, Duration::from_secs(600))
        .await?;
    let elapsed = started.elapsed();
    let _ = stop.send(());
    task.await??;
    let framework = per_second(total, elapsed);

    let key = store.keys().category_stream("p4cart");
    let mut raw = raw.clone();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("raw")
        .arg("0")
        .query_async(&mut raw)
        .await?;
    let started = Instant::now();
    let mut read = 0;
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("c1")
            .arg("COUNT")
            .arg(BATCH * 5)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut raw)
            .await?;
        let ids = entry_ids(reply);
        if ids.is_empty() {
            break;
        }
        read += ids.len();
        let _: u64 = redis::cmd("XACK")
            .arg(&key)
            .arg("raw")
            .arg(&ids)
            .query_async(&mut raw)
            .await?;
    }
    let baseline = per_second(read, started.elapsed());
    Ok(Row {
        id: "P4",
        what: format!(
            "projection catch-up, {} events (runner + hash read model)",
            thousands(total as f64)
        ),
        framework: format!("{} events/s", thousands(framework)),
        raw: format!("{} events/s (XREADGROUP + XACK)", thousands(baseline)),
        ratio: Some(framework / baseline),
        ratio_means: "",
        target: Target::AtLeast(0.8),
    })
}

/// The entry ids of an XREADGROUP reply for one stream.
fn entry_ids(reply: Value) -> Vec<Vec<u8>> {
    let streams = match reply {
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Vec::new(),
    };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        if let Some(Value::Array(entries)) = parts.into_iter().nth(1) {
            for entry in entries {
                if let Value::Array(entry) = entry {
                    if let Some(Value::BulkString(id)) = entry.into_iter().next() {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids
}

/// Times `iterations` runs of `body`; returns the time of one.
fn time_each(iterations: usize, mut body: impl FnMut()) -> Duration {
    for _ in 0..iterations / 10 {
        body();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        body();
    }
    started.elapsed() / iterations as u32
}

/// P5: the derived field codec against serde_json on the same event types.
fn p5_codec(sizes: &Sizes) -> Vec<Row> {
    let events: Vec<CartEvent> = (0..64).map(|n| item(n).into()).collect();
    let encoded: Vec<Fields> = events
        .iter()
        .map(|e| {
            let mut fields = Fields::new();
            e.encode(&mut fields).expect("derived events encode");
            fields
        })
        .collect();
    let json: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(e).expect("serde_json encodes"))
        .collect();
    let n = sizes.p5_iterations;
    let mut k = 0usize;
    let encode = time_each(n, || {
        let mut fields = Fields::new();
        black_box(&events[k % 64])
            .encode(&mut fields)
            .expect("encodes");
        black_box(fields);
        k += 1;
    });
    let encode_json = time_each(n, || {
        black_box(serde_json::to_vec(black_box(&events[k % 64])).expect("encodes"));
        k += 1;
    });
    let decode = time_each(n, || {
        let event = CartEvent::decode(black_box("ItemAdded"), black_box(&encoded[k % 64]))
            .expect("decodes");
        black_box(event);
        k += 1;
    });
    let decode_json = time_each(n, || {
        let event: CartEvent = serde_json::from_slice(black_box(&json[k % 64])).expect("decodes");
        black_box(event);
        k += 1;
    });
    let row = |what: &str, ours: Duration, theirs: Duration, target| Row {
        id: "P5",
        what: what.to_owned(),
        framework: format!("{:.0} ns", ours.as_secs_f64() * 1e9),
        raw: format!("{:.0} ns (serde_json)", theirs.as_secs_f64() * 1e9),
        ratio: Some(theirs.as_secs_f64() / ours.as_secs_f64()),
        ratio_means: "× faster",
        target,
    };
    vec![
        row(
            "encode one event (4 fields)",
            encode,
            encode_json,
            Target::None,
        ),
        row(
            "decode one event (4 fields)",
            decode,
            decode_json,
            Target::AtLeast(1.5),
        ),
    ]
}

/// P6: loading an aggregate of 10,000 events without snapshots, and with a snapshot every
/// 100 events (right after a snapshot, and with the longest tail, 99 events), against one
/// XRANGE of 100 entries.
async fn p6_loads(
    sizes: &Sizes,
    store: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Vec<Row>, BoxError> {
    let plain = Repository::<Cart, _>::new(store.clone());
    let snapshotting = Repository::<Cart, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(SNAPSHOT_EVERY));
    let batches = sizes.p6_events / BATCH;
    for b in 0..batches {
        let command = AddItems {
            count: BATCH,
            seed: (b * BATCH) as u64,
        };
        plain.execute("p6-replay", &command).await?;
        snapshotting.execute("p6-snapshot", &command).await?;
        snapshotting.execute("p6-snapshot-tail", &command).await?;
    }
    for i in 0..SNAPSHOT_EVERY - 1 {
        let command = AddItems { count: 1, seed: i };
        snapshotting.execute("p6-snapshot-tail", &command).await?;
    }

    let loads = sizes.p6_loads;
    let mut replay = Duration::MAX;
    let mut snapshot = Duration::MAX;
    let mut snapshot_tail = Duration::MAX;
    let mut xrange = Duration::MAX;
    let key = store.keys().category_stream("cart");
    for _ in 0..sizes.rounds {
        let started = Instant::now();
        for _ in 0..(loads / 10).max(1) {
            black_box(plain.load("p6-replay").await?);
        }
        replay = replay.min(started.elapsed() / (loads / 10).max(1) as u32);
        let started = Instant::now();
        for _ in 0..loads {
            black_box(snapshotting.load("p6-snapshot").await?);
        }
        snapshot = snapshot.min(started.elapsed() / loads as u32);
        let started = Instant::now();
        for _ in 0..loads {
            black_box(snapshotting.load("p6-snapshot-tail").await?);
        }
        snapshot_tail = snapshot_tail.min(started.elapsed() / loads as u32);
        let mut raw = raw.clone();
        let started = Instant::now();
        for _ in 0..loads {
            let entries: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(100)
                .query_async(&mut raw)
                .await?;
            black_box(entries);
        }
        xrange = xrange.min(started.elapsed() / loads as u32);
    }
    let events = sizes.p6_events;
    let row = |what: String, time: Duration, target| Row {
        id: "P6",
        what,
        framework: micros(time),
        raw: format!("{} (XRANGE COUNT 100)", micros(xrange)),
        ratio: Some(time.as_secs_f64() / xrange.as_secs_f64()),
        ratio_means: "× the time",
        target,
    };
    Ok(vec![
        row(
            format!("load {} events, no snapshot", thousands(events as f64)),
            replay,
            Target::None,
        ),
        row(
            format!(
                "load {} events, snapshot every 100, no tail",
                thousands(events as f64)
            ),
            snapshot,
            Target::AtMost(2.0),
        ),
        row(
            format!(
                "load {} events, snapshot every 100, 99-event tail",
                thousands((events + 99) as f64)
            ),
            snapshot_tail,
            Target::AtMost(2.0),
        ),
    ])
}

async fn used_memory(connection: &mut ConnectionManager) -> Result<u64, BoxError> {
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
async fn p7_memory(sizes: &Sizes) -> Result<Row, BoxError> {
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
