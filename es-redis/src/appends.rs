//! Sending appends: one script call for one append, or for many at once (group commit).
//!
//! Most of an append's cost is not its writes but the round trip and the start of a Lua
//! script (on a small machine a script that does nothing costs twice a raw `XADD`). So
//! appends that callers make while earlier ones are on their way are queued, and a
//! background task sends each queue as one call of the append script, which runs every
//! append in it on its own (its own version check, its own result, atomic by itself). An
//! append never waits for a batch to fill: with nothing on its way, it goes at once.

use std::sync::Arc;
use std::time::Duration;

use es_core::group_commit::{BatchLimits, BatchSend, GroupCommit};
use redis::Value;

use crate::connection::RedisConnection;
use crate::entry::{as_u64, into_array};
use crate::error::Error;
use crate::scripts::SCRIPTS;

/// The append script's settings, the same for every call of one store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppendSettings {
    /// How many append ids each aggregate remembers.
    pub remembered_append_ids: usize,
    /// How many tail copies each aggregate keeps (0: none, and calls carry no tail key).
    pub tail_copies: usize,
    /// How many replicas must acknowledge each call, and for how long to wait.
    pub replicas: Option<(usize, Duration)>,
}

/// One append, encoded for the append script.
pub(crate) struct AppendCall {
    /// The category stream it writes to.
    pub stream_key: String,
    /// The aggregate's index.
    pub index_key: String,
    /// Its recent append ids.
    pub append_ids_key: String,
    /// Its tail copies, with [`RedisConfig::tail_copies`](crate::RedisConfig::tail_copies)
    /// (every append of one store has one, or none does).
    pub tail_key: Option<String>,
    /// The record of its partition's partition count.
    pub partition_record_key: String,
    /// Its partition's aggregates (a sorted set of ids).
    pub aggregates_key: String,
    /// The category's partition count, as this store is configured.
    pub partitions: u32,
    /// Its arguments: aggregate id, expected version, append id, event count, events.
    pub args: Vec<Vec<u8>>,
    /// How many events it holds.
    pub events: usize,
}

/// Calls of the append script on their way at once: one being sent while the next fills.
const IN_FLIGHT: usize = 2;

/// A call closes once it holds this many events, so one script never blocks Redis long.
const MAX_EVENTS_PER_CALL: usize = 1_000;

/// Runs `calls` in one call of the append script; replies with one reply per call. With
/// [`AppendSettings::replicas`], an append the script wrote that too few replicas
/// acknowledged gets [`Error::NotReplicated`] (its outcome across a failover is unknown);
/// conflicts and refusals, which wrote nothing, keep their replies.
pub(crate) async fn invoke(
    connection: &RedisConnection,
    settings: AppendSettings,
    calls: &[AppendCall],
) -> Result<Vec<Result<Value, Error>>, Error> {
    let mut invocation = SCRIPTS.append.prepare_invoke();
    for call in calls {
        invocation
            .key(&call.stream_key)
            .key(&call.index_key)
            .key(&call.append_ids_key);
        if let Some(tail) = &call.tail_key {
            invocation.key(tail);
        }
        invocation.key(&call.partition_record_key);
        invocation.key(&call.aggregates_key);
    }
    invocation
        .arg(settings.remembered_append_ids)
        .arg(calls.len())
        .arg(settings.tail_copies);
    for call in calls {
        // Each append's length first (the script checks each append on its own), its
        // partition count last.
        invocation.arg(call.args.len() + 1);
        for arg in &call.args {
            invocation.arg(arg.as_slice());
        }
        invocation.arg(call.partitions);
    }
    let (Some((replicas, timeout)), Some(first)) = (settings.replicas, calls.first()) else {
        let reply = invocation
            .invoke_async(&mut connection.clone())
            .await
            .map_err(|e| Error::script("append", e))?;
        let replies = split_replies(into_array(reply, "append")?, calls.len())?;
        return Ok(replies.into_iter().map(Ok).collect());
    };
    let (reply, waited) = invoke_and_wait(
        connection,
        &invocation,
        &first.stream_key,
        replicas,
        timeout,
    )
    .await?;
    let not_replicated = match waited {
        Ok(acknowledged) if acknowledged >= replicas as u64 => None,
        Ok(acknowledged) => Some(Error::NotReplicated {
            acknowledged,
            wanted: replicas,
            timeout,
        }),
        // The script ran: whatever stopped the wait, its outcome is unknown.
        Err(error) if error.is_connection() => Some(error),
        Err(error) => {
            tracing::warn!(%error, "WAIT failed after an append call");
            Some(Error::NotReplicated {
                acknowledged: 0,
                wanted: replicas,
                timeout,
            })
        }
    };
    let replies = split_replies(into_array(reply, "append")?, calls.len())?;
    Ok(replies
        .into_iter()
        .map(|reply| match &not_replicated {
            Some(error) if wrote(&reply) => Err(error.clone()),
            _ => Ok(reply),
        })
        .collect())
}

/// Whether a reply is of an append the script wrote (`ok`), or recognised as written
/// (`done`): those wait for the replicas.
fn wrote(reply: &Value) -> bool {
    matches!(reply, Value::Array(items)
        if matches!(items.first(), Some(Value::BulkString(status)) if status == b"ok" || status == b"done"))
}

/// Runs the append script, then `WAIT replicas timeout` on the same connection: the
/// script's reply and what the wait gave (how many replicas acknowledged its writes). On
/// one server both go in one pipeline (nothing can come between them on the connection);
/// on a cluster the `WAIT` follows on the connection to the node of `key`'s slot. An error
/// of the script is the call's error; an error of the wait comes back beside the reply.
async fn invoke_and_wait(
    connection: &RedisConnection,
    invocation: &redis::ScriptInvocation<'_>,
    key: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<(Value, Result<u64, Error>), Error> {
    let millis = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let operation = format!("WAIT {replicas} {millis}");
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(millis);
    let acknowledged = |reply: redis::RedisResult<Value>| {
        let reply = reply.map_err(|e| Error::redis(&operation, e))?;
        as_u64(&reply).ok_or_else(|| Error::unexpected(&operation, format!("{reply:?}")))
    };
    if connection.is_cluster() {
        let reply = invocation
            .invoke_async(&mut connection.clone())
            .await
            .map_err(|e| Error::script("append", e))?;
        let waited = connection
            .query_on_node_of(key, &wait, &operation)
            .await
            .and_then(|value| acknowledged(Ok(value)));
        return Ok((reply, waited));
    }
    let mut pipe = redis::pipe();
    pipe.invoke_script(invocation)
        .add_command(wait)
        .ignore_errors();
    let mut connection = connection.clone();
    let mut loaded = false;
    loop {
        let replies: Vec<redis::RedisResult<Value>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| Error::script("append", e))?;
        let mut replies = replies.into_iter();
        let (Some(reply), Some(waited)) = (replies.next(), replies.next()) else {
            return Err(Error::unexpected(
                &operation,
                "a pipeline without two replies",
            ));
        };
        match reply {
            Ok(reply) => return Ok((reply, acknowledged(waited))),
            Err(error) if error.code() == Some("NOSCRIPT") && !loaded => {
                // The server lost its scripts (a restart): load it, then run it again.
                invocation
                    .load_async(&mut connection)
                    .await
                    .map_err(|e| Error::script("append", e))?;
                loaded = true;
            }
            Err(error) => return Err(Error::script("append", error)),
        }
    }
}

/// Splits the script's flat reply (per append: status, number, count, that many items) into
/// one `[status, number, items…]` per append (`[status, message]` for `error`).
fn split_replies(flat: Vec<Value>, appends: usize) -> Result<Vec<Value>, Error> {
    let malformed =
        || Error::unexpected("append", "a reply that does not split into one per append");
    let mut items = flat.into_iter();
    let mut replies = Vec::with_capacity(appends);
    while let Some(status) = items.next() {
        let (Some(number), Some(count)) = (items.next(), items.next()) else {
            return Err(malformed());
        };
        let count =
            usize::try_from(as_u64(&count).ok_or_else(malformed)?).map_err(|_| malformed())?;
        let mut reply = Vec::with_capacity(2 + count);
        reply.push(status);
        let refused = matches!(&reply[0], Value::BulkString(status) if status == b"error");
        if !refused {
            reply.push(number);
        }
        for _ in 0..count {
            reply.push(items.next().ok_or_else(malformed)?);
        }
        replies.push(Value::Array(reply));
    }
    if replies.len() != appends {
        return Err(Error::unexpected(
            "append",
            format!("{} replies to {} appends", replies.len(), appends),
        ));
    }
    Ok(replies)
}

/// Sends batches of appends as calls of the append script: es-core's group commit does the
/// queueing.
pub(crate) struct ScriptSender {
    connection: RedisConnection,
    settings: AppendSettings,
}

impl BatchSend for ScriptSender {
    type Item = AppendCall;
    type Reply = Value;
    type Error = Error;

    fn weight(call: &AppendCall) -> usize {
        call.events
    }

    async fn send(&self, calls: Vec<AppendCall>) -> Result<Vec<Result<Value, Error>>, Error> {
        invoke(&self.connection, self.settings, &calls).await
    }

    fn stopped() -> Error {
        Error::redis(
            "append",
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the append queue stopped before the append's reply came: its outcome is \
                 unknown (retry it with the same append id)",
            )
            .into(),
        )
    }
}

/// The queue of appends of one store (shared by its clones).
pub(crate) struct AppendQueue {
    queue: GroupCommit<ScriptSender>,
    /// Cluster appends go one call each (their keys live on different nodes).
    cluster: bool,
}

impl AppendQueue {
    pub(crate) fn new(
        connection: RedisConnection,
        settings: AppendSettings,
        max_appends: usize,
    ) -> Arc<Self> {
        let cluster = connection.is_cluster();
        Arc::new(AppendQueue {
            queue: GroupCommit::new(
                ScriptSender {
                    connection,
                    settings,
                },
                BatchLimits {
                    max_items: max_appends,
                    max_weight: MAX_EVENTS_PER_CALL,
                    in_flight: IN_FLIGHT,
                },
            ),
            cluster,
        })
    }

    /// Sends one append, batched with whatever else is queued; replies with its reply.
    pub(crate) async fn append(&self, call: AppendCall) -> Result<Value, Error> {
        if self.cluster {
            return self.queue.alone(call).await;
        }
        self.queue.submit(call).await
    }
}
