//! The framework against raw Redis, side by side, in one run (issue 6).
//!
//! ```text
//! cargo run --release --example benchmark             # the full run (a few minutes)
//! cargo run --release --example benchmark -- --quick  # a smoke run of a few seconds
//! cargo run --release --example benchmark -- --only P1,P6 --commandstats
//! cargo run --release --example benchmark -- --only P1W    # appends waiting for a replica
//! cargo run --release --example benchmark -- --only PG     # es-postgres against raw SQL
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

mod appends;
mod commands;
mod common;
mod loads;
mod memory;
mod personal;
mod postgres;
mod projection;
mod replication;

use appends::{p1_server_time, p1_single_appends, p2_batch_appends};
use commands::{p3_cold_commands, p3_hot_commands};
use common::{BoxError, Sizes, FULL, QUICK, TAIL_COPIES};
use loads::{p5_codec, p6_loads};
use memory::p7_memory;
use projection::p4_projection;

use es_redis::testing::RedisServer;
use es_redis::RedisEventStore;
use redis::aio::ConnectionManager;

/// The framework against raw Redis commands (and es-postgres against raw SQL), side by
/// side, in one run; see BENCHMARKS.md.
#[derive(clap::Parser)]
struct Options {
    /// A smoke run of a few seconds (what CI runs), instead of the full run.
    #[arg(long)]
    quick: bool,
    /// Only these measurements, comma-separated: P1, P2, P3, P4, P5, P6, P7, P1W (appends
    /// waiting for a replica), PG (es-postgres against raw SQL).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    only: Option<Vec<String>>,
    /// After each Redis measurement, print the server's time per call of each command (for
    /// telling server time from client time).
    #[arg(long)]
    commandstats: bool,
}

fn main() -> Result<(), BoxError> {
    let options = <Options as clap::Parser>::parse();
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

    // The same store with tail copies (RedisConfig::tail_copies), for the rows that show
    // what they buy and cost.
    let copies =
        RedisEventStore::connect(&server.config("bench-copies").tail_copies(TAIL_COPIES)).await?;
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
        rows.extend(p3_hot_commands(sizes, &store).await?);
        rows.extend(p3_cold_commands(sizes, &store, &copies, &raw).await?);
        commandstats(&options, "P3", &mut raw).await?;
    }
    if wanted("P4") {
        rows.push(p4_projection(sizes, &store, &raw).await?);
        commandstats(&options, "P4", &mut raw).await?;
    }
    if wanted("P5") {
        rows.extend(p5_codec(sizes));
    }
    if wanted("P8") {
        rows.extend(personal::p8_personal(sizes));
        rows.extend(personal::p8_personal_on_redis(sizes, &store).await?);
    }
    if wanted("P6") {
        rows.extend(p6_loads(sizes, &store, &copies, &raw).await?);
        commandstats(&options, "P6", &mut raw).await?;
    }
    if wanted("P1W") {
        // After the rows it would slow: a primary that had a replica keeps its backlog.
        rows.extend(replication::p1_replicated(sizes, &server).await?);
    }
    drop(store);
    drop(copies);
    drop(server);
    if wanted("PG") {
        rows.extend(postgres::postgres_rows(sizes).await?);
    }
    if wanted("P7") {
        rows.extend(p7_memory(sizes).await?);
    }

    println!();
    println!("| | measurement | framework | raw Redis (P) / raw SQL (PG) | ratio | target | |");
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
