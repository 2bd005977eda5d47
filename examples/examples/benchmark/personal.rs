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
