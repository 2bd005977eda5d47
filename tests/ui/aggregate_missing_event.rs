use es_core::Aggregate;

#[derive(Aggregate, Default)]
struct User {
    name: String,
}

fn main() {}
