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
use crate::oauth::{form_post, json, metadata, params, path, redirect};

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
/// request with the handle put in place of `state` (as the layer forwards it) parses again
/// to the same request with only `state` changed.
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

    let (query, body): (Cow<'_, [u8]>, Option<Cow<'_, [u8]>>) = match parsed.state_at.clone() {
        Some((Part::Body, span)) => (
            Cow::Borrowed(query),
            Some(Cow::Owned(authorize::put_state(
                body.unwrap_or_default(),
                Some(span),
                HANDLE,
            ))),
        ),
        at => (
            Cow::Owned(authorize::put_state(query, at.map(|(_, s)| s), HANDLE)),
            body.map(Cow::Borrowed),
        ),
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
    let input: &[u8] = match part {
        Part::Query => &query,
        Part::Body => body.as_deref().unwrap_or_default(),
    };
    assert_eq!(&input[span], format!("state={HANDLE}").as_bytes());
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

/// A form-encoded token request body: parsing never panics, a body carrying a code or a
/// verifier is an authorization code grant, and no copy of `code` or `code_verifier` that an
/// upstream might read differs from the one the layer checked.
pub fn token_form(body: &[u8]) {
    let Ok(parsed) = token::parse_form(body) else {
        return;
    };
    check_token(&parsed);
    assert!(!body.contains(&b';'));
    // However a lenient upstream spells the names (any case, a `[...]` suffix), every copy it
    // could read as `code` or `code_verifier` says what the layer read.
    for (name, value) in form_urlencoded::parse(body) {
        if value.contains(char::REPLACEMENT_CHARACTER) {
            // Not UTF-8 once decoded: this reading is lossy, so it says nothing.
            continue;
        }
        let lax = name.to_ascii_lowercase();
        let lax = lax.split('[').next().unwrap_or_default();
        if lax == "code" && !value.is_empty() {
            assert_eq!(
                parsed.code.as_deref(),
                Some(value.as_bytes()),
                "another code"
            );
        }
        if lax == "code_verifier" && !value.is_empty() {
            assert_eq!(
                parsed.verifier.as_deref(),
                Some(&*value),
                "another verifier"
            );
        }
    }
}

/// A JSON token request body: converted to a form holding exactly the object's scalar
/// members, in order, which then parses like any form body.
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
        check_token(&parsed);
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
        &b"code=x"[..],
        b"code=x&client_id=app",
        b"code=x&client_secret=s",
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
