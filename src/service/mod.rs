use std::sync::Arc;
use std::task::{Context, Poll};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use rand::RngCore as _;
use tower_service::Service;

use crate::body::PkceBody;
use crate::future::ResponseFuture;
use crate::layer::{Mode, PkceLayer, Shared};
use crate::metrics::{Outcome, Pass};
use crate::oauth::authorize::{self, AuthorizeParams, Part};
use crate::oauth::error::{self, Reason};
use crate::oauth::token::{body_format, BodyFormat};
use crate::oauth::{form, form_post, metadata, path, redirect};
use crate::store::{PendingFlow, StoreError, StoreKey};
use crate::BoxError;

mod token;

/// The largest discovery document the layer rewrites; larger ones pass unchanged.
const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// Longest values a pending flow keeps, so an entry stays small whatever is sent: at most
/// about 3.3 KiB of strings per flow.
const MAX_CLIENT_ID_LEN: usize = 256;
const MAX_REDIRECT_URI_LEN: usize = 2048;
const MAX_STATE_LEN: usize = 1024;

/// The service [`PkceLayer`] makes: enforces PKCE in front of `S`.
///
/// Every refusal is a response (carrying its [`Reason`] in the extensions), so
/// `Error = S::Error` and the layer fits `axum::Router::layer` without `HandleErrorLayer`.
#[derive(Clone)]
pub struct Pkce<S> {
    inner: S,
    layer: PkceLayer,
}

impl<S> Pkce<S> {
    /// Wraps `inner` with the configuration (and the store) of `layer`.
    pub fn new(inner: S, layer: PkceLayer) -> Self {
        Self { inner, layer }
    }

    /// A [`PkceLayer`] with strict defaults.
    pub fn layer() -> PkceLayer {
        PkceLayer::new()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Pkce<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// Which endpoint the layer takes a request path for ([`PkceLayer::endpoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// The authorization endpoint.
    Authorize,
    /// The token endpoint.
    Token,
    /// The pushed authorization request endpoint (RFC 9126).
    Par,
    /// A discovery document (RFC 8414 or OpenID Connect).
    Metadata,
    /// A path some server could route to an OAuth endpoint without being its path: refused.
    Lookalike,
    /// Anything else: passed through untouched.
    Other,
}

pub(crate) fn classify(shared: &Shared, path: &str) -> Endpoint {
    let config = &shared.config;
    let prepared = path::Prepared::new(path);
    let par = config.par_path.as_ref().map(path::EndpointPath::normalized);
    let endpoints = [
        (Some(config.token_path.normalized()), Endpoint::Token),
        (
            Some(config.authorize_path.normalized()),
            Endpoint::Authorize,
        ),
        (par, Endpoint::Par),
    ];
    let endpoints = endpoints
        .iter()
        .filter_map(|(target, endpoint)| target.map(|t| (t, *endpoint)));
    let mut lookalike = false;
    for (target, endpoint) in endpoints {
        if prepared.is(target) {
            return endpoint;
        }
        lookalike = lookalike || prepared.looks_like(target);
    }
    if lookalike {
        // An operator's route under an endpoint's path passes only when spelled plainly
        // (a regular path, any case): `/token//info` or `/token;x/info` may be the endpoint
        // to a router that merges or strips less than normalization does (found in review).
        let named = match prepared {
            path::Prepared::Regular(regular) => config
                .other_routes
                .iter()
                .any(|r| r.eq_ignore_ascii_case(regular)),
            path::Prepared::Normalized { .. } => false,
        };
        if named {
            Endpoint::Other
        } else {
            Endpoint::Lookalike
        }
    } else if path.contains('%')
        || path
            .as_bytes()
            .windows(10)
            .any(|w| w.eq_ignore_ascii_case(b"well-known"))
    {
        // Cheap pre-check: only paths that could name a discovery document are compared.
        if metadata::is_document(&path::normalize(path)) {
            Endpoint::Metadata
        } else {
            Endpoint::Other
        }
    } else {
        Endpoint::Other
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Pkce<S>
where
    S: Service<Request<PkceBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PkceBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let endpoint = classify(&self.layer.shared, req.uri().path());
        self.call_for(req, endpoint)
    }
}

impl<S> Pkce<S> {
    /// [`Service::call`] for a request already classified, so a caller that needed the
    /// endpoint itself (pkce-proxy, for its metrics) does not have it worked out twice.
    /// `endpoint` must be `classify` of the request's path.
    pub(crate) fn call_for<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
        endpoint: Endpoint,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<PkceBody<ReqBody>>, Response = Response<ResBody>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Body<Data = Bytes> + Send + 'static,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let shared = &self.layer.shared;
        // Whatever the endpoint: a server routing by one of these would not go by the path
        // the request was classified by.
        crate::oauth::headers::drop_routing(req.headers_mut());
        match endpoint {
            Endpoint::Other => ResponseFuture::inner(
                self.inner.call(req.map(PkceBody::new)),
                shared.clone(),
                false,
            ),
            Endpoint::Metadata => {
                // Ask for an identity encoding: a compressed document cannot be rewritten.
                req.headers_mut().remove(header::ACCEPT_ENCODING);
                req.headers_mut().remove(header::IF_NONE_MATCH);
                ResponseFuture::inner(
                    self.inner.call(req.map(PkceBody::new)),
                    shared.clone(),
                    true,
                )
            }
            Endpoint::Lookalike => {
                if refuse(shared, "lookalike", None, Reason::EndpointLookalike, None) {
                    // Report mode: forwarded as it came.
                    return ResponseFuture::inner(
                        self.inner.call(req.map(PkceBody::new)),
                        shared.clone(),
                        false,
                    );
                }
                let refusal = respond(error::json(Reason::EndpointLookalike));
                ResponseFuture::boxed(Box::pin(std::future::ready(Ok(refusal))))
            }
            endpoint => {
                // The store is consulted before the inner service is called: take the service
                // that was driven to readiness and leave a clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let shared = shared.clone();
                // One box per endpoint, each its own size: an authorization request does not
                // pay for the largest (PAR's).
                ResponseFuture::boxed(match endpoint {
                    Endpoint::Token => Box::pin(token::token_request(shared, inner, req)),
                    Endpoint::Par => Box::pin(par_request(shared, inner, req)),
                    _ => Box::pin(authorize_request(shared, inner, req)),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions and their traces

/// A code's fingerprint for the logs, or `-`.
struct Fingerprint<'a>(Option<&'a StoreKey>);

impl std::fmt::Display for Fingerprint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(key) => key
                .as_bytes()
                .iter()
                .take(4)
                .try_for_each(|b| write!(f, "{b:02x}")),
            None => f.write_str("-"),
        }
    }
}

fn log(
    endpoint: &str,
    client: Option<&str>,
    outcome: Outcome,
    reason: &str,
    code: Option<&StoreKey>,
) {
    let client = client.unwrap_or("-");
    // Formatted only if a subscriber takes the event.
    let code = Fingerprint(code);
    match outcome {
        Outcome::Allowed => tracing::info!(
            target: "tower_pkce", endpoint, client_id = ?client, outcome = outcome.as_str(), reason, code = %code
        ),
        _ => tracing::warn!(
            target: "tower_pkce", endpoint, client_id = ?client, outcome = outcome.as_str(), reason, code = %code
        ),
    }
}

fn allow(
    shared: &Shared,
    endpoint: &str,
    client: Option<&str>,
    pass: Pass,
    code: Option<&StoreKey>,
) {
    shared.metrics.pass(pass);
    log(endpoint, client, Outcome::Allowed, pass.as_str(), code);
}

/// Records a refusal; returns whether the request must still be forwarded (report mode).
fn refuse(
    shared: &Shared,
    endpoint: &str,
    client: Option<&str>,
    reason: Reason,
    code: Option<&StoreKey>,
) -> bool {
    let report = shared.config.mode == Mode::Report;
    shared.metrics.refuse(reason, report);
    let outcome = if report {
        Outcome::Reported
    } else {
        Outcome::Refused
    };
    log(endpoint, client, outcome, reason.as_str(), code);
    report
}

fn store_reason(error: &StoreError) -> Reason {
    tracing::error!(target: "tower_pkce", error = %error, "challenge store failed");
    match error {
        StoreError::Full => Reason::StoreFull,
        _ => Reason::StoreUnavailable,
    }
}

fn respond<B>(response: Response<Bytes>) -> Response<PkceBody<B>> {
    response.map(PkceBody::full)
}

// ---------------------------------------------------------------------------------------------
// Bodies

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads a whole request body, refusing one over `limit` before reading it when its length
/// is declared.
async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, Reason>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(Reason::BodyTooLarge);
    }
    let reason = |e: BoxError| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            Reason::BodyTooLarge
        } else if timed_out(&*e) {
            Reason::BodyTimeout
        } else {
            Reason::UnreadableBody
        }
    };
    // A body that comes in one chunk (most) is kept as it came; only a second chunk makes
    // the layer copy them into one buffer. Trailers are not part of a form: dropped.
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut first = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame.map_err(reason)?.into_data() else {
            continue;
        };
        match joined.as_mut() {
            Some(buffer) => buffer.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => joined = Some([&first[..], &data[..]].concat()),
        }
    }
    Ok(joined.map_or(first, Bytes::from))
}

/// Whether a body error is, or was caused by, an I/O timeout.
fn timed_out(mut error: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        match error.source() {
            Some(source) => error = source,
            None => return false,
        }
    }
}

/// Sets the framing headers for a buffered body.
fn set_length(headers: &mut HeaderMap, len: usize) {
    // A body forwarded as it came, with its one canonical length and no other framing, needs
    // nothing changed.
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let stated = match (lengths.next(), lengths.next()) {
        (Some(value), None) => Some(value.as_bytes()),
        _ => None,
    };
    let same = stated.is_some_and(|v| is_canonical_length(v, len))
        && !headers.contains_key(header::TRANSFER_ENCODING);
    if !same {
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// Whether `value` is `len` in decimal, written the one way `set_length` would write it.
fn is_canonical_length(value: &[u8], len: usize) -> bool {
    let digits = value.iter().all(u8::is_ascii_digit);
    let padded = value.len() > 1 && value.first() == Some(&b'0');
    digits
        && !padded
        && std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            == Some(len)
}

/// Whether a body the layer read is framed so that it and the upstream read the same bytes:
/// one `Content-Type` at most, and no `Content-Encoding` (a compressed body the layer cannot
/// read might be decompressed and read by the upstream).
fn plainly_framed(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().count() <= 1
        && headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .all(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// A form, or no content type at all (read as a form: the strict reading).
fn is_form_or_untyped(headers: &HeaderMap) -> bool {
    matches!(
        body_format(headers.get(header::CONTENT_TYPE)),
        Ok(BodyFormat::Form)
    )
}

/// A path and query: `path`, then `?` and the `pieces` of the query, in one buffer of the
/// exact length (which the new URI then holds without a copy).
fn path_and_query(path: &str, pieces: &[&[u8]]) -> Vec<u8> {
    let query_len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(path.len() + 1 + query_len);
    out.extend_from_slice(path.as_bytes());
    if query_len > 0 {
        out.push(b'?');
        pieces.iter().for_each(|p| out.extend_from_slice(p));
    }
    out
}

/// `uri` with `path_and_query` in place of its own. Its other parts are moved, not cloned
/// (a clone of a `Bytes` the request was parsed into allocates).
fn with_path_and_query(uri: Uri, path_and_query: Vec<u8>) -> Option<Uri> {
    std::str::from_utf8(&path_and_query).ok()?;
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(path_and_query)).ok()?);
    Uri::from_parts(parts).ok()
}

/// A correlation handle: 16 random bytes in base64url, kept on the stack.
struct Handle([u8; redirect::HANDLE_LEN]);

impl Handle {
    fn mint() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        // 16 bytes are exactly 22 characters of base64url without padding (checked below at
        // compile time), so this cannot fail. Were it to, the handle would be 22 NULs: no
        // redirect ever carries one back (`redirect::capture` reads only the handle's shape),
        // so that flow would expire unused and its code fail closed.
        const _: () = assert!(redirect::HANDLE_LEN == 16_usize.div_ceil(3) * 4 - 2);
        let mut handle = [0u8; redirect::HANDLE_LEN];
        let written = URL_SAFE_NO_PAD.encode_slice(bytes, &mut handle);
        debug_assert_eq!(written.ok(), Some(redirect::HANDLE_LEN));
        Self(handle)
    }

    fn as_str(&self) -> &str {
        // Base64url is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization endpoint

/// The answer to a refused authorization request: a redirect to the client's configured
/// redirect URI when it is known and matches, else a 400 page (HTML for browsers, JSON
/// otherwise). Never a redirect to an unverified URI.
fn authorize_refusal(
    shared: &Shared,
    reason: Reason,
    params: Option<&AuthorizeParams<'_>>,
    accept: Option<&HeaderValue>,
) -> Response<Bytes> {
    let redirect = params.and_then(|p| {
        let registered = shared.config.redirect_uris.get(p.client_id.as_deref()?)?;
        let target = match p.redirect_uri.as_deref() {
            Some(uri) => registered.iter().find(|r| r.as_ref() == uri)?,
            None if registered.len() == 1 => registered.first()?,
            None => return None,
        };
        let in_fragment = authorize::error_in_fragment(p)?;
        error::redirect(reason, target, p.state.as_deref(), in_fragment)
    });
    match redirect {
        Some(response) => response,
        None if error::prefers_html(accept) => error::html(reason),
        None => error::json(reason),
    }
}

/// Whether a live flow's record agrees with a request that re-enters it: the same client and
/// redirect URI, each present or absent alike, and the same challenge or none at all (a
/// consent form written before PKCE posts back without the challenge fields, or with them
/// empty: the code stays bound to the recorded challenge). Anything else reusing a live
/// handle is an attempt on someone else's flow.
fn reentry_matches(
    flow: &PendingFlow,
    params: &AuthorizeParams<'_>,
    allow_plain: bool,
) -> Result<(), Reason> {
    let same_challenge = match params.challenge {
        // Omitted (an empty value is absent): whatever the method says, nothing to compare.
        None => true,
        Some(_) => authorize::check_pkce(params, allow_plain, false)?.as_ref() == flow.challenge(),
    };
    let same = same_challenge
        && params.client_id.as_deref() == Some(flow.client_id())
        && params.redirect_uri.as_deref() == flow.redirect_uri();
    if same {
        Ok(())
    } else {
        Err(Reason::HandleMismatch)
    }
}

enum AuthorizeDecision {
    /// Forward the request as it came.
    Unchanged,
    /// Forward with the client's state replaced by this handle.
    Wrapped(Handle),
}

async fn decide_authorize(
    shared: &Shared,
    params: &AuthorizeParams<'_>,
    pushed: bool,
) -> Result<AuthorizeDecision, Reason> {
    let config = &shared.config;
    const EP: &str = "authorize";
    let client = params.client_id.as_deref();
    let Some(client_id) = client else {
        return Err(Reason::MissingClientId);
    };
    let too_long = client_id.len() > MAX_CLIENT_ID_LEN
        || params.redirect_uri.as_deref().map_or(0, str::len) > MAX_REDIRECT_URI_LEN
        || params.state.as_deref().map_or(0, str::len) > MAX_STATE_LEN;
    if too_long {
        return Err(Reason::ParameterTooLong);
    }
    let exempt = config.is_exempt(client_id);
    if !pushed && config.par_path.is_some() && !params.request {
        if let Some(uri) = params.request_uri.as_deref() {
            // Boxed: the rarer path, kept out of every authorization request's future.
            return Box::pin(decide_by_request_uri(shared, params, client_id, uri)).await;
        }
    }
    if params.request_object {
        if exempt {
            allow(shared, EP, client, Pass::ExemptRequestObject, None);
            return Ok(AuthorizeDecision::Unchanged);
        }
        return Err(Reason::RequestObject);
    }
    if let Some(flow) = live_flow(shared, params).await? {
        if pushed {
            // A pushed request never re-enters a flow: its state is the client's own.
            return Err(Reason::HandleMismatch);
        }
        reentry_matches(&flow, params, config.allow_plain)?;
        if params.response_mode.as_deref() == Some("form_post") {
            shared.form_post.open(config.pending_ttl);
        }
        allow(shared, EP, client, Pass::Reentry, None);
        return Ok(AuthorizeDecision::Unchanged);
    }
    let challenge = authorize::check_pkce(params, config.allow_plain, exempt)?;
    let pass = if challenge.is_some() {
        Pass::FlowRecorded
    } else {
        Pass::UnboundFlowRecorded
    };
    let handle = Handle::mint();
    let created = shared.store.create_new_flow(
        StoreKey::for_handle(handle.as_str()),
        challenge,
        client_id,
        params.redirect_uri.as_deref(),
        params.state.as_deref(),
        config.pending_ttl,
    );
    match created.await {
        Ok(true) => {}
        // 128 random bits collided: never in practice; refuse rather than share a flow.
        Ok(false) => return Err(Reason::StoreUnavailable),
        Err(e) => return Err(store_reason(&e)),
    }
    if params.response_mode.as_deref() == Some("form_post") {
        // The code comes back in an HTML page: read pages while this flow may be pending.
        shared.form_post.open(config.pending_ttl);
    }
    allow(shared, EP, client, pass, None);
    Ok(AuthorizeDecision::Wrapped(handle))
}

/// The decision on a parsed authorization (or pushed) request; a refusal keeps the parameters
/// it could read, for the error response.
async fn decide_parsed<'a>(
    shared: &Shared,
    parsed: Result<AuthorizeParams<'a>, Reason>,
    pushed: bool,
) -> Result<(AuthorizeDecision, AuthorizeParams<'a>), (Reason, Option<AuthorizeParams<'a>>)> {
    match parsed {
        Err(reason) => Err((reason, None)),
        // Not a code flow, unless a request object or a request by reference may make it one
        // (its response_type is inside).
        Ok(params) if !params.wants_code && !params.request_object => {
            // Not a code flow, but it may still try to use a live flow's handle: only a
            // matching code-flow request may (else it would end the flow and be handed the
            // flow's own state).
            match live_flow(shared, &params).await {
                Ok(None) => Ok((AuthorizeDecision::Unchanged, params)),
                Ok(Some(_)) => Err((Reason::HandleMismatch, Some(params))),
                Err(reason) => Err((reason, Some(params))),
            }
        }
        Ok(params) => match decide_authorize(shared, &params, pushed).await {
            Ok(decision) => Ok((decision, params)),
            Err(reason) => Err((reason, Some(params))),
        },
    }
}

/// The live flow whose handle the request's `state` is, if any. Only a state of the handle's
/// shape costs a store lookup.
async fn live_flow(
    shared: &Shared,
    params: &AuthorizeParams<'_>,
) -> Result<Option<PendingFlow>, Reason> {
    let Some(state) = params
        .state
        .as_deref()
        .filter(|s| redirect::is_handle(s.as_bytes()))
    else {
        return Ok(None);
    };
    let flow = shared.store.flow(StoreKey::for_handle(state)).await;
    flow.map_err(|e| store_reason(&e))
}

/// The store key of a pushed request's record, beside the pending flows' handles.
fn pushed_key(request_uri: &str) -> StoreKey {
    StoreKey::for_handle(&format!("par:{request_uri}"))
}

/// An authorization request by `request_uri`: the flow comes from the pushed request only.
/// The client must be the one that pushed it, and PKCE parameters in the request, if any,
/// must be the pushed ones.
async fn decide_by_request_uri(
    shared: &Shared,
    params: &AuthorizeParams<'_>,
    client_id: &str,
    request_uri: &str,
) -> Result<AuthorizeDecision, Reason> {
    let record = shared
        .store
        .flow(pushed_key(request_uri))
        .await
        .map_err(|e| store_reason(&e))?;
    let Some(pushed) = record else {
        if shared.config.is_exempt(client_id) {
            // An exempt client's request object (pushed as JAR, or hosted by the client).
            allow(
                shared,
                "authorize",
                Some(client_id),
                Pass::ExemptRequestObject,
                None,
            );
            return Ok(AuthorizeDecision::Unchanged);
        }
        return Err(Reason::UnknownRequestUri);
    };
    if pushed.client_id() != client_id {
        return Err(Reason::PushedRequestMismatch);
    }
    // The record's `state` is the handle of the pushed flow: once that flow has delivered its
    // code (or expired), the request_uri is spent.
    let live = match pushed.state() {
        Some(handle) => shared
            .store
            .flow(StoreKey::for_handle(handle))
            .await
            .map_err(|e| store_reason(&e))?
            .is_some(),
        None => false,
    };
    if !live {
        return Err(Reason::UnknownRequestUri);
    }
    // The pushed request may have asked for form_post, and this replica may not have seen it.
    shared.form_post.open(shared.config.pending_ttl);
    if params.challenge.is_some() || params.method.is_some() {
        let challenge = authorize::check_pkce(params, shared.config.allow_plain, false)?;
        if challenge.as_ref() != pushed.challenge() {
            return Err(Reason::PushedRequestMismatch);
        }
    }
    allow(shared, "authorize", Some(client_id), Pass::Reentry, None);
    Ok(AuthorizeDecision::Unchanged)
}

/// Most bytes of a PAR response read for its `request_uri`.
const MAX_PAR_RESPONSE_BYTES: usize = 16 * 1024;

/// A pushed authorization request (RFC 9126): checked like an authorization request, its
/// state swapped for a handle in the body, and the `request_uri` of a 201 remembered.
async fn par_request<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<PkceBody<ResBody>>, S::Error>
where
    S: Service<Request<PkceBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    const EP: &str = "par";
    let (mut parts, body) = req.into_parts();
    // The answer's request_uri is read: ask for it uncompressed.
    parts.headers.remove(header::ACCEPT_ENCODING);
    if parts.method != Method::POST {
        // RFC 9126 §2: POST only.
        if !refuse(&shared, EP, None, Reason::PostOnly, None) {
            return Ok(respond(error::json(Reason::PostOnly)));
        }
        let req = Request::from_parts(parts, PkceBody::new(body));
        return Ok(finish_response(&shared, inner.call(req).await?, false).await);
    }
    let read = read_body(&parts.headers, body, shared.config.max_body_bytes)
        .await
        .and_then(|bytes| {
            if plainly_framed(&parts.headers) && is_form_or_untyped(&parts.headers) {
                Ok(bytes)
            } else {
                Err(Reason::UnsupportedContentType)
            }
        });
    let body = match read {
        Ok(bytes) => bytes,
        Err(reason) => {
            refuse(&shared, EP, None, reason, None);
            return Ok(respond(error::json(reason)));
        }
    };
    // RFC 9126 §2.1: the parameters are in the body; a query copy could be read instead.
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let checked = if query.is_empty() {
        authorize::parse(b"", Some(&body))
    } else {
        Err(Reason::ParametersInQuery)
    };
    let checked = checked.and_then(|params| {
        if params.request_uri.is_some() {
            // RFC 9126 §2.1: a pushed request cannot itself refer to one.
            Err(Reason::RequestObject)
        } else {
            Ok(params)
        }
    });
    let (decision, params) = match decide_parsed(&shared, checked, true).await {
        Ok(ok) => ok,
        Err((reason, params)) => {
            let client = params.as_ref().and_then(|p| p.client_id.as_deref());
            if !refuse(&shared, EP, client, reason, None) {
                return Ok(respond(error::json(reason)));
            }
            (AuthorizeDecision::Unchanged, params.unwrap_or_default())
        }
    };
    // What is pushed upstream is rebuilt from what was read, as at the token endpoint: the
    // endpoint's path, the allowed headers, and the body encoded afresh.
    let pushed = match &decision {
        AuthorizeDecision::Wrapped(handle) => {
            let span = match params.state_at.clone() {
                Some((Part::Body, span)) => Some(span),
                _ => None,
            };
            form::canonical_form(&authorize::put_state(&body, span, handle.as_str()))
        }
        _ => form::canonical_form(&body),
    };
    let pushed = match pushed {
        Ok(pushed) => pushed,
        Err(reason) => {
            if let AuthorizeDecision::Wrapped(handle) = &decision {
                let _ = shared
                    .store
                    .take_flow(StoreKey::for_handle(handle.as_str()))
                    .await;
            }
            let client = params.client_id.as_deref();
            if !refuse(&shared, EP, client, reason, None) {
                return Ok(respond(error::json(reason)));
            }
            // Report mode: pushed as it came.
            set_length(&mut parts.headers, body.len());
            let req = Request::from_parts(parts, PkceBody::full(body));
            return Ok(finish_response(&shared, inner.call(req).await?, false).await);
        }
    };
    let Some(par_path) = shared.config.par_path.as_ref() else {
        // Classified as PAR only when a PAR path is set.
        return Ok(respond(error::json(Reason::StoreUnavailable)));
    };
    let rebuilt = token::Rebuilt {
        path: par_path.written(),
        query: b"",
        form: Some(pushed),
        preflight: false,
    };
    let Some(req) = token::rebuild(&shared, parts, rebuilt) else {
        return Ok(respond(error::json(Reason::MalformedParameter)));
    };
    let AuthorizeDecision::Wrapped(handle) = decision else {
        return Ok(finish_response(&shared, inner.call(req).await?, false).await);
    };
    let response = inner.call(req).await;
    let handle_key = StoreKey::for_handle(handle.as_str());
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            let _ = shared.store.take_flow(handle_key).await;
            return Err(e);
        }
    };
    if response.status() != http::StatusCode::CREATED {
        // Refused upstream: nothing will come back for this handle.
        let _ = shared.store.take_flow(handle_key).await;
        return Ok(response.map(PkceBody::new));
    }
    let (parts, body) = response.into_parts();
    let bytes = match Limited::new(body, MAX_PAR_RESPONSE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let _ = shared.store.take_flow(handle_key).await;
            tracing::warn!(target: "tower_pkce", "a pushed authorization response could not be read");
            let mut response = error::json(Reason::StoreUnavailable);
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            return Ok(respond(response));
        }
    };
    let answer: Option<(String, Option<u64>)> = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let uri = v.get("request_uri")?.as_str()?.to_owned();
            Some((uri, v.get("expires_in").and_then(serde_json::Value::as_u64)))
        });
    let remembered = match answer {
        Some((uri, expires_in)) => {
            let ttl = expires_in
                .map(std::time::Duration::from_secs)
                .map_or(shared.config.pending_ttl, |t| {
                    t.min(shared.config.pending_ttl)
                });
            match shared.store.flow(handle_key).await {
                Ok(Some(flow)) => shared
                    .store
                    .create_flow(
                        pushed_key(&uri),
                        // What the authorize request is checked against, and the handle of
                        // the pushed flow in place of a state.
                        PendingFlow::new(
                            flow.challenge().cloned(),
                            flow.client_id(),
                            flow.redirect_uri(),
                            Some(handle.as_str()),
                        ),
                        ttl,
                    )
                    .await
                    .map_err(|e| store_reason(&e))
                    .and_then(|created| created.then_some(()).ok_or(Reason::StoreUnavailable)),
                Ok(None) => Err(Reason::StoreUnavailable),
                Err(e) => Err(store_reason(&e)),
            }
        }
        None => {
            tracing::warn!(target: "tower_pkce", "a pushed authorization response without request_uri");
            Err(Reason::StoreUnavailable)
        }
    };
    if let Err(reason) = remembered {
        let _ = shared.store.take_flow(handle_key).await;
        let client = params.client_id.as_deref();
        if !refuse(&shared, EP, client, reason, None) {
            return Ok(respond(error::json(reason)));
        }
    }
    Ok(Response::from_parts(parts, PkceBody::full(bytes)))
}

async fn authorize_request<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<PkceBody<ResBody>>, S::Error>
where
    S: Service<Request<PkceBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    // The checks run in a future of their own, boxed: what this one keeps while the upstream
    // answers stays small.
    let req = match Box::pin(authorize_forward(&shared, req)).await {
        Ok(req) => req,
        Err(refusal) => return Ok(respond(refusal)),
    };
    let response = inner.call(req).await?;
    Ok(finish_response(&shared, response, false).await)
}

/// Checks an authorization request and makes the request to forward: the client's state
/// swapped for a handle when a flow was recorded. `Err` is the refusal to answer with.
async fn authorize_forward<ReqBody>(
    shared: &Shared,
    req: Request<ReqBody>,
) -> Result<Request<PkceBody<ReqBody>>, Response<Bytes>>
where
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    const EP: &str = "authorize";
    let (mut parts, body) = req.into_parts();
    let reads_body = parts.method != Method::GET && parts.method != Method::HEAD;
    let accept = parts.headers.get(header::ACCEPT).cloned();
    let (buffered, body) = if reads_body {
        let read = read_body(&parts.headers, body, shared.config.max_body_bytes)
            .await
            .and_then(|bytes| {
                // A body the layer cannot read as a form is refused: an upstream that reads
                // it anyway (JSON merged into params, multipart, compressed) would see
                // parameters the layer did not.
                let readable = bytes.is_empty()
                    || (plainly_framed(&parts.headers) && is_form_or_untyped(&parts.headers));
                if readable {
                    Ok(bytes)
                } else {
                    Err(Reason::UnsupportedContentType)
                }
            });
        match read {
            Ok(bytes) => (Some(bytes), None),
            // The body is gone: even report mode cannot forward it.
            Err(reason) => {
                refuse(shared, EP, None, reason, None);
                return Err(authorize_refusal(shared, reason, None, accept.as_ref()));
            }
        }
    } else {
        (None, Some(body))
    };
    let forward_body = |bytes: Option<Bytes>, body: Option<ReqBody>| match (bytes, body) {
        (Some(bytes), _) => PkceBody::full(bytes),
        (None, Some(body)) => PkceBody::new(body),
        (None, None) => PkceBody::full(Bytes::new()),
    };

    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let parsed = authorize::parse(query, buffered.as_deref());
    let (decision, params) = match Box::pin(decide_parsed(shared, parsed, false)).await {
        Ok(ok) => ok,
        Err((reason, params)) => {
            let client = params.as_ref().and_then(|p| p.client_id.as_deref());
            if !refuse(shared, EP, client, reason, None) {
                return Err(authorize_refusal(
                    shared,
                    reason,
                    params.as_ref(),
                    accept.as_ref(),
                ));
            }
            (AuthorizeDecision::Unchanged, params.unwrap_or_default())
        }
    };

    // What is left to do needs two facts of the parameters, which borrow the request.
    let state_at = params.state_at.clone();
    // The answer may be a form_post page, which the layer reads.
    let reads_page =
        params.response_mode.as_deref() == Some("form_post") || params.request_uri.is_some();
    let mut replaced = None;
    // The request goes upstream on the endpoint's path as written, whatever spelling of it
    // the client used.
    let canonical = shared.config.authorize_path.written();
    let mut target = None;
    if let AuthorizeDecision::Wrapped(handle) = decision {
        // The state's pair in the body, and in the query: both, where identical copies were
        // sent in both places.
        let (body_span, query_span) = match state_at {
            Some((Part::Body, span)) => (Some(span), None),
            Some((Part::Query, span)) => (params.state_copy_in_body.clone(), Some(span)),
            None => (None, None),
        };
        if let (Some(span), Some(bytes)) = (body_span, buffered.as_ref()) {
            let body = authorize::put_state(bytes, Some(span), handle.as_str());
            replaced = Some(Bytes::from(body));
        }
        if query_span.is_some() || replaced.is_none() {
            let pieces = authorize::state_pieces(query, query_span, handle.as_str());
            target = Some(path_and_query(canonical, &pieces));
        }
    }
    if target.is_none() && parts.uri.path() != canonical {
        target = Some(path_and_query(canonical, &[query]));
    }
    if let Some(target) = target {
        match with_path_and_query(std::mem::take(&mut parts.uri), target) {
            Some(uri) => parts.uri = uri,
            None => {
                // Unreachable for a valid request URI; fail closed all the same.
                return Err(authorize_refusal(
                    shared,
                    Reason::MalformedParameter,
                    None,
                    accept.as_ref(),
                ));
            }
        }
    }
    let buffered = replaced.or(buffered);
    if let Some(bytes) = &buffered {
        set_length(&mut parts.headers, bytes.len());
    }
    if reads_page {
        // Ask for the page uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    Ok(Request::from_parts(parts, forward_body(buffered, body)))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Whether a response needs the layer's attention: a redirect that may carry one of our
/// handles, a discovery document, or an HTML page while a form_post flow may be pending.
/// Allocation-free.
pub(crate) fn needs_attention<B>(shared: &Shared, response: &Response<B>, metadata: bool) -> bool {
    (metadata && response.status() == http::StatusCode::OK)
        || (response.status().is_redirection()
            && response
                .headers()
                .get(header::LOCATION)
                .is_some_and(|l| redirect::may_carry_state(l.as_bytes())))
        || (is_html_page(response) && shared.form_post.is_open())
}

/// A 200 `text/html` response: what a form_post authorization response is.
fn is_html_page<B>(response: &Response<B>) -> bool {
    response.status() == http::StatusCode::OK
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| {
                t.as_bytes()
                    .get(..9)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"text/html"))
            })
}

/// Binds a code delivered by redirect, or releases the flow on an error, and puts the
/// client's own state back; rewrites discovery documents.
pub(crate) async fn finish_response<B>(
    shared: &Shared,
    response: Response<B>,
    metadata: bool,
) -> Response<PkceBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if !needs_attention(shared, &response, metadata) {
        return response.map(PkceBody::new);
    }
    if metadata && response.status() == http::StatusCode::OK {
        // The rare paths are boxed, so every redirect's future does not carry them.
        return Box::pin(rewrite_metadata(shared, response)).await;
    }
    if is_html_page(&response) {
        return Box::pin(capture_form_post(shared, response)).await;
    }
    let mut response = response;
    // Boxed, as are the checks of a request: a future of a few hundred bytes comes from the
    // allocator's per-thread cache, where one of a few kilobytes does not.
    match Box::pin(capture_redirect(shared, response.headers_mut())).await {
        Ok(false) => response.map(PkceBody::new),
        Ok(true) => {
            // The body of a redirect may repeat its target, handle and all ("You are being
            // redirected", as Rails writes): the client never sees a handle, so it goes.
            let headers = response.headers_mut();
            headers.remove(header::CONTENT_TYPE);
            headers.remove(header::CONTENT_ENCODING);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            response.map(|_| PkceBody::full(Bytes::new()))
        }
        Err(reason) => respond(error::html(reason)),
    }
}

/// Binds the code (or releases the flow) of a redirect whose `Location` carries one of the
/// layer's handles, and puts the client's own state back there. `Ok(true)` when the
/// `Location` was rewritten.
async fn capture_redirect(shared: &Shared, headers: &mut HeaderMap) -> Result<bool, Reason> {
    let Some(location) = headers.get(header::LOCATION).and_then(|l| l.to_str().ok()) else {
        return Ok(false);
    };
    let Some(capture) = redirect::capture(location) else {
        return Ok(false);
    };
    let settled = settle_flow(
        shared,
        capture.handle,
        location,
        capture.code.as_deref(),
        capture.error,
    )
    .await?;
    let Some(flow) = settled else {
        return Ok(false);
    };
    let restored = redirect::restore_state(location, &capture, flow.state());
    match HeaderValue::from_maybe_shared(Bytes::from(restored)) {
        Ok(value) => {
            headers.insert(header::LOCATION, value);
            Ok(true)
        }
        Err(_) => Err(Reason::StoreUnavailable),
    }
}

/// Reads an HTML page (at most [`form_post::MAX_PAGE_BYTES`]) for a form_post authorization
/// response: binds its code and puts the client's state back, with `Cache-Control: no-store`.
/// Any other page is passed on as it came.
async fn capture_form_post<B>(shared: &Shared, response: Response<B>) -> Response<PkceBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Only a page whose length is known up front and small: a form_post response is one,
    // and a streamed or long page (or a compressed one) is never held back.
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let length = content_length(response.headers()).or_else(|| response.body().size_hint().exact());
    if encoded || length.is_none_or(|n| n > form_post::MAX_PAGE_BYTES as u64) {
        return response.map(PkceBody::new);
    }
    let (mut parts, body) = response.into_parts();
    let page = match Limited::new(body, form_post::MAX_PAGE_BYTES)
        .collect()
        .await
    {
        // A page with trailers is not a form_post response; they are dropped with the frame
        // reading, as for discovery documents.
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            tracing::warn!(target: "tower_pkce", "an HTML page from the upstream could not be read");
            let mut response = Response::new(Bytes::from_static(
                b"<!DOCTYPE html><title>Bad gateway</title><p>The page could not be read.</p>",
            ));
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return respond(response);
        }
    };
    let Some(capture) = std::str::from_utf8(&page).ok().and_then(form_post::capture) else {
        return Response::from_parts(parts, PkceBody::full(page));
    };
    let text = std::str::from_utf8(&page).unwrap_or_default();
    let target = capture.action.as_deref().unwrap_or_default();
    let settled = settle_flow(
        shared,
        &capture.handle,
        target,
        capture.code.as_deref().map(str::as_bytes),
        capture.error,
    )
    .await;
    match settled {
        Ok(Some(flow)) => {
            let restored = Bytes::from(form_post::restore_state(text, &capture, flow.state()));
            set_length(&mut parts.headers, restored.len());
            parts.headers.remove(header::ETAG);
            parts
                .headers
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            parts
                .headers
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            Response::from_parts(parts, PkceBody::full(restored))
        }
        Ok(None) => Response::from_parts(parts, PkceBody::full(page)),
        Err(reason) => respond(error::html(reason)),
    }
}

/// For an authorization response that carries `handle` as its state and goes to `target`
/// (a redirect's `Location`, a form_post page's `action`): takes the pending flow, binds
/// `code` to it (or releases it on `error`), and returns it so the caller can put the
/// client's own state back. `Ok(None)` when the response is not one of the layer's (no such
/// flow, or not the flow's redirect URI): it then passes unchanged.
async fn settle_flow(
    shared: &Shared,
    handle: &str,
    target: &str,
    code: Option<&[u8]>,
    error: bool,
) -> Result<Option<PendingFlow>, Reason> {
    const EP: &str = "redirect";
    let handle = StoreKey::for_handle(handle);
    let flow = match shared.store.take_flow(handle).await {
        Ok(Some(flow)) => flow,
        // Not one of ours, or expired: the response passes as it is. A code in it is unknown
        // to the layer, so it fails closed at the token endpoint.
        Ok(None) => return Ok(None),
        Err(e) => {
            let reason = store_reason(&e);
            if refuse(shared, EP, None, reason, None) {
                return Ok(None);
            }
            return Err(reason);
        }
    };
    let client = Some(flow.client_id());
    let registered = shared
        .config
        .redirect_uris
        .get(flow.client_id())
        .map_or(&[][..], Vec::as_slice);
    if !redirect::targets(target, flow.redirect_uri(), registered) {
        // Not the flow's redirect URI: some other response of the upstream's (an open
        // redirector, say) echoing a handle. Put the flow back untouched rather than bind a
        // code someone else chose to another user's flow.
        tracing::warn!(target: "tower_pkce", client_id = ?flow.client_id(), "response with a live handle to another URI ignored");
        let ttl = shared.config.pending_ttl;
        return match shared.store.create_flow(handle, flow, ttl).await {
            Ok(_) => Ok(None),
            Err(e) => Err(store_reason(&e)),
        };
    }
    if let Some(code) = code {
        let key = StoreKey::for_code(code);
        let bound = shared.store.bind_new_code(
            key,
            flow.challenge(),
            flow.client_id(),
            shared.config.code_ttl,
        );
        let outcome = match bound.await {
            Ok(true) => Ok(()),
            // The upstream issued a code it issued before: refuse to guess which flow owns it.
            Ok(false) => Err(Reason::StoreUnavailable),
            Err(e) => Err(store_reason(&e)),
        };
        match outcome {
            Ok(()) => allow(shared, EP, client, Pass::CodeBound, Some(&key)),
            Err(reason) => {
                if !refuse(shared, EP, client, reason, Some(&key)) {
                    return Err(reason);
                }
            }
        }
    } else if error {
        allow(shared, EP, client, Pass::ErrorReleased, None);
    }
    Ok(Some(flow))
}

async fn rewrite_metadata<B>(shared: &Shared, response: Response<B>) -> Response<PkceBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let too_big = content_length(response.headers()).is_some_and(|n| n > MAX_METADATA_BYTES as u64);
    if encoded || too_big {
        tracing::warn!(target: "tower_pkce", encoded, too_big, "discovery document passed unchanged");
        return response.map(PkceBody::new);
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match Limited::new(body, MAX_METADATA_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            tracing::warn!(target: "tower_pkce", "discovery document unreadable");
            let mut response = Response::new(Bytes::from_static(
                b"{\"error\":\"server_error\",\"error_description\":\"the discovery document could not be read\"}",
            ));
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return respond(response);
        }
    };
    let config = &shared.config;
    let (authorize, token) = (
        config.authorize_path.normalized(),
        config.token_path.normalized(),
    );
    if !metadata::endpoints_are(&bytes, authorize, token) {
        // A document for endpoints the layer does not guard (another tenant's, say) must not
        // claim PKCE: clients may then rely on it in place of state.
        tracing::warn!(target: "tower_pkce", "discovery document for other endpoints passed unchanged");
        set_length(&mut parts.headers, bytes.len());
        return Response::from_parts(parts, PkceBody::full(bytes));
    }
    let Some(rewritten) = metadata::rewrite(&bytes, shared.config.methods()) else {
        tracing::warn!(target: "tower_pkce", "discovery document is not a JSON object; passed unchanged");
        set_length(&mut parts.headers, bytes.len());
        return Response::from_parts(parts, PkceBody::full(bytes));
    };
    set_length(&mut parts.headers, rewritten.len());
    parts.headers.remove(header::ETAG);
    Response::from_parts(parts, PkceBody::full(Bytes::from(rewritten)))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::Frame;

    use super::*;

    /// A body that yields the given frames (or an error) in turn.
    struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn data(chunk: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))
    }

    async fn read(
        frames: Vec<Result<Frame<Bytes>, BoxError>>,
        limit: usize,
    ) -> Result<Bytes, Reason> {
        read_body(&HeaderMap::new(), Frames(frames.into()), limit).await
    }

    #[tokio::test]
    async fn a_body_is_read_whole_whatever_its_chunks() {
        // One chunk is kept as it came, not copied.
        let chunk = "grant_type=authorization_code&code=c";
        let read_one = read(vec![data(chunk)], 1024).await;
        assert_eq!(
            read_one.as_deref().ok().map(<[u8]>::as_ptr),
            Some(chunk.as_ptr())
        );

        // Several chunks, empty ones and trailers among them, are joined in order.
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("t"));
        let frames = vec![
            data(""),
            data("grant_type="),
            Ok(Frame::trailers(trailers)),
            data(""),
            data("authorization_code"),
            data("&code=c"),
        ];
        assert_eq!(
            read(frames, 1024).await.as_deref(),
            Ok(&b"grant_type=authorization_code&code=c"[..])
        );
        assert_eq!(read(vec![], 1024).await.as_deref(), Ok(&b""[..]));
        assert_eq!(
            read(vec![data(""), data("")], 1024).await.as_deref(),
            Ok(&b""[..])
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_failing_is_refused() {
        let over = vec![data("0123456789"), data("0123456789")];
        assert_eq!(read(over, 15).await, Err(Reason::BodyTooLarge));
        let failing = vec![data("grant_type="), Err(BoxError::from("reset"))];
        assert_eq!(read(failing, 1024).await, Err(Reason::UnreadableBody));
    }

    #[test]
    fn minted_handles_have_the_handle_shape_and_differ() {
        let (a, b) = (Handle::mint(), Handle::mint());
        assert!(redirect::is_handle(a.as_str().as_bytes()));
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn a_length_is_kept_only_when_it_is_the_one_canonical_length() {
        let length = |values: &[&'static str], chunked: bool| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            if chunked {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            set_length(&mut headers, 12);
            let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
            assert!(!headers.contains_key(header::TRANSFER_ENCODING));
            lengths
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
        };
        // The one canonical length is kept as it was (the same value, not a rewritten one).
        let sent = "12";
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static(sent));
        set_length(&mut headers, 12);
        let kept = headers
            .get(header::CONTENT_LENGTH)
            .map(|v| v.as_bytes().as_ptr());
        assert_eq!(kept, Some(sent.as_ptr()));
        assert_eq!(length(&["12"], false), ["12"]);
        assert_eq!(length(&[], false), ["12"]);
        assert_eq!(length(&["012"], false), ["12"]);
        assert_eq!(length(&["+12"], false), ["12"]);
        assert_eq!(length(&["13"], false), ["12"]);
        assert_eq!(length(&["12", "12"], false), ["12"]);
        assert_eq!(length(&["12"], true), ["12"]);
        assert!(is_canonical_length(b"0", 0));
        assert!(!is_canonical_length(b"00", 0));
        assert!(!is_canonical_length(b"", 0));
    }
}
