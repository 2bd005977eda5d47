//! Replaying an aggregate with the application's own types: each stored event decoded as
//! the aggregate's event enum (upcast where it is of an older version), applied with its
//! `apply` code, and the state after it read through its snapshot codec.

use std::marker::PhantomData;

use es_core::codec::Fields;
use es_core::deletion::STREAM_DELETED;
use es_core::{Aggregate, StoreError, StoredEvent};

use crate::error::InspectError;
use crate::views::{pairs, EventView, Pairs, Step};

/// An aggregate type, as the inspector replays it.
pub(crate) trait Replayer: Send + Sync {
    /// The state before any event, and one step per event.
    fn replay(&self, events: Vec<StoredEvent>) -> Result<(Pairs, Vec<Step>), InspectError>;
}

/// [`Replayer`] of aggregate type `A`.
pub(crate) struct Typed<A>(PhantomData<fn() -> A>);

impl<A> Typed<A> {
    pub(crate) fn new() -> Self {
        Typed(PhantomData)
    }
}

impl<A: Aggregate> Replayer for Typed<A> {
    fn replay(&self, events: Vec<StoredEvent>) -> Result<(Pairs, Vec<Step>), InspectError> {
        let mut state = A::default();
        let initial = state_of(&state)?;
        let mut before = initial.clone();
        let mut steps = Vec::with_capacity(events.len());
        for stored in events {
            let view = EventView::from(&stored);
            if stored.event_type == STREAM_DELETED {
                // Deleted: the state starts again from its default (as a repository loads).
                state = A::default();
            } else {
                let decoded = stored.decode::<A::Event>().map_err(undecodable)?;
                state.apply_event(&decoded.event);
            }
            let after = state_of(&state)?;
            steps.push(Step {
                event: view,
                changed: changed(&before, &after),
                state: after.clone(),
            });
            before = after;
        }
        Ok((initial, steps))
    }
}

/// The steps of an aggregate no type is registered for: its events, no state.
pub(crate) fn events_only(events: Vec<StoredEvent>) -> Vec<Step> {
    events
        .iter()
        .map(|event| Step {
            event: EventView::from(event),
            state: Pairs::new(),
            changed: Vec::new(),
        })
        .collect()
}

fn undecodable(error: StoreError) -> InspectError {
    match error {
        StoreError::Decode { .. } => InspectError::Undecodable(error.to_string()),
        other => InspectError::Store(other),
    }
}

/// The state's snapshot fields.
fn state_of<A: Aggregate>(state: &A) -> Result<Pairs, InspectError> {
    let mut fields = Fields::new();
    state.encode_snapshot(&mut fields).map_err(|error| {
        InspectError::Undecodable(format!(
            "the state of a `{}` aggregate does not encode: {error}",
            A::NAME
        ))
    })?;
    Ok(pairs(&fields))
}

/// The fields whose value differs between `before` and `after`, or that only one has: in
/// `after`'s order, then those `after` lacks.
fn changed(before: &Pairs, after: &Pairs) -> Vec<String> {
    let mut changed: Vec<String> = after
        .iter()
        .filter(|(name, value)| value_of(before, name) != Some(value.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    changed.extend(
        before
            .iter()
            .filter(|(name, _)| value_of(after, name).is_none())
            .map(|(name, _)| name.clone()),
    );
    changed
}

fn value_of<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(items: &[(&str, &str)]) -> Pairs {
        items
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn changed_fields_are_the_added_changed_and_removed_ones() {
        let before = p(&[("name", "Duffy"), ("email", "a@b"), ("gone", "x")]);
        let after = p(&[("name", "Duffy"), ("email", "c@d"), ("new", "y")]);
        assert_eq!(changed(&before, &after), ["email", "new", "gone"]);
        assert!(changed(&after, &after).is_empty());
    }
}
