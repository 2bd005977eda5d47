use es_core::Event;

#[derive(Event)]
#[event(rename = UserRegistered)]
struct Registered {
    name: String,
}

fn main() {}
