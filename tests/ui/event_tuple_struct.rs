use es_core::Event;

#[derive(Event)]
struct Registered(String, String);

fn main() {}
