//! The record of each category's partition count, which keeps two processes configured
//! with different counts from giving one aggregate two histories.
//!
//! A category's partition count (`RedisConfig::partitions`) decides where each aggregate
//! lives, so a process configured with another count looks for an aggregate in the wrong
//! partition, finds nothing, and could start it afresh. The first append of each category
//! in a process records the count (`SET … NX GET`) under the layout's record key
//! ([`KeyLayout::partition_records`]), and checks the other layout's record: a count that
//! differs is a configuration error naming both, before anything is written. Reads check
//! too, without recording, so a misconfigured reader (a projection too) gets the error
//! instead of an empty aggregate.
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

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use es_core::StoreError;
use redis::Value;

use crate::entry::into_bytes;
use crate::store::RedisEventStore;

/// How long a reader trusts that nothing is recorded for a category before it looks again.
const UNRECORDED_RECHECK: Duration = Duration::from_secs(5);

/// What this store knows of its categories' records (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct CheckedCategories(Mutex<Checked>);

#[derive(Debug, Default)]
struct Checked {
    /// Recorded with this store's count (by it, or found): nothing more to check.
    confirmed: HashSet<String>,
    /// Found unrecorded by a reader, and when.
    unrecorded: HashMap<String, Instant>,
}

impl CheckedCategories {
    fn lock(&self) -> std::sync::MutexGuard<'_, Checked> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `category` needs no check for this use: confirmed, or (for a read) found
    /// unrecorded a moment ago.
    fn settled(&self, category: &str, writing: bool) -> bool {
        let checked = self.lock();
        checked.confirmed.contains(category)
            || (!writing
                && checked
                    .unrecorded
                    .get(category)
                    .is_some_and(|at| at.elapsed() < UNRECORDED_RECHECK))
    }

    fn confirm(&self, category: &str) {
        let mut checked = self.lock();
        checked.unrecorded.remove(category);
        checked.confirmed.insert(category.to_owned());
    }

    fn unrecorded(&self, category: &str) {
        self.lock()
            .unrecorded
            .insert(category.to_owned(), Instant::now());
    }
}

impl RedisEventStore {
    /// Checks `category`'s recorded partition count against this store's; with
    /// `writing`, records it if nothing is recorded. Once a record with this store's count
    /// is found or made, the category is not checked again; a reader that finds no record
    /// looks again after a few seconds (a writer may record one meanwhile).
    ///
    /// A refused store writes nothing, so it cannot lock a category for correctly
    /// configured ones: it reads the other layout's record first, records its own only if
    /// there is none (`SET … NX GET`), then reads the other layout's record again (a
    /// writer with another count may have recorded meanwhile), and if that now holds
    /// another count, takes back the record it just made.
    pub(crate) async fn check_partition_count(
        &self,
        category: &str,
        writing: bool,
    ) -> Result<(), StoreError> {
        if self.checked_categories().settled(category, writing) {
            return Ok(());
        }
        let configured = self.keys().partitions(category).to_string();
        let (own, other) = self.keys().partition_records(category);
        let refused = |key: &str, recorded: &str| {
            StoreError::InvalidRequest(format!(
                "category `{category}` is recorded with {recorded} partition(s) (in `{key}`), \
                 but this store is configured with {configured}: every process must use the \
                 same `RedisConfig::partitions` for a category, or aggregates end up with two \
                 histories; nothing was written"
            ))
        };
        let get = |key: &str| {
            let key = key.to_owned();
            async move {
                let value = self
                    .query(redis::cmd("GET").arg(&key), &format!("GET of {key}"))
                    .await?;
                Ok::<_, StoreError>(recorded_count(value))
            }
        };
        if let Some(recorded) = get(&other).await? {
            if recorded != configured {
                return Err(refused(&other, &recorded));
            }
        }
        let own_recorded = if writing {
            // Listed before anything of it is written, so every category with entries is.
            self.register_category(category).await?;
            let mut command = redis::cmd("SET");
            command.arg(&own).arg(&configured).arg("NX").arg("GET");
            recorded_count(self.query(&command, &format!("SET of {own}")).await?)
        } else {
            get(&own).await?
        };
        match own_recorded {
            Some(recorded) if recorded != configured => return Err(refused(&own, &recorded)),
            Some(_) => {}
            None if writing => {
                // Just recorded: a writer with another count may have recorded the other
                // layout's record between the first look and now.
                if let Some(recorded) = get(&other).await? {
                    if recorded != configured {
                        self.query(redis::cmd("DEL").arg(&own), &format!("DEL of {own}"))
                            .await?;
                        return Err(refused(&other, &recorded));
                    }
                }
            }
            None => {
                self.checked_categories().unrecorded(category);
                return Ok(());
            }
        }
        self.checked_categories().confirm(category);
        Ok(())
    }
}

/// A record's text, if there is one.
fn recorded_count(value: Value) -> Option<String> {
    into_bytes(value).map(|raw| String::from_utf8_lossy(&raw).into_owned())
}
