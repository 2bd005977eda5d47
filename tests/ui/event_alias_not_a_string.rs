use es_core::Event;

#[derive(Event)]
#[event(alias = UserRegistered)]
struct Registered {
    name: String,
}

fn main() {}
