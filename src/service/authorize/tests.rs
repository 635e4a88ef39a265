//! The authorization endpoint's decisions (DESIGN.md, "Correlation" and "Defaults"), cell by
//! cell: routing, new flows, re-entry, and requests by `request_uri`.

use super::*;
use crate::pkce::{ChallengeMethod, CodeVerifier};

const CLIENT: &str = "app";
const REDIRECT: &str = "https://app.example/cb";
/// A handle's shape: 22 characters of base64url.
const HANDLE: &str = "AAAAAAAAAAAAAAAAAAAAAA";

fn verifier(c: char) -> CodeVerifier {
    CodeVerifier::parse(&c.to_string().repeat(43)).unwrap()
}

fn s256(c: char) -> CodeChallenge {
    CodeChallenge::from_verifier(&verifier(c), ChallengeMethod::S256)
}

fn plain(c: char) -> CodeChallenge {
    CodeChallenge::from_verifier(&verifier(c), ChallengeMethod::Plain)
}

/// The query of a code-flow request by `CLIENT` to `REDIRECT` with state `HANDLE`, plus
/// `extra`.
fn query(extra: &str) -> String {
    let base = format!(
        "response_type=code&client_id={CLIENT}&redirect_uri={}&state={HANDLE}",
        urlencode(REDIRECT)
    );
    if extra.is_empty() {
        base
    } else {
        format!("{base}&{extra}")
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn with_s256(c: char) -> String {
    format!(
        "code_challenge={}&code_challenge_method=S256",
        s256(c).encoded()
    )
}

const STRICT: AuthorizePolicy = AuthorizePolicy {
    exempt: false,
    allow_plain: false,
    par: false,
};

const EXEMPT: AuthorizePolicy = AuthorizePolicy {
    exempt: true,
    ..STRICT
};

const PLAIN: AuthorizePolicy = AuthorizePolicy {
    allow_plain: true,
    ..STRICT
};

const PAR: AuthorizePolicy = AuthorizePolicy {
    par: true,
    ..STRICT
};

/// A short name for a decision, to compare in tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    PassThrough,
    Forward(Pass),
    Bound(ChallengeMethod),
    Unbound,
    RequestUri,
    ByState,
    Refused(Reason),
}

fn got(decision: Result<AuthorizeDecision, Reason>) -> Got {
    match decision {
        Ok(AuthorizeDecision::PassThrough) => Got::PassThrough,
        Ok(AuthorizeDecision::Forward(pass)) => Got::Forward(pass),
        Ok(AuthorizeDecision::Record(Some(challenge))) => Got::Bound(challenge.method()),
        Ok(AuthorizeDecision::Record(None)) => Got::Unbound,
        Err(reason) => Got::Refused(reason),
    }
}

fn route(query: &str, pushed: bool, policy: AuthorizePolicy) -> Got {
    let params = authorize::parse(query.as_bytes(), None).unwrap();
    match route_authorize(&params, pushed, policy) {
        Ok(Route::Decided(decision)) => got(Ok(decision)),
        Ok(Route::RequestUri(uri)) => {
            assert_eq!(uri, "urn:x:1");
            Got::RequestUri
        }
        Ok(Route::ByState) => Got::ByState,
        Err(reason) => Got::Refused(reason),
    }
}

#[test]
fn routing_before_the_store() {
    let long = |n: usize| "x".repeat(n);
    let cases: &[(String, bool, AuthorizePolicy, Got)] = &[
        // Not a code flow: only its state is looked at.
        (
            "response_type=token&state=s".into(),
            false,
            STRICT,
            Got::ByState,
        ),
        ("response_type=token".into(), false, EXEMPT, Got::ByState),
        (query(""), false, STRICT, Got::ByState),
        (
            "response_type=code&state=s".into(),
            false,
            STRICT,
            Got::Refused(Reason::MissingClientId),
        ),
        (
            format!("response_type=code&client_id={}", long(257)),
            false,
            STRICT,
            Got::Refused(Reason::ParameterTooLong),
        ),
        (
            format!("response_type=code&client_id=c&redirect_uri={}", long(2049)),
            false,
            STRICT,
            Got::Refused(Reason::ParameterTooLong),
        ),
        (
            format!("response_type=code&client_id=c&state={}", long(1025)),
            false,
            STRICT,
            Got::Refused(Reason::ParameterTooLong),
        ),
        (
            format!("response_type=code&client_id={}", long(256)),
            false,
            STRICT,
            Got::ByState,
        ),
        // A request by reference goes by the pushed request where PAR is configured.
        (query("request_uri=urn:x:1"), false, PAR, Got::RequestUri),
        (
            "client_id=app&request_uri=urn:x:1".into(),
            false,
            PAR,
            Got::RequestUri,
        ),
        // Elsewhere, or beside a signed request object, it is a request object.
        (
            query("request_uri=urn:x:1"),
            false,
            STRICT,
            Got::Refused(Reason::RequestObject),
        ),
        (
            query("request_uri=urn:x:1&request=eyJ"),
            false,
            PAR,
            Got::Refused(Reason::RequestObject),
        ),
        (
            query("request_uri=urn:x:1"),
            true,
            PAR,
            Got::Refused(Reason::RequestObject),
        ),
        (
            query("request=eyJ"),
            false,
            STRICT,
            Got::Refused(Reason::RequestObject),
        ),
        (
            query("request=eyJ"),
            false,
            EXEMPT,
            Got::Forward(Pass::ExemptRequestObject),
        ),
        (
            query("request_uri=urn:x:1"),
            false,
            EXEMPT,
            Got::Forward(Pass::ExemptRequestObject),
        ),
    ];
    for (query, pushed, policy, expected) in cases {
        assert_eq!(
            &route(query, *pushed, *policy),
            expected,
            "{query} pushed={pushed} {policy:?}"
        );
    }
}

fn decide(query: &str, pushed: bool, policy: AuthorizePolicy, live: Option<&PendingFlow>) -> Got {
    let params = authorize::parse(query.as_bytes(), None).unwrap();
    got(decide_authorize(&params, pushed, policy, live))
}

/// A new flow: the PKCE policy (DESIGN.md, "Defaults").
#[test]
fn a_new_flow_is_recorded_by_the_pkce_policy() {
    let plain_challenge = plain('p').encoded();
    let cases: &[(String, AuthorizePolicy, Got)] = &[
        (
            query(&with_s256('a')),
            STRICT,
            Got::Bound(ChallengeMethod::S256),
        ),
        (
            query(&with_s256('a')),
            EXEMPT,
            Got::Bound(ChallengeMethod::S256),
        ),
        // No challenge: required, unless the client is exempt (its flow is unbound).
        (query(""), STRICT, Got::Refused(Reason::ChallengeRequired)),
        (query(""), EXEMPT, Got::Unbound),
        (
            query("code_challenge_method=S256"),
            STRICT,
            Got::Refused(Reason::MethodWithoutChallenge),
        ),
        (
            query("code_challenge_method=S256"),
            EXEMPT,
            Got::Refused(Reason::MethodWithoutChallenge),
        ),
        // plain: only where allowed; a challenge without a method is plain.
        (
            query(&format!(
                "code_challenge={plain_challenge}&code_challenge_method=plain"
            )),
            STRICT,
            Got::Refused(Reason::UnsupportedMethod),
        ),
        (
            query(&format!("code_challenge={plain_challenge}")),
            STRICT,
            Got::Refused(Reason::UnsupportedMethod),
        ),
        (
            query(&format!(
                "code_challenge={plain_challenge}&code_challenge_method=plain"
            )),
            PLAIN,
            Got::Bound(ChallengeMethod::Plain),
        ),
        (
            query(&format!("code_challenge={plain_challenge}")),
            PLAIN,
            Got::Bound(ChallengeMethod::Plain),
        ),
        (
            query(&format!(
                "code_challenge={}&code_challenge_method=S512",
                s256('a').encoded()
            )),
            STRICT,
            Got::Refused(Reason::UnsupportedMethod),
        ),
        (
            query("code_challenge=short&code_challenge_method=S256"),
            STRICT,
            Got::Refused(Reason::MalformedChallenge),
        ),
        // Not a code flow: passed through, nothing recorded.
        (
            "response_type=token&state=s".into(),
            STRICT,
            Got::PassThrough,
        ),
    ];
    for (query, policy, expected) in cases {
        assert_eq!(
            &decide(query, false, *policy, None),
            expected,
            "{query} {policy:?}"
        );
    }
    // A pushed request records its flow like any other.
    assert_eq!(
        decide(&query(&with_s256('a')), true, STRICT, None),
        Got::Bound(ChallengeMethod::S256)
    );
}

/// A request whose `state` is a live handle (DESIGN.md, "Re-entry").
#[test]
fn reentry_is_forwarded_only_when_it_agrees_with_the_flow() {
    let bound = PendingFlow::new(
        Some(s256('a')),
        CLIENT,
        Some(REDIRECT),
        Some("client-state"),
    );
    let unbound = PendingFlow::new(None, CLIENT, Some(REDIRECT), None);
    let no_redirect = PendingFlow::new(Some(s256('a')), CLIENT, None, None);
    let reentry = Got::Forward(Pass::Reentry);
    let mismatch = Got::Refused(Reason::HandleMismatch);
    let without_redirect = format!(
        "response_type=code&client_id={CLIENT}&state={HANDLE}&{}",
        with_s256('a')
    );
    let cases: &[(&PendingFlow, String, bool, AuthorizePolicy, Got)] = &[
        // The same challenge, client and redirect URI.
        (&bound, query(&with_s256('a')), false, STRICT, reentry),
        // The challenge omitted, or sent empty: the code stays bound to the recorded one.
        (&bound, query(""), false, STRICT, reentry),
        (&bound, query("code_challenge="), false, STRICT, reentry),
        (
            &bound,
            query("code_challenge=&code_challenge_method="),
            false,
            STRICT,
            reentry,
        ),
        (
            &bound,
            query("code_challenge_method=S256"),
            false,
            STRICT,
            reentry,
        ),
        // An exempt client's unbound flow re-entered without a challenge.
        (&unbound, query(""), false, EXEMPT, reentry),
        (
            &no_redirect,
            without_redirect.clone(),
            false,
            STRICT,
            reentry,
        ),
        // A different challenge, client or redirect URI: an attempt on someone's flow.
        (&bound, query(&with_s256('b')), false, STRICT, mismatch),
        (&unbound, query(&with_s256('a')), false, EXEMPT, mismatch),
        (
            &bound,
            query(&with_s256('a')).replace("client_id=app", "client_id=evil"),
            false,
            STRICT,
            mismatch,
        ),
        (
            &bound,
            query(&with_s256('a')).replace("app.example", "evil.example"),
            false,
            STRICT,
            mismatch,
        ),
        (&bound, without_redirect.clone(), false, STRICT, mismatch),
        (
            &no_redirect,
            query(&with_s256('a')),
            false,
            STRICT,
            mismatch,
        ),
        // A challenge that does not pass the policy is refused for what it is.
        (
            &bound,
            query("code_challenge=short&code_challenge_method=S256"),
            false,
            STRICT,
            Got::Refused(Reason::MalformedChallenge),
        ),
        (
            &bound,
            query(&format!("code_challenge={}", s256('a').encoded())),
            false,
            STRICT,
            Got::Refused(Reason::UnsupportedMethod),
        ),
        // A pushed request never re-enters a flow.
        (&bound, query(&with_s256('a')), true, STRICT, mismatch),
        // Nor does a request that is no code flow.
        (
            &bound,
            format!("response_type=token&state={HANDLE}"),
            false,
            STRICT,
            mismatch,
        ),
    ];
    for (flow, query, pushed, policy, expected) in cases {
        assert_eq!(
            &decide(query, *pushed, *policy, Some(flow)),
            expected,
            "{query} pushed={pushed} {policy:?}"
        );
    }
}

fn by_uri(query: &str, policy: AuthorizePolicy, pushed: Option<&PendingFlow>, live: bool) -> Got {
    let params = authorize::parse(query.as_bytes(), None).unwrap();
    got(decide_request_uri(&params, policy, pushed, live))
}

/// A request by `request_uri`: the flow comes from the pushed request.
#[test]
fn a_request_uri_goes_by_the_pushed_request() {
    let pushed = PendingFlow::new(Some(s256('a')), CLIENT, Some(REDIRECT), Some(HANDLE));
    let by_ref = "client_id=app&request_uri=urn:x:1".to_owned();
    let reentry = Got::Forward(Pass::Reentry);
    let cases: &[(String, AuthorizePolicy, Option<&PendingFlow>, bool, Got)] = &[
        (by_ref.clone(), PAR, Some(&pushed), true, reentry),
        (
            format!("{by_ref}&{}", with_s256('a')),
            PAR,
            Some(&pushed),
            true,
            reentry,
        ),
        (
            format!("{by_ref}&{}", with_s256('b')),
            PAR,
            Some(&pushed),
            true,
            Got::Refused(Reason::PushedRequestMismatch),
        ),
        (
            format!("{by_ref}&code_challenge_method=S256"),
            PAR,
            Some(&pushed),
            true,
            Got::Refused(Reason::MethodWithoutChallenge),
        ),
        // Another client's pushed request.
        (
            by_ref.replace("client_id=app", "client_id=evil"),
            PAR,
            Some(&pushed),
            true,
            Got::Refused(Reason::PushedRequestMismatch),
        ),
        // Spent: its flow delivered a code, or expired.
        (
            by_ref.clone(),
            PAR,
            Some(&pushed),
            false,
            Got::Refused(Reason::UnknownRequestUri),
        ),
        // Unknown: an exempt client's own request object, else refused.
        (
            by_ref.clone(),
            PAR,
            None,
            false,
            Got::Refused(Reason::UnknownRequestUri),
        ),
        (
            by_ref.clone(),
            AuthorizePolicy {
                par: true,
                ..EXEMPT
            },
            None,
            false,
            Got::Forward(Pass::ExemptRequestObject),
        ),
    ];
    for (query, policy, pushed, live, expected) in cases {
        assert_eq!(
            &by_uri(query, *policy, *pushed, *live),
            expected,
            "{query} {policy:?} known={} live={live}",
            pushed.is_some()
        );
    }
}
