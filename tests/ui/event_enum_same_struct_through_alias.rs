// Two paths to one struct that the derive cannot see are the same (here `crate::Registered`
// in the crate root): the `From` impls conflict at the second variant's type, and the
// duplicate event type is reported at the variant.
use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    SignedUp(crate::Registered),
}

fn main() {}
