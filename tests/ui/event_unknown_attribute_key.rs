use es_core::Event;

#[derive(Event)]
#[event(renmae = "UserRegistered")]
struct Registered {
    name: String,
}

fn main() {}
