//! Handing read entries to the projection: sorting a batch, the batch/failure walk,
//! acknowledging, retrying and dead-lettering.

use std::collections::HashMap;

use es_core::projection::{handles, Projection};

use crate::entry::{self, as_u64, EntrySource, RawEntry};
use crate::error::Error;
use crate::scripts::SCRIPTS;

use super::{CategoryStream, Outcome, Prepared, ProjectionRunner, RunStats};

impl<P: Projection> ProjectionRunner<P> {
    /// Processes a batch and acknowledges what is done, one `XACK` per stream.
    /// `deliveries` holds delivery counts of reclaimed entries; fresh ones count 1.
    pub(super) async fn process_batch(
        &self,
        batch: Vec<(usize, Vec<RawEntry>)>,
        deliveries: Option<&HashMap<String, u32>>,
        stats: &mut RunStats,
    ) -> Result<(), Error> {
        for (index, entries) in batch {
            let stream = &self.streams[index];
            let mut done = Vec::with_capacity(entries.len());
            let processed = self
                .process_entries(stream, entries, deliveries, stats, &mut done)
                .await;
            // Entries already handled are acknowledged even when a later one failed, so
            // their handlers are not run again after a reclaim.
            if !done.is_empty() {
                let acked = self
                    .store
                    .query(
                        redis::cmd("XACK")
                            .arg(&*stream.key)
                            .arg(&self.group)
                            .arg(&done),
                        &format!("XACK of {}", stream.key),
                    )
                    .await;
                if let Err(error) = acked {
                    return Err(processed.err().unwrap_or(error));
                }
            }
            processed?;
        }
        Ok(())
    }

    /// Processes the entries of one stream: those the projection handles go to
    /// [`Projection::handle_batch`] together, and what that does not handle to
    /// [`Projection::handle`] one by one. The ids to acknowledge are pushed onto `done`.
    pub(super) async fn process_entries(
        &self,
        stream: &CategoryStream,
        entries: Vec<RawEntry>,
        deliveries: Option<&HashMap<String, u32>>,
        stats: &mut RunStats,
        done: &mut Vec<String>,
    ) -> Result<(), Error> {
        let mut events = Vec::with_capacity(entries.len());
        let mut ready = Vec::with_capacity(entries.len());
        for raw in entries {
            let delivered = deliveries
                .and_then(|counts| counts.get(&raw.id).copied())
                .unwrap_or(1);
            let id = raw.id.clone();
            match self.prepare_entry(stream, raw, delivered, stats) {
                Prepared::Ack => done.push(id),
                Prepared::Ready(event) => {
                    events.push(*event);
                    ready.push((id, delivered));
                }
                Prepared::DeadLetter(why) => {
                    // The entries before it first, so that dead letters come in order.
                    let events = std::mem::take(&mut events);
                    let ready = std::mem::take(&mut ready);
                    self.handle_entries(stream, events, ready, stats, done)
                        .await?;
                    self.dead_letter(stream, &id, &why, delivered, stats)
                        .await?;
                }
            }
        }
        self.handle_entries(stream, events, ready, stats, done)
            .await
    }

    /// Hands decoded entries to [`Projection::handle_batch`], following what
    /// [`BatchError`](es_core::projection::BatchError) says on failure.
    pub(super) async fn handle_entries(
        &self,
        stream: &CategoryStream,
        events: Vec<es_core::RecordedEvent<P::Event>>,
        ready: Vec<(String, u32)>,
        stats: &mut RunStats,
        done: &mut Vec<String>,
    ) -> Result<(), Error> {
        let mut start = 0;
        while start < events.len() {
            let (handled, failure) = match self.projection.handle_batch(&events[start..]).await {
                Ok(()) => (events.len() - start, None),
                Err(failure) => (failure.handled.min(events.len() - start), Some(failure)),
            };
            self.handled(stream, &ready[start..start + handled], stats, done)
                .await?;
            start += handled;
            let Some(failure) = failure else {
                break;
            };
            if start == events.len() {
                break;
            }
            if failure.failed_next {
                let (id, delivered) = &ready[start];
                self.failed(stream, id, *delivered, &failure.error.to_string(), stats)
                    .await?;
                start += 1;
            } else {
                tracing::debug!(projection = %self.group, error = %failure.error, "batch handler failed; handling the rest one by one");
                for (event, (id, delivered)) in events[start..].iter().zip(&ready[start..]) {
                    if let Outcome::Ack = self
                        .handle_one(stream, event, id, *delivered, stats)
                        .await?
                    {
                        done.push(id.clone());
                    }
                }
                break;
            }
        }
        Ok(())
    }

    /// Counts entries as handled: clears the failure records of redelivered ones, and
    /// pushes their ids onto `done`.
    pub(super) async fn handled(
        &self,
        stream: &CategoryStream,
        entries: &[(String, u32)],
        stats: &mut RunStats,
        done: &mut Vec<String>,
    ) -> Result<(), Error> {
        stats.handled += entries.len() as u64;
        // Acknowledged even if clearing their failure records fails below.
        done.extend(entries.iter().map(|(id, _)| id.clone()));
        let retried: Vec<&str> = entries
            .iter()
            .filter(|(_, delivered)| *delivered > 1)
            .map(|(id, _)| id.as_str())
            .collect();
        if !retried.is_empty() {
            self.store
                .query(
                    redis::cmd("HDEL").arg(&stream.failures).arg(&retried),
                    &format!("HDEL of {}", stream.failures),
                )
                .await?;
        }
        Ok(())
    }

    /// Decodes an entry and sorts it: acknowledge it unhandled, hand it to the
    /// projection, or dead-letter it (and why).
    pub(super) fn prepare_entry(
        &self,
        stream: &CategoryStream,
        raw: RawEntry,
        delivered: u32,
        stats: &mut RunStats,
    ) -> Prepared<P::Event> {
        let Some(pairs) = raw.pairs else {
            // Deleted from the stream while pending: nothing to process.
            return Prepared::Ack;
        };
        let source = EntrySource {
            storage_key: &stream.key,
            category: &stream.category,
        };
        let stored = match entry::decode_entry(&source, &raw.id, pairs) {
            Ok(stored) => stored,
            Err(error) => return Prepared::DeadLetter(error.to_string()),
        };
        if !handles::<P::Event>(&stored) {
            stats.skipped += 1;
            return Prepared::Ack;
        }
        if delivered > self.options.max_deliveries {
            return Prepared::DeadLetter(format!(
                "delivered {delivered} times, more than the limit of {}",
                self.options.max_deliveries
            ));
        }
        match stored.decode::<P::Event>() {
            Ok(event) => Prepared::Ready(Box::new(event)),
            Err(error) => Prepared::DeadLetter(error.to_string()),
        }
    }

    /// Runs [`Projection::handle`] on one event; a failure is recorded for the retry, or
    /// dead-letters the entry on its last delivery.
    pub(super) async fn handle_one(
        &self,
        stream: &CategoryStream,
        event: &es_core::RecordedEvent<P::Event>,
        id: &str,
        delivered: u32,
        stats: &mut RunStats,
    ) -> Result<Outcome, Error> {
        match self.projection.handle(event).await {
            Ok(()) => {
                let mut done = Vec::with_capacity(1);
                self.handled(stream, &[(id.to_owned(), delivered)], stats, &mut done)
                    .await?;
                Ok(Outcome::Ack)
            }
            Err(error) => {
                self.failed(stream, id, delivered, &error.to_string(), stats)
                    .await?;
                Ok(Outcome::Keep)
            }
        }
    }

    /// Records a failed delivery of entry `id`: kept pending for a retry, or dead-lettered
    /// on its last delivery.
    pub(super) async fn failed(
        &self,
        stream: &CategoryStream,
        id: &str,
        delivered: u32,
        error: &str,
        stats: &mut RunStats,
    ) -> Result<(), Error> {
        stats.failed += 1;
        if delivered >= self.options.max_deliveries {
            let why = format!("the handler failed on delivery {delivered}: {error}");
            self.dead_letter(stream, id, &why, delivered, stats).await
        } else {
            tracing::debug!(projection = %self.group, entry = %id, %error, delivered, "handler failed; the entry will be retried");
            self.store
                .query(
                    redis::cmd("HSET").arg(&stream.failures).arg(id).arg(error),
                    &format!("HSET of {}", stream.failures),
                )
                .await?;
            Ok(())
        }
    }

    pub(super) async fn dead_letter(
        &self,
        stream: &CategoryStream,
        id: &str,
        error: &str,
        delivered: u32,
        stats: &mut RunStats,
    ) -> Result<(), Error> {
        tracing::warn!(projection = %self.group, stream = %stream.key, entry = %id, %error, "dead-lettering an entry");
        let mut invocation = SCRIPTS.dead_letter.prepare_invoke();
        invocation
            .key(&*stream.key)
            .key(&stream.dead_letters)
            .key(&stream.failures)
            .arg(&self.group)
            .arg(id)
            .arg(error)
            .arg(delivered)
            .arg(&self.options.consumer)
            .arg(
                self.options
                    .dead_letter_limit
                    .map(|limit| limit.to_string())
                    .unwrap_or_default(),
            );
        let reply = self.store.run_script("dead_letter", &invocation).await?;
        if as_u64(&reply) == Some(1) {
            stats.dead_lettered += 1;
        }
        Ok(())
    }
}
