//! The seed's social network: profile updates, activity and friends are three aggregate
//! types (three category streams, like the seed's `user_updates`, `user_activity` and
//! `user_friends`), and a consumer-group projection builds one profile per user in a Redis
//! hash (the seed's `user_snapshot_<id>`).
//!
//! ```text
//! cargo run --example social_profile                 # Redis on 127.0.0.1:6379
//! cargo run --example social_profile -- --in-memory  # no Redis needed
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use es_core::evolution::check_category;
use es_core::projection::{Projection, ProjectionOptions, ProjectionRunner};
use es_core::read_model::ReadModel;
use es_core::StoreError;
use es_core::{
    Aggregate, Apply, Event, EventStore, Handle, Position, RecordedEvent, Repository, SnapshotStore,
};
use es_examples::{inspect, run, Backend, Options};
use es_inspect::Inspector;

// ---- user_updates: registration and renames -------------------------------------------

#[derive(Event, Debug, Clone, PartialEq)]
struct Registered {
    name: String,
    surname: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct Renamed {
    name: String,
    surname: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum UserUpdate {
    Registered(Registered),
    Renamed(Renamed),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = UserUpdate, name = "user_updates")]
struct UserProfile {
    registered: bool,
}

impl Apply<Registered> for UserProfile {
    fn apply(&mut self, _: &Registered) {
        self.registered = true;
    }
}
impl Apply<Renamed> for UserProfile {
    fn apply(&mut self, _: &Renamed) {}
}

struct Register(&'static str, &'static str);
struct Rename(&'static str, &'static str);

impl Handle<Register> for UserProfile {
    type Error = SocialError;
    fn handle(&self, c: &Register) -> Result<Vec<UserUpdate>, SocialError> {
        if self.registered {
            return Err(SocialError("already registered"));
        }
        Ok(vec![Registered {
            name: c.0.into(),
            surname: c.1.into(),
        }
        .into()])
    }
}

impl Handle<Rename> for UserProfile {
    type Error = SocialError;
    fn handle(&self, c: &Rename) -> Result<Vec<UserUpdate>, SocialError> {
        if !self.registered {
            return Err(SocialError("not registered"));
        }
        Ok(vec![Renamed {
            name: c.0.into(),
            surname: c.1.into(),
        }
        .into()])
    }
}

// ---- user_activity: kicks and dislikes --------------------------------------------------

#[derive(Event, Debug, Clone, PartialEq)]
struct Kicked {
    object: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct Disliked {
    object: String,
    what: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum Activity {
    Kicked(Kicked),
    Disliked(Disliked),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = Activity, name = "user_activity")]
struct UserActivity {
    actions: u64,
}

impl Apply<Kicked> for UserActivity {
    fn apply(&mut self, _: &Kicked) {
        self.actions += 1;
    }
}
impl Apply<Disliked> for UserActivity {
    fn apply(&mut self, _: &Disliked) {
        self.actions += 1;
    }
}

struct Kick(&'static str);
struct Dislike(&'static str, &'static str);

impl Handle<Kick> for UserActivity {
    type Error = SocialError;
    fn handle(&self, c: &Kick) -> Result<Vec<Activity>, SocialError> {
        Ok(vec![Kicked { object: c.0.into() }.into()])
    }
}

impl Handle<Dislike> for UserActivity {
    type Error = SocialError;
    fn handle(&self, c: &Dislike) -> Result<Vec<Activity>, SocialError> {
        Ok(vec![Disliked {
            object: c.0.into(),
            what: c.1.into(),
        }
        .into()])
    }
}

// ---- user_friends: friendships ----------------------------------------------------------

#[derive(Event, Debug, Clone, PartialEq)]
struct FriendAdded {
    friend_id: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct FriendRemoved {
    friend_id: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
enum Friendship {
    FriendAdded(FriendAdded),
    FriendRemoved(FriendRemoved),
}

#[derive(Aggregate, Default, Debug, Clone)]
#[aggregate(event = Friendship, name = "user_friends")]
struct UserFriends {
    #[aggregate(json)]
    friends: Vec<String>,
}

impl Apply<FriendAdded> for UserFriends {
    fn apply(&mut self, e: &FriendAdded) {
        self.friends.push(e.friend_id.clone());
    }
}
impl Apply<FriendRemoved> for UserFriends {
    fn apply(&mut self, e: &FriendRemoved) {
        self.friends.retain(|f| *f != e.friend_id);
    }
}

struct AddFriend(&'static str);
struct RemoveFriend(&'static str);

impl Handle<AddFriend> for UserFriends {
    type Error = SocialError;
    fn handle(&self, c: &AddFriend) -> Result<Vec<Friendship>, SocialError> {
        if self.friends.iter().any(|f| f == c.0) {
            return Err(SocialError("already friends"));
        }
        Ok(vec![FriendAdded {
            friend_id: c.0.into(),
        }
        .into()])
    }
}

impl Handle<RemoveFriend> for UserFriends {
    type Error = SocialError;
    fn handle(&self, c: &RemoveFriend) -> Result<Vec<Friendship>, SocialError> {
        if !self.friends.iter().any(|f| f == c.0) {
            return Err(SocialError("not friends"));
        }
        Ok(vec![FriendRemoved {
            friend_id: c.0.into(),
        }
        .into()])
    }
}

#[derive(Debug)]
struct SocialError(&'static str);

impl std::fmt::Display for SocialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for SocialError {}

// ---- the read side: one profile per user, from all three categories ---------------------

/// What the profile projection reads: events of three categories.
#[derive(Event, Debug, Clone, PartialEq)]
enum ProfileInput {
    Registered(Registered),
    Renamed(Renamed),
    Kicked(Kicked),
    Disliked(Disliked),
    FriendAdded(FriendAdded),
    FriendRemoved(FriendRemoved),
}

/// Profiles in a read model: Redis hashes on Redis, memory with `--in-memory`; the
/// projection's code is the same.
struct ProfileProjection(ReadModel);

const PROJECTION: &str = "profiles";

fn hash_name(user: &str) -> String {
    format!("user_snapshot_{user}")
}

#[async_trait::async_trait]
impl Projection for ProfileProjection {
    type Event = ProfileInput;
    type Error = StoreError;

    fn name(&self) -> &str {
        self.0.projection()
    }

    fn read_model(&self) -> Option<&ReadModel> {
        Some(&self.0)
    }

    fn categories(&self) -> Vec<Cow<'static, str>> {
        vec![
            UserProfile::category(),
            UserActivity::category(),
            UserFriends::category(),
        ]
    }

    async fn handle(&self, event: &RecordedEvent<ProfileInput>) -> Result<(), StoreError> {
        let hash = hash_name(&event.stream.id);
        // (field, new value) to set, or (field, increment) to add.
        let (sets, increments): (Vec<(&str, String)>, Vec<(&str, i64)>) = match &event.event {
            ProfileInput::Registered(Registered { name, surname })
            | ProfileInput::Renamed(Renamed { name, surname }) => (
                vec![("name", name.clone()), ("surname", surname.clone())],
                vec![],
            ),
            ProfileInput::Kicked(_) => (vec![], vec![("kicks", 1)]),
            ProfileInput::Disliked(_) => (vec![], vec![("dislikes", 1)]),
            ProfileInput::FriendAdded(_) => (vec![], vec![("friends", 1)]),
            ProfileInput::FriendRemoved(_) => (vec![], vec![("friends", -1)]),
        };
        let mut update = self.0.update(event);
        for (field, value) in sets {
            update = update.hset(&hash, field, value);
        }
        for (field, by) in increments {
            update = update.hincrby(&hash, field, by);
        }
        // `AlreadyApplied` on a re-delivery: the profile is already up to date.
        let _applied = update.commit().await?;
        Ok(())
    }
}

async fn social_profile(
    options: Options,
    backend: Backend,
) -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn SnapshotStore> = backend.store();
    if options.check {
        // The pre-deploy check: can this build read everything stored in the namespace?
        let reports = [
            check_category::<UserUpdate, _>(&*store, "user_updates").await?,
            check_category::<Activity, _>(&*store, "user_activity").await?,
            check_category::<Friendship, _>(&*store, "user_friends").await?,
        ];
        for report in &reports {
            print!("{report}");
        }
        if reports.iter().all(|r| r.is_clean()) {
            println!("every stored event decodes with this build");
            return Ok(());
        }
        return Err("some stored events do not decode with this build".into());
    }
    let updates = Repository::<UserProfile, _>::new(store.clone());
    let activity = Repository::<UserActivity, _>::new(store.clone());
    let friends = Repository::<UserFriends, _>::new(store.clone());

    // The write side: the seed's commands. Each category's last `Executed` says which
    // position the projection must reach to show it (read-your-writes, below).
    updates.execute("1", &Register("Duffy", "Duck")).await?;
    updates.execute("2", &Register("Bugs", "Bunny")).await?;
    activity.execute("1", &Kick("Bugs")).await?;
    let last_activity = activity.execute("1", &Dislike("Bugs", "face")).await?;
    friends.execute("1", &AddFriend("2")).await?;
    friends.execute("2", &AddFriend("1")).await?;
    let last_friends = friends.execute("1", &RemoveFriend("2")).await?;
    let last_updates = updates.execute("1", &Rename("Daffy", "Duck")).await?;
    if let Err(error) = friends.execute("1", &RemoveFriend("2")).await {
        println!("rejected: user 1 removes friend 2 again: {error}");
    }

    println!("event log:");
    for category in ["user_updates", "user_activity", "user_friends"] {
        let events = store.read_category(category, Position::ZERO, 1000).await?;
        for event in &events {
            let fields: Vec<String> = event
                .event
                .iter()
                .map(|(n, v)| format!("{n} {}", String::from_utf8_lossy(v)))
                .collect();
            println!(
                "  {category} {} user_id {} type {} {}",
                event.position,
                event.stream.id,
                event.event_type,
                fields.join(" ")
            );
        }
    }

    // The read side: one projection, on whichever backend was chosen.
    let read_model = backend.projections().read_model(PROJECTION);
    let runner = ProjectionRunner::connect(
        backend.projections(),
        ProfileProjection(read_model.clone()),
        ProjectionOptions::new("worker-1").block(Duration::from_millis(100)),
    )
    .await?;
    let mut progress = runner.progress();
    let worker = runner.spawn();
    // Read-your-writes: wait until the projection shows each category's last command.
    let timeout = Duration::from_secs(10);
    progress.wait_for_executed(&last_updates, timeout).await?;
    progress.wait_for_executed(&last_activity, timeout).await?;
    progress.wait_for_executed(&last_friends, timeout).await?;
    let (runner, stats) = worker.stop().await?;
    println!(
        "projection `{PROJECTION}` (worker-1) handled {} events",
        stats.handled
    );
    let mut profiles = BTreeMap::new();
    for user in ["1", "2"] {
        let hash = hash_name(user);
        let fields: BTreeMap<String, String> = read_model
            .hash(&hash)
            .await?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        profiles.insert(hash, fields);
    }
    if let Some(redis) = backend.redis() {
        let keys = redis.keys();
        println!("look at the same data with redis-cli:");
        let cli = format!("redis-cli -u {}", options.redis_url);
        for category in ["user_updates", "user_activity", "user_friends"] {
            println!("  {cli} XRANGE '{}' - +", keys.category_stream(category));
        }
        println!(
            "  {cli} HGETALL '{}'",
            keys.read_model_hash(PROJECTION, &hash_name("1"))
        );
        println!(
            "  {cli} XINFO GROUPS '{}'",
            keys.category_stream("user_updates")
        );
    }
    if let (Some(pg), Some(url)) = (backend.postgres(), &options.postgres_url) {
        let s = pg.quoted_schema();
        println!("look at the same data with psql:");
        println!(
            "  psql {url} -c 'SELECT category, position, aggregate_id, version, event_type, field_names FROM {s}.events ORDER BY category, position'"
        );
        println!(
            "  psql {url} -c 'SELECT hash, field, convert_from(value, $$UTF8$$) FROM {s}.read_model_fields WHERE projection = $${PROJECTION}$$'"
        );
    }

    println!("profiles:");
    for (hash, fields) in &profiles {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {hash}: {}", fields.join(" "));
    }
    let duffy = profiles
        .get("user_snapshot_1")
        .ok_or("no profile for user 1")?;
    let expected = [
        ("name", "Daffy"),
        ("kicks", "1"),
        ("dislikes", "1"),
        ("friends", "0"),
    ];
    for (field, value) in expected {
        if duffy.get(field).map(String::as_str) != Some(value) {
            return Err(
                format!("profile of user 1: expected {field}={value}, got {duffy:?}").into(),
            );
        }
    }
    let inspector = Inspector::new(store)
        .aggregate::<UserProfile>()
        .aggregate::<UserActivity>()
        .aggregate::<UserFriends>()
        .projection(runner.control());
    inspect(&options, inspector).await
}

#[tokio::main]
async fn main() -> ExitCode {
    run(social_profile).await
}
