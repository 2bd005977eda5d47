// Two versions that each upcast from the other.
use es_core::Event;

#[derive(Event)]
#[event(rename = "Registered", version = 2, upcast_from = Registered)]
struct RegisteredV2 {
    name: String,
}

#[derive(Event)]
#[event(version = 3, upcast_from = RegisteredV2)]
struct Registered {
    first_name: String,
}

impl From<RegisteredV2> for Registered {
    fn from(old: RegisteredV2) -> Self {
        Registered { first_name: old.name }
    }
}

impl From<Registered> for RegisteredV2 {
    fn from(new: Registered) -> Self {
        RegisteredV2 { name: new.first_name }
    }
}

fn main() {}
