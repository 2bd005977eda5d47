//! The key layout: which Redis key holds what, and how categories and aggregate ids are
//! written into key names.
//!
//! For namespace `es`, category `user` and aggregate id `42`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `es:{user}:events` | stream | every `user` event, in category order (the log of record) |
//! | `es:{user}:index:42` | list | element *v*: the entry id of version *v* (element 0: a placeholder) |
//! | `es:{user}:appends:42` | hash | recent append ids' digests → the append's last version (`:<events>` if not 1) |
//! | `es:{user}:tail:42` | list | with [`RedisConfig::tail_copies`](crate::RedisConfig::tail_copies): copies of the newest events, `<entry id> <copy>` |
//! | `es:{user}:snapshot:42` | hash | the snapshot's fields plus `_version`, `_position`, `_schema`, `_fields` |
//! | `es:{user}:aggregates` | stream | an entry `id <id>` per `user` aggregate, in the order they started |
//! | `es:categories` | set | every category written |
//! | `es:subject_keys` | hash | each data subject's key, `<generation>:<key>` (`<generation>:` once erased) |
//! | `es:{user}:dead:profiles` | stream | events of `user` projection `profiles` could not process |
//! | `es:{user}:failures:profiles` | hash | the last handler error of each entry `profiles` will retry |
//! | `es:{rm:profiles}:<name>` | hash | read-model hash `<name>` of projection `profiles` |
//! | `es:{rm:profiles}:_applied:user` | sorted set | entries of `user` whose read-model update is applied |
//!
//! Every key of a category shares the hash tag `{user}`, and every read-model key of a
//! projection the tag `{rm:<projection>}`, so one script may touch all of them on Redis
//! Cluster too.
//!
//! # Partitions
//!
//! A category may be split into *P* partitions ([`RedisConfig::partitions`]; default 1).
//! Aggregate `id` belongs to partition [`partition_of`]`(id, P)`: the FNV-1a 64-bit hash of
//! the id's UTF-8 bytes, modulo *P*. With *P* = 1 the layout is the one above. With *P* > 1
//! every key of partition *q* carries the hash tag `{<category>:p<q>}` instead of
//! `{<category>}`: `es:{user:p3}:events` is partition 3's stream, and aggregate `42` of
//! partition 3 has `es:{user:p3}:index:42` and `es:{user:p3}:snapshot:42`. So the
//! partitions spread over the cluster's shards, while each aggregate's keys and its
//! partition's stream share one slot. A projection's dead letters and failures are kept
//! per partition too, and its record of applied entries gets a `:p<q>` suffix.
//!
//! *P* is fixed for a category once it holds data: with another *P*, aggregates would be
//! looked up in other partitions and appear empty.
//!
//! [`RedisConfig::partitions`]: crate::RedisConfig::partitions

use std::collections::BTreeMap;
use std::sync::Arc;

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
///
/// // `order` in 4 partitions: aggregate `o-2` lives in partition 1.
/// let keys = keys.with_partitions("order", 4);
/// let order = StreamId::new("order", "o-2");
/// assert_eq!(keys.partition_of(&order), 1);
/// assert_eq!(keys.aggregate_stream(&order), "es:{order:p1}:events");
/// assert_eq!(keys.index(&order), "es:{order:p1}:index:o-2");
/// assert_eq!(keys.category_streams("order").len(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    namespace: String,
    /// Partition counts of the partitioned categories (absent: 1).
    partitions: Arc<BTreeMap<String, u32>>,
}

impl KeyLayout {
    /// The layout under `namespace` (validated by [`RedisConfig`](crate::RedisConfig)),
    /// every category in one partition.
    pub fn new(namespace: impl Into<String>) -> Self {
        KeyLayout {
            namespace: namespace.into(),
            partitions: Arc::default(),
        }
    }

    /// This layout with `category` split into `partitions` partitions (0 counts as 1).
    pub fn with_partitions(mut self, category: impl Into<String>, partitions: u32) -> Self {
        Arc::make_mut(&mut self.partitions).insert(category.into(), partitions.max(1));
        self
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How many partitions `category` has (1 unless configured).
    pub fn partitions(&self, category: &str) -> u32 {
        self.partitions.get(category).copied().unwrap_or(1)
    }

    /// The partition the aggregate belongs to: [`partition_of`] its id.
    pub fn partition_of(&self, stream: &StreamId) -> u32 {
        partition_of(&stream.id, self.partitions(&stream.category))
    }

    /// The hash-tagged prefix of every key of `partition` of `category`:
    /// `<namespace>:{<category>}` when the category has one partition, else
    /// `<namespace>:{<category>:p<partition>}`.
    pub fn partition_prefix(&self, category: &str, partition: u32) -> String {
        if self.partitions(category) == 1 {
            format!("{}:{{{}}}", self.namespace, encode_key_part(category))
        } else {
            format!(
                "{}:{{{}:p{partition}}}",
                self.namespace,
                encode_key_part(category)
            )
        }
    }

    /// The record of `category`'s partition count kept in `partition`'s slot:
    /// `<partition prefix>:partitions`. The first append that starts an aggregate in a
    /// partition records the count there, and the append script refuses appends sent with
    /// another.
    pub fn partition_record(&self, category: &str, partition: u32) -> String {
        format!("{}:partitions", self.partition_prefix(category, partition))
    }

    /// Where a store checks `category`'s partition count on first use, for this layout
    /// and for the other one: `<namespace>:{<category>}:partitions` for one partition,
    /// `<namespace>:{<category>:p0}:partitions` for several (whatever their number, so two
    /// partitioned layouts share it). Returns (this layout's, the other's).
    pub fn partition_records(&self, category: &str) -> (String, String) {
        let category_part = encode_key_part(category);
        let single = format!("{}:{{{category_part}}}:partitions", self.namespace);
        let several = format!("{}:{{{category_part}:p0}}:partitions", self.namespace);
        if self.partitions(category) == 1 {
            (single, several)
        } else {
            (several, single)
        }
    }

    /// The aggregates of `partition` of `category`: a stream with an entry `id <aggregate
    /// id>` per aggregate it holds, in the order they started, which the append script adds
    /// to when an append starts an aggregate.
    pub fn aggregates(&self, category: &str, partition: u32) -> String {
        format!("{}:aggregates", self.partition_prefix(category, partition))
    }

    /// The keys of the namespace's data subjects (es_core::personal): a hash from each
    /// subject to `<generation>:<32 key bytes>`, or `<generation>:` once erased.
    pub fn subject_keys(&self) -> String {
        format!("{}:subject_keys", self.namespace)
    }

    /// The set of every category written under the namespace: `<namespace>:categories`.
    /// A store adds a category before its first append of it.
    pub fn categories(&self) -> String {
        format!("{}:categories", self.namespace)
    }

    /// The category stream of `partition` of `category`: the log of record of its events.
    pub fn partition_stream(&self, category: &str, partition: u32) -> String {
        format!("{}:events", self.partition_prefix(category, partition))
    }

    /// The category stream of an unpartitioned category (of partition 0 of a partitioned
    /// one; see [`category_streams`](Self::category_streams)).
    pub fn category_stream(&self, category: &str) -> String {
        self.partition_stream(category, 0)
    }

    /// The streams of every partition of `category`, partition 0 first.
    pub fn category_streams(&self, category: &str) -> Vec<String> {
        (0..self.partitions(category))
            .map(|partition| self.partition_stream(category, partition))
            .collect()
    }

    /// The stream of the aggregate's partition, where its events are appended.
    pub fn aggregate_stream(&self, stream: &StreamId) -> String {
        self.partition_stream(&stream.category, self.partition_of(stream))
    }

    /// The hash-tagged prefix of the aggregate's keys (its partition's prefix).
    fn aggregate_prefix(&self, stream: &StreamId) -> String {
        self.partition_prefix(&stream.category, self.partition_of(stream))
    }

    /// The aggregate's index: a list whose element *v* (from 1) is the category stream
    /// entry id of version *v* (element 0 is a placeholder, so its length is the version
    /// plus one).
    pub fn index(&self, stream: &StreamId) -> String {
        format!(
            "{}:index:{}",
            self.aggregate_prefix(stream),
            encode_key_part(&stream.id)
        )
    }

    /// The aggregate's recent append ids: a hash from each remembered append id's digest
    /// (the first 6 bytes of its SHA-1) to the append's result, its last version
    /// (then `:<event count>` when that is not 1).
    pub fn append_ids(&self, stream: &StreamId) -> String {
        format!(
            "{}:appends:{}",
            self.aggregate_prefix(stream),
            encode_key_part(&stream.id)
        )
    }

    /// The aggregate's tail copies (with [`RedisConfig::tail_copies`](crate::RedisConfig::tail_copies)):
    /// a list of compact copies of its newest events, each `<index element> <copy>`.
    pub fn tail(&self, stream: &StreamId) -> String {
        format!(
            "{}:tail:{}",
            self.aggregate_prefix(stream),
            encode_key_part(&stream.id)
        )
    }

    /// The aggregate's snapshot hash.
    pub fn snapshot(&self, stream: &StreamId) -> String {
        format!(
            "{}:snapshot:{}",
            self.aggregate_prefix(stream),
            encode_key_part(&stream.id)
        )
    }

    /// The dead-letter stream of `projection` for `partition` of `category` (0 if it is
    /// not partitioned): entries it could not process, with the error, the original entry
    /// id and the original fields. It shares the partition stream's hash tag, so one
    /// script can move an entry there and acknowledge it.
    pub fn dead_letters(&self, category: &str, partition: u32, projection: &str) -> String {
        format!(
            "{}:dead:{}",
            self.partition_prefix(category, partition),
            encode_key_part(projection)
        )
    }

    /// A hash of the last handler error of each entry of `partition` of `category` that
    /// `projection` failed to handle and will retry (entry id → error), copied into the
    /// dead letter.
    pub fn failures(&self, category: &str, partition: u32, projection: &str) -> String {
        format!(
            "{}:failures:{}",
            self.partition_prefix(category, partition),
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

    /// The sorted set of the entries of `partition` of `category` whose read-model
    /// updates `projection` has applied (member: entry id, score: when it was applied, in
    /// milliseconds): `…:_applied:<category>`, with `:p<partition>` appended when the
    /// category is partitioned (entry ids repeat across partitions).
    pub fn applied_entries(&self, projection: &str, category: &str, partition: u32) -> String {
        let base = format!(
            "{}:_applied:{}",
            self.read_model_prefix(projection),
            encode_key_part(category)
        );
        if self.partitions(category) == 1 {
            base
        } else {
            format!("{base}:p{partition}")
        }
    }
}

/// The partition of the aggregate with id `id` in a category of `partitions` partitions:
/// the 64-bit FNV-1a hash of the id's UTF-8 bytes (offset basis `0xcbf29ce484222325`,
/// prime `0x100000001b3`), modulo `partitions` (0 counts as 1). It is fixed: the same on
/// every platform and in every version of this crate.
///
/// ```
/// use es_redis::keys::partition_of;
/// assert_eq!(partition_of("anything", 1), 0);
/// assert_eq!(partition_of("o-2", 4), 1);
/// assert!(partition_of("user-42", 6) < 6);
/// ```
pub fn partition_of(id: &str, partitions: u32) -> u32 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let hash = id.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // The remainder is below `partitions`, so it fits.
    (hash % u64::from(partitions.max(1))) as u32
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
    fn partitions_follow_fnv1a_of_the_id() {
        // FNV-1a 64 of "" is the offset basis; of "a" a published test vector.
        assert_eq!(
            partition_of("", 1 << 31),
            (0xcbf2_9ce4_8422_2325u64 % (1 << 31)) as u32
        );
        assert_eq!(
            u64::from(partition_of("a", u32::MAX)),
            0xaf63_dc4c_8601_ec8c % u64::from(u32::MAX)
        );
        assert_eq!(partition_of("x", 0), 0);
        let keys = KeyLayout::new("es").with_partitions("user", 6);
        let mut seen = [false; 6];
        for n in 0..100 {
            let stream = StreamId::new("user", format!("u-{n}"));
            let partition = keys.partition_of(&stream);
            seen[partition as usize] = true;
            let tag = format!("{{user:p{partition}}}");
            assert!(keys.index(&stream).contains(&tag));
            assert!(keys.snapshot(&stream).contains(&tag));
            assert!(keys.aggregate_stream(&stream).contains(&tag));
        }
        assert!(seen.iter().all(|s| *s), "100 ids reach all 6 partitions");
        // Other categories keep the unpartitioned layout.
        assert_eq!(keys.category_streams("order"), ["es:{order}:events"]);
        assert_eq!(
            keys.applied_entries("rm", "order", 0),
            "es:{rm:rm}:_applied:order"
        );
        assert_eq!(
            keys.applied_entries("rm", "user", 2),
            "es:{rm:rm}:_applied:user:p2"
        );
    }

    #[test]
    fn hash_tag_is_the_encoded_category() {
        let keys = KeyLayout::new("app");
        let stream = StreamId::new("{odd}", "");
        assert_eq!(keys.index(&stream), "app:{%7Bodd%7D}:index:%");
        assert_eq!(keys.category_stream(""), "app:{%}:events");
    }
}
