use es_core::Event;

// A json field whose value is JSON `null` is stored as an absent field, and an absent field
// reads back as `null`: `Some` of anything that can be `null` comes back as `None`.
#[derive(Event)]
struct ProfileEdited {
    #[event(json)]
    bio: Option<Option<String>>,
    #[event(json)]
    extra: Option<serde_json::Value>,
    #[event(json)]
    seen: Option<()>,
    // Fine: no `null` inside, or no outer `Option`.
    #[event(json)]
    tags: Option<Vec<Option<String>>>,
    #[event(json)]
    raw: serde_json::Value,
}

fn main() {}
