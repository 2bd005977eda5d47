//! Our model of the derive input. Shapes the derives cannot handle are reported here; the
//! rules about names are in `valid`.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{self, FieldDefault, Place, Text};
use crate::ctxt::Ctxt;

/// One stored field of an event struct or an aggregate.
pub(crate) struct Field {
    pub member: Ident,
    pub ty: Type,
    /// The stored field name (after `rename`).
    pub stored_name: String,
    /// The `rename` literal, or the field's ident: where a bad name is reported.
    pub name_span: Span,
    pub json: bool,
    pub skip: bool,
    /// `#[event(default)]` / `#[event(default = expr)]`: the value when the field is absent.
    pub default: Option<FieldDefault>,
    /// `#[event(personal)]` / `#[aggregate(personal)]`, with its span.
    pub personal: Option<Span>,
    /// `#[event(subject)]`, with its span.
    pub subject: Option<Span>,
}

pub(crate) enum Body {
    Named(Vec<Field>),
    Unit,
}

pub(crate) struct EventStruct<'a> {
    pub ident: &'a Ident,
    pub event_type: String,
    pub rename: Option<Text>,
    /// Older stored names, `#[event(alias = "...")]`.
    pub aliases: Vec<Text>,
    /// `#[event(version = N)]`: the version new entries are written with, and its span.
    pub version: Option<(u32, Span)>,
    /// `#[event(upcast_from = Path)]`: the struct entries of the version before decode as.
    pub upcast_from: Option<syn::Path>,
    pub body: Body,
}

pub(crate) struct Variant<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
}

pub(crate) struct EventEnum<'a> {
    pub ident: &'a Ident,
    pub variants: Vec<Variant<'a>>,
}

pub(crate) enum EventInput<'a> {
    Struct(EventStruct<'a>),
    Enum(EventEnum<'a>),
}

pub(crate) struct AggregateInput<'a> {
    pub ident: &'a Ident,
    pub event: Option<syn::Path>,
    pub name: String,
    pub name_lit: Option<Text>,
    /// `#[aggregate(snapshot_version = N)]`; 0 when absent.
    pub snapshot_version: u64,
    pub body: Body,
}

/// Events and aggregates are decoded from storage into one concrete, owned type.
fn reject_generics(cx: &Ctxt, input: &DeriveInput, what: &str, hint: &str) {
    let generics = &input.generics;
    let only_lifetimes = generics
        .params
        .iter()
        .all(|p| matches!(p, syn::GenericParam::Lifetime(_)));
    if !generics.params.is_empty() && only_lifetimes {
        cx.error_spanned_by(
            generics,
            format!(
                "{what} cannot have lifetime parameters: they are decoded from storage into values they own; help: hold owned data (`String`, not `&str`; `Vec<T>`, not `&[T]`)"
            ),
        );
    } else if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(
            generics,
            format!("generic {what} are not supported; help: {hint}"),
        );
    }
}

/// The hint for generic event structs and aggregates.
const CONCRETE_FIELDS: &str =
    "use a concrete type (a type alias of a generic type does not help: name the fields' types)";

fn fields(cx: &Ctxt, fields: &Fields, place: Place, what: &str) -> Body {
    match fields {
        Fields::Unit => Body::Unit,
        Fields::Unnamed(unnamed) => {
            cx.error_spanned_by(
                unnamed,
                format!("tuple structs are not supported as {what}; help: name the fields (`struct Name {{ field: Type }}`), they become the stored field names"),
            );
            Body::Unit
        }
        Fields::Named(named) => Body::Named(
            named
                .named
                .iter()
                .filter_map(|f| {
                    let attrs = attr::parse(cx, &f.attrs, place);
                    let member = f.ident.clone()?;
                    let name = member.to_string();
                    let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
                    let (stored_name, name_span) = match attrs.rename {
                        Some(text) => (text.value, text.lit.span()),
                        None => (name, member.span()),
                    };
                    Some(Field {
                        member,
                        ty: f.ty.clone(),
                        stored_name,
                        name_span,
                        json: attrs.json.is_some(),
                        skip: attrs.skip.is_some(),
                        default: attrs.default,
                        personal: attrs.personal,
                        subject: attrs.subject,
                    })
                })
                .collect(),
        ),
    }
}

impl<'a> EventInput<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        match &input.data {
            Data::Struct(data) => {
                reject_generics(cx, input, "event types", CONCRETE_FIELDS);
                let attrs = attr::parse(cx, &input.attrs, Place::EventStruct);
                let body = fields(cx, &data.fields, Place::EventField, "events");
                let event_type = attrs
                    .rename
                    .as_ref()
                    .map_or_else(|| input.ident.unraw().to_string(), |t| t.value.clone());
                Some(EventInput::Struct(EventStruct {
                    ident: &input.ident,
                    event_type,
                    rename: attrs.rename,
                    aliases: attrs.aliases,
                    version: attrs.version,
                    upcast_from: attrs.upcast_from,
                    body,
                }))
            }
            Data::Enum(data) => {
                reject_generics(
                    cx,
                    input,
                    "event enums",
                    "name each event struct in a variant, like `Registered(Registered)`; an event enum lists one aggregate's events",
                );
                attr::parse(cx, &input.attrs, Place::EventEnum);
                let mut variants = Vec::new();
                for variant in &data.variants {
                    attr::parse(cx, &variant.attrs, Place::EventVariant);
                    match &variant.fields {
                        Fields::Unnamed(f) if f.unnamed.len() == 1 => variants.push(Variant {
                            ident: &variant.ident,
                            ty: &f.unnamed[0].ty,
                        }),
                        Fields::Named(_) => cx.error_spanned_by(
                            variant,
                            format!(
                                "event enum variants must hold one event struct; help: move these fields into `#[derive(Event)] struct {0} {{ ... }}` and write the variant as `{0}({0})`",
                                variant.ident
                            ),
                        ),
                        _ => cx.error_spanned_by(
                            variant,
                            format!(
                                "event enum variants must hold exactly one event struct; help: write `{0}({0})` with `#[derive(Event)] struct {0}` (a unit struct is fine for an event without fields)",
                                variant.ident
                            ),
                        ),
                    }
                }
                if data.variants.is_empty() {
                    cx.error_spanned_by(
                        &input.ident,
                        "an event enum needs at least one variant; help: add a variant per event, like `Registered(Registered)`",
                    );
                }
                Some(EventInput::Enum(EventEnum {
                    ident: &input.ident,
                    variants,
                }))
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "unions cannot be events; help: use a struct for one event type, or an enum of event structs",
                );
                None
            }
        }
    }
}

impl<'a> AggregateInput<'a> {
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let data = match &input.data {
            Data::Struct(data) => data,
            Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "an aggregate must be a struct; help: keep the state in a struct's fields (an enum field is fine)",
                );
                return None;
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "an aggregate must be a struct; help: keep the state in a struct's fields",
                );
                return None;
            }
        };
        reject_generics(cx, input, "aggregates", CONCRETE_FIELDS);
        let attrs = attr::parse(cx, &input.attrs, Place::Aggregate);
        let body = fields(cx, &data.fields, Place::AggregateField, "aggregates");
        if attrs.event.is_none() && !attrs.event_invalid {
            cx.error_spanned_by(
                &input.ident,
                "missing `#[aggregate(event = ...)]`; help: name the aggregate's event type, like `#[aggregate(event = UserEvent)]`",
            );
        }
        let name = attrs
            .name
            .as_ref()
            .map_or_else(|| snake_case(&input.ident.to_string()), |t| t.value.clone());
        Some(AggregateInput {
            ident: &input.ident,
            event: attrs.event,
            name,
            name_lit: attrs.name,
            snapshot_version: attrs.snapshot_version.unwrap_or(0),
            body,
        })
    }
}

impl Body {
    pub(crate) fn fields(&self) -> &[Field] {
        match self {
            Body::Named(fields) => fields,
            Body::Unit => &[],
        }
    }
}

impl Field {
    pub(crate) fn ty_span(&self) -> Span {
        self.ty.span()
    }
}

/// `UserProfile` → `user_profile`.
pub(crate) fn snake_case(ident: &str) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let mut out = String::with_capacity(ident.len() + 4);
    let chars: Vec<char> = ident.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
