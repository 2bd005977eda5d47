//! The scripts never pass a Lua number to Redis: Redis 7.2.0 to 7.2.4 write some Lua numbers
//! in exponent form (redis/redis#13113), which commands taking integers refuse. Each script
//! runs here behind a guard that fails any `redis.call` / `redis.pcall` given a number.

use es_redis::testing::{unique_namespace, RedisServer};
use redis::Value;

/// Shadows `redis` for the script that follows: its calls fail on a number argument.
const GUARD: &str = r"
local real = redis
local function checked(...)
  for i = 1, select('#', ...) do
    if type((select(i, ...))) == 'number' then
      error('argument ' .. i .. ' of ' .. tostring((select(1, ...))) .. ' is a Lua number')
    end
  end
end
local redis = setmetatable({
  call = function(...) checked(...) return real.call(...) end,
  pcall = function(...) checked(...) return real.pcall(...) end,
}, { __index = real })
";

const ENTRY_IDS: &str = include_str!("../src/scripts/entry_ids.lua");

async fn eval(script: &str, keys: &[&str], args: &[&[u8]]) -> Result<Value, redis::RedisError> {
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let mut connection = server
        .config(&unique_namespace("script-arguments"))
        .connect()
        .await
        .expect("connect");
    let source = format!("#!lua\n{GUARD}{ENTRY_IDS}{script}");
    let mut command = redis::cmd("EVAL");
    command.arg(source).arg(keys.len()).arg(keys).arg(args);
    command.query_async(&mut connection).await
}

#[tokio::test]
async fn the_guard_catches_a_number() {
    let error = eval(
        "return redis.call('LRANGE', KEYS[1], 0, -1)",
        &["guarded"],
        &[],
    )
    .await
    .expect_err("a number argument");
    assert!(error.to_string().contains("is a Lua number"), "{error}");
}

#[tokio::test]
async fn prune_applied_passes_no_numbers() {
    let key = format!("{}:{{rm:p}}:_applied:c", unique_namespace("prune"));
    // Members applied long ago (score 1 ms), at and past a watermark.
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let mut connection = server.config("admin").connect().await.expect("connect");
    let _: () = redis::cmd("ZADD")
        .arg(&key)
        .arg(1)
        .arg("1700000000000-1")
        .arg(1)
        .arg("1700000000001-0")
        .query_async(&mut connection)
        .await
        .expect("ZADD");
    let removed = eval(
        include_str!("../src/scripts/prune_applied.lua"),
        &[&key],
        &[b"1700000000000-5", b"0", b"10000"],
    )
    .await
    .expect("prune_applied under the guard");
    assert_eq!(
        removed,
        Value::Int(1),
        "the member at or below the watermark"
    );
}

#[tokio::test]
async fn append_passes_no_numbers() {
    let prefix = format!("{}:{{cart}}", unique_namespace("append"));
    let (stream, index, ids, record, aggregates) = (
        format!("{prefix}:events"),
        format!("{prefix}:index:c-1"),
        format!("{prefix}:appends:c-1"),
        format!("{prefix}:partitions"),
        format!("{prefix}:aggregates"),
    );
    let script = include_str!("../src/scripts/append.lua");
    for (expected, digest) in [(&b"0"[..], &b"abcdef"[..]), (b"2", b"ghijkl"), (b"", b"")] {
        let reply = eval(
            script,
            &[&stream, &index, &ids, &record, &aggregates],
            &[
                b"8",
                b"1",
                b"0",
                b"13",
                b"c-1",
                expected,
                digest,
                b"2",
                b"ItemAdded",
                b"1",
                b"sku",
                b"SKU-1",
                b"ItemAdded",
                b"1",
                b"sku",
                b"SKU-2",
                b"1",
            ],
        )
        .await
        .expect("append under the guard");
        let Value::Array(items) = reply else {
            panic!("a flat reply: {reply:?}");
        };
        assert_eq!(items[0], Value::BulkString(b"ok".to_vec()), "{items:?}");
    }
}

/// A several-event append followed, in the same call, by an append to another category:
/// each append writes only its own keys (with tail copies off, an append has no tail key,
/// so nothing may take the next append's stream for one).
#[tokio::test]
async fn appends_in_one_call_touch_only_their_own_keys() {
    let namespace = unique_namespace("append-batch");
    let (first, second) = (format!("{namespace}:{{a}}"), format!("{namespace}:{{b}}"));
    let keys = [
        format!("{first}:events"),
        format!("{first}:index:1"),
        format!("{first}:appends:1"),
        format!("{first}:partitions"),
        format!("{first}:aggregates"),
        format!("{second}:events"),
        format!("{second}:index:1"),
        format!("{second}:appends:1"),
        format!("{second}:partitions"),
        format!("{second}:aggregates"),
    ];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let reply = eval(
        include_str!("../src/scripts/append.lua"),
        &keys,
        &[
            b"8", b"2", b"0", // window, appends, no tail copies
            b"11", b"1", b"0", b"", b"2", b"Opened", b"0", b"Renamed", b"1", b"name", b"x",
            b"1", // the first append: its length, arguments and partition count
            b"7", b"1", b"0", b"", b"1", b"Opened", b"0", b"1", // the second
        ],
    )
    .await
    .expect("append");
    let Value::Array(items) = reply else {
        panic!("a flat reply: {reply:?}");
    };
    let statuses: Vec<&Value> = [&items[0], &items[5]].into();
    assert!(
        statuses
            .iter()
            .all(|s| **s == Value::BulkString(b"ok".to_vec())),
        "{items:?}"
    );
    let server = RedisServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let mut connection = server.config("admin").connect().await.expect("connect");
    let kind: String = redis::cmd("TYPE")
        .arg(keys[5])
        .query_async(&mut connection)
        .await
        .expect("TYPE");
    assert_eq!(kind, "stream", "the second category's stream");
}
