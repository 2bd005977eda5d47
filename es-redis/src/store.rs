//! [`RedisEventStore`]: the [`EventStore`] on Redis Streams.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use es_core::codec::FieldError;
use es_core::store::require_events;
use es_core::{
    AppendOptions, AppendResult, ConflictError, DecodeError, EventStore, ExpectedVersion, NewEvent,
    Position, ReadRange, StoreError, StoredEvent, StreamId,
};
use redis::{Cmd, ScriptInvocation, Value};

use crate::appends::{AppendCall, AppendQueue, AppendSettings};
use crate::config::RedisConfig;
use crate::connection::RedisConnection;
use crate::entry::{self, as_u64, into_array, into_bytes, EntrySource, RawEntry};
use crate::error::Error;
use crate::keys::KeyLayout;
use crate::scripts::SCRIPTS;

/// An [`EventStore`] and [`SnapshotStore`](es_core::SnapshotStore) on Redis (7.0 or later).
///
/// Cloning it is cheap and shares the connection. See the [crate docs](crate) for the key
/// layout and the guarantees. It works the same on a single server and on a Redis Cluster
/// ([`RedisConfig::cluster`]); on a cluster every script touches the keys of one slot.
///
/// # Partitioned categories
///
/// A category split into *P* partitions ([`RedisConfig::partitions`]) has one category
/// stream per partition, each with its own positions. [`read_partition`](Self::read_partition)
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
/// [`read_partition`](Self::read_partition) with one cursor per partition.
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
    keys: KeyLayout,
    page_size: usize,
    remembered_append_ids: usize,
    tail_copies: usize,
    appends: Arc<AppendQueue>,
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

/// One page of an aggregate's events, as the read scripts reply: which entries hold them
/// (read by [`RedisEventStore::fetch_entries`]), or their tail copies.
pub(crate) struct Page {
    /// The aggregate's version when the page was read.
    version: u64,
    /// Whether the range ends with this page.
    done: bool,
    /// The events, for consecutive versions.
    elements: PageElements,
}

/// What a page holds of each event.
enum PageElements {
    /// The entry ids.
    Ids(Vec<String>),
    /// The tail copies, `<index element> <copy>` each (see [`crate::copies`]).
    Copies(Vec<Vec<u8>>),
}

impl PageElements {
    fn len(&self) -> usize {
        match self {
            PageElements::Ids(ids) => ids.len(),
            PageElements::Copies(copies) => copies.len(),
        }
    }
}

/// How indexes written by earlier versions packed an entry id `<ms>-<seq>` into one
/// integer, `ms * 1024 + seq` (`scripts/entry_ids.lua`); indexes now hold ids as they are.
const PACKED_SEQS: u64 = 1024;

/// The entry id an index element stands for.
pub(crate) fn unpack_entry_id(element: Vec<u8>) -> String {
    let text = String::from_utf8_lossy(&element);
    if !text.contains('-') {
        if let Ok(packed) = text.parse::<u64>() {
            return format!("{}-{}", packed / PACKED_SEQS, packed % PACKED_SEQS);
        }
    }
    text.into_owned()
}

impl Page {
    /// Parses `[version, done, copies, element…]`: index elements, or tail copies if
    /// `copies` is 1.
    pub(crate) fn parse(value: Value, operation: &str) -> Result<Self, Error> {
        let mut items = into_array(value, operation)?.into_iter();
        let (Some(version), Some(done), Some(copies)) = (
            items.next().as_ref().and_then(as_u64),
            items.next().as_ref().and_then(as_u64),
            items.next().as_ref().and_then(as_u64),
        ) else {
            return Err(Error::unexpected(operation, "a page without its header"));
        };
        let mut elements = items.map(|item| {
            into_bytes(item)
                .ok_or_else(|| Error::unexpected(operation, "a page element that is not a string"))
        });
        Ok(Page {
            version,
            done: done == 1,
            elements: if copies == 1 {
                PageElements::Copies(elements.collect::<Result<_, _>>()?)
            } else {
                PageElements::Ids(
                    elements
                        .by_ref()
                        .map(|element| element.map(unpack_entry_id))
                        .collect::<Result<_, _>>()?,
                )
            },
        })
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
                },
                config.append_batch_value(),
            ),
            connection,
            keys: config.keys(),
            page_size: config.page_size_value(),
            remembered_append_ids: config.remembered_append_ids_value(),
            tail_copies: config.tail_copies_value(),
        })
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

    pub(crate) async fn query(&self, command: &Cmd, operation: &str) -> Result<Value, Error> {
        let mut connection = self.connection.clone();
        command
            .query_async(&mut connection)
            .await
            .map_err(|e| Error::redis(operation, e))
    }

    async fn read_page(
        &self,
        stream: &StreamId,
        from: u64,
        to: Option<u64>,
        until_millis: Option<u64>,
    ) -> Result<Page, Error> {
        let mut invocation = SCRIPTS.read_stream.prepare_invoke();
        invocation
            .key(self.keys.aggregate_stream(stream))
            .key(self.keys.index(stream));
        if self.tail_copies > 0 {
            invocation.key(self.keys.tail(stream));
        }
        invocation
            .arg(from)
            .arg(to.map(|v| v.to_string()).unwrap_or_default())
            .arg(until_millis.map(|v| v.to_string()).unwrap_or_default())
            .arg(self.page_size);
        let reply = self.run_script("read_stream", &invocation).await?;
        Page::parse(reply, "read_stream")
    }

    /// Reads `stream` from version `from` in pages, starting with `first` if the caller
    /// already has the first page. The first page fixes the last version read, so a long
    /// read returns the stream as it was when it started.
    pub(crate) async fn read_pages(
        &self,
        stream: &StreamId,
        mut from: u64,
        to: Option<u64>,
        until_millis: Option<u64>,
        first: Option<Page>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let storage_key: Arc<str> = Arc::from(self.keys.aggregate_stream(stream));
        let source = EntrySource {
            storage_key: &storage_key,
            category: &stream.category,
        };
        let mut page = match first {
            Some(page) => page,
            None => self.read_page(stream, from, to, until_millis).await?,
        };
        let to = Some(to.map_or(page.version, |to| to.min(page.version)));
        let mut events = Vec::new();
        loop {
            let read = page.elements.len() as u64;
            let entries = match page.elements {
                PageElements::Ids(ids) => self.fetch_entries(&storage_key, ids).await?,
                PageElements::Copies(copies) => {
                    self.entries_of_copies(&storage_key, stream, from, copies)
                        .await?
                }
            };
            for (version, raw) in (from..).zip(entries) {
                events.push(self.decode_indexed(&source, stream, version, raw)?);
            }
            if page.done || read == 0 {
                return Ok(events);
            }
            from += read;
            page = self.read_page(stream, from, to, until_millis).await?;
        }
    }

    /// The entries that `copies` (tail copies of versions `from`…) copy. Copies are only a
    /// cache: if one does not decode, the entries are read from the stream instead.
    async fn entries_of_copies(
        &self,
        key: &str,
        stream: &StreamId,
        from: u64,
        copies: Vec<Vec<u8>>,
    ) -> Result<Vec<RawEntry>, Error> {
        let decoded: Option<Vec<RawEntry>> = (from..)
            .zip(&copies)
            .map(|(version, copy)| crate::copies::decode(copy, &stream.id, version))
            .collect();
        if let Some(entries) = decoded {
            return Ok(entries);
        }
        tracing::warn!(%stream, "a tail copy does not decode; reading the stream instead");
        let ids = copies
            .into_iter()
            .map(|copy| {
                let id = copy.split(|&b| b == b' ').next().unwrap_or_default();
                unpack_entry_id(id.to_vec())
            })
            .collect();
        self.fetch_entries(key, ids).await
    }

    /// Reads the entries `ids` names (ascending) from stream `key` in one round trip; an
    /// entry the stream no longer holds comes back without fields.
    ///
    /// Ids are cut into runs that nothing else can sit between: ids of one millisecond
    /// with consecutive sequence numbers (the events of one append, or appends sent
    /// together). Each run is one `XRANGE <first> <last>`, all in one pipeline, so exactly
    /// the wanted entries are read however the aggregate's events interleave with others'.
    pub(crate) async fn fetch_entries(
        &self,
        key: &str,
        ids: Vec<String>,
    ) -> Result<Vec<RawEntry>, Error> {
        let positions: Vec<Option<Position>> = ids.iter().map(|id| id.parse().ok()).collect();
        // Runs [start, end) of readable ids; an id that is not an entry id cannot be read
        // (XRANGE would refuse it) and stays missing.
        let mut runs = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let Some(first) = positions[i] else {
                i += 1;
                continue;
            };
            let mut end = i + 1;
            let mut last = first;
            while let Some(Some(next)) = positions.get(end) {
                if next.millis != last.millis || Some(next.seq) != last.seq.checked_add(1) {
                    break;
                }
                last = *next;
                end += 1;
            }
            runs.push((i, end));
            i = end;
        }
        let mut found: Vec<Option<RawEntry>> = (0..ids.len()).map(|_| None).collect();
        if !runs.is_empty() {
            let operation = format!("XRANGE of {key}");
            let mut pipe = redis::pipe();
            for &(start, end) in &runs {
                // Canonical `<ms>-<seq>` bounds: a bare `<ms>` would mean the whole
                // millisecond as an end.
                pipe.cmd("XRANGE")
                    .arg(key)
                    .arg(positions[start].map(|p| p.to_string()))
                    .arg(positions[end - 1].map(|p| p.to_string()));
            }
            let mut connection = self.connection.clone();
            let replies: Vec<Value> = pipe
                .query_async(&mut connection)
                .await
                .map_err(|e| Error::redis(&operation, e))?;
            if replies.len() != runs.len() {
                return Err(Error::unexpected(&operation, "a reply per range"));
            }
            for (&(start, end), reply) in runs.iter().zip(replies) {
                let mut next = start;
                for item in into_array(reply, &operation)? {
                    let entry = RawEntry::parse(item, &operation)?;
                    let at: Option<Position> = entry.id.parse().ok();
                    // Entries come in order; skip the wanted ids the stream no longer holds.
                    while next < end && positions[next] != at {
                        next += 1;
                    }
                    if next == end {
                        return Err(Error::unexpected(
                            &operation,
                            format!("entry {} outside the range read", entry.id),
                        ));
                    }
                    found[next] = Some(entry);
                    next += 1;
                }
            }
        }
        Ok(found
            .into_iter()
            .zip(ids)
            .map(|(entry, id)| entry.unwrap_or(RawEntry { id, pairs: None }))
            .collect())
    }

    /// Decodes the entry the index names for `version` of `stream`, checking that it is
    /// that aggregate's entry for that version.
    fn decode_indexed(
        &self,
        source: &EntrySource<'_>,
        stream: &StreamId,
        version: u64,
        raw: RawEntry,
    ) -> Result<StoredEvent, StoreError> {
        let Some(pairs) = raw.pairs else {
            return Err(Error::unexpected(
                format!("reading {stream}"),
                format!(
                    "index {} names entry {} for version {version}, which {} no longer holds \
                     (was the stream trimmed or the entry deleted?)",
                    self.keys.index(stream),
                    raw.id,
                    source.storage_key
                ),
            )
            .into());
        };
        let mut event = entry::decode_entry(source, &raw.id, pairs)?;
        let mismatch = if event.stream.id != stream.id {
            Some((
                "aggregate_id",
                format!("expected {:?}", stream.id),
                event.stream.id.clone(),
            ))
        } else if event.version != version {
            Some((
                "version",
                format!("expected {version}"),
                event.version.to_string(),
            ))
        } else {
            None
        };
        if let Some((field, expected, found)) = mismatch {
            let why = format!(
                "{expected} (the index {} names this entry), found {found:?}",
                self.keys.index(stream)
            );
            return Err(StoreError::decode(
                &**source.storage_key,
                &raw.id,
                DecodeError::field(&event.event_type, field, FieldError::Invalid(why)),
            ));
        }
        event.stream = stream.clone();
        Ok(event)
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
        require_events(stream, &events)?;
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
        let call = AppendCall {
            stream_key: self.keys.aggregate_stream(stream),
            index_key: self.keys.index(stream),
            append_ids_key: self.keys.append_ids(stream),
            tail_key: (self.tail_copies > 0).then(|| self.keys.tail(stream)),
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
        self.read_pages(stream, from, range.to_version, range.until_millis, None)
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let key = self.keys.index(stream);
        let reply = self
            .query(redis::cmd("LLEN").arg(&key), &format!("LLEN of {key}"))
            .await?;
        let length = as_u64(&reply)
            .ok_or_else(|| Error::unexpected(format!("LLEN of {key}"), format!("{reply:?}")))?;
        // Element 0 is the header of recent append ids.
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
        let partitions = self.keys.partitions(category);
        if partitions == 1 {
            return self.read_partition(category, 0, after, limit).await;
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        if limit < partitions as usize {
            return Err(StoreError::InvalidRequest(format!(
                "category {category:?} has {partitions} partitions, so a page read across \
                 them needs a limit of at least {partitions} (got {limit})"
            )));
        }
        let mut merged = Vec::new();
        for partition in 0..partitions {
            let events = self
                .read_partition(category, partition, after, limit)
                .await?;
            merged.extend(events.into_iter().map(|event| (partition, event)));
        }
        // Each partition gave at most `limit`, so the first `limit` merged are the page.
        merged.sort_by_key(|(partition, event)| (event.position, *partition));
        if merged.len() > limit {
            // Do not end between equal positions: the next page starts after this one.
            let boundary = merged[limit].1.position;
            merged.truncate(limit);
            while merged.last().is_some_and(|(_, e)| e.position == boundary) {
                merged.pop();
            }
        }
        Ok(merged.into_iter().map(|(_, event)| event).collect())
    }
}

impl RedisEventStore {
    /// Up to `limit` events of `partition` of `category` (0 for an unpartitioned one)
    /// stored after `after`, in the partition stream's exact order.
    pub async fn read_partition(
        &self,
        category: &str,
        partition: u32,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let partitions = self.keys.partitions(category);
        if partition >= partitions {
            return Err(StoreError::InvalidRequest(format!(
                "category {category:?} has {partitions} partitions; there is no partition {partition}"
            )));
        }
        let storage_key: Arc<str> = Arc::from(self.keys.partition_stream(category, partition));
        let category = Cow::Owned(category.to_owned());
        let source = EntrySource {
            storage_key: &storage_key,
            category: &category,
        };
        let operation = format!("XRANGE of {storage_key}");
        let mut events = Vec::new();
        let mut after = after;
        while events.len() < limit {
            let count = (limit - events.len()).min(self.page_size);
            let reply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(&*storage_key)
                        .arg(format!("({after}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(count),
                    &operation,
                )
                .await?;
            let entries = into_array(reply, &operation)?;
            let read = entries.len();
            for item in entries {
                let raw = RawEntry::parse(item, &operation)?;
                let pairs = raw.pairs.ok_or_else(|| {
                    Error::unexpected(&operation, format!("entry {} has no fields", raw.id))
                })?;
                let event = entry::decode_entry(&source, &raw.id, pairs)?;
                after = event.position;
                events.push(event);
            }
            if read < count {
                break;
            }
        }
        Ok(events)
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
