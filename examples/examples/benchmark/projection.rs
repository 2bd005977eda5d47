//! P4: a projection catching up into a hash read model.

use std::time::{Duration, Instant};

use es_core::projection::{BatchError, ProjectionBackend, ProjectionOptions, ProjectionRunner};
use es_core::read_model::{ReadModel, ReadModelUpdate};
use es_core::{AppendOptions, EventStore, ExpectedVersion, StreamId};
use es_redis::{ProjectionMonitor, RedisEventStore};
use redis::aio::ConnectionManager;
use redis::Value;

use crate::common::*;

/// Counts items per cart in a hash read model: read → decode → handle → hash write → ack.
pub(crate) struct ItemsPerCart {
    model: ReadModel,
}

#[async_trait::async_trait]
impl es_core::projection::Projection for ItemsPerCart {
    type Event = CartEvent;
    type Error = es_core::StoreError;

    fn name(&self) -> &str {
        self.model.projection()
    }

    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
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
pub(crate) async fn p4_projection(
    sizes: &Sizes,
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
        model: store.read_model("items-per-cart"),
    };
    let runner = ProjectionRunner::connect(
        store,
        projection,
        ProjectionOptions::new("bench-1").batch_size(BATCH * 5),
    )
    .await?;
    let monitor = ProjectionMonitor::of(store, runner.projection());
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
pub(crate) fn entry_ids(reply: Value) -> Vec<Vec<u8>> {
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
