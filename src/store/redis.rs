//! [`RedisStore`]: the challenge store shared by several replicas, on Redis or Valkey.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::Duration;

use rand::RngCore as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Client, Cmd, ErrorKind, FromRedisValue, RedisError, Script, Value};

use super::{
    ChallengeStore, CodeBinding, CodeRecord, CodeState, PendingFlow, StoreError, StoreKey,
};

/// The key prefix [`RedisStore::open`] uses.
pub const DEFAULT_PREFIX: &str = "pkce:";

/// How long one store operation may take before the layer gives up and fails closed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest TTL sent to Redis: about 136 years, far below its overflow limit.
const MAX_TTL_MS: u64 = u32::MAX as u64 * 1000;

/// The least time a connection attempt gets, however short the operation timeout: it runs in
/// a task of its own, so requests that stop waiting for it do not cancel it.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long, after a redemption whose outcome is unknown, the store keeps trying to undo it.
const UNDO_ATTEMPTS: u32 = 5;

// The scripts below carry `allow-oom` (Redis 7, Valkey): they only rewrite bytes in place,
// never grow a record, so a Redis at `maxmemory` still lets existing codes be redeemed, as the
// in-memory store does at capacity.

/// Moves a code record from one state to another, keeping its expiry: returns 1 if it moved,
/// 0 if the record is absent or in another state. The state byte sits 5 bytes from the end
/// of a [`CodeRecord`] encoding (then the failure count, 4 bytes big-endian).
static TRANSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local n = #v
if n < 6 or string.byte(v, 1) ~= 1 then return redis.error_reply('corrupt record') end
if string.sub(v, n - 4, n - 4) ~= ARGV[1] then return 0 end
redis.call('SETRANGE', KEYS[1], n - 5, ARGV[2])
return 1",
    )
});

/// `SET key value NX PX ttl` even when Redis is at `maxmemory`: binding a code follows the
/// `GETDEL` of its pending flow, which just freed more than the record takes, so it is not
/// refused for capacity (as in [`MemoryStore`](super::MemoryStore)).
static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])",
    )
});

/// Redeems a live code (`L` → `R`) and marks the redemption as this request's: `KEYS[2]`
/// gets the nonce `ARGV[1]` for the record's remaining lifetime. Returns 1 if it moved.
static REDEEM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local n = #v
if n < 6 or string.byte(v, 1) ~= 1 then return redis.error_reply('corrupt record') end
if string.sub(v, n - 4, n - 4) ~= 'L' then return 0 end
redis.call('SETRANGE', KEYS[1], n - 5, 'R')
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl) end
return 1",
    )
});

/// Undoes the redemption marked with nonce `ARGV[1]`, if it is still the code's last one and
/// the code is still redeemed: a reply lost to a timeout must not cost the user the code.
static UNDO: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local n = #v
if n < 6 or string.byte(v, 1) ~= 1 then return redis.error_reply('corrupt record') end
if string.sub(v, n - 4, n - 4) ~= 'R' then return 0 end
redis.call('SETRANGE', KEYS[1], n - 5, 'L')
return 1",
    )
});

/// Counts a refused attempt on a live code and burns it at `ARGV[1]` failures, keeping its
/// expiry. Returns the state letter afterwards, or nil if the record is absent.
static FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"#!lua flags=allow-oom
local v = redis.call('GET', KEYS[1])
if not v then return false end
local n = #v
if n < 6 or string.byte(v, 1) ~= 1 then return redis.error_reply('corrupt record') end
local state = string.sub(v, n - 4, n - 4)
if state ~= 'L' then return state end
local a, b, c, d = string.byte(v, n - 3, n)
local failures = ((a * 256 + b) * 256 + c) * 256 + d
if failures < 4294967295 then failures = failures + 1 end
if failures >= tonumber(ARGV[1]) then state = 'B' end
local bytes = string.char(math.floor(failures / 16777216) % 256, math.floor(failures / 65536) % 256,
  math.floor(failures / 256) % 256, failures % 256)
redis.call('SETRANGE', KEYS[1], n - 5, state .. bytes)
return state",
    )
});

/// A [`ChallengeStore`] on Redis (or Valkey), shared by every replica that points at it, so a
/// flow authorized through one replica can be redeemed through another.
///
/// - **Atomic on the server.** Creating records is `SET … NX PX`, taking a pending flow is
///   `GETDEL`, and the state changes of a code (live → redeemed, back, a failed attempt, burning)
///   are short Lua scripts that edit the record in place with `SETRANGE`. Nothing is loaded and
///   then deleted, and concurrent replicas cannot both win a redemption.
/// - **Keys** are `<prefix>f:<hex SHA-256 of the handle>` for pending flows and
///   `<prefix>c:<hex SHA-256 of the code>` for codes; values are the compact
///   [`PendingFlow::encode`] / [`CodeRecord::encode`] bytes, and expiry is Redis's own TTL.
///   With a log line's code fingerprint, `SCAN 0 MATCH pkce:c:<fingerprint>*` finds the record.
/// - **Failing closed.** Every operation is bounded by a timeout (default one second); a timeout,
///   a lost connection or any Redis error is [`StoreError::Backend`], and the layer answers 503
///   without forwarding anything. Redis refusing a write for `maxmemory` (`OOM`) is
///   [`StoreError::Full`].
/// - **Connecting.** [`RedisStore::open`] only parses the URL; the first operation connects, and
///   a lost connection is re-established in the background (the `redis` crate's connection
///   manager). [`RedisStore::ping`] tells whether the server answers now.
///
/// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS (system and webpki
/// roots), `redis+unix:///path`. Clones share one connection. `rediss://` uses rustls with the
/// process's default crypto provider: if your program enables more than one rustls provider,
/// install one (`rustls::crypto::ring::default_provider().install_default()`) before the first
/// operation, as `pkce-proxy` does.
///
/// Needs Redis 7 or Valkey (the scripts carry flags): connecting loads them, so an older server
/// fails there, and every operation fails closed, rather than later.
///
/// # Security
///
/// - **The server must never evict the store's keys.** Run it with a `maxmemory` and
///   `maxmemory-policy noeviction`. An evicted record reads as absent: a pending flow is lost
///   (the user signs in again) and a bound code is refused (fail closed), but an exempt
///   client's used code is forgotten, and a legacy server that accepts a code twice would then
///   take it again. Every key the store writes carries a TTL, so the `volatile-*` policies
///   evict them as readily as the `allkeys-*` ones: only `noeviction` keeps them. With it, a
///   full server refuses new flows ([`StoreError::Full`], a 503) while flows in progress
///   complete; without a `maxmemory`, a flood of authorization requests grows the server until
///   the TTLs catch up. On connecting, the store logs a warning if the policy is not
///   `noeviction` or there is no `maxmemory` (when the server allows `INFO`).
/// - **Who can write to the server can forge records**, and so bind any code to a challenge of
///   their choosing or give a redeemed code back: keep the server private to the replicas
///   (a password or ACL user, TLS with `rediss://` across untrusted networks). Keys are
///   SHA-256 digests of codes and handles: a dump of the server yields no usable code.
#[derive(Clone)]
pub struct RedisStore {
    server: Arc<Server>,
    prefix: Arc<str>,
    timeout: Duration,
}

/// The server and the one connection every clone shares.
struct Server {
    client: Client,
    /// The connection in use, with its generation. `None` until connected, and again after a
    /// failure the `redis` crate does not recover from by itself: a timeout (a silent peer
    /// never resets the connection) or a failed reconnect (its error would be cached).
    current: RwLock<Option<(u64, ConnectionManager)>>,
    /// Held while connecting, by the task that connects.
    connecting: Arc<tokio::sync::Mutex<()>>,
    generation: AtomicU64,
}

impl Server {
    fn current(&self) -> Option<(u64, ConnectionManager)> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops the connection of generation `generation`, if it is still the one in use.
    fn reset(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().map(|(g, _)| *g) == Some(generation) {
            *current = None;
            tracing::warn!(target: "tower_pkce", "redis connection dropped after a failure; the next operation reconnects");
        }
    }

    async fn connect(
        &self,
        timeout: Duration,
        op_timeout: Duration,
    ) -> Result<(u64, ConnectionManager), RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(op_timeout)
            // Reconnect quickly, in the background: requests meanwhile time out and fail
            // closed rather than wait for a long backoff.
            .set_number_of_retries(1)
            .set_max_delay(500)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let mut manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        // Redis before 7 cannot compile the scripts (their flags): such a store must fail
        // here, not look healthy and then refuse every login.
        for script in [&*TRANSITION, &*REDEEM, &*UNDO, &*FAILURE, &*BIND] {
            script.load_async(&mut manager).await?;
        }
        warn_about_eviction(&mut manager).await;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Some((generation, manager.clone()));
        tracing::info!(target: "tower_pkce", "connected to redis");
        Ok((generation, manager))
    }
}

/// Logs a warning if Redis may evict records or grow without bound. `INFO` may be refused
/// (some managed services): then nothing is said.
async fn warn_about_eviction(manager: &mut ConnectionManager) {
    let Ok(info) = redis::cmd("INFO")
        .arg("memory")
        .query_async::<String>(manager)
        .await
    else {
        return;
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    if let Some(policy) = field("maxmemory_policy").filter(|p| *p != "noeviction") {
        tracing::warn!(target: "tower_pkce", policy, "redis maxmemory-policy is not noeviction: an evicted record reads as absent (a pending flow lost, or an exempt client's used code forgotten)");
    }
    if field("maxmemory") == Some("0") {
        tracing::warn!(target: "tower_pkce", "redis has no maxmemory: a flood of authorization requests can grow it without bound");
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client's connection info holds the password: leave it out.
        let info = self.server.client.get_connection_info();
        f.debug_struct("RedisStore")
            .field("server", &info.addr.to_string())
            .field("db", &info.redis.db)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connected", &self.server.current().is_some())
            .finish()
    }
}

impl RedisStore {
    /// A store on the server at `url`, with keys under [`DEFAULT_PREFIX`]. Only parses the URL:
    /// nothing is connected until the first operation.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(StoreError::backend)?;
        Ok(Self {
            server: Arc::new(Server {
                client,
                current: RwLock::new(None),
                connecting: Arc::new(tokio::sync::Mutex::new(())),
                generation: AtomicU64::new(0),
            }),
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the prefix of every key (default `pkce:`), to share a Redis database with other
    /// applications or to keep two deployments apart.
    #[must_use]
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long one operation may take, connecting included (default one second). On
    /// timeout the layer fails closed with 503.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the server answers a `PING` within the timeout, connecting first if need be.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let reply: String = self.query(redis::cmd("PING")).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(StoreError::backend("unexpected reply to PING"))
        }
    }

    fn key(&self, kind: u8, key: StoreKey) -> Vec<u8> {
        let hex = |nibble: u8| match nibble {
            0..=9 => b'0' + nibble,
            _ => b'a' + (nibble - 10),
        };
        let mut out = Vec::with_capacity(self.prefix.len() + 2 + 64);
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(kind);
        out.push(b':');
        for byte in key.as_bytes() {
            out.push(hex(byte >> 4));
            out.push(hex(byte & 0x0f));
        }
        out
    }

    fn flow_key(&self, handle: StoreKey) -> Vec<u8> {
        self.key(b'f', handle)
    }

    fn code_key(&self, code: StoreKey) -> Vec<u8> {
        self.key(b'c', code)
    }

    /// The connection in use, or a new one. The attempt runs in a task of its own that holds
    /// the `connecting` lock, so concurrent requests wait for one attempt instead of starting
    /// their own, and a request that stops waiting does not cancel it.
    async fn connection(&self) -> Result<(u64, ConnectionManager), RedisError> {
        if let Some(current) = self.server.current() {
            return Ok(current);
        }
        let guard = self.server.connecting.clone().lock_owned().await;
        if let Some(current) = self.server.current() {
            return Ok(current);
        }
        let server = self.server.clone();
        let (timeout, op_timeout) = (self.timeout.max(MIN_CONNECT_TIMEOUT), self.timeout);
        let attempt = tokio::spawn(async move {
            let _guard = guard;
            match tokio::time::timeout(timeout * 2, server.connect(timeout, op_timeout)).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                ))),
            }
        });
        attempt
            .await
            .map_err(|e| RedisError::from(std::io::Error::other(e.to_string())))?
    }

    /// Runs `op` with a connection, bounded by the timeout. A timeout or a connection-level
    /// error drops the connection, so the next operation gets a fresh one.
    async fn run<T, F>(&self, op: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let mut used = None;
        let work = async {
            let (generation, connection) = self.connection().await?;
            used = Some(generation);
            op(connection).await
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if let Some(generation) = used.filter(|_| connection_failure(&e)) {
                    self.server.reset(generation);
                }
                Err(redis_error(e))
            }
            Err(_) => {
                if let Some(generation) = used {
                    self.server.reset(generation);
                }
                Err(StoreError::backend("redis did not answer in time"))
            }
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        self.run(|mut connection| async move { cmd.query_async(&mut connection).await })
            .await
    }

    /// `SET key value NX PX ttl`: whether the key was free.
    async fn set_new(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_millis(ttl));
        set_reply(self.query(cmd).await?)
    }

    async fn script<T: FromRedisValue>(
        &self,
        script: &'static Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }
}

impl RedisStore {
    /// Undoes a redemption this store may have made (marked with `nonce`), retrying for a few
    /// seconds while Redis is unreachable. If it never gets through, the code stays redeemed:
    /// fail closed.
    async fn undo(&self, key: Vec<u8>, marker: Vec<u8>, nonce: [u8; 16]) {
        for attempt in 0..UNDO_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let undone: Result<i64, StoreError> =
                self.script(&UNDO, &[&key, &marker], &[&nonce]).await;
            match undone {
                Ok(1) => {
                    tracing::info!(target: "tower_pkce", "a redemption whose reply was lost was given back");
                    return;
                }
                Ok(_) => return,
                Err(_) => continue,
            }
        }
        tracing::warn!(target: "tower_pkce", "a redemption whose reply was lost could not be given back; the code stays redeemed");
    }
}

/// Whether an error says the connection itself is unusable (rather than Redis refusing one
/// command), so a fresh one should be made.
fn connection_failure(error: &RedisError) -> bool {
    error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::ClientError
        )
}

/// Milliseconds for `PX`: at least 1 (Redis refuses 0), at most [`MAX_TTL_MS`].
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}

/// The reply to `SET … NX`: whether the key was free.
fn set_reply(reply: Value) -> Result<bool, StoreError> {
    match reply {
        Value::Okay => Ok(true),
        Value::Nil => Ok(false),
        _ => Err(StoreError::backend("unexpected reply to SET")),
    }
}

fn redis_error(error: RedisError) -> StoreError {
    if error.code() == Some("OOM") {
        StoreError::Full
    } else {
        StoreError::backend(error)
    }
}

fn decode_flow(bytes: Option<Vec<u8>>) -> Result<Option<PendingFlow>, StoreError> {
    bytes.map(|b| PendingFlow::decode(&b)).transpose()
}

impl ChallengeStore for RedisStore {
    async fn create_flow(
        &self,
        handle: StoreKey,
        flow: PendingFlow,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.set_new(self.flow_key(handle), flow.encode(), ttl)
            .await
    }

    async fn flow(&self, handle: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.flow_key(handle));
        decode_flow(self.query(cmd).await?)
    }

    async fn take_flow(&self, handle: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.flow_key(handle));
        decode_flow(self.query(cmd).await?)
    }

    async fn bind_code(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let record = CodeRecord::new(binding, CodeState::Live).encode();
        let ttl = ttl_millis(ttl).to_string();
        let reply: Value = self
            .script(&BIND, &[&self.code_key(code)], &[&record, ttl.as_bytes()])
            .await?;
        set_reply(reply)
    }

    async fn record_redemption(
        &self,
        code: StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let record = CodeRecord::new(binding, CodeState::Redeemed);
        self.set_new(self.code_key(code), record.encode(), ttl)
            .await
    }

    async fn code(&self, code: StoreKey) -> Result<Option<CodeRecord>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.code_key(code));
        let bytes: Option<Vec<u8>> = self.query(cmd).await?;
        bytes.map(|b| CodeRecord::decode(&b)).transpose()
    }

    async fn redeem(&self, code: StoreKey) -> Result<bool, StoreError> {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let (key, marker) = (self.code_key(code), self.key(b'r', code));
        let result: Result<i64, StoreError> =
            self.script(&REDEEM, &[&key, &marker], &[&nonce]).await;
        match result {
            Ok(moved) => Ok(moved == 1),
            Err(e) => {
                // The script may have run and only its reply been lost: the layer answers 503
                // and forwards nothing, so give the code back if this request did redeem it.
                if !matches!(e, StoreError::Full) {
                    let store = self.clone();
                    tokio::spawn(async move { store.undo(key, marker, nonce).await });
                }
                Err(e)
            }
        }
    }

    async fn unredeem(&self, code: StoreKey) -> Result<bool, StoreError> {
        let moved: i64 = self
            .script(&TRANSITION, &[&self.code_key(code)], &[b"R", b"L"])
            .await?;
        Ok(moved == 1)
    }

    async fn record_failure(
        &self,
        code: StoreKey,
        max_failures: u32,
    ) -> Result<Option<CodeState>, StoreError> {
        let max = max_failures.to_string();
        let state: Option<String> = self
            .script(&FAILURE, &[&self.code_key(code)], &[max.as_bytes()])
            .await?;
        match state.as_deref() {
            None => Ok(None),
            Some("L") => Ok(Some(CodeState::Live)),
            Some("R") => Ok(Some(CodeState::Redeemed)),
            Some("B") => Ok(Some(CodeState::Burned)),
            Some(_) => Err(StoreError::backend("corrupt record")),
        }
    }
}
