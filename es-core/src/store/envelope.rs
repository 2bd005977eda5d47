//! What travels with every event: the stream it belongs to ([`StreamId`]), the version an
//! append expects ([`ExpectedVersion`]), its [`Metadata`], and the event before
//! ([`NewEvent`]) and after ([`RecordedEvent`]) it is stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::codec::Fields;
use crate::error::{DecodeError, EncodeError, StoreError};
use crate::event::Event;
use crate::store::Position;

/// Identifies one aggregate's stream: its category (the aggregate type name) and its id.
///
/// Ids are arbitrary text: backends must store any id, including empty ones and ones with
/// separators or braces, without breaking their layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The category: the aggregate type name (`Aggregate::NAME`).
    pub category: Cow<'static, str>,
    /// The aggregate id.
    pub id: String,
}

impl StreamId {
    /// The stream of aggregate `id` in `category`.
    pub fn new(category: impl Into<Cow<'static, str>>, id: impl Into<String>) -> Self {
        StreamId {
            category: category.into(),
            id: id.into(),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.category, self.id)
    }
}

/// What the caller believes the stream's version to be when appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be at exactly this version (`Exact(0)` is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Correlation and causation ids and free-form string metadata carried by every event.
///
/// ```
/// use es_core::Metadata;
/// let meta = Metadata::new().correlation_id("req-7").with("user", "duffy");
/// assert_eq!(meta.correlation_id.as_deref(), Some("req-7"));
/// assert_eq!(meta.extra["user"], "duffy");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Groups every event caused by one request.
    pub correlation_id: Option<String>,
    /// The id of the message that caused this event.
    pub causation_id: Option<String>,
    /// Any other metadata.
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// No metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds one free-form entry.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Whether there is no metadata at all.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none() && self.causation_id.is_none() && self.extra.is_empty()
    }
}

/// An event to append: its type, its encoded fields and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event type (`Event::event_type`).
    pub event_type: Cow<'static, str>,
    /// The encoded fields.
    pub fields: Fields,
    /// Its metadata.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Encodes a typed event.
    pub fn encode<E: Event>(event: &E, metadata: Metadata) -> Result<Self, EncodeError> {
        let mut fields = Fields::new();
        event.encode(&mut fields)?;
        Ok(NewEvent {
            event_type: Cow::Borrowed(event.event_type()),
            fields,
            metadata,
        })
    }
}

/// A stored event with its envelope. `E` is [`Fields`] as read from a store, or a typed event
/// after [`decode`](RecordedEvent::decode).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent<E> {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The aggregate's version after this event: 1-based and contiguous per stream.
    pub version: u64,
    /// The event's position in its category.
    pub position: Position,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The event type.
    pub event_type: String,
    /// Its metadata.
    pub metadata: Metadata,
    /// The event.
    pub event: E,
    /// Where the backend keeps the entry (a stream key, a table); named in decode errors.
    pub location: Arc<str>,
}

/// An event as read from a store, not yet decoded.
pub type StoredEvent = RecordedEvent<Fields>;

impl StoredEvent {
    /// Decodes the fields into a typed event. The error names the location, the entry
    /// (its position), the event type and the field.
    pub fn decode<E: Event>(self) -> Result<RecordedEvent<E>, StoreError> {
        let event = match E::decode(&self.event_type, &self.event) {
            Ok(event) => event,
            Err(source) => return Err(self.decode_error(source)),
        };
        Ok(self.with_event(event))
    }

    /// A [`StoreError::Decode`] located at this entry.
    pub fn decode_error(&self, source: DecodeError) -> StoreError {
        StoreError::decode(&*self.location, self.position.to_string(), source)
    }
}

impl<E> RecordedEvent<E> {
    /// The same envelope around another event value.
    pub fn with_event<F>(self, event: F) -> RecordedEvent<F> {
        RecordedEvent {
            stream: self.stream,
            version: self.version,
            position: self.position,
            timestamp: self.timestamp,
            event_type: self.event_type,
            metadata: self.metadata,
            event,
            location: self.location,
        }
    }

    /// When it was stored.
    pub fn recorded_at(&self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(std::time::Duration::from_millis(self.timestamp))
            .unwrap_or(UNIX_EPOCH)
    }
}
