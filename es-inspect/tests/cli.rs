//! The CLI's views, printed as an application's binary prints them.

mod support;

use std::time::Duration;

use clap::Parser;
use es_core::{InMemoryStore, Metadata};
use es_inspect::{Cli, Inspector};
use support::*;

/// Runs the command line `args` against `inspector`; its output.
async fn run(inspector: Inspector, args: &[&str]) -> Result<String, es_inspect::InspectError> {
    let cli = Cli::try_parse_from(std::iter::once("inspect").chain(args.iter().copied()))
        .expect("valid arguments");
    let mut out = Vec::new();
    inspector.run_command(cli.command, &mut out).await?;
    Ok(String::from_utf8(out).expect("UTF-8"))
}

async fn inspector() -> (InMemoryStore, Inspector) {
    let store = InMemoryStore::new();
    seed(&store).await;
    let inspector = Inspector::new(store.clone()).aggregate::<User>();
    (store, inspector)
}

#[tokio::test]
async fn categories_aggregates_and_events_are_listed() {
    let (_, inspector) = inspector().await;
    let categories = run(inspector.clone(), &["categories"])
        .await
        .expect("categories");
    assert!(categories.starts_with("user"), "{categories}");
    assert!(categories.contains("4 events"), "{categories}");
    let ids = run(inspector.clone(), &["aggregates", "user", "--limit", "1"])
        .await
        .expect("aggregates");
    let (first, more) = ids.split_once('\n').expect("two lines");
    assert_eq!(first, "duffy", "in the order they started: {ids}");
    let cursor = more
        .strip_prefix("(more: --after \"")
        .and_then(|rest| rest.strip_suffix("\")\n"))
        .unwrap_or_else(|| panic!("a cursor to continue after: {ids}"));
    let rest = run(
        inspector.clone(),
        &["aggregates", "user", "--after", cursor],
    )
    .await
    .expect("the next page");
    assert!(rest.starts_with("bugs\n"), "{rest}");
    let events = run(inspector, &["events", "user", "duffy", "--from", "2"])
        .await
        .expect("events");
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "two events, each with its metadata: {events}"
    );
    assert!(
        lines[0].starts_with("v2") && lines[0].contains("EmailUpdated  email=\"duffy@acme.test\""),
        "{events}"
    );
    assert_eq!(lines[1].trim(), "metadata: by=\"duffy\"");
    assert!(lines[2].starts_with("v3"), "{events}");
}

#[tokio::test]
async fn replay_prints_each_event_then_the_state_after_it() {
    let (_, inspector) = inspector().await;
    let replay = run(
        inspector.clone(),
        &["replay", "user", "duffy", "--version", "2"],
    )
    .await
    .expect("replay");
    let expected = ["initial state", "      name = \"\"", "      surname = \"\""];
    let lines: Vec<&str> = replay.lines().collect();
    assert_eq!(&lines[..3], expected, "{replay}");
    assert!(
        lines[3].starts_with("v1") && lines[3].contains("Registered"),
        "{replay}"
    );
    assert_eq!(lines[4].trim(), "metadata: correlation_id=\"signup-1\"");
    assert_eq!(
        &lines[5..7],
        ["    * name = \"Duffy\"", "    * surname = \"Duck\""]
    );
    assert!(lines[7].starts_with("v2"), "{replay}");
    assert_eq!(
        lines.last(),
        Some(&"    * email = \"duffy@acme.test\""),
        "{replay}"
    );
    assert!(!replay.contains("v3"), "stops at version 2: {replay}");

    let now = run(
        inspector.clone(),
        &["replay", "user", "duffy", "--as-of", "2999-01-01T00:00:00Z"],
    )
    .await
    .expect("replay as of a time");
    assert!(now.contains("duffy.duck@acme.test"), "{now}");
    let before = run(inspector, &["replay", "user", "duffy", "--as-of", "1"])
        .await
        .expect("replay as of the epoch");
    assert!(!before.contains("v1"), "nothing stored by then: {before}");

    let both = Cli::try_parse_from([
        "inspect",
        "replay",
        "user",
        "duffy",
        "--as-of",
        "1",
        "--version",
        "1",
    ]);
    let error = both
        .expect_err("--as-of and --version together")
        .to_string();
    assert!(error.contains("cannot be used with"), "{error}");
}

#[tokio::test]
async fn projections_dead_letters_and_redrive() {
    let store = InMemoryStore::new();
    let (runner, broken) = poisoned_projection(&store).await;
    let read_only = Inspector::new(store.clone()).projection(runner.control());
    let projections = run(read_only.clone(), &["projections"])
        .await
        .expect("projections");
    assert!(projections.starts_with("emails"), "{projections}");
    assert!(
        projections.contains("pending 0") && projections.contains("dead letters 1"),
        "{projections}"
    );
    let letters = run(read_only.clone(), &["dead-letters", "emails"])
        .await
        .expect("letters");
    assert!(
        letters.contains("EmailUpdated after 1 attempt(s)")
            && letters.contains("cannot send to daisy@poison.test"),
        "{letters}"
    );
    let refused = run(read_only, &["redrive", "emails"]).await;
    assert!(
        matches!(refused, Err(es_inspect::InspectError::Forbidden(_))),
        "{refused:?}"
    );
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let writable = Inspector::new(store.clone())
        .projection(runner.control())
        .allow_writes(true);
    let report = run(writable.clone(), &["redrive", "emails"])
        .await
        .expect("redrive");
    assert_eq!(report, "re-driven: 1\n");
    let letters = run(writable, &["dead-letters", "emails"])
        .await
        .expect("letters");
    assert_eq!(letters, "");
}

#[tokio::test]
async fn tail_prints_what_comes_next() {
    let (store, inspector) = inspector().await;
    let inspector = inspector.tail_poll(Duration::from_millis(5));
    let tail = tokio::spawn(run(inspector, &["tail", "user", "--limit", "1"]));
    // The tail starts after what is stored when it starts: keep appending until it prints
    // (an event appended before it looked is not new to it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tail.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the tail printed nothing within 10 s"
        );
        let registered = Registered {
            name: "Porky".into(),
            surname: "Pig".into(),
        };
        append(&store, "porky", registered, Metadata::new()).await;
        // Paces the appends while polling the task, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let printed = tail.await.expect("the tail's task").expect("tail");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[0], "porky", "{printed}");
    assert!(
        lines[1].contains("Registered  name=\"Porky\" surname=\"Pig\""),
        "{printed}"
    );
}
