//! Where subjects' keys are kept: [`KeyStore`], and [`InMemoryKeys`] for tests and the
//! in-memory backend. es-redis keeps them in a hash under the namespace, es-postgres in a
//! table.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::crypto::SubjectKey;
use crate::error::StoreError;

/// Keeps one key per data subject. Erasing a subject deletes its key, so everything sealed
/// with it can never be read again; a subject written again after an erasure gets a key of
/// the next generation.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The current key of `subject`, made (from `fresh`, a new random key of generation
    /// 1) when it has none: generation 1 for a new subject, one more than the erased key's
    /// after an erasure.
    async fn writing_key(&self, subject: &str, fresh: SubjectKey)
        -> Result<SubjectKey, StoreError>;

    /// The current keys of `subjects`; a subject without one (never written, or erased)
    /// is absent.
    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError>;

    /// Deletes the key of `subject`; whether it had one.
    async fn erase(&self, subject: &str) -> Result<bool, StoreError>;
}

#[async_trait]
impl<K: KeyStore + ?Sized> KeyStore for std::sync::Arc<K> {
    async fn writing_key(
        &self,
        subject: &str,
        fresh: SubjectKey,
    ) -> Result<SubjectKey, StoreError> {
        (**self).writing_key(subject, fresh).await
    }
    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        (**self).keys(subjects).await
    }
    async fn erase(&self, subject: &str) -> Result<bool, StoreError> {
        (**self).erase(subject).await
    }
}

/// Per subject: the last generation, and its key unless erased.
type Records = HashMap<String, (u32, Option<[u8; 32]>)>;

/// Keys in memory: for tests and the in-memory backend (they go with the process).
#[derive(Debug, Default)]
pub struct InMemoryKeys {
    keys: Mutex<Records>,
}

impl InMemoryKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl KeyStore for InMemoryKeys {
    async fn writing_key(
        &self,
        subject: &str,
        fresh: SubjectKey,
    ) -> Result<SubjectKey, StoreError> {
        let mut keys = self.lock();
        let entry = keys.entry(subject.to_owned()).or_insert((0, None));
        match entry {
            (generation, Some(key)) => Ok(SubjectKey {
                generation: *generation,
                key: *key,
            }),
            (generation, None) => {
                *generation += 1;
                *entry = (*generation, Some(fresh.key));
                Ok(SubjectKey {
                    generation: entry.0,
                    key: fresh.key,
                })
            }
        }
    }

    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        let keys = self.lock();
        Ok(subjects
            .iter()
            .filter_map(|subject| match keys.get(*subject) {
                Some((generation, Some(key))) => Some((
                    (*subject).to_owned(),
                    SubjectKey {
                        generation: *generation,
                        key: *key,
                    },
                )),
                _ => None,
            })
            .collect())
    }

    async fn erase(&self, subject: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .get_mut(subject)
            .and_then(|(_, key)| key.take())
            .is_some())
    }
}
