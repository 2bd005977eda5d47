use es_core::Event;

#[derive(Event)]
struct Registered {
    name: String,
}

// `Invited` entries were once stored as `Registered`: an entry of that type could be either.
#[derive(Event)]
#[event(alias = "Registered")]
struct Invited {
    name: String,
}

#[derive(Event)]
enum UserEvent {
    Registered(Registered),
    Invited(Invited),
}

fn main() {}
