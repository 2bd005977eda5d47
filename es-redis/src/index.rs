//! An aggregate's index (`<prefix>:index:<id>`: element *v* is the category stream entry of
//! version *v*) and reading an aggregate's events through it: a script reads a page of the
//! index (with the snapshot, for a load), then the entries are read straight from the
//! category stream, or from the tail copies when they cover the page.

use std::sync::Arc;

use es_core::codec::FieldError;
use es_core::{DecodeError, Position, StoreError, StoredEvent, StreamId};
use redis::Value;

use crate::entry::{self, as_u64, into_array, into_bytes, EntrySource, RawEntry};
use crate::error::Error;
use crate::scripts::SCRIPTS;
use crate::store::RedisEventStore;

/// One page of an aggregate's events, as the read scripts reply: which entries hold them
/// (read by [`RedisEventStore::fetch_entries`]), or their tail copies.
pub(crate) struct Page {
    /// The aggregate's version when the page was read.
    version: u64,
    /// Whether the range ends with this page.
    done: bool,
    /// The events, for consecutive versions.
    elements: PageElements,
}

/// What a page holds of each event.
enum PageElements {
    /// The entry ids.
    Ids(Vec<String>),
    /// The tail copies, `<index element> <copy>` each (see [`crate::copies`]).
    Copies(Vec<Vec<u8>>),
}

impl PageElements {
    fn len(&self) -> usize {
        match self {
            PageElements::Ids(ids) => ids.len(),
            PageElements::Copies(copies) => copies.len(),
        }
    }
}

/// How indexes written by earlier versions packed an entry id `<ms>-<seq>` into one
/// integer, `ms * 1024 + seq` (`scripts/entry_ids.lua`); indexes now hold ids as they are.
const PACKED_SEQS: u64 = 1024;

/// The entry id an index element stands for.
pub(crate) fn unpack_entry_id(element: Vec<u8>) -> String {
    let text = String::from_utf8_lossy(&element);
    if !text.contains('-') {
        if let Ok(packed) = text.parse::<u64>() {
            return format!("{}-{}", packed / PACKED_SEQS, packed % PACKED_SEQS);
        }
    }
    text.into_owned()
}

impl Page {
    /// Parses `[version, done, copies, element…]`: index elements, or tail copies if
    /// `copies` is 1.
    pub(crate) fn parse(value: Value, operation: &str) -> Result<Self, Error> {
        let mut items = into_array(value, operation)?.into_iter();
        let (Some(version), Some(done), Some(copies)) = (
            items.next().as_ref().and_then(as_u64),
            items.next().as_ref().and_then(as_u64),
            items.next().as_ref().and_then(as_u64),
        ) else {
            return Err(Error::unexpected(operation, "a page without its header"));
        };
        let elements = items.map(|item| {
            into_bytes(item)
                .ok_or_else(|| Error::unexpected(operation, "a page element that is not a string"))
        });
        Ok(Page {
            version,
            done: done == 1,
            elements: if copies == 1 {
                PageElements::Copies(elements.collect::<Result<_, _>>()?)
            } else {
                PageElements::Ids(
                    elements
                        .map(|element| element.map(unpack_entry_id))
                        .collect::<Result<_, _>>()?,
                )
            },
        })
    }
}

impl RedisEventStore {
    async fn read_page(
        &self,
        stream: &StreamId,
        from: u64,
        to: Option<u64>,
        until_millis: Option<u64>,
    ) -> Result<Page, Error> {
        let mut invocation = SCRIPTS.read_stream.prepare_invoke();
        invocation
            .key(self.keys().aggregate_stream(stream))
            .key(self.keys().index(stream));
        if self.tail_copies() > 0 {
            invocation.key(self.keys().tail(stream));
        }
        invocation
            .arg(from)
            .arg(to.map(|v| v.to_string()).unwrap_or_default())
            .arg(until_millis.map(|v| v.to_string()).unwrap_or_default())
            .arg(self.page_size());
        let reply = self.run_script("read_stream", &invocation).await?;
        Page::parse(reply, "read_stream")
    }

    /// Reads `stream` from version `from` in pages, starting with `first` if the caller
    /// already has the first page. The first page fixes the last version read, so a long
    /// read returns the stream as it was when it started.
    pub(crate) async fn read_pages(
        &self,
        stream: &StreamId,
        mut from: u64,
        to: Option<u64>,
        until_millis: Option<u64>,
        first: Option<Page>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let storage_key: Arc<str> = Arc::from(self.keys().aggregate_stream(stream));
        let source = EntrySource {
            storage_key: &storage_key,
            category: &stream.category,
        };
        let mut page = match first {
            Some(page) => page,
            None => self.read_page(stream, from, to, until_millis).await?,
        };
        let to = Some(to.map_or(page.version, |to| to.min(page.version)));
        let mut events = Vec::new();
        loop {
            let read = page.elements.len() as u64;
            let entries = match page.elements {
                PageElements::Ids(ids) => self.fetch_entries(&storage_key, ids).await?,
                PageElements::Copies(copies) => {
                    self.entries_of_copies(&storage_key, stream, from, copies)
                        .await?
                }
            };
            for (version, raw) in (from..).zip(entries) {
                events.push(self.decode_indexed(&source, stream, version, raw)?);
            }
            if page.done || read == 0 {
                return Ok(events);
            }
            from += read;
            page = self.read_page(stream, from, to, until_millis).await?;
        }
    }

    /// The entries that `copies` (tail copies of versions `from`…) copy. Copies are only a
    /// cache: if one does not decode, the entries are read from the stream instead.
    async fn entries_of_copies(
        &self,
        key: &str,
        stream: &StreamId,
        from: u64,
        copies: Vec<Vec<u8>>,
    ) -> Result<Vec<RawEntry>, Error> {
        let decoded: Option<Vec<RawEntry>> = (from..)
            .zip(&copies)
            .map(|(version, copy)| crate::copies::decode(copy, &stream.id, version))
            .collect();
        if let Some(entries) = decoded {
            return Ok(entries);
        }
        tracing::warn!(%stream, "a tail copy does not decode; reading the stream instead");
        let ids = copies
            .iter()
            .map(|copy| crate::copies::entry_id(copy))
            .collect();
        self.fetch_entries(key, ids).await
    }

    /// Reads the entries `ids` names (ascending) from stream `key` in one round trip; an
    /// entry the stream no longer holds comes back without fields.
    ///
    /// Ids are cut into runs that nothing else can sit between: ids of one millisecond
    /// with consecutive sequence numbers (the events of one append, or appends sent
    /// together). Each run is one `XRANGE <first> <last>`, all in one pipeline, so exactly
    /// the wanted entries are read however the aggregate's events interleave with others'.
    pub(crate) async fn fetch_entries(
        &self,
        key: &str,
        ids: Vec<String>,
    ) -> Result<Vec<RawEntry>, Error> {
        let positions: Vec<Option<Position>> = ids.iter().map(|id| id.parse().ok()).collect();
        // Runs [start, end) of readable ids; an id that is not an entry id cannot be read
        // (XRANGE would refuse it) and stays missing.
        let mut runs = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let Some(first) = positions[i] else {
                i += 1;
                continue;
            };
            let mut end = i + 1;
            let mut last = first;
            while let Some(Some(next)) = positions.get(end) {
                if next.major() != last.major() || Some(next.minor()) != last.minor().checked_add(1)
                {
                    break;
                }
                last = *next;
                end += 1;
            }
            runs.push((i, end));
            i = end;
        }
        let mut found: Vec<Option<RawEntry>> = (0..ids.len()).map(|_| None).collect();
        if !runs.is_empty() {
            let operation = format!("XRANGE of {key}");
            let mut pipe = redis::pipe();
            for &(start, end) in &runs {
                // Canonical `<ms>-<seq>` bounds: a bare `<ms>` would mean the whole
                // millisecond as an end.
                pipe.cmd("XRANGE")
                    .arg(key)
                    .arg(positions[start].map(|p| p.to_string()))
                    .arg(positions[end - 1].map(|p| p.to_string()));
            }
            let mut connection = self.connection();
            let replies: Vec<Value> = pipe
                .query_async(&mut connection)
                .await
                .map_err(|e| Error::redis(&operation, e))?;
            if replies.len() != runs.len() {
                return Err(Error::unexpected(&operation, "a reply per range"));
            }
            for (&(start, end), reply) in runs.iter().zip(replies) {
                let mut next = start;
                for item in into_array(reply, &operation)? {
                    let entry = RawEntry::parse(item, &operation)?;
                    let at: Option<Position> = entry.id.parse().ok();
                    // Entries come in order; skip the wanted ids the stream no longer holds.
                    while next < end && positions[next] != at {
                        next += 1;
                    }
                    if next == end {
                        return Err(Error::unexpected(
                            &operation,
                            format!("entry {} outside the range read", entry.id),
                        ));
                    }
                    found[next] = Some(entry);
                    next += 1;
                }
            }
        }
        Ok(found
            .into_iter()
            .zip(ids)
            .map(|(entry, id)| entry.unwrap_or(RawEntry { id, pairs: None }))
            .collect())
    }

    /// Decodes the entry the index names for `version` of `stream`, checking that it is
    /// that aggregate's entry for that version.
    fn decode_indexed(
        &self,
        source: &EntrySource<'_>,
        stream: &StreamId,
        version: u64,
        raw: RawEntry,
    ) -> Result<StoredEvent, StoreError> {
        let Some(pairs) = raw.pairs else {
            return Err(Error::unexpected(
                format!("reading {stream}"),
                format!(
                    "index {} names entry {} for version {version}, which {} no longer holds \
                     (was the stream trimmed or the entry deleted?)",
                    self.keys().index(stream),
                    raw.id,
                    source.storage_key
                ),
            )
            .into());
        };
        let mut event = entry::decode_entry(source, &raw.id, pairs)?;
        let mismatch = if event.stream.id != stream.id {
            Some((
                "aggregate_id",
                format!("expected {:?}", stream.id),
                event.stream.id.clone(),
            ))
        } else if event.version != version {
            Some((
                "version",
                format!("expected {version}"),
                event.version.to_string(),
            ))
        } else {
            None
        };
        if let Some((field, expected, found)) = mismatch {
            let why = format!(
                "{expected} (the index {} names this entry), found {found:?}",
                self.keys().index(stream)
            );
            return Err(StoreError::decode(
                &**source.storage_key,
                &raw.id,
                DecodeError::field(&event.event_type, field, FieldError::Invalid(why)),
            ));
        }
        event.stream = stream.clone();
        Ok(event)
    }
}
