//! Typed `#[event(...)]` and `#[aggregate(...)]` attributes.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr};

use crate::ctxt::Ctxt;

/// Where an attribute stands: it decides which keys are allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    EventStruct,
    EventEnum,
    EventVariant,
    EventField,
    Aggregate,
    AggregateField,
}

impl Place {
    fn attr_name(self) -> &'static str {
        match self {
            Place::Aggregate | Place::AggregateField => "aggregate",
            _ => "event",
        }
    }

    fn allowed(self) -> &'static [&'static str] {
        match self {
            Place::EventStruct => &["rename", "alias", "version", "upcast_from"],
            Place::EventEnum | Place::EventVariant => &[],
            Place::EventField => &["rename", "json", "default", "personal", "subject"],
            Place::Aggregate => &["event", "name", "snapshot_version"],
            Place::AggregateField => &["rename", "json", "skip", "personal"],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Place::EventStruct => "an event struct",
            Place::EventEnum => "an event enum",
            Place::EventVariant => "an event enum's variant",
            Place::EventField => "an event field",
            Place::Aggregate => "an aggregate",
            Place::AggregateField => "an aggregate field",
        }
    }

    /// A hint for a key that is valid elsewhere but not here.
    fn misplaced_hint(self, key: &str) -> Option<&'static str> {
        match (self, key) {
            (Place::EventEnum | Place::EventVariant, "rename") => {
                Some("event types are named on the event struct: put `#[event(rename = \"...\")]` on the struct the variant holds")
            }
            (Place::EventEnum | Place::EventVariant, "json") => {
                Some("codecs are chosen per field: put `#[event(json)]` on a field of the event struct")
            }
            (Place::EventField, "skip") => Some(
                "every event field is stored; remove the field from the event, or make it an `Option`",
            ),
            (Place::EventStruct, "name") => Some("an event struct is named with `rename = \"...\"`"),
            (Place::Aggregate, "rename") => {
                Some("an aggregate's storage name is set with `name = \"...\"`")
            }
            (Place::EventEnum | Place::EventVariant | Place::EventField, "alias") => {
                Some("an alias is an older name of an event type: put `#[event(alias = \"OldName\")]` on the event struct")
            }
            (Place::AggregateField, "default") => Some(
                "a snapshot of another layout is ignored and the aggregate rebuilt from its events, so a new aggregate field needs no default",
            ),
            (Place::EventStruct | Place::EventEnum | Place::EventVariant, "default") => {
                Some("defaults are per field: put `#[event(default)]` on the field that was added")
            }
            (Place::EventEnum | Place::EventVariant | Place::EventField, "version" | "upcast_from") => {
                Some("versions belong to an event struct: put `#[event(version = 2, upcast_from = OldStruct)]` on the struct whose shape changed")
            }
            (Place::Aggregate | Place::AggregateField, "version") => {
                Some("an aggregate's snapshots are versioned with `#[aggregate(snapshot_version = N)]`; event versions go on event structs")
            }
            (Place::EventStruct | Place::EventEnum | Place::EventVariant | Place::AggregateField, "snapshot_version") => {
                Some("`snapshot_version` goes on the aggregate: `#[aggregate(snapshot_version = 2)]`")
            }
            (Place::EventStruct | Place::EventEnum | Place::EventVariant | Place::Aggregate, "personal") => {
                Some("personal data is declared per field: put `#[event(personal)]` on each field that holds it (`#[aggregate(personal)]` on a snapshot field)")
            }
            (Place::EventStruct | Place::EventEnum | Place::EventVariant | Place::Aggregate, "subject") => {
                Some("the subject is a field: put `#[event(subject)]` on the field that identifies the person")
            }
            (Place::AggregateField, "subject") => Some(
                "a snapshot's personal fields belong to the aggregate's id; `subject` marks an event field",
            ),
            _ => None,
        }
    }
}

/// A `key = "text"` value with the span of its literal.
pub(crate) struct Text {
    pub value: String,
    pub lit: LitStr,
}

/// `default` (`Default::default()`) or `default = expr` on an event field.
pub(crate) enum FieldDefault {
    /// The `default` key.
    Trait(syn::Path),
    Expr(Box<Expr>),
}

impl quote::ToTokens for FieldDefault {
    fn to_tokens(&self, tokens: &mut proc_macro2::TokenStream) {
        match self {
            FieldDefault::Trait(path) => path.to_tokens(tokens),
            FieldDefault::Expr(expr) => expr.to_tokens(tokens),
        }
    }
}

#[derive(Default)]
pub(crate) struct Attrs {
    pub rename: Option<Text>,
    /// `alias = "..."`, repeatable.
    pub aliases: Vec<Text>,
    pub default: Option<FieldDefault>,
    pub snapshot_version: Option<u64>,
    /// `version = N` on an event struct, with the literal's span.
    pub version: Option<(u32, Span)>,
    /// `upcast_from = Path` on an event struct.
    pub upcast_from: Option<syn::Path>,
    pub name: Option<Text>,
    pub event: Option<syn::Path>,
    pub json: Option<Span>,
    pub skip: Option<Span>,
    /// `personal`: stored encrypted with its subject's key.
    pub personal: Option<Span>,
    /// `subject`: the field that names the event's data subject.
    pub subject: Option<Span>,
    /// `event` was given without a path (already reported).
    pub event_invalid: bool,
}

pub(crate) fn parse(cx: &Ctxt, attrs: &[Attribute], place: Place) -> Attrs {
    let mut out = Attrs::default();
    let attr_name = place.attr_name();
    for attr in attrs.iter().filter(|a| a.path().is_ident(attr_name)) {
        if let syn::Meta::Path(_) = attr.meta {
            cx.error_spanned_by(
                attr,
                format!("expected `#[{attr_name}(...)]` with keys inside the parentheses"),
            );
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_else(|| {
                    let path = &meta.path;
                    quote::quote!(#path).to_string().replace(' ', "")
                });
            if !place.allowed().contains(&key.as_str()) {
                let mut message = format!(
                    "unknown `{attr_name}` attribute `{key}` on {}",
                    place.describe()
                );
                match (place.misplaced_hint(&key), place.allowed()) {
                    (Some(hint), _) => message.push_str(&format!("; help: {hint}")),
                    (None, []) => message.push_str("; help: no attributes are accepted here"),
                    (None, allowed) => message.push_str(&format!(
                        "; help: expected one of {}",
                        allowed
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
                cx.error_spanned_by(&meta.path, message);
                return skip_value(&meta);
            }
            let duplicate = match key.as_str() {
                "rename" => set(&mut out.rename, text(cx, &meta, &key)?),
                "alias" => {
                    out.aliases.extend(text(cx, &meta, &key)?);
                    false
                }
                "default" => set(&mut out.default, field_default(&meta)?),
                "snapshot_version" => set(&mut out.snapshot_version, snapshot_version(cx, &meta)?),
                "version" => set(&mut out.version, event_version(cx, &meta)?),
                "upcast_from" => set(&mut out.upcast_from, upcast_from(cx, &meta)?),
                "name" => set(&mut out.name, text(cx, &meta, &key)?),
                "event" => {
                    let path = event_path(cx, &meta)?;
                    out.event_invalid |= path.is_none();
                    set(&mut out.event, path)
                }
                "json" => set(&mut out.json, flag(cx, &meta, &key)?),
                "skip" => set(&mut out.skip, flag(cx, &meta, &key)?),
                "personal" => set(&mut out.personal, flag(cx, &meta, &key)?),
                "subject" => set(&mut out.subject, flag(cx, &meta, &key)?),
                _ => false,
            };
            if duplicate {
                cx.error_spanned_by(
                    &meta.path,
                    format!("duplicate `{attr_name}` attribute `{key}`; help: keep only one"),
                );
            }
            Ok(())
        });
        if let Err(error) = result {
            cx.syn_error(error);
        }
    }
    out
}

/// Stores `value` in `slot`; returns whether `slot` was already set.
fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(value) => slot.replace(value).is_some(),
        None => false,
    }
}

fn text(cx: &Ctxt, meta: &ParseNestedMeta, key: &str) -> syn::Result<Option<Text>> {
    if !meta.input.peek(syn::Token![=]) {
        cx.error_spanned_by(
            &meta.path,
            format!("`{key}` needs a value; help: write `{key} = \"...\"`"),
        );
        return Ok(None);
    }
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(Text {
            value: lit.value(),
            lit,
        })),
        other => {
            cx.error_spanned_by(
                &other,
                format!("`{key}` expects a string literal; help: write `{key} = \"...\"`"),
            );
            Ok(None)
        }
    }
}

fn event_path(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<syn::Path>> {
    type_path(
        cx,
        meta,
        "`event` needs a value; help: name the aggregate's event type, like `event = UserEvent`",
        "`event` expects the path of the aggregate's event type; help: write `event = UserEvent`",
    )
}

fn upcast_from(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<syn::Path>> {
    type_path(
        cx,
        meta,
        "`upcast_from` needs a value; help: name the struct of the version before, like `upcast_from = RegisteredV1`",
        "`upcast_from` expects the path of the event struct of the version before; help: write `upcast_from = RegisteredV1`",
    )
}

/// `key = Path`; `missing` and `not_a_path` are the errors without a value or with another
/// expression.
fn type_path(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    missing: &str,
    not_a_path: &str,
) -> syn::Result<Option<syn::Path>> {
    if !meta.input.peek(syn::Token![=]) {
        cx.error_spanned_by(&meta.path, missing);
        skip_value(meta)?;
        return Ok(None);
    }
    let mut expr = meta.value()?.parse::<Expr>()?;
    // A path passed through a `macro_rules!` fragment arrives in an invisible group.
    while let Expr::Group(group) = expr {
        expr = *group.expr;
    }
    match expr {
        Expr::Path(path) if path.qself.is_none() => Ok(Some(path.path)),
        other => {
            cx.error_spanned_by(&other, not_a_path);
            Ok(None)
        }
    }
}

fn field_default(meta: &ParseNestedMeta) -> syn::Result<Option<FieldDefault>> {
    if meta.input.peek(syn::Token![=]) {
        let expr: Expr = meta.value()?.parse()?;
        return Ok(Some(FieldDefault::Expr(Box::new(expr))));
    }
    if meta.input.peek(syn::token::Paren) {
        return Err(meta.error(
            "`default` takes `= expr` or nothing; help: write `default` (for `Default::default()`) or `default = expr`",
        ));
    }
    Ok(Some(FieldDefault::Trait(meta.path.clone())))
}

fn snapshot_version(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<u64>> {
    let hint = "help: write an integer, like `snapshot_version = 2`, and raise it when `apply` changes how old events build the state";
    let value = integer::<u64>(
        cx,
        meta,
        "snapshot_version",
        hint,
        |_| true,
        || format!("`snapshot_version` must fit in a `u64`; {hint}"),
    )?;
    Ok(value.map(|(version, _)| version))
}

fn event_version(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<(u32, Span)>> {
    let hint = "help: write a whole number from 1 up, like `version = 2`, with `upcast_from = ` the struct of the version before";
    integer::<u32>(
        cx,
        meta,
        "version",
        hint,
        |v| v >= 1,
        || {
            format!(
                "an event version is a number from 1 to {}; {hint}",
                u32::MAX
            )
        },
    )
}

/// `key = <integer literal>` that parses as `T` and passes `valid`, with the literal's span;
/// `out_of_range` is the error for a literal that does not.
fn integer<T: std::str::FromStr + Copy>(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: &str,
    hint: &str,
    valid: impl Fn(T) -> bool,
    out_of_range: impl Fn() -> String,
) -> syn::Result<Option<(T, Span)>>
where
    T::Err: std::fmt::Display,
{
    if !meta.input.peek(syn::Token![=]) {
        cx.error_spanned_by(&meta.path, format!("`{key}` needs a value; {hint}"));
        skip_value(meta)?;
        return Ok(None);
    }
    let expr: Expr = meta.value()?.parse()?;
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<T>() {
            Ok(value) if valid(value) => Ok(Some((value, int.span()))),
            _ => {
                cx.error_spanned_by(int, out_of_range());
                Ok(None)
            }
        },
        other => {
            cx.error_spanned_by(other, format!("`{key}` expects an integer literal; {hint}"));
            Ok(None)
        }
    }
}

fn flag(cx: &Ctxt, meta: &ParseNestedMeta, key: &str) -> syn::Result<Option<Span>> {
    if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
        cx.error_spanned_by(
            &meta.path,
            format!("`{key}` takes no value; help: write just `{key}`"),
        );
        skip_value(meta)?;
        return Ok(None);
    }
    Ok(Some(meta.path.span()))
}

/// Consumes `= value` or `(...)` after a key we reject, so parsing goes on.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}
