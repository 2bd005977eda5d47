use es_core::Event;

#[derive(Event)]
#[event(rename = "Registered")]
struct RegisteredV1 {
    name: String,
}

#[derive(Event)]
#[event(upcast_from = RegisteredV1)]
struct Registered {
    first_name: String,
}

impl From<RegisteredV1> for Registered {
    fn from(old: RegisteredV1) -> Self {
        Registered { first_name: old.name }
    }
}

fn main() {}
