//! What test harnesses that start a server of their own share (es-redis's `redis-server`,
//! es-postgres's PostgreSQL): a free loopback port, a private temporary directory, unique
//! names, and a watchdog that stops the server once the test process is gone.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// A free port on 127.0.0.1, never `avoid` (the machine's own server's port).
pub fn free_loopback_port(avoid: u16) -> std::io::Result<u16> {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if port != avoid {
            return Ok(port);
        }
    }
}

/// A new directory `<system temp>/<prefix>-<pid>-<n>`, for one server.
pub fn temp_dir(prefix: &str) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The first file named `program` in a directory on `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A name no other call in this process returns: `<label><separator><n>`.
pub fn unique_name(label: &str, separator: char) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{label}{separator}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A small shell loop that, once this process has exited, stops process `server` (TERM,
/// then KILL a second later) and removes `dir`: a server kept in a `static` is never
/// dropped. `None` (with a warning) if no shell could be started.
pub fn spawn_watchdog(server: u32, dir: &Path) -> Option<Child> {
    const SCRIPT: &str = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill "$2" 2>/dev/null; sleep 1; kill -9 "$2" 2>/dev/null; rm -rf "$3""#;
    Command::new("sh")
        .args(["-c", SCRIPT, "es-test-server-watchdog"])
        .arg(std::process::id().to_string())
        .arg(server.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .inspect_err(|error| tracing::warn!(%error, "no watchdog for a test server"))
        .ok()
}
