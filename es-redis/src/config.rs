//! Connection settings: the server URL (or a cluster's seed nodes), credentials, key
//! namespace, partitions, timeouts and paging.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::connection::RedisConnection;
use crate::error::Error;
use crate::keys::KeyLayout;

/// How to reach Redis and how to lay out keys there.
///
/// ```
/// use std::time::Duration;
/// use es_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379/0")
///     .namespace("shop")
///     .credentials("app", "s3cret")
///     .response_timeout(Some(Duration::from_secs(2)));
/// assert_eq!(config.keys().category_stream("cart"), "shop:{cart}:events");
/// // Debug output never shows the password.
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// // A Redis Cluster, found through any of its nodes, with `user` in 6 partitions.
/// let config = RedisConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .partitions("user", 6);
/// assert_eq!(config.keys().partition_stream("user", 5), "es:{user:p5}:events");
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    servers: Servers,
    partitions: BTreeMap<String, u32>,
    username: Option<String>,
    password: Option<String>,
    namespace: String,
    response_timeout: Option<Duration>,
    connection_timeout: Option<Duration>,
    reconnect_retries: usize,
    page_size: usize,
    remembered_append_ids: usize,
    append_batch: usize,
    tail_copies: usize,
    replicas: Option<(usize, Duration)>,
}

/// Where Redis is.
#[derive(Clone)]
enum Servers {
    /// One server.
    Single(String),
    /// A Redis Cluster, by some of its nodes.
    Cluster(Vec<String>),
}

impl RedisConfig {
    /// Settings for the server at `url`: `redis://[user[:password]@]host[:port][/db]`,
    /// `rediss://…` for TLS (with this crate's `tls` feature), or
    /// `redis+unix:///path/to/socket`.
    ///
    /// Defaults: namespace `es`; replies time out after 500 ms and connection attempts
    /// after 1 s (redis-rs's defaults); 6 reconnection attempts; pages of 1,000 events; the
    /// last 8 append ids of each aggregate remembered for idempotent retries.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_servers(Servers::Single(url.into()))
    }

    /// Settings for a Redis Cluster (7.0 or later), found through its `seeds`: URLs of
    /// some of its nodes (`redis://host:port`; more than one, so a node that is down at
    /// start does not matter). The client learns the slot map from them, sends each
    /// command to the master of its key's slot and follows redirections. Every setting
    /// works as for a single server (the `/db` part of a URL is ignored: a cluster has
    /// database 0 only); see also [`partitions`](Self::partitions).
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        Self::with_servers(Servers::Cluster(
            seeds.into_iter().map(Into::into).collect(),
        ))
    }

    fn with_servers(servers: Servers) -> Self {
        RedisConfig {
            servers,
            partitions: BTreeMap::new(),
            username: None,
            password: None,
            namespace: "es".to_owned(),
            response_timeout: Some(Duration::from_millis(500)),
            connection_timeout: Some(Duration::from_secs(1)),
            reconnect_retries: 6,
            page_size: 1_000,
            remembered_append_ids: 8,
            append_batch: 64,
            tail_copies: 0,
            replicas: None,
        }
    }

    /// Prefixes every key with `namespace` (default `es`). It may not be empty nor contain
    /// `{` or `}`, which would move the hash tag.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Logs in as `username` (Redis 6 ACL) with `password`, overriding the URL's.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Logs in with `password` only (`requirepass`), overriding the URL's.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long to wait for a reply (`None`: forever). A timed-out append may or may not
    /// have been applied: retry it with the same append id.
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (`None`: forever).
    pub fn connection_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How many times to retry connecting, with exponential backoff, when connecting or
    /// reconnecting after the connection was lost.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// How many events one read round trip returns at most (default 1,000; at least 1).
    /// Longer reads take several round trips, so no reply is unbounded.
    pub fn page_size(mut self, events: usize) -> Self {
        self.page_size = events.max(1);
        self
    }

    /// How many of an aggregate's most recent appends that carried an append id are
    /// remembered, so that retrying one returns its first result (default 8). Each costs
    /// about 20 bytes per aggregate; 0 turns idempotent retries off.
    pub fn remembered_append_ids(mut self, appends: usize) -> Self {
        self.remembered_append_ids = appends;
        self
    }

    /// Keeps a compact copy of each aggregate's newest events, up to `max` per aggregate, in
    /// a list beside its index (`<prefix>:tail:<id>`), so that loading an aggregate reads
    /// its snapshot and the events after it in **one** round trip, however its events
    /// interleave with other aggregates' in the category stream (default 0: off).
    ///
    /// It trades memory for load speed: each copied event costs about twice its raw
    /// stream entry. Saving a snapshot drops the copies it covers, so with snapshots every
    /// *N* events an aggregate holds at most about *N* copies; `max` bounds aggregates that
    /// are never snapshotted (when a list passes `max`, it is cut to its newest `max / 2`).
    /// Choose `max` at least twice the snapshot interval. Copies are only a cache of the
    /// category stream, which stays the log of record: a load that finds them missing,
    /// short or out of step with the index reads the stream instead. Every process
    /// appending to a category should use the same setting (a process without it appends
    /// no copies, and loads after that read the stream). See BENCHMARKS.md (P6, P7) for
    /// both figures.
    pub fn tail_copies(mut self, max: usize) -> Self {
        self.tail_copies = max;
        self
    }

    /// How many appends, at most, are sent to Redis together (default 64; 1 sends each on
    /// its own). Appends that callers make while earlier ones are on their way are queued
    /// and sent as one script call (group commit): each append keeps its own atomicity,
    /// version check and result, but concurrent appenders share the cost of a round trip
    /// and of starting a script, which is most of an append's cost. An append never
    /// waits for a batch to fill: when nothing is on its way it goes at once. A call also
    /// closes once it holds 1,000 events.
    ///
    /// Batching needs every key of a call on one server, so on a cluster each append is
    /// sent on its own. An append handed to the queue is sent even if its caller stops
    /// waiting (a timeout around `append`): as with any lost reply, retry it with the same
    /// append id. The queue's task runs on the runtime of the store's first append.
    pub fn append_batch(mut self, appends: usize) -> Self {
        self.append_batch = appends.max(1);
        self
    }

    /// Reports an append successful only once `replicas` replicas have acknowledged it
    /// (`WAIT <replicas> <timeout>` after each append call, on the same connection), so a
    /// failover to one of them keeps every acknowledged append (default: off, and
    /// replication is asynchronous: a failover can lose the last acknowledged appends).
    /// `replicas` 0 turns it off.
    ///
    /// If fewer replicas acknowledge within `timeout`, the append has still been applied on
    /// the primary, so its outcome across a failover is unknown: it fails with a
    /// retryable [`StoreError::Connection`](es_core::StoreError::Connection) (from
    /// [`Error::NotReplicated`]). Re-send it with the same
    /// append id (the repository does): the re-send returns the first result and waits
    /// again. Each append call then costs a round trip more and the replicas' lag; see
    /// BENCHMARKS.md (P1 with a replica). `WAIT` makes replicas receive the write, not
    /// write it to disk: combine it with their `appendfsync` for durability on disk.
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Splits `category` into `partitions` partitions (default 1; at least 1), so that
    /// on a cluster its events spread over several shards. Aggregate `id` belongs to
    /// partition [`partition_of`](crate::keys::partition_of)`(id, partitions)`; its
    /// events go to its partition's stream `<namespace>:{<category>:p<n>}:events`, which
    /// orders them within the partition. With 1 partition the layout is
    /// `<namespace>:{<category>}:…` as for any category.
    ///
    /// The count is fixed once the category holds data: every writer and reader must use
    /// the same one, or aggregates are looked for in the wrong partition.
    pub fn partitions(mut self, category: impl Into<String>, partitions: u32) -> Self {
        self.partitions.insert(category.into(), partitions);
        self
    }

    /// Whether this configuration is for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.servers, Servers::Cluster(_))
    }

    /// The key layout of this namespace and these partitions.
    pub fn keys(&self) -> KeyLayout {
        self.partitions.iter().fold(
            KeyLayout::new(self.namespace.clone()),
            |keys, (category, partitions)| keys.with_partitions(category.clone(), *partitions),
        )
    }

    pub(crate) fn response_timeout_value(&self) -> Option<Duration> {
        self.response_timeout
    }

    pub(crate) fn page_size_value(&self) -> usize {
        self.page_size
    }

    pub(crate) fn remembered_append_ids_value(&self) -> usize {
        self.remembered_append_ids
    }

    pub(crate) fn append_batch_value(&self) -> usize {
        self.append_batch
    }

    pub(crate) fn tail_copies_value(&self) -> usize {
        self.tail_copies
    }

    pub(crate) fn wait_for_replicas_value(&self) -> Option<(usize, Duration)> {
        self.replicas
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), Error> {
        if self.namespace.is_empty() {
            return Err(Error::Config("the namespace is empty".to_owned()));
        }
        if self.namespace.contains(['{', '}']) {
            return Err(Error::Config(format!(
                "namespace {:?} contains `{{` or `}}`, which would move the keys' hash tag",
                self.namespace
            )));
        }
        if self
            .replicas
            .is_some_and(|(_, timeout)| timeout.as_millis() == 0)
        {
            return Err(Error::Config(
                "a replica timeout under 1 ms would be `WAIT … 0`, which waits forever".into(),
            ));
        }
        if let Some((category, _)) = self.partitions.iter().find(|(_, p)| **p == 0) {
            return Err(Error::Config(format!(
                "category {category:?} has 0 partitions; it needs at least 1"
            )));
        }
        match &self.servers {
            Servers::Single(_) => self.client().map(drop),
            Servers::Cluster(seeds) => {
                if seeds.is_empty() {
                    return Err(Error::Config(
                        "a cluster configuration needs at least one seed node".to_owned(),
                    ));
                }
                self.cluster_client().map(drop)
            }
        }
    }

    /// The URL (or the seed URLs) without passwords, for messages.
    fn shown_servers(&self) -> String {
        match &self.servers {
            Servers::Single(url) => redact(url),
            Servers::Cluster(seeds) => format!(
                "the cluster at {}",
                seeds
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn client(&self) -> Result<redis::Client, Error> {
        let Servers::Single(url) = &self.servers else {
            return Err(Error::Config(format!(
                "{} is a cluster: open it with `RedisConfig::open` (or `RedisEventStore::connect`), \
                 which gives a cluster connection",
                self.shown_servers()
            )));
        };
        let info = self.connection_info(url)?;
        redis::Client::open(info).map_err(|e| unusable(url, &e))
    }

    fn cluster_client(&self) -> Result<redis::cluster::ClusterClient, Error> {
        let Servers::Cluster(seeds) = &self.servers else {
            return Err(Error::Config("not a cluster configuration".to_owned()));
        };
        let infos = seeds
            .iter()
            .map(|seed| self.connection_info(seed))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = ClusterClientBuilder::new(infos)
            .retries(u32::try_from(self.reconnect_retries).unwrap_or(u32::MAX));
        if let Some(timeout) = self.connection_timeout {
            builder = builder.connection_timeout(timeout);
        }
        if let Some(timeout) = self.response_timeout {
            builder = builder.response_timeout(timeout);
        }
        builder
            .build()
            .map_err(|e| Error::Config(format!("cannot use {}: {e}", self.shown_servers())))
    }

    /// `url` parsed, with the configured credentials.
    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, Error> {
        let mut info = url.into_connection_info().map_err(|e| unusable(url, &e))?;
        if !info.addr().is_supported() {
            return Err(unusable(url, &"this build cannot connect to that address"));
        }
        if self.username.is_some() || self.password.is_some() {
            let mut settings = info.redis_settings().clone();
            if let Some(username) = &self.username {
                settings = settings.set_username(username);
            }
            if let Some(password) = &self.password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
        }
        Ok(info)
    }

    /// Opens the connection this configuration describes: a [`ConnectionManager`] to the
    /// single server, or a cluster connection to the cluster. Both reconnect by
    /// themselves; a command sent while the connection is down fails (and is not resent).
    pub async fn open(&self) -> Result<RedisConnection, Error> {
        if !self.is_cluster() {
            return Ok(self.connect().await?.into());
        }
        self.validate()?;
        self.cluster_client()?
            .get_async_connection()
            .await
            .map(RedisConnection::from)
            .map_err(|e| Error::redis(format!("connecting to {}", self.shown_servers()), e))
    }

    /// Opens a [`ConnectionManager`] to the single server: one multiplexed connection
    /// that reconnects by itself. A command sent while the connection is down fails (and
    /// is not resent); the next one uses the new connection. A cluster configuration is
    /// refused with [`Error::Config`]: use [`open`](Self::open).
    pub async fn connect(&self) -> Result<ConnectionManager, Error> {
        self.validate()?;
        let settings = ConnectionManagerConfig::new()
            .set_response_timeout(self.response_timeout)
            .set_connection_timeout(self.connection_timeout)
            .set_number_of_retries(self.reconnect_retries);
        ConnectionManager::new_with_config(self.client()?, settings)
            .await
            .map_err(|e| Error::redis(format!("connecting to {}", self.shown_servers()), e))
    }
}

/// A URL that cannot be used, and why.
fn unusable(url: &str, why: &dyn fmt::Display) -> Error {
    let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
    let hint = if tls {
        " (`rediss://` needs TLS: enable the `tls` feature of es-redis)"
    } else {
        ""
    };
    Error::Config(format!("cannot use URL {}: {why}{hint}", redact(url)))
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("servers", &self.shown_servers())
            .field("partitions", &self.partitions)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("namespace", &self.namespace)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("page_size", &self.page_size)
            .field("remembered_append_ids", &self.remembered_append_ids)
            .field("append_batch", &self.append_batch)
            .field("tail_copies", &self.tail_copies)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end]
        .rfind('@')
        .map(|i| scheme_end + i)
    else {
        return url.to_owned();
    };
    match url[scheme_end..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..scheme_end + colon + 1], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:pw@host/0"), "redis://:***@host/0");
        assert_eq!(
            redact("rediss://user:p@ss@host:6380/1"),
            "rediss://user:***@host:6380/1"
        );
        assert_eq!(redact("redis://user@host"), "redis://user@host");
    }

    #[test]
    fn namespaces_that_move_the_hash_tag_are_rejected() {
        for bad in ["", "a{b", "}"] {
            let error = RedisConfig::new("redis://127.0.0.1:1")
                .namespace(bad)
                .validate()
                .expect_err(bad);
            assert!(matches!(error, Error::Config(_)), "{error}");
        }
        RedisConfig::new("redis://127.0.0.1:1")
            .namespace("app:prod")
            .validate()
            .expect("a colon is fine");
    }

    #[test]
    fn tls_urls_need_the_tls_feature() {
        let result = RedisConfig::new("rediss://user:pw@127.0.0.1:6380/0").validate();
        if cfg!(feature = "tls") {
            result.expect("rediss:// with the tls feature");
        } else {
            let error = result.expect_err("rediss:// without the tls feature");
            assert!(error.to_string().contains("`tls` feature"), "{error}");
        }
    }

    #[test]
    fn cluster_configs_need_seeds_and_partitions_need_one_at_least() {
        let config = RedisConfig::cluster(["redis://127.0.0.1:7000", "redis://:pw@127.0.0.1:7001"])
            .partitions("user", 6);
        config.validate().expect("a cluster of two seeds");
        assert!(config.is_cluster());
        assert_eq!(config.keys().partitions("user"), 6);
        assert_eq!(config.keys().partitions("order"), 1);
        assert!(!format!("{config:?}").contains("pw"));
        let none = RedisConfig::cluster(Vec::<String>::new()).validate();
        assert!(matches!(none, Err(Error::Config(_))), "{none:?}");
        let zero = RedisConfig::new("redis://127.0.0.1:1")
            .partitions("user", 0)
            .validate();
        assert!(matches!(zero, Err(Error::Config(_))), "{zero:?}");
    }

    #[tokio::test]
    async fn a_cluster_config_gives_no_single_server_connection() {
        let error = RedisConfig::cluster(["redis://127.0.0.1:1"])
            .connect()
            .await
            .expect_err("connect() is for one server");
        assert!(error.to_string().contains("RedisConfig::open"), "{error}");
    }

    #[test]
    fn malformed_urls_are_config_errors() {
        let error = RedisConfig::new("http://nope")
            .validate()
            .expect_err("scheme");
        assert!(matches!(error, Error::Config(_)), "{error}");
    }
}
