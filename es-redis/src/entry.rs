//! The stored form of one event: a category stream entry.
//!
//! ```text
//! XADD es:{user}:events * type Registered aggregate_id 42 version 1
//!     [correlation_id …] [causation_id …] [metadata {"tenant":"acme"}] name Duffy surname Duck
//! ```
//!
//! The envelope comes first, under the names of [`RESERVED_EVENT_FIELDS`](es_core::event::RESERVED_EVENT_FIELDS); `metadata` is a
//! JSON object of [`Metadata::extra`] stored only when that is not empty; the event's own
//! field pairs follow in order. The entry id is the event's [`Position`] and its
//! milliseconds are its timestamp.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use es_core::codec::{FieldError, Fields};
use es_core::{DecodeError, Metadata, NewEvent, Position, StoreError, StoredEvent, StreamId};
use redis::Value;

use crate::error::Error;

/// At most this many field pairs per event (including the envelope's optional ones): the
/// append script passes an entry's arguments through Lua's `unpack`, which is bounded.
pub(crate) const MAX_EVENT_FIELDS: usize = 3_000;

/// The event type reported in envelope errors when the entry has no readable `type`.
const UNKNOWN_TYPE: &str = "<unknown type>";

/// Checks `event` and adds it to the append script's arguments: type, pair count, pairs,
/// and with `copy` its tail copy ([`crate::copies`]).
pub(crate) fn push_append_args(
    args: &mut Vec<Vec<u8>>,
    stream: &StreamId,
    event: NewEvent,
    copy: bool,
) -> Result<(), StoreError> {
    let metadata = event.metadata;
    let optional = [
        (
            "correlation_id",
            metadata.correlation_id.map(String::into_bytes),
        ),
        (
            "causation_id",
            metadata.causation_id.map(String::into_bytes),
        ),
        (
            "metadata",
            (!metadata.extra.is_empty()).then(|| encode_extra(&metadata.extra)),
        ),
    ];
    let pair_count = optional.iter().filter(|(_, v)| v.is_some()).count() + event.fields.len();
    if pair_count > MAX_EVENT_FIELDS {
        return Err(StoreError::InvalidRequest(format!(
            "event `{}` for {stream} has {pair_count} fields; at most {MAX_EVENT_FIELDS} are supported",
            event.event_type
        )));
    }
    let start = args.len();
    args.push(event.event_type.into_owned().into_bytes());
    args.push(pair_count.to_string().into_bytes());
    for (name, value) in optional {
        if let Some(value) = value {
            args.push(name.as_bytes().to_vec());
            args.push(value);
        }
    }
    for (name, value) in event.fields {
        args.push(name.into_owned().into_bytes());
        args.push(value);
    }
    if copy {
        let copied =
            crate::copies::encode(&args[start], args[start + 2..].iter().map(Vec::as_slice));
        args.push(copied);
    }
    Ok(())
}

fn encode_extra(extra: &BTreeMap<String, String>) -> Vec<u8> {
    // A map of strings always serializes; the fallback only keeps this panic-free.
    serde_json::to_vec(extra).unwrap_or_else(|_| b"{}".to_vec())
}

/// One entry as XRANGE returns it.
pub(crate) struct RawEntry {
    /// The entry id.
    pub id: String,
    /// Its field pairs in order; `None` if the index names an entry the stream lacks.
    pub pairs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl RawEntry {
    /// Parses `[id, [field, value, …]]`, or `[id]` (the read scripts' "missing" marker).
    pub(crate) fn parse(value: Value, operation: &str) -> Result<Self, Error> {
        let mut parts = into_array(value, operation)?.into_iter();
        let id = match parts.next().map(into_bytes) {
            Some(Some(id)) => String::from_utf8(id)
                .map_err(|_| Error::unexpected(operation, "an entry id is not UTF-8"))?,
            _ => return Err(Error::unexpected(operation, "an entry has no id")),
        };
        let Some(fields) = parts.next() else {
            return Ok(RawEntry { id, pairs: None });
        };
        let mut flat = into_array(fields, operation)?.into_iter();
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        while let Some(name) = flat.next() {
            match (into_bytes(name), flat.next().and_then(into_bytes)) {
                (Some(name), Some(value)) => pairs.push((name, value)),
                _ => {
                    return Err(Error::unexpected(
                        operation,
                        format!("entry {id} has a malformed field list"),
                    ))
                }
            }
        }
        Ok(RawEntry {
            id,
            pairs: Some(pairs),
        })
    }
}

/// What decoding an entry needs to know about where it came from.
pub(crate) struct EntrySource<'a> {
    /// The category stream key (named in errors, kept in [`StoredEvent::location`]).
    pub storage_key: &'a Arc<str>,
    /// The category.
    pub category: &'a Cow<'static, str>,
}

/// Decodes an entry's envelope and fields. An entry that lacks `type`, `aggregate_id` or
/// `version`, or holds one that does not decode, is a [`StoreError::Decode`] naming the
/// stream key, the entry id and the field.
pub(crate) fn decode_entry(
    source: &EntrySource<'_>,
    id: &str,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<StoredEvent, StoreError> {
    let position: Position = id.parse().map_err(|_| {
        StoreError::from(Error::unexpected(
            format!("reading {}", source.storage_key),
            format!("entry id {id:?} is not a stream entry id"),
        ))
    })?;
    let mut envelope = Envelope::default();
    let mut fields = Fields::with_capacity(pairs.len());
    for (name, value) in pairs {
        let name = match String::from_utf8(name) {
            Ok(name) => name,
            Err(not_utf8) => {
                let shown = String::from_utf8_lossy(not_utf8.as_bytes()).into_owned();
                let error = FieldError::Invalid("a field name that is not UTF-8".to_owned());
                return Err(envelope.error(source, id, &shown, error));
            }
        };
        let slot = match name.as_str() {
            "type" => &mut envelope.event_type,
            "aggregate_id" => &mut envelope.aggregate_id,
            "version" => &mut envelope.version,
            "correlation_id" => &mut envelope.correlation_id,
            "causation_id" => &mut envelope.causation_id,
            "metadata" => &mut envelope.metadata,
            // Reserved and never written by this backend: not part of the event.
            "timestamp" => continue,
            _ => {
                fields.push(name, value);
                continue;
            }
        };
        // The first occurrence wins, as in `Fields::get`.
        slot.get_or_insert(value);
    }
    envelope.into_event(source, id, position, fields)
}

#[derive(Default)]
struct Envelope {
    event_type: Option<Vec<u8>>,
    aggregate_id: Option<Vec<u8>>,
    version: Option<Vec<u8>>,
    correlation_id: Option<Vec<u8>>,
    causation_id: Option<Vec<u8>>,
    metadata: Option<Vec<u8>>,
}

impl Envelope {
    fn type_name(&self) -> String {
        self.event_type
            .as_deref()
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .unwrap_or(UNKNOWN_TYPE)
            .to_owned()
    }

    fn error(
        &self,
        source: &EntrySource<'_>,
        id: &str,
        field: &str,
        error: FieldError,
    ) -> StoreError {
        StoreError::decode(
            &**source.storage_key,
            id,
            DecodeError::field(&self.type_name(), field, error),
        )
    }

    fn text(
        &self,
        source: &EntrySource<'_>,
        id: &str,
        field: &str,
        raw: Option<&[u8]>,
    ) -> Result<Option<String>, StoreError> {
        raw.map(|raw| {
            String::from_utf8(raw.to_vec())
                .map_err(|_| self.error(source, id, field, FieldError::invalid("UTF-8 text", raw)))
        })
        .transpose()
    }

    fn required(
        &self,
        source: &EntrySource<'_>,
        id: &str,
        field: &str,
        raw: Option<&[u8]>,
    ) -> Result<String, StoreError> {
        self.text(source, id, field, raw)?
            .ok_or_else(|| self.error(source, id, field, FieldError::Missing))
    }

    fn into_event(
        self,
        source: &EntrySource<'_>,
        id: &str,
        position: Position,
        fields: Fields,
    ) -> Result<StoredEvent, StoreError> {
        let event_type = self.required(source, id, "type", self.event_type.as_deref())?;
        let aggregate_id =
            self.required(source, id, "aggregate_id", self.aggregate_id.as_deref())?;
        let version_text = self.required(source, id, "version", self.version.as_deref())?;
        let version = match version_text.parse::<u64>() {
            Ok(version) if version > 0 => version,
            _ => {
                let error =
                    FieldError::invalid("a version (a positive integer)", version_text.as_bytes());
                return Err(self.error(source, id, "version", error));
            }
        };
        let mut metadata = Metadata {
            correlation_id: self.text(
                source,
                id,
                "correlation_id",
                self.correlation_id.as_deref(),
            )?,
            causation_id: self.text(source, id, "causation_id", self.causation_id.as_deref())?,
            extra: BTreeMap::new(),
        };
        if let Some(raw) = self.metadata.as_deref() {
            metadata.extra = serde_json::from_slice(raw).map_err(|e| {
                let error = FieldError::Invalid(format!(
                    "expected a JSON object of strings ({e}), found {:?}",
                    String::from_utf8_lossy(raw)
                ));
                self.error(source, id, "metadata", error)
            })?;
        }
        Ok(StoredEvent {
            stream: StreamId::new(source.category.clone(), aggregate_id),
            version,
            position,
            // A Redis entry id is `<milliseconds>-<sequence>`: its first part is the time.
            timestamp: position.major(),
            event_type,
            metadata,
            event: fields,
            location: source.storage_key.clone(),
        })
    }
}

/// The items of an array reply.
pub(crate) fn into_array(value: Value, operation: &str) -> Result<Vec<Value>, Error> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(Error::unexpected(
            operation,
            format!("expected an array, got {other:?}"),
        )),
    }
}

/// The bytes of a string reply (`None` for other kinds).
pub(crate) fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The integer of an integer reply (or of a string holding one).
pub(crate) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_parts() -> (Arc<str>, Cow<'static, str>) {
        (Arc::from("es:{user}:events"), Cow::Borrowed("user"))
    }

    fn pairs(items: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        items
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn envelope_and_fields_are_separated_in_order() {
        let (key, category) = source_parts();
        let source = EntrySource {
            storage_key: &key,
            category: &category,
        };
        let event = decode_entry(
            &source,
            "1700000000000-3",
            pairs(&[
                ("type", b"Registered"),
                ("aggregate_id", b"42"),
                ("version", b"7"),
                ("correlation_id", b"c"),
                ("metadata", br#"{"tenant":"acme"}"#),
                ("name", b"Duffy"),
                ("surname", b"Duck"),
            ]),
        )
        .expect("decodes");
        assert_eq!(event.stream, StreamId::new("user", "42"));
        assert_eq!((event.version, event.timestamp), (7, 1_700_000_000_000));
        assert_eq!(event.position, Position::new(1_700_000_000_000, 3));
        assert_eq!(event.metadata.correlation_id.as_deref(), Some("c"));
        assert_eq!(event.metadata.extra["tenant"], "acme");
        let names: Vec<_> = event.event.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["name", "surname"]);
    }

    #[test]
    fn broken_envelopes_name_key_entry_and_field() {
        let (key, category) = source_parts();
        let source = EntrySource {
            storage_key: &key,
            category: &category,
        };
        type Entry<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Entry, &str); 5] = [
            (&[("type", b"A"), ("aggregate_id", b"1")], "version"),
            (&[("type", b"A"), ("version", b"1")], "aggregate_id"),
            (
                &[
                    ("type", b"\xff\xfe"),
                    ("aggregate_id", b"1"),
                    ("version", b"1"),
                ],
                "type",
            ),
            (
                &[("type", b"A"), ("aggregate_id", b"1"), ("version", b"one")],
                "version",
            ),
            (
                &[
                    ("type", b"A"),
                    ("aggregate_id", b"1"),
                    ("version", b"1"),
                    ("metadata", b"["),
                ],
                "metadata",
            ),
        ];
        for (entry, field) in cases {
            match decode_entry(&source, "5-1", pairs(entry)) {
                Err(StoreError::Decode {
                    location,
                    entry,
                    source,
                }) => {
                    assert_eq!(location, "es:{user}:events");
                    assert_eq!(entry, "5-1");
                    assert_eq!(source.field_name(), Some(field));
                }
                other => panic!("expected a decode error on {field}, got {other:?}"),
            }
        }
    }
}
