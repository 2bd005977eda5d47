use es_core::Event;

#[derive(Event)]
struct Upgraded {
    version: u32,
}

fn main() {}
