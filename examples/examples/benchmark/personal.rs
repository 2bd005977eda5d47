//! P8: what personal fields cost per event: an event of four fields, two of them personal
//! (sealed with XChaCha20-Poly1305 under the subject's key), encoded and sealed, opened and
//! decoded, against the same event with four plain fields.

use std::hint::black_box;

use es_core::codec::Fields;
use es_core::personal::{open_fields, seal_fields, SubjectKey};
use es_core::Event;

use crate::common::*;
use crate::loads::time_each;

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Registered")]
struct Plain {
    name: String,
    email: String,
    plan: String,
    referrer: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
#[event(rename = "Registered")]
struct Personal {
    #[event(personal)]
    name: String,
    #[event(personal)]
    email: String,
    plan: String,
    referrer: String,
}

fn fields<E: Event>(event: &E) -> Fields {
    let mut fields = Fields::new();
    event.encode(&mut fields).expect("encodes");
    fields
}

pub(crate) fn p8_personal(sizes: &Sizes) -> Vec<Row> {
    let plain = Plain {
        name: "Duffy Duck".into(),
        email: "duffy.duck@acme.test".into(),
        plan: "pro".into(),
        referrer: "bugs".into(),
    };
    let personal = Personal {
        name: plain.name.clone(),
        email: plain.email.clone(),
        plan: plain.plan.clone(),
        referrer: plain.referrer.clone(),
    };
    let key = SubjectKey::generate(1);
    let n = sizes.p5_iterations / 4;
    let encode_plain = time_each(n, || {
        black_box(fields(black_box(&plain)));
    });
    let encode_sealed = time_each(n, || {
        black_box(seal_fields(&key, "duffy", fields(black_box(&personal))).expect("seals"));
    });
    let stored_plain = fields(&plain);
    let stored_sealed = seal_fields(&key, "duffy", fields(&personal)).expect("seals");
    let decode_plain = time_each(n, || {
        black_box(Plain::decode("Registered", black_box(&stored_plain)).expect("decodes"));
    });
    let decode_sealed = time_each(n, || {
        let opened =
            open_fields(Some(&key), "duffy", black_box(stored_sealed.clone())).expect("opens");
        black_box(Personal::decode("Registered", &opened).expect("decodes"));
    });
    let row = |what: &str, ours: std::time::Duration, theirs: std::time::Duration| Row {
        id: "P8",
        what: what.to_owned(),
        framework: format!("{:.0} ns", ours.as_secs_f64() * 1e9),
        raw: format!("{:.0} ns (4 plain fields)", theirs.as_secs_f64() * 1e9),
        ratio: Some(ours.as_secs_f64() / theirs.as_secs_f64()),
        ratio_means: "× the time",
        target: Target::None,
    };
    vec![
        row(
            "encode and seal an event, 2 of 4 fields personal",
            encode_sealed,
            encode_plain,
        ),
        row(
            "open and decode an event, 2 of 4 fields personal",
            decode_sealed,
            decode_plain,
        ),
    ]
}

/// P8 on Redis: 50 appenders, each appending events of 4 fields one at a time to its own
/// aggregate, then loading it (a read of its 10 newest events), 2 of the 4 fields personal
/// through a `Shredded` store with `RedisKeys`, against the same events with 4 plain fields
/// through the plain store, alternating.
pub(crate) async fn p8_personal_on_redis(
    sizes: &Sizes,
    store: &es_redis::RedisEventStore,
) -> Result<Vec<Row>, BoxError> {
    use es_core::personal::Shredded;
    use es_core::{EventStore, ExpectedVersion, Metadata, NewEvent, ReadRange, StreamId};
    use std::sync::Arc;

    let shredded = Arc::new(Shredded::new(
        store.clone(),
        es_redis::RedisKeys::new(store),
    ));
    let plain_store = Arc::new(store.clone());
    let per_task = sizes.p1_appends;
    let mut best = [[f64::MAX; 2]; 2]; // [plain, personal][append, load] seconds
    for round in 0..sizes.rounds {
        for personal in [false, true] {
            let prefix = format!("p8-{round}-{personal}");
            let (stores, plains) = (shredded.clone(), plain_store.clone());
            let append = move |task: usize, i: usize| {
                let (shredded, plain_store) = (stores.clone(), plains.clone());
                let stream = StreamId::new("profile", format!("{prefix}-{task}"));
                async move {
                    let expected = ExpectedVersion::Exact(i as u64);
                    if personal {
                        let event = Personal {
                            name: format!("Duffy {i}"),
                            email: format!("duffy{i}@acme.test"),
                            plan: "pro".into(),
                            referrer: "bugs".into(),
                        };
                        let new = NewEvent::encode(&event, Metadata::new())?;
                        shredded
                            .append(&stream, expected, vec![new], &Default::default())
                            .await?;
                    } else {
                        let event = Plain {
                            name: format!("Duffy {i}"),
                            email: format!("duffy{i}@acme.test"),
                            plan: "pro".into(),
                            referrer: "bugs".into(),
                        };
                        let new = NewEvent::encode(&event, Metadata::new())?;
                        plain_store
                            .append(&stream, expected, vec![new], &Default::default())
                            .await?;
                    }
                    Ok(())
                }
            };
            let (elapsed, _) = concurrently(CONCURRENCY, per_task, append).await?;
            let slot = &mut best[usize::from(personal)];
            slot[0] = slot[0].min(elapsed.as_secs_f64());
            let prefix = format!("p8-{round}-{personal}");
            let (stores, plains) = (shredded.clone(), plain_store.clone());
            let from = per_task.saturating_sub(10) as u64 + 1;
            let load = move |task: usize, _: usize| {
                let (shredded, plain_store) = (stores.clone(), plains.clone());
                let stream = StreamId::new("profile", format!("{prefix}-{task}"));
                async move {
                    let range = ReadRange::all().from_version(from);
                    if personal {
                        let events = shredded.read_stream(&stream, &range).await?;
                        for event in events {
                            black_box(event.decode::<Personal>()?);
                        }
                    } else {
                        let events = plain_store.read_stream(&stream, &range).await?;
                        for event in events {
                            black_box(event.decode::<Plain>()?);
                        }
                    }
                    Ok(())
                }
            };
            let (elapsed, _) = concurrently(CONCURRENCY, per_task / 10, load).await?;
            slot[1] = slot[1].min(elapsed.as_secs_f64());
        }
    }
    let appends = (CONCURRENCY * per_task) as f64;
    let loads = (CONCURRENCY * (per_task / 10).max(1)) as f64;
    let row = |what: &str, count: f64, unit: &str, plain: f64, personal: f64| Row {
        id: "P8 Redis",
        what: what.to_owned(),
        framework: format!("{} {unit}/s", thousands(count / personal)),
        raw: format!("{} {unit}/s (4 plain fields)", thousands(count / plain)),
        ratio: Some(plain / personal),
        ratio_means: "",
        target: Target::None,
    };
    Ok(vec![
        row(
            "appends, 2 of 4 fields personal (Shredded + RedisKeys), 50 appenders",
            appends,
            "appends",
            best[0][0],
            best[1][0],
        ),
        row(
            "loads of 10 events, 2 of 4 fields personal, 50 readers",
            loads,
            "loads",
            best[0][1],
            best[1][1],
        ),
    ])
}
