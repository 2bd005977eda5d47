// The old struct is stored under its own name, which `Registered` does not read.
use es_core::Event;

#[derive(Event)]
struct RegisteredV1 {
    name: String,
}

#[derive(Event)]
#[event(version = 2, upcast_from = RegisteredV1)]
struct Registered {
    first_name: String,
}

impl From<RegisteredV1> for Registered {
    fn from(old: RegisteredV1) -> Self {
        Registered { first_name: old.name }
    }
}

fn main() {}
