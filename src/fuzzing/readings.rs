//! The lenient readings of a forwarded form that the fuzz model checks: one row per kind of
//! server, each of which must find exactly the decision parameters the layer read.

// The token endpoint's positive model (DESIGN.md, "Forward only what was verified"): the
// upstream gets `TokenParams::forward` and `form::forward_query`'s output, never what the
// client sent. So the property is about those: however a lenient upstream reads them, it finds
// the decision parameters the layer read, and no other copy of them.

/// The parameters the token decision reads.
pub(super) const DECISION: [&str; 4] = ["grant_type", "code", "code_verifier", "client_id"];

/// A form as one server reads it: its pairs, in order, each name as that server spells it
/// and each value decoded.
pub type Reading = fn(&[u8]) -> Vec<(String, Vec<u8>)>;

/// The readings of a forwarded form that the model checks, one row per kind of lenient
/// server. Each must find exactly what the layer read.
pub const READINGS: &[(&str, Reading)] = &[
    ("RFC 6749 (strict)", strict),
    ("qs and Rack (`[code]`, `code[]`, `code[0]`)", qs_rack),
    ("PHP (spaces, `.`, unclosed `[`, NUL in names)", php),
    ("names in any case", any_case),
    ("`;` separates pairs too", semicolons),
    ("the whole form decoded before splitting", decoded_whole),
    ("ASP.NET (`%uXXXX`, names in any case)", aspnet),
    ("binders ignoring `-`, `_`, `.` and case", binder),
    ("decoded to a fixed point, then qs and Rack names", |form| {
        decoded_fully_then(form, qs_name)
    }),
    ("decoded to a fixed point, then PHP names", |form| {
        decoded_fully_then(form, php_name)
    }),
    ("decoded to a fixed point, then names in any case", |form| {
        decoded_fully_then(form, |name| fold_case(&lossy(name)))
    }),
    (
        "decoded to a fixed point, then parsed as a form again (PHP names)",
        |form| decoded_fully_then(form, |name| php_name(&form_decode(name))),
    ),
];

/// (i) A server that decodes the whole form until nothing changes (`+` once, `%XX` and
/// `%uXXXX` every time) and then splits it at `&` and `;`, reading each name with `name`.
pub(super) fn decoded_fully_then(form: &[u8], name: fn(&[u8]) -> String) -> Vec<(String, Vec<u8>)> {
    let mut text = form_decode(form);
    for _ in 0..8 {
        let next = decode_escapes(&text, false);
        if next == text {
            break;
        }
        text = next;
    }
    pairs(&text, |b| b == b'&' || b == b';')
        .into_iter()
        .map(|(n, v)| (name(n), v.to_vec()))
        .collect()
}

/// Splits a form at every byte `separates` holds, skipping empty pairs, into raw names and
/// values (a pair without `=` has an empty value).
pub(super) fn pairs(form: &[u8], separates: impl Fn(u8) -> bool) -> Vec<(&[u8], &[u8])> {
    form.split(|&b| separates(b))
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        })
        .collect()
}

/// Form decoding, written apart from the layer's on purpose: `+` is a space, `%XX` a byte, an
/// invalid escape stays as it is.
pub(super) fn form_decode(raw: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The strict reading with each decoded name respelt by `name`.
pub(super) fn renamed(form: &[u8], name: impl Fn(&[u8]) -> String) -> Vec<(String, Vec<u8>)> {
    pairs(form, |b| b == b'&')
        .into_iter()
        .map(|(n, v)| (name(&form_decode(n)), form_decode(v)))
        .collect()
}

/// (a) RFC 6749 Appendix B: split at `&`, then decode names and values.
pub(super) fn strict(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    renamed(form, lossy)
}

/// (b) qs and Rack read a name up to its first bracket, after any leading brackets:
/// `[code]`, `code[]`, `code[0]` and `%5Bcode%5D` are all `code`.
pub(super) fn qs_rack(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    renamed(form, qs_name)
}

pub(super) fn qs_name(name: &[u8]) -> String {
    let name = lossy(name);
    let bare = name.trim_start_matches(['[', ']']);
    bare.split(['[', ']']).next().unwrap_or_default().to_owned()
}

/// (c) PHP (`php_register_variable_ex`): the name ends at a NUL, leading spaces are dropped,
/// a space or `.` is `_`, a `[` with a `]` after it ends the name (an array), and an
/// unclosed `[` is `_` too, with the rest of the name kept as sent.
pub(super) fn php(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    renamed(form, php_name)
}

pub(super) fn php_name(name: &[u8]) -> String {
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    let start = name.iter().position(|&b| b != b' ').unwrap_or(name.len());
    let name = &name[start..];
    let mut read = Vec::with_capacity(name.len());
    for (i, &b) in name.iter().enumerate() {
        match b {
            b' ' | b'.' => read.push(b'_'),
            b'[' if name[i..].contains(&b']') => break,
            b'[' => {
                read.push(b'_');
                read.extend_from_slice(&name[i + 1..]);
                break;
            }
            _ => read.push(b),
        }
    }
    lossy(&read)
}

/// A name compared without regard to case, by Unicode rules: uppercasing first maps `ı` to
/// `I` and `ſ` to `S`, lowercasing then maps the Kelvin sign to `k`.
pub(super) fn fold_case(name: &str) -> String {
    name.to_uppercase().to_lowercase()
}

/// (d) Names in any case (ASP.NET's collections, many binders and hand-written lookups).
pub(super) fn any_case(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    renamed(form, |name| fold_case(&lossy(name)))
}

/// (e) `;` separates pairs as `&` does (HTML 4's recommendation; older Rack, Python's
/// `parse_qs` before 3.9.2).
pub(super) fn semicolons(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    pairs(form, |b| b == b'&' || b == b';')
        .into_iter()
        .map(|(n, v)| (lossy(&form_decode(n)), form_decode(v)))
        .collect()
}

/// (f) The whole form decoded before it is split (`explode('&', urldecode($body))` and other
/// hand-written parsers): an escaped `&` or `=` inside a value separates there. Nothing is
/// decoded twice, and names are compared as they are.
pub(super) fn decoded_whole(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    let decoded = form_decode(form);
    pairs(&decoded, |b| b == b'&')
        .into_iter()
        .map(|(n, v)| (lossy(n), v.to_vec()))
        .collect()
}

/// ASP.NET's decoding: `%uXXXX` is a UTF-16 unit (a lone surrogate reads as U+FFFD), `%XX` a
/// byte, `+` a space, in one pass.
pub(super) fn aspnet_decode(raw: &[u8]) -> Vec<u8> {
    decode_escapes(raw, true)
}

/// `%uXXXX` and `%XX` escapes decoded in one pass, and `+` as a space if `plus_is_space`.
pub(super) fn decode_escapes(raw: &[u8], plus_is_space: bool) -> Vec<u8> {
    // Hex digits only: `from_str_radix` alone would take a sign.
    let hex = |digits: &[u8]| -> Option<u32> {
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' if matches!(raw.get(i + 1), Some(b'u' | b'U')) => {
                if let Some(unit) = raw.get(i + 2..i + 6).and_then(hex) {
                    let c = char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER);
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    i += 6;
                    continue;
                }
                out.push(b'%');
            }
            b'%' => {
                if let Some(byte) = raw.get(i + 1..i + 3).and_then(hex) {
                    out.push(u8::try_from(byte).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// (g) ASP.NET (`HttpUtility.ParseQueryString`, `Request.Form`): `%uXXXX` escapes in names
/// and values, and names matched in any case, as its collections match them.
pub(super) fn aspnet(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    pairs(form, |b| b == b'&')
        .into_iter()
        .map(|(n, v)| (fold_case(&lossy(&aspnet_decode(n))), aspnet_decode(v)))
        .collect()
}

/// (h) Model binders that match `code_verifier` to a `CodeVerifier` property (ASP.NET Core,
/// Spring's relaxed binding): `-`, `_` and `.` ignored, and case.
pub(super) fn binder(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    renamed(form, |name| {
        fold_case(&lossy(name)).replace(['-', '_', '.'], "")
    })
}

/// How `reading` spells a decision parameter's name: as it reads a form of that one name.
pub(super) fn key(reading: Reading, name: &str) -> String {
    let read = reading(format!("{name}=x").as_bytes());
    assert_eq!(read.len(), 1, "a reading splits a plain pair");
    read.into_iter().next().map(|(n, _)| n).unwrap_or_default()
}

/// Asserts that `reading` finds in `form` each decision parameter as `ours` has it
/// ([`misread`]).
pub(super) fn reads_as<'v>(
    reading: (&str, Reading),
    form: &[u8],
    ours: impl Fn(&str) -> Option<&'v [u8]>,
) {
    if let Some(failure) = misread(reading, form, ours) {
        panic!("{failure} in {:?}", lossy(form));
    }
}

/// How `reading` finds in `form` a decision parameter otherwise than as `ours` has it (absent
/// where `None`): whether the server takes the first copy of a name or the last (an empty
/// value is absent, RFC 6749 §3.1), it must read the same value, and no other copy of it.
pub(super) fn misread<'v>(
    (label, reading): (&str, Reading),
    form: &[u8],
    ours: impl Fn(&str) -> Option<&'v [u8]>,
) -> Option<String> {
    let read = reading(form);
    for name in DECISION {
        let key = key(reading, name);
        let copies: Vec<&[u8]> = read
            .iter()
            .filter(|(n, _)| *n == key)
            .map(|(_, v)| v.as_slice())
            .collect();
        let ours = ours(name);
        for (pick, copy) in [("first", copies.first()), ("last", copies.last())] {
            let upstream = copy.copied().filter(|v| !v.is_empty());
            if upstream != ours {
                return Some(format!(
                    "{label}, taking the {pick} copy, reads {name} as {:?}, not {:?}",
                    upstream.map(lossy),
                    ours.map(lossy)
                ));
            }
        }
        if copies.len() > 1 {
            return Some(format!("{label} reads {} copies of {name}", copies.len()));
        }
    }
    None
}

/// Whether some server would take `grant` for the authorization code grant: compared without
/// regard to case (Unicode's, as `fold_case`) and with surrounding whitespace trimmed.
pub(super) fn folds_to_code_grant(grant: &[u8]) -> bool {
    fold_case(lossy(grant).trim()) == "authorization_code"
}
