//! P1 and P2: appends against raw `XADD`s, and Redis's own time per append.

use std::hint::black_box;
use std::sync::Arc;

use es_core::{AppendOptions, EventStore, ExpectedVersion, StreamId};
use es_redis::RedisEventStore;
use redis::aio::ConnectionManager;
use redis::Value;

use crate::common::*;

/// P1: one event per append with an expected version, 50 aggregates at once; the raw
/// baseline XADDs the same entries to one stream at the same concurrency. A second row sends
/// an append id too, as the repository does.
pub(crate) async fn p1_single_appends(
    sizes: &Sizes,
    store: &RedisEventStore,
    unbatched: &RedisEventStore,
    raw: &ConnectionManager,
) -> Result<Vec<Row>, BoxError> {
    // Best rate of: appends batched (the default), with an append id, not batched.
    let mut best = [0f64; 3];
    let mut best_raw = 0f64;
    for round in 0..sizes.rounds {
        for (variant, (store, with_id)) in [(store, false), (store, true), (unbatched, false)]
            .into_iter()
            .enumerate()
        {
            let prefix = format!("p1-{round}-{variant}");
            let rate = append_rate(store, prefix, sizes.p1_appends, with_id).await?;
            best[variant] = best[variant].max(rate);
        }
        best_raw = best_raw.max(raw_xadd_rate(raw, "p1", sizes.p1_appends).await?);
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

/// `XADD`/s of [`CONCURRENCY`] tasks each adding `per_task` entries shaped like P1's
/// events (aggregate `<prefix>-<task>`) to one raw stream: P1's baseline.
pub(crate) async fn raw_xadd_rate(
    raw: &ConnectionManager,
    prefix: &str,
    per_task: usize,
) -> Result<f64, BoxError> {
    let raw = raw.clone();
    let prefix = Arc::new(prefix.to_owned());
    let (elapsed, _) = concurrently(CONCURRENCY, per_task, move |task, i| {
        let mut raw = raw.clone();
        let prefix = prefix.clone();
        async move {
            let mut command = redis::cmd("XADD");
            command.arg("raw:{cart}:events").arg("*");
            raw_entry(
                &mut command,
                &format!("{prefix}-{task}"),
                i as u64 + 1,
                i as u64,
            );
            let _: String = command.query_async(&mut raw).await?;
            Ok(())
        }
    })
    .await?;
    Ok(per_second(CONCURRENCY * per_task, elapsed))
}

/// Appends/s of [`CONCURRENCY`] tasks each appending `per_task` single events, one at a
/// time, to its own aggregate (`<prefix>-<task>`) with an exact expected version, and with
/// an append id if `with_id` (as the repository sends).
pub(crate) async fn append_rate(
    store: &RedisEventStore,
    prefix: String,
    per_task: usize,
    with_id: bool,
) -> Result<f64, BoxError> {
    let store = store.clone();
    let prefix = Arc::new(prefix);
    let (elapsed, _) = concurrently(CONCURRENCY, per_task, move |task, i| {
        let store = store.clone();
        let prefix = prefix.clone();
        async move {
            let stream = StreamId::new("cart", format!("{prefix}-{task}"));
            let options = if with_id {
                AppendOptions::with_append_id(format!("{prefix}-{task}-{i}"))
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
    Ok(per_second(CONCURRENCY * per_task, elapsed))
}

/// The store's append script, exactly as es-redis loads it.
pub(crate) const ES_APPEND: &str = concat!(
    "#!lua\n",
    include_str!("../../../es-redis/src/scripts/entry_ids.lua"),
    include_str!("../../../es-redis/src/scripts/append.lua")
);

/// The smallest Lua append there can be: check the version (`LLEN` of the index), `XADD`
/// the entry, index it (`RPUSH`); 50 appends per call. `KEYS` are stream, index pairs; each
/// append's `ARGV` are its type, aggregate id and four field pairs.
pub(crate) const MINIMAL_APPEND: &str = r"
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
pub(crate) async fn server_time(
    raw: &mut ConnectionManager,
    command: &str,
) -> Result<(f64, f64), BoxError> {
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

pub(crate) async fn reset_stats(raw: &mut ConnectionManager) -> Result<(), BoxError> {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(raw)
        .await?;
    Ok(())
}

/// The server's total time in `EVALSHA` so far (`INFO commandstats`), in µs.
async fn evalsha_usec(raw: &mut ConnectionManager) -> Result<f64, BoxError> {
    Ok(server_time(raw, "evalsha")
        .await
        .map_or(0.0, |(usec, _)| usec))
}

/// Sends one call of the script `source` (loaded by the caller) appending one event to each
/// of [`CONCURRENCY`] aggregates `<call>-<a>` (`KEYS`: per append the stream, then each of
/// `aggregate_keys` for the aggregate, all under `prefix`; new the first time a prefix and
/// call are used); `header` are the arguments before the appends', `append` adds one
/// append's. Returns Redis's time in the call, in µs. A reply naming a conflict or an
/// error fails the measurement (it would time appends that wrote nothing).
#[allow(clippy::too_many_arguments)]
async fn script_call(
    raw: &mut ConnectionManager,
    source: &str,
    prefix: &str,
    call: usize,
    aggregate_keys: &[&str],
    shared_keys: &[&str],
    header: &[usize],
    append: &impl Fn(&mut redis::Cmd, String, u64),
) -> Result<f64, BoxError> {
    let mut invocation = redis::cmd("EVALSHA");
    invocation
        .arg(redis::Script::new(source).get_hash())
        .arg((1 + aggregate_keys.len() + shared_keys.len()) * CONCURRENCY);
    for a in 0..CONCURRENCY {
        invocation.arg(format!("{prefix}:{{cart}}:events"));
        for key in aggregate_keys {
            invocation.arg(format!("{prefix}:{{cart}}:{key}:{call}-{a}"));
        }
        for key in shared_keys {
            invocation.arg(format!("{prefix}:{{cart}}:{key}"));
        }
    }
    invocation.arg(header);
    for a in 0..CONCURRENCY {
        append(
            &mut invocation,
            format!("{call}-{a}"),
            (call * CONCURRENCY + a) as u64,
        );
    }
    let before = evalsha_usec(raw).await?;
    let reply: Value = invocation.query_async(raw).await?;
    let after = evalsha_usec(raw).await?;
    if let Value::Array(items) = &reply {
        let refused = items
            .iter()
            .any(|item| matches!(item, Value::BulkString(s) if s == b"conflict" || s == b"error"));
        if refused {
            return Err(format!("{prefix}: an append was refused: {reply:?}").into());
        }
    }
    Ok(after - before)
}

/// What limits P1: Redis's own time per append (`INFO commandstats`) on a server with nothing
/// else to do, for the store's append script and for the smallest Lua append there can be
/// ([`MINIMAL_APPEND`]), both sent by hand 50 appends per call, and for a raw `XADD`. With
/// the server as the bottleneck, these bound the rate any Lua append can reach against raw
/// `XADD`.
pub(crate) async fn p1_server_time(
    sizes: &Sizes,
    raw: &ConnectionManager,
) -> Result<Vec<Row>, BoxError> {
    let appends = CONCURRENCY * sizes.p1_appends;
    let calls = appends.div_ceil(CONCURRENCY);
    let mut raw = raw.clone();
    for source in [ES_APPEND, MINIMAL_APPEND] {
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(source)
            .query_async(&mut raw)
            .await?;
    }
    // Server time per append of each script and case. The scripts take turns call by call,
    // so the machine's noise falls on all of them alike: first on new aggregates, then once
    // more on the same ones.
    let mut es = [[0f64; 2]; 2]; // [new, existing][no id, with id]
    let mut minimal = [0f64; 2]; // [new, existing]
    for (case, existing) in [false, true].into_iter().enumerate() {
        let expected = usize::from(existing);
        for call in 0..calls {
            for (with_id, total) in es[case].iter_mut().enumerate() {
                // The store's own script: the remembered-id window, the number of appends,
                // no tail copies; then per append its length, aggregate id, expected
                // version, the append id's digest (6 bytes, unique per append) or none, one
                // event (its type and four field pairs), and the category's partition
                // count; each append's keys end with the category's partition record and its
                // set of aggregates.
                let append = |c: &mut redis::Cmd, id: String, n: u64| {
                    let digest = if with_id == 1 {
                        (n * 2 + expected as u64).to_be_bytes()[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    // This append's 15 arguments: 4 of its own, the event's type and pair
                    // count, its 4 pairs, and the category's partition count.
                    c.arg(15).arg(id).arg(expected).arg(digest).arg(1);
                    c.arg("ItemAdded").arg(4);
                    item_pairs(c, n);
                    c.arg(1);
                };
                let prefix = format!("es-{with_id}");
                let keys = ["index", "appends"];
                let header = [8, CONCURRENCY, 0];
                let shared = ["partitions", "aggregates"];
                *total += script_call(
                    &mut raw, ES_APPEND, &prefix, call, &keys, &shared, &header, &append,
                )
                .await?;
            }
            let append = |c: &mut redis::Cmd, id: String, n: u64| {
                c.arg("ItemAdded").arg(id);
                item_pairs(c, n);
            };
            minimal[case] += script_call(
                &mut raw,
                MINIMAL_APPEND,
                "minimal",
                call,
                &["index"],
                &[],
                &[],
                &append,
            )
            .await?;
        }
    }
    let per_append = |usec: f64| usec / appends as f64;
    let es = es.map(|case| case.map(per_append));
    let minimal = minimal.map(per_append);

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
    let against_minimal = |what: &str, case: usize, with_id: usize| Row {
        id: "P1 server",
        what: format!("Redis time per append, es-redis append script, {what}"),
        framework: format!("{:.1} µs/append", es[case][with_id]),
        raw: format!("{:.1} µs/append (smallest Lua append)", minimal[case]),
        ratio: Some(es[case][with_id] / minimal[case]),
        ratio_means: "× the time",
        target: Target::AtMost(1.3),
    };
    Ok(vec![
        row(
            format!("Redis time per append, es-redis append script ({CONCURRENCY} per call)"),
            es[0][0],
        ),
        row(
            format!(
                "Redis time per append, smallest Lua append (LLEN + XADD + RPUSH, {CONCURRENCY} per call)"
            ),
            minimal[0],
        ),
        against_minimal("new aggregates, no append id", 0, 0),
        against_minimal("new aggregates, with an append id", 0, 1),
        against_minimal("existing aggregates, no append id", 1, 0),
        against_minimal(
            "existing aggregates, with an append id (the repository's hot path)",
            1,
            1,
        ),
    ])
}

/// P2: 100 events per append, 4 appenders; the raw baseline sends the same 100 entries as
/// one pipeline of XADDs.
pub(crate) async fn p2_batch_appends(
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
