//! What the inspector answers: plain serializable views of categories, events, replays
//! and projections. The HTTP API sends them as JSON; the CLI prints them as text.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use es_core::codec::Fields;
use es_core::personal::{ERASED, TO_SEAL};
use es_core::projection::{DeadLetter, ProjectionStatus};
use es_core::{CategoryInfo, StoredEvent};
use serde::Serialize;

/// Field/value pairs, values as text (bytes that are no UTF-8 are shown lossily).
pub type Pairs = Vec<(String, String)>;

/// What an erased personal value shows as.
pub const ERASED_TEXT: &str = "⟨erased⟩";

/// The pairs of `fields`, in their order. A personal value shows as its plain text (a state
/// encoded in memory holds it marked to be sealed), or as [`ERASED_TEXT`] once erased.
pub(crate) fn pairs(fields: &Fields) -> Pairs {
    fields
        .iter()
        .map(|(name, value)| {
            let text = if value == ERASED {
                ERASED_TEXT.to_owned()
            } else {
                let plain = value.strip_prefix(TO_SEAL).unwrap_or(value);
                String::from_utf8_lossy(plain).into_owned()
            };
            (name.to_owned(), text)
        })
        .collect()
}

/// `millis` since the epoch as RFC 3339 UTC, to the millisecond.
pub(crate) fn rfc3339(millis: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

/// A category and what it holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CategoryView {
    /// Its name.
    pub name: String,
    /// How many events it holds.
    pub events: u64,
    /// The position of its newest event.
    pub head: String,
    /// Whether an aggregate type is registered for it, so its aggregates can be replayed.
    pub replayable: bool,
}

impl CategoryView {
    pub(crate) fn new(info: CategoryInfo, replayable: bool) -> Self {
        CategoryView {
            name: info.name,
            events: info.events,
            head: info.head.to_string(),
            replayable,
        }
    }
}

/// One page of a category's aggregate ids.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AggregatePage {
    /// The category.
    pub category: String,
    /// The ids, in the order the aggregates started.
    pub ids: Vec<String>,
    /// The cursor to ask for the next page after; `None` on the last page.
    pub next: Option<String>,
}

/// An event's metadata.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MetadataView {
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// The causation id.
    pub causation_id: Option<String>,
    /// Every other entry.
    pub extra: BTreeMap<String, String>,
}

/// A stored event and its envelope.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventView {
    /// The aggregate's version after it.
    pub version: u64,
    /// Its position in its category.
    pub position: String,
    /// When it was stored, in milliseconds since the epoch.
    pub timestamp: u64,
    /// The same, as RFC 3339 UTC.
    pub time: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its fields as stored.
    pub fields: Pairs,
    /// Its metadata.
    pub metadata: MetadataView,
}

impl From<&StoredEvent> for EventView {
    fn from(event: &StoredEvent) -> Self {
        EventView {
            version: event.version,
            position: event.position.to_string(),
            timestamp: event.timestamp,
            time: rfc3339(event.timestamp),
            event_type: event.event_type.clone(),
            fields: pairs(&event.event),
            metadata: MetadataView {
                correlation_id: event.metadata.correlation_id.clone(),
                causation_id: event.metadata.causation_id.clone(),
                extra: event.metadata.extra.clone(),
            },
        }
    }
}

/// The events of one aggregate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StreamEvents {
    /// The category.
    pub category: String,
    /// The aggregate id.
    pub id: String,
    /// Its events in version order.
    pub events: Vec<EventView>,
}

/// One step of a replay: an event and the state after it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    /// The event.
    pub event: EventView,
    /// The state after it, as its snapshot fields.
    pub state: Pairs,
    /// The fields it changed (added, changed or removed), in the state's order.
    pub changed: Vec<String>,
}

/// An aggregate's history, step by step, with the state after each event derived by the
/// application's own `apply` code.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplayView {
    /// The category.
    pub category: String,
    /// The aggregate id.
    pub id: String,
    /// Whether an aggregate type is registered for the category: without one the steps
    /// hold the events only, with empty states.
    pub replayable: bool,
    /// The state before any event (`Default`).
    pub initial: Pairs,
    /// One step per event.
    pub steps: Vec<Step>,
}

/// A projection's progress in one category.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProjectionCategoryView {
    /// The category.
    pub category: String,
    /// Events not delivered yet (`None`: the backend cannot tell).
    pub lag: Option<u64>,
    /// Events delivered but not acknowledged.
    pub pending: u64,
    /// The position up to which every event is processed.
    pub last_delivered: String,
    /// How many events it dead-lettered.
    pub dead_letters: usize,
}

impl ProjectionCategoryView {
    pub(crate) fn new(status: &ProjectionStatus, dead_letters: usize) -> Self {
        ProjectionCategoryView {
            category: status.category.clone(),
            lag: status.lag,
            pending: status.pending,
            last_delivered: status.last_delivered.to_string(),
            dead_letters,
        }
    }
}

/// A projection and its progress.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProjectionView {
    /// Its name.
    pub name: String,
    /// Its progress in each category it reads.
    pub categories: Vec<ProjectionCategoryView>,
}

/// An event a projection could not process.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetterView {
    /// Its category.
    pub category: String,
    /// Its position there.
    pub position: String,
    /// Its type.
    pub event_type: String,
    /// How often processing was tried.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        DeadLetterView {
            category: letter.category,
            position: letter.position.to_string(),
            event_type: letter.event_type,
            attempts: letter.attempts,
            error: letter.error,
        }
    }
}

/// A projection's dead letters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLettersView {
    /// The projection.
    pub projection: String,
    /// Its dead letters, per category in its order, oldest first.
    pub dead_letters: Vec<DeadLetterView>,
}

/// An event that failed again in a re-drive.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StillFailing {
    /// Its category.
    pub category: String,
    /// Its position there.
    pub position: String,
    /// The new error.
    pub error: String,
}

/// What a re-drive of a projection's dead letters did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RedriveView {
    /// The projection.
    pub projection: String,
    /// How many dead letters the projection handled, so they are gone.
    pub redriven: usize,
    /// Those that failed again and stay.
    pub still_failing: Vec<StillFailing>,
}

/// An event of a live tail, with its aggregate id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TailEvent {
    /// The aggregate id.
    pub id: String,
    /// The event.
    #[serde(flatten)]
    pub event: EventView,
}
