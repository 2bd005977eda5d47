//! Personal data in an immutable log: crypto-shredding declared on the type.
//!
//! Mark an event field `#[event(personal)]` (an aggregate's snapshot field
//! `#[aggregate(personal)]`) and it is stored encrypted with its *data subject*'s key: the
//! aggregate id, or the event's `#[event(subject)]` field. [`Shredded`] is the store that
//! does it, around any backend, with the keys in a [`KeyStore`]. Erasing a subject
//! ([`Shredded::erase_subject`]) deletes its key: from then on every read path (loads,
//! time travel, category reads, projections, rebuilds, the pre-deploy check) yields its
//! personal fields as erased (their `Default`, or [`Personal::Erased`]) and never a decode
//! error, while the rest of each event and the log stay as they are. The erasure is
//! recorded as a [`SubjectErased`] event in category [`ERASURES`], with who and why in its
//! metadata, so projections can drop the subject's rows.

mod crypto;
mod keys;
mod shredded;

pub use crypto::{
    open_fields, seal_fields, OpenError, SealError, SubjectKey, ERASED, SEALED, TO_SEAL,
};
pub use keys::{InMemoryKeys, KeyStore};
pub use shredded::{Shredded, ShreddedSource, WRITING_KEY_TTL};

use crate::codec::{FieldError, FieldValue, Fields};
use crate::error::{DecodeError, EncodeError};
use crate::event::{Event, NamedEvent};

/// The envelope field that names an event's data subject when it is not the aggregate id:
/// written by `#[derive(Event)]` for an event with an `#[event(subject)]` field and
/// personal fields. An event field may not use the name.
pub const SUBJECT_FIELD: &str = "personal_subject";

/// The category where erasures are recorded: one stream per subject, of [`SubjectErased`]
/// events.
pub const ERASURES: &str = "personal_data";

/// A personal field's value, or the marker that it was erased: the type to give a personal
/// field whose erasure the code must tell from a real value (a plain `T` decodes as
/// `T::default()` once erased).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Personal<T> {
    /// The value.
    Known(T),
    /// Erased: its subject's key is gone.
    #[default]
    Erased,
}

impl<T> Personal<T> {
    /// The value, unless erased.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(value) => Some(value),
            Personal::Erased => None,
        }
    }

    /// Whether it was erased.
    pub fn is_erased(&self) -> bool {
        matches!(self, Personal::Erased)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Personal::Known(value)
    }
}

/// Stored as `T` is; an erased value as the erased marker.
impl<T: FieldValue> FieldValue for Personal<T> {
    fn encode_value(&self) -> Option<Vec<u8>> {
        match self {
            Personal::Known(value) => value.encode_value(),
            Personal::Erased => Some(ERASED.to_vec()),
        }
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        match raw {
            Some(ERASED) => Ok(Personal::Erased),
            raw => T::decode_value(raw).map(Personal::Known),
        }
    }
}

/// The record of an erasure: subject `subject`'s key was deleted. Appended to stream
/// `subject` of category [`ERASURES`], with the erasure's metadata (who, why); add it to a
/// projection's event enum, and [`ERASURES`] to its categories, to drop the subject's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectErased {
    /// The erased subject.
    pub subject: String,
}

impl NamedEvent for SubjectErased {
    const NAME: &'static str = "SubjectErased";
}

impl Event for SubjectErased {
    const EVENT_TYPES: &'static [&'static str] = &["SubjectErased"];

    fn event_type(&self) -> &'static str {
        "SubjectErased"
    }

    fn encode(&self, out: &mut Fields) -> Result<(), EncodeError> {
        out.push("subject", self.subject.as_bytes());
        Ok(())
    }

    fn decode(event_type: &str, fields: &Fields) -> Result<Self, DecodeError> {
        let subject = String::decode_value(fields.get("subject"))
            .map_err(|error| DecodeError::field(event_type, "subject", error))?;
        Ok(SubjectErased { subject })
    }
}

/// How `#[derive(Event)]` and `#[derive(Aggregate)]` encode a personal field: its plain
/// bytes, marked to be sealed by the store.
#[doc(hidden)]
pub fn to_seal_value(plain: Vec<u8>) -> Vec<u8> {
    crypto::to_seal(plain)
}

/// How `#[derive(Event)]` and `#[derive(Aggregate)]` decode a personal field: its stored
/// bytes with `decode` (the type's codec), sealed or not (written before the field became
/// personal), or `erased()` once its subject is erased.
#[doc(hidden)]
pub fn decode_personal<T>(
    raw: Option<&[u8]>,
    decode: fn(Option<&[u8]>) -> Result<T, FieldError>,
    erased: fn() -> T,
) -> Result<T, FieldError> {
    match raw {
        Some(ERASED) => Ok(erased()),
        Some(raw) if raw.starts_with(TO_SEAL) => decode(Some(&raw[TO_SEAL.len()..])),
        Some(raw) if raw.starts_with(SEALED) => Err(FieldError::Invalid(
            "an encrypted personal value: read it through a store that holds the subjects' keys (es_core::personal::Shredded)".to_owned(),
        )),
        raw => decode(raw),
    }
}
