//! The pre-deploy check: before code that changes events goes live, decode every stored
//! entry of a category with it and list what it cannot read. It changes nothing.
//!
//! ```
//! use es_core::codec::Fields;
//! use es_core::evolution::check_category;
//! use es_core::{Event, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent, StreamId};
//!
//! #[derive(Event)]
//! struct Registered { name: String, surname: String }
//! #[derive(Event)]
//! enum UserEvent { Registered(Registered) }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = InMemoryStore::new();
//! // What an older version wrote: no `surname`.
//! let old = NewEvent { event_type: "Registered".into(), fields: [("name", "Duffy")].into_iter().collect(), metadata: Metadata::default() };
//! store.append(&StreamId::new("user", "1"), ExpectedVersion::Any, vec![old], &Default::default()).await?;
//!
//! let report = check_category::<UserEvent, _>(&store, "user").await?;
//! assert_eq!((report.checked, report.undecodable.len()), (1, 1));
//! assert_eq!(report.undecodable[0].field.as_deref(), Some("surname"));
//! println!("{report}"); // a summary, then one line per entry
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{DecodeError, StoreError};
use crate::event::{stored_version, Event};
use crate::store::{EventStore, Position};

/// How many entries the check reads per round trip.
const PAGE: usize = 1_000;

/// A stored entry the current code cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodableEntry {
    /// Where the backend keeps it (the Redis stream key).
    pub location: String,
    /// Its id there (its position).
    pub entry: String,
    /// Its stored event type.
    pub event_type: String,
    /// The event version it was written with (`None` when its `event_version` field is
    /// itself unreadable).
    pub version: Option<u32>,
    /// The field at fault, if one is (`None` for an unknown event type).
    pub field: Option<String>,
    /// What is wrong.
    pub error: String,
}

/// What [`check_category`] found in one category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeReport {
    /// The category.
    pub category: String,
    /// How many entries were read.
    pub checked: u64,
    /// Per stored event type: how many entries, and how many of them do not decode.
    pub by_type: BTreeMap<String, TypeCount>,
    /// Every entry that does not decode, in each partition's order.
    pub undecodable: Vec<UndecodableEntry>,
}

/// Entries of one stored event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeCount {
    /// How many were read.
    pub entries: u64,
    /// How many of them do not decode.
    pub undecodable: u64,
}

impl DecodeReport {
    /// Whether the current code decodes every entry.
    pub fn is_clean(&self) -> bool {
        self.undecodable.is_empty()
    }
}

impl fmt::Display for DecodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "category `{}`: {} entries checked, {} undecodable",
            self.category,
            self.checked,
            self.undecodable.len()
        )?;
        for (event_type, count) in &self.by_type {
            writeln!(
                f,
                "  type {event_type}: {} entries, {} undecodable",
                count.entries, count.undecodable
            )?;
        }
        for entry in &self.undecodable {
            let version = entry.version.map_or_else(
                || "unreadable version".to_owned(),
                |v| format!("version {v}"),
            );
            writeln!(
                f,
                "  {} of `{}` ({}, {version}): {}",
                entry.entry, entry.location, entry.event_type, entry.error
            )?;
        }
        Ok(())
    }
}

/// Reads every entry of `category` (each partition, in pages) and decodes it as `E`, the
/// event enum of the code about to be deployed; reports each entry it cannot decode (an
/// unknown event type, a missing or malformed field) with its location, id, type and
/// field, and counts per type. It reads only; run it against a copy of production data or
/// the live store before deploying a change to events. Entries of older event versions are
/// decoded the way every read decodes them: as their own version, then upcast.
pub async fn check_category<E: Event, S: EventStore + ?Sized>(
    store: &S,
    category: &str,
) -> Result<DecodeReport, StoreError> {
    let mut report = DecodeReport {
        category: category.to_owned(),
        ..DecodeReport::default()
    };
    for partition in 0..store.partitions(category) {
        let mut after = Position::ZERO;
        loop {
            let page = store
                .read_partition(category, partition, after, PAGE)
                .await?;
            let read = page.len();
            for stored in page {
                after = stored.position;
                report.checked += 1;
                let event_type = stored.event_type.clone();
                let version = stored_version(&stored.event).ok();
                let count = report.by_type.entry(event_type.clone()).or_default();
                count.entries += 1;
                // A deletion marker is the store's, not one of `E`'s events.
                let decoded = if stored.event_type == crate::deletion::STREAM_DELETED {
                    stored
                        .decode::<crate::deletion::StreamDeleted>()
                        .map(|_| ())
                } else {
                    stored.decode::<E>().map(|_| ())
                };
                match decoded {
                    Ok(()) => {}
                    Err(StoreError::Decode {
                        location,
                        entry,
                        source,
                    }) => {
                        count.undecodable += 1;
                        report.undecodable.push(UndecodableEntry {
                            location,
                            entry,
                            event_type,
                            version,
                            field: field_of(&source),
                            error: source.to_string(),
                        });
                    }
                    Err(other) => return Err(other),
                }
            }
            if read < PAGE {
                break;
            }
        }
    }
    Ok(report)
}

fn field_of(error: &DecodeError) -> Option<String> {
    error.field_name().map(str::to_owned)
}
