use es_core::Event;

#[derive(Event)]
#[event(version = 2, upcast_from = String)]
struct Registered {
    first_name: String,
}

impl From<String> for Registered {
    fn from(old: String) -> Self {
        Registered { first_name: old }
    }
}

fn main() {}
