//! Every rule about names, checked on the model; all violations are reported together.

use std::collections::HashMap;

use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, Type, TypePath};

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

/// The envelope field of an entry's event version; must match `es_core::event::EVENT_VERSION_FIELD`.
const EVENT_VERSION_FIELD: &str = "event_version";

/// The envelope field of an event's data subject; must match
/// `es_core::personal::SUBJECT_FIELD`.
const SUBJECT_FIELD: &str = "personal_subject";

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
    let mut aliases = std::collections::HashSet::new();
    for alias in &input.aliases {
        if alias.value.trim().is_empty() {
            cx.error_spanned_by(
                &alias.lit,
                "an alias cannot be empty; help: give the name entries were stored under before, like `alias = \"UserRegistered\"`",
            );
        } else if alias.value == input.event_type {
            cx.error_spanned_by(
                &alias.lit,
                format!(
                    "alias `{}` is this event's own stored name; help: an alias is an older name entries were stored under: remove it, or rename the event with `rename = \"...\"` and keep the old name as the alias",
                    alias.value
                ),
            );
        } else if !aliases.insert(alias.value.as_str()) {
            cx.error_spanned_by(
                &alias.lit,
                format!("duplicate alias `{}`; help: keep only one", alias.value),
            );
        }
    }
    versions(cx, input);
    let fields = input.body.fields();
    for field in fields {
        if field.stored_name == EVENT_VERSION_FIELD {
            cx.syn_error(syn::Error::new(
                field.name_span,
                format!(
                    "field name `{EVENT_VERSION_FIELD}` is reserved for the entry's event version (`#[event(version = N)]`); help: rename the stored field with `#[event(rename = \"...\")]`"
                ),
            ));
        }
        if field.stored_name == SUBJECT_FIELD {
            cx.syn_error(syn::Error::new(
                field.name_span,
                format!(
                    "field name `{SUBJECT_FIELD}` is reserved for the event's data subject (`#[event(subject)]`); help: rename the stored field with `#[event(rename = \"...\")]`"
                ),
            ));
        }
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
    for field in fields {
        lossy_option(cx, field, "event");
    }
    personal_fields(cx, fields, "event");
    subjects(cx, fields);
    for field in fields {
        let Some(default) = &field.default else {
            continue;
        };
        if option_argument(transparent(&field.ty)).is_some() {
            cx.error_spanned_by(
                default,
                format!(
                    "field `{}` is an `Option`: an absent field already reads as `None`, and with a default a stored `None` (an absent field) would read back as the default; help: remove `default`, or make the field a plain type with `default`",
                    field.member
                ),
            );
        }
    }
    stored_names(cx, fields, "event");
}

/// Personal fields are stored through their codec, sealed: not `json`, not skipped.
fn personal_fields(cx: &Ctxt, fields: &[Field], _attr: &str) {
    for field in fields {
        let Some(personal) = field.personal else {
            continue;
        };
        if field.json {
            cx.syn_error(syn::Error::new(
                personal,
                format!(
                    "field `{}` is both `personal` and `json`: personal values are sealed through their `FieldValue` codec; help: remove `json` and implement `es_core::codec::FieldValue` for the type (or store its parts as separate personal fields)",
                    field.member
                ),
            ));
        }
        if field.skip {
            cx.syn_error(syn::Error::new(
                personal,
                format!(
                    "field `{}` is both `personal` and `skip`: a skipped field is not stored; help: remove `personal`",
                    field.member
                ),
            ));
        }
        if field.subject.is_some() {
            cx.syn_error(syn::Error::new(
                personal,
                format!(
                    "field `{}` is both `personal` and `subject`: the subject's id is stored in the clear, to find its key; help: make the subject a separate id field (say `user_id`), not personal data",
                    field.member
                ),
            ));
        }
    }
}

/// At most one subject, always present, and only in an event with personal fields.
fn subjects(cx: &Ctxt, fields: &[Field]) {
    let mut seen: Option<&Field> = None;
    for field in fields {
        let Some(subject) = field.subject else {
            continue;
        };
        if let Some(first) = seen {
            cx.syn_error(syn::Error::new(
                subject,
                format!(
                    "a second `subject`: `{}` already names the event's data subject; help: an event's personal fields belong to one subject: keep `subject` on one field, and split the event if it holds two people's data",
                    first.member
                ),
            ));
            continue;
        }
        seen = Some(field);
        if option_argument(transparent(&field.ty)).is_some() {
            cx.syn_error(syn::Error::new(
                subject,
                format!(
                    "subject `{}` is an `Option`, so an event could have personal fields and no subject to encrypt them for; help: make it a plain type (the person's id)",
                    field.member
                ),
            ));
        }
        if !fields.iter().any(|f| f.personal.is_some()) {
            cx.syn_error(syn::Error::new(
                subject,
                format!(
                    "`{}` is the `subject` of an event without personal fields; help: mark the fields that hold the subject's personal data `#[event(personal)]`, or remove `subject`",
                    field.member
                ),
            ));
        }
    }
}

/// `version` and `upcast_from` go together: a version above 1 says where older entries go.
fn versions(cx: &Ctxt, input: &EventStruct) {
    match (&input.version, &input.upcast_from) {
        (Some((version, span)), None) if *version > 1 => {
            let previous = version - 1;
            let old_attrs = if previous == 1 {
                format!("#[event(rename = \"{}\")]", input.event_type)
            } else {
                format!(
                    "#[event(rename = \"{}\", version = {previous}, upcast_from = ...)]",
                    input.event_type
                )
            };
            cx.syn_error(syn::Error::new(
                *span,
                format!(
                    "version {version} of `{}` needs `upcast_from`: entries of version {previous} decode as the struct of that version, then convert with `From`; help: keep that struct as its own `#[derive(Event)]` with `{old_attrs}`, and add `upcast_from = ThatStruct` here",
                    input.ident
                ),
            ))
        }
        (None | Some((1, _)), Some(path)) => cx.error_spanned_by(
            path,
            format!(
                "`upcast_from` needs this struct's `version`, above the version of the struct it names; help: add `version = 2` (or the next version after that struct's) to `#[event(...)]` on `{}`",
                input.ident
            ),
        ),
        _ => {}
    }
}

pub(crate) fn event_enum(cx: &Ctxt, input: &EventEnum) {
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for variant in &input.variants {
        let ty = same_module_path(variant.ty);
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

/// `self::Registered` names the same type as `Registered`: compare them as one (another
/// path to the same struct, like `crate::Registered`, is caught by the generated code).
fn same_module_path(ty: &Type) -> Type {
    let mut ty = ungroup(ty).clone();
    if let Type::Path(TypePath { qself: None, path }) = &mut ty {
        if path.leading_colon.is_none()
            && path.segments.len() > 1
            && path.segments[0].ident == "self"
            && path.segments[0].arguments.is_none()
        {
            path.segments = path.segments.iter().skip(1).cloned().collect();
        }
    }
    ty
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
    for field in fields.iter().filter(|f| !f.skip) {
        lossy_option(cx, field, "aggregate");
    }
    personal_fields(cx, fields, "aggregate");
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

/// A stored `None` is an absent field, and so is a JSON `null` (see `es_core::codec`): an
/// `Option` of something that is itself stored as absent reads `Some(None)` back as `None`.
fn lossy_option(cx: &Ctxt, field: &Field, attr: &str) {
    if !loses_some_of_absent(&field.ty, field.json) {
        return;
    }
    const THREE_STATES: &str =
        "use an enum with three states, like `enum Change<T> { Unchanged, Cleared, Set(T) }`";
    let message = if field.json {
        format!(
            "json field `{}` is an `Option` of a type that can be JSON `null`: `None` and `Some(null)` are both stored as an absent field and read back as `None`; help: drop the outer `Option` if the inner type has a `null` of its own (like `serde_json::Value::Null`), or {THREE_STATES}",
            field.member
        )
    } else {
        format!(
            "field `{}` is an `Option` of an `Option`: `None` and `Some(None)` are both stored as an absent field and read back as `None`; help: {THREE_STATES}, stored through a `FieldValue` impl or `#[{attr}(json)]`",
            field.member
        )
    };
    cx.error_spanned_by(&field.ty, message);
}

/// Whether a field of type `ty` stores `Some(x)` as an absent field for some `x`. The derive
/// sees only syntax: it knows `Option`, `Box` / `Rc` / `Arc`, `()` and `serde_json::Value`
/// by name.
fn loses_some_of_absent(ty: &Type, json: bool) -> bool {
    let Some(inner) = option_argument(transparent(ty)) else {
        return false;
    };
    let inner = transparent(inner);
    option_argument(inner).is_some() || (json && (is_unit(inner) || is_json_value(inner)))
}

/// The type inside an invisible group (a `$ty` of a `macro_rules!`) or parentheses.
fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// The single type argument of a path type whose last segment is `name`.
fn type_argument<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(TypePath { qself: None, path }) = ungroup(ty) else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    match arguments.args.iter().collect::<Vec<_>>()[..] {
        [GenericArgument::Type(inner)] => Some(inner),
        _ => None,
    }
}

fn option_argument(ty: &Type) -> Option<&Type> {
    type_argument(ty, "Option")
}

/// Through the pointers that store (and serialize) as what they point to.
fn transparent(mut ty: &Type) -> &Type {
    while let Some(inner) = ["Box", "Rc", "Arc"]
        .iter()
        .find_map(|name| type_argument(ty, name))
    {
        ty = inner;
    }
    ungroup(ty)
}

fn is_unit(ty: &Type) -> bool {
    matches!(ungroup(ty), Type::Tuple(tuple) if tuple.elems.is_empty())
}

/// `Value` or `serde_json::Value`.
fn is_json_value(ty: &Type) -> bool {
    let Type::Path(TypePath { qself: None, path }) = ungroup(ty) else {
        return false;
    };
    let segments: Vec<_> = path.segments.iter().collect();
    match segments[..] {
        [value] => value.ident == "Value" && value.arguments.is_none(),
        [.., krate, value] => {
            krate.ident == "serde_json" && value.ident == "Value" && value.arguments.is_none()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use super::loses_some_of_absent;

    #[test]
    fn an_option_of_something_stored_as_absent_is_lossy() {
        let plain: [syn::Type; 5] = [
            parse_quote!(Option<Option<String>>),
            parse_quote!(std::option::Option<::core::option::Option<u8>>),
            parse_quote!(Option<Box<Option<u8>>>),
            parse_quote!(Box<Option<Option<u8>>>),
            parse_quote!((Option<(Option<u8>)>)),
        ];
        for ty in &plain {
            assert!(loses_some_of_absent(ty, false), "{}", quote::quote!(#ty));
            assert!(loses_some_of_absent(ty, true), "{}", quote::quote!(#ty));
        }
        let json: [syn::Type; 4] = [
            parse_quote!(Option<serde_json::Value>),
            parse_quote!(Option<::serde_json::Value>),
            parse_quote!(Option<Value>),
            parse_quote!(Option<std::sync::Arc<()>>),
        ];
        for ty in &json {
            assert!(loses_some_of_absent(ty, true), "{}", quote::quote!(#ty));
        }
    }

    #[test]
    fn options_that_keep_some_round_trip() {
        let plain: [syn::Type; 5] = [
            parse_quote!(Option<String>),
            parse_quote!(Option<Vec<Option<u8>>>),
            parse_quote!(Box<Option<u8>>),
            parse_quote!(Option<()>),
            parse_quote!(Option<serde_json::Value>),
        ];
        for ty in &plain {
            assert!(!loses_some_of_absent(ty, false), "{}", quote::quote!(#ty));
        }
        let json: [syn::Type; 5] = [
            parse_quote!(serde_json::Value),
            parse_quote!(Option<Vec<Option<u8>>>),
            parse_quote!(Option<my::Value>),
            parse_quote!(Option<Value<u8>>),
            parse_quote!(Option<std::collections::BTreeMap<String, Option<u8>>>),
        ];
        for ty in &json {
            assert!(!loses_some_of_absent(ty, true), "{}", quote::quote!(#ty));
        }
    }
}
