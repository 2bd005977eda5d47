//! What every measurement shares: the cart aggregate and its events, the sizes of a run,
//! the table's rows, and running many tasks at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use es_core::{Aggregate, Apply, Event, Handle, Metadata, NewEvent};
use serde::{Deserialize, Serialize};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ItemAdded {
    pub(crate) sku: String,
    pub(crate) quantity: u32,
    pub(crate) price_cents: u64,
    pub(crate) gift_wrap: bool,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CartCleared {
    pub(crate) reason: Option<String>,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum CartEvent {
    ItemAdded(ItemAdded),
    CartCleared(CartCleared),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = CartEvent, name = "cart")]
pub(crate) struct Cart {
    pub(crate) items: u64,
    pub(crate) total_cents: u64,
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
pub(crate) struct AddItems {
    pub(crate) count: usize,
    pub(crate) seed: u64,
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
pub(crate) fn item(n: u64) -> ItemAdded {
    ItemAdded {
        sku: format!("SKU-{:04}", n % 977),
        quantity: (n % 7 + 1) as u32,
        price_cents: 99 + (n * 37) % 5_000,
        gift_wrap: n.is_multiple_of(5),
    }
}

/// The entry the store writes for `item(n)` at `version` of `aggregate`, as raw `XADD`
/// arguments after the id: the same bytes the baselines write.
pub(crate) fn raw_entry(command: &mut redis::Cmd, aggregate: &str, version: u64, n: u64) {
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
pub(crate) fn item_pairs(command: &mut redis::Cmd, n: u64) {
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

pub(crate) fn new_event(n: u64) -> Result<NewEvent, BoxError> {
    Ok(NewEvent::encode(
        &CartEvent::from(item(n)),
        Metadata::default(),
    )?)
}

/// How much work each measurement does.
pub(crate) struct Sizes {
    /// P1: appends per aggregate (50 aggregates).
    pub(crate) p1_appends: usize,
    /// P2: 100-event calls per appender (4 appenders).
    pub(crate) p2_calls: usize,
    /// P3 cold: commands per aggregate (50 aggregates).
    pub(crate) p3_commands: usize,
    /// P3 hot: commands per aggregate (50 aggregates).
    pub(crate) p3_hot_commands: usize,
    /// P4: events the projection catches up on.
    pub(crate) p4_events: usize,
    /// P5: encodes and decodes of each kind.
    pub(crate) p5_iterations: usize,
    /// P6: events of the long aggregate, and how many loads are timed.
    pub(crate) p6_events: usize,
    pub(crate) p6_loads: usize,
    /// P7: aggregates (10 events each).
    pub(crate) p7_aggregates: usize,
    /// Measurements alternate framework and raw this many times; the best of each counts.
    pub(crate) rounds: usize,
}

pub(crate) const FULL: Sizes = Sizes {
    p1_appends: 400,
    p2_calls: 50,
    p3_commands: 200,
    p3_hot_commands: 100,
    p4_events: 100_000,
    p5_iterations: 1_000_000,
    p6_events: 10_000,
    p6_loads: 200,
    p7_aggregates: 10_000,
    rounds: 3,
};

pub(crate) const QUICK: Sizes = Sizes {
    p1_appends: 20,
    p2_calls: 5,
    p3_commands: 20,
    p3_hot_commands: 20,
    p4_events: 5_000,
    p5_iterations: 20_000,
    p6_events: 1_000,
    p6_loads: 10,
    p7_aggregates: 500,
    rounds: 1,
};

pub(crate) const CONCURRENCY: usize = 50;
pub(crate) const P2_APPENDERS: usize = 4;
pub(crate) const BATCH: usize = 100;
pub(crate) const SNAPSHOT_EVERY: u64 = 100;
/// The tail copies of the rows that measure them (`RedisConfig::tail_copies`): twice the
/// snapshot interval.
pub(crate) const TAIL_COPIES: usize = 2 * SNAPSHOT_EVERY as usize;

/// Which way a ratio should go to meet its target.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) what: String,
    pub(crate) framework: String,
    pub(crate) raw: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) ratio_means: &'static str,
    pub(crate) target: Target,
}

impl Row {
    pub(crate) fn verdict(&self) -> &'static str {
        match (self.target, self.ratio) {
            (Target::AtLeast(t), Some(r)) if r >= t => "met",
            (Target::AtMost(t), Some(r)) if r <= t => "met",
            (Target::None, _) => "-",
            (_, None) => "pending",
            _ => "MISSED",
        }
    }

    pub(crate) fn target_text(&self) -> String {
        match self.target {
            Target::AtLeast(t) => format!(">= {t}"),
            Target::AtMost(t) => format!("<= {t}"),
            Target::None => "-".to_owned(),
        }
    }
}

/// Runs `tasks` tasks of `per_task` operations each, all at once; returns the wall time and
/// every operation's latency.
pub(crate) async fn concurrently<F, Fut>(
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

pub(crate) fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

pub(crate) fn thousands(value: f64) -> String {
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

pub(crate) fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
