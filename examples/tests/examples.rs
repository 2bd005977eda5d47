//! Every example runs against a test-spawned redis-server, a test-spawned PostgreSQL and in
//! memory, and prints its key lines; an unreachable server is a clear message and exit
//! status 1, not a panic; bad arguments are clap's error and exit status 2.

mod support;

use std::process::{Command, Output};

use support::example;

use es_redis::testing::{unique_namespace, RedisServer};

fn run(name: &str, args: &[&str]) -> (Output, String) {
    let output = Command::new(example(name))
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("POSTGRES_URL")
        .output()
        .expect("run example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

fn assert_ok(name: &str, args: &[&str], expected_lines: &[&str]) -> String {
    let (output, stdout) = run(name, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} {args:?} failed:\n{stdout}\n{stderr}"
    );
    for line in expected_lines {
        assert!(
            stdout.contains(line),
            "{name} {args:?}: no {line:?} in:\n{stdout}"
        );
    }
    stdout
}

fn redis_args(label: &str) -> Vec<String> {
    let server = RedisServer::shared().expect("redis-server for the examples");
    vec![
        "--redis-url".into(),
        server.url(),
        "--namespace".into(),
        unique_namespace(label),
    ]
}

const BANK_LINES: &[&str] = &[
    "carol's account is closed: a deposit was refused",
    "final balances equal the sum of accepted commands",
    // Tellers sharing one repository never conflict: it serialises commands per account.
    "320 commands from 8 concurrent tellers through one repository: 0 version conflicts caught up and retried",
    "320 commands from 8 concurrent tellers through two repositories:",
    "withdrawals refused (no overdraft)",
];

const REBUILD_LINES: &[&str] = &[
    "rebuilt state of user 42 (version 4): {name: Duffy, email: d.duck@looney.test}",
    "as of version 2: {name: Duffy, email: duffy@acme.test}",
    "(when v3 was stored): version 3, {name: Duffy, email: duck@acme.test}",
];

#[test]
fn bank_in_memory() {
    assert_ok("bank", &["--in-memory"], BANK_LINES);
}

#[test]
fn bank_on_redis() {
    let args = redis_args("bank");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = assert_ok("bank", &args, BANK_LINES);
    assert!(
        stdout.contains("backend: Redis at redis://127.0.0.1:"),
        "{stdout}"
    );
}

#[test]
fn rebuild_state_in_memory() {
    assert_ok("rebuild_state", &["--in-memory"], REBUILD_LINES);
}

#[test]
fn rebuild_state_on_redis() {
    let args = redis_args("rebuild");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok("rebuild_state", &args, REBUILD_LINES);
}

const SOCIAL_LINES: &[&str] = &[
    "user_updates",
    "type Registered name Duffy surname Duck",
    "type Kicked object Bugs",
    "type FriendRemoved friend_id 2",
    "rejected: user 1 removes friend 2 again: command rejected: not friends",
    "user_snapshot_1: dislikes=1 friends=0 kicks=1 name=Daffy surname=Duck",
    "user_snapshot_2: friends=1 name=Bugs surname=Bunny",
    // One projection, the same on both backends.
    "projection `profiles` (worker-1) handled 8 events",
];

#[test]
fn social_profile_in_memory() {
    assert_ok("social_profile", &["--in-memory"], SOCIAL_LINES);
}

#[test]
fn social_profile_on_redis() {
    let args = redis_args("social");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = assert_ok("social_profile", &args, SOCIAL_LINES);
    for line in ["HGETALL", "XINFO GROUPS", ":{rm:profiles}:user_snapshot_1"] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

/// The pre-deploy check over what a social_profile run stored: every entry decodes; and an
/// entry of a shape this build cannot read is reported, with a failing exit status.
#[test]
fn social_profile_check_reads_everything_the_run_stored() {
    let args = redis_args("social-check");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok("social_profile", &args, SOCIAL_LINES);
    let mut check = args.clone();
    check.push("--check");
    assert_ok(
        "social_profile",
        &check,
        &[
            "category `user_updates`: 3 entries checked, 0 undecodable",
            "category `user_activity`: 2 entries checked, 0 undecodable",
            "category `user_friends`: 3 entries checked, 0 undecodable",
            "every stored event decodes with this build",
        ],
    );
    // An entry of an older shape, written by hand.
    let server = RedisServer::shared().expect("redis-server");
    let namespace = args[3];
    let stream = format!("{namespace}:{{user_activity}}:events");
    let status = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "XADD", &stream, "*"])
        .args([
            "type",
            "Kicked",
            "aggregate_id",
            "9",
            "version",
            "1",
            "whom",
            "Bugs",
        ])
        .output()
        .expect("redis-cli");
    assert!(status.status.success(), "{status:?}");
    let (output, stdout) = run("social_profile", &check);
    assert!(!output.status.success(), "the check fails: {stdout}");
    assert!(
        stdout.contains("category `user_activity`: 3 entries checked, 1 undecodable")
            && stdout.contains("field `object` is missing"),
        "{stdout}"
    );
}

#[test]
fn quickstart_runs() {
    assert_ok(
        "quickstart",
        &[],
        &["user 1 at version 3", "rejected: command rejected"],
    );
}

#[test]
fn unreachable_redis_is_a_clear_error_not_a_panic() {
    // Port 1 on loopback: nothing listens there.
    let (output, _) = run("bank", &["--redis-url", "redis://127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach Redis at redis://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("--in-memory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_arguments_are_reported() {
    let (output, _) = run("bank", &["--frobnicate"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unexpected argument '--frobnicate' found"),
        "{stderr}"
    );
}

/// `--help` is clap's: every flag with what it does, its default and the variable it reads.
#[test]
fn help_describes_every_flag() {
    let (output, stdout) = run("bank", &["--help"]);
    assert!(output.status.success(), "{stdout}");
    for flag in [
        "--redis-url",
        "--in-memory",
        "--postgres-url",
        "--read-model-url",
        "--namespace",
        "--check",
        "--inspect <ADDR>",
        "[env: REDIS_URL=",
        "[default: redis://127.0.0.1:6379]",
    ] {
        assert!(stdout.contains(flag), "no {flag:?} in:\n{stdout}");
    }
}

fn postgres_url() -> String {
    es_postgres::testing::PostgresServer::shared()
        .expect("PostgreSQL for the examples")
        .url()
}

fn postgres_args(label: &str) -> Vec<String> {
    vec![
        "--postgres-url".into(),
        postgres_url(),
        "--namespace".into(),
        unique_namespace(label),
    ]
}

#[test]
fn bank_on_postgres() {
    let args = postgres_args("bank-pg");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok("bank", &args, BANK_LINES);
}

#[test]
fn rebuild_state_on_postgres() {
    let args = postgres_args("rebuild-pg");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_ok("rebuild_state", &args, REBUILD_LINES);
}

#[test]
fn social_profile_on_postgres() {
    let args = postgres_args("social-pg");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = assert_ok(
        "social_profile",
        &args,
        &["look at the same data with psql:"],
    );
    assert!(stdout.contains("user_snapshot_1:"), "{stdout}");
}

const SQL_READ_MODEL_LINES: &[&str] = &[
    "daisy: refused: command rejected: insufficient funds: 2500 < 9999",
    "  daisy     2500",
    "  duffy     8450",
    "4 movements recorded",
    "look at the read model with psql:",
];

/// The seed's CQRS split: events in Redis, the read model in PostgreSQL.
#[test]
fn sql_read_model_on_redis_and_postgres() {
    let mut args = redis_args("sql-read-model");
    args.extend(["--read-model-url".to_owned(), postgres_url()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = assert_ok("sql_read_model", &args, SQL_READ_MODEL_LINES);
    assert!(
        stdout.contains("and the events with redis-cli:"),
        "{stdout}"
    );
}

#[test]
fn sql_read_model_in_memory() {
    let url = postgres_url();
    let namespace = unique_namespace("sql-read-model-memory");
    assert_ok(
        "sql_read_model",
        &[
            "--in-memory",
            "--read-model-url",
            &url,
            "--namespace",
            &namespace,
        ],
        SQL_READ_MODEL_LINES,
    );
}

#[test]
fn unreachable_postgres_is_one_line_and_exit_1() {
    let (output, _) = run(
        "bank",
        &["--postgres-url", "postgres://postgres@127.0.0.1:1/postgres"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach PostgreSQL at postgres://postgres@127.0.0.1:1/postgres"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
