use es_core::Event;

#[derive(Event)]
#[event(rename = "Registered")]
struct RegisteredV1 {
    name: String,
}

#[derive(Event)]
#[event(version = 2, upcast_from = RegisteredV1)]
struct Registered {
    first_name: String,
}

fn main() {}
