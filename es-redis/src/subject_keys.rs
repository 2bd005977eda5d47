//! [`RedisKeys`]: data subjects' keys (es_core::personal) in a hash under the namespace,
//! `<namespace>:subject_keys`.

use std::collections::HashMap;

use async_trait::async_trait;
use es_core::personal::{KeyStore, SubjectKey};
use es_core::StoreError;
use redis::Value;

use crate::entry::{as_u64, into_array, into_bytes};
use crate::error::Error;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// Data subjects' keys in Redis: one hash, `<namespace>:subject_keys`, from each subject to
/// its key generation and key. Erasing a subject removes its key and keeps its generation.
///
/// ```no_run
/// # async fn run(store: es_redis::RedisEventStore) {
/// use es_core::personal::Shredded;
/// use es_redis::RedisKeys;
///
/// let keys = RedisKeys::new(&store);
/// let store = Shredded::new(store, keys);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisKeys {
    store: RedisEventStore,
    key: String,
}

impl RedisKeys {
    /// The keys of `store`'s namespace, on its connection.
    pub fn new(store: &RedisEventStore) -> Self {
        RedisKeys {
            key: store.keys().subject_keys(),
            store: store.clone(),
        }
    }

    fn parse(&self, subject: &str, record: &[u8]) -> Result<Option<SubjectKey>, Error> {
        let malformed = || {
            Error::unexpected(
                format!("HGET of {}", self.key),
                format!("a malformed key record for subject {subject:?}"),
            )
        };
        let colon = record
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(malformed)?;
        let generation = std::str::from_utf8(&record[..colon])
            .ok()
            .and_then(|g| g.parse::<u32>().ok())
            .ok_or_else(malformed)?;
        match &record[colon + 1..] {
            [] => Ok(None),
            key => {
                let key: [u8; 32] = key.try_into().map_err(|_| malformed())?;
                Ok(Some(SubjectKey { generation, key }))
            }
        }
    }
}

#[async_trait]
impl KeyStore for RedisKeys {
    async fn writing_key(
        &self,
        subject: &str,
        fresh: SubjectKey,
    ) -> Result<SubjectKey, StoreError> {
        let mut invocation = SCRIPTS.subject_key.prepare_invoke();
        invocation.key(&self.key).arg(subject).arg(&fresh.key[..]);
        let reply = self.store.run_script("subject_key", &invocation).await?;
        let record = into_bytes(reply)
            .ok_or_else(|| Error::unexpected("subject_key", "a reply that is no key record"))?;
        Ok(self.parse(subject, &record)?.ok_or_else(|| {
            Error::unexpected("subject_key", "an erased record for a key just made")
        })?)
    }

    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        if subjects.is_empty() {
            return Ok(HashMap::new());
        }
        let operation = format!("HMGET of {}", self.key);
        let reply = self
            .store
            .query(redis::cmd("HMGET").arg(&self.key).arg(subjects), &operation)
            .await?;
        let mut keys = HashMap::with_capacity(subjects.len());
        for (subject, record) in subjects.iter().zip(into_array(reply, &operation)?) {
            let Value::BulkString(record) = record else {
                continue;
            };
            if let Some(key) = self.parse(subject, &record)? {
                keys.insert((*subject).to_owned(), key);
            }
        }
        Ok(keys)
    }

    async fn erase(&self, subject: &str) -> Result<bool, StoreError> {
        let mut invocation = SCRIPTS.erase_subject.prepare_invoke();
        invocation.key(&self.key).arg(subject);
        let reply = self.store.run_script("erase_subject", &invocation).await?;
        Ok(as_u64(&reply) == Some(1))
    }
}
