//! # tower-pkce
//!
//! PKCE ([RFC 7636](https://www.rfc-editor.org/rfc/rfc7636)) for OAuth 2.0 authorization
//! servers that lack it, as a tower [`Layer`](tower_layer::Layer).
//!
//! Without PKCE, an authorization code intercepted on its way back to a mobile app, a
//! single-page app or a CLI can be redeemed by whoever intercepted it. OAuth 2.1 and
//! [RFC 9700](https://www.rfc-editor.org/rfc/rfc9700) require PKCE. [`PkceLayer`] wraps the
//! service that is (or forwards to) a legacy authorization server and makes the two behave as
//! one server that supports PKCE correctly:
//!
//! 1. **Authorize.** It validates `code_challenge` (S256 only by default; PKCE required),
//!    records it under a random handle it puts in place of the client's `state`, and forwards.
//!    Invalid requests never reach the server.
//! 2. **Redirect.** When any response redirects with `code` (or `error`) and one of its
//!    handles as `state`, it binds the code to the recorded challenge and client and puts the
//!    client's own `state` back (or removes it if the client sent none).
//! 3. **Token.** For `grant_type=authorization_code` it checks `code_verifier` against the
//!    bound challenge in constant time, checks the client, and marks the code redeemed,
//!    atomically, before forwarding. Everything else passes through untouched.
//!
//! Discovery documents gain `code_challenge_methods_supported`.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_pkce::PkceLayer;
//!
//! # async fn authorize() {}
//! # async fn token() {}
//! let legacy_server: Router = Router::new()
//!     .route("/authorize", get(authorize))
//!     .route("/token", axum::routing::post(token));
//! let app = legacy_server.layer(PkceLayer::new());
//! # let _ = app;
//! ```
//!
//! A code the layer never saw issued, redeemed without a verifier, is refused before it
//! reaches the server (fail closed), with an RFC 6749 error and its [`Reason`]:
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{header, Request, Response, StatusCode};
//! use http_body_util::{BodyExt as _, Full};
//! use tower::{service_fn, Layer as _, ServiceExt as _};
//! use tower_pkce::{PkceBody, PkceLayer, Reason};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A legacy server that would hand out a token for any code.
//! let legacy = service_fn(|_: Request<PkceBody<Full<Bytes>>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(r#"{"access_token":"t"}"#))))
//! });
//! let server = PkceLayer::new().layer(legacy);
//!
//! let stolen = Request::post("/token")
//!     .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
//!     .body(Full::new(Bytes::from(
//!         "grant_type=authorization_code&code=intercepted&client_id=app&redirect_uri=https%3A%2F%2Fapp.example%2Fcb",
//!     )))?;
//! let response = server.oneshot(stolen).await?;
//!
//! assert_eq!(response.status(), StatusCode::BAD_REQUEST);
//! assert_eq!(response.extensions().get::<Reason>(), Some(&Reason::UnknownCode));
//! let body = response.into_body().collect().await?.to_bytes();
//! assert!(body.starts_with(br#"{"error":"invalid_grant""#));
//! # Ok(())
//! # }
//! ```
//!
//! # The token decision table
//!
//! | code is   | with `code_verifier`                           | without                     |
//! |-----------|------------------------------------------------|-----------------------------|
//! | bound     | verify: match → forward, else `invalid_grant`  | `invalid_grant`             |
//! | unbound   | `invalid_grant` (PKCE downgrade)               | forward                     |
//! | redeemed  | `invalid_grant` (code reuse)                   | `invalid_grant`             |
//! | unknown   | `invalid_grant` (fail closed)                  | forward only for an exempt client |
//!
//! A refused attempt on a bound code counts; after
//! [`max_failed_attempts`](PkceLayer::max_failed_attempts) the code is burned. The client
//! redeeming must be the client the code was issued to. A code whose redemption the upstream
//! answers with anything but 2xx goes back to bound.
//!
//! # Security
//!
//! - The layer keys pending flows on a handle it mints (128 random bits), never on the
//!   client's `state`, so nobody can rebind another user's code by reusing their state.
//! - Ambiguous input is refused: repeated parameters (a `[]` suffix counts as the bare name,
//!   names compare without case), parameters in both query and body, OAuth parameters in the
//!   token request's query string, bodies that do not parse. Endpoint paths match after
//!   normalization, so `/Token`, `/token/`, `//token` and `/%74oken` are the token endpoint.
//! - Store failures fail closed with `503 temporarily_unavailable`.
//! - Codes, verifiers, secrets and tokens are never logged; store keys are SHA-256 digests.
//! - The layer cannot revoke tokens the upstream issued for a code that is later replayed
//!   (RFC 6749 §4.1.2 says the server SHOULD); it refuses the replay.
//! - `response_mode=form_post` responses (a 200 HTML page, read only while a form_post flow may
//!   be pending, at most 64 KiB) get the same treatment as redirects; `iss` (RFC 9207) passes
//!   through untouched in every response mode.
//!
//! # Stores
//!
//! Pending flows and code records live in a [`ChallengeStore`]. The default, [`MemoryStore`],
//! keeps them in this process, bounded. With the feature `redis`,
//! `RedisStore` keeps them on a Redis or Valkey server that several replicas share, so a flow
//! may start on one and finish on another:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn demo() -> Result<(), tower_pkce::StoreError> {
//! use tower_pkce::{PkceLayer, RedisStore};
//!
//! let store = RedisStore::open("redis://redis.internal:6379/0")?;
//! let layer = PkceLayer::new().with_store(store);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! # The proxy
//!
//! `pkce-proxy`, a reverse proxy with this layer inside, to put in front of a legacy server
//! without changing it, is its own package (`pkce-proxy/` in the repository). This crate's
//! default features bring no server, client or CLI.
//!
//! # Observability
//!
//! One `tracing` event per decision (target `tower_pkce`), with `endpoint`, `client_id`,
//! `outcome`, `reason` and at most an 8-hex-digit fingerprint of a code's hash; counters in
//! [`PkceLayer::metrics`]. Refusals carry their [`Reason`] in the response extensions.

#![forbid(unsafe_code)]
// No panic reachable from input: outside tests, no unwrap, expect, indexing or explicit panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::unreachable
    )
)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod indexed;
mod layer;
mod metrics;
mod oauth;
mod pkce;
mod service;
pub mod store;

pub use body::PkceBody;
pub use layer::{
    ConfigError, Mode, PkceLayer, DEFAULT_CODE_TTL, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_FAILED_ATTEMPTS, DEFAULT_PENDING_TTL,
};
pub use metrics::{Metrics, Outcome};
pub use oauth::error::Reason;
pub use pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceError};
pub use service::{Endpoint, Pkce};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
pub use store::{ChallengeStore, MemoryStore, StoreError};

/// The error type the layer's bounds are written with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
