//! P5 and P6: the event codec, and loading aggregates.

use std::hint::black_box;
use std::time::{Duration, Instant};

use es_core::codec::Fields;
use es_core::{Event, Repository, SnapshotPolicy};
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
pub(crate) async fn p6_loads(
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
