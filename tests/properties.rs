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

/// The fuzz model of the token endpoint (`tower_pkce::fuzzing`, feature `fuzzing`) over
/// generated requests: every reading in `fuzzing::READINGS` of what the layer forwards finds
/// what the layer read. Bodies mix the spellings each reading has its own way with (in names,
/// where the layer must refuse them, and escaped inside values, where a server that decodes
/// the whole form first would find them).
#[cfg(feature = "fuzzing")]
mod fuzz_model {
    use proptest::prelude::*;
    use tower_pkce::fuzzing;

    /// Names: the decision parameters and others, spelled as RFC 6749 has them.
    const NAMES: &[&str] = &[
        "code",
        "code_verifier",
        "client_id",
        "redirect_uri",
        "scope",
        "refresh_token",
        "api-version",
        "x",
    ];

    /// Names as each reading respells the decision parameters: the layer must refuse them.
    const RESPELT: &[&str] = &[
        // qs and Rack
        "[code]",
        "code[]",
        "code%5B0%5D",
        // PHP
        "+code",
        "code%00",
        "client.id",
        "client[id",
        // any case
        "CODE",
        "cl%C4%B1ent_id",
        // `;` separates too
        "x=1;code",
        // the whole form decoded first
        "x=1%26code",
        // ASP.NET
        "%u0063ode",
        // binders
        "codeVerifier",
        "client-id",
        "grant.type",
    ];

    /// Values: plain ones, and each reading's respellings escaped so that only a server
    /// decoding the whole form (once) sees a separator there.
    const VALUES: &[&str] = &[
        "",
        "v",
        "a+b",
        "a%2Bb",
        "%FF",
        "%00",
        "r;code=victim",
        "%26code%3Dvictim",
        "%3Bcode%3Dvictim",
        "%26code",
        "%26code%3D",
        "%26%5Bcode%5D%3Dvictim",
        "%26code%5B%5D%3Dvictim",
        "%26+code%3Dvictim",
        "%26code%2500%3Dvictim",
        "%26client%5Bid%3Devil",
        "%26CODE%3Dvictim",
        "%26cl%C4%B1ent_id%3Devil",
        "%26%25u0063ode%3Dvictim",
        "%26codeVerifier%3Dv",
        "%26grant_type%3Dauthorization_code",
        "%2526code%253Dvictim",
        "%2526%255Bcode%255D%253Dvictim",
        "%2526grant%255Btype%253Dauthorization_code",
        "%2526%2525u0063ode%253Dvictim",
        "%252526code%25253Dvictim",
        "%26%2Bcode%3Dvictim",
        "%26grant%2Btype%3Dauthorization_code",
        "%26code%2500%3D",
        "100%25",
        "%u0063",
        "https%3A%2F%2Fa%2Fcb%3Fx%3D1%26y%3D2",
    ];

    const GRANTS: &[&str] = &[
        "authorization_code",
        "Authorization_Code",
        "refresh_token",
        "client_credentials",
        "authorization_code%00",
        "authoriz%C4%B1ation_code",
        "",
    ];

    /// A token request body, or query string: a grant (mostly) among up to six pairs, each
    /// name and value from the lists above or free printable text, joined by `&` or now and
    /// then `;`.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let text = || {
            prop_oneof![
                8 => proptest::sample::select(NAMES).prop_map(str::to_owned),
                2 => proptest::sample::select(RESPELT).prop_map(str::to_owned),
                1 => "[ -~]{0,8}",
            ]
        };
        let value = || {
            prop_oneof![
                3 => proptest::sample::select(VALUES).prop_map(str::to_owned),
                1 => "[ -~]{0,12}",
            ]
        };
        (
            proptest::option::weighted(0.8, proptest::sample::select(GRANTS)),
            any::<prop::sample::Index>(),
            prop::collection::vec((text(), value(), prop::bool::weighted(0.1)), 0..5),
        )
            .prop_map(|(grant, at, pairs)| {
                let mut pairs: Vec<(String, String, bool)> = pairs;
                if let Some(grant) = grant {
                    let at = at.index(pairs.len() + 1);
                    pairs.insert(at, ("grant_type".into(), grant.into(), false));
                }
                let mut body = String::new();
                for (i, (name, value, semicolon)) in pairs.iter().enumerate() {
                    if i > 0 {
                        body.push(if *semicolon { ';' } else { '&' });
                    }
                    body.push_str(&format!("{name}={value}"));
                }
                body.into_bytes()
            })
    }

    /// Every reading of the model is in the table the fuzz target checks.
    #[test]
    fn the_model_has_every_reading() {
        let labels: Vec<&str> = fuzzing::READINGS.iter().map(|(l, _)| *l).collect();
        for wanted in [
            "RFC 6749",
            "qs",
            "PHP",
            "any case",
            "`;`",
            "decoded",
            "%uXXXX",
            "binders",
            "fixed point",
        ] {
            assert!(
                labels.iter().any(|l| l.contains(wanted)),
                "no reading of {wanted}: {labels:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// As a body and as a query string, through every reading.
        #[test]
        fn every_reading_of_a_forwarded_token_request_finds_what_the_layer_read(body in body()) {
            fuzzing::token_form(&body);
        }

        /// The same parameters sent as JSON (decoded values as strings).
        #[test]
        fn a_json_token_request_too(
            members in prop::collection::vec(
                (
                    proptest::sample::select([NAMES, RESPELT].concat()),
                    proptest::sample::select(VALUES),
                ),
                0..5,
            ),
            grant in proptest::sample::select(GRANTS),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("grant_type".into(), grant.into());
            for (name, value) in members {
                let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                object.insert(name.into_owned(), value.into_owned().into());
            }
            fuzzing::token_json(&serde_json::to_vec(&object).unwrap());
        }

        /// An authorization request whose `state` may be in the query, the body, or both
        /// (identical copies, spelled differently), rewritten with the handle.
        #[test]
        fn the_handle_replaces_every_copy_of_the_state(
            state in "[ -~]{0,6}",
            in_query in any::<bool>(),
            in_body in any::<bool>(),
            spelling in proptest::sample::select(&["state", "STATE", "state[]", "%73tate"][..]),
            others in "(&[a-z_]{1,6}=[a-z%0-9]{0,4}){0,3}",
        ) {
            let pair = |name: &str| {
                let value: String = form_urlencoded::byte_serialize(state.as_bytes()).collect();
                format!("{name}={value}")
            };
            let query = format!(
                "response_type=code&client_id=app{}",
                if in_query { format!("&{}", pair("state")) } else { String::new() },
            );
            let body = format!(
                "x=1{others}{}",
                if in_body { format!("&{}", pair(spelling)) } else { String::new() },
            );
            fuzzing::authorize(query.as_bytes(), Some(body.as_bytes()));
        }
    }
}
