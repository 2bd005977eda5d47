//! What the example tests share.

use std::path::PathBuf;
use std::process::Command;

/// The example binary `cargo test` built next to this test's binary.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        // Built on demand when the tests run without the examples (e.g. `--test examples`).
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "es-examples", "--example", name])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building example {name}");
    }
    path
}
