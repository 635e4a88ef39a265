//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API and
//! not covered by semver).
//!
//! Each function feeds arbitrary input to one of the layer's private parsers and asserts, with
//! `assert!`, the properties the layer relies on: a fuzzer reports a failed assertion as a
//! crash, just as it reports a panic inside the parser itself.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::borrow::Cow;

use http::HeaderValue;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::oauth::authorize::{self, AuthorizeParams, Part};
use crate::oauth::token::{self, TokenParams};
use crate::oauth::{form, form_post, json, metadata, params, path, redirect};

/// A handle of the shape the layer mints.
const HANDLE: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// Everything of an authorization request the layer reads, except where `state` is.
fn same_request(a: &AuthorizeParams<'_>, b: &AuthorizeParams<'_>) -> bool {
    a.wants_code == b.wants_code
        && a.hybrid == b.hybrid
        && a.client_id == b.client_id
        && a.redirect_uri == b.redirect_uri
        && a.challenge == b.challenge
        && a.method == b.method
        && a.response_mode == b.response_mode
        && a.request_object == b.request_object
        && a.request == b.request
        && a.request_uri == b.request_uri
}

/// An authorization request from its query and form body. When it parses, the PKCE policy
/// runs without panicking, a challenge it accepts under the strict policy is S256, and the
/// request with the handle put in place of `state` (as the layer forwards it: in the body,
/// in the query, or in both where identical copies were sent in both) parses again to the
/// same request with only `state` changed.
pub fn authorize(query: &[u8], body: Option<&[u8]>) {
    let Ok(parsed) = authorize::parse(query, body) else {
        return;
    };
    for (allow_plain, exempt) in [(false, false), (true, false), (false, true), (true, true)] {
        if let Ok(Some(challenge)) = authorize::check_pkce(&parsed, allow_plain, exempt) {
            assert!(allow_plain || challenge.method() == crate::ChallengeMethod::S256);
        }
    }
    let _ = authorize::error_in_fragment(&parsed);
    if parsed.state_copy_in_body.is_some() {
        assert!(
            matches!(parsed.state_at, Some((Part::Query, _))),
            "a body copy of a state not in the query"
        );
    }

    // Where the layer puts the handle: the query's pair and the body's identical copy, the
    // body's pair, or a new pair at the end of the query.
    let (query_span, body_span) = match parsed.state_at.clone() {
        Some((Part::Query, span)) => (Some(span), parsed.state_copy_in_body.clone()),
        Some((Part::Body, span)) => (None, Some(span)),
        None => (None, None),
    };
    let query: Cow<'_, [u8]> = match (&query_span, &body_span) {
        (None, Some(_)) => Cow::Borrowed(query),
        _ => Cow::Owned(authorize::put_state(query, query_span, HANDLE)),
    };
    let body: Option<Cow<'_, [u8]>> = match (body, body_span) {
        (Some(body), Some(span)) => {
            Some(Cow::Owned(authorize::put_state(body, Some(span), HANDLE)))
        }
        (body, _) => body.map(Cow::Borrowed),
    };
    let again = authorize::parse(&query, body.as_deref())
        .unwrap_or_else(|_| panic!("the rewritten request no longer parses"));
    assert!(
        same_request(&parsed, &again),
        "the rewrite changed the request"
    );
    assert_eq!(again.state.as_deref(), Some(HANDLE));
    let (part, span) = again.state_at.clone().expect("state is where it was put");
    if let Some((was, _)) = &parsed.state_at {
        assert_eq!(*was, part);
    }
    let pair = format!("state={HANDLE}");
    let input: &[u8] = match part {
        Part::Query => &query,
        Part::Body => body.as_deref().unwrap_or_default(),
    };
    assert_eq!(&input[span], pair.as_bytes());
    assert_eq!(
        again.state_copy_in_body.is_some(),
        parsed.state_copy_in_body.is_some(),
        "a copy of the state appeared or went"
    );
    if let Some(copy) = again.state_copy_in_body {
        assert_eq!(
            &body.as_deref().unwrap_or_default()[copy],
            pair.as_bytes(),
            "the body's copy of the state is not the handle"
        );
    }
}

fn check_token(parsed: &TokenParams<'_>) {
    if parsed.code.is_some() || parsed.verifier.is_some() {
        assert!(
            parsed.authorization_code,
            "a code grant read as another grant"
        );
    }
    if let Some(code) = &parsed.code {
        assert!(!code.is_empty());
    }
}

mod readings;

use readings::*;
pub use readings::{Reading, READINGS};

/// The names an operator could allow in the token endpoint's query string that `input`
/// holds (what the configuration accepts), and two usual ones.
fn allowed_names(input: &[u8]) -> Vec<Box<str>> {
    let mut allowed: Vec<Box<str>> = vec!["api-version".into(), "tenant".into()];
    for (name, _) in strict(input) {
        if form::is_rfc_name(name.as_bytes()) && !form::is_oauth_name(&name) {
            allowed.push(name.into());
        }
    }
    allowed
}

/// A form-encoded token request body (and the same bytes as its query string).
///
/// Parsing never panics, and a body the layer accepts holds to `check_accepted`. Read as a
/// query string with every name in it allowed, the query forwarded holds no decision
/// parameter under any reading in [`READINGS`].
pub fn token_form(body: &[u8]) {
    if let Ok(query) = form::forward_query(body, &allowed_names(body)) {
        for &reading in READINGS {
            reads_as(reading, &query, |_| None);
        }
    }
    if let Ok(parsed) = token::parse_form(body) {
        check_accepted(body, &parsed);
    }
}

/// The properties of a token request body `form` that the layer accepted as `parsed`: a body
/// carrying a code or a verifier is an authorization code grant; the layer read `form` as
/// RFC 6749 does; no server takes the grant for a code grant unless the layer did; and every
/// reading in [`READINGS`] of the body forwarded finds exactly the decision parameters the
/// layer read (`grant_type`, spelled `authorization_code` for a code grant, `code`,
/// `code_verifier`, `client_id`), once each.
fn check_accepted(form: &[u8], parsed: &TokenParams<'_>) {
    check_token(parsed);
    // The layer refuses every name that is not exactly one parameter, so the strict reading
    // of what the client sent finds the grant once.
    let sent = strict(form);
    let grants: Vec<&[u8]> = sent
        .iter()
        .filter(|(n, _)| n == "grant_type")
        .map(|(_, v)| v.as_slice())
        .collect();
    let &[grant] = grants.as_slice() else {
        panic!("a token request accepted without exactly one grant_type");
    };
    assert_eq!(
        folds_to_code_grant(grant),
        parsed.authorization_code,
        "a grant some server reads otherwise: {:?}",
        lossy(grant)
    );
    let ours = |name: &str| -> Option<&[u8]> {
        match name {
            "grant_type" if parsed.authorization_code => Some(b"authorization_code"),
            "grant_type" => Some(grant),
            "code" => parsed.code.as_deref(),
            "code_verifier" => parsed.verifier.as_deref().map(str::as_bytes),
            "client_id" => parsed.client_id.as_deref().map(str::as_bytes),
            _ => None,
        }
    };
    for name in ["code", "code_verifier", "client_id"] {
        let value = sent
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_slice());
        assert_eq!(value, ours(name), "the layer read another {name}");
    }
    for &reading in READINGS {
        reads_as(reading, &parsed.forward, ours);
    }
}

/// A JSON token request body: converted to a form holding exactly the object's scalar
/// members, in order, which then parses like any form body, and holds to `check_accepted`
/// when the layer accepts it.
pub fn token_json(body: &[u8]) {
    let Ok(form) = token::json_to_form(body) else {
        return;
    };
    let text = std::str::from_utf8(body).expect("accepted JSON is UTF-8");
    let members: Vec<(Cow<'_, str>, Value)> = json::members(text).expect("accepted JSON parses");
    let expected: Vec<(String, String)> = members
        .into_iter()
        .filter_map(|(name, value)| {
            let value = match value {
                Value::Null => return None,
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Array(_) | Value::Object(_) => panic!("a structured member was accepted"),
            };
            Some((name.into_owned(), value))
        })
        .collect();
    let read: Vec<(String, String)> = form_urlencoded::parse(&form)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(read, expected, "the form does not say what the JSON said");
    if let Ok(parsed) = token::parse_form(&form) {
        check_accepted(&form, &parsed);
    }
}

/// An `Authorization` header: a Basic user is never empty, and the client identity
/// rules hold for a body with and without a `client_id`.
pub fn basic(header: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return;
    };
    let Ok(user) = token::basic_client_id(&value) else {
        return;
    };
    if let Some(user) = &user {
        assert!(!user.name.is_empty());
    }
    for body in [
        &b"grant_type=authorization_code&code=x"[..],
        b"grant_type=authorization_code&code=x&client_id=app",
        b"grant_type=authorization_code&code=x&client_secret=s",
    ] {
        let params = token::parse_form(body).expect("a plain body");
        match token::client_identity(&params, user.clone()) {
            Ok(Some(found)) => {
                if let (Some(id), Some(_)) = (&params.client_id, &user) {
                    assert_eq!(&found.name, id);
                }
            }
            Ok(None) => assert!(user.is_none() && params.client_id.is_none()),
            Err(_) => assert!(user.is_some() || params.client_secret),
        }
    }
}

/// The component (query or fragment) of `location` that holds byte `at`, as a range.
fn component_of(location: &str, at: usize) -> (usize, usize) {
    let fragment_at = location.find('#');
    match fragment_at {
        Some(f) if at > f => (f + 1, location.len()),
        _ => {
            let end = fragment_at.unwrap_or(location.len());
            let start = location[..end].find('?').map_or(0, |q| q + 1);
            (start, end)
        }
    }
}

type Pairs = Vec<(String, Vec<u8>, Vec<u8>)>;

/// The parameters of a component except `state`: normalized name, value and raw bytes.
fn others(component: &str) -> Pairs {
    params::parse(component.as_bytes())
        .into_iter()
        .filter(|p| !p.is("state"))
        .map(|p| {
            let raw = component.as_bytes()[p.span.clone()].to_vec();
            let name = String::from_utf8_lossy(&p.name).into_owned();
            (name, p.value.into_owned(), raw)
        })
        .collect()
}

/// A `Location` from the upstream, and the client's `state`: when the layer finds an
/// authorization response in it, putting the client's state back leaves the part before the
/// component and the other component byte for byte, keeps every other parameter, and the
/// component then holds exactly the client's state (or none when the client sent none).
pub fn redirect(location: &[u8], state: Option<&str>) {
    let Ok(location) = std::str::from_utf8(location) else {
        return;
    };
    let _ = redirect::may_carry_state(location.as_bytes());
    let Some(found) = redirect::capture(location) else {
        return;
    };
    assert!(redirect::is_handle(found.handle.as_bytes()));
    assert!(found.code.is_some() || found.error);
    let at = found.handle.as_ptr() as usize - location.as_ptr() as usize;
    let (start, end) = component_of(location, at);
    let restored = redirect::restore_state(location, &found, state);

    // Outside the component nothing changes; a component left empty loses its `?` or `#`.
    let (prefix, suffix) = (&location[..start], &location[end..]);
    assert!(
        restored.ends_with(suffix),
        "what follows the component changed"
    );
    let head = &restored[..restored.len() - suffix.len()];
    let component = match head.strip_prefix(prefix) {
        Some(component) => component,
        None => {
            assert!(state.is_none(), "what precedes the component changed");
            assert_eq!(head, &prefix[..prefix.len() - 1]);
            ""
        }
    };
    assert_eq!(
        component.matches('#').count(),
        location[start..end].matches('#').count(),
        "the state escaped its component"
    );
    assert_eq!(
        others(&location[start..end]),
        others(component),
        "another parameter changed"
    );
    let states: Vec<Vec<u8>> = params::parse(component.as_bytes())
        .into_iter()
        .filter(|p| p.is("state"))
        .map(|p| p.value.into_owned())
        .collect();
    match state {
        Some(state) => assert_eq!(states, vec![state.as_bytes().to_vec()]),
        None => assert!(states.is_empty(), "the handle stayed"),
    }
}

/// A discovery document: the rewrite sets `code_challenge_methods_supported` to exactly the
/// given methods and leaves every other member as it was, in order.
pub fn metadata(body: &[u8], path: &str) {
    let _ = metadata::is_document(&path::normalize(path));
    let _ = metadata::endpoints_are(body, "/authorize", "/token");
    let Some(out) = metadata::rewrite(body, &["S256"]) else {
        return;
    };
    let before: Vec<(Cow<'_, str>, &RawValue)> =
        json::members(std::str::from_utf8(body).unwrap()).expect("the input was an object");
    let text = std::str::from_utf8(&out).expect("the rewrite is UTF-8");
    let after: Vec<(Cow<'_, str>, &RawValue)> =
        json::members(text).expect("the rewrite is a JSON object");
    let member = "code_challenge_methods_supported";
    let set: Vec<&str> = after
        .iter()
        .filter(|(n, _)| n == member)
        .map(|(_, v)| v.get())
        .collect();
    assert!(!set.is_empty());
    assert!(set.iter().all(|v| *v == r#"["S256"]"#));
    let keep = |list: &[(Cow<'_, str>, &RawValue)]| -> Vec<(String, String)> {
        list.iter()
            .filter(|(n, _)| n != member)
            .map(|(n, v)| (n.to_string(), v.get().to_owned()))
            .collect()
    };
    assert_eq!(keep(&before), keep(&after), "another member changed");
}

/// A page from the upstream: when the layer reads a form_post response from it, putting the
/// client's state back leaves one `state` input holding exactly that state (none when the
/// client sent none), the same `code` inputs, and everything around the input untouched.
pub fn form_post(html: &[u8], state: Option<&str>) {
    let Ok(html) = std::str::from_utf8(html) else {
        return;
    };
    let Some(found) = form_post::capture(html) else {
        return;
    };
    assert!(redirect::is_handle(found.handle.as_bytes()));
    let restored = form_post::restore_state(html, &found, state);
    let states = form_post::input_values(&restored, "state");
    match state {
        Some(state) => assert_eq!(states, vec![state.to_owned()]),
        None => assert!(states.is_empty(), "the handle stayed"),
    }
    assert_eq!(
        form_post::input_values(html, "code"),
        form_post::input_values(&restored, "code")
    );
}

/// A request path: the allocation-free comparison the layer makes for ordinary paths agrees
/// with the full normalization, for every endpoint path.
pub fn path(raw: &[u8]) {
    let Ok(uri) = http::Uri::try_from(raw) else {
        return;
    };
    let request_path = uri.path();
    let normalized = path::normalize(request_path);
    for target in [
        "/token",
        "/authorize",
        "/oauth2/token",
        "/.well-known/openid-configuration",
    ] {
        assert_eq!(
            path::matches(request_path, target),
            normalized == target,
            "the fast comparison disagrees with normalization"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reading whose row in [`READINGS`] starts with `label`.
    fn reading(label: &str) -> (&'static str, Reading) {
        *READINGS
            .iter()
            .find(|(l, _)| l.starts_with(label))
            .unwrap_or_else(|| panic!("no reading {label}"))
    }

    /// Whether the model would report `form`, forwarded, as a crash.
    fn flagged<'v>(
        reading: (&str, Reading),
        form: &[u8],
        ours: impl Fn(&str) -> Option<&'v [u8]>,
    ) -> bool {
        misread(reading, form, ours).is_some()
    }

    /// Each reading finds a decision parameter where its servers do and the strict reading
    /// does not, so no row of the table is idle.
    #[test]
    fn every_reading_reads_its_own_spellings() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("RFC", "code=c%2Bd", "code", "c+d"),
            ("qs", "[code]=v", "code", "v"),
            ("qs", "code[]=v", "code", "v"),
            ("qs", "code[0]=v", "code", "v"),
            ("qs", "%5Bcode%5D=v", "code", "v"),
            ("PHP", "+code=v", "code", "v"),
            ("PHP", "code%00x=v", "code", "v"),
            ("PHP", "client.id=v", "client_id", "v"),
            ("PHP", "client+id=v", "client_id", "v"),
            ("PHP", "client[id=v", "client_id", "v"),
            ("PHP", "code[x]=v", "code", "v"),
            ("names", "CODE=v", "code", "v"),
            ("names", "cl%C4%B1ent_id=v", "client_id", "v"),
            ("names", "code_ver%C4%B1f%C4%B1er=v", "code_verifier", "v"),
            ("`;`", "x=1;code=v", "code", "v"),
            ("the whole", "x=1%26code%3Dv", "code", "v"),
            ("the whole", "x=%26code%3Dc%2Bd+e", "code", "c+d e"),
            ("ASP.NET", "%u0063ode=v", "code", "v"),
            ("ASP.NET", "Code=%u0076", "code", "v"),
            ("binders", "codeVerifier=v", "code_verifier", "v"),
            ("binders", "Client-Id=v", "client_id", "v"),
            ("binders", "grant.type=v", "grant_type", "v"),
            (
                "decoded to a fixed point, then qs",
                "x=1%2526%255Bcode%255D%253Dv",
                "code",
                "v",
            ),
            (
                "decoded to a fixed point, then qs",
                "x=%26code%5B%5D%3Dv",
                "code",
                "v",
            ),
            (
                "decoded to a fixed point, then PHP",
                "x=%26grant%5Btype%3Dv",
                "grant_type",
                "v",
            ),
            (
                "decoded to a fixed point, then PHP",
                "x=%26code%2500%3Dv",
                "code",
                "v",
            ),
            (
                "decoded to a fixed point, then names",
                "x=%26%25u0063ODE%3Dv",
                "code",
                "v",
            ),
            (
                "decoded to a fixed point, then names",
                "x=%26cl%C4%B1ent_id%3Dv",
                "client_id",
                "v",
            ),
            (
                "decoded to a fixed point, then parsed",
                "x=%26%2Bcode%3Dv",
                "code",
                "v",
            ),
            (
                "decoded to a fixed point, then parsed",
                "x=%26grant%2Btype%3Dv",
                "grant_type",
                "v",
            ),
        ];
        for &(label, form, name, value) in cases {
            let row = reading(label);
            let read = (row.1)(form.as_bytes());
            let key = key(row.1, name);
            assert!(
                read.iter().any(|(n, v)| *n == key && v == value.as_bytes()),
                "{label} reads no {name}={value} in {form}: {read:?}"
            );
            if label != "RFC" {
                assert!(
                    strict(form.as_bytes()).iter().all(|(n, _)| n != name),
                    "{form} is not a trick"
                );
            }
            assert!(flagged(row, form.as_bytes(), |_| None), "{label}: {form}");
        }
    }

    /// The properties the model checks: a copy the layer did not read, another value, a
    /// second copy (even an empty one), and for the first or the last copy alike.
    #[test]
    fn a_reading_must_find_exactly_what_the_layer_read() {
        let strict = reading("RFC");
        let ours = |name: &str| (name == "code").then_some(&b"mine"[..]);
        assert!(!flagged(strict, b"code=mine&scope=x", ours));
        assert!(!flagged(strict, b"code=mine&code_verifier=", ours));
        for form in [
            &b"scope=x"[..],
            b"code=other",
            b"code=mine&client_id=app",
            b"code=mine&code=other",
            b"code=other&code=mine",
            b"code=mine&code=mine",
            b"code=mine&code=",
            b"code=&code=mine",
        ] {
            assert!(flagged(strict, form, ours), "{}", lossy(form));
        }
    }

    /// What the model reads is the body forwarded, not the one sent: the grant is forwarded
    /// spelled `authorization_code`, where a server comparing it as sent would read another.
    #[test]
    fn the_model_reads_the_forwarded_body_not_the_one_sent() {
        let body = b"grant_type=Authorization_Code&code=c";
        let parsed = token::parse_form(body).unwrap();
        check_accepted(body, &parsed);
        let ours = |name: &str| match name {
            "grant_type" => Some(&b"authorization_code"[..]),
            "code" => Some(&b"c"[..]),
            _ => None,
        };
        assert!(flagged(reading("RFC"), body, ours));
        assert!(!flagged(reading("RFC"), &parsed.forward, ours));
    }

    #[test]
    fn accepted_requests_hold_to_the_model() {
        for body in [
            &b"grant_type=authorization_code&code=a%2Bb+c&code_verifier=v&client_id=app"[..],
            b"grant_type=Authorization_Code&code=x&redirect_uri=https%3A%2F%2Fa%2Fcb%3Fx%3D1%26y%3D2",
            b"grant_type=refresh_token&refresh_token=r;x=y&scope=a+b",
            b"grant_type=client_credentials&x.y-z=100%25&note=a%2Bb",
        ] {
            let parsed = token::parse_form(body).unwrap();
            check_accepted(body, &parsed);
        }
        // What a server decoding twice reads as a code: refused, not forwarded.
        for body in [
            &b"grant_type=client_credentials&x.y-z=%25u0063ode&note=%2526code%253Dv"[..],
            b"grant_type=client_credentials&x=%2526%25u0063ode%253Dv",
        ] {
            assert!(token::parse_form(body).is_err(), "{}", lossy(body));
        }
        token_form(b"api-version=1%3Bx%3D1&tenant=a+b");
        token_json(br#"{"grant_type":"authorization_code","code":"a&b","client_id":"c;d"}"#);
    }

    /// An identical `state` in the query and the body: the handle replaces both.
    #[test]
    fn identical_state_copies_are_both_replaced() {
        authorize(b"state=s&client_id=app", Some(b"STATE[]=%73&x=1"));
        authorize(b"client_id=app", Some(b"state=s"));
        authorize(b"client_id=app", Some(b"x=1"));
    }

    /// A Basic user against bodies the layer accepts.
    #[test]
    fn basic_users() {
        use base64::Engine as _;
        let encode = |user: &str| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(user);
            format!("Basic {b64}").into_bytes()
        };
        basic(&encode("app:secret"));
        basic(&encode("svc+prod%2Fx:s"));
        basic(b"Bearer x");
    }
}
