//! [`PostgresKeys`]: data subjects' keys (es_core::personal) in table `subject_keys`.

use std::collections::HashMap;

use async_trait::async_trait;
use es_core::personal::{KeyStore, SubjectKey};
use es_core::StoreError;
use tokio_postgres::Row;

use crate::error::store_error;
use crate::store::PostgresEventStore;

/// Data subjects' keys in PostgreSQL: table `subject_keys` of the store's schema, one row
/// per subject with its key generation and its key (`NULL` once erased).
///
/// ```no_run
/// # fn run(store: es_postgres::PostgresEventStore) {
/// use es_core::personal::Shredded;
/// use es_postgres::PostgresKeys;
///
/// let store = Shredded::new(store.clone(), PostgresKeys::new(&store));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresKeys {
    store: PostgresEventStore,
    writing: String,
    current: String,
    keys: String,
    erase: String,
}

impl PostgresKeys {
    /// The keys of `store`'s schema.
    pub fn new(store: &PostgresEventStore) -> Self {
        let s = store.quoted_schema();
        PostgresKeys {
            writing: format!(
                "INSERT INTO {s}.subject_keys AS k (subject, generation, key) VALUES ($1, 1, $2) \
                 ON CONFLICT (subject) DO UPDATE SET generation = k.generation + 1, key = $2 \
                 WHERE k.key IS NULL RETURNING generation, key"
            ),
            current: format!("SELECT generation, key FROM {s}.subject_keys WHERE subject = $1"),
            keys: format!(
                "SELECT subject, generation, key FROM {s}.subject_keys \
                 WHERE subject = ANY($1) AND key IS NOT NULL"
            ),
            erase: format!(
                "UPDATE {s}.subject_keys SET key = NULL WHERE subject = $1 AND key IS NOT NULL \
                 RETURNING subject"
            ),
            store: store.clone(),
        }
    }
}

/// A row's generation and key, if it has one.
fn key_of(row: &Row, at: usize) -> Result<Option<SubjectKey>, StoreError> {
    let generation: i32 = row.try_get(at).map_err(store_error)?;
    let key: Option<Vec<u8>> = row.try_get(at + 1).map_err(store_error)?;
    match key {
        None => Ok(None),
        Some(key) => {
            let key: [u8; 32] = key.try_into().map_err(|_| {
                StoreError::InvalidRequest("a subject key that is not 32 bytes".to_owned())
            })?;
            Ok(Some(SubjectKey {
                generation: generation as u32,
                key,
            }))
        }
    }
}

#[async_trait]
impl KeyStore for PostgresKeys {
    async fn writing_key(
        &self,
        subject: &str,
        fresh: SubjectKey,
    ) -> Result<SubjectKey, StoreError> {
        let made = self
            .store
            .query(&self.writing, &[&subject, &&fresh.key[..]])
            .await?;
        // No row: the subject has a key, which the insert left as it was.
        let rows = match made.is_empty() {
            true => self.store.query(&self.current, &[&subject]).await?,
            false => made,
        };
        let row = rows.first().ok_or_else(|| {
            StoreError::InvalidRequest(format!("subject {subject:?} has no key after making one"))
        })?;
        key_of(row, 0)?.ok_or_else(|| {
            StoreError::InvalidRequest(format!(
                "subject {subject:?} was erased while its key was made"
            ))
        })
    }

    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        let rows = self.store.query(&self.keys, &[&subjects]).await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in &rows {
            let subject: String = row.try_get(0).map_err(store_error)?;
            if let Some(key) = key_of(row, 1)? {
                keys.insert(subject, key);
            }
        }
        Ok(keys)
    }

    async fn erase(&self, subject: &str) -> Result<bool, StoreError> {
        let rows = self.store.query(&self.erase, &[&subject]).await?;
        Ok(!rows.is_empty())
    }
}
