//! The field codec: events and snapshots as ordered field/value pairs.
//!
//! An event is stored as a flat list of `field value` pairs that read naturally in
//! `redis-cli` (`type Registered name Duffy surname Duck`). Strings are stored raw,
//! numbers and booleans as decimal text, an `Option` that is `None` as an absent field,
//! and any other type either through its own [`FieldValue`] impl or, opted in per field
//! with `#[event(json)]`, as JSON through [`JsonField`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A field name: `'static` when it comes from a derive, owned when it was read from storage.
pub type FieldName = Cow<'static, str>;

/// Ordered field/value pairs: the stored form of one event or one snapshot.
///
/// Values are bytes because Redis values are binary-safe; a `String` field decodes only
/// from valid UTF-8 and reports anything else as a [`FieldError::Invalid`].
///
/// ```
/// use es_core::codec::Fields;
/// let mut fields = Fields::new();
/// fields.push("name", "Duffy");
/// fields.push("surname", "Duck");
/// assert_eq!(fields.get("surname"), Some(&b"Duck"[..]));
/// assert_eq!(fields.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pairs: Vec<(FieldName, Vec<u8>)>,
}

impl Fields {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `capacity` pairs.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            pairs: Vec::with_capacity(capacity),
        }
    }

    /// Appends a pair. Order is kept; names are not deduplicated (the first one wins on [`get`](Self::get)).
    pub fn push(&mut self, name: impl Into<FieldName>, value: impl Into<Vec<u8>>) {
        self.pairs.push((name.into(), value.into()));
    }

    /// The value of the first pair named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> {
        self.pairs.iter().map(|(n, v)| (n.as_ref(), v.as_slice()))
    }

    /// Consumes the list into its pairs.
    pub fn into_pairs(self) -> Vec<(FieldName, Vec<u8>)> {
        self.pairs
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.pairs
                    .iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

impl<N: Into<FieldName>, V: Into<Vec<u8>>> FromIterator<(N, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self {
            pairs: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}

impl<N: Into<FieldName>, V: Into<Vec<u8>>> Extend<(N, V)> for Fields {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        self.pairs
            .extend(iter.into_iter().map(|(n, v)| (n.into(), v.into())));
    }
}

impl IntoIterator for Fields {
    type Item = (FieldName, Vec<u8>);
    type IntoIter = std::vec::IntoIter<(FieldName, Vec<u8>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.pairs.into_iter()
    }
}

/// What was wrong with one field's stored value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The field is required but was not stored.
    #[error("missing")]
    Missing,
    /// The field was stored but its value could not be decoded.
    #[error("{0}")]
    Invalid(String),
}

impl FieldError {
    /// An [`Invalid`](FieldError::Invalid) error for `raw`, saying what was expected.
    pub fn invalid(expected: &str, raw: &[u8]) -> Self {
        const SHOWN: usize = 64;
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(SHOWN)]);
        let more = if raw.len() > SHOWN { "…" } else { "" };
        FieldError::Invalid(format!("expected {expected}, found {shown:?}{more}"))
    }
}

/// A type that can be stored as the value of one field.
///
/// `encode_value` returns `None` for "store no field" (as `Option::None` does);
/// `decode_value` receives `None` when the field is absent.
///
/// Implement it for your own small types (ids, enums, money) to store them readably:
///
/// ```
/// use es_core::codec::{FieldError, FieldValue};
///
/// struct Cents(i64);
///
/// impl FieldValue for Cents {
///     fn encode_value(&self) -> Option<Vec<u8>> {
///         self.0.encode_value()
///     }
///     fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
///         i64::decode_value(raw).map(Cents)
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored as an event or snapshot field",
    label = "this field's type has no field codec",
    note = "implement `es_core::codec::FieldValue` for `{Self}`, or mark the field `#[event(json)]` / `#[aggregate(json)]` to store it as JSON"
)]
pub trait FieldValue: Sized {
    /// The stored bytes, or `None` to store no field.
    fn encode_value(&self) -> Option<Vec<u8>>;
    /// Decodes the stored bytes (`None`: the field is absent).
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError>;
}

fn present(raw: Option<&[u8]>) -> Result<&[u8], FieldError> {
    raw.ok_or(FieldError::Missing)
}

fn utf8<'a>(raw: &'a [u8], expected: &str) -> Result<&'a str, FieldError> {
    std::str::from_utf8(raw).map_err(|_| FieldError::invalid(expected, raw))
}

impl FieldValue for String {
    fn encode_value(&self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        let raw = present(raw)?;
        utf8(raw, "UTF-8 text").map(str::to_owned)
    }
}

impl FieldValue for Box<str> {
    fn encode_value(&self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        String::decode_value(raw).map(String::into_boxed_str)
    }
}

impl FieldValue for Arc<str> {
    fn encode_value(&self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        String::decode_value(raw).map(Arc::from)
    }
}

/// Raw bytes, stored as they are.
impl FieldValue for Vec<u8> {
    fn encode_value(&self) -> Option<Vec<u8>> {
        Some(self.clone())
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        present(raw).map(<[u8]>::to_vec)
    }
}

impl FieldValue for char {
    fn encode_value(&self) -> Option<Vec<u8>> {
        Some(self.to_string().into_bytes())
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        let raw = present(raw)?;
        let text = utf8(raw, "one character")?;
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(FieldError::invalid("one character", raw)),
        }
    }
}

/// `true` / `false` (decoding also accepts `1` / `0`).
impl FieldValue for bool {
    fn encode_value(&self) -> Option<Vec<u8>> {
        Some(if *self {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        })
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        match present(raw)? {
            b"true" | b"1" => Ok(true),
            b"false" | b"0" => Ok(false),
            other => Err(FieldError::invalid("`true` or `false`", other)),
        }
    }
}

macro_rules! decimal_field_values {
    ($($ty:ty => $expected:literal),* $(,)?) => {$(
        impl FieldValue for $ty {
            fn encode_value(&self) -> Option<Vec<u8>> {
                Some(self.to_string().into_bytes())
            }
            fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
                let raw = present(raw)?;
                utf8(raw, $expected)?
                    .parse()
                    .map_err(|_| FieldError::invalid($expected, raw))
            }
        }
    )*};
}

decimal_field_values! {
    i8 => "an integer in i8 range", i16 => "an integer in i16 range",
    i32 => "an integer in i32 range", i64 => "an integer in i64 range",
    i128 => "an integer in i128 range", isize => "an integer in isize range",
    u8 => "an integer in u8 range", u16 => "an integer in u16 range",
    u32 => "an integer in u32 range", u64 => "an integer in u64 range",
    u128 => "an integer in u128 range", usize => "an integer in usize range",
    // `to_string` of a float is the shortest text that parses back to the same value.
    f32 => "a decimal number", f64 => "a decimal number",
}

/// `None` is stored as an absent field.
impl<T: FieldValue> FieldValue for Option<T> {
    fn encode_value(&self) -> Option<Vec<u8>> {
        self.as_ref().and_then(T::encode_value)
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        match raw {
            None => Ok(None),
            some => T::decode_value(some).map(Some),
        }
    }
}

impl<T: FieldValue> FieldValue for Box<T> {
    fn encode_value(&self) -> Option<Vec<u8>> {
        (**self).encode_value()
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        T::decode_value(raw).map(Box::new)
    }
}

/// Milliseconds since the Unix epoch, as decimal text (negative before it). Sub-millisecond
/// precision is not stored.
impl FieldValue for std::time::SystemTime {
    fn encode_value(&self) -> Option<Vec<u8>> {
        let millis = match self.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => after.as_millis() as i128,
            Err(before) => -(before.duration().as_millis() as i128),
        };
        millis.encode_value()
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        let millis = i128::decode_value(raw)?;
        let out_of_range = || FieldError::Invalid(format!("timestamp {millis} ms is out of range"));
        let magnitude = u64::try_from(millis.unsigned_abs()).map_err(|_| out_of_range())?;
        let magnitude = std::time::Duration::from_millis(magnitude);
        let time = if millis >= 0 {
            std::time::UNIX_EPOCH.checked_add(magnitude)
        } else {
            std::time::UNIX_EPOCH.checked_sub(magnitude)
        };
        time.ok_or_else(out_of_range)
    }
}

/// Milliseconds, as decimal text. Sub-millisecond precision is not stored.
impl FieldValue for std::time::Duration {
    fn encode_value(&self) -> Option<Vec<u8>> {
        self.as_millis().encode_value()
    }
    fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
        let millis = u128::decode_value(raw)?;
        let seconds = u64::try_from(millis / 1000)
            .map_err(|_| FieldError::Invalid(format!("duration {millis} ms is out of range")))?;
        Ok(std::time::Duration::from_secs(seconds)
            + std::time::Duration::from_millis((millis % 1000) as u64))
    }
}

macro_rules! text_field_values {
    ($($ty:ty => $expected:literal),* $(,)?) => {$(
        impl FieldValue for $ty {
            fn encode_value(&self) -> Option<Vec<u8>> {
                Some(self.to_string().into_bytes())
            }
            fn decode_value(raw: Option<&[u8]>) -> Result<Self, FieldError> {
                let raw = present(raw)?;
                utf8(raw, $expected)?
                    .parse()
                    .map_err(|_| FieldError::invalid($expected, raw))
            }
        }
    )*};
}

text_field_values! {
    std::net::IpAddr => "an IP address",
    std::net::Ipv4Addr => "an IPv4 address",
    std::net::Ipv6Addr => "an IPv6 address",
    std::net::SocketAddr => "a socket address",
    std::num::NonZeroU64 => "a non-zero integer in u64 range",
    std::num::NonZeroU32 => "a non-zero integer in u32 range",
}

/// The JSON codec for fields marked `#[event(json)]` or `#[aggregate(json)]`:
/// any `serde` type, stored as compact JSON text.
///
/// ```
/// use es_core::codec::JsonField;
/// let raw = JsonField::encode(&vec![1, 2, 3]).unwrap().unwrap();
/// assert_eq!(raw, b"[1,2,3]");
/// let back: Vec<i32> = JsonField::decode(Some(&raw)).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
pub struct JsonField;

impl JsonField {
    /// Encodes `value` as JSON; `Ok(None)` (an absent field) for a value that is JSON `null`,
    /// so an `Option` marked json stores `None` the same way the plain codec does.
    pub fn encode<T: serde::Serialize>(value: &T) -> Result<Option<Vec<u8>>, FieldError> {
        match serde_json::to_vec(value) {
            Ok(bytes) if bytes == b"null" => Ok(None),
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) => Err(FieldError::Invalid(format!(
                "cannot be written as JSON: {e}"
            ))),
        }
    }

    /// Decodes JSON text; an absent field decodes as JSON `null` (so `Option` fields read `None`).
    pub fn decode<T: serde::de::DeserializeOwned>(raw: Option<&[u8]>) -> Result<T, FieldError> {
        match raw {
            Some(raw) => serde_json::from_slice(raw)
                .map_err(|e| FieldError::Invalid(format!("invalid JSON: {e}"))),
            None => serde_json::from_slice(b"null").map_err(|_| FieldError::Missing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: FieldValue + PartialEq + std::fmt::Debug>(value: T) {
        let raw = value.encode_value();
        assert_eq!(T::decode_value(raw.as_deref()).as_ref(), Ok(&value));
    }

    #[test]
    fn numbers_and_bools_are_decimal_text() {
        assert_eq!(42u64.encode_value().as_deref(), Some(&b"42"[..]));
        assert_eq!((-7i32).encode_value().as_deref(), Some(&b"-7"[..]));
        assert_eq!(1.5f64.encode_value().as_deref(), Some(&b"1.5"[..]));
        assert_eq!(true.encode_value().as_deref(), Some(&b"true"[..]));
        assert_eq!(bool::decode_value(Some(b"0")), Ok(false));
    }

    #[test]
    fn none_is_an_absent_field() {
        assert_eq!(Option::<String>::None.encode_value(), None);
        assert_eq!(Option::<u8>::decode_value(None), Ok(None));
        assert_eq!(Option::<u8>::decode_value(Some(b"3")), Ok(Some(3)));
        assert_eq!(
            Option::<u8>::decode_value(Some(b"300")),
            Err(FieldError::invalid("an integer in u8 range", b"300"))
        );
    }

    #[test]
    fn missing_and_invalid_fields_are_typed_errors() {
        assert_eq!(String::decode_value(None), Err(FieldError::Missing));
        assert!(matches!(
            String::decode_value(Some(&[0xff, 0xfe])),
            Err(FieldError::Invalid(_))
        ));
        let error = u32::decode_value(Some(b"12x")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "expected an integer in u32 range, found \"12x\""
        );
        assert!(matches!(
            char::decode_value(Some(b"ab")),
            Err(FieldError::Invalid(_))
        ));
    }

    #[test]
    fn long_invalid_values_are_shortened_in_errors() {
        let raw = vec![b'x'; 10_000];
        let message = u8::decode_value(Some(&raw)).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn small_std_types_round_trip() {
        round_trip('🦆');
        round_trip(std::time::Duration::from_millis(1500));
        let longest =
            std::time::Duration::from_secs(u64::MAX) + std::time::Duration::from_millis(999);
        round_trip(longest);
        assert!(std::time::SystemTime::decode_value(Some(b"99999999999999999999999")).is_err());
        round_trip(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123));
        round_trip("127.0.0.1".parse::<std::net::IpAddr>().unwrap());
        round_trip(Box::<str>::from("boxed"));
        round_trip(Arc::<str>::from("shared"));
        round_trip(vec![0u8, 255, 10, 13]);
        round_trip(f64::INFINITY);
        round_trip(u128::MAX);
    }

    #[test]
    fn json_fields_round_trip_and_report_errors() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Address {
            city: String,
        }
        let raw = JsonField::encode(&Address {
            city: "Acme".into(),
        })
        .unwrap();
        assert_eq!(raw.as_deref(), Some(&br#"{"city":"Acme"}"#[..]));
        let back: Address = JsonField::decode(raw.as_deref()).unwrap();
        assert_eq!(back.city, "Acme");
        assert_eq!(JsonField::encode(&Option::<u8>::None), Ok(None));
        assert_eq!(JsonField::decode::<Option<u8>>(None), Ok(None));
        assert!(matches!(
            JsonField::decode::<Address>(Some(b"{")),
            Err(FieldError::Invalid(_))
        ));
        assert!(JsonField::decode::<Address>(None).is_err());
        let bad_map: std::collections::HashMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        assert!(JsonField::encode(&bad_map).is_err());
    }

    proptest! {
        #[test]
        fn strings_round_trip(s in any::<String>()) { round_trip(s); }

        #[test]
        fn integers_round_trip(a in any::<i64>(), b in any::<u64>(), c in any::<i128>(), d in any::<u8>()) {
            round_trip(a); round_trip(b); round_trip(c); round_trip(d);
        }

        #[test]
        fn floats_round_trip_exactly(x in any::<f64>().prop_filter("NaN is not equal to itself", |x| !x.is_nan()), y in any::<f32>().prop_filter("NaN", |y| !y.is_nan())) {
            round_trip(x); round_trip(y);
        }

        #[test]
        fn optional_values_round_trip(v in proptest::option::of(any::<i32>())) { round_trip(v); }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(raw in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let raw = raw.as_deref();
            let _ = String::decode_value(raw);
            let _ = bool::decode_value(raw);
            let _ = i64::decode_value(raw);
            let _ = u8::decode_value(raw);
            let _ = f64::decode_value(raw);
            let _ = char::decode_value(raw);
            let _ = std::time::SystemTime::decode_value(raw);
            let _ = std::time::Duration::decode_value(raw);
            let _ = std::net::IpAddr::decode_value(raw);
            let _ = JsonField::decode::<serde_json::Value>(raw);
        }
    }
}
