use es_core::Aggregate;

#[derive(Aggregate, Default)]
#[aggregate(event = "UserEvent")]
struct User {
    name: String,
}

fn main() {}
