use es_core::Event;

#[derive(Event)]
union Registered {
    id: u64,
}

fn main() {}
