use es_core::Event;

#[derive(Event)]
#[event(alias = "SignedUp")]
#[event(alias = "SignedUp")]
struct Registered {
    name: String,
}

fn main() {}
