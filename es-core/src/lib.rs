#![doc = include_str!("../README.md")]

// Lets this crate use its own derives, whose code names `::es_core`.
extern crate self as es_core;

pub mod aggregate;
pub mod cache;
pub mod codec;
pub mod deletion;
pub mod error;
pub mod event;
pub mod evolution;
pub mod group_commit;
pub mod memory;
pub mod personal;
pub mod position;
pub mod projection;
pub mod read_model;
pub mod repository;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::{Aggregate, Changes, Handle};
pub use cache::{CacheConfig, CacheStats};
pub use error::{ConflictError, DecodeError, EncodeError, StoreError};
pub use event::{Apply, ApplyTo, Event, NamedEvent};
pub use memory::InMemoryStore;
pub use repository::{AsOf, Executed, Loaded, Repository, RepositoryError, SnapshotPolicy};
pub use store::{
    AggregateIds, AppendOptions, AppendResult, CategoryInfo, EventStore, ExpectedVersion, Metadata,
    NewEvent, Position, ReadRange, RecordedEvent, Snapshot, SnapshotStore, StoredEvent, StreamId,
};

/// `#[derive(Event)]`: see [`Event`](trait@Event).
#[cfg(feature = "derive")]
pub use es_derive::Event;

/// `#[derive(Aggregate)]`: see [`Aggregate`](trait@Aggregate).
#[cfg(feature = "derive")]
pub use es_derive::Aggregate;

/// Support for generated code. Not public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::{FieldValue, Fields, JsonField};
    pub use crate::error::{DecodeError, EncodeError};
    pub use ::core;
    pub use ::std::vec::Vec;

    /// Wraps an aggregate for `Aggregate::try_clone`'s generated body.
    pub struct CloneProbe<'a, T>(pub &'a T);

    /// Chosen for aggregates that implement `Clone` (the impl is on `&CloneProbe`, which
    /// method resolution tries first).
    pub trait CloneIfClone<T> {
        /// A clone.
        fn __es_try_clone(&self) -> ::core::option::Option<T>;
    }

    impl<T: Clone> CloneIfClone<T> for &CloneProbe<'_, T> {
        fn __es_try_clone(&self) -> ::core::option::Option<T> {
            ::core::option::Option::Some(self.0.clone())
        }
    }

    /// Chosen for the others.
    pub trait NoClone<T> {
        /// No clone.
        fn __es_try_clone(&self) -> ::core::option::Option<T>;
    }

    impl<T> NoClone<T> for CloneProbe<'_, T> {
        fn __es_try_clone(&self) -> ::core::option::Option<T> {
            ::core::option::Option::None
        }
    }

    /// `Default`, for an aggregate: the derive checks it at the aggregate's name (through
    /// [`RequireDefault`]), so a missing `Default` says why an aggregate needs one.
    #[diagnostic::on_unimplemented(
        message = "aggregate `{Self}` does not implement `Default`",
        label = "an aggregate needs `Default`: it is the state before the first event",
        note = "add `#[derive(Default)]` to `{Self}`, or implement `Default` by hand"
    )]
    pub trait AggregateDefault: Default {}

    // `do_not_recommend`: report `AggregateDefault` (our message), not the `Default` bound.
    #[diagnostic::do_not_recommend]
    impl<T: Default> AggregateDefault for T {}

    /// A type that is well-formed only when `T` is [`AggregateDefault`].
    pub struct RequireDefault<T: AggregateDefault>(::core::marker::PhantomData<T>);

    /// The value of an `#[aggregate(skip)]` field when a snapshot is decoded: its `Default`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` has no `Default` value for an `#[aggregate(skip)]` field",
        label = "a skipped field is not stored: loading a snapshot sets it to `Default::default()`",
        note = "implement `Default` for `{Self}`, make the field an `Option<{Self}>`, or store it: remove `#[aggregate(skip)]`"
    )]
    pub trait SkippedField: Sized {
        /// `Default::default()`.
        fn skipped_value() -> Self;
    }

    #[diagnostic::do_not_recommend]
    impl<T: Default> SkippedField for T {
        fn skipped_value() -> Self {
            T::default()
        }
    }

    /// What an erased personal field decodes as: its `Default`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` has no `Default` value for a personal field",
        label = "a personal field needs `Default`: once its subject is erased, it decodes as that",
        note = "implement `Default` for `{Self}`, or use `es_core::personal::Personal<{Self}>`, whose default is `Personal::Erased`"
    )]
    pub trait PersonalField: Sized {
        /// `Default::default()`.
        fn erased_value() -> Self;
    }

    #[diagnostic::do_not_recommend]
    impl<T: Default> PersonalField for T {
        fn erased_value() -> Self {
            T::default()
        }
    }

    pub use crate::personal::{decode_personal, to_seal_value, SUBJECT_FIELD};

    /// The value of an `#[event(default)]` field stored before the field existed.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` has no `Default` value for an `#[event(default)]` field",
        label = "an entry stored before this field existed decodes it as `Default::default()`",
        note = "implement `Default` for `{Self}`, or give the value: `#[event(default = expr)]`"
    )]
    pub trait DefaultField: Sized {
        /// `Default::default()`.
        fn default_value() -> Self;
    }

    #[diagnostic::do_not_recommend]
    impl<T: Default> DefaultField for T {
        fn default_value() -> Self {
            T::default()
        }
    }

    /// The version an entry of `event_type` was written with (absent: 1).
    pub fn version_of(event_type: &str, fields: &Fields) -> Result<u32, DecodeError> {
        crate::event::stored_version(fields).map_err(|error| {
            DecodeError::field(event_type, crate::event::EVENT_VERSION_FIELD, error)
        })
    }

    /// An entry written by a newer version of the code than this one reads.
    pub fn newer_version(event_type: &str, stored: u32, current: u32) -> DecodeError {
        DecodeError::field(
            event_type,
            crate::event::EVENT_VERSION_FIELD,
            crate::codec::FieldError::Invalid(format!(
                "{stored}, newer than this code reads (versions 1 to {current}); help: the entry was written by newer code: deploy it wherever this event is read"
            )),
        )
    }

    /// Records version `version` in an encoded event, when it is above 1.
    pub fn push_version(out: &mut Fields, version: u32) {
        if version > 1 {
            out.push(crate::event::EVENT_VERSION_FIELD, version.to_string());
        }
    }

    /// Decodes an entry of a version before `E`'s through `E` (the struct `upcast_from`
    /// names), which may upcast it further.
    pub fn decode_older<E: crate::event::NamedEvent>(
        event_type: &str,
        fields: &Fields,
    ) -> Result<E, DecodeError> {
        E::decode(event_type, fields)
    }

    /// One step of an upcast chain: `Self` built from the version before it.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be upcast from `{Old}`: `From<{Old}>` is not implemented for `{Self}`",
        label = "`upcast_from` needs `impl From<{Old}> for {Self}`",
        note = "entries stored as `{Old}`'s version decode as `{Old}` and are converted with `From`; add `impl From<{Old}> for {Self} {{ fn from(old: {Old}) -> Self {{ … }} }}`"
    )]
    pub trait Upcast<Old>: Sized {
        /// `From::from`.
        fn upcast(old: Old) -> Self;
    }

    #[diagnostic::do_not_recommend]
    impl<Old, New: From<Old>> Upcast<Old> for New {
        fn upcast(old: Old) -> Self {
            New::from(old)
        }
    }

    /// Whether every stored name of the version before (`old`, `old_aliases`) is read by
    /// the struct of name `name` and aliases `aliases`.
    pub const fn names_cover(
        name: &str,
        aliases: &[&str],
        old: &str,
        old_aliases: &[&str],
    ) -> bool {
        if !str_eq(name, old) && !contains(aliases, old) {
            return false;
        }
        let mut i = 0;
        while i < old_aliases.len() {
            if !str_eq(name, old_aliases[i]) && !contains(aliases, old_aliases[i]) {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Every name of `parts`, in order, as one array (an event enum's `EVENT_ALIASES`).
    pub const fn concat_names<const N: usize>(parts: &[&[&'static str]]) -> [&'static str; N] {
        let mut out = [""; N];
        let (mut part, mut n) = (0, 0);
        while part < parts.len() {
            let mut i = 0;
            while i < parts[part].len() {
                out[n] = parts[part][i];
                n += 1;
                i += 1;
            }
            part += 1;
        }
        out
    }

    /// Whether an event type of name `a` and aliases `a_aliases` shares a stored name with
    /// one of name `b` and aliases `b_aliases` (for the duplicate alias check).
    pub const fn names_overlap(a: &str, a_aliases: &[&str], b: &str, b_aliases: &[&str]) -> bool {
        if str_eq(a, b) || contains(a_aliases, b) || contains(b_aliases, a) {
            return true;
        }
        let mut i = 0;
        while i < a_aliases.len() {
            if contains(b_aliases, a_aliases[i]) {
                return true;
            }
            i += 1;
        }
        false
    }

    const fn contains(list: &[&str], name: &str) -> bool {
        let mut i = 0;
        while i < list.len() {
            if str_eq(list[i], name) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// `a == b` in a const context (for the duplicate event type check).
    pub const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Decodes field `name` of `event_type` with the JSON codec.
    pub fn decode_json_field<T: serde::de::DeserializeOwned>(
        event_type: &str,
        fields: &Fields,
        name: &str,
    ) -> Result<T, DecodeError> {
        JsonField::decode(fields.get(name)).map_err(|e| DecodeError::field(event_type, name, e))
    }

    /// Encodes `value` into field `name` with the JSON codec.
    pub fn encode_json_field<T: serde::Serialize>(
        out: &mut Fields,
        event_type: &str,
        name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        if let Some(raw) =
            JsonField::encode(value).map_err(|e| EncodeError::field(event_type, name, e))?
        {
            out.push(name, raw);
        }
        Ok(())
    }

    /// The error for a stored type an event struct does not hold.
    pub fn unknown_event_type(event_type: &str, expected: &[&'static str]) -> DecodeError {
        DecodeError::UnknownEventType {
            event_type: event_type.to_owned(),
            expected: expected.to_vec(),
        }
    }
}
