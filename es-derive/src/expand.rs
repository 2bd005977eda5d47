//! Code generation from a valid model.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::DeriveInput;

use crate::ast::{AggregateInput, Body, EventEnum, EventInput, EventStruct, Field};
use crate::attr::FieldDefault;
use crate::ctxt::Ctxt;
use crate::valid;

pub(crate) fn event(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let model = EventInput::from_ast(&cx, input);
    match &model {
        Some(EventInput::Struct(s)) => valid::event_struct(&cx, s),
        Some(EventInput::Enum(e)) => valid::event_enum(&cx, e),
        None => {}
    }
    match (cx.check(), model) {
        (Ok(()), Some(EventInput::Struct(s))) => event_struct(&s),
        (Ok(()), Some(EventInput::Enum(e))) => event_enum(&e),
        (Ok(()), None) => TokenStream::new(),
        (Err(error), _) => {
            let mut out = error.to_compile_error();
            out.extend(event_fallback(input));
            out
        }
    }
}

pub(crate) fn aggregate(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let model = AggregateInput::from_ast(&cx, input);
    if let Some(model) = &model {
        valid::aggregate(&cx, model);
    }
    match (cx.check(), model) {
        (Ok(()), Some(model)) => aggregate_impl(&model),
        (Ok(()), None) => TokenStream::new(),
        (Err(error), model) => {
            let mut out = error.to_compile_error();
            out.extend(model.map(|m| aggregate_fallback(input, &m)));
            out
        }
    }
}

/// A stub `Event` impl after an error, so uses of the type elsewhere do not add errors.
fn event_fallback(input: &DeriveInput) -> TokenStream {
    if input.generics.params.is_empty() && !matches!(input.data, syn::Data::Union(_)) {
        let ident = &input.ident;
        quote! {
            #[automatically_derived]
            impl ::es_core::Event for #ident {
                const EVENT_TYPES: &'static [&'static str] = &[];
                fn event_type(&self) -> &'static str { ::core::unreachable!() }
                fn encode(&self, _: &mut ::es_core::__private::Fields) -> ::core::result::Result<(), ::es_core::__private::EncodeError> { ::core::unreachable!() }
                fn decode(_: &str, _: &::es_core::__private::Fields) -> ::core::result::Result<Self, ::es_core::__private::DecodeError> { ::core::unreachable!() }
            }
        }
    } else {
        TokenStream::new()
    }
}

/// A stub `Aggregate` impl after an error (when the event type is known), so `Handle`
/// impls and repositories of the type do not add errors of their own.
fn aggregate_fallback(input: &DeriveInput, model: &AggregateInput) -> TokenStream {
    let (Some(event), true) = (&model.event, input.generics.params.is_empty()) else {
        return TokenStream::new();
    };
    let ident = model.ident;
    let requires_default = requires_default(ident);
    quote! {
        #requires_default

        #[automatically_derived]
        impl ::es_core::Aggregate for #ident {
            type Event = #event;
            const NAME: &'static str = "";
            const SNAPSHOT_SCHEMA: u64 = 0;
            fn apply_event(&mut self, _: &#event) { ::core::unreachable!() }
            fn encode_snapshot(&self, _: &mut ::es_core::__private::Fields) -> ::core::result::Result<(), ::es_core::__private::EncodeError> { ::core::unreachable!() }
            fn decode_snapshot(_: &::es_core::__private::Fields) -> ::core::result::Result<Self, ::es_core::__private::DecodeError> { ::core::unreachable!() }
        }
    }
}

/// An item that is well-formed only when the aggregate is `Default`: a missing `Default` is
/// reported at the aggregate's name with `AggregateDefault`'s message, before rustc's own
/// error for the `Aggregate: Default` supertrait. That second error stays: only a where
/// clause on the impl could stand in for the supertrait, and it would make every use of the
/// aggregate (`Handle` impls, repositories) fail as well.
fn requires_default(ident: &syn::Ident) -> TokenStream {
    quote_spanned! {ident.span()=>
        const _: ::core::marker::PhantomData<::es_core::__private::RequireDefault<#ident>> =
            ::core::marker::PhantomData;
    }
}

/// Statements that append every stored field of `self` to `out`; `what` names the event
/// type (or snapshot) in errors.
fn encode_fields(fields: &[Field], what: &TokenStream) -> TokenStream {
    let statements = fields.iter().filter(|f| !f.skip).map(|field| {
        let member = &field.member;
        let name = &field.stored_name;
        let ty = &field.ty;
        // Only the path is spanned at the field's type (a type without a codec is reported
        // there); the arguments keep the derive's hygiene, so `self` and the locals resolve
        // even when the type comes from a user's `macro_rules!`.
        if field.json {
            let encode = quote_spanned! {field.ty_span()=>
                ::es_core::__private::encode_json_field::<#ty>
            };
            quote! { #encode(__es_out, #what, #name, &self.#member)?; }
        } else {
            let encode = quote_spanned! {field.ty_span()=>
                <#ty as ::es_core::__private::FieldValue>::encode_value
            };
            // A personal value is marked to be sealed by the store.
            let raw = if field.personal.is_some() {
                quote!(::es_core::__private::to_seal_value(__es_raw))
            } else {
                quote!(__es_raw)
            };
            quote! {
                if let ::core::option::Option::Some(__es_raw) = #encode(&self.#member) {
                    __es_out.push(#name, #raw);
                }
            }
        }
    });
    quote! { #(#statements)* }
}

/// The struct expression that decodes every field from `fields`.
fn decode_body(body: &Body, what: &TokenStream) -> TokenStream {
    match body {
        Body::Unit => quote!(Self),
        Body::Named(fields) => {
            let inits = fields.iter().map(|field| {
                let member = &field.member;
                let name = &field.stored_name;
                let ty = &field.ty;
                let value = if field.skip {
                    let default = quote_spanned! {field.ty_span()=>
                        <#ty as ::es_core::__private::SkippedField>::skipped_value
                    };
                    quote!(#default())
                } else {
                    let decode = if field.json {
                        let decode = quote_spanned! {field.ty_span()=>
                            ::es_core::__private::decode_json_field::<#ty>
                        };
                        quote!(#decode(#what, __es_fields, #name)?)
                    } else {
                        // The same path as in `encode_fields`, so a missing codec is one error.
                        let decode = quote_spanned! {field.ty_span()=>
                            <#ty as ::es_core::__private::FieldValue>::decode_value
                        };
                        let decode = if field.personal.is_some() {
                            let erased = quote_spanned! {field.ty_span()=>
                                <#ty as ::es_core::__private::PersonalField>::erased_value
                            };
                            quote! {
                                (|__es_raw: ::core::option::Option<&[u8]>| {
                                    ::es_core::__private::decode_personal(__es_raw, #decode, #erased)
                                })
                            }
                        } else {
                            decode
                        };
                        quote! {
                            #decode(__es_fields.get(#name)).map_err(|__es_error| {
                                ::es_core::__private::DecodeError::field(#what, #name, __es_error)
                            })?
                        }
                    };
                    match &field.default {
                        None => decode,
                        Some(default) => {
                            let value = match default {
                                FieldDefault::Trait(path) => {
                                    let default = quote_spanned! {path.span()=>
                                        <#ty as ::es_core::__private::DefaultField>::default_value
                                    };
                                    quote!(#default())
                                }
                                FieldDefault::Expr(expr) => {
                                    quote_spanned!(expr.span()=> { let __es_default: #ty = #expr; __es_default })
                                }
                            };
                            quote! {
                                match __es_fields.get(#name) {
                                    ::core::option::Option::None => #value,
                                    ::core::option::Option::Some(_) => #decode,
                                }
                            }
                        }
                    }
                };
                quote!(#member: #value)
            });
            quote!(Self { #(#inits),* })
        }
    }
}

fn event_struct(input: &EventStruct) -> TokenStream {
    let ident = input.ident;
    let event_type = &input.event_type;
    let what = quote!(#event_type);
    let mut encode = encode_fields(input.body.fields(), &what);
    // The data subject of the personal fields, when it is not the aggregate id.
    if let Some(subject) = input.body.fields().iter().find(|f| f.subject.is_some()) {
        let member = &subject.member;
        let ty = &subject.ty;
        let value = quote_spanned! {subject.ty_span()=>
            <#ty as ::es_core::__private::FieldValue>::encode_value
        };
        encode.extend(quote! {
            if let ::core::option::Option::Some(__es_raw) = #value(&self.#member) {
                __es_out.push(::es_core::__private::SUBJECT_FIELD, __es_raw);
            }
        });
    }
    let decode = decode_body(&input.body, &what);
    let aliases: Vec<_> = input.aliases.iter().map(|a| &a.value).collect();
    let version = input.version.map_or(1, |(version, _)| version);
    let push_version =
        (version > 1).then(|| quote!(::es_core::__private::push_version(__es_out, #version);));
    let (older, chain_checks) = match &input.upcast_from {
        Some(old) => upcast_step(input, old, version),
        None => (TokenStream::new(), TokenStream::new()),
    };
    quote! {
        #[automatically_derived]
        impl ::es_core::Event for #ident {
            const EVENT_TYPES: &'static [&'static str] = &[#event_type];

            const EVENT_ALIASES: &'static [&'static str] = &[#(#aliases),*];

            fn event_type(&self) -> &'static str {
                #event_type
            }

            fn encode(
                &self,
                __es_out: &mut ::es_core::__private::Fields,
            ) -> ::core::result::Result<(), ::es_core::__private::EncodeError> {
                #push_version
                #encode
                ::core::result::Result::Ok(())
            }

            fn decode(
                __es_event_type: &str,
                __es_fields: &::es_core::__private::Fields,
            ) -> ::core::result::Result<Self, ::es_core::__private::DecodeError> {
                if __es_event_type != #event_type #(&& __es_event_type != #aliases)* {
                    return ::core::result::Result::Err(
                        ::es_core::__private::unknown_event_type(__es_event_type, &[#event_type]),
                    );
                }
                let __es_version = ::es_core::__private::version_of(__es_event_type, __es_fields)?;
                #older
                if __es_version > #version {
                    return ::core::result::Result::Err(
                        ::es_core::__private::newer_version(__es_event_type, __es_version, #version),
                    );
                }
                ::core::result::Result::Ok(#decode)
            }
        }

        #[automatically_derived]
        impl ::es_core::NamedEvent for #ident {
            const NAME: &'static str = #event_type;

            const ALIASES: &'static [&'static str] = &[#(#aliases),*];

            const VERSION: u32 = #version;
        }

        #[automatically_derived]
        impl<__EsAggregate> ::es_core::ApplyTo<__EsAggregate> for #ident
        where
            __EsAggregate: ?::core::marker::Sized + ::es_core::Apply<#ident>,
        {
            fn apply_to(&self, __es_aggregate: &mut __EsAggregate) {
                ::es_core::Apply::<#ident>::apply(__es_aggregate, self)
            }
        }

        #chain_checks
    }
}

/// For `upcast_from = old` on a struct of `version`: the decode branch for entries of older
/// versions (decoded as `old`, which recurses down the chain, then converted with `From`),
/// and the compile-time checks of the step, spanned at `old`: it is an event struct one
/// version below (so versions have no gaps and the chain no cycle), read under names this
/// struct reads, and convertible.
fn upcast_step(input: &EventStruct, old: &syn::Path, version: u32) -> (TokenStream, TokenStream) {
    let ident = input.ident;
    let old_text = quote!(#old).to_string().replace(' ', "");
    // Spanned at `old`: an `old` that is no event struct, or a missing `From`, is reported
    // there, once.
    let decode_old = quote_spanned!(old.span()=> ::es_core::__private::decode_older::<#old>);
    let upcast = quote_spanned!(old.span()=> <Self as ::es_core::__private::Upcast<#old>>::upcast);
    let older = quote! {
        if __es_version < #version {
            return match #decode_old(__es_event_type, __es_fields) {
                ::core::result::Result::Ok(__es_old) => ::core::result::Result::Ok(#upcast(__es_old)),
                ::core::result::Result::Err(__es_error) => ::core::result::Result::Err(__es_error),
            };
        }
    };
    let previous = version - 1;
    let version_message = format!(
        "`upcast_from = {old_text}` must name version {previous} of `{ident}` (version {version}): each version is converted from the one just before it, so versions have no gaps and the chain no cycle; help: declare `#[event(version = {previous})]` on `{old_text}` (no `version` means 1), or name the struct of version {previous}"
    );
    let names_message = format!(
        "`{old_text}` is stored under a name `{ident}` does not read, so entries of version {previous} would never reach this chain; help: give `{old_text}` the stored name of `{ident}` (`#[event(rename = \"{}\")]`), or list its name as an `#[event(alias = \"...\")]` of `{ident}`",
        input.event_type
    );
    let checks = quote_spanned! {old.span()=>
        const _: () = ::core::assert!(
            <#old as ::es_core::NamedEvent>::VERSION == #previous,
            #version_message,
        );
        const _: () = ::core::assert!(
            ::es_core::__private::names_cover(
                <#ident as ::es_core::NamedEvent>::NAME,
                <#ident as ::es_core::NamedEvent>::ALIASES,
                <#old as ::es_core::NamedEvent>::NAME,
                <#old as ::es_core::NamedEvent>::ALIASES,
            ),
            #names_message,
        );
    };
    (older, checks)
}

fn event_enum(input: &EventEnum) -> TokenStream {
    let ident = input.ident;
    let variants = &input.variants;
    let idents: Vec<_> = variants.iter().map(|v| v.ident).collect();
    let tys: Vec<_> = variants.iter().map(|v| v.ty).collect();
    // Spanned at each variant's type: a type that is not an event struct is reported there.
    let names: Vec<_> = variants
        .iter()
        .map(|v| {
            let ty = v.ty;
            quote_spanned!(ty.span()=> <#ty as ::es_core::NamedEvent>::NAME)
        })
        .collect();

    let alias_lists: Vec<_> = variants
        .iter()
        .map(|v| {
            let ty = v.ty;
            quote_spanned!(ty.span()=> <#ty as ::es_core::NamedEvent>::ALIASES)
        })
        .collect();

    let encodes: Vec<_> = tys
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> <#ty as ::es_core::Event>::encode))
        .collect();
    let decodes: Vec<_> = tys
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> <#ty as ::es_core::Event>::decode))
        .collect();

    let mut duplicate_checks = Vec::new();
    for (i, later) in variants.iter().enumerate() {
        for earlier in &variants[..i] {
            let message = format!(
                "event enum `{ident}`: variants `{}` and `{}` have the same event type; help: if they hold the same struct, keep one variant; else give one of the structs another `#[event(rename = \"...\")]`",
                earlier.ident, later.ident
            );
            let alias_message = format!(
                "event enum `{ident}`: variants `{}` and `{}` share a stored event type: an `#[event(alias = \"...\")]` of one struct is the name or an alias of the other, so an entry of that type could decode as either; help: remove that alias from one of the structs",
                earlier.ident, later.ident
            );
            let (a, b) = (earlier.ty, later.ty);
            duplicate_checks.push(quote_spanned! {later.ident.span()=>
                const _: () = ::core::assert!(
                    !::es_core::__private::str_eq(
                        <#a as ::es_core::NamedEvent>::NAME,
                        <#b as ::es_core::NamedEvent>::NAME,
                    ),
                    #message,
                );
                const _: () = ::core::assert!(
                    ::es_core::__private::str_eq(
                        <#a as ::es_core::NamedEvent>::NAME,
                        <#b as ::es_core::NamedEvent>::NAME,
                    ) || !::es_core::__private::names_overlap(
                        <#a as ::es_core::NamedEvent>::NAME,
                        <#a as ::es_core::NamedEvent>::ALIASES,
                        <#b as ::es_core::NamedEvent>::NAME,
                        <#b as ::es_core::NamedEvent>::ALIASES,
                    ),
                    #alias_message,
                );
            });
        }
    }

    // Spanned at each variant's type: two paths to one struct (which the derive cannot tell
    // apart) conflict there. The local is bound and used under the same span.
    let froms = variants.iter().map(|v| {
        let (ty, variant) = (v.ty, v.ident);
        quote_spanned! {ty.span()=>
            #[automatically_derived]
            impl ::core::convert::From<#ty> for #ident {
                fn from(__es_event: #ty) -> Self {
                    Self::#variant(__es_event)
                }
            }
        }
    });

    let apply_bounds = tys
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> __EsAggregate: ::es_core::Apply<#ty>));
    let generic = format_ident!("__EsAggregate");

    quote! {
        #[automatically_derived]
        impl ::es_core::Event for #ident {
            const EVENT_TYPES: &'static [&'static str] = &[#(#names),*];

            const EVENT_ALIASES: &'static [&'static str] = &::es_core::__private::concat_names::<
                { 0 #(+ #alias_lists.len())* },
            >(&[#(#alias_lists),*]);

            fn event_type(&self) -> &'static str {
                match self {
                    #(Self::#idents(_) => #names,)*
                }
            }

            fn encode(
                &self,
                __es_out: &mut ::es_core::__private::Fields,
            ) -> ::core::result::Result<(), ::es_core::__private::EncodeError> {
                match self {
                    #(Self::#idents(__es_event) => #encodes(__es_event, __es_out),)*
                }
            }

            fn decode(
                __es_event_type: &str,
                __es_fields: &::es_core::__private::Fields,
            ) -> ::core::result::Result<Self, ::es_core::__private::DecodeError> {
                #(
                    if __es_event_type == #names || #alias_lists.contains(&__es_event_type) {
                        return #decodes(__es_event_type, __es_fields).map(Self::#idents);
                    }
                )*
                ::core::result::Result::Err(::es_core::__private::unknown_event_type(
                    __es_event_type,
                    <Self as ::es_core::Event>::EVENT_TYPES,
                ))
            }
        }

        #(#froms)*

        #[automatically_derived]
        impl<#generic: ?Sized> ::es_core::ApplyTo<#generic> for #ident
        where
            #(#apply_bounds,)*
        {
            fn apply_to(&self, __es_aggregate: &mut #generic) {
                match self {
                    #(Self::#idents(__es_event) => ::es_core::Apply::<#tys>::apply(__es_aggregate, __es_event),)*
                }
            }
        }

        #(#duplicate_checks)*
    }
}

fn aggregate_impl(input: &AggregateInput) -> TokenStream {
    let ident = input.ident;
    let Some(event) = &input.event else {
        return TokenStream::new();
    };
    let name = &input.name;
    let what_text = format!("snapshot of {name}");
    let what = quote!(#what_text);
    let fields = input.body.fields();
    let encode = encode_fields(fields, &what);
    let decode = decode_body(&input.body, &what);
    let schema = snapshot_schema(fields, input.snapshot_version);
    // Spanned at the `event = ...` path: an event the aggregate does not `Apply` is reported there.
    let dispatch = quote_spanned! {syn::spanned::Spanned::span(event)=>
        <#event as ::es_core::ApplyTo<Self>>::apply_to
    };
    let requires_default = requires_default(ident);
    quote! {
        #requires_default

        #[automatically_derived]
        impl ::es_core::Aggregate for #ident {
            type Event = #event;

            const NAME: &'static str = #name;

            const SNAPSHOT_SCHEMA: u64 = #schema;

            // `#event`, not `Self::Event`: a signature naming `Self::Event` would report a
            // missing `Default` once more.
            fn apply_event(&mut self, __es_event: &#event) {
                #dispatch(__es_event, self)
            }

            fn encode_snapshot(
                &self,
                __es_out: &mut ::es_core::__private::Fields,
            ) -> ::core::result::Result<(), ::es_core::__private::EncodeError> {
                #encode
                ::core::result::Result::Ok(())
            }

            fn decode_snapshot(
                __es_fields: &::es_core::__private::Fields,
            ) -> ::core::result::Result<Self, ::es_core::__private::DecodeError> {
                ::core::result::Result::Ok(#decode)
            }

            fn try_clone(&self) -> ::core::option::Option<Self> {
                // `Clone` if the aggregate implements it (method resolution prefers the
                // impl on `&CloneProbe`, which needs `Clone`), else `None`.
                #[allow(unused_imports)]
                use ::es_core::__private::{CloneIfClone as _, NoClone as _};
                (&&::es_core::__private::CloneProbe(self)).__es_try_clone()
            }
        }
    }
}

/// FNV-1a over each stored field's name, type and codec: a changed layout changes it. A
/// `snapshot_version` other than 0 is hashed last, so raising it changes the schema too
/// (and an aggregate without one keeps the hash it always had).
fn snapshot_schema(fields: &[Field], snapshot_version: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for field in fields.iter().filter(|f| !f.skip) {
        let ty = &field.ty;
        let text = format!(
            "{}:{}:{};",
            field.stored_name,
            quote!(#ty).to_string().replace(' ', ""),
            if field.json { "json" } else { "plain" }
        );
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    if snapshot_version != 0 {
        for byte in format!("snapshot_version:{snapshot_version};").bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
