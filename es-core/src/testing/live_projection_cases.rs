//! The projection conformance cases with running (spawned) runners: progress, stopping,
//! status, and several runners of one projection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::projection_cases::{append, options, registered, Backend, Gate, Kicked, Profiles};
use crate::projection::{ProjectionRunner, ProjectionStatus};
use crate::Position;

/// Polls `condition` every 5 ms until it holds; fails naming `what` after 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "awaited {what} for 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A spawned runner delivers new events, and `Progress::wait_for` returns once they are
/// processed (and times out for a position never reached). Stopping while a batch is held
/// in the handler finishes that batch and acknowledges it: nothing is left pending, and
/// the rest is delivered later.
pub async fn progress_waits_for_new_events_and_stop_finishes_the_batch_in_hand<B: Backend>(
    backend: B,
) {
    let mut profiles = Profiles::new(&backend, "live");
    let gate = Arc::new(Gate::default());
    gate.open(); // the first part runs freely
    profiles.gate = Some(gate);
    let runner = ProjectionRunner::connect(&backend, profiles, options("c1"))
        .await
        .expect("runner");
    let mut progress = runner.progress();
    let model = runner.projection().model.clone();
    let running = runner.spawn();
    let mut last = Position::ZERO;
    for n in 0..30 {
        last = append(
            &backend,
            "user",
            &format!("u{n}"),
            &registered(&format!("n{n}")),
        )
        .await;
    }
    progress
        .wait_for("user", last, Duration::from_secs(10))
        .await
        .expect("processed");
    assert_eq!(model.hash("names").await.expect("names").len(), 30);
    let never = Position::new(u64::MAX, 0);
    let timeout = progress
        .wait_for("user", never, Duration::from_millis(30))
        .await;
    assert!(timeout.is_err(), "a position never reached");
    let (runner, _) = running.stop().await.expect("stop");

    // Again, with the next batch held in the handler while the runner is told to stop.
    let mut profiles = Profiles::new(&backend, "live");
    let gate = Arc::new(Gate::default());
    profiles.gate = Some(gate.clone());
    drop(runner);
    let runner = ProjectionRunner::connect(&backend, profiles.clone(), options("c1"))
        .await
        .expect("runner");
    let running = runner.spawn();
    for n in 30..60 {
        append(
            &backend,
            "user",
            &format!("u{n}"),
            &registered(&format!("n{n}")),
        )
        .await;
    }
    eventually("a batch held in the handler", || gate.entered()).await;
    let stopping = tokio::spawn(running.stop());
    gate.open();
    let (runner, stats) = stopping.await.expect("join").expect("stop");
    let held = profiles.events_handled();
    assert!(held >= 1, "the batch in hand was handled: {stats:?}");
    assert!(stats.handled >= held as u64, "{stats:?}, {held} handled");
    let status = runner.status().await.expect("status");
    assert!(
        status.iter().all(|s| s.pending == 0),
        "stop acknowledged its batch: {status:?}"
    );
    runner.run_once().await.expect("the rest");
    assert_eq!(model.hash("names").await.expect("names").len(), 60);
}

/// Status reports what is left to deliver, and an event whose handler failed stays
/// pending (and holds the watermark below it) until it is delivered again.
pub async fn status_reports_lag_and_pending<B: Backend>(backend: B) {
    let mut profiles = Profiles::new(&backend, "lagging");
    profiles.poison = vec!["poison".into()];
    let runner = ProjectionRunner::connect(
        &backend,
        profiles,
        options("c1")
            .max_deliveries(5)
            .claim_idle(Duration::from_secs(3600)),
    )
    .await
    .expect("runner");
    runner.prepare().await.expect("prepare");
    let user = |statuses: Vec<ProjectionStatus>| {
        let partitions: Vec<ProjectionStatus> = statuses
            .into_iter()
            .filter(|s| s.category == "user")
            .collect();
        ProjectionStatus::combine("user", &partitions)
    };
    let mut last = Position::ZERO;
    for n in 0..5 {
        last = append(&backend, "user", "1", &registered(&format!("n{n}"))).await;
    }
    let before = user(runner.status().await.expect("status"));
    assert_eq!((before.lag, before.pending), (Some(5), 0), "{before:?}");
    assert!(!before.has_processed(last));
    runner.run_once().await.expect("run");
    let after = user(runner.status().await.expect("status"));
    assert_eq!((after.lag, after.pending), (Some(0), 0), "{after:?}");
    assert!(after.has_processed(last), "{after:?}");

    // A failing event, not to be reclaimed for an hour: pending, and in the way.
    let poison = append(&backend, "user", "1", &registered("poison")).await;
    let running = runner.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = user(running.status().await.expect("status"));
        if status.pending == 1 && status.lag == Some(0) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "awaited one pending event: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(status.has_processed(last), "{status:?}");
    assert!(!status.has_processed(poison), "{status:?}");
    let (_, stats) = running.stop().await.expect("stop");
    assert_eq!(stats.failed, 1, "{stats:?}");
}

/// Where the backend supports competing consumers, two runners of one projection share
/// the work (one holds a batch while the other handles the rest); where it does not, each
/// runner keeps its own position and handles every event. Either way the read model
/// applies each event once.
pub async fn competing_consumers_share_the_work<B: Backend>(backend: B) {
    let shared = Profiles::new(&backend, "shared");
    let mut first = shared.clone().counted_apart();
    let gate = Arc::new(Gate::default());
    first.gate = Some(gate.clone());
    let second = shared.clone().counted_apart();
    let probe = second.clone();
    let a = ProjectionRunner::connect(&backend, first, options("a"))
        .await
        .expect("a");
    let b = ProjectionRunner::connect(&backend, second, options("b"))
        .await
        .expect("b");
    let competing = a.capabilities().competing_consumers;
    if !competing {
        gate.open();
    }
    let (mut progress_a, mut progress_b) = (a.progress(), b.progress());
    let (a, b) = (a.spawn(), b.spawn());
    let mut last = Position::ZERO;
    let mut n = 0;
    if competing {
        // Until the first runner holds a batch; then the rest can only go to the second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gate.entered() {
            assert!(Instant::now() < deadline, "awaited a batch for runner a");
            last = append(
                &backend,
                "activity",
                &format!("u{}", n % 7),
                &Kicked { times: 1 },
            )
            .await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while n < 100 {
        last = append(
            &backend,
            "activity",
            &format!("u{}", n % 7),
            &Kicked { times: 1 },
        )
        .await;
        n += 1;
    }
    if competing {
        eventually("runner b handling events while a holds its batch", || {
            probe.events_handled() > 0
        })
        .await;
        gate.open();
    }
    let timeout = Duration::from_secs(20);
    progress_a
        .wait_for("activity", last, timeout)
        .await
        .expect("processed (a)");
    progress_b
        .wait_for("activity", last, timeout)
        .await
        .expect("processed (b)");
    let ((_, a), (_, b)) = (a.stop().await.expect("a"), b.stop().await.expect("b"));
    if competing {
        assert!(a.handled > 0 && b.handled > 0, "both worked: {a:?} {b:?}");
        assert!(a.handled + b.handled >= n as u64, "{a:?} {b:?}");
    } else {
        let all = n as u64;
        assert_eq!(
            (a.handled, b.handled),
            (all, all),
            "each runner handles every event"
        );
    }
    let kicks = shared.model.hash("kicks").await.expect("kicks");
    let total: i64 = kicks
        .values()
        .map(|v| String::from_utf8_lossy(v).parse::<i64>().expect("n"))
        .sum();
    assert_eq!(total, n as i64, "each event applied once");
}
