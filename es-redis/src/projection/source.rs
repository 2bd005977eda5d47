//! [`RedisSource`]'s side of the projection contract: consumer groups, acknowledgements,
//! failure records, the dead-letter script, pruning, status and reset.

use std::time::Duration;

use async_trait::async_trait;
use es_core::projection::{
    event_at, Capabilities, DeadLetter, Delivery, ProjectionSource, ProjectionStatus, SourceStream,
    StreamBatch,
};
use es_core::{Position, StoreError};

use crate::entry::as_u64;
use crate::error::Error;
use crate::scripts::SCRIPTS;

use super::{RedisSource, PRUNE_LIMIT};

impl RedisSource {
    /// Creates the consumer groups that do not exist yet, at `0` (with `MKSTREAM`).
    pub(super) async fn create_groups(&self) -> Result<(), Error> {
        for stream in &self.streams {
            let operation = format!("XGROUP CREATE {} {}", stream.location, self.group);
            let created = self
                .store
                .query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&*stream.location)
                        .arg(&self.group)
                        .arg("0")
                        .arg("MKSTREAM")
                        .arg("ENTRIESREAD")
                        .arg(0),
                    &operation,
                )
                .await;
            match created {
                Ok(_) => {}
                Err(Error::Redis { source, .. }) if source.code() == Some("BUSYGROUP") => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Forgets applied entry ids at or below the group's watermark (see
    /// [`ProjectionOptions::prune_grace`](es_core::projection::ProjectionOptions::prune_grace)).
    async fn prune_applied(&self) -> Result<(), Error> {
        let grace = u64::try_from(self.prune_grace.as_millis()).unwrap_or(u64::MAX);
        for status in self.monitor.status().await? {
            let Some(index) = self
                .streams
                .iter()
                .position(|s| s.category == status.category && s.partition == status.partition)
            else {
                continue;
            };
            let watermark = status.watermark();
            if watermark == Position::ZERO {
                continue;
            }
            let mut invocation = SCRIPTS.prune_applied.prepare_invoke();
            invocation
                .key(&self.keys[index].applied)
                .arg(watermark.to_string())
                .arg(grace)
                .arg(PRUNE_LIMIT);
            self.store.run_script("prune_applied", &invocation).await?;
        }
        Ok(())
    }

    /// Runs `operation`; if a stream or its group was deleted under the runner (`NOGROUP`),
    /// creates the groups again and runs it once more.
    pub(super) async fn with_groups<T, F, Fut>(&self, operation: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        match operation().await {
            Err(Error::Redis { source, .. }) if source.code() == Some("NOGROUP") => {
                self.create_groups().await?;
                operation().await
            }
            other => other,
        }
    }
}

#[async_trait]
impl ProjectionSource for RedisSource {
    fn streams(&self) -> &[SourceStream] {
        &self.streams
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_competing_consumers(true)
            .with_durable(true)
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(self.create_groups().await?)
    }

    async fn read(&self, block: Option<Duration>) -> Result<Vec<StreamBatch>, StoreError> {
        Ok(self.with_groups(|| self.read_new(block)).await?)
    }

    async fn reclaim(
        &self,
        stream: usize,
        idle: Duration,
        cursor: Option<String>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        let cursor = cursor.as_deref().unwrap_or("0-0");
        Ok(self
            .with_groups(|| self.claim_page(stream, idle, cursor))
            .await?)
    }

    async fn acknowledge(&self, stream: usize, positions: &[Position]) -> Result<(), StoreError> {
        let key = &*self.streams[stream].location;
        let ids: Vec<String> = positions.iter().map(Position::to_string).collect();
        self.store
            .query(
                redis::cmd("XACK").arg(key).arg(&self.group).arg(&ids),
                &format!("XACK of {key}"),
            )
            .await?;
        Ok(())
    }

    async fn record_failure(
        &self,
        stream: usize,
        position: Position,
        error: &str,
    ) -> Result<(), StoreError> {
        let failures = &self.keys[stream].failures;
        self.store
            .query(
                redis::cmd("HSET")
                    .arg(failures)
                    .arg(position.to_string())
                    .arg(error),
                &format!("HSET of {failures}"),
            )
            .await?;
        Ok(())
    }

    async fn clear_failures(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        let failures = &self.keys[stream].failures;
        let ids: Vec<String> = positions.iter().map(Position::to_string).collect();
        self.store
            .query(
                redis::cmd("HDEL").arg(failures).arg(&ids),
                &format!("HDEL of {failures}"),
            )
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        stream: usize,
        position: Position,
        delivered: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        let keys = &self.keys[stream];
        let mut invocation = SCRIPTS.dead_letter.prepare_invoke();
        invocation
            .key(&*self.streams[stream].location)
            .key(&keys.dead_letters)
            .key(&keys.failures)
            .arg(&self.group)
            .arg(position.to_string())
            .arg(error)
            .arg(delivered)
            .arg(&self.consumer)
            .arg(
                self.dead_letter_limit
                    .map(|limit| limit.to_string())
                    .unwrap_or_default(),
            );
        let reply = self.store.run_script("dead_letter", &invocation).await?;
        Ok(as_u64(&reply) == Some(1))
    }

    async fn upkeep(&self) -> Result<(), StoreError> {
        Ok(self.prune_applied().await?)
    }

    async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        Ok(self.monitor.status().await?)
    }

    async fn dead_letters(&self, category: &str) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.monitor.dead_letters(category).await?)
    }

    /// The dead letters of the stream's partition, each event read again by `XRANGE`.
    async fn dead_lettered(&self, stream: usize) -> Result<Vec<Delivery>, StoreError> {
        let SourceStream {
            category,
            partition,
            ..
        } = &self.streams[stream];
        let letters = self
            .monitor
            .dead_letter_entries(category, *partition)
            .await?;
        let mut deliveries = Vec::with_capacity(letters.len());
        for (_, letter) in letters {
            deliveries.push(Delivery {
                position: letter.position,
                delivered: letter.attempts,
                event: event_at(&self.store, category, *partition, letter.position).await,
            });
        }
        Ok(deliveries)
    }

    /// `XDEL`s the dead-letter stream's entries of `positions`.
    async fn forget_dead_letters(
        &self,
        stream: usize,
        positions: &[Position],
    ) -> Result<(), StoreError> {
        let SourceStream {
            category,
            partition,
            ..
        } = &self.streams[stream];
        let ids: Vec<String> = self
            .monitor
            .dead_letter_entries(category, *partition)
            .await?
            .into_iter()
            .filter(|(_, letter)| positions.contains(&letter.position))
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let key = &self.keys[stream].dead_letters;
        self.store
            .query(
                redis::cmd("XDEL").arg(key).arg(&ids),
                &format!("XDEL of {key}"),
            )
            .await?;
        Ok(())
    }

    /// Sets every group back to `0` (`XGROUP SETID … 0 ENTRIESREAD 0`), then deletes the
    /// dead letters and recorded failures.
    async fn reset(&self) -> Result<(), StoreError> {
        for stream in &self.streams {
            self.store
                .query(
                    redis::cmd("XGROUP")
                        .arg("SETID")
                        .arg(&*stream.location)
                        .arg(&self.group)
                        .arg("0")
                        .arg("ENTRIESREAD")
                        .arg(0),
                    &format!("XGROUP SETID {} {}", stream.location, self.group),
                )
                .await?;
        }
        for keys in &self.keys {
            self.store
                .query(
                    redis::cmd("DEL")
                        .arg(&keys.dead_letters)
                        .arg(&keys.failures),
                    &format!("DEL of {}", keys.dead_letters),
                )
                .await?;
        }
        Ok(())
    }
}
