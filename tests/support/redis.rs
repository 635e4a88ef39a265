//! Real `redis-server` processes for the tests.
//!
//! Most tests share one server, with a key prefix each: the one `TOWER_PKCE_TEST_REDIS_URL`
//! names (`.ci/run` starts one on a free port for the whole run), or else one this test
//! process starts on first use and that stops when the process exits. A test that stops,
//! restarts or reconfigures its server starts its own ([`RedisServer`]), killed when dropped.
//! Servers the tests start keep nothing on disk.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
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
        let port = free_port();
        let dir = data_dir(port);
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
        let child = server_command(self.port, &self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| cannot_start(e));
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn data_dir(port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tower-pkce-redis-{port}-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn server_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
        "--protected-mode",
        "no",
        "--port",
    ]
    .map(String::from)
    .into();
    args.push(port.to_string());
    args.push("--dir".into());
    args.push(dir.display().to_string());
    args
}

fn server_command(port: u16, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(server_args(port, dir));
    cmd
}

fn cannot_start(e: std::io::Error) -> ! {
    panic!(
        "cannot start redis-server ({e}): install it (apt-get install redis-server) or set \
         {URL_VAR} to a server the tests may use"
    )
}

/// The URL of the server shared by this test process (see the module's documentation).
pub fn process_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    static KEEPALIVE: Mutex<Option<(Child, Option<ChildStdin>)>> = Mutex::new(None);
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_VAR) {
            if !url.is_empty() {
                return url;
            }
        }
        // The server runs under a shell that kills it when its standard input closes, which
        // happens when this process exits however it exits: statics are never dropped.
        let port = free_port();
        let dir = data_dir(port);
        let quoted: Vec<String> = server_args(port, &dir)
            .iter()
            .map(|a| format!("'{a}'"))
            .collect();
        let line = format!("redis-server {}", quoted.join(" "));
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{line} & pid=$!; read _; kill $pid; wait $pid; rm -rf '{}'",
                dir.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| cannot_start(e));
        let stdin = shell.stdin.take();
        *KEEPALIVE.lock().unwrap() = Some((shell, stdin));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping_blocking(port) {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        format!("redis://127.0.0.1:{port}/0")
    })
    .clone()
}

fn ping_blocking(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut reply = [0u8; 5];
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_ok()
        && stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG"
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("test-{}:", suffix())
}

/// The shared server's URL and a key prefix of the test's own.
pub async fn shared() -> (String, String) {
    (process_url(), unique_prefix())
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
