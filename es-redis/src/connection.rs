//! [`RedisConnection`]: one connection type for a single server and for a Redis Cluster.
//!
//! Everything in this crate talks to Redis through it, so the store, the snapshots, the
//! read models and the projection runner work unchanged on either. On a cluster a command
//! or script goes to the master of the slot of its first key; every command and script of
//! this crate names only keys of one hash slot (see [`KeyLayout`](crate::KeyLayout)).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::error::Error;

/// A connection to a single Redis server or to a Redis Cluster, as
/// [`RedisConfig::open`](crate::RedisConfig::open) chose it.
///
/// Cloning it is cheap and shares the connection. It implements
/// [`redis::aio::ConnectionLike`], so commands, pipelines and scripts of your own run on
/// it with `query_async` and `invoke_async`; on a cluster they are routed by their first
/// key (a pipeline's commands must all live in one slot).
///
/// ```no_run
/// use es_redis::{RedisConfig, RedisEventStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisEventStore::connect(&RedisConfig::cluster(["redis://10.0.0.1:7000"])).await?;
/// let mut connection = store.connection();
/// let length: u64 = redis::cmd("XLEN")
///     .arg(store.keys().category_stream("user"))
///     .query_async(&mut connection)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub enum RedisConnection {
    /// A single server, through a reconnecting [`ConnectionManager`].
    Single(ConnectionManager),
    /// A Redis Cluster, through redis-rs's [`ClusterConnection`], which follows the slot
    /// map (`MOVED`/`ASK`) and reconnects by itself.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Single(_) => f.write_str("RedisConnection::Single"),
            RedisConnection::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(connection: ConnectionManager) -> Self {
        RedisConnection::Single(connection)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(connection: ClusterConnection) -> Self {
        RedisConnection::Cluster(connection)
    }
}

impl RedisConnection {
    /// Whether this is a connection to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// Runs `command`, which names no key (say, `SCAN`), on the master that holds `key`'s
    /// slot; on a single server, simply runs it.
    pub(crate) async fn query_on_node_of(
        &self,
        key: &str,
        command: &Cmd,
        operation: &str,
    ) -> Result<Value, Error> {
        match self {
            RedisConnection::Single(connection) => command
                .query_async(&mut connection.clone())
                .await
                .map_err(|e| Error::redis(operation, e)),
            RedisConnection::Cluster(connection) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                connection
                    .clone()
                    .route_command(command.clone(), route)
                    .await
                    .map_err(|e| Error::redis(operation, e))
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}
