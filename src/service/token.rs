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
use crate::pkce::CodeVerifier;
use crate::store::{CodeBinding, CodeState, StoreKey};
use crate::BoxError;

const EP: &str = "token";

/// A redemption the layer let through, to undo if the upstream issues no token.
pub(super) struct Redemption {
    code: StoreKey,
    client: String,
}

/// What a verifier check sees of the request's `code_verifier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verifier {
    Absent,
    Malformed,
    /// Well-formed; whether it matches is the decision's to find out.
    Present,
}

/// The token decision table (DESIGN.md), for a code the store knows, as a pure function:
/// `Ok(pass)` to forward, `Err(reason)` to refuse.
///
/// `matches` says whether the verifier matches the recorded challenge; it is asked only for a
/// bound code with a well-formed verifier from the right client.
pub(crate) fn decide_known(
    state: CodeState,
    bound: bool,
    right_client: Option<bool>,
    verifier: Verifier,
    matches: impl FnOnce() -> bool,
) -> Result<Pass, Reason> {
    match state {
        CodeState::Live => {}
        CodeState::Redeemed => return Err(Reason::CodeReused),
        _ => return Err(Reason::CodeBurned),
    }
    match (right_client, bound, verifier) {
        (None, _, _) => Err(Reason::MissingClient),
        (Some(false), _, _) => Err(Reason::WrongClient),
        (Some(true), true, Verifier::Absent) => Err(Reason::VerifierRequired),
        (Some(true), true, Verifier::Malformed) => Err(Reason::MalformedVerifier),
        (Some(true), true, Verifier::Present) if matches() => Ok(Pass::Verified),
        (Some(true), true, Verifier::Present) => Err(Reason::VerifierMismatch),
        (Some(true), false, Verifier::Absent) => Ok(Pass::UnboundRedeemed),
        (Some(true), false, _) => Err(Reason::Downgrade),
    }
}

/// The decision for a code the store does not know: refused, except for an exempt client
/// redeeming without a verifier (its codes may predate the layer).
pub(crate) fn decide_unknown(exempt_client: bool, verifier: Verifier) -> Result<Pass, Reason> {
    match (verifier, exempt_client) {
        (Verifier::Absent, true) => Ok(Pass::ExemptUnknownCode),
        _ => Err(Reason::UnknownCode),
    }
}

/// Applies the decision table to a token request for `grant_type=authorization_code`, and
/// its effects on the store.
async fn decide_token(
    shared: &Shared,
    code: StoreKey,
    client: Option<&token::ClientName>,
    verifier: Option<&Result<CodeVerifier, ()>>,
) -> Result<(Pass, Redemption), Reason> {
    let config = &shared.config;
    let store = &shared.store;
    let seen = match verifier {
        None => Verifier::Absent,
        Some(Err(())) => Verifier::Malformed,
        Some(Ok(_)) => Verifier::Present,
    };
    let record = store.code(code).await.map_err(|e| store_reason(&e))?;
    let Some(record) = record else {
        // Exemption goes by the strict (RFC 6749) reading only.
        let exempt = client
            .map(|c| c.name.as_str())
            .filter(|c| config.is_exempt(c));
        let pass = decide_unknown(exempt.is_some(), seen)?;
        let client = exempt.unwrap_or_default();
        let binding = CodeBinding::new(None, client);
        return match store
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
        };
    };
    let binding = record.binding();
    let challenge = binding.challenge();
    let decided = decide_known(
        record.state(),
        challenge.is_some(),
        client.map(|c| c.is(binding.client_id())),
        seen,
        || match (challenge, verifier) {
            (Some(challenge), Some(Ok(v))) => challenge.verify(v),
            _ => false,
        },
    );
    let pass = match decided {
        Ok(pass) => pass,
        Err(reason) => {
            // A refused attempt on a live bound code counts towards burning it; under report
            // mode the request is forwarded, so nothing is counted.
            let counts = challenge.is_some()
                && record.state() == CodeState::Live
                && config.mode == Mode::Enforce;
            if counts {
                match store.record_failure(code, config.max_failed_attempts).await {
                    Ok(Some(CodeState::Burned)) => log(
                        EP,
                        client.map(|c| c.name.as_str()),
                        Outcome::Refused,
                        "code_burned_now",
                        Some(&code),
                    ),
                    Ok(_) => {}
                    Err(e) => return Err(store_reason(&e)),
                }
            }
            return Err(reason);
        }
    };
    match store.redeem(code).await {
        Ok(true) => Ok((
            pass,
            Redemption {
                code,
                client: binding.client_id().to_owned(),
            },
        )),
        // Another request redeemed it between our read and now.
        Ok(false) => Err(Reason::CodeReused),
        Err(e) => Err(store_reason(&e)),
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
    // As for authorization requests: the checks in a boxed future of their own.
    let (req, redemption) = match Box::pin(token_forward(&shared, req)).await {
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
    match Box::pin(check_token(shared, &parts, &bytes)).await {
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
    let verifier = params
        .verifier
        .as_deref()
        .map(|v| CodeVerifier::parse(v).map_err(|_| ()));
    match decide_token(shared, code, identity.as_ref(), verifier.as_ref()).await {
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
mod tests {
    use super::*;

    /// Every cell of DESIGN.md's token decision table, for codes the store knows.
    #[test]
    fn the_decision_table() {
        use CodeState::{Burned, Live, Redeemed};
        use Verifier::{Absent, Malformed, Present};
        let table: &[(
            CodeState,
            bool,
            Option<bool>,
            Verifier,
            bool,
            Result<Pass, Reason>,
        )] = &[
            // bound
            (Live, true, Some(true), Present, true, Ok(Pass::Verified)),
            (
                Live,
                true,
                Some(true),
                Present,
                false,
                Err(Reason::VerifierMismatch),
            ),
            (
                Live,
                true,
                Some(true),
                Malformed,
                false,
                Err(Reason::MalformedVerifier),
            ),
            (
                Live,
                true,
                Some(true),
                Absent,
                false,
                Err(Reason::VerifierRequired),
            ),
            (
                Live,
                true,
                Some(false),
                Present,
                true,
                Err(Reason::WrongClient),
            ),
            (Live, true, None, Present, true, Err(Reason::MissingClient)),
            // unbound
            (
                Live,
                false,
                Some(true),
                Present,
                true,
                Err(Reason::Downgrade),
            ),
            (
                Live,
                false,
                Some(true),
                Malformed,
                false,
                Err(Reason::Downgrade),
            ),
            (
                Live,
                false,
                Some(true),
                Absent,
                false,
                Ok(Pass::UnboundRedeemed),
            ),
            (
                Live,
                false,
                Some(false),
                Absent,
                false,
                Err(Reason::WrongClient),
            ),
            // redeemed and burned, with or without a verifier
            (
                Redeemed,
                true,
                Some(true),
                Present,
                true,
                Err(Reason::CodeReused),
            ),
            (
                Redeemed,
                false,
                Some(true),
                Absent,
                false,
                Err(Reason::CodeReused),
            ),
            (
                Burned,
                true,
                Some(true),
                Present,
                true,
                Err(Reason::CodeBurned),
            ),
        ];
        for &(state, bound, client, verifier, matches, expected) in table {
            let got = decide_known(state, bound, client, verifier, || matches);
            assert_eq!(
                got, expected,
                "{state:?} bound={bound} client={client:?} {verifier:?} matches={matches}"
            );
        }
    }

    #[test]
    fn unknown_codes_fail_closed_unless_exempt_without_verifier() {
        assert_eq!(
            decide_unknown(true, Verifier::Absent),
            Ok(Pass::ExemptUnknownCode)
        );
        assert_eq!(
            decide_unknown(false, Verifier::Absent),
            Err(Reason::UnknownCode)
        );
        assert_eq!(
            decide_unknown(true, Verifier::Present),
            Err(Reason::UnknownCode)
        );
        assert_eq!(
            decide_unknown(true, Verifier::Malformed),
            Err(Reason::UnknownCode)
        );
    }

    #[test]
    fn only_the_allowed_headers_are_forwarded() {
        let mut from = HeaderMap::new();
        for (name, value) in [
            ("host", "as.example"),
            ("authorization", "Basic YTpi"),
            ("cookie", "code=stolen"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "1.2.3.4"),
            ("script-name", "/x"),
            ("origin", "https://app.example"),
            ("dpop", "proof"),
            ("content-type", "text/plain"),
            ("access-control-request-method", "POST"),
        ] {
            from.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        fn names(headers: &HeaderMap) -> Vec<&str> {
            let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            names
        }
        let mut plain = from.clone();
        keep_forwarded_headers(&mut plain, &[], false);
        assert_eq!(
            names(&plain),
            ["authorization", "host", "origin", "x-forwarded-for"]
        );
        let extra = [HeaderName::from_static("dpop")];
        let mut with_extra = from.clone();
        keep_forwarded_headers(&mut with_extra, &extra, true);
        assert_eq!(
            names(&with_extra),
            [
                "access-control-request-method",
                "authorization",
                "dpop",
                "host",
                "origin",
                "x-forwarded-for"
            ]
        );
    }
}
