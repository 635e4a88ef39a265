//! A form read completely, or refused, and encoded afresh: what the token and PAR endpoints
//! forward is what the layer read (DESIGN.md, "Forward only what was verified"). Names are
//! checked against the ways lenient servers read them (qs, Rack, PHP, case, separators), and
//! a form is checked against servers that decode it whole before splitting it.

use std::borrow::Cow;

use super::error::Reason;
use super::params::{self, Param};

/// The parameters whose names must be spelled exactly so: a name that some server could read
/// as one of these ([`read_alike`]) but that is not it (`Code`, `grant.type`, `client-id`) is
/// refused. None of them may be allowed in the query string either.
const OAUTH_NAMES: &[&str] = &[
    "grant_type",
    "code",
    "code_verifier",
    "redirect_uri",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "refresh_token",
    "username",
    "password",
    "assertion",
    "device_code",
    "scope",
    "resource",
    "audience",
    // Authorization request parameters, for pushed requests (RFC 9126).
    "state",
    "response_type",
    "response_mode",
    "code_challenge",
    "code_challenge_method",
    "request",
    "request_uri",
    "nonce",
];

/// The most parameters a token request may carry: real ones have under fifteen, and the
/// pairwise name checks stay small.
const MAX_PARAMS: usize = 32;

/// RFC 6749 Appendix A: `name = 1*name-char`, `name-char = "-" / "." / "_" / DIGIT / ALPHA`.
pub(crate) fn is_rfc_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Whether some server could read two names as one: equal once ASCII-lowercased with `.`, `-`
/// and `_` left out (PHP turns `.` into `_`, some binders ignore case or separators).
pub(crate) fn read_alike(a: &[u8], b: &[u8]) -> bool {
    fn fold(name: &[u8]) -> impl Iterator<Item = u8> + '_ {
        name.iter()
            .filter(|b| !matches!(b, b'.' | b'-' | b'_'))
            .map(u8::to_ascii_lowercase)
    }
    fold(a).eq(fold(b))
}

/// RFC 6749 Appendix A `VSCHAR` (%x20-7E): the syntax of `code` and `client_id`.
pub(crate) fn is_vschar(value: &[u8]) -> bool {
    value.iter().all(|&b| (0x20..=0x7e).contains(&b))
}

/// Whether `name` is, or reads alike to, a parameter of the OAuth token request: such a name
/// is never allowed in the token endpoint's query string.
pub(crate) fn is_oauth_name(name: &str) -> bool {
    OAUTH_NAMES
        .iter()
        .any(|known| read_alike(name.as_bytes(), known.as_bytes()))
}

/// Appends `name=value` to a form, `value` form-encoded. `name` is an RFC 6749 name, whose
/// characters need no encoding.
fn append_pair(form: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    if !form.is_empty() {
        form.push(b'&');
    }
    form.extend_from_slice(name);
    form.push(b'=');
    // A value of bytes the encoding keeps as they are (a verifier, most codes) is copied whole.
    let kept = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
    if value.iter().all(kept) {
        form.extend_from_slice(value);
    } else {
        form_urlencoded::byte_serialize(value)
            .for_each(|piece| form.extend_from_slice(piece.as_bytes()));
    }
}

/// The query string to forward with a token request: only the parameters named in `allowed`
/// (spelled exactly so, once each), re-encoded. Any other parameter is refused, however it is
/// spelled: a lenient upstream may read a token parameter from the query (`[code]` in qs and
/// Rack, `code%00` in PHP).
pub(crate) fn forward_query(query: &[u8], allowed: &[Box<str>]) -> Result<Vec<u8>, Reason> {
    let list = params::parse(query);
    if list.len() > MAX_PARAMS {
        return Err(Reason::TooManyParameters);
    }
    let mut names: Vec<Cow<'_, [u8]>> = Vec::with_capacity(list.len());
    let mut form = Vec::new();
    for param in &list {
        let name = params::raw_name(query, param);
        if !allowed.iter().any(|a| a.as_bytes() == &*name) {
            return Err(Reason::ParametersInQuery);
        }
        if names.contains(&name) {
            return Err(Reason::DuplicateParameter);
        }
        append_pair(&mut form, &name, &param.value);
        names.push(name);
    }
    if !decoded_whole_agrees(&form, |_| None) {
        return Err(Reason::ParametersInQuery);
    }
    Ok(form)
}

/// The parameters the token decision reads.
const DECISION_NAMES: [&str; 4] = ["grant_type", "code", "code_verifier", "client_id"];

/// Decoding rounds after which a form that still changes is taken as a trick: no client
/// encodes a token request this many times.
const MAX_DECODING_ROUNDS: usize = 8;

/// `form` as a server reads it that percent-decodes the whole form (`+` in the first round,
/// `%XX` and ASP.NET's `%uXXXX` in every round) until nothing changes, or `None` when it
/// still changes after [`MAX_DECODING_ROUNDS`].
fn decoded_fully(form: &[u8]) -> Option<String> {
    let mut text = String::from_utf8_lossy(&params::decode(form)).into_owned();
    for _ in 0..MAX_DECODING_ROUNDS {
        if !text.contains('%') {
            return Some(text);
        }
        let wide = super::path::decode_percent_u(&text);
        let next = percent_encoding::percent_decode_str(&wide)
            .decode_utf8_lossy()
            .into_owned();
        if next == text {
            return Some(text);
        }
        text = next;
    }
    None
}

/// The names a lenient server may read `name` as: qs's and Rack's (leading brackets dropped,
/// cut at the next one: `[code]`, `code[]`), and PHP's (cut at a NUL, leading spaces dropped,
/// a closed `[...]` suffix dropped, an unclosed `[`, `.` and space read as `_`), each under
/// Unicode compatibility and case folding; and each again with `+` read as a space, as a
/// server that decodes the whole form and then parses it as a form again reads it
/// (`parse_str(urldecode($body))`: `%2Bcode` is ` code`, then `code`; found in review).
fn lax_names(name: &str) -> [String; 4] {
    fn both(name: &str) -> [String; 2] {
        let qs = name.trim_start_matches(['[', ']']);
        let qs = qs.split(['[', ']']).next().unwrap_or_default();
        let php = name.split('\0').next().unwrap_or_default().trim_start();
        let php = match php.find('[') {
            Some(open) if php.get(open..).is_some_and(|rest| rest.contains(']')) => {
                php.get(..open).unwrap_or_default()
            }
            _ => php,
        };
        let php = php.replace(['[', '.', ' '], "_");
        [
            super::path::ascii_reading(qs),
            super::path::ascii_reading(&php),
        ]
    }
    let [qs, php] = both(name);
    let [qs_spaced, php_spaced] = both(&name.replace('+', " "));
    [qs, php, qs_spaced, php_spaced]
}

/// Whether a server that percent-decodes a whole form before splitting it (on `&` and `;`),
/// and then reads its names loosely ([`lax_names`]), reads the same decision parameters as
/// `ours` (absent ones absent): an encoded `%26code%3D` inside another value would be a
/// `code` to it, and so would `%2526%255Bcode%255D%253D` to one that decodes twice.
pub(crate) fn decoded_whole_agrees<'v>(
    form: &[u8],
    ours: impl Fn(&str) -> Option<&'v [u8]>,
) -> bool {
    decoded_whole_agrees_on(form, &DECISION_NAMES, ours)
}

/// [`decoded_whole_agrees`] for the parameters `names`.
fn decoded_whole_agrees_on<'v>(
    form: &[u8],
    names: &[&str],
    ours: impl Fn(&str) -> Option<&'v [u8]>,
) -> bool {
    // Only an escaped `&`, `;` or `=`, or an escaped `%` (which may hide one), can split the
    // decoded form elsewhere than the layer did (names are sent plain): without one (most
    // forms), both readings are the same.
    let splits_elsewhere = form.windows(3).any(|w| {
        w.first() == Some(&b'%')
            && matches!(
                w.get(1..),
                Some(b"26" | b"25" | b"3B" | b"3b" | b"3D" | b"3d")
            )
    });
    if !splits_elsewhere {
        return true;
    }
    let Some(decoded) = decoded_fully(form) else {
        return false;
    };
    let mut found = [0usize; 16];
    for pair in decoded.split(['&', ';']) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let read_as = lax_names(name);
        for (i, known) in names.iter().enumerate() {
            if read_as
                .iter()
                .any(|n| read_alike(n.as_bytes(), known.as_bytes()))
            {
                // An empty copy counts too (`ours` never is empty): a server taking the last
                // copy would read the parameter as absent, not as the layer did.
                if Some(value.as_bytes()) != ours(known) {
                    return false;
                }
                if let Some(count) = found.get_mut(i) {
                    *count += 1;
                }
            }
        }
    }
    found.iter().all(|&n| n <= 1)
}

/// A form's parameters and their names as sent (decoded), checked as [`super::token::parse_form`] checks
/// them: RFC 6749 names, none reading alike to another, OAuth names spelled exactly, values
/// in UTF-8.
pub(crate) fn read_checked(body: &[u8]) -> Result<Vec<Param<'_>>, Reason> {
    let list: Vec<Param<'_>> = params::parse(body);
    if list.len() > MAX_PARAMS {
        return Err(Reason::TooManyParameters);
    }
    // Names as sent are borrowed from the body unless they hold escapes (rare): read again
    // where needed rather than kept in a list of their own (one allocation less per request).
    // Most names are OAuth names spelled exactly: they need no fold to be told apart (two
    // distinct OAuth names never read alike), which keeps the folding comparisons off the
    // usual request (about 9 000 instructions a token request: benches/flow_instructions.sh).
    let mut exact = [false; MAX_PARAMS];
    for (param, exact) in list.iter().zip(exact.iter_mut()) {
        let name = params::raw_name(body, param);
        *exact = OAUTH_NAMES.iter().any(|known| *name == *known.as_bytes());
        let misspelt = || {
            OAUTH_NAMES
                .iter()
                .any(|known| read_alike(&name, known.as_bytes()))
        };
        if !*exact && (!is_rfc_name(&name) || misspelt()) {
            return Err(Reason::MalformedParameter);
        }
    }
    let exact = |i: usize| exact.get(i).copied().unwrap_or(false);
    for (i, param) in list.iter().enumerate() {
        let first = params::raw_name(body, param);
        let clash = list.iter().enumerate().skip(i + 1).any(|(j, other)| {
            let other = params::raw_name(body, other);
            if exact(i) && exact(j) {
                first == other
            } else {
                read_alike(&first, &other)
            }
        });
        if clash {
            return Err(Reason::DuplicateParameter);
        }
    }
    if list.iter().any(|p| std::str::from_utf8(&p.value).is_err()) {
        return Err(Reason::MalformedParameter);
    }
    Ok(list)
}

/// A form of every parameter of `body` with a value, in order, encoded afresh; `replace` may
/// give a parameter another value.
pub(crate) fn encode<'p>(
    body: &[u8],
    list: &'p [Param<'_>],
    replace: impl Fn(&Param<'_>) -> Option<&'p [u8]>,
) -> Vec<u8> {
    let mut form = Vec::with_capacity(body.len() + 8);
    for param in list {
        if param.value.is_empty() {
            // Empty is absent (RFC 6749 §3.1).
            continue;
        }
        let value = replace(param).unwrap_or(&param.value);
        append_pair(&mut form, &params::raw_name(body, param), value);
    }
    form
}

/// A form body (a pushed authorization request's) checked like a token request's names and
/// values ([`read_checked`]) and encoded afresh: what is forwarded is what was read.
pub(crate) fn canonical_form(body: &[u8]) -> Result<Vec<u8>, Reason> {
    let list = read_checked(body)?;
    let form = encode(body, &list, |_| None);
    if !decoded_whole_agrees_on(&form, &PUSHED_NAMES, |name| params::value(&list, name)) {
        return Err(Reason::MalformedParameter);
    }
    Ok(form)
}

/// The parameters of a pushed authorization request the layer records or checks.
const PUSHED_NAMES: [&str; 8] = [
    "client_id",
    "redirect_uri",
    "state",
    "response_type",
    "code_challenge",
    "code_challenge_method",
    "request",
    "request_uri",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_query_parameters_are_forwarded_reencoded() {
        let allowed: Vec<Box<str>> = vec!["api-version".into(), "tenant".into()];
        let cases: &[(&str, Result<&str, Reason>)] = &[
            ("", Ok("")),
            ("api-version=1.0", Ok("api-version=1.0")),
            ("tenant=a%20b&api-version=2", Ok("tenant=a+b&api-version=2")),
            ("api-version=1.0%3Bx%3D1", Ok("api-version=1.0%3Bx%3D1")),
            // A server that decodes the whole query first would read a `code` here.
            ("api-version=1;code=x", Err(Reason::ParametersInQuery)),
            ("api-version=1%26code%3Dx", Err(Reason::ParametersInQuery)),
            (
                "api-version=1%2526code%253Dvictim",
                Err(Reason::ParametersInQuery),
            ),
            (
                "api-version=1%26%2Bcode%3Dx",
                Err(Reason::ParametersInQuery),
            ),
            // A literal `%` in a value is fine when nothing hides behind it.
            ("api-version=100%25", Ok("api-version=100%25")),
            ("api-version=1%26code", Err(Reason::ParametersInQuery)),
            ("code=x", Err(Reason::ParametersInQuery)),
            ("[code]=x", Err(Reason::ParametersInQuery)),
            ("code%00=x", Err(Reason::ParametersInQuery)),
            ("%u0063ode=x", Err(Reason::ParametersInQuery)),
            ("Tenant=a", Err(Reason::ParametersInQuery)),
            ("tenant[]=a", Err(Reason::ParametersInQuery)),
            ("x=1", Err(Reason::ParametersInQuery)),
            ("tenant=a&tenant=a", Err(Reason::DuplicateParameter)),
        ];
        for (query, expected) in cases {
            let got = forward_query(query.as_bytes(), &allowed);
            let got = got
                .as_ref()
                .map(|q| std::str::from_utf8(q).unwrap())
                .map_err(|e| *e);
            assert_eq!(got, *expected, "{query}");
        }
        assert_eq!(
            forward_query(b"api-version=1", &[]),
            Err(Reason::ParametersInQuery)
        );
    }

    /// A pushed request is held to the whole-decoding reading too, on the parameters the
    /// layer records (found in review).
    #[test]
    fn pushed_forms_are_read_whole_too() {
        assert!(canonical_form(b"client_id=a&state=s&x=1").is_ok());
        assert!(canonical_form(b"client_id=a&redirect_uri=https%3A%2F%2Fa%2Fcb%3Fx%3D1").is_ok());
        for body in [
            &b"client_id=a&state=s&x=%26state%3Dother"[..],
            b"client_id=a&x=%26client_id%3Db",
            b"client_id=a&x=%26%2Bredirect_uri%3Dhttps%3A%2F%2Fevil",
        ] {
            assert_eq!(
                canonical_form(body),
                Err(Reason::MalformedParameter),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// What the exact-name shortcut of `read_checked` relies on.
    #[test]
    fn no_two_oauth_names_read_alike() {
        for (i, a) in OAUTH_NAMES.iter().enumerate() {
            for b in OAUTH_NAMES.iter().skip(i + 1) {
                assert!(!read_alike(a.as_bytes(), b.as_bytes()), "{a} {b}");
            }
        }
    }

    #[test]
    fn oauth_names_and_their_lookalikes_are_known() {
        for name in [
            "code",
            "Code",
            "grant.type",
            "client-id",
            "CLIENT_ID",
            "codeverifier",
        ] {
            assert!(is_oauth_name(name), "{name}");
        }
        for name in ["api-version", "tenant", "codes", "x"] {
            assert!(!is_oauth_name(name), "{name}");
        }
    }
}
