//! Testing helpers (feature `testing`): given/when/then tests of aggregates, and the
//! conformance suites every backend runs: [`conformance_tests!`](crate::conformance_tests)
//! (stores, repositories) and
//! [`projection_conformance_tests!`](crate::projection_conformance_tests) (projections and
//! read models).

use std::fmt::Debug;

use crate::aggregate::{Aggregate, Handle};
use crate::codec::Fields;
use crate::event::Event;

mod cache_cases;
mod category_cases;
pub mod conformance;
mod deletion_cases;
mod evolution_cases;
mod live_projection_cases;
pub mod personal_cases;
pub mod projection_cases;
mod read_model_cases;
mod redrive_cases;
mod repository_cases;
pub mod servers;
mod validation_cases;

/// A given/when/then test of an aggregate's command handling, with no store involved.
///
/// ```
/// # use es_core::{Aggregate, Apply, Event, Handle};
/// use es_core::testing::AggregateTest;
/// # #[derive(Event, Debug, PartialEq)] struct Deposited { amount: u64 }
/// # #[derive(Event, Debug, PartialEq)] struct Withdrawn { amount: u64 }
/// # #[derive(Event, Debug, PartialEq)] enum AccountEvent { Deposited(Deposited), Withdrawn(Withdrawn) }
/// # #[derive(Aggregate, Default, Debug)] #[aggregate(event = AccountEvent)] struct Account { balance: u64 }
/// # impl Apply<Deposited> for Account { fn apply(&mut self, e: &Deposited) { self.balance += e.amount; } }
/// # impl Apply<Withdrawn> for Account { fn apply(&mut self, e: &Withdrawn) { self.balance -= e.amount; } }
/// # struct Withdraw(u64);
/// # #[derive(Debug, PartialEq)] struct Insufficient;
/// # impl Handle<Withdraw> for Account {
/// #     type Error = Insufficient;
/// #     fn handle(&self, c: &Withdraw) -> Result<Vec<AccountEvent>, Insufficient> {
/// #         if c.0 > self.balance { return Err(Insufficient) }
/// #         Ok(vec![Withdrawn { amount: c.0 }.into()])
/// #     }
/// # }
/// AggregateTest::<Account>::given([Deposited { amount: 10 }])
///     .when(&Withdraw(4))
///     .then([Withdrawn { amount: 4 }]);
///
/// AggregateTest::<Account>::given([Deposited { amount: 10 }])
///     .when(&Withdraw(11))
///     .then_error(Insufficient);
/// ```
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the state after `events`.
    pub fn given<E: Into<A::Event>>(events: impl IntoIterator<Item = E>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply_event(&event.into());
        }
        AggregateTest { state }
    }

    /// Starts from the state after `events` as a store hands them back: each is encoded,
    /// then decoded as the aggregate's event type. An event struct of an older version
    /// (`#[event(version = N, upcast_from = ...)]`) or under an old name is upcast the way a
    /// load upcasts its stored entries, so a test can start from a history written by
    /// older code. Panics, naming the event, if one does not decode.
    ///
    /// ```
    /// use es_core::testing::AggregateTest;
    /// # use es_core::{Aggregate, Apply, Event};
    /// #[derive(Event)]
    /// #[event(rename = "Registered")]
    /// struct RegisteredV1 { name: String }
    ///
    /// #[derive(Event)]
    /// #[event(version = 2, upcast_from = RegisteredV1)]
    /// struct Registered { first_name: String, last_name: String }
    ///
    /// impl From<RegisteredV1> for Registered {
    ///     fn from(old: RegisteredV1) -> Self {
    ///         let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
    ///         Registered { first_name: first.into(), last_name: last.into() }
    ///     }
    /// }
    /// # #[derive(Event)] enum UserEvent { Registered(Registered) }
    /// # #[derive(Aggregate, Default)] #[aggregate(event = UserEvent)] struct User { last_name: String }
    /// # impl Apply<Registered> for User { fn apply(&mut self, e: &Registered) { self.last_name = e.last_name.clone(); } }
    ///
    /// let user = AggregateTest::<User>::given_stored([RegisteredV1 { name: "Duffy Duck".into() }])
    ///     .then_state();
    /// assert_eq!(user.last_name, "Duck");
    /// ```
    pub fn given_stored<E: Event>(events: impl IntoIterator<Item = E>) -> Self {
        Self::given_no_events().and_stored(events)
    }

    /// Adds more events to the history as a store hands them back (see
    /// [`given_stored`](Self::given_stored)).
    pub fn and_stored<E: Event>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        for event in events {
            let mut fields = Fields::new();
            let event_type = event.event_type();
            if let Err(error) = event.encode(&mut fields) {
                panic!("given event `{event_type}` does not encode: {error}");
            }
            match A::Event::decode(event_type, &fields) {
                Ok(event) => self.state.apply_event(&event),
                Err(error) => panic!(
                    "given event `{event_type}` does not decode as the aggregate's events: {error}"
                ),
            }
        }
        self
    }

    /// The state after the given events, with no command.
    pub fn then_state(self) -> A {
        self.state
    }

    /// Starts from a new aggregate (no events).
    pub fn given_no_events() -> Self {
        AggregateTest {
            state: A::default(),
        }
    }

    /// Adds more events of another type to the history.
    pub fn and<E: Into<A::Event>>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        for event in events {
            self.state.apply_event(&event.into());
        }
        self
    }

    /// Handles `command` in the given state.
    pub fn when<C>(self, command: &C) -> Outcome<A, A::Error>
    where
        A: Handle<C>,
    {
        let result = self.state.handle(command);
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// What a command did in an [`AggregateTest`].
pub struct Outcome<A: Aggregate, Err> {
    state: A,
    result: Result<Vec<A::Event>, Err>,
}

impl<A: Aggregate, Err: Debug> Outcome<A, Err>
where
    A::Event: Debug + PartialEq,
{
    /// Asserts the command emitted exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then<E: Into<A::Event>>(self, expected: impl IntoIterator<Item = E>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().map(Into::into).collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command emitted other events");
                let mut state = self.state;
                for event in &events {
                    state.apply_event(event);
                }
                state
            }
            Err(error) => {
                panic!("expected events {expected:?}, the command was rejected: {error:?}")
            }
        }
    }

    /// Asserts the command emitted no events.
    #[track_caller]
    pub fn then_nothing(self) -> A {
        self.then(Vec::<A::Event>::new())
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: Err)
    where
        Err: PartialEq,
    {
        match self.result {
            Ok(events) => panic!("expected rejection {expected:?}, the command emitted {events:?}"),
            Err(error) => assert_eq!(error, expected, "the command was rejected otherwise"),
        }
    }

    /// The raw result, for custom assertions.
    pub fn into_result(self) -> Result<Vec<A::Event>, Err> {
        self.result
    }
}
