//! P1 with a replica: what `RedisConfig::wait_for_replicas` costs.

use std::time::{Duration, Instant};

use es_redis::testing::RedisServer;
use es_redis::RedisEventStore;

use crate::appends::{append_rate, raw_xadd_rate};
use crate::common::*;

/// P1's appends with a replica attached (loopback): not waiting for it, and waiting for
/// it (`wait_for_replicas(1, 1 s)`), against raw `XADD`s at the same concurrency, all
/// measured with the replica attached.
pub(crate) async fn p1_replicated(
    sizes: &Sizes,
    server: &RedisServer,
) -> Result<Vec<Row>, BoxError> {
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &server.port().to_string()])?;
    wait_for_link(&replica).await?;
    let plain = RedisEventStore::connect(&server.config("bench-replicated")).await?;
    let waiting = RedisEventStore::connect(
        &server
            .config("bench-replicated")
            .wait_for_replicas(1, Duration::from_secs(1)),
    )
    .await?;
    let raw = server.config("raw").connect().await?;
    let (mut best_plain, mut best_waiting, mut best_raw) = (0f64, 0f64, 0f64);
    for round in 0..sizes.rounds {
        let rate =
            append_rate(&plain, format!("p1r-{round}-plain"), sizes.p1_appends, true).await?;
        best_plain = best_plain.max(rate);
        let rate = append_rate(
            &waiting,
            format!("p1r-{round}-wait"),
            sizes.p1_appends,
            true,
        )
        .await?;
        best_waiting = best_waiting.max(rate);
        best_raw = best_raw.max(raw_xadd_rate(&raw, "p1r", sizes.p1_appends).await?);
    }
    let row = |id, what: &str, rate: f64| Row {
        id,
        what: what.to_owned(),
        framework: format!("{} appends/s", thousands(rate)),
        raw: format!("{} XADD/s (replica attached)", thousands(best_raw)),
        ratio: Some(rate / best_raw),
        ratio_means: "",
        target: Target::None,
    };
    Ok(vec![
        row(
            "P1 replica",
            "P1' with a replica attached, not waiting for it",
            best_plain,
        ),
        row(
            "P1 WAIT",
            "P1' waiting for the replica (`wait_for_replicas(1, 1 s)`)",
            best_waiting,
        ),
    ])
}

/// Polls the replica until its link to the primary is up (at most 20 s).
async fn wait_for_link(replica: &RedisServer) -> Result<(), BoxError> {
    let mut connection = replica.config("raw").connect().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut connection)
            .await?;
        if info.contains("master_link_status:up") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("the replica's link to the primary did not come up within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
