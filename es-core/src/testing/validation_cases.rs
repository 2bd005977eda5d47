//! Conformance cases for what every backend refuses before it writes anything
//! ([`validate_append`](crate::store::validate_append) and
//! [`validate_snapshot`](crate::store::validate_snapshot)): empty appends, event fields named
//! like envelope fields, snapshot fields with the reserved prefix or named twice.

use crate::codec::Fields;
use crate::error::StoreError;
use crate::event::RESERVED_EVENT_FIELDS;
use crate::store::{
    AppendOptions, ExpectedVersion, Metadata, NewEvent, Position, ReadRange, Snapshot,
    SnapshotStore, StreamId,
};

/// An append of no events is an error, not a no-op that bumps nothing.
pub async fn empty_append_is_rejected<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    let error = store
        .append(
            &stream,
            ExpectedVersion::Any,
            Vec::new(),
            &AppendOptions::default(),
        )
        .await
        .expect_err("empty append");
    assert!(matches!(error, StoreError::InvalidRequest(_)), "{error}");
    assert_eq!(store.stream_version(&stream).await.expect("version"), 0);
}

/// An event with a field named like an envelope field (`version`, `type`, …) is refused,
/// and nothing of its append is written, not even the valid events before it.
pub async fn reserved_event_fields_are_refused<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("user", "1");
    for reserved in RESERVED_EVENT_FIELDS {
        let valid = NewEvent {
            event_type: "Registered".into(),
            fields: [("name", &b"Duffy"[..])].into_iter().collect(),
            metadata: Metadata::default(),
        };
        let mut invalid = valid.clone();
        invalid.fields.push(*reserved, "x");
        let error = store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![valid, invalid],
                &AppendOptions::default(),
            )
            .await
            .expect_err("a reserved field name");
        match error {
            StoreError::InvalidRequest(message) => {
                assert!(message.contains(reserved), "{reserved}: {message}")
            }
            other => panic!("{reserved}: expected InvalidRequest, got {other:?}"),
        }
    }
    assert_eq!(store.stream_version(&stream).await.expect("version"), 0);
    let read = store
        .read_category("user", Position::ZERO, 10)
        .await
        .expect("read");
    assert!(read.is_empty(), "nothing written: {read:?}");
}

/// A snapshot with a field that starts with `_` (the snapshot's own metadata) or with a
/// field twice is refused, and no snapshot is saved.
pub async fn reserved_snapshot_fields_are_refused<S: SnapshotStore>(store: S) {
    let stream = StreamId::new("account", "1");
    let snapshot = |fields: &[(&'static str, &str)]| Snapshot {
        version: 1,
        position: Position::new(1, 0),
        schema: 7,
        fields: fields
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect::<Fields>(),
    };
    for fields in [
        &[("balance", "1"), ("_version", "999")][..],
        &[("_", "x")][..],
        &[("balance", "1"), ("balance", "2")][..],
    ] {
        let error = store
            .save_snapshot(&stream, &snapshot(fields))
            .await
            .expect_err("a refused snapshot");
        assert!(
            matches!(error, StoreError::InvalidRequest(_)),
            "{fields:?}: {error}"
        );
    }
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), None);
    assert!(store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read")
        .is_empty());
}
