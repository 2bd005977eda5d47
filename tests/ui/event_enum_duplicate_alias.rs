use es_core::Event;

#[derive(Event)]
#[event(alias = "SignedUp")]
struct Registered {
    name: String,
}

#[derive(Event)]
#[event(alias = "SignedUp")]
struct Invited {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    Invited(Invited),
}

fn main() {}
