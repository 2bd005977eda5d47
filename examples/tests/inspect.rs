//! `--inspect ADDR`: after its run, an example serves the inspector on the address until
//! stopped, over the data the run stored.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::example;

/// An example process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts example `name` with `args` and `--inspect 127.0.0.1:0`; returns it and the
/// inspector's base URL from the line it prints, waiting at most 60 s for it.
fn start(name: &str, args: &[&str]) -> (Running, String) {
    let mut child = Command::new(example(name))
        .args(args)
        .args(["--inspect", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (found, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("inspector at ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = found.send(url);
            }
        }
    });
    let url = lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{name} printed no `inspector at` line within 60 s"));
    (running, url)
}

async fn get(url: &str) -> serde_json::Value {
    let response = reqwest::get(url).await.expect("GET");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.json().await.expect("json")
}

#[tokio::test]
async fn social_profile_serves_the_inspector_after_its_run() {
    let (_running, url) = start("social_profile", &["--in-memory"]);
    let page = reqwest::get(&url).await.expect("GET /");
    assert!(page.text().await.expect("html").contains("es-inspect"));
    let categories = get(&format!("{url}api/categories")).await;
    let names: Vec<&str> = categories["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["user_activity", "user_friends", "user_updates"]);
    let replay = get(&format!("{url}api/categories/user_updates/replay?id=1")).await;
    let last = replay["steps"]
        .as_array()
        .expect("steps")
        .last()
        .expect("a step")
        .clone();
    assert_eq!(last["event"]["type"], "Renamed", "{last}");
    assert_eq!(
        last["event"]["fields"][0],
        serde_json::json!(["name", "Daffy"])
    );
    assert_eq!(last["state"], serde_json::json!([["registered", "true"]]));
    let projections = get(&format!("{url}api/projections")).await;
    assert_eq!(projections["projections"][0]["name"], "profiles");
}

#[tokio::test]
async fn bank_serves_the_inspector_after_its_run() {
    let (_running, url) = start("bank", &["--in-memory"]);
    let replay = get(&format!("{url}api/categories/account/replay?id=carol")).await;
    assert_eq!(replay["replayable"], true);
    assert_eq!(
        replay["steps"]
            .as_array()
            .expect("steps")
            .last()
            .expect("a step")["event"]["type"],
        "AccountClosed"
    );
    let projections = get(&format!("{url}api/projections")).await;
    assert_eq!(projections["projections"][0]["name"], "balances");
}
