//! P5 and P6: the event codec, and loading aggregates.

use std::hint::black_box;
use std::time::{Duration, Instant};

use es_core::codec::Fields;
use es_core::{Event, Repository, SnapshotPolicy, StreamId};
use es_redis::RedisEventStore;
use redis::aio::ConnectionManager;
use redis::Value;

use crate::common::*;

/// Times `iterations` runs of `body`; returns the time of one.
pub(crate) fn time_each(iterations: usize, mut body: impl FnMut()) -> Duration {
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
pub(crate) fn p5_codec(sizes: &Sizes) -> Vec<Row> {
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
///
/// The interleaved tail is also loaded through `copies`, a store with tail copies
/// (`RedisConfig::tail_copies`).
pub(crate) async fn p6_loads(
    sizes: &Sizes,
    store: &RedisEventStore,
    copies: &RedisEventStore,
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
    // The same tail, interleaved: after its snapshot, the aggregate and 49 others append one
    // event each in turn, so no two of its tail entries are next to each other.
    let copying = Repository::<Cart, _>::new(copies.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(SNAPSHOT_EVERY));
    for repository in [&snapshotting, &copying] {
        let command = AddItems {
            count: SNAPSHOT_EVERY as usize,
            seed: 0,
        };
        repository.execute("p6-interleaved", &command).await?;
        for i in 0..SNAPSHOT_EVERY - 1 {
            let command = AddItems { count: 1, seed: i };
            for other in 0..CONCURRENCY - 1 {
                repository
                    .execute(&format!("p6-neighbour-{other}"), &command)
                    .await?;
            }
            repository.execute("p6-interleaved", &command).await?;
        }
    }

    let loads = sizes.p6_loads;
    let mut replay = Duration::MAX;
    let mut snapshot = Duration::MAX;
    let mut snapshot_tail = Duration::MAX;
    let mut interleaved = Duration::MAX;
    let mut interleaved_copies = Duration::MAX;
    let mut xrange = Duration::MAX;
    let mut xrange_99 = Duration::MAX;
    let key = store.keys().category_stream("cart");
    // The interleaved tail's entry ids, as the index holds them.
    let index = store.keys().index(&StreamId::new("cart", "p6-interleaved"));
    let tail_ids: Vec<String> = redis::cmd("LRANGE")
        .arg(&index)
        .arg(SNAPSHOT_EVERY + 1)
        .arg(-1)
        .query_async(&mut raw.clone())
        .await?;
    let mut pipelined = Duration::MAX;
    let mut xread = Duration::MAX;
    let mut in_lua = Duration::MAX;
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
        let started = Instant::now();
        for _ in 0..loads {
            black_box(snapshotting.load("p6-interleaved").await?);
        }
        interleaved = interleaved.min(started.elapsed() / loads as u32);
        let started = Instant::now();
        for _ in 0..loads {
            black_box(copying.load("p6-interleaved").await?);
        }
        interleaved_copies = interleaved_copies.min(started.elapsed() / loads as u32);
        let mut raw = raw.clone();
        let started = Instant::now();
        for _ in 0..loads {
            let mut pipe = redis::pipe();
            for id in &tail_ids {
                pipe.cmd("XRANGE").arg(&key).arg(id).arg(id);
            }
            let entries: Vec<Value> = pipe.query_async(&mut raw).await?;
            black_box(entries);
        }
        pipelined = pipelined.min(started.elapsed() / loads as u32);
        let started = Instant::now();
        for _ in 0..loads {
            let mut command = redis::cmd("XREAD");
            command.arg("COUNT").arg(1).arg("STREAMS");
            for _ in &tail_ids {
                command.arg(&key);
            }
            for id in &tail_ids {
                let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
                let seq: u64 = seq.parse()?;
                command.arg(format!("{ms}-{}", seq.saturating_sub(1)));
            }
            let entries: Value = command.query_async(&mut raw).await?;
            black_box(entries);
        }
        xread = xread.min(started.elapsed() / loads as u32);
        let started = Instant::now();
        for _ in 0..loads {
            let entries: Value = redis::Script::new(READ_ENTRIES_IN_LUA)
                .key(&key)
                .arg(&tail_ids)
                .invoke_async(&mut raw)
                .await?;
            black_box(entries);
        }
        in_lua = in_lua.min(started.elapsed() / loads as u32);
        for (count, best) in [(100, &mut xrange), (99, &mut xrange_99)] {
            let started = Instant::now();
            for _ in 0..loads {
                let entries: Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut raw)
                    .await?;
                black_box(entries);
            }
            *best = (*best).min(started.elapsed() / loads as u32);
        }
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
        Row {
            id: "P6 interleaved",
            raw: format!("{} (XRANGE COUNT 99)", micros(xrange_99)),
            ratio: Some(interleaved.as_secs_f64() / xrange_99.as_secs_f64()),
            ..row(
                "load 100 + 99 events, snapshot every 100, the 99-event tail interleaved \
                 with 49 other aggregates' events"
                    .to_owned(),
                interleaved,
                Target::AtMost(2.0),
            )
        },
        Row {
            id: "P6 interleaved copies",
            what: format!(
                "the same with `tail_copies({TAIL_COPIES})`: snapshot and tail in one round trip"
            ),
            framework: micros(interleaved_copies),
            raw: format!("{} (XRANGE COUNT 99)", micros(xrange_99)),
            ratio: Some(interleaved_copies.as_secs_f64() / xrange_99.as_secs_f64()),
            ratio_means: "× the time",
            target: Target::AtMost(2.0),
        },
        Row {
            id: "P6 interleaved",
            what: format!(
                "raw only: the same {} tail entries as one pipeline of single-entry XRANGEs",
                tail_ids.len()
            ),
            framework: "-".to_owned(),
            raw: format!("{} (XRANGE COUNT 99)", micros(xrange_99)),
            ratio: Some(pipelined.as_secs_f64() / xrange_99.as_secs_f64()),
            ratio_means: "× the time",
            target: Target::None,
        },
        Row {
            id: "P6 interleaved",
            what: format!(
                "raw only: the same {} tail entries as one XREAD COUNT 1 naming the stream once per entry",
                tail_ids.len()
            ),
            framework: "-".to_owned(),
            raw: format!("{} (XRANGE COUNT 99)", micros(xrange_99)),
            ratio: Some(xread.as_secs_f64() / xrange_99.as_secs_f64()),
            ratio_means: "× the time",
            target: Target::None,
        },
        Row {
            id: "P6 interleaved",
            what: format!(
                "raw only: the same {} tail entries read by a script (XRANGE id id each) that returns them",
                tail_ids.len()
            ),
            framework: "-".to_owned(),
            raw: format!("{} (XRANGE COUNT 99)", micros(xrange_99)),
            ratio: Some(in_lua.as_secs_f64() / xrange_99.as_secs_f64()),
            ratio_means: "× the time",
            target: Target::None,
        },
    ])
}

/// A candidate for reading an interleaved tail: a script that reads each entry and returns
/// them all (one round trip; the entries pass through Lua tables).
const READ_ENTRIES_IN_LUA: &str = r"
local out = {}
for i, id in ipairs(ARGV) do
  out[i] = redis.call('XRANGE', KEYS[1], id, id)[1]
end
return out
";
