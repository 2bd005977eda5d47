//! Tail copies (`RedisConfig::tail_copies`): loads read them instead of the category
//! stream, snapshots drop the ones they cover, the lists stay within their bound, and
//! copies out of step with the index, or corrupt, are never trusted.

use es_core::{
    Aggregate, Apply, Event, EventStore, Handle, ReadRange, Repository, SnapshotPolicy, StreamId,
};
use es_redis::testing::{unique_namespace, RedisServer};
use es_redis::{RedisConfig, RedisEventStore};
use redis::aio::ConnectionManager;

#[derive(Event, Debug, Clone, PartialEq)]
struct Noted {
    text: String,
    n: u64,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum NoteEvent {
    Noted(Noted),
}

#[derive(Aggregate, Default, Debug, Clone, PartialEq)]
#[aggregate(event = NoteEvent, name = "notes")]
struct Notes {
    count: u64,
    sum: u64,
    last: String,
}

impl Apply<Noted> for Notes {
    fn apply(&mut self, e: &Noted) {
        self.count += 1;
        self.sum += e.n;
        self.last = e.text.clone();
    }
}

struct Note(u64);

impl Handle<Note> for Notes {
    type Error = std::convert::Infallible;
    fn handle(&self, c: &Note) -> Result<Vec<NoteEvent>, Self::Error> {
        Ok(vec![Noted {
            text: format!("note {} with spaces, colons: 3:x and a \0 byte", c.0),
            n: c.0,
        }
        .into()])
    }
}

fn server() -> &'static RedisServer {
    RedisServer::shared().unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(config: &RedisConfig) -> RedisEventStore {
    RedisEventStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn raw() -> ConnectionManager {
    server()
        .config("raw")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn list_length(raw: &mut ConnectionManager, key: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(key)
        .query_async(raw)
        .await
        .expect("LLEN")
}

/// The server's `XRANGE` calls so far (`INFO commandstats`).
async fn xrange_calls(raw: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xrange:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Writes `notes` events to `id` through `repository` (one command each).
async fn note<S: es_core::SnapshotStore>(repository: &Repository<Notes, S>, id: &str, notes: u64) {
    for n in 1..=notes {
        repository.execute(id, &Note(n)).await.expect("execute");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_reads_snapshot_and_tail_from_copies_without_the_stream() {
    // A server of its own: the test counts the server's XRANGE calls.
    let own = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let config = own.config(&unique_namespace("copies-load")).tail_copies(64);
    let store = connect(&config).await;
    let repository = Repository::<Notes, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(10))
        .without_cache();
    // Two aggregates' events interleave in the category stream.
    for n in 1..=25 {
        repository.execute("a", &Note(n)).await.expect("execute");
        repository.execute("b", &Note(n)).await.expect("execute");
    }
    let mut raw = own.config("raw").connect().await.expect("connect");
    let before = xrange_calls(&mut raw).await;
    let loaded = repository.load("a").await.expect("load");
    assert_eq!(
        xrange_calls(&mut raw).await,
        before,
        "no XRANGE: the tail came from copies"
    );
    assert_eq!(
        (loaded.version, loaded.state.count, loaded.state.sum),
        (25, 25, 325)
    );
    assert!(loaded.state.last.contains("3:x and a \0 byte"));

    // The copies read back exactly what the stream holds.
    let uncopied = connect(&own.config(config.keys().namespace())).await;
    let stream = StreamId::new("notes", "a");
    let from_copies = store
        .read_stream(&stream, &ReadRange::all().from_version(21))
        .await;
    let from_stream = uncopied
        .read_stream(&stream, &ReadRange::all().from_version(21))
        .await;
    assert_eq!(from_copies.expect("read"), from_stream.expect("read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_drop_the_copies_they_cover_and_the_bound_holds() {
    let config = server()
        .config(&unique_namespace("copies-trim"))
        .tail_copies(8);
    let store = connect(&config).await;
    let snapshotting = Repository::<Notes, _>::new(store.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(5));
    note(&snapshotting, "snapshotted", 12).await;
    let mut raw = raw().await;
    let tail = config.keys().tail(&StreamId::new("notes", "snapshotted"));
    assert_eq!(list_length(&mut raw, &tail).await, 2, "versions 11 and 12");

    let plain = Repository::<Notes, _>::new(store.clone());
    let tail = config.keys().tail(&StreamId::new("notes", "plain"));
    for n in 1..=30 {
        plain.execute("plain", &Note(n)).await.expect("execute");
        let held = list_length(&mut raw, &tail).await;
        assert!(held <= 8, "{held} copies after {n} events");
    }
    let loaded = Repository::<Notes, _>::new(store.clone())
        .load("plain")
        .await
        .expect("load");
    assert_eq!((loaded.version, loaded.state.sum), (30, 465));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_out_of_step_with_the_index_are_not_used() {
    let namespace = unique_namespace("copies-step");
    let copying = connect(&server().config(&namespace).tail_copies(64)).await;
    let uncopying = connect(&server().config(&namespace)).await;
    note(&Repository::<Notes, _>::new(copying.clone()), "a", 3).await;
    // Another process, without copies, appends version 4; then version 5 is copied again.
    Repository::<Notes, _>::new(uncopying.clone())
        .execute("a", &Note(4))
        .await
        .expect("execute");
    Repository::<Notes, _>::new(copying.clone())
        .execute("a", &Note(5))
        .await
        .expect("execute");
    let stream = StreamId::new("notes", "a");
    let expected = uncopying
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    for from in 1..=5 {
        let read = copying
            .read_stream(&stream, &ReadRange::all().from_version(from))
            .await
            .expect("read");
        assert_eq!(read, expected[from as usize - 1..], "from version {from}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_is_read_from_the_stream_instead() {
    let config = server()
        .config(&unique_namespace("copies-corrupt"))
        .tail_copies(64);
    let store = connect(&config).await;
    note(&Repository::<Notes, _>::new(store.clone()), "a", 3).await;
    let stream = StreamId::new("notes", "a");
    let mut raw = raw().await;
    let tail = config.keys().tail(&stream);
    let first: Vec<u8> = redis::cmd("LINDEX")
        .arg(&tail)
        .arg(1)
        .query_async(&mut raw)
        .await
        .expect("LINDEX");
    // Keep the id (so the copy is in step), break the copy after it.
    let id_end = first
        .iter()
        .position(|&b| b == b' ')
        .expect("a tail element");
    let mut corrupt = first[..=id_end].to_vec();
    corrupt.extend_from_slice(b"99:truncated");
    let _: () = redis::cmd("LSET")
        .arg(&tail)
        .arg(1)
        .arg(corrupt)
        .query_async(&mut raw)
        .await
        .expect("LSET");
    let uncopied = connect(&server().config(config.keys().namespace())).await;
    let expected = uncopied
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    let read = store
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read falls back to the stream");
    assert_eq!(read, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_several_pages_use_copies_page_by_page() {
    let namespace = unique_namespace("copies-pages");
    let copying = connect(&server().config(&namespace).tail_copies(64).page_size(3)).await;
    let uncopied = connect(&server().config(&namespace)).await;
    let repository = Repository::<Notes, _>::new(copying.clone())
        .with_snapshot_policy(SnapshotPolicy::EveryNEvents(4))
        .without_cache();
    for n in 1..=11 {
        repository.execute("a", &Note(n)).await.expect("execute");
        repository.execute("b", &Note(n)).await.expect("execute");
    }
    let stream = StreamId::new("notes", "a");
    let expected = uncopied
        .read_stream(&stream, &ReadRange::all())
        .await
        .expect("read");
    for from in 1..=11u64 {
        let read = copying
            .read_stream(&stream, &ReadRange::all().from_version(from))
            .await
            .expect("read");
        assert_eq!(read, expected[from as usize - 1..], "from version {from}");
    }
    // Time travel with copies: up to the timestamp of version 10.
    let until = expected[9].timestamp;
    let read = copying
        .read_stream(
            &stream,
            &ReadRange::all().from_version(9).until_millis(until),
        )
        .await
        .expect("read");
    let wanted: Vec<_> = expected[8..]
        .iter()
        .filter(|e| e.timestamp <= until)
        .cloned()
        .collect();
    assert_eq!(read, wanted);
    let loaded = repository.load("a").await.expect("load");
    assert_eq!((loaded.version, loaded.state.sum), (11, 66));
}
