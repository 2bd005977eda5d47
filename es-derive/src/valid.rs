//! Every rule about names, checked on the model; all violations are reported together.

use std::collections::HashMap;

use syn::spanned::Spanned;

use crate::ast::{AggregateInput, EventEnum, EventStruct, Field};
use crate::ctxt::Ctxt;

/// Field names of the stored event envelope; must match `es_core::event::RESERVED_EVENT_FIELDS`
/// (a test in `tests/` checks each one is rejected).
const RESERVED_EVENT_FIELDS: &[&str] = &[
    "type",
    "aggregate_id",
    "version",
    "timestamp",
    "correlation_id",
    "causation_id",
    "metadata",
];

/// Snapshot metadata fields start with this; must match `es_core::aggregate::RESERVED_SNAPSHOT_PREFIX`.
const RESERVED_SNAPSHOT_PREFIX: &str = "_";

pub(crate) fn event_struct(cx: &Ctxt, input: &EventStruct) {
    if let Some(rename) = &input.rename {
        if rename.value.trim().is_empty() {
            cx.error_spanned_by(
                &rename.lit,
                "an event type cannot be empty; help: give it a name, like `rename = \"UserRegistered\"`",
            );
        }
    }
    let fields = input.body.fields();
    for field in fields {
        if RESERVED_EVENT_FIELDS.contains(&field.stored_name.as_str()) {
            cx.syn_error(syn::Error::new(
                field.name_span,
                format!(
                    "field name `{}` is reserved for the stored event's envelope ({}); help: rename the stored field with `#[event(rename = \"...\")]`",
                    field.stored_name,
                    RESERVED_EVENT_FIELDS.join(", ")
                ),
            ));
        }
    }
    stored_names(cx, fields, "event");
}

pub(crate) fn event_enum(cx: &Ctxt, input: &EventEnum) {
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for variant in &input.variants {
        let ty = variant.ty;
        let key = quote::quote!(#ty).to_string();
        if let Some(first) = seen.get(&key) {
            cx.error_spanned_by(
                variant.ty,
                format!(
                    "variants `{first}` and `{}` hold the same event type `{key}`; help: each event struct may appear once in an event enum",
                    variant.ident
                ),
            );
        } else {
            seen.insert(key, variant.ident);
        }
    }
}

pub(crate) fn aggregate(cx: &Ctxt, input: &AggregateInput) {
    if let Some(lit) = &input.name_lit {
        let name = &lit.value;
        let bad = name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | ':'));
        if bad {
            cx.error_spanned_by(
                &lit.lit,
                "an aggregate name is used in storage keys and must be non-empty, without spaces, `{`, `}` or `:`; help: use letters, digits, `_` or `-`, like `name = \"user\"`",
            );
        }
    }
    let fields = input.body.fields();
    for field in fields.iter().filter(|f| !f.skip) {
        if field.stored_name.starts_with(RESERVED_SNAPSHOT_PREFIX) {
            cx.syn_error(syn::Error::new(
                field.name_span,
                format!(
                    "snapshot field name `{}` starts with `{RESERVED_SNAPSHOT_PREFIX}`, which is reserved for snapshot metadata; help: rename the stored field with `#[aggregate(rename = \"...\")]`, or `#[aggregate(skip)]` it",
                    field.stored_name
                ),
            ));
        }
    }
    for field in fields.iter().filter(|f| f.skip && f.json) {
        cx.syn_error(syn::Error::new(
            field.ty.span(),
            format!(
                "field `{}` is both `skip` and `json`; help: a skipped field is not stored, remove `json`",
                field.member
            ),
        ));
    }
    stored_names(
        cx,
        &fields.iter().filter(|f| !f.skip).collect::<Vec<_>>(),
        "aggregate",
    );
}

fn stored_names<F: std::borrow::Borrow<Field>>(cx: &Ctxt, fields: &[F], attr: &str) {
    let mut seen: HashMap<&str, &syn::Ident> = HashMap::new();
    for field in fields.iter().map(|f| f.borrow()) {
        if field.stored_name.is_empty() {
            cx.syn_error(syn::Error::new(
                field.name_span,
                format!(
                    "a stored field name cannot be empty; help: `#[{attr}(rename = \"name\")]`"
                ),
            ));
            continue;
        }
        if let Some(first) = seen.insert(&field.stored_name, &field.member) {
            cx.syn_error(syn::Error::new(
                field.name_span,
                format!(
                    "fields `{first}` and `{}` are both stored as `{}`; help: give one another `#[{attr}(rename = \"...\")]`",
                    field.member, field.stored_name
                ),
            ));
        }
    }
}
