//! Real `redis-server` processes for the tests.
//!
//! A test either uses the server named by `TOWER_PKCE_TEST_REDIS_URL` (`.ci/run` starts one on
//! a free port for the whole run), with a key prefix of its own, or starts its own server on a
//! free port: always when it needs to stop, restart or reconfigure the server. Servers the
//! tests start keep nothing on disk and are killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const URL_VAR: &str = "TOWER_PKCE_TEST_REDIS_URL";

/// A `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("tower-pkce-redis-{port}-{}", suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Runs a command on the server, e.g. `CONFIG SET maxmemory …`; returns the raw reply.
    pub async fn command(&self, args: &[&str]) -> String {
        command(self.port, args).await
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "warning", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it (apt-get install redis-server) \
                     or set {URL_VAR}"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Ok(reply)) =
                tokio::time::timeout(Duration::from_secs(1), try_command(self.port, &["PING"]))
                    .await
            {
                if reply.starts_with("+PONG") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis URL for a test and a key prefix no other test uses; the server lives as long as
/// the returned guard.
pub async fn shared() -> (String, String, Option<RedisServer>) {
    let prefix = format!("test-{}:", suffix());
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => (url, prefix, None),
        _ => {
            let server = RedisServer::start().await;
            (server.url(), prefix, Some(server))
        }
    }
}

fn suffix() -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends one command in RESP and returns the raw reply (enough for the status and integer
/// replies the tests read).
pub async fn command(port: u16, args: &[&str]) -> String {
    try_command(port, args).await.unwrap()
}

async fn try_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
