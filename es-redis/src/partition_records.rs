//! The record of each category's partition count, which keeps two processes configured
//! with different counts from giving one aggregate two histories.
//!
//! A category's partition count (`RedisConfig::partitions`) decides where each aggregate
//! lives, so a process configured with another count looks for an aggregate in the wrong
//! partition, finds nothing, and could start it afresh. The first append of each category
//! in a process records the count (`SET … NX GET`) under the layout's record key
//! ([`KeyLayout::partition_records`]), and checks the other layout's record: a count that
//! differs is a configuration error naming both, before anything is written. Reads check
//! too, once and without recording, so a misconfigured reader gets the error instead of an
//! empty aggregate.
//!
//! Two processes that first write one category at the same time with different counts
//! cannot both pass: each records, then reads the other's record (partitioned layouts
//! share one record key, where the second `SET NX` finds the first count), so at least one
//! of them sees the other's count.
//!
//! The append script checks too ([`KeyLayout::partition_record`], in each partition's own
//! slot): an append that starts an aggregate records its count in its partition if none
//! is there, and is refused if another is. So even with the first-use record lost (deleted
//! by hand), a store with another count cannot start a second history of an aggregate in
//! a partition written with the first.
//!
//! [`KeyLayout::partition_record`]: crate::KeyLayout::partition_record

use std::collections::HashSet;
use std::sync::Mutex;

use es_core::StoreError;
use redis::Value;

use crate::entry::into_bytes;
use crate::store::RedisEventStore;

/// The categories whose recorded count this store has checked (shared by its clones):
/// for reading (checked once), and for writing (recorded and checked once).
#[derive(Debug, Default)]
pub(crate) struct CheckedCategories(Mutex<[HashSet<String>; 2]>);

impl CheckedCategories {
    fn lock(&self) -> std::sync::MutexGuard<'_, [HashSet<String>; 2]> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `category` was checked for this use (a check for writing serves reading).
    fn contains(&self, category: &str, writing: bool) -> bool {
        let checked = self.lock();
        checked[1].contains(category) || (!writing && checked[0].contains(category))
    }

    fn insert(&self, category: &str, writing: bool) {
        self.lock()[usize::from(writing)].insert(category.to_owned());
    }
}

impl RedisEventStore {
    /// Checks `category`'s recorded partition count against this store's (once per
    /// category and store); with `writing`, records it first if nothing is recorded.
    pub(crate) async fn check_partition_count(
        &self,
        category: &str,
        writing: bool,
    ) -> Result<(), StoreError> {
        if self.checked_categories().contains(category, writing) {
            return Ok(());
        }
        let configured = self.keys().partitions(category);
        let (own, other) = self.keys().partition_records(category);
        let own_value = if writing {
            let mut command = redis::cmd("SET");
            command.arg(&own).arg(configured).arg("NX").arg("GET");
            self.query(&command, &format!("SET of {own}")).await?
        } else {
            self.query(redis::cmd("GET").arg(&own), &format!("GET of {own}"))
                .await?
        };
        let other_value = self
            .query(redis::cmd("GET").arg(&other), &format!("GET of {other}"))
            .await?;
        for (key, value) in [(&own, own_value), (&other, other_value)] {
            let Some(recorded) = recorded_count(value) else {
                continue;
            };
            if recorded != configured.to_string() {
                return Err(StoreError::InvalidRequest(format!(
                    "category `{category}` is recorded with {recorded} partition(s) (in `{key}`), \
                     but this store is configured with {configured}: every process must use the \
                     same `RedisConfig::partitions` for a category, or aggregates end up with two \
                     histories; nothing was written"
                )));
            }
        }
        // A reader checks once: if nothing is recorded yet, there is nothing it could
        // misread; its first append records and checks again.
        self.checked_categories().insert(category, writing);
        Ok(())
    }
}

/// A record's text, if there is one.
fn recorded_count(value: Value) -> Option<String> {
    into_bytes(value).map(|raw| String::from_utf8_lossy(&raw).into_owned())
}
