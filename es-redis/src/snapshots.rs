//! Snapshots: one hash per aggregate, `<namespace>:{<category>}:snapshot:<id>`.
//!
//! The hash holds the aggregate's snapshot fields plus `_version`, `_position`, `_schema`
//! and `_fields` (the field names in order, so a snapshot reads back exactly as saved even
//! when Redis stores a large hash unordered). Aggregate fields may not start with `_`.

use async_trait::async_trait;
use es_core::aggregate::RESERVED_SNAPSHOT_PREFIX;
use es_core::codec::{FieldError, Fields};
use es_core::store::validate_snapshot;
use es_core::{DecodeError, Position, Snapshot, SnapshotStore, StoreError, StoredEvent, StreamId};
use redis::Value;

use crate::entry::{as_u64, into_array, into_bytes};
use crate::error::Error;
use crate::index::Page;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// Where a snapshot decode error points: a hash has no entry id, so errors name this.
const SNAPSHOT_ENTRY: &str = "snapshot";

#[async_trait]
impl SnapshotStore for RedisEventStore {
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &Snapshot,
    ) -> Result<bool, StoreError> {
        validate_snapshot(stream, snapshot)?;
        self.check_partition_count(&stream.category, false).await?;
        let mut invocation = SCRIPTS.save_snapshot.prepare_invoke();
        invocation.key(self.keys().snapshot(stream));
        if self.tail_copies() > 0 {
            invocation
                .key(self.keys().index(stream))
                .key(self.keys().tail(stream));
        }
        invocation
            .arg(snapshot.version)
            .arg(snapshot.position.to_string())
            .arg(snapshot.schema)
            .arg(encode_field_order(&snapshot.fields));
        for (name, value) in snapshot.fields.iter() {
            invocation.arg(name).arg(value);
        }
        let reply = self.run_script("save_snapshot", &invocation).await?;
        match as_u64(&reply) {
            Some(saved) => Ok(saved == 1),
            None => Err(Error::unexpected("save_snapshot", format!("{reply:?}")).into()),
        }
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.check_partition_count(&stream.category, false).await?;
        let key = self.keys().snapshot(stream);
        let operation = format!("HGETALL of {key}");
        let reply = self
            .query(redis::cmd("HGETALL").arg(&key), &operation)
            .await?;
        decode_snapshot(&key, &stream.category, into_array(reply, &operation)?)
    }

    /// One round trip for the snapshot and the first page of events after it; a longer
    /// tail is read in further pages.
    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
        schema: u64,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>), StoreError> {
        self.check_partition_count(&stream.category, false).await?;
        let snapshot_key = self.keys().snapshot(stream);
        let mut invocation = SCRIPTS.load_snapshot_and_tail.prepare_invoke();
        invocation
            .key(self.keys().aggregate_stream(stream))
            .key(self.keys().index(stream))
            .key(&snapshot_key);
        if self.tail_copies() > 0 {
            invocation.key(self.keys().tail(stream));
        }
        invocation.arg(schema).arg(self.page_size());
        let operation = "load_snapshot_and_tail";
        let reply = self.run_script(operation, &invocation).await?;
        let mut parts = into_array(reply, operation)?.into_iter();
        let (Some(snapshot), Some(from), Some(page)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::unexpected(operation, "a reply without three parts").into());
        };
        let from = as_u64(&from)
            .ok_or_else(|| Error::unexpected(operation, format!("first version {from:?}")))?;
        let snapshot = match decode_snapshot(
            &snapshot_key,
            &stream.category,
            into_array(snapshot, operation)?,
        ) {
            Ok(snapshot) => snapshot,
            // A snapshot is a cache of the events: a corrupt one must not make its aggregate
            // unloadable. Replay every event instead; the next snapshot replaces it.
            Err(error @ StoreError::Decode { .. }) => {
                tracing::warn!(%stream, %error, "ignoring a snapshot that does not decode; replaying");
                let events = self.read_pages(stream, 1, None, None, None).await?;
                return Ok((None, events));
            }
            Err(other) => return Err(other),
        };
        let page = Page::parse(page, operation)?;
        let tail = self
            .read_pages(stream, from, None, None, Some(page))
            .await?;
        Ok((snapshot, tail))
    }
}

/// `_fields`: each name as `<byte length>:<name>`, so any name can be listed.
fn encode_field_order(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, _) in fields.iter() {
        out.extend_from_slice(name.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(name.as_bytes());
    }
    out
}

fn decode_field_order(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let colon = rest.iter().position(|&b| b == b':')?;
        let length: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let end = (colon + 1).checked_add(length)?;
        let name = rest.get(colon + 1..end)?;
        names.push(name.to_vec());
        rest = rest.get(end..)?;
    }
    Some(names)
}

/// Decodes HGETALL's flat `[field, value, …]` (empty: no snapshot).
fn decode_snapshot(
    key: &str,
    category: &str,
    flat: Vec<Value>,
) -> Result<Option<Snapshot>, StoreError> {
    if flat.is_empty() {
        return Ok(None);
    }
    let error = |field: &str, error: FieldError| {
        StoreError::decode(
            key,
            SNAPSHOT_ENTRY,
            DecodeError::field(&format!("snapshot of {category}"), field, error),
        )
    };
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let Some(name) = items.next() {
        match (into_bytes(name), items.next().and_then(into_bytes)) {
            (Some(name), Some(value)) => pairs.push((name, value)),
            _ => {
                return Err(Error::unexpected(
                    format!("HGETALL of {key}"),
                    "a malformed field list",
                )
                .into())
            }
        }
    }
    let meta = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    let number = |name: &str| -> Result<u64, StoreError> {
        let raw = meta(name).ok_or_else(|| error(name, FieldError::Missing))?;
        std::str::from_utf8(raw)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| error(name, FieldError::invalid("an integer", raw)))
    };
    let version = number("_version")?;
    let schema = number("_schema")?;
    let position_raw = meta("_position").ok_or_else(|| error("_position", FieldError::Missing))?;
    let position: Position = std::str::from_utf8(position_raw)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            error(
                "_position",
                FieldError::invalid("a stream entry id", position_raw),
            )
        })?;
    let order = match meta("_fields") {
        Some(raw) => decode_field_order(raw)
            .ok_or_else(|| error("_fields", FieldError::invalid("a list of field names", raw)))?,
        None => Vec::new(),
    };

    // Listed fields in their saved order, then any others in hash order.
    let mut ranked: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name.starts_with(RESERVED_SNAPSHOT_PREFIX.as_bytes()) {
            continue;
        }
        let rank = order
            .iter()
            .position(|listed| *listed == name.as_slice())
            .unwrap_or(usize::MAX);
        ranked.push((rank, name, value));
    }
    ranked.sort_by_key(|(rank, _, _)| *rank);
    let mut fields = Fields::with_capacity(ranked.len());
    for (_, name, value) in ranked {
        let name = String::from_utf8(name).map_err(|not_utf8| {
            let shown = String::from_utf8_lossy(not_utf8.as_bytes()).into_owned();
            error(
                &shown,
                FieldError::Invalid("a field name that is not UTF-8".to_owned()),
            )
        })?;
        fields.push(name, value);
    }
    Ok(Some(Snapshot {
        version,
        position,
        schema,
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_order_round_trips_any_names() {
        let mut fields = Fields::new();
        for name in ["total", "", "a:b", "12:x", "é"] {
            fields.push(name.to_owned(), "v");
        }
        let encoded = encode_field_order(&fields);
        let names = decode_field_order(&encoded).expect("decodes");
        let expected: Vec<Vec<u8>> = fields.iter().map(|(n, _)| n.as_bytes().to_vec()).collect();
        assert_eq!(names, expected);
        assert_eq!(decode_field_order(b"5:abc"), None);
        assert_eq!(decode_field_order(b"x:abc"), None);
        assert_eq!(decode_field_order(b"18446744073709551615:abc"), None);
    }

    #[test]
    fn snapshot_fields_come_back_in_saved_order() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = [
            "b",
            "2",
            "_version",
            "3",
            "_schema",
            "9",
            "_position",
            "5-1",
            "_fields",
            "1:a1:b",
            "a",
            "1",
        ]
        .map(bulk)
        .to_vec();
        let snapshot = decode_snapshot("k", "user", flat)
            .expect("ok")
            .expect("some");
        assert_eq!((snapshot.version, snapshot.schema), (3, 9));
        assert_eq!(snapshot.position, Position::new(5, 1));
        let names: Vec<_> = snapshot.fields.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_snapshot_without_version_names_the_field() {
        let flat = vec![
            Value::BulkString(b"_schema".to_vec()),
            Value::BulkString(b"1".to_vec()),
        ];
        match decode_snapshot("es:{user}:snapshot:1", "user", flat) {
            Err(StoreError::Decode {
                location, source, ..
            }) => {
                assert_eq!(location, "es:{user}:snapshot:1");
                assert_eq!(source.field_name(), Some("_version"));
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
}
