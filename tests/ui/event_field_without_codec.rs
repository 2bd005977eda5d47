use es_core::Event;

struct Address {
    city: String,
}

#[derive(Event)]
struct Moved {
    to: Address,
}

fn main() {}
