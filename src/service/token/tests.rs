//! The token decision table (DESIGN.md), cell by cell, and the headers a rebuilt request
//! keeps.

use super::*;
use crate::pkce::{ChallengeMethod, CodeChallenge};

const CLIENT: &str = "app";

fn verifier(c: char) -> CodeVerifier {
    CodeVerifier::parse(&c.to_string().repeat(43)).unwrap()
}

fn client(name: &str) -> token::ClientName {
    token::ClientName {
        name: name.to_owned(),
        raw: None,
    }
}

/// The code's kind in DESIGN.md's table (and burned, which is refused like redeemed).
#[derive(Clone, Copy, Debug)]
enum Code {
    Bound,
    Unbound,
    Redeemed,
    RedeemedUnbound,
    Burned,
    Unknown,
}

/// What the request sends as `code_verifier`.
#[derive(Clone, Copy, Debug)]
enum Sent {
    Matching,
    Other,
    Malformed,
    Absent,
}

/// Whom the request names as the client.
#[derive(Clone, Copy, Debug)]
enum Who {
    Issued,
    Another,
    Nobody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Redeem(Pass),
    Record(Pass),
    /// The reason, and whether the attempt counts towards burning the code.
    Refuse(Reason, bool),
}

const fn refuse(reason: Reason) -> Expected {
    Expected::Refuse(reason, false)
}

const fn counted(reason: Reason) -> Expected {
    Expected::Refuse(reason, true)
}

fn decide(code: Code, sent: Sent, who: Who, exempt: bool, enforce: bool) -> Expected {
    let right = verifier('a');
    let challenge = CodeChallenge::from_verifier(&right, ChallengeMethod::S256);
    let record = |challenge: Option<CodeChallenge>, state| {
        CodeRecord::new(CodeBinding::new(challenge, CLIENT), state)
    };
    let record = match code {
        Code::Bound => Some(record(Some(challenge), CodeState::Live)),
        Code::Unbound => Some(record(None, CodeState::Live)),
        Code::Redeemed => Some(record(Some(challenge), CodeState::Redeemed)),
        Code::RedeemedUnbound => Some(record(None, CodeState::Redeemed)),
        Code::Burned => Some(record(Some(challenge), CodeState::Burned)),
        Code::Unknown => None,
    };
    let other = verifier('b');
    let malformed = CodeVerifier::parse("short");
    let verifier = match sent {
        Sent::Matching => Verifier::Present(&right),
        Sent::Other => Verifier::Present(&other),
        Sent::Malformed => Verifier::of(Some(&malformed)),
        Sent::Absent => Verifier::of(None),
    };
    let (issued, another) = (client(CLIENT), client("other"));
    let client = match who {
        Who::Issued => Some(&issued),
        Who::Another => Some(&another),
        Who::Nobody => None,
    };
    let request = TokenRequest { client, verifier };
    let policy = TokenPolicy {
        exempt,
        count_failures: enforce,
    };
    match decide_token(record.as_ref(), &request, policy) {
        TokenDecision::Redeem { pass, client } => {
            assert_eq!(client, CLIENT);
            Expected::Redeem(pass)
        }
        TokenDecision::RecordRedemption { pass, client } => {
            assert_eq!(Some(client), request.client.map(|c| c.name.as_str()));
            Expected::Record(pass)
        }
        TokenDecision::Refuse { reason, counts } => Expected::Refuse(reason, counts),
    }
}

/// Every cell of DESIGN.md's token decision table, with the client check, the count of
/// failed attempts, and burned codes: enforce mode, a client that is not exempt.
#[test]
fn the_decision_table() {
    use Code::*;
    use Sent::{Absent, Malformed, Matching, Other};
    use Who::{Another, Issued, Nobody};
    let table: &[(Code, Sent, Who, Expected)] = &[
        // bound: verify, a match forwards; no verifier: required. Every refusal counts as a
        // failed attempt.
        (Bound, Matching, Issued, Expected::Redeem(Pass::Verified)),
        (Bound, Other, Issued, counted(Reason::VerifierMismatch)),
        (Bound, Malformed, Issued, counted(Reason::MalformedVerifier)),
        (Bound, Absent, Issued, counted(Reason::VerifierRequired)),
        (Bound, Matching, Another, counted(Reason::WrongClient)),
        (Bound, Absent, Another, counted(Reason::WrongClient)),
        (Bound, Matching, Nobody, counted(Reason::MissingClient)),
        // unbound: a verifier is the downgrade; none forwards.
        (Unbound, Matching, Issued, refuse(Reason::Downgrade)),
        (Unbound, Other, Issued, refuse(Reason::Downgrade)),
        (Unbound, Malformed, Issued, refuse(Reason::Downgrade)),
        (
            Unbound,
            Absent,
            Issued,
            Expected::Redeem(Pass::UnboundRedeemed),
        ),
        (Unbound, Absent, Another, refuse(Reason::WrongClient)),
        (Unbound, Absent, Nobody, refuse(Reason::MissingClient)),
        // redeemed: code reuse, with or without a verifier, whoever asks.
        (Redeemed, Matching, Issued, refuse(Reason::CodeReused)),
        (Redeemed, Absent, Issued, refuse(Reason::CodeReused)),
        (RedeemedUnbound, Absent, Issued, refuse(Reason::CodeReused)),
        (
            RedeemedUnbound,
            Matching,
            Another,
            refuse(Reason::CodeReused),
        ),
        // burned after too many failures.
        (Burned, Matching, Issued, refuse(Reason::CodeBurned)),
        (Burned, Absent, Issued, refuse(Reason::CodeBurned)),
        // unknown: fail closed for a client that is not exempt.
        (Unknown, Matching, Issued, refuse(Reason::UnknownCode)),
        (Unknown, Malformed, Issued, refuse(Reason::UnknownCode)),
        (Unknown, Absent, Issued, refuse(Reason::UnknownCode)),
        (Unknown, Absent, Nobody, refuse(Reason::UnknownCode)),
    ];
    for &(code, sent, who, expected) in table {
        let got = decide(code, sent, who, false, true);
        assert_eq!(got, expected, "{code:?} verifier={sent:?} client={who:?}");
    }
}

/// The unknown row for an exempt client: forwarded (and recorded redeemed) only without a
/// verifier.
#[test]
fn unknown_codes_pass_only_for_an_exempt_client_without_verifier() {
    let cases = [
        (
            Sent::Absent,
            Who::Issued,
            Expected::Record(Pass::ExemptUnknownCode),
        ),
        (Sent::Matching, Who::Issued, refuse(Reason::UnknownCode)),
        (Sent::Malformed, Who::Issued, refuse(Reason::UnknownCode)),
        // Exemption is the requesting client's: with no client there is none.
        (Sent::Absent, Who::Nobody, refuse(Reason::UnknownCode)),
    ];
    for (sent, who, expected) in cases {
        let got = decide(Code::Unknown, sent, who, true, true);
        assert_eq!(got, expected, "verifier={sent:?} client={who:?}");
    }
}

/// An exempt client's known codes follow the table like any other's.
#[test]
fn exemption_does_not_change_known_codes() {
    for (code, sent, expected) in [
        (Code::Bound, Sent::Absent, counted(Reason::VerifierRequired)),
        (Code::Unbound, Sent::Matching, refuse(Reason::Downgrade)),
        (
            Code::Unbound,
            Sent::Absent,
            Expected::Redeem(Pass::UnboundRedeemed),
        ),
    ] {
        let got = decide(code, sent, Who::Issued, true, true);
        assert_eq!(got, expected, "{code:?} verifier={sent:?}");
    }
}

/// Under report mode the request is forwarded: no refusal counts.
#[test]
fn report_mode_counts_no_failures() {
    for (sent, who, reason) in [
        (Sent::Other, Who::Issued, Reason::VerifierMismatch),
        (Sent::Absent, Who::Issued, Reason::VerifierRequired),
        (Sent::Matching, Who::Another, Reason::WrongClient),
    ] {
        let got = decide(Code::Bound, sent, who, false, false);
        assert_eq!(got, refuse(reason), "verifier={sent:?} client={who:?}");
    }
}

/// A Basic user whose raw reading is the issued client is that client.
#[test]
fn either_reading_of_a_basic_user_is_the_client() {
    let right = verifier('a');
    let challenge = CodeChallenge::from_verifier(&right, ChallengeMethod::S256);
    let record = CodeRecord::new(CodeBinding::new(Some(challenge), "a b"), CodeState::Live);
    let basic = token::ClientName {
        name: "a+b".to_owned(),
        raw: Some("a b".to_owned()),
    };
    let request = TokenRequest {
        client: Some(&basic),
        verifier: Verifier::Present(&right),
    };
    let policy = TokenPolicy {
        exempt: false,
        count_failures: true,
    };
    assert_eq!(
        decide_token(Some(&record), &request, policy),
        TokenDecision::Redeem {
            pass: Pass::Verified,
            client: "a b"
        }
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
