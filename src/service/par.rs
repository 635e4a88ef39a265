//! The pushed authorization request endpoint (RFC 9126): a pushed request is checked like an
//! authorization request, its state swapped for a handle in the body, and the `request_uri`
//! of the upstream's 201 remembered for the authorization request that follows.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt as _, Limited};
use tower_service::Service;

use super::authorize::{decide_parsed, pushed_key, Forward};
use super::response::finish_response;
use super::{
    is_form_or_untyped, plainly_framed, read_body, refuse, respond, set_length, store_reason, token,
};
use crate::body::PkceBody;
use crate::layer::Shared;
use crate::oauth::authorize::{self, Part};
use crate::oauth::error::{self, Reason};
use crate::oauth::form;
use crate::store::{PendingFlow, StoreKey};
use crate::BoxError;

const MAX_PAR_RESPONSE_BYTES: usize = 16 * 1024;

/// A pushed authorization request (RFC 9126): checked like an authorization request, its
/// state swapped for a handle in the body, and the `request_uri` of a 201 remembered.
pub(super) async fn par_request<S, ReqBody, ResBody>(
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
            (Forward::Unchanged, params.unwrap_or_default())
        }
    };
    // What is pushed upstream is rebuilt from what was read, as at the token endpoint: the
    // endpoint's path, the allowed headers, and the body encoded afresh.
    let pushed = match &decision {
        Forward::Wrapped(handle) => {
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
            if let Forward::Wrapped(handle) = &decision {
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
        return Ok(respond(error::json(Reason::UnconfiguredEndpoint)));
    };
    let rebuilt = token::Rebuilt {
        path: par_path.written(),
        query: b"",
        form: Some(pushed),
        preflight: false,
    };
    let Some(req) = token::rebuild(&shared, parts, rebuilt) else {
        return Ok(respond(error::json(Reason::UnbuildableRequest)));
    };
    let Forward::Wrapped(handle) = decision else {
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
            return Ok(respond(error::json(Reason::UpstreamParUnreadable)));
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
                    .and_then(|created| created.then_some(()).ok_or(Reason::DuplicateRequestUri)),
                Ok(None) => Err(Reason::PushedFlowGone),
                Err(e) => Err(store_reason(&e)),
            }
        }
        None => {
            tracing::warn!(target: "tower_pkce", "a pushed authorization response without request_uri");
            Err(Reason::UpstreamParUnreadable)
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
