//! The replay view in a real browser: headless Chromium driven by chromedriver. It opens
//! the seed's user, steps back to the start and forward through every event, checks at
//! each step that the state panel shows the state `load_as_of` gives for that version, with
//! the changed fields highlighted, jumps to a version, and saves a screenshot.
//!
//! Where Chromium or chromedriver is missing, the test says so and is skipped, unless
//! `ES_INSPECT_REQUIRE_BROWSER` is set (`.ci/run` installs both and sets it): then it fails.
//! `ES_INSPECT_SCREENSHOT=<path>` saves the screenshot there too (the README's image:
//! `ES_INSPECT_SCREENSHOT=docs/inspector-replay.png cargo test -p es-inspect --test browser`).

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use es_core::testing::servers::{find_on_path, free_loopback_port};
use es_core::{AsOf, InMemoryStore, Repository};
use es_inspect::Inspector;
use fantoccini::{Client, ClientBuilder, Locator};
use support::*;

const BROWSERS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// A chromedriver on a free loopback port, stopped when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start(binary: PathBuf) -> Chromedriver {
        let port = free_loopback_port(9515).expect("a free port");
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Chromedriver { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not accept connections on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50)); // polling the port, with a deadline
        }
        driver
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium and chromedriver, or why the test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = BROWSERS
        .iter()
        .find_map(|name| find_on_path(name))
        .ok_or_else(|| format!("no Chromium on PATH (looked for {BROWSERS:?})"))?;
    let driver = find_on_path("chromedriver").ok_or("no chromedriver on PATH")?;
    Ok((chromium, driver))
}

/// The state panel's rows: (field, value), and the fields highlighted as changed.
async fn state_panel(client: &Client) -> (Vec<(String, String)>, Vec<String>) {
    let mut rows = Vec::new();
    let mut changed = Vec::new();
    for row in client
        .find_all(Locator::Css("#state-table tr[data-field]"))
        .await
        .expect("state rows")
    {
        let field = row
            .attr("data-field")
            .await
            .expect("attr")
            .expect("a field name");
        let value = row
            .find(Locator::Css("td.value"))
            .await
            .expect("a value cell")
            .text()
            .await
            .expect("text");
        let class = row.attr("class").await.expect("attr").unwrap_or_default();
        if class.split_whitespace().any(|c| c == "changed") {
            changed.push(field.clone());
        }
        rows.push((field, value));
    }
    (rows, changed)
}

/// Waits until the state panel is at step `step` (its `data-version`).
async fn at_step(client: &Client, step: u64) {
    let selector = format!("body[data-ready='1'] #state-table[data-version='{step}']");
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&selector))
        .await
        .unwrap_or_else(|e| panic!("the state panel did not reach step {step} within 10 s: {e}"));
}

fn pairs_of(state: &serde_json::Value) -> Vec<(String, String)> {
    state
        .as_array()
        .expect("pairs")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("name").to_owned(),
                pair[1].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_view_steps_through_the_seed_users_history() {
    let (chromium, chromedriver) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var_os("ES_INSPECT_REQUIRE_BROWSER").is_none() => {
            eprintln!("skipped: {why}; install `chromium` and `chromium-driver` (.ci/run does)");
            return;
        }
        Err(why) => panic!("ES_INSPECT_REQUIRE_BROWSER is set, but {why}"),
    };
    let store = InMemoryStore::new();
    seed(&store).await;
    let served = Served::start(Inspector::new(store.clone()).aggregate::<User>()).await;
    let repository = Repository::<User, _>::new(store.clone());
    let mut expected = vec![state_pairs(&User::default())];
    for version in 1..=3 {
        let loaded = repository
            .load_as_of("duffy", AsOf::Version(version))
            .await
            .expect("load_as_of");
        expected.push(state_pairs(&loaded.state));
    }

    let driver = Chromedriver::start(chromedriver);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,760"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session");

    client
        .goto(&served.url("/#/c/user/duffy"))
        .await
        .expect("open the replay view");
    // It opens at the current state: the last step.
    at_step(&client, 3).await;
    let (rows, _) = state_panel(&client).await;
    assert_eq!(rows, pairs_of(&expected[3]), "the current state");
    let title = client
        .find(Locator::Css("#aggregate-id"))
        .await
        .expect("title")
        .text()
        .await
        .expect("text");
    assert!(title.contains("duffy"), "{title}");

    for step in (0..3).rev() {
        client
            .find(Locator::Css("#step-back"))
            .await
            .expect("back")
            .click()
            .await
            .expect("click back");
        at_step(&client, step).await;
        let (rows, _) = state_panel(&client).await;
        assert_eq!(
            rows,
            pairs_of(&expected[step as usize]),
            "back at step {step}"
        );
    }
    let highlights = [
        vec![],
        vec!["name".to_owned(), "surname".to_owned()],
        vec!["email".to_owned()],
        vec!["email".to_owned()],
    ];
    for step in 1..=3u64 {
        client
            .find(Locator::Css("#step-forward"))
            .await
            .expect("forward")
            .click()
            .await
            .expect("click forward");
        at_step(&client, step).await;
        let (rows, changed) = state_panel(&client).await;
        assert_eq!(
            rows,
            pairs_of(&expected[step as usize]),
            "forward at step {step}"
        );
        assert_eq!(
            changed, highlights[step as usize],
            "highlighted at step {step}"
        );
        let current = client
            .find(Locator::Css("li.event.current"))
            .await
            .expect("the current event")
            .attr("data-version")
            .await
            .expect("attr");
        assert_eq!(
            current,
            Some(step.to_string()),
            "the log marks the current event"
        );
    }

    let jump = client
        .find(Locator::Css("#jump-version"))
        .await
        .expect("jump input");
    jump.clear().await.expect("clear");
    jump.send_keys("2").await.expect("type");
    client
        .find(Locator::Css("#jump"))
        .await
        .expect("jump")
        .click()
        .await
        .expect("click jump");
    at_step(&client, 2).await;
    let (rows, changed) = state_panel(&client).await;
    assert_eq!(rows, pairs_of(&expected[2]), "jumped to version 2");
    assert_eq!(changed, ["email"]);

    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inspector-replay.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    if let Some(extra) = std::env::var_os("ES_INSPECT_SCREENSHOT") {
        let extra = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(extra);
        std::fs::write(&extra, &png).expect("save the screenshot where asked");
    }

    // The other views render from the same API: the categories, a category's aggregates
    // (links to their replays), and projections (none registered here).
    client
        .goto(&served.url("/#/"))
        .await
        .expect("open the categories");
    let category = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#categories a[href='#/c/user']"))
        .await
        .expect("the categories table links `user`");
    category.click().await.expect("open `user`");
    let aggregates = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#aggregates"))
        .await
        .expect("the aggregates of `user`")
        .text()
        .await
        .expect("text");
    assert!(
        aggregates.contains("bugs") && aggregates.contains("duffy"),
        "{aggregates}"
    );
    client.close().await.expect("close the session");
}
