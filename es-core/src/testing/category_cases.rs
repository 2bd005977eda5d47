//! Category reads: one order per category, or per partition of a partitioned one (see
//! [`EventStore::read_category`] and [`EventStore::read_partition`]).

use std::collections::HashMap;

use super::conformance::{none, numbered};
use crate::error::StoreError;
use crate::evolution::check_category;
use crate::store::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Position, SnapshotStore, StoredEvent, StreamId,
};
use crate::Event;

/// A category reads every aggregate's events in append order, in pages: the whole category
/// in one order, or each partition of a partitioned one in its own.
pub async fn category_is_read_in_order_across_aggregates<S: SnapshotStore>(store: S) {
    let mut appended = Vec::new();
    for round in 0..3 {
        for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            let stream = StreamId::new("user", id);
            let written = store
                .append(&stream, ExpectedVersion::Exact(round), numbered(1), &none())
                .await
                .expect("append");
            appended.push((id.to_owned(), written.version, written.positions[0]));
        }
    }
    store
        .append(
            &StreamId::new("order", "a"),
            ExpectedVersion::Any,
            numbered(4),
            &none(),
        )
        .await
        .expect("append elsewhere");
    assert_category_holds(&store, "user", &appended).await;
    assert!(store
        .read_category("nothing", Position::ZERO, 10)
        .await
        .expect("read")
        .is_empty());
}

/// Checks that `category` holds exactly `appended` (stream id, version, position, in the
/// order they were appended, one after the other) as the contract promises:
///
/// - each partition, read in pages, gives its events in append order, and each aggregate
///   lives in one partition (with one partition: the whole category, in append order);
/// - `read_category`, in pages, gives every event once, partitions merged by position.
pub(crate) async fn assert_category_holds<S: EventStore>(
    store: &S,
    category: &str,
    appended: &[(String, u64, Position)],
) {
    let partitions = store.partitions(category);
    assert!(partitions >= 1, "a category has a partition");
    let page = 4.max(partitions as usize);
    let mut home: HashMap<String, u32> = HashMap::new();
    let mut seen = 0;
    for partition in 0..partitions {
        let mut read = Vec::new();
        let mut after = Position::ZERO;
        loop {
            let events = store
                .read_partition(category, partition, after, 4)
                .await
                .expect("read a partition");
            assert!(events.len() <= 4);
            let Some(last) = events.last() else { break };
            after = last.position;
            read.extend(events.into_iter().map(entry));
        }
        for (id, _, _) in &read {
            let first = *home.entry(id.clone()).or_insert(partition);
            assert_eq!(first, partition, "aggregate {id:?} is in two partitions");
        }
        let expected: Vec<_> = appended
            .iter()
            .filter(|(id, _, _)| home.get(id) == Some(&partition))
            .cloned()
            .collect();
        assert_eq!(read, expected, "partition {partition} in append order");
        seen += read.len();
    }
    assert_eq!(seen, appended.len(), "every event in some partition");
    let beyond = store
        .read_partition(category, partitions, Position::ZERO, 4)
        .await;
    assert!(beyond.is_err(), "partition {partitions} does not exist");

    let mut merged = Vec::new();
    let mut after = Position::ZERO;
    loop {
        let events = store
            .read_category(category, after, page)
            .await
            .expect("read the category");
        assert!(events.len() <= page);
        let Some(last) = events.last() else { break };
        after = last.position;
        merged.extend(events.into_iter().map(entry));
    }
    assert!(
        merged.windows(2).all(|w| w[0].2 <= w[1].2),
        "merged by position"
    );
    if partitions == 1 {
        assert_eq!(merged, appended, "one order: the append order");
    } else {
        let (mut merged, mut appended) = (merged, appended.to_vec());
        merged.sort();
        appended.sort();
        assert_eq!(merged, appended, "every event once");
    }
}

fn entry(event: StoredEvent) -> (String, u64, Position) {
    (event.stream.id, event.version, event.position)
}

#[derive(Event, Debug)]
#[event(rename = "Numbered")]
struct Numbered {
    #[allow(dead_code)]
    n: u64,
}

#[derive(Event, Debug)]
enum Counting {
    Numbered(Numbered),
}

/// The pre-deploy check reads every entry of a category (every partition: `user` is
/// partitioned where a backend's suite partitions it) and reports
/// exactly those the current types cannot decode, naming location, entry, type and field;
/// it changes nothing.
pub async fn the_pre_deploy_check_finds_exactly_the_undecodable_entries<S: SnapshotStore>(
    store: S,
) {
    let raw = |event_type: &str, pairs: &[(&'static str, &str)]| NewEvent {
        event_type: event_type.to_owned().into(),
        fields: pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect(),
        metadata: Metadata::default(),
    };
    let mut bad = Vec::new();
    for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let stream = StreamId::new("user", id);
        let mut events = numbered(3);
        // One aggregate of two holds an old shape and a type the code no longer knows.
        if id < "e" {
            events.push(raw("Numbered", &[("count", "7")]));
            events.push(raw("Retired", &[("n", "1")]));
        }
        let written = store
            .append(&stream, ExpectedVersion::Any, events, &none())
            .await
            .expect("append");
        if id < "e" {
            let n = written.positions.len();
            bad.push((written.positions[n - 2].to_string(), "Numbered", Some("n")));
            bad.push((written.positions[n - 1].to_string(), "Retired", None));
        }
    }
    let before = store
        .read_stream(&StreamId::new("user", "a"), &Default::default())
        .await
        .expect("read");
    let report = check_category::<Counting, _>(&store, "user")
        .await
        .expect("check");
    assert_eq!(report.category, "user");
    assert_eq!(report.checked, 8 * 3 + 4 * 2);
    let mut found: Vec<(String, &str, Option<&str>)> = report
        .undecodable
        .iter()
        .map(|e| (e.entry.clone(), e.event_type.as_str(), e.field.as_deref()))
        .collect();
    found.sort();
    bad.sort();
    assert_eq!(found, bad, "{report}");
    assert!(report.undecodable.iter().all(|e| !e.location.is_empty()));
    let numbered = report.by_type["Numbered"];
    assert_eq!((numbered.entries, numbered.undecodable), (28, 4));
    let retired = report.by_type["Retired"];
    assert_eq!((retired.entries, retired.undecodable), (4, 4));
    assert!(!report.is_clean());
    let clean = check_category::<Counting, _>(&store, "nothing")
        .await
        .expect("check");
    assert!(clean.is_clean() && clean.checked == 0);
    let after = store
        .read_stream(&StreamId::new("user", "a"), &Default::default())
        .await
        .expect("read");
    assert_eq!(after, before, "the check changes nothing");
}

/// A store lists its categories with their event counts, and each category's aggregate ids
/// in the order they started (per partition, on a partitioned category), in pages that give
/// every id once, hostile ids included.
pub async fn categories_and_aggregate_ids_are_listed_in_pages<S: SnapshotStore>(store: S) {
    assert!(store.categories().await.expect("categories").is_empty());
    let ids = ["", " ", "a/b", "Z", "a", "a:b", "{x}", "%7B", "é", "日本"];
    let mut user_head = Position::ZERO;
    for (n, id) in ids.iter().enumerate() {
        let stream = StreamId::new("user", *id);
        let written = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                numbered(1 + n % 3),
                &none(),
            )
            .await
            .expect("append");
        user_head = user_head.max(*written.positions.last().expect("positions"));
    }
    // More events of aggregates that have started: not listed again.
    for id in ["a", "Z"] {
        let written = store
            .append(
                &StreamId::new("user", id),
                ExpectedVersion::Any,
                numbered(1),
                &none(),
            )
            .await
            .expect("append more");
        user_head = user_head.max(written.positions[0]);
    }
    let order_head = *store
        .append(
            &StreamId::new("order", "o-1"),
            ExpectedVersion::Any,
            numbered(2),
            &none(),
        )
        .await
        .expect("append elsewhere")
        .positions
        .last()
        .expect("positions");
    let user_events: usize = (0..ids.len()).map(|n| 1 + n % 3).sum::<usize>() + 2;
    assert_eq!(
        store.categories().await.expect("categories"),
        vec![
            crate::store::CategoryInfo::new("order", 2, order_head),
            crate::store::CategoryInfo::new("user", user_events as u64, user_head),
        ],
        "every category with its event count and newest position, sorted by name"
    );
    let partitions = store.partitions("user");
    for page in [1, 3, 100] {
        let mut listed: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        for pages in 1.. {
            assert!(pages <= ids.len() + 1, "paging ends");
            let got = store
                .aggregate_ids("user", after.as_deref(), page)
                .await
                .expect("aggregate ids");
            assert!(got.ids.len() <= page, "a page holds at most its limit");
            listed.extend(got.ids);
            match got.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if partitions == 1 {
            assert_eq!(
                listed, ids,
                "pages of {page} give every id once, in start order"
            );
        } else {
            let mut sorted = listed.clone();
            sorted.sort();
            let mut expected: Vec<&str> = ids.to_vec();
            expected.sort();
            assert_eq!(sorted, expected, "pages of {page} give every id once");
        }
    }
    let order = store.aggregate_ids("order", None, 10).await.expect("ids");
    assert_eq!((order.ids, order.next), (vec!["o-1".to_owned()], None));
    let nothing = store
        .aggregate_ids("nothing", None, 10)
        .await
        .expect("ids of an unknown category");
    assert!(nothing.ids.is_empty() && nothing.next.is_none());
    assert!(store
        .aggregate_ids("user", None, 0)
        .await
        .expect("an empty page")
        .ids
        .is_empty());
    let refused = store.aggregate_ids("user", Some("not a cursor"), 10).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidRequest(_))),
        "a malformed cursor is refused: {refused:?}"
    );
}
