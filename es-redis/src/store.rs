//! [`RedisEventStore`]: the [`EventStore`] on Redis Streams.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::store::validate_append;
use es_core::{
    AggregateIds, AppendOptions, AppendResult, CategoryInfo, ConflictError, EventStore,
    ExpectedVersion, NewEvent, Position, ReadRange, StoreError, StoredEvent, StreamId,
};
use redis::{Cmd, ScriptInvocation, Value};

use crate::appends::{AppendCall, AppendQueue, AppendSettings};
use crate::config::RedisConfig;
use crate::connection::RedisConnection;
use crate::entry::{self, as_u64, into_array, into_bytes, RawEntry};
use crate::error::Error;
use crate::keys::KeyLayout;
use crate::partition_records::CheckedCategories;

/// An [`EventStore`] and [`SnapshotStore`](es_core::SnapshotStore) on Redis (7.0 or later).
///
/// Cloning it is cheap and shares the connection. See the [crate docs](crate) for the key
/// layout and the guarantees. It works the same on a single server and on a Redis Cluster
/// ([`RedisConfig::cluster`]); on a cluster every script touches the keys of one slot.
///
/// # Partitioned categories
///
/// A category split into *P* partitions ([`RedisConfig::partitions`]) has one category
/// stream per partition, each with its own positions. [`read_partition`](EventStore::read_partition)
/// reads one partition in its exact order. [`EventStore::read_category`] merges the
/// partitions by position (ties, which happen because each partition's stream numbers its
/// entries on its own, in partition order): events of one aggregate, and of one partition,
/// come in append order, while events of different partitions are ordered only by their
/// timestamps (the clock of the node that stored them). Each page is read from every
/// partition, so its `limit` must be at least *P* (or the page could end inside a group of
/// equal positions); a page never ends between two events of equal position. Paging with
/// the last position read is exact over events already stored; while appends continue, an
/// event stored in one partition with a position below the cursor (another partition's
/// later read, or a node whose clock is behind) is not returned. To follow a partitioned
/// category live, use a projection (one consumer group per partition stream) or
/// [`read_partition`](EventStore::read_partition) with one cursor per partition.
///
/// ```no_run
/// use es_core::{AppendOptions, EventStore, ExpectedVersion, NewEvent, ReadRange, StreamId};
/// use es_redis::{RedisConfig, RedisEventStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisEventStore::connect(&RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let stream = StreamId::new("user", "42");
/// let mut event = NewEvent { event_type: "Registered".into(), fields: Default::default(), metadata: Default::default() };
/// event.fields.push("name", "Duffy");
/// let written = store
///     .append(&stream, ExpectedVersion::NoStream, vec![event], &AppendOptions::with_append_id("req-1"))
///     .await?;
/// assert_eq!(written.version, 1);
/// let events = store.read_stream(&stream, &ReadRange::all()).await?;
/// assert_eq!(events[0].event.get("name"), Some(&b"Duffy"[..]));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisEventStore {
    connection: RedisConnection,
    config: Arc<RedisConfig>,
    keys: KeyLayout,
    page_size: usize,
    remembered_append_ids: usize,
    tail_copies: usize,
    appends: Arc<AppendQueue>,
    checked_categories: Arc<CheckedCategories>,
}

impl std::fmt::Debug for RedisEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventStore")
            .field("namespace", &self.keys.namespace())
            .field("page_size", &self.page_size)
            .field("remembered_append_ids", &self.remembered_append_ids)
            .finish_non_exhaustive()
    }
}

impl RedisEventStore {
    /// Connects with `config`: to the single server, or to the cluster.
    pub async fn connect(config: &RedisConfig) -> Result<Self, Error> {
        let connection = config.open().await?;
        Self::with_connection(connection, config)
    }

    /// A store over an existing connection (a [`redis::aio::ConnectionManager`], a
    /// cluster connection or a [`RedisConnection`]), with `config`'s namespace,
    /// partitions and paging (its servers and timeouts are not used).
    pub fn with_connection(
        connection: impl Into<RedisConnection>,
        config: &RedisConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let connection = connection.into();
        Ok(RedisEventStore {
            appends: AppendQueue::new(
                connection.clone(),
                AppendSettings {
                    remembered_append_ids: config.remembered_append_ids_value(),
                    tail_copies: config.tail_copies_value(),
                    replicas: config.wait_for_replicas_value(),
                },
                config.append_batch_value(),
            ),
            connection,
            config: Arc::new(config.clone()),
            checked_categories: Arc::default(),
            keys: config.keys(),
            page_size: config.page_size_value(),
            remembered_append_ids: config.remembered_append_ids_value(),
            tail_copies: config.tail_copies_value(),
        })
    }

    /// The configuration it was built with (a projection source opens its reading
    /// connection with it).
    pub(crate) fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The categories whose recorded partition count this store has checked.
    pub(crate) fn checked_categories(&self) -> &CheckedCategories {
        &self.checked_categories
    }

    /// The key layout of this store's namespace.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    /// The connection, for commands of your own (e.g. reading the category stream with a
    /// consumer group).
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    pub(crate) fn page_size(&self) -> usize {
        self.page_size
    }

    /// How many tail copies each aggregate keeps (0: none; see
    /// [`RedisConfig::tail_copies`]).
    pub(crate) fn tail_copies(&self) -> usize {
        self.tail_copies
    }

    pub(crate) async fn run_script(
        &self,
        name: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<Value, Error> {
        let mut connection = self.connection.clone();
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| Error::script(name, e))
    }

    /// One page of stream `key`: up to `count` entries from `start` (an `XRANGE` start:
    /// `-`, an entry id, or `(<id>` for the entries after it).
    pub(crate) async fn xrange_page(
        &self,
        key: &str,
        start: &str,
        count: usize,
    ) -> Result<Vec<RawEntry>, Error> {
        let operation = format!("XRANGE of {key}");
        let command = redis::cmd("XRANGE")
            .arg(key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        let reply = self.query(&command, &operation).await?;
        into_array(reply, &operation)?
            .into_iter()
            .map(|item| RawEntry::parse(item, &operation))
            .collect()
    }

    pub(crate) async fn query(&self, command: &Cmd, operation: &str) -> Result<Value, Error> {
        let mut connection = self.connection.clone();
        command
            .query_async(&mut connection)
            .await
            .map_err(|e| Error::redis(operation, e))
    }
}

#[async_trait]
impl EventStore for RedisEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events)?;
        let expected_arg = match expected {
            ExpectedVersion::Any => String::new(),
            ExpectedVersion::NoStream => "0".to_owned(),
            ExpectedVersion::Exact(version) => version.to_string(),
        };
        let count = events.len();
        let mut args = Vec::with_capacity(4 + count * 12);
        args.push(stream.id.as_bytes().to_vec());
        args.push(expected_arg.into_bytes());
        // The cluster client re-sends a command by itself after a timeout or a dropped
        // connection; without an id that re-send would write the events twice.
        let append_id = match &options.append_id {
            Some(id) => Some(id.clone()),
            None if self.connection.is_cluster() => Some(automatic_append_id()),
            None => None,
        };
        args.push(match append_id {
            Some(id) => append_id_digest(&id),
            None => Vec::new(),
        });
        args.push(count.to_string().into_bytes());
        for event in events {
            entry::push_append_args(&mut args, stream, event, self.tail_copies > 0)?;
        }
        // Once the append is known to be valid: a refused one writes nothing, not even the
        // record.
        self.check_partition_count(&stream.category, true).await?;
        let call = AppendCall {
            stream_key: self.keys.aggregate_stream(stream),
            index_key: self.keys.index(stream),
            append_ids_key: self.keys.append_ids(stream),
            tail_key: (self.tail_copies > 0).then(|| self.keys.tail(stream)),
            partition_record_key: self
                .keys
                .partition_record(&stream.category, self.keys.partition_of(stream)),
            aggregates_key: self
                .keys
                .aggregates(&stream.category, self.keys.partition_of(stream)),
            partitions: self.keys.partitions(&stream.category),
            args,
            events: count,
        };
        let reply = self.appends.append(call).await?;
        parse_append_reply(reply, stream, expected).map_err(|e| match e {
            AppendOutcome::Conflict(conflict) => StoreError::Conflict(conflict),
            AppendOutcome::Error(error) => error.into(),
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        range: &ReadRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let from = range.from_version.max(1);
        if range.to_version.is_some_and(|to| to < from) {
            return Ok(Vec::new());
        }
        self.check_partition_count(&stream.category, false).await?;
        self.read_pages(stream, from, range.to_version, range.until_millis, None)
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        self.check_partition_count(&stream.category, false).await?;
        let key = self.keys.index(stream);
        let reply = self
            .query(redis::cmd("LLEN").arg(&key), &format!("LLEN of {key}"))
            .await?;
        let length = as_u64(&reply)
            .ok_or_else(|| Error::unexpected(format!("LLEN of {key}"), format!("{reply:?}")))?;
        // Element 0 is a placeholder: the length is the version plus one.
        Ok(length.saturating_sub(1))
    }

    /// For a partitioned category, the partitions merged by position: see
    /// [Partitioned categories](RedisEventStore#partitioned-categories).
    async fn read_category(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.check_partition_count(category, false).await?;
        self.read_partitions_merged(category, after, limit).await
    }

    /// Soft: the marker appended; hard: one script (`delete_stream.lua`).
    async fn delete_stream(
        &self,
        stream: &StreamId,
        deletion: es_core::deletion::Deletion,
        metadata: es_core::Metadata,
    ) -> Result<AppendResult, StoreError> {
        self.delete(stream, deletion, metadata).await
    }

    /// The namespace's set of categories, with each one's `XLEN`.
    async fn categories(&self) -> Result<Vec<CategoryInfo>, StoreError> {
        self.list_categories().await
    }

    /// Each partition's stream of started aggregates, by `XRANGE`.
    async fn aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError> {
        self.check_partition_count(category, false).await?;
        self.list_aggregate_ids(category, after, limit).await
    }

    /// [`RedisConfig::partitions`]' count for `category`.
    fn partitions(&self, category: &str) -> u32 {
        self.keys.partitions(category)
    }

    /// One partition stream, by `XRANGE`.
    async fn read_partition(
        &self,
        category: &str,
        partition: u32,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.check_partition_count(category, false).await?;
        self.read_partition_stream(category, partition, after, limit)
            .await
    }
}

enum AppendOutcome {
    Conflict(ConflictError),
    Error(Error),
}

/// Parses `['ok' | 'done', version, entry id…]` or `['conflict', actual]`.
fn parse_append_reply(
    reply: Value,
    stream: &StreamId,
    expected: ExpectedVersion,
) -> Result<AppendResult, AppendOutcome> {
    let malformed = |detail: String| AppendOutcome::Error(Error::unexpected("append", detail));
    let mut items = into_array(reply, "append")
        .map_err(AppendOutcome::Error)?
        .into_iter();
    let status = items.next().and_then(into_bytes);
    if status.as_deref() == Some(b"error") {
        let message = items
            .next()
            .and_then(into_bytes)
            .map(|m| String::from_utf8_lossy(&m).into_owned())
            .unwrap_or_default();
        if let Some(why) = message.strip_prefix("ESPARTITIONS ") {
            return Err(AppendOutcome::Error(Error::InvalidRequest(format!(
                "category `{}`: {why}: every process must use the same \
                 `RedisConfig::partitions` for a category; nothing was written",
                stream.category
            ))));
        }
        if let Some(why) = message.strip_prefix("ESINVALID ") {
            return Err(AppendOutcome::Error(Error::InvalidRequest(format!(
                "the append script refused the append to {stream}: {why}"
            ))));
        }
        return Err(AppendOutcome::Error(Error::refused("append", message)));
    }
    let version = items.next().as_ref().and_then(as_u64);
    let (Some(status), Some(version)) = (status, version) else {
        return Err(malformed("a reply without status and version".to_owned()));
    };
    match status.as_slice() {
        b"conflict" => Err(AppendOutcome::Conflict(ConflictError {
            stream: stream.clone(),
            expected,
            actual: version,
        })),
        b"ok" | b"done" => {
            let positions = items
                .map(|item| {
                    into_bytes(item)
                        .and_then(|id| String::from_utf8(id).ok())
                        .and_then(|id| id.parse::<Position>().ok())
                        .ok_or_else(|| malformed("an entry id that is not a position".to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AppendResult { version, positions })
        }
        other => Err(malformed(format!(
            "unknown status {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// What the aggregate's append-ids hash remembers of an append id: the first 6 bytes
/// (48 bits) of its SHA-1.
fn append_id_digest(id: &str) -> Vec<u8> {
    sha1_smol::Sha1::from(id).digest().bytes()[..6].to_vec()
}

/// A unique append id for appends sent without one (on a cluster): process-random prefix,
/// counter.
fn automatic_append_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    format!(
        "auto-{prefix:016x}-{:x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
