use es_core::{Aggregate, Apply, Event};

#[derive(Event)]
struct NicknameChanged {
    nickname: Option<String>,
}

#[derive(Aggregate, Default)]
#[aggregate(event = NicknameChanged)]
struct User {
    // `Some(None)` (nickname cleared) would be read back from a snapshot as `None`.
    nickname: Option<Option<String>>,
    // Not stored, so not reported.
    #[aggregate(skip)]
    draft: Option<Option<String>>,
}

impl Apply<NicknameChanged> for User {
    fn apply(&mut self, e: &NicknameChanged) {
        self.nickname = Some(e.nickname.clone());
    }
}

fn main() {}
