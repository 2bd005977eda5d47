//! Re-driving dead letters after a fix ([`ProjectionControl::redrive`]), stopped and
//! running, on every backend.
//!
//! [`ProjectionControl::redrive`]: crate::projection::ProjectionControl::redrive

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::projection_cases::{append, names, options, pairs, registered, Backend, Input};
use crate::projection::{Projection, ProjectionRunner};
use crate::read_model::ReadModel;
use crate::{Position, RecordedEvent, StoreError};

/// Stores names; while `broken`, fails on names starting with `Poison`.
struct Fragile {
    model: ReadModel,
    broken: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Projection for Fragile {
    type Event = Input;
    type Error = StoreError;
    fn name(&self) -> &str {
        self.model.projection()
    }
    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec!["user".into()]
    }
    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.model)
    }
    async fn handle(&self, event: &RecordedEvent<Input>) -> Result<(), StoreError> {
        let Input::Registered(r) = &event.event else {
            return Ok(());
        };
        if self.broken.load(Ordering::SeqCst) && r.name.starts_with("Poison") {
            return Err(StoreError::InvalidRequest(format!(
                "cannot store {}",
                r.name
            )));
        }
        let _applied = self
            .model
            .update(event)
            .hset("names", &event.stream.id, r.name.as_str())
            .commit()
            .await?;
        Ok(())
    }
}

fn sorted(mut positions: Vec<Position>) -> Vec<Position> {
    positions.sort();
    positions
}

/// A re-drive before the fix keeps the dead letters and reports the new errors; after the
/// fix it hands them to the projection, stopped or running, and they are gone; a category
/// the projection does not read is refused.
pub async fn dead_letters_are_redriven_after_a_fix<B: Backend>(backend: B) {
    let first = append(&backend, "user", "1", &registered("Poison 1")).await;
    append(&backend, "user", "2", &registered("Fine")).await;
    let second = append(&backend, "user", "3", &registered("Poison 2")).await;
    let broken = Arc::new(AtomicBool::new(true));
    let fragile = Fragile {
        model: backend.read_model("fragile"),
        broken: broken.clone(),
    };
    let runner = ProjectionRunner::connect(&backend, fragile, options("c1").max_deliveries(1))
        .await
        .expect("runner");
    let stats = runner.run_once().await.expect("run");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    let poisoned = sorted(vec![first, second]);

    let report = runner.redrive("user").await.expect("redrive while broken");
    assert!(report.redriven.is_empty(), "{report:?}");
    let failing = sorted(report.still_failing.iter().map(|(p, _)| *p).collect());
    assert_eq!(failing, poisoned, "{report:?}");
    assert!(
        report
            .still_failing
            .iter()
            .all(|(_, error)| error.contains("cannot store Poison")),
        "{report:?}"
    );
    assert_eq!(runner.dead_letters("user").await.expect("letters").len(), 2);

    let refused = runner.redrive("elsewhere").await;
    assert!(
        matches!(&refused, Err(StoreError::InvalidRequest(m)) if m.contains("does not read category `elsewhere`")),
        "{refused:?}"
    );

    // Fixed, and re-driven while the projection runs, through the tools' handle.
    broken.store(false, Ordering::SeqCst);
    let running = runner.spawn();
    let control = running.control();
    assert_eq!(control.name(), "fragile");
    assert_eq!(control.categories(), vec![Cow::Borrowed("user")]);
    let report = control
        .redrive("user")
        .await
        .expect("redrive after the fix");
    assert_eq!(sorted(report.redriven.clone()), poisoned, "{report:?}");
    assert!(report.still_failing.is_empty(), "{report:?}");
    assert!(control
        .dead_letters("user")
        .await
        .expect("letters")
        .is_empty());
    let later = append(&backend, "user", "4", &registered("Later")).await;
    running
        .progress()
        .wait_for("user", later, Duration::from_secs(10))
        .await
        .expect("the running projection processes an event appended after the re-drive");
    let (runner, _) = running.stop().await.expect("stop");
    assert_eq!(
        names(&runner.projection().model).await,
        pairs(&[
            ("1", "Poison 1"),
            ("2", "Fine"),
            ("3", "Poison 2"),
            ("4", "Later")
        ])
    );
    let again = runner.redrive("user").await.expect("redrive again");
    assert_eq!(again, Default::default(), "nothing left to re-drive");
}
