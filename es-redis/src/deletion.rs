//! Deleting an aggregate on Redis: soft by appending the marker, hard by one script that
//! removes its entries and keys and leaves the marker as its tombstone.

use es_core::deletion::{self, soft_delete, Deletion};
use es_core::{AppendResult, Metadata, Position, StoreError, StreamId};

use crate::entry::{self, into_array, into_bytes};
use crate::error::Error;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

impl RedisEventStore {
    pub(crate) async fn delete(
        &self,
        stream: &StreamId,
        deletion: Deletion,
        metadata: Metadata,
    ) -> Result<AppendResult, StoreError> {
        if deletion == Deletion::Soft {
            return soft_delete(self, stream, metadata).await;
        }
        self.check_partition_count(&stream.category, true).await?;
        let keys = self.keys();
        let mut last = None;
        for _ in 0..deletion::DELETE_ATTEMPTS {
            let version = es_core::EventStore::stream_version(self, stream).await?;
            if version == 0 {
                return Err(deletion::nothing_to_delete(stream));
            }
            let marker = deletion::marker(true, version, metadata.clone())?;
            let mut args = Vec::new();
            entry::push_append_args(&mut args, stream, marker, false)?;
            let mut invocation = SCRIPTS.delete_stream.prepare_invoke();
            invocation
                .key(keys.aggregate_stream(stream))
                .key(keys.index(stream))
                .key(keys.append_ids(stream))
                .key(keys.snapshot(stream))
                .key(keys.tail(stream))
                .arg(stream.id.as_bytes())
                .arg(version.to_string());
            for arg in &args {
                invocation.arg(arg.as_slice());
            }
            let reply = self.run_script("delete_stream", &invocation).await?;
            let malformed = || Error::unexpected("delete_stream", "a malformed reply");
            let mut items = into_array(reply, "delete_stream")?.into_iter();
            let status = items.next().and_then(into_bytes).ok_or_else(malformed)?;
            let detail = items.next().and_then(into_bytes).ok_or_else(malformed)?;
            if status == b"conflict" {
                // An append came first: delete it too.
                let actual = std::str::from_utf8(&detail)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(malformed)?;
                last = Some(es_core::ConflictError {
                    stream: stream.clone(),
                    expected: es_core::ExpectedVersion::Exact(version),
                    actual,
                });
                continue;
            }
            let id = String::from_utf8(detail).map_err(|_| malformed())?;
            let position = id.parse::<Position>().map_err(|_| malformed())?;
            return Ok(AppendResult {
                version: 1,
                positions: vec![position],
            });
        }
        Err(deletion::gave_up(stream, last))
    }
}
