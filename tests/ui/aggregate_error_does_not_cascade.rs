// A mistake in the aggregate's attributes is reported once: the type's `Handle` impl and
// its repository do not add errors of their own.
use es_core::{Aggregate, Apply, Event, Handle, InMemoryStore, Repository};

#[derive(Event)]
struct Registered {
    name: String,
}

#[derive(Aggregate, Default)]
#[aggregate(event = Registered, name = "user:v1")]
struct User {
    name: String,
}

impl Apply<Registered> for User {
    fn apply(&mut self, e: &Registered) {
        self.name = e.name.clone();
    }
}

struct Register;

impl Handle<Register> for User {
    type Error = String;
    fn handle(&self, _: &Register) -> Result<Vec<Registered>, String> {
        Ok(vec![])
    }
}

fn main() {
    let _users = Repository::<User, _>::new(InMemoryStore::new());
}
