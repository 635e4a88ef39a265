//! The authorization endpoint: checks a request's PKCE parameters, records the flow under a
//! handle the layer mints in place of the client's `state`, and lets re-entries of a live
//! flow through unchanged (DESIGN.md, "Correlation").

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::response::finish_response;
use super::{
    allow, is_form_or_untyped, path_and_query, plainly_framed, read_body, refuse, respond,
    set_length, store_reason, with_path_and_query, Handle,
};
use crate::body::PkceBody;
use crate::layer::Shared;
use crate::metrics::Pass;
use crate::oauth::authorize::{self, AuthorizeParams, Part};
use crate::oauth::error::{self, Reason};
use crate::oauth::redirect;
use crate::store::{PendingFlow, StoreKey};
use crate::BoxError;

/// Longest values a pending flow keeps, so an entry stays small whatever is sent: at most
/// about 3.3 KiB of strings per flow.
const MAX_CLIENT_ID_LEN: usize = 256;
const MAX_REDIRECT_URI_LEN: usize = 2048;
const MAX_STATE_LEN: usize = 1024;

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

pub(super) enum AuthorizeDecision {
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
        Ok(false) => return Err(Reason::HandleCollision),
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
pub(super) async fn decide_parsed<'a>(
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
pub(super) fn pushed_key(request_uri: &str) -> StoreKey {
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

pub(super) async fn authorize_request<S, ReqBody, ResBody>(
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
                    Reason::UnbuildableRequest,
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
