use es_core::Event;

struct Address {
    street: String,
}

#[derive(Event)]
struct Moved {
    #[event(personal)]
    address: Address,
}

fn main() {}
