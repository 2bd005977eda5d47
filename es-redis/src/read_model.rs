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

use std::collections::{BTreeMap, HashMap};

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

    fn prefix(&self) -> String {
        self.keys.read_model_prefix(&self.projection)
    }

    /// The Redis key of hash `name`: `<namespace>:{rm:<projection>}:<name>`.
    pub fn key(&self, name: &str) -> String {
        self.keys.read_model_hash(&self.projection, name)
    }

    /// Starts the update that handling `event` makes. Nothing is sent until
    /// [`commit`](ReadModelUpdate::commit), or until a [`ReadModelBatch`] it is pushed
    /// onto commits.
    pub fn update<E>(&self, event: &RecordedEvent<E>) -> ReadModelUpdate<'_> {
        ReadModelUpdate {
            model: self,
            applied_key: self.keys.applied_entries(
                &self.projection,
                &event.stream.category,
                self.keys.partition_of(&event.stream),
            ),
            entry_id: event.position.to_string(),
            ops: Vec::new(),
            invalid: None,
        }
    }

    /// Starts a batch: the updates of many events, committed in one atomic step (one
    /// script call). This is what [`Projection::handle_batch`] is for: one commit per
    /// delivered batch instead of one round trip per event.
    ///
    /// [`Projection::handle_batch`]: es_core::projection::Projection::handle_batch
    pub fn batch(&self) -> ReadModelBatch<'_> {
        ReadModelBatch {
            model: self,
            updates: Vec::new(),
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
    ops: Vec<Operation>,
    invalid: Option<String>,
}

#[derive(Debug)]
struct Operation {
    code: &'static str,
    key: String,
    args: Vec<Vec<u8>>,
}

impl ReadModelUpdate<'_> {
    /// Sets `field` of hash `name` (`HSET`).
    pub fn hset(self, name: &str, field: &str, value: impl Into<Vec<u8>>) -> Self {
        self.push("hset", name, vec![field.as_bytes().to_vec(), value.into()])
    }

    /// Removes `field` from hash `name` (`HDEL`).
    pub fn hdel(self, name: &str, field: &str) -> Self {
        self.push("hdel", name, vec![field.as_bytes().to_vec()])
    }

    /// Adds `increment` to the integer in `field` of hash `name` (`HINCRBY`; a missing
    /// field counts as 0). A field holding something else, or a value or sum of 2^53 or more
    /// in magnitude (the range the commit script checks exactly before writing), fails the
    /// whole commit and writes nothing.
    pub fn hincrby(self, name: &str, field: &str, increment: i64) -> Self {
        let increment = increment.to_string().into_bytes();
        self.push("hincrby", name, vec![field.as_bytes().to_vec(), increment])
    }

    /// Deletes hash `name` (`DEL`).
    pub fn del(self, name: &str) -> Self {
        self.push("del", name, Vec::new())
    }

    fn push(mut self, code: &'static str, name: &str, args: Vec<Vec<u8>>) -> Self {
        if name.starts_with('_') && self.invalid.is_none() {
            self.invalid = Some(format!(
                "read-model hash name {name:?} starts with `_`, which is reserved for the backend"
            ));
        }
        let key = self.model.key(name);
        self.ops.push(Operation { code, key, args });
        self
    }

    /// Applies the writes and records the event, unless it was applied before.
    pub async fn commit(self) -> Result<Applied, Error> {
        let model = self.model;
        let mut batch = model.batch();
        batch.push(self);
        let applied = batch.commit().await?;
        applied
            .first()
            .copied()
            .ok_or_else(|| Error::unexpected("read_model_commit", "no outcome for the update"))
    }
}

/// The updates of many events, applied by [`commit`](Self::commit) in one atomic step: every
/// update whose event was not applied before is applied and recorded, or (if any operation
/// would fail) nothing is written at all.
///
/// Later updates see what earlier ones wrote: two `hincrby`s of one field add up, and an
/// update after a `del` starts from an empty hash. Only the end state of each hash is sent
/// to the hash, so a batch costs about one write per hash rather than one per operation.
///
/// ```no_run
/// # use es_core::{RecordedEvent, Event};
/// # use es_redis::{HashReadModel, RedisEventStore};
/// # #[derive(Event)] struct Renamed { name: String }
/// # async fn handle(store: RedisEventStore, events: &[RecordedEvent<Renamed>]) -> Result<(), es_redis::Error> {
/// let profiles = HashReadModel::new(&store, "profiles");
/// let mut batch = profiles.batch();
/// for event in events {
///     let hash = format!("user_snapshot_{}", event.stream.id);
///     batch.push(profiles.update(event).hset(&hash, "name", event.event.name.as_str()));
/// }
/// let outcomes = batch.commit().await?; // one `Applied` per update, in order
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "nothing is written until `commit`"]
pub struct ReadModelBatch<'a> {
    model: &'a HashReadModel,
    updates: Vec<ReadModelUpdate<'a>>,
}

impl<'a> ReadModelBatch<'a> {
    /// Adds the update of one more event (of this batch's read model).
    pub fn push(&mut self, update: ReadModelUpdate<'a>) {
        self.updates.push(update);
    }

    /// How many updates it holds.
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    /// Whether it holds no update.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Applies every update whose event was not applied before and records those events,
    /// atomically; returns one [`Applied`] per update, in the order they were pushed.
    ///
    /// An invalid update (a hash name starting with `_`, an update of another read model)
    /// or an operation the script refuses (say, `hincrby` of a field that holds text) fails
    /// the whole batch, and nothing is written.
    pub async fn commit(self) -> Result<Vec<Applied>, Error> {
        if self.updates.is_empty() {
            return Ok(Vec::new());
        }
        let count = self.updates.len();
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
        for update in self.updates {
            if let Some(why) = update.invalid {
                return Err(Error::InvalidRequest(why));
            }
            if !std::ptr::eq(update.model, self.model) {
                let (theirs, ours) = (update.model.prefix(), self.model.prefix());
                if theirs != ours {
                    return Err(Error::InvalidRequest(format!(
                        "an update of read model `{theirs}` pushed onto a batch of read model `{ours}`"
                    )));
                }
            }
            args.push(key_index(update.applied_key).to_string().into_bytes());
            args.push(update.entry_id.into_bytes());
            args.push(update.ops.len().to_string().into_bytes());
            for op in update.ops {
                args.push(op.code.as_bytes().to_vec());
                args.push(key_index(op.key).to_string().into_bytes());
                args.extend(op.args);
            }
        }
        let mut invocation = SCRIPTS.read_model_commit.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        for arg in &args {
            invocation.arg(arg.as_slice());
        }
        let mut connection = self.model.connection.clone();
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
