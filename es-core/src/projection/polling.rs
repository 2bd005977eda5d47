//! [`PollingSource`]: a [`ProjectionSource`] over any [`EventStore`], by checkpointed
//! polling of category reads. The in-memory backend runs projections with it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::redrive::event_at;
use super::source::{
    poll, reclaim_after, watermarks, Capabilities, Delivery, ProjectionSource, ProjectionStatus,
    SourceStream, StreamBatch,
};
use super::{DeadLetter, ProjectionOptions};
use crate::error::StoreError;
use crate::store::{EventStore, Position, StoredEvent};

/// Delivers a projection's categories from any [`EventStore`] by reading each category
/// (each partition of a partitioned one, in its exact order) after a checkpoint, in
/// batches, polling when there is nothing new.
///
/// Its checkpoint, pending events and dead letters live in memory, in the source: a new
/// source starts from the beginning, which is what the in-memory backend and tests want
/// ([`Capabilities`]: no competing consumers, not durable). Failed events stay pending and
/// are delivered again after the options' `claim_idle`, as on every backend.
pub struct PollingSource<S> {
    store: S,
    streams: Vec<SourceStream>,
    batch_size: usize,
    poll_interval: Duration,
    dead_letter_limit: Option<usize>,
    state: Mutex<Vec<StreamState>>,
}

#[derive(Default)]
struct StreamState {
    /// The last position delivered.
    cursor: Position,
    pending: BTreeMap<Position, Pending>,
    dead_letters: VecDeque<DeadLetter>,
    read_once: bool,
}

struct Pending {
    event: StoredEvent,
    delivered: u32,
    since: Instant,
    failure: Option<String>,
}

impl<S: EventStore> PollingSource<S> {
    /// A source over `store` delivering `categories` with `options`' batch size, poll
    /// interval and dead-letter bound.
    pub fn new(store: S, categories: &[Cow<'static, str>], options: &ProjectionOptions) -> Self {
        let mut streams: Vec<SourceStream> = Vec::new();
        for category in categories {
            let partitions = store.partitions(category);
            for partition in 0..partitions {
                let location = if partitions == 1 {
                    format!("category `{category}`")
                } else {
                    format!("partition {partition} of category `{category}`")
                };
                streams.push(SourceStream {
                    category: category.clone(),
                    partition,
                    location: Arc::from(location),
                });
            }
        }
        PollingSource {
            state: Mutex::new(streams.iter().map(|_| StreamState::default()).collect()),
            store,
            streams,
            batch_size: options.batch_size_value(),
            poll_interval: options.poll_interval_value(),
            dead_letter_limit: options.dead_letter_limit_value(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<StreamState>> {
        // The state is consistent after every statement: a panic elsewhere cannot break it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One read of every stream after its cursor.
    async fn read_now(&self) -> Result<Vec<StreamBatch>, StoreError> {
        let mut batch = Vec::new();
        for (index, stream) in self.streams.iter().enumerate() {
            let cursor = self.lock()[index].cursor;
            let events = self
                .store
                .read_partition(&stream.category, stream.partition, cursor, self.batch_size)
                .await?;
            let mut state = self.lock();
            let state = &mut state[index];
            state.read_once = true;
            // Another read may have moved the cursor meanwhile: keep only what is newer.
            let events: Vec<StoredEvent> = events
                .into_iter()
                .filter(|e| e.position > state.cursor)
                .collect();
            let Some(last) = events.last() else {
                continue;
            };
            state.cursor = last.position;
            let now = Instant::now();
            let deliveries = events
                .into_iter()
                .map(|event| {
                    state.pending.insert(
                        event.position,
                        Pending {
                            event: event.clone(),
                            delivered: 1,
                            since: now,
                            failure: None,
                        },
                    );
                    Delivery {
                        position: event.position,
                        delivered: 1,
                        event: Some(Ok(event)),
                    }
                })
                .collect();
            batch.push(StreamBatch {
                stream: index,
                deliveries,
            });
        }
        Ok(batch)
    }

    /// How many events of stream `index` lie after its cursor; with `at_most`, counts no
    /// further than that (one short read tells "caught up" from "behind").
    async fn lag(&self, index: usize, at_most: Option<usize>) -> Result<u64, StoreError> {
        let mut after = self.lock()[index].cursor;
        let mut lag = 0;
        let stream = &self.streams[index];
        let page_size = at_most.unwrap_or(1000);
        loop {
            let page = self
                .store
                .read_partition(&stream.category, stream.partition, after, page_size)
                .await?;
            lag += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == page_size && at_most.is_none() => after = last.position,
                _ => return Ok(lag),
            }
        }
    }

    /// Each stream's status, its lag exact or (with `at_most`) counted no further.
    async fn statuses(&self, at_most: Option<usize>) -> Result<Vec<ProjectionStatus>, StoreError> {
        let mut statuses = Vec::with_capacity(self.streams.len());
        for (index, stream) in self.streams.iter().enumerate() {
            let lag = self.lag(index, at_most).await?;
            let state = self.lock();
            let state = &state[index];
            let mut status = ProjectionStatus::new(stream.category.to_string(), stream.partition);
            status.exists = state.read_once;
            status.consumers = u64::from(state.read_once);
            status.pending = state.pending.len() as u64;
            status.lag = Some(lag);
            status.last_delivered = state.cursor;
            status.oldest_pending = state.pending.keys().next().copied();
            statuses.push(status);
        }
        Ok(statuses)
    }
}

#[async_trait]
impl<S: EventStore + 'static> ProjectionSource for PollingSource<S> {
    fn streams(&self) -> &[SourceStream] {
        &self.streams
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn read(&self, block: Option<Duration>) -> Result<Vec<StreamBatch>, StoreError> {
        poll(block, self.poll_interval, || self.read_now()).await
    }

    async fn reclaim(
        &self,
        stream: usize,
        idle: Duration,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        let after = reclaim_after(cursor)?;
        let mut state = self.lock();
        let now = Instant::now();
        let mut page = Vec::new();
        let mut next = None;
        for (position, pending) in state[stream].pending.range_mut(after.next()..) {
            if page.len() == self.batch_size {
                next = Some(page_end(&page));
                break;
            }
            if now.duration_since(pending.since) < idle {
                continue;
            }
            pending.delivered += 1;
            pending.since = now;
            page.push(Delivery {
                position: *position,
                delivered: pending.delivered,
                event: Some(Ok(pending.event.clone())),
            });
        }
        Ok((page, next))
    }

    async fn acknowledge(&self, stream: usize, positions: &[Position]) -> Result<(), StoreError> {
        let mut state = self.lock();
        for position in positions {
            state[stream].pending.remove(position);
        }
        Ok(())
    }

    async fn record_failure(
        &self,
        stream: usize,
        position: Position,
        error: &str,
    ) -> Result<(), StoreError> {
        if let Some(pending) = self.lock()[stream].pending.get_mut(&position) {
            pending.failure = Some(error.to_owned());
        }
        Ok(())
    }

    async fn clear_failures(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        for position in positions {
            if let Some(pending) = state[stream].pending.get_mut(position) {
                pending.failure = None;
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        stream: usize,
        position: Position,
        delivered: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let state = &mut state[stream];
        let Some(pending) = state.pending.remove(&position) else {
            return Ok(false);
        };
        let error = match pending.failure {
            Some(last) if last != error => format!("{error}; last handler error: {last}"),
            _ => error.to_owned(),
        };
        state.dead_letters.push_back(DeadLetter {
            category: self.streams[stream].category.to_string(),
            position,
            event_type: pending.event.event_type,
            attempts: delivered,
            error,
        });
        if let Some(limit) = self.dead_letter_limit {
            while state.dead_letters.len() > limit {
                state.dead_letters.pop_front();
            }
        }
        Ok(true)
    }

    async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        self.statuses(None).await
    }

    /// Watermarks need only whether a partition is caught up, not its exact lag: one
    /// event read per stream, not every event after the cursor (the runner asks after
    /// every batch).
    async fn watermarks(&self) -> Result<HashMap<String, Position>, StoreError> {
        Ok(watermarks(&self.statuses(Some(1)).await?))
    }

    async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let state = self.lock();
        let mut letters: Vec<DeadLetter> = self
            .streams
            .iter()
            .zip(state.iter())
            .filter(|(stream, _)| stream.category == category)
            .flat_map(|(_, state)| state.dead_letters.iter().cloned())
            .collect();
        letters.sort_by_key(|letter| letter.position);
        Ok(letters)
    }

    async fn dead_lettered(&self, stream: usize) -> Result<Vec<Delivery>, StoreError> {
        let letters: Vec<(Position, u32)> = self.lock()[stream]
            .dead_letters
            .iter()
            .map(|letter| (letter.position, letter.attempts))
            .collect();
        let SourceStream {
            category,
            partition,
            ..
        } = &self.streams[stream];
        let mut deliveries = Vec::with_capacity(letters.len());
        for (position, delivered) in letters {
            deliveries.push(Delivery {
                position,
                delivered,
                event: event_at(&self.store, category, *partition, position).await,
            });
        }
        Ok(deliveries)
    }

    async fn forget_dead_letters(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        self.lock()[stream]
            .dead_letters
            .retain(|letter| !positions.contains(&letter.position));
        Ok(())
    }

    async fn reset(&self) -> Result<(), StoreError> {
        for state in self.lock().iter_mut() {
            *state = StreamState::default();
        }
        Ok(())
    }
}

/// The cursor after a full page: its last position.
fn page_end(page: &[Delivery]) -> String {
    page.last()
        .map(|delivery| delivery.position.to_string())
        .unwrap_or_default()
}
