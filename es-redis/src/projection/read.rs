//! Reading a projection's streams: new entries with `XREADGROUP`, stale ones with
//! `XAUTOCLAIM`, and how often each was delivered.

use std::collections::HashMap;
use std::time::Duration;

use es_core::projection::{Delivery, StreamBatch};
use es_core::Position;
use redis::Value;

use crate::entry::{self, as_u64, into_array, into_bytes, EntrySource, RawEntry};
use crate::error::Error;

use super::RedisSource;

impl RedisSource {
    /// Reads entries never delivered to the group, from every stream at once: one
    /// `XREADGROUP` per read group, all sent together.
    /// Blocks up to `block` for entries; with `None`, returns at once what is there.
    pub(super) async fn read_new(
        &self,
        block: Option<Duration>,
    ) -> Result<Vec<StreamBatch>, Error> {
        let operation = format!("XREADGROUP of group {}", self.group);
        let command = |indices: &[usize], block: Option<Duration>| {
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(self.batch_size);
            if let Some(block) = block {
                command
                    .arg("BLOCK")
                    .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX));
            }
            command.arg("STREAMS");
            for index in indices {
                command.arg(&*self.streams[*index].location);
            }
            for _ in indices {
                command.arg(">");
            }
            command
        };
        if let [indices] = self.read_groups.as_slice() {
            let mut reader = self.reader.clone();
            let reply: Value = command(indices, block)
                .query_async(&mut reader)
                .await
                .map_err(|e| Error::redis(&operation, e))?;
            return self.parse_read_reply(reply, &operation);
        }
        // Reads on one node run one after the other: together they block at most `block`.
        let groups = u32::try_from(self.read_groups.len()).unwrap_or(u32::MAX);
        let block = block.map(|block| (block / groups.max(1)).max(Duration::from_millis(1)));
        let mut reads = tokio::task::JoinSet::new();
        for indices in &self.read_groups {
            let command = command(indices, block);
            let mut reader = self.reader.clone();
            reads.spawn(async move { command.query_async::<Value>(&mut reader).await });
        }
        // Entries of the reads that succeeded are delivered to this consumer: process
        // them even if another read failed (that one is retried by the next read).
        let mut batch = Vec::new();
        let mut failure = None;
        while let Some(joined) = reads.join_next().await {
            let reply = match joined {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    failure = Some(Error::redis(&operation, error));
                    continue;
                }
                Err(panicked) => {
                    failure = Some(Error::unexpected(&operation, panicked.to_string()));
                    continue;
                }
            };
            match self.parse_read_reply(reply, &operation) {
                Ok(entries) => batch.extend(entries),
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) if batch.is_empty() => Err(error),
            Some(error) => {
                tracing::warn!(projection = %self.group, %error, "a read failed; the others are processed");
                Ok(batch)
            }
            None => Ok(batch),
        }
    }

    /// Parses `[[key, entries], …]` (RESP2) or `{key: entries, …}` (RESP3); nil when the
    /// read timed out.
    fn parse_read_reply(&self, reply: Value, operation: &str) -> Result<Vec<StreamBatch>, Error> {
        let pairs: Vec<(Value, Value)> = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Map(pairs) => pairs,
            other => into_array(other, operation)?
                .into_iter()
                .map(|item| {
                    let mut parts = into_array(item, operation)?.into_iter();
                    match (parts.next(), parts.next()) {
                        (Some(key), Some(entries)) => Ok((key, entries)),
                        _ => Err(Error::unexpected(operation, "a stream without entries")),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let mut batch = Vec::with_capacity(pairs.len());
        for (key, entries) in pairs {
            let key = into_bytes(key)
                .ok_or_else(|| Error::unexpected(operation, "a stream key that is not a string"))?;
            let Some(index) = self
                .streams
                .iter()
                .position(|s| s.location.as_bytes() == key)
            else {
                return Err(Error::unexpected(
                    operation,
                    format!(
                        "entries of a stream not read: {}",
                        String::from_utf8_lossy(&key)
                    ),
                ));
            };
            let deliveries = into_array(entries, operation)?
                .into_iter()
                .map(|item| self.delivery(index, RawEntry::parse(item, operation)?, 1))
                .collect::<Result<Vec<_>, _>>()?;
            batch.push(StreamBatch {
                stream: index,
                deliveries,
            });
        }
        Ok(batch)
    }

    /// An entry of stream `index` as a delivery, decoded.
    fn delivery(&self, index: usize, raw: RawEntry, delivered: u32) -> Result<Delivery, Error> {
        let stream = &self.streams[index];
        let position: Position = raw.id.parse().map_err(|_| {
            Error::unexpected(
                format!("reading {}", stream.location),
                format!("entry id {:?} is not a stream entry id", raw.id),
            )
        })?;
        let source = EntrySource {
            storage_key: &stream.location,
            category: &stream.category,
        };
        let event = raw
            .pairs
            .map(|pairs| entry::decode_entry(&source, &raw.id, pairs));
        Ok(Delivery {
            position,
            delivered,
            event,
        })
    }

    /// One page of `XAUTOCLAIM` on stream `index`: entries pending longer than `idle`,
    /// from `cursor`, with their delivery counts; and the next page's cursor.
    pub(super) async fn claim_page(
        &self,
        index: usize,
        idle: Duration,
        cursor: &str,
    ) -> Result<(Vec<Delivery>, Option<String>), Error> {
        let key = &*self.streams[index].location;
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let operation = format!("XAUTOCLAIM of {key}");
        let reply = self
            .store
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(idle)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(self.batch_size),
                &operation,
            )
            .await?;
        let mut parts = into_array(reply, &operation)?.into_iter();
        let (Some(next), Some(entries)) = (parts.next(), parts.next()) else {
            return Err(Error::unexpected(&operation, "a reply without cursor"));
        };
        let next = into_bytes(next)
            .and_then(|id| String::from_utf8(id).ok())
            .ok_or_else(|| Error::unexpected(&operation, "a cursor that is not text"))?;
        let entries = into_array(entries, &operation)?
            .into_iter()
            .map(|item| RawEntry::parse(item, &operation))
            .collect::<Result<Vec<_>, _>>()?;
        let counts = if entries.is_empty() {
            HashMap::new()
        } else {
            self.delivery_counts(key, &entries).await?
        };
        let deliveries = entries
            .into_iter()
            .map(|raw| {
                let delivered = counts.get(&raw.id).copied().unwrap_or(1);
                self.delivery(index, raw, delivered)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((deliveries, (next != "0-0").then_some(next)))
    }

    /// How often each entry was delivered (`XPENDING key group id id 1`, pipelined).
    async fn delivery_counts(
        &self,
        key: &str,
        entries: &[RawEntry],
    ) -> Result<HashMap<String, u32>, Error> {
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("XPENDING")
                .arg(key)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let operation = format!("XPENDING of {key}");
        let mut connection = self.store.connection();
        let replies: Vec<Value> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| Error::redis(&operation, e))?;
        let mut counts = HashMap::with_capacity(entries.len());
        for reply in replies {
            // `[[id, consumer, idle, deliveries]]`, or `[]` if acknowledged meanwhile.
            if let Some(item) = into_array(reply, &operation)?.into_iter().next() {
                let mut fields = into_array(item, &operation)?.into_iter();
                let id = fields.next().and_then(into_bytes);
                let count = fields.nth(2).as_ref().and_then(as_u64);
                if let (Some(id), Some(count)) = (id, count) {
                    counts.insert(
                        String::from_utf8_lossy(&id).into_owned(),
                        u32::try_from(count).unwrap_or(u32::MAX),
                    );
                }
            }
        }
        Ok(counts)
    }
}
