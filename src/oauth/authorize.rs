//! Authorization requests (RFC 6749 §4.1.1, RFC 7636 §4.3): reading the parameters the layer
//! acts on, and the PKCE policy.

use std::borrow::Cow;
use std::ops::Range;

use super::error::Reason;
use super::params::{self, Param};
use crate::pkce::{ChallengeMethod, CodeChallenge};

/// Which part of the request a parameter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Query,
    Body,
}

/// The parameters of an authorization request that the layer reads, borrowed from the request
/// where they needed no decoding. No `Debug`: `state` may be a secret of the client's.
#[derive(Default)]
pub(crate) struct AuthorizeParams<'a> {
    /// `response_type` contains `code` (compared without regard to case, so a lenient
    /// upstream cannot see a code flow the layer did not).
    pub(crate) wants_code: bool,
    /// `response_type` has more than `code` (a hybrid flow), so responses default to the
    /// fragment.
    pub(crate) hybrid: bool,
    pub(crate) client_id: Option<Cow<'a, str>>,
    pub(crate) redirect_uri: Option<Cow<'a, str>>,
    pub(crate) state: Option<Cow<'a, str>>,
    /// Where the `state` pair is, to replace it: the query's when it is in both places.
    pub(crate) state_at: Option<(Part, Range<usize>)>,
    /// Where the body's identical copy of a `state` in the query is, to replace it too.
    pub(crate) state_copy_in_body: Option<Range<usize>>,
    pub(crate) challenge: Option<Cow<'a, str>>,
    pub(crate) method: Option<Cow<'a, str>>,
    pub(crate) response_mode: Option<Cow<'a, str>>,
    /// `request` or `request_uri` is present.
    pub(crate) request_object: bool,
    /// A signed `request` object is present.
    pub(crate) request: bool,
    /// `request_uri`, a reference to a pushed authorization request (RFC 9126).
    pub(crate) request_uri: Option<Cow<'a, str>>,
}

/// Reads an authorization request from its query and, for a POST, its form body.
///
/// Refuses a repeated parameter and a parameter in both places (RFC 6749 §3.1), whatever its
/// name, before anything else: a lenient upstream could read either copy.
pub(crate) fn parse<'a>(
    query: &'a [u8],
    body: Option<&'a [u8]>,
) -> Result<AuthorizeParams<'a>, Reason> {
    let mut query_params = params::parse(query);
    let mut body_params = body.map(params::parse).unwrap_or_default();
    if params::first_duplicate(&query_params).is_some()
        || params::first_duplicate(&body_params).is_some()
    {
        return Err(Reason::DuplicateParameter);
    }
    // Identical copies in the query and the body are one parameter (Django OAuth Toolkit's
    // consent form posts back to the authorize URL, query included, repeating every field);
    // copies that differ are refused, since a lenient upstream could read either.
    if params::first_conflict(&query_params, &body_params).is_some() {
        return Err(Reason::ParameterInQueryAndBody);
    }
    let unclosed = |input: &[u8], list: &[Param<'_>]| {
        list.iter()
            .any(|p| params::name_has_unclosed_bracket(input, p))
    };
    if unclosed(query, &query_params) || unclosed(body.unwrap_or_default(), &body_params) {
        return Err(Reason::MalformedParameter);
    }
    // Each name is once in each place at most, and the same in both (checked above): its
    // value is taken out of the list, the query's copy first, so a value that needed no
    // decoding stays borrowed from the request.
    let mut state_copy_in_body = None;
    let mut take = |name: &str| -> Option<(Part, Range<usize>, Cow<'a, [u8]>)> {
        let in_body = body_params.iter_mut().find(|p| p.is(name));
        let (part, param) = match query_params.iter_mut().find(|p| p.is(name)) {
            Some(param) => {
                if name == "state" {
                    state_copy_in_body = in_body.map(|copy| copy.span.clone());
                }
                (Part::Query, param)
            }
            None => (Part::Body, in_body?),
        };
        Some((part, param.span.clone(), std::mem::take(&mut param.value)))
    };
    // An empty value is read as absent (RFC 6749 §3.1).
    let value = |found: Option<(Part, Range<usize>, Cow<'a, [u8]>)>| {
        found.map(|(_, _, v)| v).filter(|v| !v.is_empty())
    };

    let response_type = value(take("response_type")).unwrap_or_default();
    std::str::from_utf8(&response_type).map_err(|_| Reason::MalformedParameter)?;
    let tokens = || {
        response_type
            .split(|&b| b == b' ')
            .filter(|t| !t.is_empty())
    };
    let wants_code = tokens().any(|t| t.eq_ignore_ascii_case(b"code"));
    let hybrid = wants_code && tokens().nth(1).is_some();
    // An empty `state` is still a state (RFC 6749 §4.1.2: present in the request, present in
    // the response), and its pair is where the handle goes.
    let (state, state_at) = match take("state") {
        Some((part, span, value)) => (Some(value), Some((part, span))),
        None => (None, None),
    };
    let client_id = params::text(value(take("client_id")))?;
    let redirect_uri = params::text(value(take("redirect_uri")))?;
    let state = params::text(state)?;
    let challenge = params::text(value(take("code_challenge")))?;
    let method = params::text(value(take("code_challenge_method")))?;
    let response_mode = params::text(value(take("response_mode")))?;
    let request = value(take("request")).is_some();
    let request_uri = params::text(value(take("request_uri")))?;
    Ok(AuthorizeParams {
        state_copy_in_body,
        wants_code,
        hybrid,
        client_id,
        redirect_uri,
        state,
        state_at,
        challenge,
        method,
        response_mode,
        request_object: request || request_uri.is_some(),
        request,
        request_uri,
    })
}

/// `input` (a query or form body) with the `state` pair at `span` replaced by the layer's
/// handle, or the pair appended when the request has no `state` there. Everything else is kept
/// byte for byte, so the upstream reads the same request with only `state` changed.
pub(crate) fn put_state(input: &[u8], span: Option<Range<usize>>, handle: &str) -> Vec<u8> {
    state_pieces(input, span, handle).concat()
}

/// The pieces [`put_state`] joins, in order, for a caller that writes them somewhere else.
pub(crate) fn state_pieces<'a>(
    input: &'a [u8],
    span: Option<Range<usize>>,
    handle: &'a str,
) -> [&'a [u8]; 5] {
    // The input around where the pair goes, and the separator before it.
    let (head, separator, tail): (&[u8], &[u8], &[u8]) = match span {
        Some(span) => (
            input.get(..span.start).unwrap_or_default(),
            b"",
            input.get(span.end..).unwrap_or_default(),
        ),
        None if input.is_empty() => (b"", b"", b""),
        None => (input, b"&", b""),
    };
    [head, separator, b"state=", handle.as_bytes(), tail]
}

/// Applies the PKCE policy: `Ok(Some(challenge))` for a valid challenge, `Ok(None)` for an
/// exempt client without one.
///
/// A challenge without a method is `plain` (RFC 7636 §4.3), never taken as S256.
pub(crate) fn check_pkce(
    params: &AuthorizeParams<'_>,
    allow_plain: bool,
    exempt: bool,
) -> Result<Option<CodeChallenge>, Reason> {
    let method = match params.method.as_deref() {
        Some(m) => ChallengeMethod::parse(m).map_err(|_| Reason::UnsupportedMethod)?,
        None => ChallengeMethod::Plain,
    };
    let Some(challenge) = params.challenge.as_deref() else {
        return match (params.method.is_some(), exempt) {
            (true, _) => Err(Reason::MethodWithoutChallenge),
            (false, true) => Ok(None),
            (false, false) => Err(Reason::ChallengeRequired),
        };
    };
    if method == ChallengeMethod::Plain && !allow_plain {
        return Err(Reason::UnsupportedMethod);
    }
    CodeChallenge::parse(challenge, method)
        .map(Some)
        .map_err(|_| Reason::MalformedChallenge)
}

/// Where an error redirect for this request goes: the fragment for `response_mode=fragment`
/// and for hybrid response types without a mode; `None` for `form_post` (which needs a page,
/// not a redirect).
pub(crate) fn error_in_fragment(params: &AuthorizeParams<'_>) -> Option<bool> {
    match params.response_mode.as_deref() {
        Some("fragment") => Some(true),
        Some("query") => Some(false),
        Some(_) => None,
        None => Some(params.hybrid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn parse_q(query: &str) -> Result<AuthorizeParams<'_>, Reason> {
        parse(query.as_bytes(), None)
    }

    #[test]
    fn reads_parameters() {
        let query = format!(
            "response_type=code&client_id=app&redirect_uri=https%3A%2F%2Fa.example%2Fcb&state=a+b%26c&code_challenge={C}&code_challenge_method=S256"
        );
        let p = parse_q(&query).unwrap();
        // Values that needed no decoding are borrowed from the request; decoded ones are not.
        assert!(matches!(p.client_id, Some(Cow::Borrowed("app"))));
        assert!(matches!(p.challenge, Some(Cow::Borrowed(_))));
        assert!(matches!(p.redirect_uri, Some(Cow::Owned(_))));
        assert!(matches!(p.state, Some(Cow::Owned(_))));
        assert!(p.wants_code);
        assert!(!p.hybrid);
        assert_eq!(p.client_id.as_deref(), Some("app"));
        assert_eq!(p.redirect_uri.as_deref(), Some("https://a.example/cb"));
        assert_eq!(p.state.as_deref(), Some("a b&c"));
        assert_eq!(p.challenge.as_deref(), Some(C));
        assert_eq!(p.method.as_deref(), Some("S256"));
        assert!(!p.request_object);
    }

    #[test]
    fn response_types() {
        let cases = [
            ("response_type=code", true, false),
            ("response_type=CODE", true, false),
            ("response_type=code+id_token", true, true),
            ("response_type=id_token%20code", true, true),
            ("response_type=token", false, false),
            ("response_type=id_token+token", false, false),
            ("response_type=", false, false),
            ("", false, false),
            ("response_type=codes", false, false),
        ];
        for (query, wants, hybrid) in cases {
            let p = parse_q(query).unwrap();
            assert_eq!((p.wants_code, p.hybrid), (wants, hybrid), "{query:?}");
        }
    }

    #[test]
    fn refuses_ambiguous_requests() {
        let cases: &[(&str, Option<&str>, Reason)] = &[
            ("state=a&state=b", None, Reason::DuplicateParameter),
            ("scope=a&scope=b", None, Reason::DuplicateParameter),
            (
                "response_type=token&response_type=code",
                None,
                Reason::DuplicateParameter,
            ),
            (
                "client_id=a&client_id[]=b",
                None,
                Reason::DuplicateParameter,
            ),
            (
                "client_id=a",
                Some("client_id=b"),
                Reason::ParameterInQueryAndBody,
            ),
            (
                "client_id=a",
                Some("CLIENT_ID[]=b"),
                Reason::ParameterInQueryAndBody,
            ),
            ("x=1", Some("state=1&state=2"), Reason::DuplicateParameter),
            ("state=%FF", None, Reason::MalformedParameter),
            ("code_challenge=%C3%28", None, Reason::MalformedParameter),
        ];
        for (query, body, expected) in cases {
            let got = parse(query.as_bytes(), body.map(str::as_bytes)).map(|_| ());
            assert_eq!(got, Err(*expected), "query {query:?} body {body:?}");
        }
    }

    #[test]
    fn finds_state_in_query_or_body() {
        let p = parse(b"response_type=code", Some(b"client_id=a&state=xyz")).unwrap();
        assert_eq!(p.state_at, Some((Part::Body, 12..21)));
        let p = parse(b"state=xyz&response_type=code", Some(b"client_id=a")).unwrap();
        assert_eq!(p.state_at, Some((Part::Query, 0..9)));
        let p = parse(b"state=&response_type=code", None).unwrap();
        assert_eq!(p.state.as_deref(), Some(""), "an empty state is a state");
        assert_eq!(
            p.state_at,
            Some((Part::Query, 0..6)),
            "but its pair is replaced"
        );
    }

    #[test]
    fn pkce_policy() {
        use Reason::*;
        let plain = "a".repeat(43);
        // (challenge, method, allow_plain, exempt, expected: Ok(Some(method)) / Ok(None) / Err)
        let cases: Vec<(
            Option<&str>,
            Option<&str>,
            bool,
            bool,
            Result<Option<ChallengeMethod>, Reason>,
        )> = vec![
            (
                Some(C),
                Some("S256"),
                false,
                false,
                Ok(Some(ChallengeMethod::S256)),
            ),
            (
                Some(C),
                Some("S256"),
                false,
                true,
                Ok(Some(ChallengeMethod::S256)),
            ),
            (Some(C), None, false, false, Err(UnsupportedMethod)),
            (Some(C), None, true, false, Ok(Some(ChallengeMethod::Plain))),
            (
                Some(&plain),
                Some("plain"),
                false,
                false,
                Err(UnsupportedMethod),
            ),
            (
                Some(&plain),
                Some("plain"),
                true,
                false,
                Ok(Some(ChallengeMethod::Plain)),
            ),
            (Some(C), Some("s256"), false, false, Err(UnsupportedMethod)),
            (Some(C), Some("S512"), true, false, Err(UnsupportedMethod)),
            (
                Some("short"),
                Some("S256"),
                false,
                false,
                Err(MalformedChallenge),
            ),
            (
                Some(&plain),
                Some("S256"),
                false,
                false,
                Err(MalformedChallenge),
            ),
            (
                Some("a+b"),
                Some("plain"),
                true,
                false,
                Err(MalformedChallenge),
            ),
            (
                None,
                Some("S256"),
                false,
                false,
                Err(MethodWithoutChallenge),
            ),
            (None, Some("S256"), false, true, Err(MethodWithoutChallenge)),
            (None, None, false, false, Err(ChallengeRequired)),
            (None, None, true, false, Err(ChallengeRequired)),
            (None, None, false, true, Ok(None)),
        ];
        for (challenge, method, allow_plain, exempt, expected) in cases {
            let params = AuthorizeParams {
                challenge: challenge.map(Cow::Borrowed),
                method: method.map(Cow::Borrowed),
                ..Default::default()
            };
            let got = check_pkce(&params, allow_plain, exempt).map(|c| c.map(|c| c.method()));
            assert_eq!(
                got, expected,
                "challenge {challenge:?} method {method:?} plain {allow_plain} exempt {exempt}"
            );
        }
    }

    #[test]
    fn error_placement() {
        let cases = [
            (None, false, Some(false)),
            (None, true, Some(true)),
            (Some("query"), true, Some(false)),
            (Some("fragment"), false, Some(true)),
            (Some("form_post"), false, None),
        ];
        for (mode, hybrid, expected) in cases {
            let params = AuthorizeParams {
                response_mode: mode.map(Cow::Borrowed),
                hybrid,
                ..Default::default()
            };
            assert_eq!(error_in_fragment(&params), expected, "{mode:?} {hybrid}");
        }
    }

    #[test]
    fn an_unclosed_bracket_in_a_name_is_refused() {
        // PHP reads `client[id` as `client_id`; the layer would read `client`.
        // Escaped too: `%5B` decodes to `[`.
        for query in [
            "client_id=a&client[id=b",
            "response_type=code&x[=1",
            "client_id=a&client%5Bid=b",
            "client_id=a&client%5bid=b",
        ] {
            assert_eq!(
                parse_q(query).map(|_| ()).err(),
                Some(Reason::MalformedParameter),
                "{query}"
            );
        }
        assert!(parse(b"", Some(b"response_type=code&client[id=b")).is_err());
        assert!(parse_q("response_type=code&claims[x]=1&a[]=2").is_ok());
        assert!(parse_q("response_type=code&claims%5Bx%5D=1&a%20b=2&c=%5B").is_ok());
    }

    /// The request as the layer reads it, except where `state` is.
    fn reading(p: &AuthorizeParams<'_>) -> impl PartialEq + std::fmt::Debug {
        let text = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_owned);
        (
            (
                p.wants_code,
                p.hybrid,
                text(&p.client_id),
                text(&p.redirect_uri),
            ),
            (text(&p.challenge), text(&p.method), text(&p.response_mode)),
            (p.request_object, p.request, text(&p.request_uri)),
        )
    }

    proptest::proptest! {
        /// Parse → put the handle in → parse again reads the same request, with only `state`
        /// changed to the handle and standing where it was: what the upstream receives is
        /// what the layer checked.
        #[test]
        fn putting_the_handle_in_changes_nothing_else(
            pairs in proptest::collection::vec(
                (
                    "response_type|client_id|redirect_uri|state|STATE|code_challenge|\
                     code_challenge_method|response_mode|scope|nonce|request_uri|x",
                    "[ -~]{0,24}|\\PC{0,6}",
                ),
                0..8,
            ),
            raw in "[a-z_&=%+0-9A-F\\[\\]]{0,16}",
            in_body in proptest::bool::ANY,
        ) {
            let mut input = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .finish()
                .into_bytes();
            if !raw.is_empty() {
                input.push(b'&');
                input.extend_from_slice(raw.as_bytes());
            }
            let (query, body): (&[u8], Option<&[u8]>) = if in_body {
                (b"", Some(&input))
            } else {
                (&input, None)
            };
            let Ok(before) = parse(query, body) else {
                return Ok(());
            };
            const H: &str = "Qm9vdHN0cmFwSGFuZGxlMQ";
            let (query, body) = match before.state_at.clone() {
                Some((Part::Body, span)) => {
                    (query.to_vec(), Some(put_state(body.unwrap_or_default(), Some(span), H)))
                }
                at => (put_state(query, at.map(|(_, s)| s), H), body.map(<[u8]>::to_vec)),
            };
            let after = parse(&query, body.as_deref()).expect("the rewritten request parses");
            proptest::prop_assert_eq!(reading(&before), reading(&after));
            proptest::prop_assert_eq!(after.state.as_deref(), Some(H));
            if let (Some((was, _)), Some((is, _))) = (&before.state_at, &after.state_at) {
                proptest::prop_assert_eq!(was, is);
            }
        }
    }
}
