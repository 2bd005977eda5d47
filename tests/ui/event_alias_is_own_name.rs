use es_core::Event;

#[derive(Event)]
#[event(rename = "UserRegistered", alias = "Registered", alias = "UserRegistered")]
struct Registered {
    name: String,
}

fn main() {}
