use es_core::{Aggregate, Apply, Event};
use serde_json::Value;

#[derive(Event)]
struct SettingsChanged {
    #[event(json)]
    settings: Value,
}

#[derive(Aggregate, Default)]
#[aggregate(event = SettingsChanged)]
struct User {
    #[aggregate(json)]
    settings: Option<Box<Value>>,
}

impl Apply<SettingsChanged> for User {
    fn apply(&mut self, e: &SettingsChanged) {
        self.settings = Some(Box::new(e.settings.clone()));
    }
}

fn main() {}
