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
use crate::pkce::CodeChallenge;
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

/// The configuration an authorization decision depends on, for the request's client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AuthorizePolicy {
    /// The client is exempt from PKCE.
    pub(crate) exempt: bool,
    /// `plain` challenges are allowed.
    pub(crate) allow_plain: bool,
    /// A PAR endpoint is configured, so a `request_uri` may name a pushed request.
    pub(crate) par: bool,
}

/// Where an authorization request's decision goes next: the checks that need no store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'p> {
    /// Decided without the store.
    Decided(AuthorizeDecision),
    /// Decided by the pushed request this `request_uri` names ([`decide_request_uri`]).
    RequestUri(&'p str),
    /// Decided by the live flow the request's `state` may be the handle of
    /// ([`decide_authorize`]).
    ByState,
}

/// What to do with an authorization (or pushed) request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthorizeDecision {
    /// Not a code flow: forwarded as it came, nothing recorded.
    PassThrough,
    /// Forwarded as it came, for this reason (a re-entry, an exempt request object).
    Forward(Pass),
    /// A new flow with this challenge (`None`: an exempt client's, unbound) is recorded under
    /// a fresh handle, which replaces the client's state.
    Record(Option<CodeChallenge>),
}

/// The checks of an authorization request that need no store: the client, lengths, and
/// request objects. `pushed` for a pushed request (RFC 9126), which never refers to another.
pub(crate) fn route_authorize<'p>(
    params: &'p AuthorizeParams<'_>,
    pushed: bool,
    policy: AuthorizePolicy,
) -> Result<Route<'p>, Reason> {
    // Not a code flow, unless a request object or a request by reference may make it one
    // (its response_type is inside).
    if !params.wants_code && !params.request_object {
        return Ok(Route::ByState);
    }
    let Some(client_id) = params.client_id.as_deref() else {
        return Err(Reason::MissingClientId);
    };
    let too_long = client_id.len() > MAX_CLIENT_ID_LEN
        || params.redirect_uri.as_deref().map_or(0, str::len) > MAX_REDIRECT_URI_LEN
        || params.state.as_deref().map_or(0, str::len) > MAX_STATE_LEN;
    if too_long {
        return Err(Reason::ParameterTooLong);
    }
    if !pushed && policy.par && !params.request {
        if let Some(uri) = params.request_uri.as_deref() {
            return Ok(Route::RequestUri(uri));
        }
    }
    if params.request_object {
        if policy.exempt {
            return Ok(Route::Decided(AuthorizeDecision::Forward(
                Pass::ExemptRequestObject,
            )));
        }
        return Err(Reason::RequestObject);
    }
    Ok(Route::ByState)
}

/// The decision on a request routed [`Route::ByState`], given the live flow whose handle its
/// `state` is (`None`: no such flow).
///
/// A request re-entering a live flow (a login page or consent form posting back to the
/// authorization endpoint) is forwarded unchanged when it agrees with the flow's record: the
/// same client and redirect URI, each present or absent alike, and the same challenge or
/// none at all (a consent form written before PKCE posts back without the challenge fields,
/// or with them empty: the code stays bound to the recorded challenge). Anything else reusing
/// a live handle is an attempt on someone else's flow, and so is a pushed request or a
/// request that is no code flow.
pub(crate) fn decide_authorize(
    params: &AuthorizeParams<'_>,
    pushed: bool,
    policy: AuthorizePolicy,
    live: Option<&PendingFlow>,
) -> Result<AuthorizeDecision, Reason> {
    if !params.wants_code && !params.request_object {
        // Only a matching code-flow request may use a live flow's handle (else it would end
        // the flow and be handed the flow's own state).
        return match live {
            None => Ok(AuthorizeDecision::PassThrough),
            Some(_) => Err(Reason::HandleMismatch),
        };
    }
    let Some(flow) = live else {
        let challenge = authorize::check_pkce(params, policy.allow_plain, policy.exempt)?;
        return Ok(AuthorizeDecision::Record(challenge));
    };
    if pushed {
        // A pushed request never re-enters a flow: its state is the client's own.
        return Err(Reason::HandleMismatch);
    }
    let same_challenge = match params.challenge {
        // Omitted (an empty value is absent): whatever the method says, nothing to compare.
        None => true,
        Some(_) => {
            authorize::check_pkce(params, policy.allow_plain, false)?.as_ref() == flow.challenge()
        }
    };
    let same = same_challenge
        && params.client_id.as_deref() == Some(flow.client_id())
        && params.redirect_uri.as_deref() == flow.redirect_uri();
    if same {
        Ok(AuthorizeDecision::Forward(Pass::Reentry))
    } else {
        Err(Reason::HandleMismatch)
    }
}

/// The decision on a request by `request_uri` ([`Route::RequestUri`]), given the pushed
/// request's record (`None`: unknown or expired) and whether the pushed flow is still live.
/// The flow comes from the pushed request only: the client must be the one that pushed it,
/// and PKCE parameters in the request, if any, must be the pushed ones.
pub(crate) fn decide_request_uri(
    params: &AuthorizeParams<'_>,
    policy: AuthorizePolicy,
    pushed: Option<&PendingFlow>,
    live: bool,
) -> Result<AuthorizeDecision, Reason> {
    let Some(pushed) = pushed else {
        if policy.exempt {
            // An exempt client's request object (pushed as JAR, or hosted by the client).
            return Ok(AuthorizeDecision::Forward(Pass::ExemptRequestObject));
        }
        return Err(Reason::UnknownRequestUri);
    };
    if params.client_id.as_deref() != Some(pushed.client_id()) {
        return Err(Reason::PushedRequestMismatch);
    }
    if !live {
        // The pushed flow delivered its code, or expired: the request_uri is spent.
        return Err(Reason::UnknownRequestUri);
    }
    if params.challenge.is_some() || params.method.is_some() {
        let challenge = authorize::check_pkce(params, policy.allow_plain, false)?;
        if challenge.as_ref() != pushed.challenge() {
            return Err(Reason::PushedRequestMismatch);
        }
    }
    Ok(AuthorizeDecision::Forward(Pass::Reentry))
}

/// What is forwarded for an authorization request that passed.
pub(super) enum Forward {
    /// The request as it came.
    Unchanged,
    /// The request with the client's state replaced by this handle.
    Wrapped(Handle),
}

/// Decides an authorization (or pushed) request and applies the decision's effects: the store
/// lookups it needs, the flow it records, the log and metric.
async fn apply_authorize(
    shared: &Shared,
    params: &AuthorizeParams<'_>,
    pushed: bool,
) -> Result<Forward, Reason> {
    const EP: &str = "authorize";
    let config = &shared.config;
    let client = params.client_id.as_deref();
    let policy = AuthorizePolicy {
        exempt: client.is_some_and(|c| config.is_exempt(c)),
        allow_plain: config.allow_plain,
        par: config.par_path.is_some(),
    };
    let form_post = params.response_mode.as_deref() == Some("form_post");
    let decision = match route_authorize(params, pushed, policy)? {
        Route::Decided(decision) => decision,
        Route::RequestUri(uri) => by_request_uri(shared, params, policy, uri).await?,
        Route::ByState => {
            let live = live_flow(shared, params).await?;
            let decision = decide_authorize(params, pushed, policy, live.as_ref())?;
            if form_post && decision == AuthorizeDecision::Forward(Pass::Reentry) {
                shared.form_post.open(config.pending_ttl);
            }
            decision
        }
    };
    let challenge = match decision {
        AuthorizeDecision::PassThrough => return Ok(Forward::Unchanged),
        AuthorizeDecision::Forward(pass) => {
            allow(shared, EP, client, pass, None);
            return Ok(Forward::Unchanged);
        }
        AuthorizeDecision::Record(challenge) => challenge,
    };
    let pass = if challenge.is_some() {
        Pass::FlowRecorded
    } else {
        Pass::UnboundFlowRecorded
    };
    let handle = Handle::mint();
    let created = shared.store.create_new_flow(
        StoreKey::for_handle(handle.as_str()),
        challenge,
        client.unwrap_or_default(),
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
    if form_post {
        // The code comes back in an HTML page: read pages while this flow may be pending.
        shared.form_post.open(config.pending_ttl);
    }
    allow(shared, EP, client, pass, None);
    Ok(Forward::Wrapped(handle))
}

/// The decision on a parsed authorization (or pushed) request; a refusal keeps the parameters
/// it could read, for the error response.
pub(super) async fn decide_parsed<'a>(
    shared: &Shared,
    parsed: Result<AuthorizeParams<'a>, Reason>,
    pushed: bool,
) -> Result<(Forward, AuthorizeParams<'a>), (Reason, Option<AuthorizeParams<'a>>)> {
    let params = parsed.map_err(|reason| (reason, None))?;
    match apply_authorize(shared, &params, pushed).await {
        Ok(forward) => Ok((forward, params)),
        Err(reason) => Err((reason, Some(params))),
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

/// Looks up what [`decide_request_uri`] needs: the pushed request's record and whether its
/// flow is live. The record's `state` is the handle of the pushed flow.
async fn by_request_uri(
    shared: &Shared,
    params: &AuthorizeParams<'_>,
    policy: AuthorizePolicy,
    request_uri: &str,
) -> Result<AuthorizeDecision, Reason> {
    let store = &shared.store;
    let record = store
        .flow(pushed_key(request_uri))
        .await
        .map_err(|e| store_reason(&e))?;
    // Looked up only for the client that pushed it: the decision reads it only then.
    let handle = record
        .as_ref()
        .filter(|p| params.client_id.as_deref() == Some(p.client_id()))
        .and_then(PendingFlow::state);
    let live = match handle {
        Some(handle) => store
            .flow(StoreKey::for_handle(handle))
            .await
            .map_err(|e| store_reason(&e))?
            .is_some(),
        None => false,
    };
    if live {
        // The pushed request may have asked for form_post, and this replica may not have
        // seen it.
        shared.form_post.open(shared.config.pending_ttl);
    }
    decide_request_uri(params, policy, record.as_ref(), live)
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
    let req = match authorize_forward(&shared, req).await {
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
    let (forward, params) = match decide_parsed(shared, parsed, false).await {
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
            (Forward::Unchanged, params.unwrap_or_default())
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
    if let Forward::Wrapped(handle) = forward {
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

#[cfg(test)]
mod tests;
