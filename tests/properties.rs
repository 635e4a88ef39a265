//! Property tests of the public PKCE types: for any valid verifier, a challenge made from it
//! accepts exactly that verifier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn verifier() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{43,128}"
}

proptest! {
    #[test]
    fn a_challenge_accepts_exactly_its_own_verifier(v in verifier(), w in verifier()) {
        let own = CodeVerifier::parse(&v).unwrap();
        let other = CodeVerifier::parse(&w).unwrap();
        for method in [ChallengeMethod::S256, ChallengeMethod::Plain] {
            let challenge = CodeChallenge::from_verifier(&own, method);
            prop_assert!(challenge.verify(&own));
            prop_assert_eq!(challenge.verify(&other), v == w);
            // What a client sends parses back to the same challenge.
            let parsed = CodeChallenge::parse(&challenge.encoded(), method).unwrap();
            prop_assert!(parsed.verify(&own));
            prop_assert_eq!(parsed.verify(&other), v == w);
        }
    }

    #[test]
    fn verifiers_outside_the_grammar_are_refused(v in "[A-Za-z0-9._~-]{0,42}|[A-Za-z0-9._~-]{129,160}|[A-Za-z0-9._~-]{10,40}[^A-Za-z0-9._~-][A-Za-z0-9._~-]{40}") {
        prop_assert!(CodeVerifier::parse(&v).is_err());
    }

    #[test]
    fn an_s256_challenge_is_43_base64url_characters(v in verifier()) {
        let challenge = CodeChallenge::from_verifier(&CodeVerifier::parse(&v).unwrap(), ChallengeMethod::S256);
        let encoded = challenge.encoded();
        prop_assert_eq!(encoded.len(), 43);
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
