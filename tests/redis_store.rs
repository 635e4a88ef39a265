//! What only `RedisStore` has to get right, against a real `redis-server`: a connection that
//! goes silent is replaced, a redemption whose reply is lost is given back, corrupt records
//! fail closed, the failure count's every byte, and what the keys and values hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use support::redis::{process_url, unique_prefix};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower_pkce::store::{CodeBinding, CodeState, PendingFlow, StoreKey};
use tower_pkce::{ChallengeMethod, ChallengeStore, CodeChallenge, RedisStore, StoreError};

const TTL: Duration = Duration::from_secs(60);

fn binding() -> CodeBinding {
    let challenge = CodeChallenge::parse(
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ChallengeMethod::S256,
    )
    .unwrap();
    CodeBinding::new(Some(challenge), "app")
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(process_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A TCP forwarder in front of the shared Redis whose connections can be frozen: a frozen
/// connection stops carrying replies (server to client) but stays open, as behind a
/// partition or a dead middlebox. Connections made after the freeze work.
struct Forwarder {
    port: u16,
    /// One flag per connection, in the order they were accepted.
    replies_held: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    /// New connections are closed at once while set.
    refusing: Arc<AtomicBool>,
}

impl Forwarder {
    async fn start() -> Self {
        let target: String = process_url()
            .trim_start_matches("redis://")
            .trim_end_matches("/0")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let replies_held: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let flags = replies_held.clone();
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse = refusing.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let server = TcpStream::connect(&target).await.unwrap();
                let held = Arc::new(AtomicBool::new(false));
                flags.lock().unwrap().push(held.clone());
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let Ok(n) = server_read.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        while held.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            port,
            replies_held,
            refusing,
        }
    }

    fn refuse_new_connections(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Holds the replies on every connection made so far.
    fn freeze(&self) {
        for flag in self.replies_held.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn connections(&self) -> usize {
        self.replies_held.lock().unwrap().len()
    }
}

fn store(url: &str) -> RedisStore {
    RedisStore::open(url)
        .unwrap()
        .key_prefix(&unique_prefix())
        .timeout(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced() {
    let forwarder = Forwarder::start().await;
    let store = store(&forwarder.url());
    store.ping().await.unwrap();
    assert_eq!(forwarder.connections(), 1);

    forwarder.freeze();
    let started = Instant::now();
    assert!(matches!(store.ping().await, Err(StoreError::Backend(_))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout"
    );
    // The next operation does not wait on the silent connection: it makes a new one.
    store.ping().await.unwrap();
    assert_eq!(forwarder.connections(), 2);
    let key = StoreKey::for_code(b"after the freeze");
    assert!(store.bind_code(key, binding(), TTL).await.unwrap());
    assert!(store.redeem(key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redemption_whose_reply_is_lost_is_given_back() {
    let forwarder = Forwarder::start().await;
    let store = store(&forwarder.url());
    let key = StoreKey::for_code(b"reply lost");
    assert!(store.bind_code(key, binding(), TTL).await.unwrap());

    // The script runs on the server; its reply never arrives.
    forwarder.freeze();
    assert!(matches!(
        store.redeem(key).await,
        Err(StoreError::Backend(_))
    ));
    // The layer answered 503 and forwarded nothing; the store gives the code back, so the
    // client's retry is not refused as a replay.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = store.code(key).await.unwrap().unwrap();
        if record.state() == CodeState::Live {
            break;
        }
        assert!(Instant::now() < deadline, "still {:?}", record.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.redeem(key).await.unwrap());
    assert!(!store.redeem(key).await.unwrap(), "and still only once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_never_reverses_a_later_redemption() {
    let forwarder = Forwarder::start().await;
    let lost = store(&forwarder.url());
    let key = StoreKey::for_code(b"raced");
    assert!(lost.bind_code(key, binding(), TTL).await.unwrap());
    // The reply is lost and the undo cannot get through for now.
    forwarder.freeze();
    forwarder.refuse_new_connections(true);
    assert!(matches!(
        lost.redeem(key).await,
        Err(StoreError::Backend(_))
    ));
    // Meanwhile the code goes back and is redeemed again through another replica.
    let other = RedisStore::open(&process_url())
        .unwrap()
        .key_prefix(lost.prefix());
    assert!(other.unredeem(key).await.unwrap());
    assert!(other.redeem(key).await.unwrap());
    // When the undo finally gets through, that redemption is not its own: it stays.
    forwarder.refuse_new_connections(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        other.code(key).await.unwrap().unwrap().state(),
        CodeState::Redeemed
    );
    assert!(!other.redeem(key).await.unwrap());
}

#[tokio::test]
async fn corrupt_records_fail_closed() {
    let store = store(&process_url());
    let mut redis = raw().await;
    let key = StoreKey::for_code(b"corrupt");
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    for junk in [&b"\x02LLLLLL"[..], b"", b"\x01", b"not a record at all"] {
        let _: () = redis
            .set(format!("{}c:{hex}", store.prefix()), junk)
            .await
            .unwrap();
        let _: () = redis
            .set(format!("{}f:{hex}", store.prefix()), junk)
            .await
            .unwrap();
        assert!(store.code(key).await.is_err(), "{junk:?}");
        assert!(store.redeem(key).await.is_err(), "{junk:?}");
        assert!(store.unredeem(key).await.is_err(), "{junk:?}");
        assert!(store.record_failure(key, 5).await.is_err(), "{junk:?}");
        assert!(store.flow(key).await.is_err(), "{junk:?}");
        assert!(store.take_flow(key).await.is_err(), "{junk:?}");
    }
}

#[tokio::test]
async fn the_failure_count_uses_all_four_bytes() {
    let store = store(&process_url());
    let key = StoreKey::for_code(b"many failures");
    assert!(store.bind_code(key, binding(), TTL).await.unwrap());
    for _ in 0..300 {
        store.record_failure(key, u32::MAX).await.unwrap();
    }
    assert_eq!(store.code(key).await.unwrap().unwrap().failures(), 300);

    // Near the top: written directly, then counted past every byte boundary to saturation.
    let mut redis = raw().await;
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{}c:{hex}", store.prefix());
    let record: Vec<u8> = redis.get(&name).await.unwrap();
    let mut edited = record.clone();
    let n = edited.len();
    edited[n - 4..].copy_from_slice(&(u32::MAX - 2).to_be_bytes());
    let _: () = redis.set(&name, edited).await.unwrap();
    assert_eq!(
        store.record_failure(key, u32::MAX).await.unwrap(),
        Some(CodeState::Live)
    );
    assert_eq!(
        store.code(key).await.unwrap().unwrap().failures(),
        u32::MAX - 1
    );
    assert_eq!(
        store.record_failure(key, u32::MAX).await.unwrap(),
        Some(CodeState::Burned)
    );
    assert_eq!(store.code(key).await.unwrap().unwrap().failures(), u32::MAX);
}

#[tokio::test]
async fn keys_are_prefixed_digests_and_values_hold_no_code_or_handle() {
    let store = store(&process_url());
    let (handle, code) = ("H4ndle-5ecret-value-123", "C0de-5ecret-value-456");
    let flow = PendingFlow::new(None, "app", Some("https://app.example/cb"), Some("st"));
    assert!(store
        .create_flow(StoreKey::for_handle(handle), flow, TTL)
        .await
        .unwrap());
    assert!(store
        .bind_code(StoreKey::for_code(code.as_bytes()), binding(), TTL)
        .await
        .unwrap());
    let mut redis = raw().await;
    let keys: Vec<String> = redis.keys(format!("{}*", store.prefix())).await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for name in keys {
        let kind = name.strip_prefix(store.prefix()).unwrap();
        assert!(kind.starts_with("f:") || kind.starts_with("c:"), "{name}");
        assert_eq!(kind.len(), 2 + 64, "{name}");
        let value: Vec<u8> = redis.get(&name).await.unwrap();
        let value = String::from_utf8_lossy(&value);
        assert!(!value.contains(handle) && !value.contains(code), "{value}");
        let ttl: i64 = redis.pttl(&name).await.unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    }
}
