//! Aggregates, commands, and how a command's events are collected.

use std::borrow::Cow;

use crate::codec::Fields;
use crate::error::{DecodeError, EncodeError};
use crate::event::Event;

/// Snapshot field names start with this prefix only when they belong to the snapshot's own
/// metadata (version, position, layout); aggregate fields may not use it.
pub const RESERVED_SNAPSHOT_PREFIX: &str = "_";

/// A consistency boundary rebuilt from its events.
///
/// Derive it with `#[derive(Aggregate)]` and `#[aggregate(event = YourEventEnum)]`: the
/// derive wires [`apply_event`](Aggregate::apply_event) to your [`Apply`](crate::Apply) impls (one per
/// event, checked at compile time) and generates the snapshot codec from the fields.
///
/// ```
/// use es_core::{Aggregate, Apply, Event};
///
/// #[derive(Event)] struct Opened { owner: String }
/// #[derive(Event)] struct Deposited { amount: u64 }
/// #[derive(Event)] enum AccountEvent { Opened(Opened), Deposited(Deposited) }
///
/// #[derive(Aggregate, Default)]
/// #[aggregate(event = AccountEvent)]
/// struct Account { owner: String, balance: u64 }
///
/// impl Apply<Opened> for Account { fn apply(&mut self, e: &Opened) { self.owner = e.owner.clone(); } }
/// impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount; } }
///
/// let mut account = Account::default();
/// account.apply_event(&Deposited { amount: 5 }.into());
/// assert_eq!(account.balance, 5);
/// assert_eq!(Account::NAME, "account");
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The events this aggregate is made of.
    type Event: Event;

    /// The aggregate type name: the category of its streams, used in storage keys.
    const NAME: &'static str;

    /// A fingerprint of the snapshot layout (field names and types). A stored snapshot of
    /// another layout is ignored and the aggregate rebuilt by full replay.
    ///
    /// `#[derive(Aggregate)]` hashes each stored field's name, type and codec, and the
    /// aggregate's `#[aggregate(snapshot_version = N)]` when it is not 0: raise `N` when
    /// [`apply_event`](Aggregate::apply_event) builds the same fields differently, and the
    /// snapshots written before are ignored too.
    const SNAPSHOT_SCHEMA: u64;

    /// Folds one event into the state.
    fn apply_event(&mut self, event: &Self::Event);

    /// Appends the state's snapshot fields to `out`.
    fn encode_snapshot(&self, out: &mut Fields) -> Result<(), EncodeError>;

    /// Rebuilds the state from snapshot fields.
    fn decode_snapshot(fields: &Fields) -> Result<Self, DecodeError>;

    /// A copy of the state, if the aggregate can make one. `#[derive(Aggregate)]` makes it
    /// with `Clone` when the aggregate implements `Clone`, and returns `None` otherwise.
    ///
    /// The [`Repository`](crate::Repository) uses it when a caller still holds the cached
    /// state a command must change (an earlier [`Executed::state`](crate::Executed)):
    /// with a copy the command starts from memory, without one it loads the aggregate.
    fn try_clone(&self) -> Option<Self> {
        None
    }

    /// The category name as a `Cow`, for [`StreamId`](crate::StreamId)s.
    fn category() -> Cow<'static, str> {
        Cow::Borrowed(Self::NAME)
    }
}

/// Command handling: decide which events a command causes, or reject it.
///
/// The handler only decides; the [`Repository`](crate::Repository) appends the events and
/// applies them. Use [`Changes`] when a command emits several events and a later one
/// depends on the state after an earlier one.
///
/// ```
/// # use es_core::{Aggregate, Apply, Event, Handle};
/// # #[derive(Event)] struct Deposited { amount: u64 }
/// # #[derive(Event)] enum AccountEvent { Deposited(Deposited) }
/// # #[derive(Aggregate, Default)] #[aggregate(event = AccountEvent)] struct Account { balance: u64 }
/// # impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount; } }
/// struct Deposit { amount: u64 }
///
/// #[derive(Debug, PartialEq)]
/// enum AccountError { ZeroAmount }
///
/// impl Handle<Deposit> for Account {
///     type Error = AccountError;
///     fn handle(&self, command: &Deposit) -> Result<Vec<AccountEvent>, AccountError> {
///         if command.amount == 0 {
///             return Err(AccountError::ZeroAmount);
///         }
///         Ok(vec![Deposited { amount: command.amount }.into()])
///     }
/// }
/// ```
pub trait Handle<C>: Aggregate {
    /// Why a command is rejected.
    type Error;

    /// The events `command` causes in the current state, or why it is rejected.
    fn handle(&self, command: &C) -> Result<Vec<Self::Event>, Self::Error>;
}

/// The events a command emits, each applied to a working copy of the state as it is
/// emitted, so a handler sees the state after each one.
///
/// ```
/// # use es_core::{Aggregate, Apply, Changes, Event};
/// # #[derive(Event)] struct Deposited { amount: u64 }
/// # #[derive(Event)] struct BonusGranted { amount: u64 }
/// # #[derive(Event)] enum AccountEvent { Deposited(Deposited), BonusGranted(BonusGranted) }
/// # #[derive(Aggregate, Default, Clone)] #[aggregate(event = AccountEvent)] struct Account { balance: u64 }
/// # impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount; } }
/// # impl Apply<BonusGranted> for Account { fn apply(&mut self, e: &BonusGranted) { self.balance += e.amount; } }
/// let account = Account { balance: 90 };
/// let mut changes = Changes::new(&account);
/// changes.emit(Deposited { amount: 20 });
/// if changes.state().balance >= 100 {
///     changes.emit(BonusGranted { amount: 5 });
/// }
/// assert_eq!(changes.state().balance, 115);
/// assert_eq!(changes.into_events().len(), 2);
/// ```
pub struct Changes<'a, A: Aggregate + Clone> {
    state: Cow<'a, A>,
    events: Vec<A::Event>,
}

impl<'a, A: Aggregate + Clone> Changes<'a, A> {
    /// Starts from `state`; it is copied on the first emit.
    pub fn new(state: &'a A) -> Self {
        Changes {
            state: Cow::Borrowed(state),
            events: Vec::new(),
        }
    }

    /// Emits an event and applies it to the working state.
    pub fn emit(&mut self, event: impl Into<A::Event>) -> &mut Self {
        let event = event.into();
        self.state.to_mut().apply_event(&event);
        self.events.push(event);
        self
    }

    /// The state after every event emitted so far.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The emitted events, in order.
    pub fn into_events(self) -> Vec<A::Event> {
        self.events
    }
}
