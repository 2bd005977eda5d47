//! Listing what a namespace holds, for browsing: its categories (the `categories` set, with
//! each category's `XLEN` and newest entry) and the aggregates of a category (each
//! partition's `aggregates` stream, read by `XRANGE` and merged).

use es_core::{AggregateIds, CategoryInfo, Position, StoreError};

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

    /// A page of the aggregate ids of `category` after cursor `after`, in the order they
    /// started: the first `limit` of each partition's stream, merged by entry id. Entry ids
    /// of different partitions may be equal (each node numbers its own), so a cursor holds
    /// one entry id per partition, comma-separated.
    pub(crate) async fn list_aggregate_ids(
        &self,
        category: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AggregateIds, StoreError> {
        let partitions = self.keys().partitions(category) as usize;
        let mut cursors = match after {
            None => vec![Position::ZERO; partitions],
            Some(text) => {
                let parts: Vec<&str> = text.split(',').collect();
                if parts.len() != partitions {
                    return Err(AggregateIds::invalid_cursor(text));
                }
                let parsed: Result<Vec<Position>, _> = parts.iter().map(|p| p.parse()).collect();
                parsed.map_err(|_| AggregateIds::invalid_cursor(text))?
            }
        };
        if limit == 0 {
            return Ok(AggregateIds::default());
        }
        let mut started: Vec<(Position, usize, String)> = Vec::new();
        for (partition, after) in cursors.iter().enumerate() {
            let key = self.keys().aggregates(category, partition as u32);
            let operation = format!("XRANGE of {key}");
            let start = if *after == Position::ZERO {
                "-".to_owned()
            } else {
                format!("({after}")
            };
            for raw in self.xrange_page(&key, &start, limit).await? {
                let position = raw.id.parse::<Position>().ok();
                let id = raw
                    .pairs
                    .and_then(|pairs| pairs.into_iter().find(|(name, _)| name == b"id"))
                    .and_then(|(_, id)| String::from_utf8(id).ok());
                match (position, id) {
                    (Some(position), Some(id)) => started.push((position, partition, id)),
                    _ => {
                        return Err(Error::unexpected(
                            &operation,
                            format!("entry {} is no `id <aggregate id>`", raw.id),
                        )
                        .into())
                    }
                }
            }
        }
        started.sort_by_key(|(position, partition, _)| (*position, *partition));
        started.truncate(limit);
        for (position, partition, _) in &started {
            cursors[*partition] = *position;
        }
        let next = (started.len() == limit).then(|| {
            cursors
                .iter()
                .map(Position::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        Ok(AggregateIds::new(
            started.into_iter().map(|(_, _, id)| id).collect(),
            next,
        ))
    }
}
