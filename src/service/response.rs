//! Responses: the capture of authorization responses that carry one of the layer's handles
//! (redirects and form_post pages), which binds their code and puts the client's own state
//! back, and the rewriting of discovery documents.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::Response;
use http_body::Body;
use http_body_util::{BodyExt as _, Limited};

use super::{allow, content_length, refuse, respond, set_length, store_reason};
use crate::body::PkceBody;
use crate::layer::Shared;
use crate::metrics::Pass;
use crate::oauth::error::{self, Reason};
use crate::oauth::{form_post, metadata, redirect};
use crate::store::{PendingFlow, StoreKey};
use crate::BoxError;

/// The largest discovery document the layer rewrites; larger ones pass unchanged.
const MAX_METADATA_BYTES: usize = 1024 * 1024;

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

/// The most of a rewritten redirect's body that is read (and dropped) to free its connection.
const REDIRECT_BODY_LIMIT: usize = 64 * 1024;

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
        return rewrite_metadata(shared, response).await;
    }
    if is_html_page(&response) {
        return capture_form_post(shared, response).await;
    }
    let mut response = response;
    match capture_redirect(shared, response.headers_mut()).await {
        Ok(false) => response.map(PkceBody::new),
        Ok(true) => {
            // The body of a redirect may repeat its target, handle and all ("You are being
            // redirected", as Rails writes): the client never sees a handle, so it goes.
            let (mut parts, body) = response.into_parts();
            // Read to its end first: an upstream connection whose response is left unread
            // cannot be reused (pkce-proxy opened one per flow: BENCHMARKS.md, issue 16).
            let _ = Limited::new(body, REDIRECT_BODY_LIMIT).collect().await;
            parts.headers.remove(header::CONTENT_TYPE);
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            Response::from_parts(parts, PkceBody::full(Bytes::new()))
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
        Err(_) => Err(Reason::InvalidRestoredLocation),
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

/// What an authorization response carrying one of the layer's handles does to its flow.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settle<'c> {
    /// No such flow (not one of ours, or expired): the response passes unchanged. A code in
    /// it is unknown to the layer, so it fails closed at the token endpoint.
    NotOurs,
    /// The response goes elsewhere than the flow's redirect URI: some other response of the
    /// upstream's (an open redirector, say) echoing a handle. The flow is put back untouched
    /// rather than a code someone else chose bound to another user's flow; the response
    /// passes unchanged.
    PutBack,
    /// The code is bound to the flow's challenge and client; the client's state goes back.
    Bind(&'c [u8]),
    /// An error response: the flow ends, the client's state goes back.
    Release,
    /// Neither code nor error: the client's state goes back.
    Restore,
}

/// The decision on an authorization response that carries a handle as its state and goes to
/// `target` (a redirect's `Location`, a form_post page's `action`), given the flow taken for
/// that handle and the client's configured redirect URIs.
pub(crate) fn decide_settle<'c>(
    flow: Option<&PendingFlow>,
    target: &str,
    registered: &[Box<str>],
    code: Option<&'c [u8]>,
    error: bool,
) -> Settle<'c> {
    let Some(flow) = flow else {
        return Settle::NotOurs;
    };
    if !redirect::targets(target, flow.redirect_uri(), registered) {
        return Settle::PutBack;
    }
    match (code, error) {
        (Some(code), _) => Settle::Bind(code),
        (None, true) => Settle::Release,
        (None, false) => Settle::Restore,
    }
}

/// Takes the pending flow of `handle` and applies [`decide_settle`]: binds the code, releases
/// or puts back the flow, and returns the flow so the caller can put the client's own state
/// back. `Ok(None)` when the response passes unchanged.
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
        Ok(flow) => flow,
        Err(e) => {
            let reason = store_reason(&e);
            if refuse(shared, EP, None, reason, None) {
                return Ok(None);
            }
            return Err(reason);
        }
    };
    let registered = flow
        .as_ref()
        .and_then(|f| shared.config.redirect_uris.get(f.client_id()))
        .map_or(&[][..], Vec::as_slice);
    let settle = decide_settle(flow.as_ref(), target, registered, code, error);
    let Some(flow) = flow else {
        return Ok(None);
    };
    let client = Some(flow.client_id());
    match settle {
        Settle::NotOurs => return Ok(None),
        Settle::PutBack => {
            tracing::warn!(target: "tower_pkce", client_id = ?flow.client_id(), "response with a live handle to another URI ignored");
            let ttl = shared.config.pending_ttl;
            return match shared.store.create_flow(handle, flow, ttl).await {
                Ok(_) => Ok(None),
                Err(e) => Err(store_reason(&e)),
            };
        }
        Settle::Bind(code) => {
            let key = StoreKey::for_code(code);
            let bound = shared.store.bind_new_code(
                key,
                flow.challenge(),
                flow.client_id(),
                shared.config.code_ttl,
            );
            let outcome = match bound.await {
                Ok(true) => Ok(()),
                // The upstream issued a code it issued before: refuse to guess which flow
                // owns it.
                Ok(false) => Err(Reason::DuplicateCode),
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
        }
        Settle::Release => allow(shared, EP, client, Pass::ErrorReleased, None),
        Settle::Restore => {}
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
    use super::*;

    const REDIRECT: &str = "https://app.example/cb";

    /// Every case of a response carrying a handle: whose flow, where it goes, what it carries.
    #[test]
    fn a_response_settles_only_its_own_flow_at_its_redirect_uri() {
        let with_uri = PendingFlow::new(None, "app", Some(REDIRECT), Some("s"));
        let without_uri = PendingFlow::new(None, "app", None, None);
        let registered: [Box<str>; 1] = [REDIRECT.into()];
        let at = "https://app.example/cb?code=c&state=h";
        let elsewhere = "https://evil.example/cb?code=c&state=h";
        let code: Option<&[u8]> = Some(b"c");
        let cases: &[(
            Option<&PendingFlow>,
            &str,
            &[Box<str>],
            Option<&[u8]>,
            bool,
            Settle<'_>,
        )] = &[
            (None, at, &[], code, false, Settle::NotOurs),
            (None, at, &[], None, true, Settle::NotOurs),
            (Some(&with_uri), at, &[], code, false, Settle::Bind(b"c")),
            (Some(&with_uri), at, &[], code, true, Settle::Bind(b"c")),
            (Some(&with_uri), at, &[], None, true, Settle::Release),
            (Some(&with_uri), at, &[], None, false, Settle::Restore),
            // The request's redirect_uri wins over the configured ones.
            (
                Some(&with_uri),
                elsewhere,
                &registered,
                code,
                false,
                Settle::PutBack,
            ),
            (Some(&with_uri), elsewhere, &[], None, true, Settle::PutBack),
            // Without one: a configured redirect URI, else any absolute URI.
            (
                Some(&without_uri),
                at,
                &registered,
                code,
                false,
                Settle::Bind(b"c"),
            ),
            (
                Some(&without_uri),
                elsewhere,
                &registered,
                code,
                false,
                Settle::PutBack,
            ),
            (
                Some(&without_uri),
                elsewhere,
                &[],
                code,
                false,
                Settle::Bind(b"c"),
            ),
            (
                Some(&without_uri),
                "/login?state=h",
                &[],
                code,
                false,
                Settle::PutBack,
            ),
        ];
        for (i, (flow, target, registered, code, error, expected)) in cases.iter().enumerate() {
            let got = decide_settle(*flow, target, registered, *code, *error);
            assert_eq!(&got, expected, "case {i}: {target} error={error}");
        }
    }
}
