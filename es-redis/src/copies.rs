//! Tail copies ([`RedisConfig::tail_copies`](crate::RedisConfig::tail_copies)): the compact
//! form of an event kept in its aggregate's tail list, so a load reads the events after a
//! snapshot without reading the category stream.
//!
//! A tail element is `<index element> <copy>`: the entry id as the index holds it (see
//! `scripts/entry_ids.lua`), a space, then the copy. The copy is the entry's field pairs
//! without `aggregate_id` and `version` (the list is the aggregate's, and its place says
//! the version): the type's value, then each name and value, each written as
//! `<byte length>:<bytes>`.
//!
//! ```text
//! 1821331200000 9:ItemAdded3:sku8:SKU-00428:quantity1:3
//! ```

use crate::entry::RawEntry;

/// Appends the copy of an event to `out`: its type, then its pairs (name, value, …).
pub(crate) fn encode<'a>(event_type: &[u8], pairs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    push(&mut out, event_type);
    for part in pairs {
        push(&mut out, part);
    }
    out
}

fn push(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(part.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(part);
}

/// A tail element's entry id and its copy (`None` without the space between them).
fn split(element: &[u8]) -> Option<(String, &[u8])> {
    let space = element.iter().position(|&b| b == b' ')?;
    let id = crate::index::unpack_entry_id(element[..space].to_vec());
    Some((id, &element[space + 1..]))
}

/// The entry id a tail element names, even if its copy does not decode.
pub(crate) fn entry_id(element: &[u8]) -> String {
    split(element).map_or_else(
        || crate::index::unpack_entry_id(element.to_vec()),
        |(id, _)| id,
    )
}

/// The entry a tail element copies, as the stream would return it (with `aggregate_id`
/// and `version` put back), or `None` if the element is not a well-formed copy.
pub(crate) fn decode(element: &[u8], aggregate_id: &str, version: u64) -> Option<RawEntry> {
    let (id, mut rest) = split(element)?;
    let mut next = || -> Option<Option<Vec<u8>>> {
        if rest.is_empty() {
            return Some(None);
        }
        let colon = rest.iter().position(|&b| b == b':')?;
        let length: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let start = colon + 1;
        let part = rest.get(start..start.checked_add(length)?)?.to_vec();
        rest = &rest[start + length..];
        Some(Some(part))
    };
    let event_type = next()??;
    let mut pairs = vec![
        (b"type".to_vec(), event_type),
        (b"aggregate_id".to_vec(), aggregate_id.as_bytes().to_vec()),
        (b"version".to_vec(), version.to_string().into_bytes()),
    ];
    while let Some(name) = next()? {
        pairs.push((name, next()??));
    }
    Some(RawEntry {
        id,
        pairs: Some(pairs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_decodes_to_the_entry_it_copies() {
        let copy = encode(
            b"ItemAdded",
            [
                &b"sku"[..],
                b"SKU 1:2",
                b"note",
                b"",
                b"bin",
                &[0, 255, b' '],
            ],
        );
        let mut element = b"1821331200000 ".to_vec(); // packed 1778643750-0
        element.extend_from_slice(&copy);
        let entry = decode(&element, "cart-1", 7).expect("decodes");
        assert_eq!(entry.id, "1778643750-0");
        let pairs = entry.pairs.expect("pairs");
        let text: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            text,
            [
                (&b"type"[..], &b"ItemAdded"[..]),
                (b"aggregate_id", b"cart-1"),
                (b"version", b"7"),
                (b"sku", b"SKU 1:2"),
                (b"note", b""),
                (b"bin", &[0, 255, b' ']),
            ]
        );
    }

    #[test]
    fn malformed_copies_are_refused_not_misread() {
        for element in [
            &b"1821331200000"[..],         // no copy
            b"1821331200000 ",             // no type
            b"1821331200000 10:ItemAdded", // length past the end
            b"1821331200000 x:ItemAdded",  // not a length
            b"1821331200000 3:abc3:sku",   // a name without its value
        ] {
            assert!(
                decode(element, "a", 1).is_none(),
                "{}",
                String::from_utf8_lossy(element)
            );
        }
    }
}
