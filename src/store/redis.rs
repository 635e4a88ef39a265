//! [`RedisStore`]: the challenge store shared by several replicas, on Redis or Valkey.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, RedisError, Script, Value};
use tokio::sync::OnceCell;

use super::{
    ChallengeStore, CodeBinding, CodeRecord, CodeState, PendingFlow, StoreError, StoreKey,
};

/// The key prefix [`RedisStore::open`] uses.
pub const DEFAULT_PREFIX: &str = "pkce:";

/// How long one store operation may take before the layer gives up and fails closed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest TTL sent to Redis: about 136 years, far below its overflow limit.
const MAX_TTL_MS: u64 = u32::MAX as u64 * 1000;

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
///   [`StoreError::Full`]. Run Redis with `maxmemory-policy noeviction`: an evicted record
///   would read as absent.
/// - **Connecting.** [`RedisStore::open`] only parses the URL; the first operation connects, and
///   a lost connection is re-established in the background (the `redis` crate's connection
///   manager). [`RedisStore::ping`] tells whether the server answers now.
///
/// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS (system and webpki
/// roots), `redis+unix:///path`. Clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    server: Arc<Server>,
    prefix: Arc<str>,
    timeout: Duration,
}

/// The server and the one connection every clone shares.
struct Server {
    client: Client,
    connection: OnceCell<ConnectionManager>,
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
            .field("connected", &self.server.connection.initialized())
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
                connection: OnceCell::new(),
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
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(self.prefix.len() + 2 + 64);
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(kind);
        out.push(b':');
        for byte in key.as_bytes() {
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        }
        out
    }

    fn flow_key(&self, handle: StoreKey) -> Vec<u8> {
        self.key(b'f', handle)
    }

    fn code_key(&self, code: StoreKey) -> Vec<u8> {
        self.key(b'c', code)
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        self.server
            .connection
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    // Reconnect quickly, in the background: requests meanwhile time out and
                    // fail closed rather than wait for a long backoff.
                    .set_number_of_retries(2)
                    .set_max_delay(500);
                ConnectionManager::new_with_config(self.server.client.clone(), config)
            })
            .await
            .cloned()
    }

    /// Runs `op` with a connection, bounded by the timeout.
    async fn run<T, F>(&self, op: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let work = async {
            let connection = self.connection().await?;
            op(connection).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(redis_error(e)),
            Err(_) => Err(StoreError::backend("redis did not answer in time")),
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
        key: Vec<u8>,
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }
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
            .script(&BIND, self.code_key(code), &[&record, ttl.as_bytes()])
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
        let moved: i64 = self
            .script(&TRANSITION, self.code_key(code), &[b"L", b"R"])
            .await?;
        Ok(moved == 1)
    }

    async fn unredeem(&self, code: StoreKey) -> Result<bool, StoreError> {
        let moved: i64 = self
            .script(&TRANSITION, self.code_key(code), &[b"R", b"L"])
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
            .script(&FAILURE, self.code_key(code), &[max.as_bytes()])
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
