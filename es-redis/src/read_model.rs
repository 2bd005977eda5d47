//! [`HashReadModel`]: read models kept in Redis hashes, each event applied exactly once.
//!
//! Delivery to a projection is at least once: a worker may crash after updating the read
//! model but before acknowledging the entry, or stall while another worker reclaims it. So
//! an update and the record that its event was applied commit together, in one Lua script
//! that first checks the record: a second delivery of the same entry changes nothing.
//!
//! The record is a set of applied entry ids per projection and category, not a "last
//! applied position": consumers of one group process a category's entries out of order, so
//! an older entry may be applied after a newer one and must not be skipped. The runner
//! prunes ids that can no longer be delivered (see [`ProjectionOptions::prune_grace`]).
//!
//! Keys live under the projection's own hash tag, `<namespace>:{rm:<projection>}:<name>`,
//! so one script can touch any of them on Redis Cluster.
//!
//! [`ProjectionOptions::prune_grace`]: crate::projection::ProjectionOptions::prune_grace

use std::collections::BTreeMap;

use es_core::RecordedEvent;
use redis::Value;

use crate::connection::RedisConnection;
use crate::entry::{as_u64, into_array, into_bytes};
use crate::error::Error;
use crate::keys::KeyLayout;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// The Redis hashes of one projection's read model, written with [`update`](Self::update).
///
/// Name it after the projection that writes it ([`Projection::name`]): the runner's
/// [`rebuild`](crate::ProjectionRunner::rebuild) clears it and prunes its record of
/// applied entries by that name.
///
/// ```no_run
/// # use es_core::{RecordedEvent, Event};
/// # use es_redis::{HashReadModel, RedisEventStore};
/// # #[derive(Event)] struct Renamed { name: String }
/// # async fn handle(store: RedisEventStore, event: RecordedEvent<Renamed>) -> Result<(), es_redis::Error> {
/// let profiles = HashReadModel::new(&store, "profiles");
/// let hash = format!("user_snapshot_{}", event.stream.id);
/// let outcome = profiles
///     .update(&event)
///     .hset(&hash, "name", event.event.name.as_str())
///     .hincrby(&hash, "renames", 1)
///     .commit()
///     .await?;
/// // `AlreadyApplied` when this event was delivered before: nothing changed.
/// println!("{outcome:?}");
/// # Ok(())
/// # }
/// ```
///
/// [`Projection::name`]: es_core::projection::Projection::name
#[derive(Clone)]
pub struct HashReadModel {
    connection: RedisConnection,
    keys: KeyLayout,
    projection: String,
}

impl std::fmt::Debug for HashReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashReadModel")
            .field("prefix", &self.keys.read_model_prefix(&self.projection))
            .finish_non_exhaustive()
    }
}

/// Whether a [`ReadModelUpdate`] changed the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The update was applied and its event recorded.
    Applied,
    /// The event had been applied before: nothing was written.
    AlreadyApplied,
}

impl HashReadModel {
    /// The read model of `projection`, on `store`'s connection and namespace.
    pub fn new(store: &RedisEventStore, projection: impl Into<String>) -> Self {
        HashReadModel {
            connection: store.connection(),
            keys: store.keys().clone(),
            projection: projection.into(),
        }
    }

    /// The projection it belongs to.
    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// The Redis key of hash `name`: `<namespace>:{rm:<projection>}:<name>`.
    pub fn key(&self, name: &str) -> String {
        self.keys.read_model_hash(&self.projection, name)
    }

    /// Starts the update that handling `event` makes. Nothing is sent until
    /// [`commit`](ReadModelUpdate::commit).
    pub fn update<E>(&self, event: &RecordedEvent<E>) -> ReadModelUpdate<'_> {
        ReadModelUpdate {
            model: self,
            applied_key: self.keys.applied_entries(
                &self.projection,
                &event.stream.category,
                self.keys.partition_of(&event.stream),
            ),
            entry_id: event.position.to_string(),
            hashes: Vec::new(),
            args: Vec::new(),
            operations: 0,
            invalid: None,
        }
    }

    /// Every field of hash `name` (empty if it does not exist).
    pub async fn hash(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        let key = self.key(name);
        let operation = format!("HGETALL of {key}");
        let reply = query(
            &self.connection,
            redis::cmd("HGETALL").arg(&key),
            &operation,
        )
        .await?;
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

    /// Every hash of the read model by name (for tests and debugging: it scans the
    /// keyspace).
    pub async fn hashes(&self) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, Error> {
        let prefix = format!("{}:", self.keys.read_model_prefix(&self.projection));
        let mut all = BTreeMap::new();
        for key in scan_prefix(&self.connection, &prefix).await? {
            let name = &key[prefix.len()..];
            if !name.starts_with('_') {
                all.insert(name.to_owned(), self.hash(name).await?);
            }
        }
        Ok(all)
    }

    /// How many entries of `category` (of all its partitions) are recorded as applied
    /// (pruned ones are not).
    pub async fn applied_count(&self, category: &str) -> Result<u64, Error> {
        let mut count = 0;
        for partition in 0..self.keys.partitions(category) {
            let key = self
                .keys
                .applied_entries(&self.projection, category, partition);
            let operation = format!("ZCARD of {key}");
            let reply = query(&self.connection, redis::cmd("ZCARD").arg(&key), &operation).await?;
            count +=
                as_u64(&reply).ok_or_else(|| Error::unexpected(operation, format!("{reply:?}")))?;
        }
        Ok(count)
    }

    /// Deletes every key of the read model, including its record of applied entries;
    /// returns how many keys were deleted.
    pub async fn clear(&self) -> Result<u64, Error> {
        clear_read_model(&self.connection, &self.keys, &self.projection).await
    }
}

/// The hash writes of one event, applied by [`commit`](Self::commit) in one atomic step
/// together with the record that the event was applied.
#[derive(Debug)]
#[must_use = "nothing is written until `commit`"]
pub struct ReadModelUpdate<'a> {
    model: &'a HashReadModel,
    applied_key: String,
    entry_id: String,
    hashes: Vec<String>,
    args: Vec<Vec<u8>>,
    operations: usize,
    invalid: Option<String>,
}

impl ReadModelUpdate<'_> {
    /// Sets `field` of hash `name` (`HSET`).
    pub fn hset(self, name: &str, field: &str, value: impl Into<Vec<u8>>) -> Self {
        self.push("hset", name, &[field.as_bytes(), &value.into()])
    }

    /// Removes `field` from hash `name` (`HDEL`).
    pub fn hdel(self, name: &str, field: &str) -> Self {
        self.push("hdel", name, &[field.as_bytes()])
    }

    /// Adds `increment` to the integer in `field` of hash `name` (`HINCRBY`; a missing
    /// field counts as 0). A field holding something else, or a value or sum of 2^53 or more
    /// in magnitude (the range the commit script checks exactly before writing), fails the
    /// whole commit and writes nothing.
    pub fn hincrby(self, name: &str, field: &str, increment: i64) -> Self {
        let increment = increment.to_string();
        self.push("hincrby", name, &[field.as_bytes(), increment.as_bytes()])
    }

    /// Deletes hash `name` (`DEL`).
    pub fn del(self, name: &str) -> Self {
        self.push("del", name, &[])
    }

    fn push(mut self, code: &str, name: &str, rest: &[&[u8]]) -> Self {
        if name.starts_with('_') && self.invalid.is_none() {
            self.invalid = Some(format!(
                "read-model hash name {name:?} starts with `_`, which is reserved for the backend"
            ));
        }
        let key = self.model.key(name);
        // KEYS[1] is the applied set; hashes follow.
        let index = match self.hashes.iter().position(|k| *k == key) {
            Some(i) => i + 2,
            None => {
                self.hashes.push(key);
                self.hashes.len() + 1
            }
        };
        self.args.push(code.as_bytes().to_vec());
        self.args.push(index.to_string().into_bytes());
        self.args.extend(rest.iter().map(|part| part.to_vec()));
        self.operations += 1;
        self
    }

    /// Applies the writes and records the event, unless it was applied before.
    pub async fn commit(self) -> Result<Applied, Error> {
        if let Some(why) = self.invalid {
            return Err(Error::InvalidRequest(why));
        }
        let mut invocation = SCRIPTS.read_model_commit.prepare_invoke();
        invocation.key(&self.applied_key);
        for key in &self.hashes {
            invocation.key(key);
        }
        invocation.arg(&self.entry_id).arg(self.operations);
        for arg in &self.args {
            invocation.arg(arg.as_slice());
        }
        let mut connection = self.model.connection.clone();
        let reply = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| Error::script("read_model_commit", e))?;
        match as_u64(&reply) {
            Some(1) => Ok(Applied::Applied),
            Some(0) => Ok(Applied::AlreadyApplied),
            _ => Err(Error::unexpected("read_model_commit", format!("{reply:?}"))),
        }
    }
}

/// Deletes every key under `projection`'s read-model prefix.
pub(crate) async fn clear_read_model(
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

pub(crate) async fn query(
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
