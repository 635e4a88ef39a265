//! Why a request was refused, and the responses that say so: RFC 6749 §5.2 JSON bodies, a short
//! HTML page for browsers, and error redirects to a configured redirect URI.

use std::fmt;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::indexed::indexed_enum;

indexed_enum! {
/// Why the layer refused (or, in [`Mode::Report`](crate::Mode::Report), would have refused) a
/// request.
///
/// Every response the layer makes itself carries its `Reason` in the response extensions, so
/// an application or a test can tell the layer's answers from the upstream's:
///
/// ```
/// # use tower_pkce::Reason;
/// # let response = http::Response::new(());
/// if let Some(reason) = response.extensions().get::<Reason>() {
///     println!("refused by tower-pkce: {reason}");
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// A parameter was sent more than once (RFC 6749 §3.1).
    DuplicateParameter,
    /// An authorization request parameter was sent in both the query and the body.
    ParameterInQueryAndBody,
    /// A parameter the layer must read is not valid UTF-8, or a token request parameter is
    /// spelled or separated in a way servers read differently.
    MalformedParameter,
    /// A `state`, `redirect_uri` or `client_id` longer than the layer keeps.
    ParameterTooLong,
    /// The body's content type cannot be read (forms, and JSON at the token endpoint, can).
    UnsupportedContentType,
    /// The body could not be read, or did not parse.
    UnreadableBody,
    /// The body is larger than the configured limit.
    BodyTooLarge,
    /// The body stopped arriving: reading it failed with an [`std::io::Error`] of kind
    /// [`TimedOut`](std::io::ErrorKind::TimedOut), as `pkce-proxy`'s request bodies do when a
    /// client stalls.
    BodyTimeout,
    /// An authorization request without `client_id`.
    MissingClientId,
    /// An authorization request without `code_challenge` from a client that is not exempt.
    ChallengeRequired,
    /// `code_challenge_method` without `code_challenge`.
    MethodWithoutChallenge,
    /// A `code_challenge_method` that is not allowed (`plain` unless enabled, or unknown).
    UnsupportedMethod,
    /// A `code_challenge` that is not valid for its method.
    MalformedChallenge,
    /// `state` names another client's authorization in progress with different parameters.
    HandleMismatch,
    /// A `request` or `request_uri` parameter, whose challenge the layer cannot read.
    RequestObject,
    /// A `request_uri` the layer did not see pushed (PAR), or that expired.
    UnknownRequestUri,
    /// An authorization request by `request_uri` whose client, or PKCE parameters, differ
    /// from the pushed request's.
    PushedRequestMismatch,
    /// OAuth parameters in the token request's query string.
    ParametersInQuery,
    /// A token request for `authorization_code` without `code`.
    MissingCode,
    /// More than one client authentication method in one request (RFC 6749 §2.3).
    MultipleClientAuth,
    /// `client_id` in the body differs from the HTTP Basic user.
    ClientIdMismatch,
    /// An `Authorization: Basic` header that does not decode.
    MalformedBasic,
    /// A token request that identifies no client.
    MissingClient,
    /// A bound code redeemed without `code_verifier`.
    VerifierRequired,
    /// A `code_verifier` that is not 43–128 characters of `[A-Za-z0-9-._~]`.
    MalformedVerifier,
    /// The `code_verifier` does not match the recorded challenge.
    VerifierMismatch,
    /// A `code_verifier` for a code issued without a challenge: the PKCE downgrade attack
    /// (RFC 9700 §4.8.2).
    Downgrade,
    /// A code that was already redeemed.
    CodeReused,
    /// A code burned after too many failed attempts.
    CodeBurned,
    /// A code the layer never bound (or whose binding expired), from a client that is not
    /// exempt.
    UnknownCode,
    /// A code redeemed by a client other than the one it was issued to.
    WrongClient,
    /// The store is at capacity.
    StoreFull,
    /// The store failed (its backend: a connection, a protocol, corrupt data).
    StoreUnavailable,
    /// A token request without `grant_type` (an empty body included): the layer forwards
    /// only what it read completely.
    MissingGrantType,
    /// `code` or `code_verifier` in a token request of another grant type.
    GrantMismatch,
    /// A request to the token or PAR endpoint with a method other than `POST` (or, at the
    /// token endpoint, an `OPTIONS` preflight).
    PostOnly,
    /// A token or pushed authorization request with more parameters than any real one has.
    TooManyParameters,
    /// A path that some server would route to an OAuth endpoint but that is not that
    /// endpoint's path: a suffix after it (`/token/x`, `/token.php/x`), or non-ASCII
    /// characters that fold onto it (`/to\u{212A}en`).
    EndpointLookalike,
    /// A freshly minted correlation handle was already taken in the store: 128 random bits
    /// collided, or the random source failed. Retrying mints another.
    HandleCollision,
    /// The upstream redirected with a code the layer already has a record of (bound,
    /// redeemed, or burned): it is not guessed which flow owns it.
    DuplicateCode,
    /// The `Location` with the client's own `state` put back is not a valid header value.
    InvalidRestoredLocation,
    /// The upstream's answer to a pushed authorization request could not be read for its
    /// `request_uri` (a failed or oversized body, not JSON, or no `request_uri`).
    UpstreamParUnreadable,
    /// The upstream answered a pushed authorization request with a `request_uri` the layer
    /// already remembers for another pushed request.
    DuplicateRequestUri,
    /// The pending flow of a pushed authorization request expired or was evicted before the
    /// upstream answered it.
    PushedFlowGone,
    /// The request to forward could not be built (its target is not a valid URI).
    UnbuildableRequest,
    /// A request was taken for an endpoint the configuration does not have.
    UnconfiguredEndpoint,
}
}

impl Reason {
    /// A short, stable, snake_case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.info().0
    }

    /// The OAuth error code sent to the client.
    pub fn error_code(self) -> &'static str {
        self.info().1
    }

    /// The human-readable `error_description` sent to the client. It never contains request
    /// data.
    pub fn description(self) -> &'static str {
        self.info().2
    }

    /// The HTTP status of the response.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MalformedBasic => StatusCode::UNAUTHORIZED,
            Self::StoreFull
            | Self::StoreUnavailable
            | Self::HandleCollision
            | Self::PushedFlowGone => StatusCode::SERVICE_UNAVAILABLE,
            Self::DuplicateCode | Self::UpstreamParUnreadable | Self::DuplicateRequestUri => {
                StatusCode::BAD_GATEWAY
            }
            Self::InvalidRestoredLocation
            | Self::UnbuildableRequest
            | Self::UnconfiguredEndpoint => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn info(self) -> (&'static str, &'static str, &'static str) {
        const REQ: &str = "invalid_request";
        const GRANT: &str = "invalid_grant";
        const UNAVAILABLE: &str = "temporarily_unavailable";
        const SERVER: &str = "server_error";
        match self {
            Self::DuplicateParameter => (
                "duplicate_parameter",
                REQ,
                "a parameter was sent more than once",
            ),
            Self::ParameterInQueryAndBody => (
                "parameter_in_query_and_body",
                REQ,
                "a parameter was sent in both the query string and the body",
            ),
            Self::MalformedParameter => ("malformed_parameter", REQ, "a parameter is malformed"),
            Self::ParameterTooLong => (
                "parameter_too_long",
                REQ,
                "state, redirect_uri or client_id is too long",
            ),
            Self::UnsupportedContentType => (
                "unsupported_content_type",
                REQ,
                "the request body must be application/x-www-form-urlencoded",
            ),
            Self::UnreadableBody => ("unreadable_body", REQ, "the request body could not be read"),
            Self::BodyTooLarge => ("body_too_large", REQ, "the request body is too large"),
            Self::BodyTimeout => (
                "body_timeout",
                REQ,
                "the request body was not received in time",
            ),
            Self::MissingClientId => ("missing_client_id", REQ, "client_id is required"),
            Self::ChallengeRequired => (
                "challenge_required",
                REQ,
                "code_challenge is required (PKCE, RFC 7636)",
            ),
            Self::MethodWithoutChallenge => (
                "method_without_challenge",
                REQ,
                "code_challenge_method was sent without code_challenge",
            ),
            Self::UnsupportedMethod => (
                "unsupported_method",
                REQ,
                "code_challenge_method is not supported; use S256",
            ),
            Self::MalformedChallenge => (
                "malformed_challenge",
                REQ,
                "code_challenge is malformed; S256 needs 43 characters of base64url",
            ),
            Self::HandleMismatch => (
                "handle_mismatch",
                REQ,
                "state belongs to another authorization request",
            ),
            Self::RequestObject => (
                "request_object",
                REQ,
                "request and request_uri are not supported; send code_challenge as a parameter",
            ),
            Self::UnknownRequestUri => (
                "unknown_request_uri",
                "invalid_request_uri",
                "request_uri is unknown or expired; push the authorization request again",
            ),
            Self::PushedRequestMismatch => (
                "pushed_request_mismatch",
                REQ,
                "the parameters differ from the pushed authorization request's",
            ),
            Self::ParametersInQuery => (
                "parameters_in_query",
                REQ,
                "parameters must be sent in the body, not the query string",
            ),
            Self::MissingCode => ("missing_code", REQ, "code is required"),
            Self::MultipleClientAuth => (
                "multiple_client_auth",
                REQ,
                "more than one client authentication method was used",
            ),
            Self::ClientIdMismatch => (
                "client_id_mismatch",
                REQ,
                "client_id differs from the client authenticated by HTTP Basic",
            ),
            Self::MalformedBasic => (
                "malformed_basic",
                "invalid_client",
                "the Authorization header is not valid HTTP Basic",
            ),
            Self::MissingClient => (
                "missing_client",
                REQ,
                "the client must be identified by client_id or HTTP Basic",
            ),
            Self::VerifierRequired => ("verifier_required", GRANT, "code_verifier is required"),
            Self::MalformedVerifier => (
                "malformed_verifier",
                GRANT,
                "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]",
            ),
            Self::VerifierMismatch => (
                "verifier_mismatch",
                GRANT,
                "code_verifier does not match the code_challenge",
            ),
            Self::Downgrade => (
                "downgrade",
                GRANT,
                "code_verifier was sent for a code issued without code_challenge",
            ),
            Self::CodeReused => (
                "code_reused",
                GRANT,
                "the authorization code was already used",
            ),
            Self::CodeBurned => (
                "code_burned",
                GRANT,
                "the authorization code was revoked after too many failed attempts",
            ),
            Self::UnknownCode => (
                "unknown_code",
                GRANT,
                "the authorization code is invalid or expired",
            ),
            Self::WrongClient => (
                "wrong_client",
                GRANT,
                "the authorization code was issued to another client",
            ),
            Self::StoreFull => (
                "store_full",
                UNAVAILABLE,
                "the server is busy; try again later",
            ),
            Self::StoreUnavailable => (
                "store_unavailable",
                UNAVAILABLE,
                "the server is temporarily unavailable; try again later",
            ),
            Self::MissingGrantType => ("missing_grant_type", REQ, "grant_type is required"),
            Self::GrantMismatch => (
                "grant_mismatch",
                REQ,
                "code and code_verifier belong to grant_type=authorization_code only",
            ),
            Self::PostOnly => ("post_only", REQ, "this endpoint accepts POST requests only"),
            Self::TooManyParameters => ("too_many_parameters", REQ, "too many parameters"),
            Self::EndpointLookalike => (
                "endpoint_lookalike",
                REQ,
                "the path is not an endpoint's path but could be read as one",
            ),
            Self::HandleCollision => (
                "handle_collision",
                UNAVAILABLE,
                "the server is temporarily unavailable; try again later",
            ),
            Self::DuplicateCode => (
                "duplicate_code",
                SERVER,
                "the authorization server issued an authorization code twice",
            ),
            Self::InvalidRestoredLocation => (
                "invalid_restored_location",
                SERVER,
                "the authorization response could not be delivered",
            ),
            Self::UpstreamParUnreadable => (
                "upstream_par_unreadable",
                UNAVAILABLE,
                "the authorization server's answer could not be read; try again later",
            ),
            Self::DuplicateRequestUri => (
                "duplicate_request_uri",
                SERVER,
                "the authorization server issued a request_uri twice",
            ),
            Self::PushedFlowGone => (
                "pushed_flow_gone",
                UNAVAILABLE,
                "the pushed authorization request expired; push it again",
            ),
            Self::UnbuildableRequest => (
                "unbuildable_request",
                SERVER,
                "the request could not be forwarded",
            ),
            Self::UnconfiguredEndpoint => (
                "unconfigured_endpoint",
                SERVER,
                "the endpoint is not configured",
            ),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: &str = "1";

fn json_escape(s: &str) -> String {
    // Descriptions are our own static strings, but escaping keeps the body valid whatever they
    // become.
    serde_json::Value::from(s).to_string()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn finish(reason: Reason, mut response: Response<Bytes>) -> Response<Bytes> {
    *response.status_mut() = reason.status();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if reason.error_code() == "temporarily_unavailable" {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if reason.status() == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"token\""),
        );
    }
    response.extensions_mut().insert(reason);
    response
}

/// The RFC 6749 §5.2 JSON error response.
pub(crate) fn json(reason: Reason) -> Response<Bytes> {
    let body = format!(
        "{{\"error\":{},\"error_description\":{}}}",
        json_escape(reason.error_code()),
        json_escape(reason.description())
    );
    let mut response = Response::new(Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    finish(reason, response)
}

/// A short HTML page, for a browser that asked for one.
pub(crate) fn html(reason: Reason) -> Response<Bytes> {
    let title = match reason.error_code() {
        "temporarily_unavailable" => "Temporarily unavailable",
        "server_error" => "Server error",
        _ => "Invalid authorization request",
    };
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{}</p><p><code>{}</code></p></body></html>\n",
        html_escape(reason.description()),
        html_escape(reason.error_code()),
    );
    let mut response = Response::new(Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    finish(reason, response)
}

/// A 302 that delivers the error to the client's (configured, verified) redirect URI, in the
/// query or, for response types that default to it, the fragment (RFC 6749 §4.1.2.1).
pub(crate) fn redirect(
    reason: Reason,
    redirect_uri: &str,
    state: Option<&str>,
    in_fragment: bool,
) -> Option<Response<Bytes>> {
    let mut params = form_urlencoded::Serializer::new(String::new());
    params.append_pair("error", reason.error_code());
    params.append_pair("error_description", reason.description());
    if let Some(state) = state {
        params.append_pair("state", state);
    }
    let params = params.finish();
    // A redirect URI must not have a fragment (RFC 6749 §3.1.2); drop one if configured.
    let base = redirect_uri.split('#').next().unwrap_or(redirect_uri);
    let location = if in_fragment {
        format!("{base}#{params}")
    } else {
        let sep = if !base.contains('?') {
            "?"
        } else if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        };
        format!("{base}{sep}{params}")
    };
    let location = HeaderValue::from_str(&location).ok()?;
    let mut response = Response::new(Bytes::new());
    response.headers_mut().insert(header::LOCATION, location);
    let mut response = finish(reason, response);
    *response.status_mut() = StatusCode::FOUND;
    Some(response)
}

/// Whether the client prefers an HTML page to JSON, judged by `Accept` q-values.
pub(crate) fn prefers_html(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut html, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/json" => json = json.max(q),
            "*/*" | "application/*" => json = json.max(q * 0.99),
            "text/*" => html = html.max(q * 0.99),
            _ => {}
        }
    }
    html > 0.0 && html > json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_name_and_an_oauth_code() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert!(matches!(
                reason.error_code(),
                "invalid_request"
                    | "invalid_grant"
                    | "invalid_client"
                    | "temporarily_unavailable"
                    | "invalid_request_uri"
                    | "server_error"
            ));
            // RFC 6749 §5.2: error_description uses %x20-21 / %x23-5B / %x5D-7E only.
            assert!(
                reason
                    .description()
                    .bytes()
                    .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e)),
                "{reason}"
            );
        }
    }

    /// Fails to compile when a variant is added without a name: an exhaustive match.
    #[test]
    fn every_reason_is_listed_once_at_its_index() {
        let listed = |reason: Reason| match reason {
            Reason::DuplicateParameter
            | Reason::ParameterInQueryAndBody
            | Reason::MalformedParameter
            | Reason::ParameterTooLong
            | Reason::UnsupportedContentType
            | Reason::UnreadableBody
            | Reason::BodyTooLarge
            | Reason::BodyTimeout
            | Reason::MissingClientId
            | Reason::ChallengeRequired
            | Reason::MethodWithoutChallenge
            | Reason::UnsupportedMethod
            | Reason::MalformedChallenge
            | Reason::HandleMismatch
            | Reason::RequestObject
            | Reason::UnknownRequestUri
            | Reason::PushedRequestMismatch
            | Reason::ParametersInQuery
            | Reason::MissingCode
            | Reason::MultipleClientAuth
            | Reason::ClientIdMismatch
            | Reason::MalformedBasic
            | Reason::MissingClient
            | Reason::VerifierRequired
            | Reason::MalformedVerifier
            | Reason::VerifierMismatch
            | Reason::Downgrade
            | Reason::CodeReused
            | Reason::CodeBurned
            | Reason::UnknownCode
            | Reason::WrongClient
            | Reason::StoreFull
            | Reason::StoreUnavailable
            | Reason::MissingGrantType
            | Reason::GrantMismatch
            | Reason::PostOnly
            | Reason::TooManyParameters
            | Reason::EndpointLookalike
            | Reason::HandleCollision
            | Reason::DuplicateCode
            | Reason::InvalidRestoredLocation
            | Reason::UpstreamParUnreadable
            | Reason::DuplicateRequestUri
            | Reason::PushedFlowGone
            | Reason::UnbuildableRequest
            | Reason::UnconfiguredEndpoint => Reason::ALL.iter().filter(|r| **r == reason).count(),
        };
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}");
            assert_eq!(listed(*reason), 1, "{reason}");
        }
        // The arms above, counted: fails when a variant is added without its arm here.
        assert_eq!(Reason::ALL.len(), 46);
    }

    #[test]
    fn internal_faults_are_not_store_failures() {
        for reason in [
            Reason::HandleCollision,
            Reason::PushedFlowGone,
            Reason::UpstreamParUnreadable,
        ] {
            let response = json(reason);
            assert_eq!(reason.error_code(), "temporarily_unavailable", "{reason}");
            assert_eq!(response.headers()[header::RETRY_AFTER], "1", "{reason}");
        }
        assert_eq!(Reason::UpstreamParUnreadable.status(), 502);
        for reason in [
            Reason::DuplicateCode,
            Reason::DuplicateRequestUri,
            Reason::InvalidRestoredLocation,
            Reason::UnbuildableRequest,
            Reason::UnconfiguredEndpoint,
        ] {
            let response = json(reason);
            assert_eq!(reason.error_code(), "server_error", "{reason}");
            assert!(response.status().is_server_error(), "{reason}");
            assert!(!response.headers().contains_key(header::RETRY_AFTER));
        }
        let page = html(Reason::DuplicateCode);
        assert!(std::str::from_utf8(page.body())
            .unwrap()
            .contains("Server error"));
    }

    #[test]
    fn json_error_follows_rfc6749() {
        let response = json(Reason::VerifierMismatch);
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[header::PRAGMA], "no-cache");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(
            body["error_description"],
            Reason::VerifierMismatch.description()
        );
        assert_eq!(
            response.extensions().get::<Reason>(),
            Some(&Reason::VerifierMismatch)
        );

        let busy = json(Reason::StoreFull);
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let basic = json(Reason::MalformedBasic);
        assert_eq!(basic.status(), 401);
        assert!(basic.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(json(Reason::BodyTooLarge).status(), 413);
    }

    #[test]
    fn html_error_page() {
        let response = html(Reason::ChallengeRequired);
        assert_eq!(response.status(), 400);
        assert!(response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let body = std::str::from_utf8(response.body()).unwrap();
        assert!(body.contains("invalid_request"));
    }

    #[test]
    fn error_redirects_carry_exact_state() {
        let cases = [
            (
                "https://c.example/cb",
                Some("a b&c"),
                false,
                "https://c.example/cb?error=invalid_request&error_description=",
            ),
            (
                "https://c.example/cb?x=1",
                None,
                false,
                "https://c.example/cb?x=1&error=invalid_request",
            ),
            (
                "https://c.example/cb",
                Some("s"),
                true,
                "https://c.example/cb#error=invalid_request",
            ),
        ];
        for (uri, state, fragment, prefix) in cases {
            let response = redirect(Reason::ChallengeRequired, uri, state, fragment).unwrap();
            assert_eq!(response.status(), 302);
            let location = response.headers()[header::LOCATION].to_str().unwrap();
            assert!(location.starts_with(prefix), "{location}");
            let component = if fragment {
                location.split_once('#').unwrap().1
            } else {
                location.split_once('?').unwrap().1
            };
            let got: Vec<(String, String)> = form_urlencoded::parse(component.as_bytes())
                .into_owned()
                .filter(|(k, _)| k == "state")
                .collect();
            match state {
                Some(state) => assert_eq!(got, vec![("state".into(), state.into())]),
                None => assert!(got.is_empty(), "{location}"),
            }
        }
    }

    #[test]
    fn accept_negotiation() {
        let cases = [
            (None, false),
            (Some("application/json"), false),
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                true,
            ),
            (Some("*/*"), false),
            (Some("text/html;q=0.5, application/json"), false),
            (Some("application/json;q=0.1, text/html"), true),
            (Some("text/html;q=0"), false),
        ];
        for (accept, expected) in cases {
            let value = accept.map(HeaderValue::from_static);
            assert_eq!(prefers_html(value.as_ref()), expected, "{accept:?}");
        }
    }
}
