//! PKCE domain types: [`CodeChallenge`], [`CodeVerifier`] and [`ChallengeMethod`].
//!
//! These are pure and synchronous: they parse and verify values exactly as
//! [RFC 7636](https://www.rfc-editor.org/rfc/rfc7636) describes, and can be used on their own.
//!
//! ```
//! use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};
//!
//! // RFC 7636, Appendix B.
//! let verifier = CodeVerifier::parse("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").unwrap();
//! let challenge =
//!     CodeChallenge::parse("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", ChallengeMethod::S256)
//!         .unwrap();
//! assert!(challenge.verify(&verifier));
//! ```

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Shortest code verifier or plain challenge (RFC 7636 §4.1).
pub(crate) const MIN_LEN: usize = 43;
/// Longest code verifier or plain challenge (RFC 7636 §4.1).
pub(crate) const MAX_LEN: usize = 128;
/// Length of an S256 challenge: base64url without padding of a 32-byte digest.
const S256_LEN: usize = 43;

/// How a code challenge was derived from its verifier
/// ([RFC 7636 §4.2](https://www.rfc-editor.org/rfc/rfc7636#section-4.2)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChallengeMethod {
    /// `S256`: `BASE64URL(SHA256(ASCII(code_verifier)))`.
    S256,
    /// `plain`: the challenge is the verifier. RFC 9700 §2.1.1 says it SHOULD NOT be used.
    Plain,
}

impl ChallengeMethod {
    /// Parses a `code_challenge_method` value. The comparison is case-sensitive
    /// (RFC 7636 §4.3): `s256` is not `S256`.
    pub fn parse(value: &str) -> Result<Self, PkceError> {
        match value {
            "S256" => Ok(Self::S256),
            "plain" => Ok(Self::Plain),
            _ => Err(PkceError::UnsupportedMethod),
        }
    }

    /// The method's name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S256 => "S256",
            Self::Plain => "plain",
        }
    }
}

impl fmt::Display for ChallengeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a PKCE value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PkceError {
    /// Shorter than 43 or longer than 128 characters (an S256 challenge: not exactly 43).
    InvalidLength,
    /// A character outside `[A-Za-z0-9-._~]` (an S256 challenge: outside base64url).
    InvalidCharacter,
    /// An S256 challenge that is not the canonical base64url encoding of 32 bytes, so no
    /// verifier can ever match it.
    NonCanonical,
    /// A `code_challenge_method` other than `S256` or `plain`.
    UnsupportedMethod,
}

impl fmt::Display for PkceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidLength => {
                "must be 43 to 128 characters long (S256 challenges: exactly 43)"
            }
            Self::InvalidCharacter => "contains a character outside [A-Za-z0-9-._~]",
            Self::NonCanonical => "is not the base64url encoding of a SHA-256 digest",
            Self::UnsupportedMethod => "is not a supported code_challenge_method",
        })
    }
}

impl std::error::Error for PkceError {}

/// `unreserved` of RFC 3986, the alphabet of verifiers and plain challenges (RFC 7636 §4.1).
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check_unreserved(value: &str) -> Result<(), PkceError> {
    if !(MIN_LEN..=MAX_LEN).contains(&value.len()) {
        return Err(PkceError::InvalidLength);
    }
    if !value.bytes().all(is_unreserved) {
        return Err(PkceError::InvalidCharacter);
    }
    Ok(())
}

/// A `code_verifier` ([RFC 7636 §4.1](https://www.rfc-editor.org/rfc/rfc7636#section-4.1)):
/// 43 to 128 characters of `[A-Za-z0-9-._~]`.
///
/// It is a secret: its `Debug` output is redacted, it is deliberately not `Clone`, and the raw
/// value is only reachable through [`CodeVerifier::secret`].
pub struct CodeVerifier(Box<str>);

impl CodeVerifier {
    /// Checks the syntax of a verifier.
    pub fn parse(value: &str) -> Result<Self, PkceError> {
        check_unreserved(value)?;
        Ok(Self(value.into()))
    }

    /// A fresh random verifier of 43 characters (32 random bytes), as a client would make one.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// The verifier itself. Do not log it.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CodeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeVerifier([redacted])")
    }
}

/// A `code_challenge` with its method
/// ([RFC 7636 §4.2](https://www.rfc-editor.org/rfc/rfc7636#section-4.2)).
///
/// An S256 challenge is kept as its 32-byte digest, so verification is one hash and one
/// constant-time comparison of fixed-size values.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CodeChallenge(Inner);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Inner {
    S256([u8; 32]),
    Plain(Box<str>),
}

impl CodeChallenge {
    /// Parses a challenge sent with the given method.
    ///
    /// S256: exactly 43 characters of base64url without padding that decode to 32 bytes in
    /// canonical form. Plain: 43 to 128 characters of `[A-Za-z0-9-._~]`.
    pub fn parse(value: &str, method: ChallengeMethod) -> Result<Self, PkceError> {
        match method {
            ChallengeMethod::S256 => {
                if value.len() != S256_LEN {
                    return Err(PkceError::InvalidLength);
                }
                if !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(PkceError::InvalidCharacter);
                }
                let mut digest = [0u8; 32];
                // The engine rejects set trailing bits, i.e. non-canonical encodings.
                match URL_SAFE_NO_PAD.decode_slice(value, &mut digest) {
                    Ok(32) => Ok(Self(Inner::S256(digest))),
                    _ => Err(PkceError::NonCanonical),
                }
            }
            ChallengeMethod::Plain => {
                check_unreserved(value)?;
                Ok(Self(Inner::Plain(value.into())))
            }
        }
    }

    /// The challenge a client derives from `verifier` with `method`.
    pub fn from_verifier(verifier: &CodeVerifier, method: ChallengeMethod) -> Self {
        match method {
            ChallengeMethod::S256 => Self(Inner::S256(Sha256::digest(verifier.secret()).into())),
            ChallengeMethod::Plain => Self(Inner::Plain(verifier.secret().into())),
        }
    }

    /// The method this challenge was issued with.
    pub fn method(&self) -> ChallengeMethod {
        match self.0 {
            Inner::S256(_) => ChallengeMethod::S256,
            Inner::Plain(_) => ChallengeMethod::Plain,
        }
    }

    /// Checks `verifier` against this challenge in constant time
    /// ([RFC 7636 §4.6](https://www.rfc-editor.org/rfc/rfc7636#section-4.6)).
    pub fn verify(&self, verifier: &CodeVerifier) -> bool {
        match &self.0 {
            Inner::S256(expected) => {
                let actual: [u8; 32] = Sha256::digest(verifier.secret()).into();
                bool::from(actual.ct_eq(expected))
            }
            Inner::Plain(expected) => {
                bool::from(verifier.secret().as_bytes().ct_eq(expected.as_bytes()))
            }
        }
    }

    /// The challenge as it appears on the wire (base64url for S256).
    pub fn encoded(&self) -> String {
        match &self.0 {
            Inner::S256(digest) => URL_SAFE_NO_PAD.encode(digest),
            Inner::Plain(value) => value.to_string(),
        }
    }

    /// A compact encoding for stores: one method byte, then the digest or the plain value.
    /// How many bytes [`CodeChallenge::write_to`] writes.
    pub(crate) fn written_len(&self) -> usize {
        match &self.0 {
            Inner::S256(digest) => 1 + digest.len(),
            Inner::Plain(value) => 2 + value.len(),
        }
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Inner::S256(digest) => {
                out.push(b'S');
                out.extend_from_slice(digest);
            }
            Inner::Plain(value) => {
                out.push(b'P');
                out.push(value.len() as u8); // at most 128, checked at parse
                out.extend_from_slice(value.as_bytes());
            }
        }
    }

    /// Reverses [`CodeChallenge::write_to`]; returns the challenge and the bytes read.
    pub(crate) fn read_from(bytes: &[u8]) -> Option<(Self, usize)> {
        match bytes.split_first()? {
            (b'S', rest) => {
                let digest: [u8; 32] = rest.get(..32)?.try_into().ok()?;
                Some((Self(Inner::S256(digest)), 33))
            }
            (b'P', rest) => {
                let (&len, rest) = rest.split_first()?;
                let value = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
                let challenge = Self::parse(value, ChallengeMethod::Plain).ok()?;
                Some((challenge, 2 + usize::from(len)))
            }
            _ => None,
        }
    }
}

impl fmt::Debug for CodeChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The challenge is not a secret, but there is no reason to spread it into logs.
        write!(f, "CodeChallenge({})", self.method())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc7636_appendix_b() {
        let verifier = CodeVerifier::parse(RFC_VERIFIER).unwrap();
        let challenge = CodeChallenge::parse(RFC_CHALLENGE, ChallengeMethod::S256).unwrap();
        assert!(challenge.verify(&verifier));
        assert_eq!(challenge.encoded(), RFC_CHALLENGE);
        assert_eq!(
            CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256),
            challenge
        );
        let other = CodeVerifier::parse(&"a".repeat(43)).unwrap();
        assert!(!challenge.verify(&other));
    }

    #[test]
    fn verifier_syntax() {
        let cases: &[(String, Result<(), PkceError>)] = &[
            ("a".repeat(42), Err(PkceError::InvalidLength)),
            ("a".repeat(43), Ok(())),
            ("a".repeat(128), Ok(())),
            ("a".repeat(129), Err(PkceError::InvalidLength)),
            (String::new(), Err(PkceError::InvalidLength)),
            (format!("{}-._~", "Az09".repeat(10)), Ok(())),
            (
                format!("{}+", "a".repeat(42)),
                Err(PkceError::InvalidCharacter),
            ),
            (
                format!("{}/", "a".repeat(42)),
                Err(PkceError::InvalidCharacter),
            ),
            (
                format!("{}=", "a".repeat(42)),
                Err(PkceError::InvalidCharacter),
            ),
            (
                format!("{} ", "a".repeat(42)),
                Err(PkceError::InvalidCharacter),
            ),
            (
                format!("{}é", "a".repeat(41)),
                Err(PkceError::InvalidCharacter),
            ),
        ];
        for (input, expected) in cases {
            let got = CodeVerifier::parse(input).map(|_| ());
            assert_eq!(&got, expected, "verifier {input:?}");
        }
    }

    #[test]
    fn s256_challenge_syntax() {
        let cases: &[(&str, Result<(), PkceError>)] = &[
            (RFC_CHALLENGE, Ok(())),
            (&RFC_CHALLENGE[..42], Err(PkceError::InvalidLength)),
            (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cMA",
                Err(PkceError::InvalidLength),
            ),
            (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM",
                Err(PkceError::InvalidCharacter),
            ),
            (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw/cM",
                Err(PkceError::InvalidCharacter),
            ),
            (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c=",
                Err(PkceError::InvalidCharacter),
            ),
            (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c.",
                Err(PkceError::InvalidCharacter),
            ),
            // Last character outside AEIMQUYcgkosw048: trailing bits set.
            (
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN",
                Err(PkceError::NonCanonical),
            ),
        ];
        for (input, expected) in cases {
            let got = CodeChallenge::parse(input, ChallengeMethod::S256).map(|_| ());
            assert_eq!(&got, expected, "challenge {input:?}");
        }
        for last in "AEIMQUYcgkosw048".chars() {
            let value = format!("{}{last}", &RFC_CHALLENGE[..42]);
            assert!(
                CodeChallenge::parse(&value, ChallengeMethod::S256).is_ok(),
                "{value}"
            );
        }
    }

    #[test]
    fn plain_challenge() {
        let value = "a-b.c_d~".repeat(6);
        let challenge = CodeChallenge::parse(&value, ChallengeMethod::Plain).unwrap();
        assert_eq!(challenge.method(), ChallengeMethod::Plain);
        assert!(challenge.verify(&CodeVerifier::parse(&value).unwrap()));
        assert!(!challenge.verify(&CodeVerifier::parse(&"a".repeat(48)).unwrap()));
        assert_eq!(
            CodeChallenge::parse(&"a".repeat(42), ChallengeMethod::Plain),
            Err(PkceError::InvalidLength)
        );
        // A plain challenge never verifies as S256 and the reverse.
        let verifier = CodeVerifier::parse(RFC_VERIFIER).unwrap();
        let as_plain = CodeChallenge::parse(RFC_CHALLENGE, ChallengeMethod::Plain).unwrap();
        assert!(!as_plain.verify(&verifier));
    }

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!(ChallengeMethod::parse("S256"), Ok(ChallengeMethod::S256));
        assert_eq!(ChallengeMethod::parse("plain"), Ok(ChallengeMethod::Plain));
        for bad in ["s256", "PLAIN", "Plain", "S512", "", " S256"] {
            assert_eq!(
                ChallengeMethod::parse(bad),
                Err(PkceError::UnsupportedMethod),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn verifier_debug_is_redacted() {
        let verifier = CodeVerifier::parse(RFC_VERIFIER).unwrap();
        let debug = format!("{verifier:?}");
        assert!(!debug.contains(RFC_VERIFIER), "{debug}");
        let challenge = CodeChallenge::parse(RFC_CHALLENGE, ChallengeMethod::S256).unwrap();
        assert!(!format!("{challenge:?}").contains(RFC_CHALLENGE));
    }

    #[test]
    fn generated_verifiers_are_valid_and_distinct() {
        let a = CodeVerifier::generate();
        let b = CodeVerifier::generate();
        assert!(CodeVerifier::parse(a.secret()).is_ok());
        assert_ne!(a.secret(), b.secret());
    }

    #[test]
    fn store_encoding_round_trips() {
        for challenge in [
            CodeChallenge::parse(RFC_CHALLENGE, ChallengeMethod::S256).unwrap(),
            CodeChallenge::parse(&"x".repeat(128), ChallengeMethod::Plain).unwrap(),
        ] {
            let mut out = Vec::new();
            challenge.write_to(&mut out);
            let (back, used) = CodeChallenge::read_from(&out).unwrap();
            assert_eq!(back, challenge);
            assert_eq!(used, out.len());
        }
        assert!(CodeChallenge::read_from(b"S12").is_none());
        assert!(CodeChallenge::read_from(b"").is_none());
        assert!(CodeChallenge::read_from(b"P\x05ab").is_none());
    }
}
