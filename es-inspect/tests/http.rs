//! The HTTP API against a real server on a loopback port, on each backend: the endpoints,
//! replays equal to `load_as_of`, paging, the token, read-only refusal, the live tail, and
//! bad input answered with a 4xx and a message.

mod support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use es_core::{AsOf, Metadata, Repository};
use es_inspect::Inspector;
use futures_util::StreamExt;
use support::*;

macro_rules! on_each_backend {
    ($($case:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::memory().await).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::redis().await).await;
                }
            )*
        }
    };
}

on_each_backend!(
    the_page_and_the_json_endpoints_answer,
    each_replay_step_equals_load_as_of_its_version,
    aggregates_come_in_pages_and_hostile_ids_round_trip,
    a_token_guards_the_api,
    redrive_is_refused_read_only_and_works_when_allowed,
    the_tail_streams_new_events,
    bad_input_gets_a_4xx_with_a_message,
);

async fn the_page_and_the_json_endpoints_answer<B: Backend>(store: B) {
    seed(&store).await;
    let served = Served::start(Inspector::new(store.clone()).aggregate::<User>()).await;

    let page = served
        .client
        .get(served.url("/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status().as_u16(), 200);
    let content_type = page.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.expect("html");
    assert!(
        html.contains("es-inspect") && html.contains("state-table"),
        "the replay page"
    );

    let (status, info) = served.get("/api/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["writable"], false, "read-only by default");
    assert_eq!(info["replayable"], serde_json::json!(["user"]));

    let (status, categories) = served.get("/api/categories").await;
    assert_eq!(status, 200, "{categories}");
    let user = &categories["categories"][0];
    assert_eq!(
        (user["name"].as_str(), user["events"].as_u64()),
        (Some("user"), Some(4))
    );
    assert_eq!(user["replayable"], true);

    let (status, events) = served.get("/api/categories/user/events?id=duffy").await;
    assert_eq!(status, 200, "{events}");
    let events = events["events"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["type"], "Registered");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(
        events[0]["fields"],
        serde_json::json!([["name", "Duffy"], ["surname", "Duck"]])
    );
    assert_eq!(events[0]["metadata"]["correlation_id"], "signup-1");
    assert_eq!(events[1]["metadata"]["extra"]["by"], "duffy");
    assert!(events[0]["time"].as_str().expect("time").ends_with('Z'));

    let (status, some) = served
        .get("/api/categories/user/events?id=duffy&from=2&to=2")
        .await;
    assert_eq!(status, 200);
    assert_eq!(some["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(some["events"][0]["fields"][0][1], "duffy@acme.test");

    let (status, projections) = served.get("/api/projections").await;
    assert_eq!(
        (status, projections),
        (200, serde_json::json!({ "projections": [] }))
    );
}

async fn each_replay_step_equals_load_as_of_its_version<B: Backend>(store: B) {
    seed(&store).await;
    let served = Served::start(Inspector::new(store.clone()).aggregate::<User>()).await;
    let repository = Repository::<User, B>::new(store.clone());

    let (status, replay) = served.get("/api/categories/user/replay?id=duffy").await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["replayable"], true);
    assert_eq!(replay["initial"], state_pairs(&User::default()));
    let steps = replay["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    for (at, step) in steps.iter().enumerate() {
        let version = at as u64 + 1;
        let loaded = repository
            .load_as_of("duffy", AsOf::Version(version))
            .await
            .expect("load_as_of");
        assert_eq!(step["event"]["version"], version);
        assert_eq!(
            step["state"],
            state_pairs(&loaded.state),
            "state after version {version}"
        );
    }
    assert_eq!(steps[0]["changed"], serde_json::json!(["name", "surname"]));
    assert_eq!(steps[1]["changed"], serde_json::json!(["email"]));
    assert_eq!(steps[2]["changed"], serde_json::json!(["email"]));

    let (_, upto) = served
        .get("/api/categories/user/replay?id=duffy&version=2")
        .await;
    assert_eq!(upto["steps"].as_array().map(Vec::len), Some(2));

    // Time travel: the state from the events stored at or before the second one's time.
    let millis = steps[1]["event"]["timestamp"].as_u64().expect("timestamp");
    let as_of = UNIX_EPOCH + Duration::from_millis(millis);
    let loaded = repository
        .load_as_of("duffy", AsOf::Time(as_of))
        .await
        .expect("load_as_of a time");
    let time = steps[1]["event"]["time"].as_str().expect("time").to_owned();
    for query in [millis.to_string(), segment(&time)] {
        let (status, then) = served
            .get(&format!(
                "/api/categories/user/replay?id=duffy&as_of={query}"
            ))
            .await;
        assert_eq!(status, 200, "{then}");
        let steps = then["steps"].as_array().expect("steps");
        assert_eq!(steps.len() as u64, loaded.version, "as of {query}");
        assert_eq!(
            steps.last().expect("a step")["state"],
            state_pairs(&loaded.state)
        );
    }

    // Without a registered type: the events, no state.
    let bare = Served::start(Inspector::new(store.clone())).await;
    let (status, replay) = bare.get("/api/categories/user/replay?id=duffy").await;
    assert_eq!(status, 200);
    assert_eq!(replay["replayable"], false);
    assert_eq!(replay["steps"].as_array().map(Vec::len), Some(3));
    assert_eq!(replay["steps"][0]["state"], serde_json::json!([]));
}

async fn aggregates_come_in_pages_and_hostile_ids_round_trip<B: Backend>(store: B) {
    let hostile = [
        "a/b",
        "%2F",
        "{x}",
        "with space",
        "日本",
        "?q=1#f",
        "..",
        "a\\b",
        "",
        "&id=x",
    ];
    let mut ids: Vec<String> = (0..25).map(|n| format!("user-{n:02}")).collect();
    ids.extend(hostile.iter().map(|id| (*id).to_owned()));
    for id in &ids {
        let registered = Registered {
            name: id.clone(),
            surname: "Test".into(),
        };
        append(&store, id, registered, Metadata::new()).await;
    }
    let served = Served::start(Inspector::new(store.clone()).aggregate::<User>()).await;
    let mut listed: Vec<String> = Vec::new();
    let mut path = "/api/categories/user/aggregates?limit=10".to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "paging did not end");
        let (status, page) = served.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let got = page["ids"].as_array().expect("ids");
        assert!(got.len() <= 10);
        listed.extend(got.iter().map(|id| id.as_str().expect("id").to_owned()));
        match page["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/api/categories/user/aggregates?limit=10&after={}",
                    segment(next)
                )
            }
            None => break,
        }
    }
    assert_eq!(listed, ids, "every id once, in the order they started");
    for id in hostile {
        let (status, replay) = served
            .get(&format!("/api/categories/user/replay?id={}", segment(id)))
            .await;
        assert_eq!(status, 200, "{id:?}: {replay}");
        assert_eq!(replay["id"], id);
        assert_eq!(
            replay["steps"][0]["state"][0],
            serde_json::json!(["name", id])
        );
    }
}

async fn a_token_guards_the_api<B: Backend>(store: B) {
    seed(&store).await;
    let inspector = Inspector::new(store.clone()).token("s3cret");
    let served = Served::start(inspector.clone()).await;
    let (status, body) = served.get("/api/categories").await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().expect("message").contains("Bearer"),
        "{body}"
    );
    let wrong = served
        .client
        .get(served.url("/api/categories"))
        .bearer_auth("guess")
        .send()
        .await
        .expect("GET");
    assert_eq!(answer(wrong).await.0, 401);
    let right = served
        .client
        .get(served.url("/api/categories"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("GET");
    let (status, categories) = answer(right).await;
    assert_eq!(status, 200);
    assert_eq!(categories["categories"][0]["name"], "user");
    let page = served
        .client
        .get(served.url("/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(
        page.status().as_u16(),
        200,
        "the page holds no data and loads without it"
    );

    let anywhere = "0.0.0.0:0".parse().expect("addr");
    let refused = Inspector::new(store.clone()).bind(anywhere).await;
    let message = refused.expect_err("no token off loopback").to_string();
    assert!(message.contains("not a loopback address"), "{message}");
    let bound = inspector.bind(anywhere).await.expect("with a token");
    assert!(bound.local_addr().port() > 0);
}

async fn redrive_is_refused_read_only_and_works_when_allowed<B: Backend>(store: B) {
    let (runner, broken) = poisoned_projection(&store).await;
    let read_only = Served::start(Inspector::new(store.clone()).projection(runner.control())).await;
    let (status, projections) = read_only.get("/api/projections").await;
    assert_eq!(status, 200, "{projections}");
    let emails = &projections["projections"][0];
    assert_eq!(emails["name"], "emails");
    assert_eq!(emails["categories"][0]["category"], "user");
    assert_eq!(emails["categories"][0]["dead_letters"], 1);
    assert_eq!(emails["categories"][0]["pending"], 0);
    let (status, letters) = read_only.get("/api/projections/emails/dead-letters").await;
    assert_eq!(status, 200);
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["event_type"], "EmailUpdated");
    assert!(letter["error"]
        .as_str()
        .expect("error")
        .contains("cannot send to daisy@poison.test"));

    let (status, refused) = read_only.post("/api/projections/emails/redrive").await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused["error"]
        .as_str()
        .expect("message")
        .contains("read-only"));
    assert_eq!(
        runner.dead_letters("user").await.expect("letters").len(),
        1,
        "nothing changed"
    );

    let writable = Inspector::new(store.clone())
        .projection(runner.control())
        .allow_writes(true);
    let served = Served::start(writable).await;
    let (status, still) = served.post("/api/projections/emails/redrive").await;
    assert_eq!(status, 200, "{still}");
    assert_eq!(still["redriven"], 0);
    assert!(still["still_failing"][0]["error"]
        .as_str()
        .expect("error")
        .contains("cannot send"));
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, fixed) = served.post("/api/projections/emails/redrive").await;
    assert_eq!(
        (status, &fixed["redriven"]),
        (200, &serde_json::json!(1)),
        "{fixed}"
    );
    let (_, letters) = served.get("/api/projections/emails/dead-letters").await;
    assert_eq!(letters["dead_letters"], serde_json::json!([]));
}

async fn the_tail_streams_new_events<B: Backend>(store: B) {
    seed(&store).await;
    let inspector = Inspector::new(store.clone()).tail_poll(Duration::from_millis(5));
    let served = Served::start(inspector).await;
    let response = served
        .client
        .get(served.url("/api/categories/user/tail"))
        .send()
        .await
        .expect("GET tail");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    // The tail starts after the newest event: the seed is not sent, this one is.
    let registered = Registered {
        name: "Porky".into(),
        surname: "Pig".into(),
    };
    append(&store, "porky", registered, Metadata::new()).await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("a chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let message = text.split("\n\n").next().expect("a message");
    assert!(message.contains("event: event"), "{message}");
    let data = message
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("a data line");
    let event: serde_json::Value = serde_json::from_str(data).expect("json");
    assert_eq!(event["id"], "porky");
    assert_eq!(event["type"], "Registered");
    assert_eq!(event["fields"][0], serde_json::json!(["name", "Porky"]));
}

async fn bad_input_gets_a_4xx_with_a_message<B: Backend>(store: B) {
    seed(&store).await;
    let (runner, _) = poisoned_projection(&store).await;
    let inspector = Inspector::new(store.clone())
        .aggregate::<User>()
        .projection(runner.control());
    let served = Served::start(inspector).await;
    let cases = [
        (
            "/api/categories/nothing/aggregates",
            404,
            "no category named \"nothing\"",
        ),
        (
            "/api/categories/nothing/replay?id=x",
            404,
            "no category named",
        ),
        (
            "/api/categories/user/replay?id=nobody",
            404,
            "has no aggregate \"nobody\"",
        ),
        (
            "/api/categories/user/events?id=%7B%7D%2F..%00",
            404,
            "has no aggregate",
        ),
        (
            "/api/categories/user/replay",
            400,
            "the query parameter `id`",
        ),
        (
            "/api/categories/user/events?id=duffy&from=abc",
            400,
            "`from` must be a whole number",
        ),
        (
            "/api/categories/user/events?id=duffy&from=3&to=1",
            400,
            "comes after",
        ),
        (
            "/api/categories/user/events?id=duffy&to=99999999999999999999999",
            400,
            "whole number",
        ),
        (
            "/api/categories/user/replay?id=duffy&version=-1",
            400,
            "`version` must be",
        ),
        (
            "/api/categories/user/replay?id=duffy&as_of=yesterday",
            400,
            "is no time",
        ),
        (
            "/api/categories/user/replay?id=duffy&as_of=1&version=1",
            400,
            "not both",
        ),
        (
            "/api/categories/user/aggregates?limit=100000000",
            400,
            "a page holds 1 to 1000",
        ),
        (
            "/api/categories/user/aggregates?limit=0",
            400,
            "a page holds 1 to 1000",
        ),
        (
            "/api/categories/user/tail?after=nowhere",
            400,
            "no position",
        ),
        (
            "/api/projections/nobody/dead-letters",
            404,
            "no projection named",
        ),
        ("/api/nowhere", 404, "no such API route"),
    ];
    for (path, expected, says) in cases {
        let (status, body) = served.get(path).await;
        assert_eq!(status, expected, "{path}: {body}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no message: {body}"));
        assert!(message.contains(says), "{path}: {message}");
    }
    let (status, body) = served.post("/api/projections/nobody/redrive").await;
    assert_eq!(status, 404, "{body}");
    // An entry the registered type cannot decode: 422 naming the entry and field.
    append(
        &store,
        "broken",
        Registered {
            name: "x".into(),
            surname: "y".into(),
        },
        Metadata::new(),
    )
    .await;
    let undecodable = es_core::NewEvent {
        event_type: "EmailUpdated".into(),
        fields: es_core::codec::Fields::new(),
        metadata: Metadata::new(),
    };
    store
        .append(
            &es_core::StreamId::new("user", "broken"),
            es_core::ExpectedVersion::Exact(1),
            vec![undecodable],
            &Default::default(),
        )
        .await
        .expect("append");
    let (status, body) = served.get("/api/categories/user/replay?id=broken").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().expect("message").contains("`email`"),
        "{body}"
    );
}

/// Personal fields through a `Shredded` store: the events and the replay show them in the
/// clear, then as erased; never the markers of sealed values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_show_in_the_clear_then_erased() {
    use es_core::personal::{InMemoryKeys, Shredded};

    #[derive(es_core::Event, Debug, Clone, PartialEq)]
    #[event(rename = "Registered")]
    struct Registered {
        #[event(personal)]
        name: String,
        surname: String,
    }
    #[derive(es_core::Event, Debug, Clone, PartialEq)]
    enum Event {
        Registered(Registered),
    }
    #[derive(es_core::Aggregate, Default, Debug)]
    #[aggregate(event = Event, name = "user")]
    struct Person {
        #[aggregate(personal)]
        name: String,
        surname: String,
    }
    impl es_core::Apply<Registered> for Person {
        fn apply(&mut self, e: &Registered) {
            self.name = e.name.clone();
            self.surname = e.surname.clone();
        }
    }

    let store = Shredded::new(memory().await, InMemoryKeys::new());
    let registered = Registered {
        name: "Duffy".into(),
        surname: "Duck".into(),
    };
    append(&store, "duffy", registered, Metadata::new()).await;
    let served = Served::start(Inspector::new(store.clone()).aggregate::<Person>()).await;
    let (_, replay) = served.get("/api/categories/user/replay?id=duffy").await;
    let state = &replay["steps"][0]["state"];
    assert_eq!(
        state,
        &serde_json::json!([["name", "Duffy"], ["surname", "Duck"]])
    );
    assert_eq!(
        replay["steps"][0]["event"]["fields"][0],
        serde_json::json!(["name", "Duffy"])
    );

    store
        .erase_subject("duffy", Metadata::new())
        .await
        .expect("erase");
    let (status, replay) = served.get("/api/categories/user/replay?id=duffy").await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(
        replay["steps"][0]["event"]["fields"][0],
        serde_json::json!(["name", es_inspect::views::ERASED_TEXT])
    );
    assert_eq!(
        replay["steps"][0]["state"],
        serde_json::json!([["name", ""], ["surname", "Duck"]])
    );
}
