//! The read-model case of the projection conformance suite: exactly-once commits, all or
//! nothing, and the writes every backend refuses.

use super::projection_cases::{append, Backend, Input, Kicked};
use crate::read_model::Applied;
use crate::{Position, RecordedEvent, StoreError};

/// Read-model commits apply each event once, all or nothing, and refuse what no backend
/// can apply.
pub async fn read_models_apply_each_event_exactly_once<B: Backend>(backend: B) {
    let model = backend.read_model("counts");
    let positions = [
        append(&backend, "user", "1", &Kicked { times: 1 }).await,
        append(&backend, "user", "1", &Kicked { times: 1 }).await,
    ];
    let events = backend
        .read_category("user", Position::ZERO, 10)
        .await
        .expect("read");
    let event = |n: usize| events[n].clone().decode::<Input>().expect("decode");
    assert_eq!(events[1].position, positions[1]);
    let first = event(0);
    let apply = || {
        model
            .update(&first)
            .hincrby("totals", "n", 1)
            .hset("totals", "last", "1")
    };
    assert_eq!(apply().commit().await.expect("commit"), Applied::Applied);
    assert_eq!(
        apply().commit().await.expect("again"),
        Applied::AlreadyApplied
    );
    let second = event(1);
    let mut batch = model.batch();
    batch.push(model.update(&first).hincrby("totals", "n", 100));
    batch.push(
        model
            .update(&second)
            .hincrby("totals", "n", 1)
            .hdel("totals", "last"),
    );
    batch.push(model.update(&second).hincrby("totals", "n", 100));
    let outcomes = batch.commit().await.expect("batch");
    assert_eq!(
        outcomes,
        [
            Applied::AlreadyApplied,
            Applied::Applied,
            Applied::AlreadyApplied
        ]
    );
    let totals = model.hash("totals").await.expect("totals");
    assert_eq!(totals.get("n").map(Vec::as_slice), Some(&b"2"[..]));
    assert!(!totals.contains_key("last"), "{totals:?}");
    assert_eq!(model.applied_count("user").await.expect("count"), 2);

    // One refused write fails the whole batch: nothing is written or recorded.
    let third = RecordedEvent {
        position: positions[1].next(),
        ..second.clone()
    };
    let fourth = RecordedEvent {
        position: positions[1].next().next(),
        ..second.clone()
    };
    let fifth = RecordedEvent {
        position: fourth.position.next(),
        ..second.clone()
    };
    let _ = model
        .update(&third)
        .hset("totals", "text", "x")
        .commit()
        .await
        .expect("text");
    let mut batch = model.batch();
    batch.push(model.update(&fourth).hset("other", "touched", "yes"));
    batch.push(model.update(&fifth).hincrby("totals", "text", 1));
    let refused = batch.commit().await.expect_err("not an integer");
    assert!(
        matches!(refused, StoreError::InvalidRequest(_)),
        "{refused}"
    );
    assert!(model.hash("other").await.expect("other").is_empty());
    assert_eq!(model.applied_count("user").await.expect("count"), 3);
    let beyond = model
        .update(&fourth)
        .hincrby("totals", "n", 1 << 53)
        .commit()
        .await;
    assert!(
        matches!(beyond, Err(StoreError::InvalidRequest(_))),
        "{beyond:?}"
    );
    // Names starting with `_` are the backend's; another read model's update is refused.
    let reserved = model
        .update(&fourth)
        .hset("_applied", "x", "y")
        .commit()
        .await;
    assert!(
        matches!(reserved, Err(StoreError::InvalidRequest(_))),
        "{reserved:?}"
    );
    let elsewhere = backend.read_model("elsewhere");
    let mut batch = model.batch();
    batch.push(elsewhere.update(&fourth).hset("x", "y", "z"));
    assert!(matches!(
        batch.commit().await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(model.batch().commit().await.expect("empty").is_empty());
    assert_eq!(model.hashes().await.expect("all").len(), 1, "only `totals`");
    assert!(model.clear().await.expect("clear") > 0);
    assert!(model.hashes().await.expect("all").is_empty());
    assert_eq!(model.applied_count("user").await.expect("count"), 0);
}
