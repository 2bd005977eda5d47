//! A category's partition count is recorded with its first append: a store configured with
//! another count is refused before it writes, on one server and on a cluster.

use es_core::{
    EventStore, ExpectedVersion, Metadata, NewEvent, Position, ReadRange, StoreError, StreamId,
};
use es_redis::testing::{unique_namespace, RedisCluster, RedisServer};
use es_redis::{RedisConfig, RedisEventStore};

fn event() -> NewEvent {
    NewEvent {
        event_type: "Registered".into(),
        fields: [("name", "Duffy")].into_iter().collect(),
        metadata: Metadata::default(),
    }
}

async fn connect(config: RedisConfig) -> RedisEventStore {
    RedisEventStore::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn append(store: &RedisEventStore, id: &str) -> Result<u64, StoreError> {
    let stream = StreamId::new("user", id.to_owned());
    let written = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![event()],
            &Default::default(),
        )
        .await?;
    Ok(written.version)
}

/// Every event of `user`, over all partitions of `store`'s layout.
async fn stored(store: &RedisEventStore) -> usize {
    let mut count = 0;
    for partition in 0..store.partitions("user") {
        count += store
            .read_partition("user", partition, Position::ZERO, 10_000)
            .await
            .expect("read")
            .len();
    }
    count
}

fn assert_names_both(error: &StoreError, recorded: u32, configured: u32) {
    let text = error.to_string();
    assert!(
        matches!(error, StoreError::InvalidRequest(_))
            && text.contains(&format!("recorded with {recorded} partition"))
            && text.contains(&format!("configured with {configured}")),
        "expected a configuration error naming {recorded} and {configured}: {text}"
    );
}

/// `first` writes `user`; then a store with `second`'s count is refused, writes nothing,
/// and cannot read either.
async fn check(first: RedisConfig, second: RedisConfig, counts: (u32, u32)) {
    let writer = connect(first.clone()).await;
    for n in 0..8 {
        append(&writer, &format!("u{n}")).await.expect("append");
    }
    let before = stored(&writer).await;
    let other = connect(second).await;
    let refused = append(&other, "u1")
        .await
        .expect_err("another partition count");
    assert_names_both(&refused, counts.0, counts.1);
    let read = other
        .read_stream(&StreamId::new("user", "u1"), &ReadRange::all())
        .await
        .expect_err("reading with another count");
    assert_names_both(&read, counts.0, counts.1);
    assert_eq!(stored(&writer).await, before, "nothing was written");
    let theirs = writer.keys().category_streams("user");
    for key in other.keys().category_streams("user") {
        if theirs.contains(&key) {
            continue;
        }
        let mut connection = writer.connection();
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("EXISTS");
        assert_eq!(exists, 0, "{key} was created by the refused store");
    }
    // The first store goes on, and so does a fresh one configured like it: the refused
    // store left no record behind.
    assert_eq!(append(&writer, "u1").await.expect("append"), 2);
    let fresh = connect(first).await;
    assert_eq!(append(&fresh, "u2").await.expect("a fresh store"), 2);
    let events = fresh
        .read_stream(&StreamId::new("user", "u1"), &ReadRange::all())
        .await
        .expect("a fresh store reads");
    assert_eq!(events.len(), 2);
}

fn server() -> &'static RedisServer {
    RedisServer::shared().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn another_partition_count_is_refused_on_one_server() {
    for (a, b) in [(4, 6), (1, 4), (4, 1)] {
        let namespace = unique_namespace("counts");
        let config = |count| server().config(&namespace).partitions("user", count);
        check(config(a), config(b), (a, b)).await;
    }
}

#[tokio::test]
async fn another_partition_count_is_refused_on_a_cluster() {
    let cluster = RedisCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    for (a, b) in [(6, 3), (1, 6), (6, 1)] {
        let namespace = unique_namespace("counts-cluster");
        let config = |count| cluster.config(&namespace).partitions("user", count);
        check(config(a), config(b), (a, b)).await;
    }
}

/// Two stores with different counts that first write an empty category at the same time:
/// at most one of them succeeds, and a store configured like the one that did (or like
/// either, if neither did) can write afterwards: a refused store leaves no record.
#[tokio::test]
async fn racing_first_writers_with_different_counts_cannot_both_write() {
    for (a, b) in [(4, 6), (1, 4), (3, 1)] {
        for _ in 0..10 {
            let namespace = unique_namespace("counts-race");
            let first = connect(server().config(&namespace).partitions("user", a)).await;
            let second = connect(server().config(&namespace).partitions("user", b)).await;
            let (one, two) = tokio::join!(append(&first, "u1"), append(&second, "u2"));
            assert!(
                one.is_err() || two.is_err(),
                "both wrote with {a} and {b} partitions"
            );
            let winner = match (&one, &two) {
                (Ok(_), _) => a,
                (_, Ok(_)) => b,
                _ => a,
            };
            for result in [one, two] {
                if let Err(error) = result {
                    assert!(matches!(error, StoreError::InvalidRequest(_)), "{error}");
                }
            }
            let fresh = connect(server().config(&namespace).partitions("user", winner)).await;
            append(&fresh, "u3")
                .await
                .unwrap_or_else(|e| panic!("{a} vs {b}: a store with {winner} is locked out: {e}"));
        }
    }
}

/// A store that only reads an empty category records nothing: the first writer decides,
/// and the reader, looking again, is refused.
#[tokio::test]
async fn reading_an_empty_category_records_no_count() {
    let namespace = unique_namespace("counts-read");
    let reader = connect(server().config(&namespace).partitions("user", 4)).await;
    let events = reader
        .read_category("user", Position::ZERO, 10)
        .await
        .expect("read");
    assert!(events.is_empty());
    let writer = connect(server().config(&namespace).partitions("user", 2)).await;
    assert_eq!(
        append(&writer, "u1")
            .await
            .expect("the first writer decides"),
        1
    );
}

/// The append script checks each partition's record too: with the first-use records lost
/// (deleted by hand), a store with another count still cannot start an aggregate in a
/// partition written with the first count.
#[tokio::test]
async fn the_append_script_refuses_another_count_when_the_first_use_record_is_lost() {
    let namespace = unique_namespace("counts-script");
    let first = connect(server().config(&namespace).partitions("user", 4)).await;
    // An aggregate in each of the first store's partitions.
    let mut written = [false; 4];
    for n in 0.. {
        let id = format!("u{n}");
        let partition = es_redis::keys::partition_of(&id, 4) as usize;
        if !written[partition] {
            append(&first, &id).await.expect("append");
            written[partition] = true;
        }
        if written.iter().all(|w| *w) {
            break;
        }
        assert!(n < 1_000, "no id for some partition");
    }
    let mut connection = first.connection();
    let (own, other) = first.keys().partition_records("user");
    let _: u64 = redis::cmd("DEL")
        .arg(&own)
        .arg(&other)
        .query_async(&mut connection)
        .await
        .expect("lose the first-use records");

    let second = connect(server().config(&namespace).partitions("user", 6)).await;
    // An id the second store puts in partition 1, which the first store wrote.
    let id = (0..)
        .map(|n| format!("v{n}"))
        .find(|id| es_redis::keys::partition_of(id, 6) == 1)
        .expect("an id");
    let stream = first.keys().partition_stream("user", 1);
    let before: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    let refused = append(&second, &id)
        .await
        .expect_err("the script refuses another count");
    let text = refused.to_string();
    assert!(
        matches!(refused, StoreError::InvalidRequest(_))
            && text.contains("records 4 partition(s)")
            && text.contains("sent for 6"),
        "{text}"
    );
    let after: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(after, before, "nothing was written");
}
