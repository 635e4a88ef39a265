//! The token endpoint. A request is read completely, checked against the decision table
//! (DESIGN.md), and the request sent upstream is rebuilt from what was read: the canonical
//! path, the allowed query parameters, a freshly encoded form body and the headers an
//! authorization server needs (DESIGN.md, "Forward only what was verified"). What the layer
//! cannot read completely is refused.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::response::finish_response;
use super::{
    allow, log, plainly_framed, read_body, refuse, respond, set_length, store_reason,
    with_path_and_query,
};
use crate::body::PkceBody;
use crate::layer::{Mode, Shared};
use crate::metrics::{Outcome, Pass};
use crate::oauth::error::{self, Reason};
use crate::oauth::form;
use crate::oauth::token::{self, BodyFormat};
use crate::pkce::{CodeVerifier, PkceError};
use crate::store::{CodeBinding, CodeRecord, CodeState, StoreKey};
use crate::BoxError;

const EP: &str = "token";

/// A redemption the layer let through, to undo if the upstream issues no token.
pub(super) struct Redemption {
    code: StoreKey,
    client: String,
}

/// What the decision sees of the request's `code_verifier`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Verifier<'a> {
    Absent,
    Malformed,
    /// Well-formed; whether it matches is the decision's to find out.
    Present(&'a CodeVerifier),
}

impl<'a> Verifier<'a> {
    /// The request's `code_verifier`, parsed.
    pub(crate) fn of(parsed: Option<&'a Result<CodeVerifier, PkceError>>) -> Self {
        match parsed {
            None => Self::Absent,
            Some(Err(_)) => Self::Malformed,
            Some(Ok(verifier)) => Self::Present(verifier),
        }
    }
}

/// What a token request for `grant_type=authorization_code` brings to the decision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenRequest<'a> {
    /// The client, by body or HTTP Basic; `None` when the request names none.
    pub(crate) client: Option<&'a token::ClientName>,
    pub(crate) verifier: Verifier<'a>,
}

/// The configuration a token decision depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenPolicy {
    /// The requesting client is exempt from PKCE (by the strict, RFC 6749 reading of its
    /// name).
    pub(crate) exempt: bool,
    /// Refusals count towards burning a code: enforce mode. Under report mode the request is
    /// forwarded, so nothing is counted.
    pub(crate) count_failures: bool,
}

/// The token decision table (DESIGN.md) as data: what to do with the request and the code's
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenDecision<'a> {
    /// Forward, after turning the known code redeemed; undone for `client` if the upstream
    /// issues no token.
    Redeem { pass: Pass, client: &'a str },
    /// Forward a code the layer does not know, recording it redeemed for (exempt) `client`.
    RecordRedemption { pass: Pass, client: &'a str },
    /// Refuse; `counts` when the refusal is a failed attempt on a live bound code.
    Refuse { reason: Reason, counts: bool },
}

/// The token decision table (DESIGN.md), pure: `record` is the code's record, `None` for a
/// code the store does not know.
pub(crate) fn decide_token<'a>(
    record: Option<&'a CodeRecord>,
    request: &TokenRequest<'a>,
    policy: TokenPolicy,
) -> TokenDecision<'a> {
    let refuse = |reason| TokenDecision::Refuse {
        reason,
        counts: false,
    };
    let Some(record) = record else {
        // Unknown: refused, except for an exempt client redeeming without a verifier (its
        // codes may predate the layer).
        return match (request.verifier, request.client) {
            (Verifier::Absent, Some(client)) if policy.exempt => TokenDecision::RecordRedemption {
                pass: Pass::ExemptUnknownCode,
                client: &client.name,
            },
            _ => refuse(Reason::UnknownCode),
        };
    };
    match record.state() {
        CodeState::Live => {}
        CodeState::Redeemed => return refuse(Reason::CodeReused),
        CodeState::Burned => return refuse(Reason::CodeBurned),
    }
    let binding = record.binding();
    let right_client = request.client.map(|c| c.is(binding.client_id()));
    let verdict = match (right_client, binding.challenge(), request.verifier) {
        (None, _, _) => Err(Reason::MissingClient),
        (Some(false), _, _) => Err(Reason::WrongClient),
        (Some(true), Some(_), Verifier::Absent) => Err(Reason::VerifierRequired),
        (Some(true), Some(_), Verifier::Malformed) => Err(Reason::MalformedVerifier),
        (Some(true), Some(challenge), Verifier::Present(v)) if challenge.verify(v) => {
            Ok(Pass::Verified)
        }
        (Some(true), Some(_), Verifier::Present(_)) => Err(Reason::VerifierMismatch),
        (Some(true), None, Verifier::Absent) => Ok(Pass::UnboundRedeemed),
        (Some(true), None, _) => Err(Reason::Downgrade),
    };
    match verdict {
        Ok(pass) => TokenDecision::Redeem {
            pass,
            client: binding.client_id(),
        },
        Err(reason) => TokenDecision::Refuse {
            reason,
            counts: binding.challenge().is_some() && policy.count_failures,
        },
    }
}

/// Applies the decision table to a token request for `grant_type=authorization_code`, and
/// its effects on the store.
async fn apply_token(
    shared: &Shared,
    code: StoreKey,
    request: &TokenRequest<'_>,
) -> Result<(Pass, Redemption), Reason> {
    let config = &shared.config;
    let store = &shared.store;
    let record = store.code(code).await.map_err(|e| store_reason(&e))?;
    let policy = TokenPolicy {
        exempt: request.client.is_some_and(|c| config.is_exempt(&c.name)),
        count_failures: config.mode == Mode::Enforce,
    };
    match decide_token(record.as_ref(), request, policy) {
        TokenDecision::Redeem { pass, client } => match store.redeem(code).await {
            Ok(true) => Ok((
                pass,
                Redemption {
                    code,
                    client: client.to_owned(),
                },
            )),
            // Another request redeemed it between our read and now.
            Ok(false) => Err(Reason::CodeReused),
            Err(e) => Err(store_reason(&e)),
        },
        TokenDecision::RecordRedemption { pass, client } => {
            let binding = CodeBinding::new(None, client);
            match store
                .record_redemption(code, binding, config.code_ttl)
                .await
            {
                Ok(true) => Ok((
                    pass,
                    Redemption {
                        code,
                        client: client.to_owned(),
                    },
                )),
                Ok(false) => Err(Reason::CodeReused),
                Err(e) => Err(store_reason(&e)),
            }
        }
        TokenDecision::Refuse { reason, counts } => {
            if counts {
                match store.record_failure(code, config.max_failed_attempts).await {
                    Ok(Some(CodeState::Burned)) => log(
                        EP,
                        request.client.map(|c| c.name.as_str()),
                        Outcome::Refused,
                        "code_burned_now",
                        Some(&code),
                    ),
                    Ok(_) => {}
                    Err(e) => return Err(store_reason(&e)),
                }
            }
            Err(reason)
        }
    }
}

/// Gives a code back to its bound state when the upstream issued no token for it.
async fn undo_redemption(shared: &Shared, redemption: &Redemption) {
    match shared.store.unredeem(redemption.code).await {
        Ok(true) => allow(
            shared,
            EP,
            Some(&redemption.client),
            Pass::ReturnedToBound,
            Some(&redemption.code),
        ),
        // Burned or expired meanwhile: nothing to give back.
        Ok(false) => {}
        Err(e) => {
            // The code stays redeemed: fail closed.
            store_reason(&e);
        }
    }
}

pub(super) async fn token_request<S, ReqBody, ResBody>(
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
    let (req, redemption) = match token_forward(&shared, req).await {
        Ok(forward) => forward,
        Err(refusal) => return Ok(respond(refusal)),
    };
    // On a transport error the code stays redeemed: the upstream may have issued a token.
    let response = inner.call(req).await?;
    if let Some(r) = &redemption {
        if !response.status().is_success() {
            undo_redemption(&shared, r).await;
        }
    }
    Ok(finish_response(&shared, response, false).await)
}

/// A token request that passed: what to forward, and what to log.
struct Checked {
    pass: Pass,
    query: Vec<u8>,
    form: Vec<u8>,
    redemption: Option<Redemption>,
    client: Option<String>,
    code: Option<StoreKey>,
}

type TokenRefusal = (Reason, Option<String>, Option<StoreKey>);

/// Checks a token request and makes the request to forward, with the redemption to undo if
/// the upstream issues no token. `Err` is the refusal to answer with.
async fn token_forward<ReqBody>(
    shared: &Shared,
    req: Request<ReqBody>,
) -> Result<(Request<PkceBody<ReqBody>>, Option<Redemption>), Response<Bytes>>
where
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let bytes = match read_body(&parts.headers, body, shared.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(reason) => {
            // The body is gone: even report mode cannot forward it.
            refuse(shared, EP, None, reason, None);
            return Err(error::json(reason));
        }
    };
    if parts.method == Method::OPTIONS {
        // A CORS preflight: no body, and only the headers that ask the question.
        allow(shared, EP, None, Pass::Preflight, None);
        let bare = Rebuilt {
            path: shared.config.token_path.written(),
            query: b"",
            form: None,
            preflight: true,
        };
        return rebuild(shared, parts, bare)
            .map(|req| (req, None))
            .ok_or_else(|| error::json(Reason::UnbuildableRequest));
    }
    match check_token(shared, &parts, &bytes).await {
        Ok(checked) => {
            let client = checked.client.as_deref();
            allow(shared, EP, client, checked.pass, checked.code.as_ref());
            let rebuilt = Rebuilt {
                path: shared.config.token_path.written(),
                query: &checked.query,
                form: Some(checked.form),
                preflight: false,
            };
            let req = rebuild(shared, parts, rebuilt)
                .ok_or_else(|| error::json(Reason::UnbuildableRequest))?;
            Ok((req, checked.redemption))
        }
        Err((reason, client, code)) => {
            if !refuse(shared, EP, client.as_deref(), reason, code.as_ref()) {
                return Err(error::json(reason));
            }
            // Report mode: forwarded as it came, which is what report mode is for.
            set_length(&mut parts.headers, bytes.len());
            Ok((Request::from_parts(parts, PkceBody::full(bytes)), None))
        }
    }
}

/// Reads and checks a token request. The request is read completely or refused: its method,
/// query string, content type and every parameter.
async fn check_token(
    shared: &Shared,
    parts: &Parts,
    bytes: &Bytes,
) -> Result<Checked, TokenRefusal> {
    let plain = |reason: Reason| (reason, None, None);
    if parts.method != Method::POST {
        return Err(plain(Reason::PostOnly));
    }
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let query = form::forward_query(query, &shared.config.token_query_params).map_err(plain)?;
    if !plainly_framed(&parts.headers) {
        return Err(plain(Reason::UnsupportedContentType));
    }
    let json_form;
    let form: &[u8] =
        match token::body_format(parts.headers.get(header::CONTENT_TYPE)).map_err(plain)? {
            BodyFormat::Form => bytes,
            BodyFormat::Json => {
                json_form = token::json_to_form(bytes).map_err(plain)?;
                &json_form
            }
        };
    let mut params = token::parse_form(form).map_err(plain)?;
    let form = std::mem::take(&mut params.forward);
    let mut authorizations = parts.headers.get_all(header::AUTHORIZATION).iter();
    let authorization = match (authorizations.next(), authorizations.next()) {
        (Some(_), Some(_)) => return Err(plain(Reason::MultipleClientAuth)),
        (one, _) => one,
    };
    if !params.authorization_code {
        return Ok(Checked {
            pass: Pass::OtherGrant,
            query,
            form,
            redemption: None,
            client: params.client_id.map(String::from),
            code: None,
        });
    }
    let basic = match authorization {
        Some(value) => token::basic_client_id(value).map_err(plain)?,
        None => None,
    };
    let identity = token::client_identity(&params, basic).map_err(plain)?;
    let client = identity.as_ref().map(|c| c.name.clone());
    let Some(code) = params.code.as_deref().map(StoreKey::for_code) else {
        return Err((Reason::MissingCode, client, None));
    };
    let verifier = params.verifier.as_deref().map(CodeVerifier::parse);
    let request = TokenRequest {
        client: identity.as_ref(),
        verifier: Verifier::of(verifier.as_ref()),
    };
    match apply_token(shared, code, &request).await {
        Ok((pass, redemption)) => Ok(Checked {
            pass,
            query,
            form,
            redemption: Some(redemption),
            client,
            code: Some(code),
        }),
        Err(reason) => Err((reason, client, Some(code))),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request headers an authorization server needs at its token endpoint: the host, the
/// client's authentication, content negotiation, `Origin` (so the server can answer a browser
/// with its CORS headers), and the forwarding headers pkce-proxy sets itself. Everything else
/// (cookies, routing headers, other spellings of forwarding headers) stays behind.
static TOKEN_HEADERS: [HeaderName; 9] = [
    header::HOST,
    header::AUTHORIZATION,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::USER_AGENT,
    header::ORIGIN,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// What a CORS preflight asks, besides [`TOKEN_HEADERS`].
static PREFLIGHT_HEADERS: [HeaderName; 2] = [
    header::ACCESS_CONTROL_REQUEST_METHOD,
    header::ACCESS_CONTROL_REQUEST_HEADERS,
];

/// Leaves only the headers to forward: [`TOKEN_HEADERS`], the operator's `extra`, and for a
/// preflight [`PREFLIGHT_HEADERS`].
pub(super) fn keep_forwarded_headers(
    headers: &mut HeaderMap,
    extra: &[HeaderName],
    preflight: bool,
) {
    let allowed = |name: &HeaderName| {
        TOKEN_HEADERS.contains(name)
            || extra.contains(name)
            || (preflight && PREFLIGHT_HEADERS.contains(name))
    };
    // In place, one name at a time: a new map of this size allocated more than glibc's
    // per-thread cache holds, a malloc_consolidate per flow (benches/flow_instructions.sh).
    while let Some(name) = headers.keys().find(|n| !allowed(n)).cloned() {
        headers.remove(&name);
    }
}

/// What a rebuilt request carries besides its method, version and extensions (the client's).
pub(super) struct Rebuilt<'a> {
    /// The endpoint's path as configured.
    pub(super) path: &'a str,
    /// The query string, already encoded; empty for none.
    pub(super) query: &'a [u8],
    /// The form body, already encoded; `None` for a bodiless request (a preflight).
    pub(super) form: Option<Vec<u8>>,
    /// Whether the CORS preflight headers are kept.
    pub(super) preflight: bool,
}

/// The request to forward to an endpoint whose requests the layer reads completely (token,
/// PAR): its path as configured with the given query, the form as its body with its exact
/// length, and the allowed headers only. `None` only for a target that is no valid URI, which
/// the written paths are made not to be: callers fail closed all the same.
pub(super) fn rebuild<ReqBody>(
    shared: &Shared,
    mut parts: Parts,
    rebuilt: Rebuilt<'_>,
) -> Option<Request<PkceBody<ReqBody>>> {
    let Rebuilt {
        path,
        query,
        form,
        preflight,
    } = rebuilt;
    // A request already on the canonical target (most) keeps its URI: no new one to allocate.
    // Saves ~800 instructions (1.3 %) and 2 mallocs per flow: benches/flow_instructions.sh,
    // issue 16.
    let same =
        parts.uri.path() == path && parts.uri.query().unwrap_or_default().as_bytes() == query;
    if !same {
        let mut target = Vec::with_capacity(path.len() + 1 + query.len());
        target.extend_from_slice(path.as_bytes());
        if !query.is_empty() {
            target.push(b'?');
            target.extend_from_slice(query);
        }
        parts.uri = with_path_and_query(std::mem::take(&mut parts.uri), target)?;
    }
    keep_forwarded_headers(
        &mut parts.headers,
        &shared.config.token_forward_headers,
        preflight,
    );
    let body = match form {
        Some(form) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(form.len()));
            Bytes::from(form)
        }
        None => Bytes::new(),
    };
    Some(Request::from_parts(parts, PkceBody::full(body)))
}

#[cfg(test)]
mod tests;
