//! What the PKCE layer costs per request: whole authorization-code flows and plain requests,
//! each through `PkceLayer` and straight to the same in-process legacy server, plus the
//! pieces the layer is built from. See BENCHMARKS.md for how to run it and the figures.
//!
//! No `tracing` subscriber is installed, so the layer's log events are disabled callsites.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Full};
use tokio::runtime::Runtime;
use tower::{Layer as _, Service, ServiceExt as _};
use tower_pkce::store::{CodeBinding, PendingFlow, StoreKey};
use tower_pkce::{
    ChallengeMethod, ChallengeStore, CodeChallenge, CodeVerifier, MemoryStore, PkceLayer,
};

/// The client's own `state`, which the layer swaps for its handle and puts back.
const CLIENT_STATE: &str = "af0ifjsldkj";
/// Precomputed verifier/challenge pairs, used in turn.
const PAIRS: usize = 1024;

static NEXT_CODE: AtomicU64 = AtomicU64::new(0);

fn response(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response
}

/// A legacy authorization server without PKCE: `/authorize` issues a fresh code and echoes the
/// `state` it received, `/token` issues a token for anything, `/resource` is not OAuth.
async fn legacy<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let method = req.method();
    if path == "/authorize" && method == Method::GET {
        let state = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("state=")));
        let n = NEXT_CODE.fetch_add(1, Ordering::Relaxed);
        let mut location = format!("https://app.example/cb?code=c{n:016x}");
        if let Some(state) = state {
            location.push_str("&state=");
            location.push_str(state);
        }
        let Ok(location) = HeaderValue::from_str(&location) else {
            return Ok(response(StatusCode::INTERNAL_SERVER_ERROR, b""));
        };
        let mut res = response(StatusCode::FOUND, b"");
        res.headers_mut().insert(LOCATION, location);
        return Ok(res);
    }
    if path == "/token" && method == Method::POST {
        let mut res = response(StatusCode::OK, b"{\"access_token\":\"x\"}");
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(res);
    }
    if path == "/resource" {
        return Ok(response(StatusCode::OK, b"protected resource"));
    }
    Ok(response(StatusCode::NOT_FOUND, b""))
}

/// One client: its verifier and the authorization request URI carrying its challenge.
struct Client {
    verifier: String,
    authorize_uri: String,
}

fn clients() -> Vec<Client> {
    (0..PAIRS)
        .map(|_| {
            let verifier = CodeVerifier::generate();
            let challenge =
                CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256).encoded();
            Client {
                verifier: verifier.secret().to_owned(),
                authorize_uri: format!(
                    "/authorize?response_type=code&client_id=app\
                     &redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=openid\
                     &state={CLIENT_STATE}&code_challenge={challenge}&code_challenge_method=S256"
                ),
            }
        })
        .collect()
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .body(Full::default())
        .unwrap_or_else(|e| panic!("request {uri}: {e}"))
}

fn token_request(code: &str, verifier: &str) -> Request<Full<Bytes>> {
    let body = format!(
        "grant_type=authorization_code&code={code}&client_id=app\
         &redirect_uri=https%3A%2F%2Fapp.example%2Fcb&code_verifier={verifier}"
    );
    Request::post("/token")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("token request: {e}"))
}

/// Reads a whole response body, as a server writing it out would; returns its length.
async fn drain<B: Body>(body: B) -> usize {
    body.collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or_default()
}

/// The `code` and `state` of a redirect's `Location`.
fn redirect_params<B>(res: &Response<B>) -> (String, Option<String>) {
    let location = res
        .headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_else(|| panic!("authorize answered {} without a Location", res.status()));
    let query = location.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let code = param("code").unwrap_or_else(|| panic!("no code in {location}"));
    (code, param("state"))
}

/// One whole flow: authorize → read the code from the redirect → redeem it with the verifier.
/// Returns the token response's status and body length.
async fn flow<S, B>(svc: &S, client: &Client) -> (StatusCode, usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    let Ok(redirect) = svc.clone().oneshot(get(&client.authorize_uri)).await;
    let (code, _) = redirect_params(&redirect);
    drain(redirect.into_body()).await;
    let Ok(token) = svc
        .clone()
        .oneshot(token_request(&code, &client.verifier))
        .await;
    let status = token.status();
    (status, drain(token.into_body()).await)
}

/// A request the layer does not inspect.
async fn passthrough<S, B>(svc: &S) -> (StatusCode, usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    let Ok(res) = svc.clone().oneshot(get("/resource")).await;
    let status = res.status();
    (status, drain(res.into_body()).await)
}

/// A layer whose store never fills during the bench: capacity `usize::MAX / 2`, default
/// (10-minute) lifetimes, so every flow of the run stays in the store.
fn unbounded_layer() -> PkceLayer {
    PkceLayer::new().with_store(MemoryStore::with_capacity(usize::MAX / 2))
}

/// A layer whose store stays at a steady size: 1-second lifetimes, swept every second.
fn steady_layer() -> PkceLayer {
    PkceLayer::new()
        .pending_ttl(Duration::from_secs(1))
        .and_then(|l| l.code_ttl(Duration::from_secs(1)))
        .unwrap_or_else(|e| panic!("1-second lifetimes: {e}"))
        .with_store(
            MemoryStore::with_capacity(usize::MAX / 2).sweep_interval(Duration::from_secs(1)),
        )
}

/// Checks, once and outside the timed loops, that the layer really is doing PKCE on this
/// setup: the client's state comes back, a wrong verifier is refused, the right one passes.
fn preflight(rt: &Runtime, clients: &[Client]) {
    let svc = PkceLayer::new().layer(tower::service_fn(legacy));
    rt.block_on(async {
        let Ok(redirect) = svc.clone().oneshot(get(&clients[0].authorize_uri)).await;
        let (code, state) = redirect_params(&redirect);
        assert_eq!(state.as_deref(), Some(CLIENT_STATE), "state not restored");
        let Ok(wrong) = svc
            .clone()
            .oneshot(token_request(&code, &clients[1].verifier))
            .await;
        assert_eq!(wrong.status(), StatusCode::BAD_REQUEST, "wrong verifier");
        let Ok(right) = svc
            .clone()
            .oneshot(token_request(&code, &clients[0].verifier))
            .await;
        assert_eq!(right.status(), StatusCode::OK, "right verifier");
        let Ok(replay) = svc
            .clone()
            .oneshot(token_request(&code, &clients[0].verifier))
            .await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "replayed code");
        // Straight to the legacy server the wrong verifier passes: that is the point.
        let legacy = tower::service_fn(legacy);
        let Ok(redirect) = legacy.oneshot(get(&clients[0].authorize_uri)).await;
        let (code, _) = redirect_params(&redirect);
        let Ok(wrong) = legacy
            .oneshot(token_request(&code, &clients[1].verifier))
            .await;
        assert_eq!(wrong.status(), StatusCode::OK);
    });
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn bench_flow(c: &mut Criterion) {
    let rt = runtime();
    let clients = clients();
    preflight(&rt, &clients);
    let clients = &clients;
    let mut group = c.benchmark_group("flow");

    let svc = unbounded_layer().layer(tower::service_fn(legacy));
    let svc = &svc;
    let mut i = 0;
    group.bench_function("with_layer", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let client = &clients[i % PAIRS];
            async move {
                let (status, len) = flow(svc, client).await;
                assert_eq!(status, StatusCode::OK);
                black_box(len)
            }
        })
    });

    let svc = steady_layer().layer(tower::service_fn(legacy));
    let svc = &svc;
    group.bench_function("with_layer_steady_store", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let client = &clients[i % PAIRS];
            async move {
                let (status, len) = flow(svc, client).await;
                assert_eq!(status, StatusCode::OK);
                black_box(len)
            }
        })
    });

    let svc = &tower::service_fn(legacy);
    group.bench_function("without_layer", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let client = &clients[i % PAIRS];
            async move {
                let (status, len) = flow(svc, client).await;
                assert_eq!(status, StatusCode::OK);
                black_box(len)
            }
        })
    });
    group.finish();
}

fn bench_passthrough(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("passthrough");
    let svc = &unbounded_layer().layer(tower::service_fn(legacy));
    group.bench_function("with_layer", |b| {
        b.to_async(&rt).iter(|| async {
            let (status, len) = passthrough(svc).await;
            assert_eq!(status, StatusCode::OK);
            black_box(len)
        })
    });
    let svc = &tower::service_fn(legacy);
    group.bench_function("without_layer", |b| {
        b.to_async(&rt).iter(|| async {
            let (status, len) = passthrough(svc).await;
            assert_eq!(status, StatusCode::OK);
            black_box(len)
        })
    });
    group.finish();
}

fn bench_pieces(c: &mut Criterion) {
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let encoded = challenge.encoded();
    let secret = verifier.secret().to_owned();

    c.bench_function("verify/s256", |b| {
        b.iter(|| black_box(&challenge).verify(black_box(&verifier)))
    });
    c.bench_function("parse/challenge", |b| {
        b.iter(|| CodeChallenge::parse(black_box(&encoded), ChallengeMethod::S256).is_ok())
    });
    c.bench_function("parse/verifier", |b| {
        b.iter(|| CodeVerifier::parse(black_box(&secret)).is_ok())
    });
    c.bench_function("store_key/for_code", |b| {
        b.iter(|| StoreKey::for_code(black_box(b"c0000000000001234")))
    });
    let key = StoreKey::for_code(b"c0000000000001234");
    c.bench_function("store_key/fingerprint", |b| {
        b.iter(|| black_box(&key).fingerprint())
    });

    // The store's share of a flow: record, take, bind, read, redeem.
    let rt = runtime();
    let store = MemoryStore::with_capacity(usize::MAX / 2);
    let store = &store;
    let challenge = &challenge;
    let mut n: u64 = 0;
    c.bench_function("store/memory_flow", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            store_flow(store, n, challenge)
        })
    });

    // The same against Redis, when `TOWER_PKCE_BENCH_REDIS_URL` names a scratch server: five
    // round trips on a local socket, and a whole flow through the layer.
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("TOWER_PKCE_BENCH_REDIS_URL") {
        let redis = tower_pkce::RedisStore::open(&url)
            .unwrap_or_else(|e| panic!("{e}"))
            .key_prefix("bench:");
        let redis = &redis;
        c.bench_function("store/redis_flow", |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                store_flow(redis, n, challenge)
            })
        });
        let clients = clients();
        let clients = &clients;
        let svc = PkceLayer::new()
            .with_store(redis.clone())
            .layer(tower::service_fn(legacy));
        let svc = &svc;
        let mut i = 0;
        c.bench_function("flow/with_layer_redis", |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                let client = &clients[i % PAIRS];
                async move {
                    let (status, len) = flow(svc, client).await;
                    assert_eq!(status, StatusCode::OK);
                    black_box(len)
                }
            })
        });
    }
}

/// The store's share of one flow: record, take, bind, read, redeem.
async fn store_flow<S: ChallengeStore>(store: &S, n: u64, challenge: &CodeChallenge) {
    let ttl = Duration::from_secs(600);
    let handle = StoreKey::for_code(&n.to_le_bytes());
    let code = StoreKey::for_code(&(!n).to_le_bytes());
    let flow = PendingFlow::new(
        Some(challenge.clone()),
        "app",
        Some("https://app.example/cb"),
        Some(CLIENT_STATE),
    );
    let created = store.create_flow(handle, flow, ttl).await;
    assert!(matches!(created, Ok(true)));
    let taken = store.take_flow(handle).await.ok().flatten();
    let binding = CodeBinding::new(taken.and_then(|f| f.challenge().cloned()), "app");
    let bound = store.bind_code(code, binding, ttl).await;
    assert!(matches!(bound, Ok(true)));
    let record = store.code(code).await.ok().flatten();
    black_box(record);
    let redeemed = store.redeem(code).await;
    assert!(matches!(redeemed, Ok(true)));
}

// What `criterion_group!` and `criterion_main!` expand to, written out: the macro's `pub fn`
// trips the crate's `missing_docs` lint.
fn main() {
    if let Ok(spec) = std::env::var("TOWER_PKCE_FLOW_LOOP") {
        return flow_loop(&spec);
    }
    let mut c = Criterion::default().configure_from_args();
    bench_flow(&mut c);
    bench_passthrough(&mut c);
    bench_pieces(&mut c);
    c.final_summary();
}

/// `TOWER_PKCE_FLOW_LOOP=N:with_layer` (or `N:without_layer`): no criterion, just 200 flows to
/// warm up and then N more, for a tool that counts what the process did (callgrind; see
/// `benches/flow_instructions.sh`). The layer's store has 1-second lifetimes, as in
/// `flow/with_layer_steady_store`.
fn flow_loop(spec: &str) {
    let (count, mode) = spec.split_once(':').unwrap_or((spec, "with_layer"));
    let count: usize = count
        .parse()
        .unwrap_or_else(|e| panic!("TOWER_PKCE_FLOW_LOOP={spec}: {e}"));
    let rt = runtime();
    let clients = clients();
    assert!(!clients.is_empty());
    preflight(&rt, &clients);
    let layered = steady_layer().layer(tower::service_fn(legacy));
    let plain = tower::service_fn(legacy);
    rt.block_on(async {
        for (i, client) in clients.iter().cycle().take(200 + count).enumerate() {
            let (status, _) = match mode {
                "with_layer" => flow(&layered, client).await,
                "without_layer" => flow(&plain, client).await,
                _ => panic!("TOWER_PKCE_FLOW_LOOP={spec}: with_layer or without_layer"),
            };
            assert_eq!(status, StatusCode::OK, "flow {i}");
        }
    });
}
