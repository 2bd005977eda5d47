//! The repository's memory of hot aggregates, and the per-aggregate lock that runs one
//! process's commands to an aggregate one at a time.
//!
//! The cache is [`quick_cache`]: a concurrent, sharded cache with a strict weight bound per
//! shard, an eviction policy that resists scans (CLOCK-Pro style: one pass over many cold
//! aggregates does not flush the hot ones), synchronous eviction (no background task), and
//! a small dependency footprint.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::Position;

/// How many aggregates a [`Repository`](crate::Repository) keeps in memory.
///
/// By default it keeps up to [`DEFAULT_AGGREGATES`](Self::DEFAULT_AGGREGATES) aggregates.
/// [`weighing`](Self::weighing) adds a bound on their total weight, measured by a function
/// of your own (say, an estimate of each state's bytes).
///
/// ```
/// # use es_core::{Aggregate, Apply, CacheConfig, Event, InMemoryStore, Repository};
/// # #[derive(Event)] struct Noted { text: String }
/// # #[derive(Event)] enum NoteEvent { Noted(Noted) }
/// # #[derive(Aggregate, Default)] #[aggregate(event = NoteEvent)] struct Notebook { #[aggregate(json)] notes: Vec<String> }
/// # impl Apply<Noted> for Notebook { fn apply(&mut self, e: &Noted) { self.notes.push(e.text.clone()); } }
/// // At most 1,000 notebooks, and at most about 64 MiB of notes between them.
/// let notebooks = Repository::<Notebook, _>::new(InMemoryStore::new()).with_cache(
///     CacheConfig::aggregates(1_000).weighing(64 << 20, |notebook: &Notebook| {
///         notebook.notes.iter().map(|n| n.len() as u64 + 24).sum()
///     }),
/// );
/// assert_eq!(notebooks.cache_stats().capacity_aggregates, 1_000);
/// ```
pub struct CacheConfig<A> {
    max_aggregates: usize,
    weight: Option<(u64, Weigher<A>)>,
}

type Weigher<A> = Arc<dyn Fn(&A) -> u64 + Send + Sync>;

impl<A> CacheConfig<A> {
    /// The default bound: 10,000 aggregates.
    pub const DEFAULT_AGGREGATES: usize = 10_000;

    /// Keeps up to `max` aggregates (0 turns the cache off, like
    /// [`Repository::without_cache`](crate::Repository::without_cache)).
    pub fn aggregates(max: usize) -> Self {
        CacheConfig {
            max_aggregates: max,
            weight: None,
        }
    }

    /// Also bounds the aggregates' total weight by `max_weight`, where `weigher` says what
    /// one aggregate's state weighs. Each aggregate counts for at least
    /// `max_weight / max_aggregates`, so the count bound still holds. The cache is split
    /// into up to 16 shards, each bounded by its share of the weight (at least 32 average
    /// aggregates' worth): an aggregate heavier than 95% of one share is not kept.
    pub fn weighing(
        mut self,
        max_weight: u64,
        weigher: impl Fn(&A) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.weight = Some((max_weight, Arc::new(weigher)));
        self
    }
}

impl<A> Default for CacheConfig<A> {
    fn default() -> Self {
        Self::aggregates(Self::DEFAULT_AGGREGATES)
    }
}

impl<A> Clone for CacheConfig<A> {
    fn clone(&self) -> Self {
        CacheConfig {
            max_aggregates: self.max_aggregates,
            weight: self.weight.clone(),
        }
    }
}

impl<A> fmt::Debug for CacheConfig<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("max_aggregates", &self.max_aggregates)
            .field("max_weight", &self.weight.as_ref().map(|(w, _)| *w))
            .finish()
    }
}

/// What the cache holds right now, and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Aggregates held.
    pub aggregates: usize,
    /// Their total weight (1 each without a weigher; see [`CacheConfig::weighing`]).
    pub weight: u64,
    /// The most aggregates it holds (0: the cache is off).
    pub capacity_aggregates: usize,
    /// The most weight it holds.
    pub capacity_weight: u64,
}

/// One cached aggregate: its state after `version`, whose last event is at `position`; or,
/// while a command works on it, a marker that holds its place (`state: None`).
pub(crate) struct Hot<A> {
    pub(crate) state: Option<Arc<A>>,
    pub(crate) version: u64,
    pub(crate) position: Position,
    weight: u64,
}

impl<A> Clone for Hot<A> {
    fn clone(&self) -> Self {
        Hot {
            state: self.state.clone(),
            version: self.version,
            position: self.position,
            weight: self.weight,
        }
    }
}

/// Weighs an entry by the weight computed when it was inserted (entries never change).
#[derive(Clone)]
struct HotWeighter;

impl<A> quick_cache::Weighter<String, Hot<A>> for HotWeighter {
    fn weight(&self, _id: &String, hot: &Hot<A>) -> u64 {
        hot.weight
    }
}

type Entries<A> = quick_cache::sync::Cache<String, Hot<A>, HotWeighter>;

/// The hot aggregates of one repository, and its per-aggregate locks.
pub(crate) struct AggregateCache<A> {
    entries: Option<Entries<A>>,
    /// The least weight an entry counts for: `max_weight / max_aggregates`, rounded up.
    least_weight: u64,
    weigher: Option<Weigher<A>>,
    capacity_aggregates: usize,
    locks: AggregateLocks,
}

/// quick_cache admits an entry only if it weighs at most this share of its shard.
const ADMITTED_SHARE: f64 = 0.95;

impl<A> AggregateCache<A> {
    pub(crate) fn new(config: CacheConfig<A>) -> Self {
        let max = config.max_aggregates;
        let (max_weight, weigher) = match config.weight {
            Some((weight, weigher)) => (weight, Some(weigher)),
            None => (max as u64, None),
        };
        let off = AggregateCache {
            entries: None,
            least_weight: 1,
            weigher: None,
            capacity_aggregates: 0,
            locks: AggregateLocks::default(),
        };
        if max == 0 || max_weight == 0 {
            return off;
        }
        // quick_cache bounds each shard by an equal share of the weight; with shards that
        // divide the bound, the whole cache never holds more than it. At least 32
        // aggregates per shard, as quick_cache wants.
        let mut shards = 16usize;
        while shards > 1 && max / shards < 32 {
            shards /= 2;
        }
        let share = max_weight / shards as u64;
        if share == 0 {
            return off;
        }
        // Every entry counts for at least `max_weight / max`, so at most `max` fit; but no
        // more than a shard admits (only a one-aggregate cache comes near that, and one
        // entry of that weight is still all it holds).
        let least_weight = max_weight
            .div_ceil(max as u64)
            .min((share as f64 * ADMITTED_SHARE) as u64)
            .max(1);
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(max)
            .weight_capacity(share * shards as u64)
            .build();
        let entries = match options {
            Ok(options) => {
                Entries::with_options(options, HotWeighter, Default::default(), Default::default())
            }
            Err(error) => {
                tracing::warn!(%error, "aggregate cache turned off: invalid bounds");
                return off;
            }
        };
        AggregateCache {
            capacity_aggregates: max,
            entries: Some(entries),
            least_weight,
            weigher,
            locks: AggregateLocks::default(),
        }
    }

    /// Waits until no other command of this repository works on aggregate `id`.
    pub(crate) async fn lock(&self, id: &str) -> AggregateGuard<'_> {
        self.locks.lock(id).await
    }

    /// Lends aggregate `id` to a command (which holds its lock): its cached state, if any,
    /// comes out of the cache while the entry keeps its place there. The command gives it
    /// back with [`Lent::keep`]; otherwise (an error, or the command was cancelled) the
    /// aggregate is forgotten.
    pub(crate) fn lend(&self, id: &str) -> Lent<'_, A> {
        let hot = self.entries.as_ref().and_then(|entries| {
            let hot = entries.get(id)?;
            // A marker in its place, so the entry keeps what the cache knows of its use.
            let marker = Hot {
                state: None,
                version: hot.version,
                position: hot.position,
                weight: hot.weight,
            };
            let _ = entries.replace(id.to_owned(), marker, true);
            Some(hot)
        });
        Lent {
            cache: self,
            id: id.to_owned(),
            hot,
            kept: false,
        }
    }

    fn insert(&self, id: String, state: Arc<A>, version: u64, position: Position) {
        let Some(entries) = &self.entries else {
            return;
        };
        let weight = self
            .weigher
            .as_ref()
            .map_or(0, |weigh| weigh(&state))
            .max(self.least_weight);
        entries.insert(
            id,
            Hot {
                state: Some(state),
                version,
                position,
                weight,
            },
        );
    }

    pub(crate) fn stats(&self) -> CacheStats {
        match &self.entries {
            Some(entries) => CacheStats {
                aggregates: entries.len(),
                weight: entries.weight(),
                capacity_aggregates: self.capacity_aggregates,
                capacity_weight: entries.capacity(),
            },
            None => CacheStats::default(),
        }
    }
}

/// An aggregate lent to a command: see [`AggregateCache::lend`].
pub(crate) struct Lent<'a, A> {
    cache: &'a AggregateCache<A>,
    id: String,
    hot: Option<Hot<A>>,
    kept: bool,
}

impl<A> Lent<'_, A> {
    /// The cached state with its version and position, if the cache held it.
    pub(crate) fn take(&mut self) -> Option<(Arc<A>, u64, Position)> {
        let hot = self.hot.take()?;
        Some((hot.state?, hot.version, hot.position))
    }

    /// Gives the aggregate back to the cache at `state` / `version` / `position`.
    pub(crate) fn keep(mut self, state: Arc<A>, version: u64, position: Position) {
        self.kept = true;
        self.cache
            .insert(std::mem::take(&mut self.id), state, version, position);
    }
}

impl<A> Drop for Lent<'_, A> {
    fn drop(&mut self) {
        if !self.kept {
            if let Some(entries) = &self.cache.entries {
                entries.remove(&self.id);
            }
        }
    }
}

/// One async mutex per aggregate with a command in flight; an entry is dropped with its
/// last guard, so the table holds only aggregates being worked on.
#[derive(Default)]
struct AggregateLocks {
    table: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AggregateLocks {
    async fn lock(&self, id: &str) -> AggregateGuard<'_> {
        let mutex = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.entry(id.to_owned()).or_default().clone()
        };
        // The guard exists before the wait, so a caller cancelled while waiting still
        // takes its table entry away with it.
        let mut guard = AggregateGuard {
            locks: self,
            id: id.to_owned(),
            mutex: mutex.clone(),
            guard: None,
        };
        guard.guard = Some(mutex.lock_owned().await);
        guard
    }
}

/// Held while a command works on one aggregate.
pub(crate) struct AggregateGuard<'a> {
    locks: &'a AggregateLocks,
    id: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for AggregateGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut table = self
            .locks
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones are only made under the table's lock: two references (the table's and
        // ours) mean no other command holds or waits for this aggregate.
        if Arc::strong_count(&self.mutex) == 2 {
            table.remove(&self.id);
        }
    }
}
