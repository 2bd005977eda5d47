//! Reading a category split into partitions ([`RedisConfig::partitions`](crate::RedisConfig::partitions)):
//! one partition in its exact order, or all of them merged by position.

use std::borrow::Cow;
use std::sync::Arc;

use es_core::{Position, StoreError, StoredEvent};

use crate::entry::{self, EntrySource};
use crate::error::Error;
use crate::store::RedisEventStore;

impl RedisEventStore {
    /// `read_category`: a category's events after `after`, its partitions merged by
    /// position (see [Partitioned categories](RedisEventStore#partitioned-categories)).
    pub(crate) async fn read_partitions_merged(
        &self,
        category: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let partitions = self.keys().partitions(category);
        if partitions == 1 {
            return self.read_partition_stream(category, 0, after, limit).await;
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
                .read_partition_stream(category, partition, after, limit)
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

    /// `read_partition`: up to `limit` events of `partition` of `category` (0 for an
    /// unpartitioned one) stored after `after`, in the partition stream's exact order.
    pub(crate) async fn read_partition_stream(
        &self,
        category: &str,
        partition: u32,
        after: Position,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let partitions = self.keys().partitions(category);
        if partition >= partitions {
            return Err(StoreError::InvalidRequest(format!(
                "category {category:?} has {partitions} partitions; there is no partition {partition}"
            )));
        }
        let storage_key: Arc<str> = Arc::from(self.keys().partition_stream(category, partition));
        let category = Cow::Owned(category.to_owned());
        let source = EntrySource {
            storage_key: &storage_key,
            category: &category,
        };
        let operation = format!("XRANGE of {storage_key}");
        let mut events = Vec::new();
        let mut after = after;
        while events.len() < limit {
            let count = (limit - events.len()).min(self.page_size());
            let entries = self
                .xrange_page(&storage_key, &format!("({after}"), count)
                .await?;
            let read = entries.len();
            for raw in entries {
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
