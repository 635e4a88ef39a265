//! [`Pkce`], the tower `Service`: routes a request by endpoint, and holds what the endpoints
//! share (decision traces, request bodies, handles). Each endpoint's module keeps its decision
//! pure and synchronous (`decide_*`), apart from its effects on the store.

use std::task::{Context, Poll};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use rand::RngCore as _;
use tower_service::Service;

use crate::body::PkceBody;
use crate::future::ResponseFuture;
use crate::layer::{Mode, PkceLayer, Shared};
use crate::metrics::{Outcome, Pass};
use crate::oauth::error::{self, Reason};
use crate::oauth::token::{body_format, BodyFormat};
use crate::oauth::{metadata, path, redirect};
use crate::store::{StoreError, StoreKey};
use crate::BoxError;

mod authorize;
mod par;
mod response;
mod token;

pub(crate) use response::{finish_response, needs_attention};

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
        self.call_classified(req).1
    }
}

impl<S> Pkce<S> {
    /// [`Service::call`], and the endpoint the layer took the request for: a caller that
    /// labels its own metrics by endpoint (pkce-proxy) need not classify the path again.
    pub fn call_classified<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> (Endpoint, ResponseFuture<S::Future, ResBody, S::Error>)
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
        let endpoint = classify(&self.layer.shared, req.uri().path());
        (endpoint, self.call_for(req, endpoint))
    }

    /// [`Service::call`] for a request already classified: `endpoint` must be `classify` of
    /// the request's path.
    fn call_for<ReqBody, ResBody>(
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
                    Endpoint::Par => Box::pin(par::par_request(shared, inner, req)),
                    _ => Box::pin(authorize::authorize_request(shared, inner, req)),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traces of decisions

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
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
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
    // The exact length saves ~2 200 instructions (3.8 %) and 1 malloc per flow over a growing
    // `Vec`: benches/flow_instructions.sh, issue 16.
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
    fn a_buffered_body_has_its_one_length_and_no_other_framing() {
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
        assert_eq!(length(&["12"], false), ["12"]);
        assert_eq!(length(&[], false), ["12"]);
        assert_eq!(length(&["012"], false), ["12"]);
        assert_eq!(length(&["+12"], false), ["12"]);
        assert_eq!(length(&["13"], false), ["12"]);
        assert_eq!(length(&["12", "12"], false), ["12"]);
        assert_eq!(length(&["12"], true), ["12"]);
    }
}
