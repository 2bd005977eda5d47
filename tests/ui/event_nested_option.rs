use es_core::Event;

#[derive(Event)]
struct NicknameChanged {
    // `Some(None)` (nickname cleared) would be read back as `None` (not changed).
    nickname: Option<Option<String>>,
}

fn main() {}
