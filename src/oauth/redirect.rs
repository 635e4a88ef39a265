//! Authorization responses delivered by redirect (RFC 6749 §4.1.2): finding the layer's handle
//! in a `Location`, the code or error next to it, and putting the client's own state back.

use std::borrow::Cow;
use std::ops::Range;

use super::params;

/// Length of a handle: 16 random bytes in base64url without padding.
pub(crate) const HANDLE_LEN: usize = 22;

/// Whether `value` has the shape of a handle the layer mints.
pub(crate) fn is_handle(value: &[u8]) -> bool {
    value.len() == HANDLE_LEN
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A cheap test, without allocating, for a `Location` worth parsing: it has a `state`
/// parameter.
pub(crate) fn may_carry_state(location: &[u8]) -> bool {
    location
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"state="))
}

/// Whether `location` goes to `uri`: the same URI, followed by its query, its fragment or
/// nothing.
fn goes_to(location: &str, uri: &str) -> bool {
    match location.strip_prefix(uri) {
        Some(rest) => rest.is_empty() || rest.starts_with(['?', '&', '#']),
        None => false,
    }
}

/// Whether `location` starts with a URI scheme (`https:`, `com.example.app:`), as every
/// redirect URI must (RFC 6749 §3.1.2); a relative or scheme-relative location is one of the
/// upstream's own pages.
fn is_absolute(location: &str) -> bool {
    let Some((scheme, _)) = location.split_once(':') else {
        return false;
    };
    scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Whether a redirect carrying a flow's handle goes where that flow's response must go: to
/// the authorization request's `redirect_uri`; without one, to one of the client's
/// configured redirect URIs; without those, at least to an absolute URI (not to a page of the
/// upstream's own, which may echo text an attacker chose).
pub(crate) fn targets(location: &str, redirect_uri: Option<&str>, registered: &[Box<str>]) -> bool {
    match redirect_uri {
        Some(uri) => goes_to(location, uri),
        None if !registered.is_empty() => registered.iter().any(|uri| goes_to(location, uri)),
        None => is_absolute(location),
    }
}

/// An authorization response found in a `Location`. No `Debug`: it holds the code.
pub(crate) struct Capture<'a> {
    /// The handle in `state`.
    pub(crate) handle: &'a str,
    /// The decoded `code`, if any.
    pub(crate) code: Option<Cow<'a, [u8]>>,
    /// Whether the response carries `error`.
    pub(crate) error: bool,
    /// The `state` pair, as a byte range of the whole location.
    state_span: Range<usize>,
}

/// Finds an authorization response in `location`: a query or fragment with one `state` of
/// the handle's shape and a `code` or an `error` beside it. A component that repeats `code`,
/// `error` or a handle is not read (the client could read another copy).
pub(crate) fn capture(location: &str) -> Option<Capture<'_>> {
    let fragment_at = location.find('#');
    let before_fragment = fragment_at.map_or(location, |i| location.get(..i).unwrap_or_default());
    let query = before_fragment
        .find('?')
        .map(|i| (i + 1, before_fragment.len()));
    let fragment = fragment_at.map(|i| (i + 1, location.len()));
    for (start, end) in [query, fragment].into_iter().flatten() {
        let component = location.get(start..end).unwrap_or_default();
        let list = params::parse(component.as_bytes());
        let count = |name: &str| list.iter().filter(|p| p.is(name)).count();
        if count("code") > 1 || count("error") > 1 {
            continue;
        }
        // One `state` of the handle's shape: a registered redirect URI may carry a `state`
        // of its own (`https://app/cb?state=x`), which stays as it is.
        let mut handles = list.iter().filter(|p| p.is("state") && is_handle(&p.value));
        let (Some(state), None) = (handles.next(), handles.next()) else {
            continue;
        };
        let code = params::value(&list, "code").is_some();
        let error = params::value(&list, "error").is_some();
        if !code && !error {
            continue;
        }
        let state_span = state.span.start + start..state.span.end + start;
        // The handle is plain base64url, so it stands undecoded in the location.
        let handle = location
            .get(state_span.clone())
            .and_then(|pair| pair.split_once('='))
            .map(|(_, value)| value)
            .filter(|value| is_handle(value.as_bytes()))?;
        let code = list
            .into_iter()
            .find(|p| p.is("code") && !p.value.is_empty())
            .map(|p| p.value);
        return Some(Capture {
            handle,
            code,
            error,
            state_span,
        });
    }
    None
}

/// `location` with the handle replaced by the client's own `state`, or the `state` pair
/// removed when the client sent none. Everything else is kept byte for byte.
pub(crate) fn restore_state(location: &str, capture: &Capture<'_>, state: Option<&str>) -> String {
    let span = capture.state_span.clone();
    let bytes = location.as_bytes();
    let out = match state {
        Some(state) => {
            let mut out = bytes.get(..span.start).unwrap_or_default().to_vec();
            out.extend_from_slice(b"state=");
            form_urlencoded::byte_serialize(state.as_bytes())
                .for_each(|piece| out.extend_from_slice(piece.as_bytes()));
            out.extend_from_slice(bytes.get(span.end..).unwrap_or_default());
            out
        }
        None => {
            // Remove the pair within its component only (the query runs from the first `?`
            // to the first `#`, the fragment from there to the end, as `capture` reads them;
            // a fragment may hold more `#` and `?`), then a separator left dangling.
            let fragment_at = location.find('#');
            let (component_start, component_end) = match fragment_at {
                Some(f) if span.start > f => (f + 1, location.len()),
                _ => (
                    location.find('?').map_or(0, |q| q + 1),
                    fragment_at.unwrap_or(location.len()),
                ),
            };
            let component = bytes
                .get(component_start..component_end)
                .unwrap_or_default();
            let local = span.start - component_start..span.end - component_start;
            let rest = params::remove(component, local);
            let mut out = Vec::with_capacity(bytes.len());
            let head = bytes.get(..component_start).unwrap_or_default();
            if rest.is_empty() {
                // Drop the now-empty `?` or `#`.
                out.extend_from_slice(head.get(..head.len().saturating_sub(1)).unwrap_or_default());
            } else {
                out.extend_from_slice(head);
                out.extend_from_slice(&rest);
            }
            out.extend_from_slice(bytes.get(component_end..).unwrap_or_default());
            out
        }
    };
    // Only ASCII was spliced into valid UTF-8 at pair boundaries.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "AAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn removing_the_handle_keeps_a_fragment_that_holds_more_marks() {
        // Found by fuzzing: the component was taken from the last `?` or `#` before the pair.
        let h = "Qm9vdHN0cmFwSGFuZGxlMQ";
        let location = format!("https://app.example/cb#x=a?#&code=c&state={h}");
        let found = capture(&location).expect("a response in the fragment");
        let restored = restore_state(&location, &found, None);
        assert_eq!(restored, "https://app.example/cb#x=a?#&code=c");
        let location = format!("https://app.example/cb#x=a?#&state={h}&code=c");
        let found = capture(&location).expect("a response in the fragment");
        assert_eq!(
            restore_state(&location, &found, None),
            "https://app.example/cb#x=a?#&code=c"
        );
    }

    proptest::proptest! {
        /// Any client state (visible ASCII, and beyond) comes back exactly, in a query or a
        /// fragment, whatever stands around it; everything else is kept byte for byte.
        #[test]
        fn any_state_round_trips(
            state in "[ -~]{0,64}|\\PC{0,16}",
            before in proptest::option::of("[a-z]{1,8}=[A-Za-z0-9._~-]{0,8}"),
            after in proptest::option::of("[a-z]{1,8}=[A-Za-z0-9._~-]{0,8}"),
            fragment in proptest::bool::ANY,
        ) {
            let sep = if fragment { '#' } else { '?' };
            let mut pairs: Vec<String> = Vec::new();
            pairs.extend(before.clone().filter(|p| !p.starts_with("state=") && !p.starts_with("code=")));
            pairs.push("code=c0de".into());
            pairs.push(format!("state={H}"));
            pairs.extend(after.clone().filter(|p| !p.starts_with("state=") && !p.starts_with("code=")));
            let location = format!("https://app.example/cb{sep}{}", pairs.join("&"));
            let capture = capture(&location).expect("an authorization response");
            let restored = restore_state(&location, &capture, Some(&state));
            let component = restored.split_once(sep).map(|(_, c)| c).unwrap_or_default();
            let states: Vec<String> = form_urlencoded::parse(component.as_bytes())
                .filter(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .collect();
            proptest::prop_assert_eq!(states, vec![state.clone()]);
            let others: Vec<(String, String)> = form_urlencoded::parse(component.as_bytes())
                .filter(|(k, _)| k != "state")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let expected: Vec<(String, String)> = form_urlencoded::parse(pairs.join("&").as_bytes())
                .filter(|(k, _)| k != "state")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            proptest::prop_assert_eq!(others, expected);
            // And a restored location is read the same way again: no handle in it any more.
            proptest::prop_assert!(capture_again_is_not_ours(&restored, &state));
        }
    }

    fn capture_again_is_not_ours(restored: &str, state: &str) -> bool {
        capture(restored).is_none_or(|c| c.handle == state)
    }

    #[test]
    fn handle_shape() {
        assert!(is_handle(H.as_bytes()));
        assert!(is_handle(b"abcdefghij-_0123456789"));
        assert!(!is_handle(b"abcdefghij-_012345678"));
        assert!(!is_handle(b"abcdefghij+/0123456789"));
    }

    #[test]
    fn captures_codes_and_errors() {
        let cases: &[(String, Option<(Option<&str>, bool)>)] = &[
            (
                format!("https://c.example/cb?code=abc&state={H}"),
                Some((Some("abc"), false)),
            ),
            (
                format!("/cb?state={H}&code=a%2Bb"),
                Some((Some("a+b"), false)),
            ),
            (
                format!("cb?state={H}&code=x#frag"),
                Some((Some("x"), false)),
            ),
            (
                format!("https://c.example/cb#code=abc&state={H}&id_token=x"),
                Some((Some("abc"), false)),
            ),
            (
                format!("https://c.example/cb?error=access_denied&state={H}"),
                Some((None, true)),
            ),
            (
                format!("https://c.example/cb#error=access_denied&state={H}"),
                Some((None, true)),
            ),
            (
                format!("com.example.app:/cb?code=abc&state={H}&iss=https%3A%2F%2Fas"),
                Some((Some("abc"), false)),
            ),
            // Not a response: no code or error next to the handle.
            (format!("/login?state={H}&client_id=app"), None),
            // State is not a handle.
            (
                "https://c.example/cb?code=abc&state=client-state".into(),
                None,
            ),
            // Ambiguous components are not read.
            (format!("/cb?code=a&code=b&state={H}"), None),
            (format!("/cb?code=a&state={H}&state={H}"), None),
            // A registered redirect URI's own state stays; the handle beside it is found.
            (
                format!("https://c.example/cb?state=mine&code=abc&state={H}"),
                Some((Some("abc"), false)),
            ),
            // Handle inside another parameter's value.
            (
                format!("/login?return_to=%2Fauthorize%3Fstate%3D{H}%26code%3Dx"),
                None,
            ),
            ("/cb".into(), None),
            ("".into(), None),
        ];
        for (location, expected) in cases {
            let got = capture(location);
            let got = got.as_ref().map(|c| {
                assert_eq!(c.handle, H, "{location}");
                (
                    c.code.as_deref().map(|c| std::str::from_utf8(c).unwrap()),
                    c.error,
                )
            });
            assert_eq!(got, *expected, "{location}");
        }
    }

    #[test]
    fn restores_exact_state() {
        let cases: &[(String, Option<&str>, &str)] = &[
            (
                format!("https://c.example/cb?code=abc&state={H}"),
                Some("xyz"),
                "https://c.example/cb?code=abc&state=xyz",
            ),
            (
                format!("https://c.example/cb?state={H}&code=abc"),
                Some("a b&c=d/é"),
                "https://c.example/cb?state=a+b%26c%3Dd%2F%C3%A9&code=abc",
            ),
            (
                format!("https://c.example/cb?code=abc&state={H}"),
                None,
                "https://c.example/cb?code=abc",
            ),
            (
                format!("https://c.example/cb?state={H}&code=abc"),
                None,
                "https://c.example/cb?code=abc",
            ),
            (
                format!("https://c.example/cb?x=1&state={H}&code=abc"),
                None,
                "https://c.example/cb?x=1&code=abc",
            ),
            (
                format!("https://c.example/cb#code=abc&state={H}"),
                None,
                "https://c.example/cb#code=abc",
            ),
            (
                format!("https://c.example/cb?code=abc&state={H}#keep"),
                None,
                "https://c.example/cb?code=abc#keep",
            ),
            (
                format!("https://c.example/cb#code=abc&state={H}"),
                Some("s"),
                "https://c.example/cb#code=abc&state=s",
            ),
        ];
        for (location, state, expected) in cases {
            let c = capture(location).unwrap();
            assert_eq!(
                restore_state(location, &c, *state),
                *expected,
                "{location} {state:?}"
            );
        }
        // A location whose only parameter is the state loses its `?` when state is removed.
        let bare = format!("/cb?state={H}");
        let c = Capture {
            handle: H,
            code: None,
            error: true,
            state_span: 4..bare.len(),
        };
        assert_eq!(restore_state(&bare, &c, None), "/cb");
    }

    #[test]
    fn restored_state_round_trips_through_a_url_parser() {
        for state in ["plain", "with space", "100%", "a+b", "ü/?#&=", "~!*'()"] {
            let location = format!("https://c.example/cb?code=abc&state={H}");
            let c = capture(&location).unwrap();
            let restored = restore_state(&location, &c, Some(state));
            let query = restored.split_once('?').unwrap().1;
            let got: Vec<_> = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .collect();
            assert_eq!(got, vec![state.to_string()]);
        }
    }

    #[test]
    fn redirect_targets() {
        let registered: Vec<Box<str>> = vec!["https://c.example/cb".into()];
        let cases: &[(&str, Option<&str>, &[Box<str>], bool)] = &[
            (
                "https://c.example/cb?code=x",
                Some("https://c.example/cb"),
                &[],
                true,
            ),
            (
                "https://c.example/cb#code=x",
                Some("https://c.example/cb"),
                &[],
                true,
            ),
            (
                "https://c.example/cb?a=1&code=x",
                Some("https://c.example/cb?a=1"),
                &[],
                true,
            ),
            (
                "https://c.example/cb",
                Some("https://c.example/cb"),
                &[],
                true,
            ),
            (
                "https://c.example/cbx?code=x",
                Some("https://c.example/cb"),
                &[],
                false,
            ),
            (
                "https://evil.example/?code=x",
                Some("https://c.example/cb"),
                &[],
                false,
            ),
            ("/logout?next=x", Some("https://c.example/cb"), &[], false),
            // No redirect_uri in the request: the configured ones, else any absolute URI.
            ("https://c.example/cb?code=x", None, &registered, true),
            ("https://evil.example/?code=x", None, &registered, false),
            ("https://any.example/cb?code=x", None, &[], true),
            ("com.example.app:/cb?code=x", None, &[], true),
            ("/cb?code=x", None, &[], false),
            ("//evil.example/cb?code=x", None, &[], false),
            ("cb?code=x", None, &[], false),
        ];
        for (location, uri, registered, expected) in cases {
            assert_eq!(
                targets(location, *uri, registered),
                *expected,
                "{location} {uri:?}"
            );
        }
    }

    #[test]
    fn cheap_prefilter() {
        assert!(may_carry_state(b"/cb?code=x&state=y"));
        assert!(may_carry_state(b"/cb?STATE=y"));
        assert!(!may_carry_state(b"/cb?code=x"));
        assert!(!may_carry_state(b""));
    }
}
