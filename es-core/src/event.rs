//! Events: [`Event`] (an event type or an enum of them) and [`NamedEvent`] (one event type).

use crate::codec::{FieldError, Fields};
use crate::error::{DecodeError, EncodeError};

/// Field names every backend may use in a stored event's envelope; an event field may not
/// use them (`#[derive(Event)]` rejects them at compile time).
pub const RESERVED_EVENT_FIELDS: &[&str] = &[
    "type",
    "aggregate_id",
    "version",
    "timestamp",
    "correlation_id",
    "causation_id",
    "metadata",
];

/// The envelope field that holds an entry's event version: written only when the version is
/// above 1 (`#[event(version = N)]`), so entries of a first version look as they always did.
/// An event field may not use the name (`#[derive(Event)]` rejects it).
pub const EVENT_VERSION_FIELD: &str = "event_version";

/// The event version an entry was written with: its [`EVENT_VERSION_FIELD`], or 1 when it
/// has none. A value that is not a whole number from 1 up is an error.
pub fn stored_version(fields: &Fields) -> Result<u32, FieldError> {
    match fields.get(EVENT_VERSION_FIELD) {
        None => Ok(1),
        Some(raw) => std::str::from_utf8(raw)
            .ok()
            .and_then(|text| text.parse::<u32>().ok())
            .filter(|&version| version >= 1)
            .ok_or_else(|| FieldError::invalid("an event version (1 or more)", raw)),
    }
}

/// A domain event, or an enum of events, stored as an event type plus field pairs.
///
/// Derive it: on a struct with named fields (or a unit struct) it defines one event type; on
/// an enum whose variants each hold one event struct it defines the set of events an
/// aggregate accepts, and generates `From` for each variant and the dispatch to the
/// aggregate's [`Apply`] impls.
///
/// ```
/// use es_core::Event;
///
/// #[derive(Event, Debug, PartialEq)]
/// struct Registered { name: String, surname: String }
///
/// #[derive(Event, Debug, PartialEq)]
/// #[event(rename = "EmailChanged")]
/// struct EmailUpdated { email: String }
///
/// #[derive(Event, Debug, PartialEq)]
/// enum UserEvent { Registered(Registered), EmailUpdated(EmailUpdated) }
///
/// let event = UserEvent::from(EmailUpdated { email: "duffy@acme.test".into() });
/// assert_eq!(event.event_type(), "EmailChanged");
/// let mut fields = es_core::codec::Fields::new();
/// event.encode(&mut fields).unwrap();
/// assert_eq!(UserEvent::decode("EmailChanged", &fields).unwrap(), event);
/// ```
///
/// Entries stored by older code still decode: `#[event(default)]` or
/// `#[event(default = expr)]` on a field added later gives it a value when it is absent, and
/// `#[event(alias = "OldName")]` on a renamed struct reads entries stored under its old
/// name (listed in [`EVENT_ALIASES`](Event::EVENT_ALIASES); new entries get the current name).
///
/// ```
/// use es_core::{codec::Fields, Event};
///
/// #[derive(Event, Debug, PartialEq)]
/// #[event(alias = "SignedUp")]
/// struct Registered { name: String, #[event(default = 18)] age: u32 }
///
/// let mut stored = Fields::new();
/// stored.push("name", "Duffy");
/// let event = Registered::decode("SignedUp", &stored).unwrap();
/// assert_eq!(event, Registered { name: "Duffy".into(), age: 18 });
/// assert_eq!(event.event_type(), "Registered");
/// ```
///
/// A changed shape is a new version: `#[event(version = 2, upcast_from = RegisteredV1)]`
/// with `impl From<RegisteredV1> for Registered`, the old struct kept as a plain
/// `#[derive(Event)]` under the stored name. New entries carry
/// [`EVENT_VERSION_FIELD`] when their version is above 1; `decode` reads an entry as the
/// version it was written with and converts it up the chain, one `From` at a time.
///
/// ```
/// use es_core::{codec::Fields, Event};
///
/// #[derive(Event)]
/// #[event(rename = "Registered")]
/// struct RegisteredV1 { name: String }
///
/// #[derive(Event, Debug, PartialEq)]
/// #[event(version = 2, upcast_from = RegisteredV1)]
/// struct Registered { first_name: String, last_name: String }
///
/// impl From<RegisteredV1> for Registered {
///     fn from(old: RegisteredV1) -> Self {
///         let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
///         Registered { first_name: first.into(), last_name: last.into() }
///     }
/// }
///
/// let mut v1 = Fields::new();
/// v1.push("name", "Duffy Duck");
/// let event = Registered::decode("Registered", &v1).unwrap();
/// assert_eq!(event, Registered { first_name: "Duffy".into(), last_name: "Duck".into() });
///
/// let mut v2 = Fields::new();
/// event.encode(&mut v2).unwrap();
/// assert_eq!(v2.get("event_version"), Some(&b"2"[..]));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "expected a type that derives `Event`",
    note = "derive `Event` on a struct with named fields and use it as the variant's type"
)]
pub trait Event: Sized + Send + Sync + 'static {
    /// Every event type this type can hold: the names new events are stored under.
    const EVENT_TYPES: &'static [&'static str];

    /// Older names of those event types (`#[event(alias = "OldName")]`): entries stored
    /// under them still decode, into the event that now has another name. Nothing is
    /// written under an alias. Empty unless an event struct declares one.
    const EVENT_ALIASES: &'static [&'static str] = &[];

    /// Whether [`decode`](Event::decode) accepts entries stored as `event_type`: one of
    /// [`EVENT_TYPES`](Event::EVENT_TYPES) or [`EVENT_ALIASES`](Event::EVENT_ALIASES).
    fn reads_type(event_type: &str) -> bool {
        Self::EVENT_TYPES.contains(&event_type) || Self::EVENT_ALIASES.contains(&event_type)
    }

    /// The event type of this value (stored as the `type` field).
    fn event_type(&self) -> &'static str;

    /// Appends the event's fields to `out`.
    fn encode(&self, out: &mut Fields) -> Result<(), EncodeError>;

    /// Decodes an event of type `event_type` from its stored fields.
    fn decode(event_type: &str, fields: &Fields) -> Result<Self, DecodeError>;
}

/// One event type: what `#[derive(Event)]` on a struct implements. An event enum's variants
/// hold `NamedEvent`s.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event struct",
    label = "expected a struct that derives `Event`",
    note = "an event enum's variants each hold one event struct, and `upcast_from` names one: derive `Event` on a struct with named fields and use it here"
)]
pub trait NamedEvent: Event {
    /// The stored event type.
    const NAME: &'static str;

    /// Older names entries of this type may be stored under (`#[event(alias = "...")]`).
    const ALIASES: &'static [&'static str] = &[];

    /// The version new entries are written with (`#[event(version = N)]`); 1 unless the
    /// struct declares another. Entries of older versions decode as the struct named by
    /// `upcast_from` and are converted with `From`, one version at a time.
    const VERSION: u32 = 1;
}

/// How an aggregate changes when an event happens. Implement it once per event type the
/// aggregate's event enum holds; a missing impl is a compile error naming the event.
#[diagnostic::on_unimplemented(
    message = "aggregate `{Self}` does not handle event `{E}`",
    label = "`{E}` is one of the aggregate's events",
    note = "add `impl es_core::Apply<{E}> for {Self} {{ fn apply(&mut self, event: &{E}) {{ … }} }}`"
)]
pub trait Apply<E> {
    /// Folds `event` into the state.
    fn apply(&mut self, event: &E);
}

/// Dispatch of an event to an aggregate's [`Apply`] impls; generated by `#[derive(Event)]`
/// (for an enum: one bound per variant, so a missing `Apply` impl is reported by name).
pub trait ApplyTo<A: ?Sized> {
    /// Applies the held event to `aggregate`.
    fn apply_to(&self, aggregate: &mut A);
}
