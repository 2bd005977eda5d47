#![doc = include_str!("../README.md")]

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

mod ast;
mod attr;
mod ctxt;
mod expand;
mod valid;

/// Derives `es_core::Event` for an event struct (one event type) or an event enum (one
/// newtype variant per event struct). See `es_core::Event` for the attributes.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::event(&input).into()
}

/// Derives `es_core::Aggregate` for a struct with `#[aggregate(event = EventEnum)]`. See
/// `es_core::Aggregate` for the attributes.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::aggregate(&input).into()
}
