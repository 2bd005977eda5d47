//! Listing what a namespace holds, for browsing: its categories (the `categories` set, with
//! each category's `XLEN` and newest entry) and the aggregates of a category (each partition's `aggregates`
//! sorted set, read by `ZRANGEBYLEX` and merged).

use es_core::{CategoryInfo, Position, StoreError};
use redis::Value;

use crate::entry::{as_u64, into_array, into_bytes};
use crate::error::Error;
use crate::store::RedisEventStore;

impl RedisEventStore {
    /// Adds `category` to the namespace's set of categories (before its first append).
    pub(crate) async fn register_category(&self, category: &str) -> Result<(), Error> {
        let key = self.keys().categories();
        self.query(
            redis::cmd("SADD").arg(&key).arg(category),
            &format!("SADD of {key}"),
        )
        .await?;
        Ok(())
    }

    /// Every category of the set that holds entries, with their count over its
    /// partitions, sorted by name.
    pub(crate) async fn list_categories(&self) -> Result<Vec<CategoryInfo>, StoreError> {
        let key = self.keys().categories();
        let reply = self
            .query(
                redis::cmd("SMEMBERS").arg(&key),
                &format!("SMEMBERS of {key}"),
            )
            .await?;
        let malformed = || Error::unexpected(format!("SMEMBERS of {key}"), "a malformed reply");
        let mut names = Vec::new();
        for member in into_array(reply, "SMEMBERS")? {
            let raw = into_bytes(member).ok_or_else(malformed)?;
            names.push(String::from_utf8(raw).map_err(|_| malformed())?);
        }
        names.sort();
        let mut categories = Vec::with_capacity(names.len());
        for name in names {
            let (mut events, mut head) = (0, Position::ZERO);
            for stream in self.keys().category_streams(&name) {
                let reply = self
                    .query(
                        redis::cmd("XLEN").arg(&stream),
                        &format!("XLEN of {stream}"),
                    )
                    .await?;
                events += as_u64(&reply).ok_or_else(|| {
                    Error::unexpected(format!("XLEN of {stream}"), format!("{reply:?}"))
                })?;
                let newest = self.xrevrange_first(&stream).await?;
                head = head.max(newest);
            }
            if events > 0 {
                categories.push(CategoryInfo::new(name, events, head));
            }
        }
        Ok(categories)
    }

    /// The id of the newest entry of `stream` (`Position::ZERO` if it has none).
    async fn xrevrange_first(&self, stream: &str) -> Result<Position, Error> {
        let operation = format!("XREVRANGE of {stream}");
        let reply = self
            .query(
                redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
                &operation,
            )
            .await?;
        let Some(entry) = into_array(reply, &operation)?.into_iter().next() else {
            return Ok(Position::ZERO);
        };
        let id = into_array(entry, &operation)?
            .into_iter()
            .next()
            .and_then(into_bytes)
            .and_then(|raw| String::from_utf8(raw).ok());
        id.and_then(|id| id.parse::<Position>().ok())
            .ok_or_else(|| Error::unexpected(&operation, "an entry without a valid id"))
    }

    /// Up to `limit` aggregate ids of `category` after `after`, by their bytes: the first
    /// `limit` of each partition, merged.
    pub(crate) async fn list_aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let min = match after {
            Some(after) => [b"(", after.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        let mut ids = Vec::new();
        for partition in 0..self.keys().partitions(category) {
            let key = self.keys().aggregates(category, partition);
            let operation = format!("ZRANGEBYLEX of {key}");
            let mut command = redis::cmd("ZRANGEBYLEX");
            command
                .arg(&key)
                .arg(&min)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
            let reply = self.query(&command, &operation).await?;
            for member in into_array(reply, &operation)? {
                let id = match member {
                    Value::BulkString(raw) => String::from_utf8(raw).ok(),
                    _ => None,
                };
                ids.push(id.ok_or_else(|| {
                    Error::unexpected(&operation, "a member that is no UTF-8 id")
                })?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        Ok(ids)
    }
}
