//! Sending appends: one script call for one append, or for many at once (group commit).
//!
//! Most of an append's cost is not its writes but the round trip and the start of a Lua
//! script (on a small machine a script that does nothing costs twice a raw `XADD`). So
//! appends that callers make while earlier ones are on their way are queued, and a
//! background task sends each queue as one call of the append script, which runs every
//! append in it on its own (its own version check, its own result, atomic by itself). An
//! append never waits for a batch to fill: with nothing on its way, it goes at once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

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

struct Queued {
    call: AppendCall,
    reply: oneshot::Sender<Result<Value, Error>>,
}

/// The queue of appends of one store (shared by its clones), and the task that sends it.
pub(crate) struct AppendQueue {
    connection: RedisConnection,
    settings: AppendSettings,
    max_appends: usize,
    /// Started by the first append, on its runtime; the task ends when the queue is dropped.
    sender: OnceLock<mpsc::UnboundedSender<Queued>>,
}

impl AppendQueue {
    pub(crate) fn new(
        connection: RedisConnection,
        settings: AppendSettings,
        max_appends: usize,
    ) -> Arc<Self> {
        Arc::new(AppendQueue {
            connection,
            settings,
            max_appends,
            sender: OnceLock::new(),
        })
    }

    /// Sends one append, batched with whatever else is queued; replies with its reply.
    pub(crate) async fn append(&self, call: AppendCall) -> Result<Value, Error> {
        if self.max_appends <= 1 || self.connection.is_cluster() {
            return self.alone(call).await;
        }
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(send_queued(
                receiver,
                self.connection.clone(),
                self.settings,
                self.max_appends,
            ));
            sender
        });
        let (reply, replied) = oneshot::channel();
        if let Err(unsent) = sender.send(Queued { call, reply }) {
            // The task is gone (its runtime shut down): send this one directly.
            return self.alone(unsent.0.call).await;
        }
        replied.await.unwrap_or_else(|_| {
            Err(Error::redis(
                "append",
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the append queue stopped before the append's reply came: its outcome is \
                     unknown (retry it with the same append id)",
                )
                .into(),
            ))
        })
    }

    async fn alone(&self, call: AppendCall) -> Result<Value, Error> {
        let mut replies =
            invoke(&self.connection, self.settings, std::slice::from_ref(&call)).await?;
        replies.swap_remove(0)
    }
}

/// Takes whatever is queued (up to `max_appends` appends and [`MAX_EVENTS_PER_CALL`]
/// events) and sends it as one call, with at most [`IN_FLIGHT`] calls on their way.
async fn send_queued(
    mut receiver: mpsc::UnboundedReceiver<Queued>,
    connection: RedisConnection,
    settings: AppendSettings,
    max_appends: usize,
) {
    let mut in_flight = JoinSet::new();
    let mut held: Option<Queued> = None;
    loop {
        if in_flight.len() >= IN_FLIGHT {
            in_flight.join_next().await;
            continue;
        }
        let first = match held.take() {
            Some(queued) => queued,
            None => tokio::select! {
                biased;
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
                queued = receiver.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
            },
        };
        let mut events = first.call.events;
        let mut batch = vec![first];
        while batch.len() < max_appends && events < MAX_EVENTS_PER_CALL {
            match receiver.try_recv() {
                Ok(queued) if events + queued.call.events > MAX_EVENTS_PER_CALL => {
                    held = Some(queued);
                    break;
                }
                Ok(queued) => {
                    events += queued.call.events;
                    batch.push(queued);
                }
                Err(_) => break,
            }
        }
        in_flight.spawn(send_batch(connection.clone(), settings, batch));
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send_batch(connection: RedisConnection, settings: AppendSettings, batch: Vec<Queued>) {
    let (calls, replies): (Vec<AppendCall>, Vec<_>) =
        batch.into_iter().map(|q| (q.call, q.reply)).unzip();
    match invoke(&connection, settings, &calls).await {
        Ok(values) => {
            for (value, reply) in values.into_iter().zip(replies) {
                let _ = reply.send(value);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
