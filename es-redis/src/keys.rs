//! The key layout: which Redis key holds what, and how categories and aggregate ids are
//! written into key names.
//!
//! For namespace `es`, category `user` and aggregate id `42`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `es:{user}:events` | stream | every `user` event, in category order (the log of record) |
//! | `es:{user}:index:42` | list | element 0: recent append ids; element *v*: the entry id of version *v* |
//! | `es:{user}:snapshot:42` | hash | the snapshot's fields plus `_version`, `_position`, `_schema`, `_fields` |
//! | `es:{user}:dead:profiles` | stream | events of `user` projection `profiles` could not process |
//! | `es:{user}:failures:profiles` | hash | the last handler error of each entry `profiles` will retry |
//! | `es:{rm:profiles}:<name>` | hash | read-model hash `<name>` of projection `profiles` |
//! | `es:{rm:profiles}:_applied:user` | sorted set | entries of `user` whose read-model update is applied |
//!
//! Every key of a category shares the hash tag `{user}`, and every read-model key of a
//! projection the tag `{rm:<projection>}`, so one script may touch all of them on Redis
//! Cluster too.

use es_core::StreamId;

/// Builds the Redis key names of a namespace.
///
/// Categories and aggregate ids are arbitrary text; they are written into keys with
/// [`encode_key_part`], so braces, colons, whitespace, glob characters, empty or very long
/// ids can neither collide nor break the hash tag.
///
/// ```
/// use es_core::StreamId;
/// use es_redis::KeyLayout;
///
/// let keys = KeyLayout::new("es");
/// let stream = StreamId::new("user", "{a:b}");
/// assert_eq!(keys.category_stream("user"), "es:{user}:events");
/// assert_eq!(keys.index(&stream), "es:{user}:index:%7Ba%3Ab%7D");
/// assert_eq!(keys.snapshot(&stream), "es:{user}:snapshot:%7Ba%3Ab%7D");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    namespace: String,
}

impl KeyLayout {
    /// The layout under `namespace` (validated by [`RedisConfig`](crate::RedisConfig)).
    pub fn new(namespace: impl Into<String>) -> Self {
        KeyLayout {
            namespace: namespace.into(),
        }
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The hash-tagged prefix of every key of `category`: `<namespace>:{<category>}`.
    pub fn category_prefix(&self, category: &str) -> String {
        format!("{}:{{{}}}", self.namespace, encode_key_part(category))
    }

    /// The category stream: the log of record of every event of `category`.
    pub fn category_stream(&self, category: &str) -> String {
        format!("{}:events", self.category_prefix(category))
    }

    /// The aggregate's index: a list whose element 0 holds its recent append ids and whose
    /// element *v* is the category stream entry id of version *v*.
    pub fn index(&self, stream: &StreamId) -> String {
        format!(
            "{}:index:{}",
            self.category_prefix(&stream.category),
            encode_key_part(&stream.id)
        )
    }

    /// The aggregate's snapshot hash.
    pub fn snapshot(&self, stream: &StreamId) -> String {
        format!(
            "{}:snapshot:{}",
            self.category_prefix(&stream.category),
            encode_key_part(&stream.id)
        )
    }

    /// The dead-letter stream of `projection` for `category`: entries it could not process,
    /// with the error, the original entry id and the original fields. It shares the
    /// category's hash tag, so one script can move an entry there and acknowledge it.
    pub fn dead_letters(&self, category: &str, projection: &str) -> String {
        format!(
            "{}:dead:{}",
            self.category_prefix(category),
            encode_key_part(projection)
        )
    }

    /// A hash of the last handler error of each entry of `category` that `projection`
    /// failed to handle and will retry (entry id → error), copied into the dead letter.
    pub fn failures(&self, category: &str, projection: &str) -> String {
        format!(
            "{}:failures:{}",
            self.category_prefix(category),
            encode_key_part(projection)
        )
    }

    /// The hash-tagged prefix of every read-model key of `projection`:
    /// `<namespace>:{rm:<projection>}`. One tag per projection, so one script may update
    /// any of its hashes together with its record of applied entries.
    pub fn read_model_prefix(&self, projection: &str) -> String {
        format!("{}:{{rm:{}}}", self.namespace, encode_key_part(projection))
    }

    /// The read-model hash `name` of `projection`. Names are used as they are (the hash
    /// tag comes first, so a brace in a name cannot move it); names starting with `_` are
    /// reserved for the backend.
    pub fn read_model_hash(&self, projection: &str, name: &str) -> String {
        format!("{}:{name}", self.read_model_prefix(projection))
    }

    /// The sorted set of the entries of `category` whose read-model updates `projection`
    /// has applied (member: entry id, score: when it was applied, in milliseconds).
    pub fn applied_entries(&self, projection: &str, category: &str) -> String {
        format!(
            "{}:_applied:{}",
            self.read_model_prefix(projection),
            encode_key_part(category)
        )
    }
}

/// Writes a category or an aggregate id into a key name.
///
/// Percent-encodes (`%XX`, upper-case hex) `%`, the hash tag braces `{` `}`, the separator
/// `:`, the glob characters `*` `?` `[` `]` `\`, and every space or control byte; everything
/// else (including non-ASCII UTF-8) is kept, so keys stay readable in `redis-cli`. The empty
/// string is written as a lone `%`, which no other text encodes to, so it never yields an
/// empty hash tag (`{}` would make Redis Cluster hash the whole key).
///
/// ```
/// use es_redis::keys::{decode_key_part, encode_key_part};
/// assert_eq!(encode_key_part("user-1"), "user-1");
/// assert_eq!(encode_key_part("{a}: b*"), "%7Ba%7D%3A%20b%2A");
/// assert_eq!(encode_key_part(""), "%");
/// assert_eq!(decode_key_part("%7Ba%7D%3A%20b%2A").as_deref(), Some("{a}: b*"));
/// ```
pub fn encode_key_part(text: &str) -> String {
    if text.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && needs_escape(c as u8) {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            let byte = c as u8;
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xF)] as char);
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads back a key part written by [`encode_key_part`]; `None` if `encoded` is not one.
pub fn decode_key_part(encoded: &str) -> Option<String> {
    if encoded == "%" {
        return Some(String::new());
    }
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = encoded.get(i + 1..i + 3)?;
                let byte = u8::from_str_radix(hex, 16).ok()?;
                if !needs_escape(byte) {
                    return None;
                }
                out.push(byte);
                i += 3;
            }
            byte if byte.is_ascii() && needs_escape(byte) => return None,
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn needs_escape(byte: u8) -> bool {
    matches!(
        byte,
        b'%' | b'{' | b'}' | b':' | b'*' | b'?' | b'[' | b']' | b'\\' | 0x7F
    ) || byte <= b' '
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_parts_round_trip_and_never_contain_layout_characters() {
        let long = "é{".repeat(5_000);
        for text in [
            "", "%", "%25", "%41", "{", "}", "}{", ":", "a:b", "*", "?", "[x]", "\\", " ", "\n",
            "\t\r\0", "\u{7f}", "é🦆", "plain", &long,
        ] {
            let encoded = encode_key_part(text);
            assert!(!encoded.is_empty());
            assert!(
                !encoded.contains(['{', '}', ':', '*', '?', '[', ']', '\\', ' ', '\n']),
                "{encoded:?}"
            );
            assert_eq!(decode_key_part(&encoded).as_deref(), Some(text), "{text:?}");
        }
    }

    #[test]
    fn distinct_parts_encode_distinctly() {
        let parts = ["", "%", "%25", "%2525", " ", "%20", "a", "A"];
        let encoded: std::collections::HashSet<_> =
            parts.iter().map(|p| encode_key_part(p)).collect();
        assert_eq!(encoded.len(), parts.len());
    }

    #[test]
    fn malformed_encodings_are_rejected() {
        for bad in ["%4", "%zz", "%41", "a:b", "{", "%%"] {
            assert_eq!(decode_key_part(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hash_tag_is_the_encoded_category() {
        let keys = KeyLayout::new("app");
        let stream = StreamId::new("{odd}", "");
        assert_eq!(keys.index(&stream), "app:{%7Bodd%7D}:index:%");
        assert_eq!(keys.category_stream(""), "app:{%}:events");
    }
}
