//! The one walk over a delivered batch, for every backend: sorting its events, handing
//! them to the projection, following what [`BatchError`](super::BatchError) says on
//! failure, and acknowledging, recording failures and dead-lettering through the source.

use super::runner::RunStats;
use super::source::{Delivery, StreamBatch};
use super::{handles, Projection, ProjectionRunner};
use crate::error::StoreError;
use crate::store::{Position, RecordedEvent};

/// An event sorted before its batch is handled.
enum Prepared<E> {
    /// Acknowledge it unhandled (vanished, or of a type the projection skips).
    Ack,
    /// Dead-letter it, for this reason.
    DeadLetter(String),
    /// Hand it to the projection.
    Ready(Box<RecordedEvent<E>>),
}

/// A decoded event's position and how often it was delivered.
#[derive(Clone, Copy)]
struct Ready {
    position: Position,
    delivered: u32,
}

impl<P: Projection> ProjectionRunner<P> {
    /// Processes a batch and acknowledges what is done, once per stream.
    pub(super) async fn process(
        &self,
        batch: Vec<StreamBatch>,
        stats: &mut RunStats,
    ) -> Result<(), StoreError> {
        for StreamBatch { stream, deliveries } in batch {
            let mut done = Vec::with_capacity(deliveries.len());
            let processed = self
                .process_stream(stream, deliveries, stats, &mut done)
                .await;
            // Events already handled are acknowledged even when a later one failed, so
            // their handlers are not run again after a reclaim.
            if !done.is_empty() {
                if let Err(error) = self.source.acknowledge(stream, &done).await {
                    return Err(processed.err().unwrap_or(error));
                }
            }
            processed?;
        }
        Ok(())
    }

    /// Processes the events of one stream: those the projection handles go to
    /// [`Projection::handle_batch`] together, and what that does not handle to
    /// [`Projection::handle`] one by one. The positions to acknowledge are pushed onto
    /// `done`.
    async fn process_stream(
        &self,
        stream: usize,
        deliveries: Vec<Delivery>,
        stats: &mut RunStats,
        done: &mut Vec<Position>,
    ) -> Result<(), StoreError> {
        let mut events = Vec::with_capacity(deliveries.len());
        let mut ready = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let (position, delivered) = (delivery.position, delivery.delivered);
            match self.sort(delivery, stats) {
                Prepared::Ack => done.push(position),
                Prepared::Ready(event) => {
                    events.push(*event);
                    ready.push(Ready {
                        position,
                        delivered,
                    });
                }
                Prepared::DeadLetter(why) => {
                    // The events before it first, so that dead letters come in order.
                    let events = std::mem::take(&mut events);
                    let ready = std::mem::take(&mut ready);
                    self.handle_events(stream, events, ready, stats, done)
                        .await?;
                    self.dead_letter(stream, position, delivered, &why, stats)
                        .await?;
                }
            }
        }
        self.handle_events(stream, events, ready, stats, done).await
    }

    /// Sorts a delivered event: acknowledge it unhandled, hand it to the projection, or
    /// dead-letter it (and why).
    fn sort(&self, delivery: Delivery, stats: &mut RunStats) -> Prepared<P::Event> {
        let stored = match delivery.event {
            // Gone while pending: nothing to process.
            None => return Prepared::Ack,
            Some(Err(error)) => return Prepared::DeadLetter(error.to_string()),
            Some(Ok(stored)) => stored,
        };
        if !handles::<P::Event>(&stored) {
            stats.skipped += 1;
            return Prepared::Ack;
        }
        let max = self.options.max_deliveries_value();
        if delivery.delivered > max {
            return Prepared::DeadLetter(format!(
                "delivered {} times, more than the limit of {max}",
                delivery.delivered
            ));
        }
        match stored.decode::<P::Event>() {
            Ok(event) => Prepared::Ready(Box::new(event)),
            Err(error) => Prepared::DeadLetter(error.to_string()),
        }
    }

    /// Hands decoded events to [`Projection::handle_batch`], following what
    /// [`BatchError`](super::BatchError) says on failure.
    async fn handle_events(
        &self,
        stream: usize,
        events: Vec<RecordedEvent<P::Event>>,
        ready: Vec<Ready>,
        stats: &mut RunStats,
        done: &mut Vec<Position>,
    ) -> Result<(), StoreError> {
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
                let error = failure.error.to_string();
                self.failed(stream, ready[start], &error, stats).await?;
                start += 1;
            } else {
                tracing::debug!(projection = %self.name, error = %failure.error, "batch handler failed; handling the rest one by one");
                for (event, ready) in events[start..].iter().zip(&ready[start..]) {
                    match self.projection.handle(event).await {
                        Ok(()) => self.handled(stream, &[*ready], stats, done).await?,
                        Err(error) => {
                            self.failed(stream, *ready, &error.to_string(), stats)
                                .await?;
                        }
                    }
                }
                break;
            }
        }
        Ok(())
    }

    /// Counts events as handled: clears the failure records of redelivered ones, and
    /// pushes their positions onto `done`.
    async fn handled(
        &self,
        stream: usize,
        events: &[Ready],
        stats: &mut RunStats,
        done: &mut Vec<Position>,
    ) -> Result<(), StoreError> {
        stats.handled += events.len() as u64;
        // Acknowledged even if clearing their failure records fails below.
        done.extend(events.iter().map(|e| e.position));
        let retried: Vec<Position> = events
            .iter()
            .filter(|e| e.delivered > 1)
            .map(|e| e.position)
            .collect();
        if !retried.is_empty() {
            self.source.clear_failures(stream, &retried).await?;
        }
        Ok(())
    }

    /// Records a failed delivery: kept pending for a retry, or dead-lettered on its last
    /// delivery.
    async fn failed(
        &self,
        stream: usize,
        event: Ready,
        error: &str,
        stats: &mut RunStats,
    ) -> Result<(), StoreError> {
        stats.failed += 1;
        if event.delivered >= self.options.max_deliveries_value() {
            let why = format!(
                "the handler failed on delivery {}: {error}",
                event.delivered
            );
            self.dead_letter(stream, event.position, event.delivered, &why, stats)
                .await
        } else {
            tracing::debug!(projection = %self.name, position = %event.position, %error, delivered = event.delivered, "handler failed; the event will be delivered again");
            self.source
                .record_failure(stream, event.position, error)
                .await
        }
    }

    async fn dead_letter(
        &self,
        stream: usize,
        position: Position,
        delivered: u32,
        error: &str,
        stats: &mut RunStats,
    ) -> Result<(), StoreError> {
        let location = &self.source.streams()[stream].location;
        tracing::warn!(projection = %self.name, stream = %location, %position, %error, "dead-lettering an event");
        if self
            .source
            .dead_letter(stream, position, delivered, error)
            .await?
        {
            stats.dead_lettered += 1;
        }
        Ok(())
    }
}
