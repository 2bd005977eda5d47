//! Fault injection into the append script's group commit: a malformed or failing append,
//! first, in the middle or last of a call, fails alone with its own error, the others are
//! written, and afterwards every category entry is indexed by its aggregate (no orphan
//! entry) and every index element names an entry.

use std::collections::HashMap;

use es_redis::testing::{unique_namespace, RedisServer};
use redis::aio::ConnectionManager;
use redis::Value;

/// The append script exactly as the store loads it.
const APPEND: &str = concat!(
    "#!lua\n",
    include_str!("../src/scripts/entry_ids.lua"),
    include_str!("../src/scripts/append.lua")
);

const APPENDS: usize = 5;

/// How the bad append of a call is bad.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Its second event declares more field pairs than its arguments hold.
    PairCountBeyondItsArguments,
    /// Its append id digest is not 6 bytes.
    ShortDigest,
    /// It holds no event.
    NoEvents,
    /// Its index key holds a string (a corrupt layout).
    IndexOfTheWrongType,
    /// Its append-id hash holds a string (the append carries an id).
    AppendIdsOfTheWrongType,
    /// Its category stream key holds a string.
    StreamOfTheWrongType,
    /// It starts an aggregate in a partition whose record holds another partition count.
    AnotherPartitionCount,
    /// Its partition's set of aggregates holds a string.
    AggregatesOfTheWrongType,
}

struct Call {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

/// One call of `APPENDS` two-event appends to aggregates `a0…`, the one at `bad` broken by
/// `fault`.
fn call(prefix: &str, bad: usize, fault: Fault) -> Call {
    let mut keys = Vec::new();
    let mut args: Vec<Vec<u8>> = vec![
        b"8".to_vec(),
        APPENDS.to_string().into_bytes(),
        b"0".to_vec(),
    ];
    for a in 0..APPENDS {
        let id = format!("a{a}");
        let is_bad = a == bad;
        let stream = if is_bad && matches!(fault, Fault::StreamOfTheWrongType) {
            format!("{prefix}:broken-events")
        } else {
            format!("{prefix}:events")
        };
        let record = if is_bad && matches!(fault, Fault::AnotherPartitionCount) {
            format!("{prefix}:other-partitions")
        } else {
            format!("{prefix}:partitions")
        };
        keys.extend([
            stream,
            format!("{prefix}:index:{id}"),
            format!("{prefix}:appends:{id}"),
            record,
            if is_bad && matches!(fault, Fault::AggregatesOfTheWrongType) {
                format!("{prefix}:broken-aggregates")
            } else {
                format!("{prefix}:aggregates")
            },
        ]);
        let digest: Vec<u8> = match (is_bad, fault) {
            (true, Fault::ShortDigest) => b"abc".to_vec(),
            (true, Fault::AppendIdsOfTheWrongType) => b"abcdef".to_vec(),
            _ => Vec::new(),
        };
        let mut append: Vec<Vec<u8>> = vec![id.into_bytes(), Vec::new(), digest];
        if is_bad && matches!(fault, Fault::NoEvents) {
            append.push(b"0".to_vec());
        } else {
            append.push(b"2".to_vec());
            for e in 0..2 {
                append.push(b"Numbered".to_vec());
                let pairs =
                    if is_bad && e == 1 && matches!(fault, Fault::PairCountBeyondItsArguments) {
                        b"40".to_vec()
                    } else {
                        b"1".to_vec()
                    };
                append.push(pairs);
                append.push(b"n".to_vec());
                append.push(e.to_string().into_bytes());
            }
        }
        append.push(b"1".to_vec()); // the partition count, last
        args.push(append.len().to_string().into_bytes());
        args.extend(append);
    }
    Call { keys, args }
}

async fn connection() -> ConnectionManager {
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    server.config("admin").connect().await.expect("connect")
}

/// Per append: its status and, for an error, its message.
fn statuses(reply: Value) -> Vec<(String, String)> {
    let Value::Array(items) = reply else {
        panic!("a flat reply: {reply:?}");
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < items.len() {
        let status = text(&items[at]);
        let count = match &items[at + 2] {
            Value::Int(n) => *n as usize,
            other => panic!("a count: {other:?}"),
        };
        let message = if status == "error" {
            text(&items[at + 3])
        } else {
            String::new()
        };
        out.push((status, message));
        at += 3 + count;
    }
    out
}

/// Every entry of `stream` is the element of its version in its aggregate's index, and
/// every index element names an entry of the stream.
async fn assert_every_entry_is_indexed(connection: &mut ConnectionManager, prefix: &str) {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:events"))
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .expect("XRANGE");
    let mut indexed = 0;
    for a in 0..APPENDS {
        let index: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{prefix}:index:a{a}"))
            .arg(0)
            .arg(-1)
            .query_async(connection)
            .await
            .unwrap_or_default();
        for (version, id) in index.iter().enumerate().skip(1) {
            let entry = entries.iter().find(|(entry, _)| entry == id);
            let fields = entry
                .map(|(_, f)| f)
                .unwrap_or_else(|| panic!("index a{a} names {id}, which the stream does not hold"));
            assert_eq!(fields["aggregate_id"], format!("a{a}"));
            assert_eq!(fields["version"], version.to_string());
            indexed += 1;
        }
    }
    assert_eq!(
        indexed,
        entries.len(),
        "an entry no index names: {entries:?}"
    );
}

#[tokio::test]
async fn a_bad_append_fails_alone_first_in_the_middle_or_last_and_leaves_no_orphan() {
    let mut connection = connection().await;
    let faults = [
        Fault::PairCountBeyondItsArguments,
        Fault::ShortDigest,
        Fault::NoEvents,
        Fault::IndexOfTheWrongType,
        Fault::AppendIdsOfTheWrongType,
        Fault::StreamOfTheWrongType,
        Fault::AnotherPartitionCount,
        Fault::AggregatesOfTheWrongType,
    ];
    for fault in faults {
        for bad in [0, APPENDS / 2, APPENDS - 1] {
            let prefix = format!("{}:{{cat}}", unique_namespace("group-commit"));
            let call = call(&prefix, bad, fault);
            let corrupt = match fault {
                Fault::IndexOfTheWrongType => Some(format!("{prefix}:index:a{bad}")),
                Fault::AppendIdsOfTheWrongType => Some(format!("{prefix}:appends:a{bad}")),
                Fault::StreamOfTheWrongType => Some(format!("{prefix}:broken-events")),
                Fault::AggregatesOfTheWrongType => Some(format!("{prefix}:broken-aggregates")),
                _ => None,
            };
            if let Some(key) = &corrupt {
                let _: () = redis::cmd("SET")
                    .arg(key)
                    .arg("not what it should be")
                    .query_async(&mut connection)
                    .await
                    .expect("corrupt a key");
            }
            if let Fault::AnotherPartitionCount = fault {
                let _: () = redis::cmd("SET")
                    .arg(format!("{prefix}:other-partitions"))
                    .arg("4")
                    .query_async(&mut connection)
                    .await
                    .expect("record another count");
            }
            let reply: Value = redis::cmd("EVAL")
                .arg(APPEND)
                .arg(call.keys.len())
                .arg(&call.keys)
                .arg(&call.args)
                .query_async(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("{fault:?} at {bad}: the whole call failed: {e}"));
            let statuses = statuses(reply);
            assert_eq!(statuses.len(), APPENDS, "{fault:?} at {bad}: {statuses:?}");
            for (a, (status, message)) in statuses.iter().enumerate() {
                if a == bad {
                    let code = match fault {
                        Fault::AnotherPartitionCount => "ESPARTITIONS",
                        _ if corrupt.is_some() => "ESLAYOUT",
                        _ => "ESINVALID",
                    };
                    assert_eq!(status, "error", "{fault:?} at {bad}");
                    assert!(message.starts_with(code), "{fault:?} at {bad}: {message}");
                } else {
                    assert_eq!(status, "ok", "{fault:?} at {bad}, append {a}: {message}");
                }
            }
            assert_every_entry_is_indexed(&mut connection, &prefix).await;
            let written: u64 = redis::cmd("XLEN")
                .arg(format!("{prefix}:events"))
                .query_async(&mut connection)
                .await
                .expect("XLEN");
            assert_eq!(
                written as usize,
                2 * (APPENDS - 1),
                "{fault:?} at {bad}: the good appends' events"
            );
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(format!("{prefix}:aggregates"))
                .arg("-")
                .arg("+")
                .query_async(&mut connection)
                .await
                .expect("XRANGE");
            let listed: Vec<String> = entries
                .into_iter()
                .map(|(_, pairs)| pairs[0].1.clone())
                .collect();
            let good: Vec<String> = (0..APPENDS)
                .filter(|a| *a != bad)
                .map(|a| format!("a{a}"))
                .collect();
            assert_eq!(listed, good, "{fault:?} at {bad}: the aggregates listed");
        }
    }
}

/// Arguments whose lengths do not add up cannot be split into appends: the whole call is
/// refused, and nothing is written.
#[tokio::test]
async fn arguments_whose_lengths_do_not_add_up_write_nothing() {
    let mut connection = connection().await;
    let prefix = format!("{}:{{cat}}", unique_namespace("group-commit-lengths"));
    let mut call = call(&prefix, 0, Fault::NoEvents);
    // The last append (a good one: its length, 4 arguments of its own, two events of 4 and
    // its partition count) claims more arguments than there are.
    let last_length = call.args.len() - 14;
    assert_eq!(call.args[last_length], b"13");
    call.args[last_length] = b"99".to_vec();
    let refused: Result<Value, _> = redis::cmd("EVAL")
        .arg(APPEND)
        .arg(call.keys.len())
        .arg(&call.keys)
        .arg(&call.args)
        .query_async(&mut connection)
        .await;
    let error = refused.expect_err("lengths that do not add up");
    assert!(error.to_string().contains("ESINVALID"), "{error}");
    let written: u64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:events"))
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(written, 0);
}
