//! [`InMemoryReadModels`]: read models kept in memory, with the same exactly-once commit
//! as every backend.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{incremented, Applied, EventWrites, HashWrite, ReadModelStore};
use crate::error::StoreError;
use crate::store::Position;

type Hash = BTreeMap<String, Vec<u8>>;

/// Read models in memory: what [`InMemoryStore`](crate::InMemoryStore) keeps, and what a
/// projection's unit tests write to. It records applied events by category and position,
/// so it suits stores whose categories have one order (positions of different partitions
/// may be equal).
#[derive(Default)]
pub struct InMemoryReadModels {
    models: Mutex<HashMap<String, Model>>,
}

impl std::fmt::Debug for InMemoryReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryReadModels").finish_non_exhaustive()
    }
}

#[derive(Default, Clone)]
struct Model {
    hashes: BTreeMap<String, Hash>,
    /// Applied positions per category.
    applied: HashMap<String, HashSet<Position>>,
}

impl InMemoryReadModels {
    /// No read models yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Model>> {
        // A commit works on a copy and swaps it in: a panic cannot leave half a commit.
        self.models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ReadModelStore for InMemoryReadModels {
    async fn commit(
        &self,
        projection: &str,
        updates: Vec<EventWrites>,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut models = self.lock();
        let mut model = models.get(projection).cloned().unwrap_or_default();
        let mut outcomes = Vec::with_capacity(updates.len());
        for update in updates {
            let applied = model
                .applied
                .entry(update.stream.category.to_string())
                .or_default();
            if !applied.insert(update.position) {
                outcomes.push(Applied::AlreadyApplied);
                continue;
            }
            outcomes.push(Applied::Applied);
            for write in update.writes {
                apply(&mut model.hashes, write)?;
            }
        }
        models.insert(projection.to_owned(), model);
        Ok(outcomes)
    }

    async fn hash(&self, projection: &str, name: &str) -> Result<Hash, StoreError> {
        Ok(self
            .lock()
            .get(projection)
            .and_then(|model| model.hashes.get(name).cloned())
            .unwrap_or_default())
    }

    async fn hashes(&self, projection: &str) -> Result<BTreeMap<String, Hash>, StoreError> {
        Ok(self
            .lock()
            .get(projection)
            .map(|model| model.hashes.clone())
            .unwrap_or_default())
    }

    async fn applied_count(&self, projection: &str, category: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .get(projection)
            .and_then(|model| model.applied.get(category))
            .map_or(0, |applied| applied.len() as u64))
    }

    async fn clear(&self, projection: &str) -> Result<u64, StoreError> {
        Ok(self.lock().remove(projection).map_or(0, |model| {
            (model.hashes.len() + usize::from(!model.applied.is_empty())) as u64
        }))
    }
}

/// Applies one write; an empty hash is gone, as in Redis.
fn apply(hashes: &mut BTreeMap<String, Hash>, write: HashWrite) -> Result<(), StoreError> {
    match write {
        HashWrite::Set { hash, field, value } => {
            hashes.entry(hash).or_default().insert(field, value);
        }
        HashWrite::Remove { hash, field } => {
            if let Some(fields) = hashes.get_mut(&hash) {
                fields.remove(&field);
                if fields.is_empty() {
                    hashes.remove(&hash);
                }
            }
        }
        HashWrite::Increment { hash, field, by } => {
            let current = hashes.get(&hash).and_then(|fields| fields.get(&field));
            let sum = incremented(&hash, &field, current.map(Vec::as_slice), by)?;
            hashes.entry(hash).or_default().insert(field, sum);
        }
        HashWrite::Delete { hash } => {
            hashes.remove(&hash);
        }
    }
    Ok(())
}
