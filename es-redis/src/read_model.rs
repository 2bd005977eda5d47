//! [`RedisReadModels`]: es-core's [`ReadModel`](es_core::read_model::ReadModel)s kept in
//! Redis hashes, each event applied exactly once.
//!
//! An update and the record that its event was applied commit together, in one Lua script
//! that first checks the record: a second delivery of the same entry changes nothing. The
//! record is a sorted set of applied entry ids per projection and category (per
//! partition), scored by when they were applied; the runner prunes ids that can no longer
//! be delivered (see [`ProjectionOptions::prune_grace`]).
//!
//! Keys live under the projection's own hash tag, `<namespace>:{rm:<projection>}:<name>`
//! ([`KeyLayout::read_model_hash`]), so one script can touch any of them on Redis Cluster.
//!
//! [`ProjectionOptions::prune_grace`]: es_core::projection::ProjectionOptions::prune_grace

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use es_core::read_model::{Applied, EventWrites, HashWrite, ReadModelStore};
use es_core::StoreError;
use redis::Value;

use crate::connection::RedisConnection;
use crate::entry::{as_u64, into_array, into_bytes};
use crate::error::Error;
use crate::keys::KeyLayout;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// Where a [`RedisEventStore`] keeps read models: Redis hashes (see the module docs). Get
/// a projection's read model with
/// [`ProjectionBackend::read_model`](es_core::projection::ProjectionBackend::read_model).
#[derive(Clone)]
pub struct RedisReadModels {
    connection: RedisConnection,
    keys: KeyLayout,
}

impl std::fmt::Debug for RedisReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReadModels")
            .field("namespace", &self.keys.namespace())
            .finish_non_exhaustive()
    }
}

impl RedisReadModels {
    /// The read models of `store`'s namespace, on its connection.
    pub fn new(store: &RedisEventStore) -> Self {
        RedisReadModels {
            connection: store.connection(),
            keys: store.keys().clone(),
        }
    }

    /// Encodes and runs the commit script.
    async fn run_commit(
        &self,
        projection: &str,
        updates: Vec<EventWrites>,
    ) -> Result<Vec<Applied>, Error> {
        let count = updates.len();
        let mut keys: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut key_index = |key: String| -> usize {
            if let Some(i) = index.get(&key) {
                return *i;
            }
            keys.push(key.clone());
            index.insert(key, keys.len());
            keys.len()
        };
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(1 + count * 8);
        args.push(count.to_string().into_bytes());
        for update in updates {
            let applied_key = self.keys.applied_entries(
                projection,
                &update.stream.category,
                self.keys.partition_of(&update.stream),
            );
            args.push(key_index(applied_key).to_string().into_bytes());
            args.push(update.position.to_string().into_bytes());
            args.push(update.writes.len().to_string().into_bytes());
            for write in update.writes {
                let (code, hash, rest): (&str, String, Vec<Vec<u8>>) = match write {
                    HashWrite::Set { hash, field, value } => {
                        ("hset", hash, vec![field.into_bytes(), value])
                    }
                    HashWrite::Remove { hash, field } => ("hdel", hash, vec![field.into_bytes()]),
                    HashWrite::Increment { hash, field, by } => (
                        "hincrby",
                        hash,
                        vec![field.into_bytes(), by.to_string().into_bytes()],
                    ),
                    HashWrite::Delete { hash } => ("del", hash, Vec::new()),
                };
                args.push(code.as_bytes().to_vec());
                let key = self.keys.read_model_hash(projection, &hash);
                args.push(key_index(key).to_string().into_bytes());
                args.extend(rest);
            }
        }
        let mut invocation = SCRIPTS.read_model_commit.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        for arg in &args {
            invocation.arg(arg.as_slice());
        }
        let mut connection = self.connection.clone();
        let reply = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| Error::script("read_model_commit", e))?;
        let unexpected = || {
            Error::unexpected(
                "read_model_commit",
                "a reply that is not one 0 or 1 per update",
            )
        };
        let outcomes = into_array(reply, "read_model_commit")?
            .iter()
            .map(|outcome| match as_u64(outcome) {
                Some(1) => Ok(Applied::Applied),
                Some(0) => Ok(Applied::AlreadyApplied),
                _ => Err(unexpected()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if outcomes.len() != count {
            return Err(unexpected());
        }
        Ok(outcomes)
    }

    async fn read_hash(&self, key: &str) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        let operation = format!("HGETALL of {key}");
        let reply = query(&self.connection, redis::cmd("HGETALL").arg(key), &operation).await?;
        let mut items = into_array(reply, &operation)?.into_iter();
        let mut fields = BTreeMap::new();
        while let (Some(field), Some(value)) = (items.next(), items.next()) {
            let (Some(field), Some(value)) = (into_bytes(field), into_bytes(value)) else {
                return Err(Error::unexpected(
                    &operation,
                    "a field that is not a string",
                ));
            };
            fields.insert(String::from_utf8_lossy(&field).into_owned(), value);
        }
        Ok(fields)
    }
}

#[async_trait]
impl ReadModelStore for RedisReadModels {
    /// One script call: a write the script refuses (`ESREADMODEL`) is a
    /// [`StoreError::InvalidRequest`], and nothing is written.
    async fn commit(
        &self,
        projection: &str,
        updates: Vec<EventWrites>,
    ) -> Result<Vec<Applied>, StoreError> {
        match self.run_commit(projection, updates).await {
            Ok(applied) => Ok(applied),
            Err(Error::Script { message, .. }) if message.contains("ESREADMODEL") => {
                Err(StoreError::InvalidRequest(message))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn hash(
        &self,
        projection: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        Ok(self
            .read_hash(&self.keys.read_model_hash(projection, name))
            .await?)
    }

    /// Scans the keyspace for the projection's keys.
    async fn hashes(
        &self,
        projection: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, StoreError> {
        let prefix = format!("{}:", self.keys.read_model_prefix(projection));
        let mut all = BTreeMap::new();
        for key in scan_prefix(&self.connection, &prefix).await? {
            let name = &key[prefix.len()..];
            if !name.starts_with('_') {
                all.insert(name.to_owned(), self.read_hash(&key).await?);
            }
        }
        Ok(all)
    }

    async fn applied_count(&self, projection: &str, category: &str) -> Result<u64, StoreError> {
        let mut count = 0;
        for partition in 0..self.keys.partitions(category) {
            let key = self.keys.applied_entries(projection, category, partition);
            let operation = format!("ZCARD of {key}");
            let reply = query(&self.connection, redis::cmd("ZCARD").arg(&key), &operation).await?;
            count +=
                as_u64(&reply).ok_or_else(|| Error::unexpected(operation, format!("{reply:?}")))?;
        }
        Ok(count)
    }

    async fn clear(&self, projection: &str) -> Result<u64, StoreError> {
        Ok(clear_read_model(&self.connection, &self.keys, projection).await?)
    }
}

/// Deletes every key under `projection`'s read-model prefix.
async fn clear_read_model(
    connection: &RedisConnection,
    keys: &KeyLayout,
    projection: &str,
) -> Result<u64, Error> {
    let prefix = format!("{}:", keys.read_model_prefix(projection));
    let mut deleted = 0;
    let found = scan_prefix(connection, &prefix).await?;
    for chunk in found.chunks(500) {
        let reply = query(
            connection,
            redis::cmd("UNLINK").arg(chunk),
            &format!("UNLINK of {prefix}*"),
        )
        .await?;
        deleted += as_u64(&reply).unwrap_or(0);
    }
    Ok(deleted)
}

/// Every key starting with `prefix` (SCAN with the prefix glob-escaped). The prefix holds
/// a hash tag, so on a cluster every such key is on the master of that tag's slot, which
/// is the node scanned.
async fn scan_prefix(connection: &RedisConnection, prefix: &str) -> Result<Vec<String>, Error> {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let operation = format!("SCAN for {pattern}");
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let reply = connection
            .query_on_node_of(
                prefix,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000),
                &operation,
            )
            .await?;
        let mut parts = into_array(reply, &operation)?.into_iter();
        let (Some(next), Some(found)) = (parts.next(), parts.next()) else {
            return Err(Error::unexpected(
                &operation,
                "a reply without cursor and keys",
            ));
        };
        cursor = as_u64(&next).ok_or_else(|| Error::unexpected(&operation, "a bad cursor"))?;
        for key in into_array(found, &operation)? {
            let key = into_bytes(key)
                .ok_or_else(|| Error::unexpected(&operation, "a key that is not a string"))?;
            // A key that is not UTF-8 cannot start with our (UTF-8) prefix.
            if let Ok(key) = String::from_utf8(key) {
                keys.push(key);
            }
        }
        if cursor == 0 {
            keys.sort();
            keys.dedup();
            return Ok(keys);
        }
    }
}

async fn query(
    connection: &RedisConnection,
    command: &redis::Cmd,
    operation: &str,
) -> Result<Value, Error> {
    let mut connection = connection.clone();
    command
        .query_async(&mut connection)
        .await
        .map_err(|e| Error::redis(operation, e))
}
