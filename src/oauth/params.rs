//! `application/x-www-form-urlencoded` parameter lists (query strings and form bodies), read
//! the strict way: names compared case-insensitively with a bracket suffix dropped, values
//! decoded to bytes, and the byte ranges kept so a value can be replaced without touching the
//! rest of the input.

use std::borrow::Cow;
use std::ops::Range;

use super::error::Reason;

/// One `name=value` pair of a form-encoded input. No `Debug`: values may be secrets.
pub(crate) struct Param<'a> {
    /// The decoded name, ASCII-lowercased, with any `[...]` suffix removed. Bytes: it is only
    /// ever compared, with ASCII names, so it is not checked for UTF-8.
    pub(crate) name: Cow<'a, [u8]>,
    /// The decoded value.
    pub(crate) value: Cow<'a, [u8]>,
    /// The whole pair in the input, without its separator.
    pub(crate) span: Range<usize>,
}

/// Decodes one form-encoded component: `+` is a space, `%XX` a byte. An invalid escape is kept
/// literally, as most servers do.
pub(crate) fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    let escaped = raw.iter().fold(Escapes::NONE, |e, &b| e.see(b));
    decode_with(raw, escaped)
}

/// Which escapes a component holds, found while it was scanned.
#[derive(Clone, Copy)]
struct Escapes(u8);

impl Escapes {
    const NONE: Self = Self(0);
    const PLUS: u8 = 1;
    const PERCENT: u8 = 2;

    fn see(self, b: u8) -> Self {
        match b {
            b'+' => Self(self.0 | Self::PLUS),
            b'%' => Self(self.0 | Self::PERCENT),
            _ => self,
        }
    }
}

/// [`decode`], told by the caller's scan which escapes `raw` holds.
fn decode_with(raw: &[u8], escaped: Escapes) -> Cow<'_, [u8]> {
    if escaped.0 == 0 {
        return Cow::Borrowed(raw);
    }
    // Decoding never lengthens: one allocation.
    let mut decoded = Vec::with_capacity(raw.len());
    if escaped.0 & Escapes::PLUS == 0 {
        decoded.extend(percent_encoding::percent_decode(raw));
    } else {
        // `+` first: `%2B` stays a plus.
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        decoded.extend(percent_encoding::percent_decode(&spaced));
    }
    Cow::Owned(decoded)
}

/// The name a parameter is read under: decoded, ASCII-lowercased (some servers match names
/// without regard to case), and without a bracket suffix (`client_id[]`, `code[0]`), since
/// express, PHP and Rails read those as the bare name.
fn normalize_name(raw: &[u8], escaped: Escapes) -> Cow<'_, [u8]> {
    // The usual name (`client_id`) needs nothing.
    if escaped.0 == 0
        && raw
            .iter()
            .all(|&b| b.is_ascii() && b != b'[' && !b.is_ascii_uppercase())
    {
        return Cow::Borrowed(raw);
    }
    let decoded = decode_with(raw, escaped);
    let cut = decoded
        .iter()
        .position(|&b| b == b'[')
        .unwrap_or(decoded.len());
    let head = decoded.get(..cut).unwrap_or_default();
    // Lossy, as before the comparison: two invalid names that read alike are one name.
    Cow::Owned(
        String::from_utf8_lossy(head)
            .to_ascii_lowercase()
            .into_bytes(),
    )
}

impl Param<'_> {
    /// Whether this parameter's normalized name is `name`.
    pub(crate) fn is(&self, name: &str) -> bool {
        *self.name == *name.as_bytes()
    }

    /// Whether the name was sent as it is read: without an escape, a bracket, a capital or a
    /// non-ASCII byte. Only such a name is borrowed from the input ([`normalize_name`]), so
    /// the checks of the name as sent need not find and decode it again.
    fn sent_plain(&self) -> bool {
        matches!(self.name, Cow::Borrowed(_))
    }
}

/// The bytes [`parse`] stops at: `&`, `=`, `+` and `%`.
// Built at compile time: an index out of range would fail the build, not panic.
#[allow(clippy::indexing_slicing)]
static SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    table[b'&' as usize] = true;
    table[b'=' as usize] = true;
    table[b'+' as usize] = true;
    table[b'%' as usize] = true;
    table
};

/// Splits a form-encoded input into its parameters. Empty pairs (`a=1&&b=2`) are skipped.
///
/// One pass over the input finds the pairs, each pair's first `=`, and which escapes its name
/// and value hold, so unescaped components (most) are borrowed without another look.
pub(crate) fn parse(input: &[u8]) -> Vec<Param<'_>> {
    if input.is_empty() {
        return Vec::new();
    }
    let mut params = Vec::with_capacity(8);
    let mut start = 0;
    let mut eq: Option<usize> = None;
    let mut name_escapes = Escapes::NONE;
    let mut value_escapes = Escapes::NONE;
    let mut push = |span: Range<usize>, eq: Option<usize>, name_escapes, value_escapes| {
        let pair = input.get(span.clone()).unwrap_or_default();
        if pair.is_empty() {
            return;
        }
        let (raw_name, raw_value) = match eq {
            Some(eq) => (
                input.get(span.start..eq).unwrap_or_default(),
                input.get(eq + 1..span.end).unwrap_or_default(),
            ),
            None => (pair, &b""[..]),
        };
        params.push(Param {
            name: normalize_name(raw_name, name_escapes),
            value: decode_with(raw_value, value_escapes),
            span,
        });
    };
    for (i, &b) in input.iter().enumerate() {
        // Most bytes are none of the four that matter: one table lookup tells.
        if !SPECIAL.get(usize::from(b)).copied().unwrap_or(true) {
            continue;
        }
        match b {
            b'&' => {
                push(start..i, eq, name_escapes, value_escapes);
                start = i + 1;
                eq = None;
                name_escapes = Escapes::NONE;
                value_escapes = Escapes::NONE;
            }
            b'=' if eq.is_none() => eq = Some(i),
            _ if eq.is_none() => name_escapes = name_escapes.see(b),
            _ => value_escapes = value_escapes.see(b),
        }
    }
    push(start..input.len(), eq, name_escapes, value_escapes);
    params
}

/// A parameter's name as sent (decoded, not normalized): `input` must be the input `param`
/// was parsed from.
pub(crate) fn raw_name<'i>(input: &'i [u8], param: &Param<'i>) -> Cow<'i, [u8]> {
    if let Cow::Borrowed(name) = param.name {
        // Sent plain ([`Param::sent_plain`]): the name read is the name sent.
        return Cow::Borrowed(name);
    }
    decode(sent_name(input, param))
}

/// A parameter's name exactly as it is in `input`, escapes and all.
fn sent_name<'i>(input: &'i [u8], param: &Param<'_>) -> &'i [u8] {
    let pair = input.get(param.span.clone()).unwrap_or_default();
    pair.split(|&b| b == b'=').next().unwrap_or_default()
}

/// Whether a parameter's name as sent has an unclosed bracket ([`has_unclosed_bracket`]).
/// Only a name holding a `[`, or an escape that may decode to one, is decoded to find out.
pub(crate) fn name_has_unclosed_bracket(input: &[u8], param: &Param<'_>) -> bool {
    if param.sent_plain() {
        return false;
    }
    let sent = sent_name(input, param);
    sent.iter().any(|&b| b == b'[' || b == b'%') && has_unclosed_bracket(&decode(sent))
}

/// Whether a name has a `[` with no `]` after it, which PHP reads as `_` (`client[id` is
/// `client_id`) where the layer reads the name before the bracket.
pub(crate) fn has_unclosed_bracket(name: &[u8]) -> bool {
    name.iter()
        .rposition(|&b| b == b'[')
        .is_some_and(|open| !name.iter().skip(open).any(|&b| b == b']'))
}

/// The first name that occurs more than once, if any.
pub(crate) fn first_duplicate<'p>(params: &'p [Param<'_>]) -> Option<&'p [u8]> {
    if params.len() <= 16 {
        for (i, p) in params.iter().enumerate() {
            if params.iter().skip(i + 1).any(|q| q.name == p.name) {
                return Some(&p.name);
            }
        }
        return None;
    }
    let mut names: Vec<&[u8]> = params.iter().map(|p| p.name.as_ref()).collect();
    names.sort_unstable();
    names.windows(2).find_map(|w| match w {
        [a, b] if a == b => Some(*a),
        _ => None,
    })
}

/// The first name in both `a` and `b` with different values there: identical copies are one
/// parameter. Each list holds a name once at most.
pub(crate) fn first_conflict<'p>(a: &'p [Param<'_>], b: &[Param<'_>]) -> Option<&'p [u8]> {
    let differs = |p: &Param<'_>, q: &Param<'_>| q.name == p.name && q.value != p.value;
    if a.len().saturating_mul(b.len()) <= 256 {
        return a
            .iter()
            .find(|p| b.iter().any(|q| differs(p, q)))
            .map(|p| p.name.as_ref());
    }
    let mut sorted: Vec<&Param<'_>> = b.iter().collect();
    sorted.sort_unstable_by(|x, y| x.name.cmp(&y.name));
    a.iter()
        .find(|p| {
            sorted
                .binary_search_by(|q| q.name.as_ref().cmp(p.name.as_ref()))
                .ok()
                .and_then(|i| sorted.get(i))
                .is_some_and(|q| differs(p, q))
        })
        .map(|p| p.name.as_ref())
}

/// Looks a parameter up by its normalized name.
pub(crate) fn find<'p, 'a>(params: &'p [Param<'a>], name: &str) -> Option<&'p Param<'a>> {
    params.iter().find(|p| p.is(name))
}

/// Takes a parameter's value out of the list, with an empty value read as absent: a value
/// that needed no decoding stays borrowed from the input.
pub(crate) fn take<'a>(params: &mut [Param<'a>], name: &str) -> Option<Cow<'a, [u8]>> {
    let param = params.iter_mut().find(|p| p.is(name))?;
    Some(std::mem::take(&mut param.value)).filter(|v| !v.is_empty())
}

/// A value as text: borrowed when it was borrowed, else the decoded bytes themselves (no
/// copy). A value that is not UTF-8 is a `MalformedParameter`.
pub(crate) fn text(value: Option<Cow<'_, [u8]>>) -> Result<Option<Cow<'_, str>>, Reason> {
    match value {
        None => Ok(None),
        Some(Cow::Borrowed(v)) => std::str::from_utf8(v)
            .map(|t| Some(Cow::Borrowed(t)))
            .map_err(|_| Reason::MalformedParameter),
        Some(Cow::Owned(v)) => String::from_utf8(v)
            .map(|t| Some(Cow::Owned(t)))
            .map_err(|_| Reason::MalformedParameter),
    }
}

/// A parameter's value, with an empty value read as absent (RFC 6749 §3.1).
pub(crate) fn value<'p>(params: &'p [Param<'_>], name: &str) -> Option<&'p [u8]> {
    find(params, name)
        .map(|p| p.value.as_ref())
        .filter(|v| !v.is_empty())
}

/// Returns `input` with the bytes in `span` replaced by `replacement`.
pub(crate) fn splice(input: &[u8], span: Range<usize>, replacement: &[u8]) -> Vec<u8> {
    let head = input.get(..span.start).unwrap_or_default();
    let tail = input.get(span.end..).unwrap_or_default();
    let mut out = Vec::with_capacity(head.len() + replacement.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(replacement);
    out.extend_from_slice(tail);
    out
}

/// Returns `input` without the pair in `span` and one of the `&` next to it.
pub(crate) fn remove(input: &[u8], span: Range<usize>) -> Vec<u8> {
    let span = if span.end < input.len() {
        span.start..span.end + 1 // the `&` after it
    } else if span.start > 0 {
        span.start - 1..span.end // the `&` before it
    } else {
        span
    };
    splice(input, span, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(input: &str) -> Vec<(String, String)> {
        parse(input.as_bytes())
            .into_iter()
            .map(|p| {
                (
                    String::from_utf8_lossy(&p.name).into_owned(),
                    String::from_utf8_lossy(&p.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn parses_and_decodes() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("a=1", &[("a", "1")]),
            ("a=1&b=2", &[("a", "1"), ("b", "2")]),
            ("a=1&&b=2&", &[("a", "1"), ("b", "2")]),
            ("a", &[("a", "")]),
            ("a=", &[("a", "")]),
            ("a=x%20y+z", &[("a", "x y z")]),
            ("a=%2B", &[("a", "+")]),
            ("a=%zz", &[("a", "%zz")]),
            ("a=b=c", &[("a", "b=c")]),
            ("Client_ID=x", &[("client_id", "x")]),
            ("client_id[]=x", &[("client_id", "x")]),
            ("code[0]=x", &[("code", "x")]),
            ("client_id%5B%5D=x", &[("client_id", "x")]),
            ("%73tate=x", &[("state", "x")]),
        ];
        for (input, expected) in cases {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(pairs(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn keeps_invalid_utf8_as_bytes() {
        let params = parse(b"state=%FF%FE");
        assert_eq!(params[0].value.as_ref(), &[0xff, 0xfe]);
    }

    #[test]
    fn finds_duplicates() {
        let cases: &[(&str, Option<&str>)] = &[
            ("a=1&b=2", None),
            ("a=1&a=2", Some("a")),
            ("state=1&STATE=2", Some("state")),
            ("code=1&code[]=2", Some("code")),
            ("a=&a=", Some("a")),
        ];
        for (input, expected) in cases {
            let params = parse(input.as_bytes());
            assert_eq!(
                first_duplicate(&params),
                expected.map(str::as_bytes),
                "input {input:?}"
            );
        }
        let many: String = (0..20_000).map(|i| format!("p{i}=x&")).collect();
        assert_eq!(first_duplicate(&parse(many.as_bytes())), None);
        let many = format!("{many}p19999=y");
        assert_eq!(
            first_duplicate(&parse(many.as_bytes())),
            Some(&b"p19999"[..])
        );
    }

    #[test]
    fn finds_names_shared_with_different_values() {
        let a = parse(b"a=1&b=2");
        assert_eq!(first_conflict(&a, &parse(b"c=3")), None);
        assert_eq!(first_conflict(&a, &parse(b"c=3&B[]=4")), Some(&b"b"[..]));
        assert_eq!(
            first_conflict(&a, &parse(b"c=3&B[]=2&a=%31")),
            None,
            "identical copies"
        );
        // The sorted search, for long lists.
        let many: String = (0..40).map(|i| format!("p{i}=x&")).collect();
        let long = parse(many.as_bytes());
        assert_eq!(first_conflict(&long, &parse(many.as_bytes())), None);
        let other = many.replace("p7=x", "p7=y");
        assert_eq!(
            first_conflict(&long, &parse(other.as_bytes())),
            Some(&b"p7"[..])
        );
    }

    #[test]
    fn empty_value_is_absent() {
        let params = parse(b"state=&code=x");
        assert_eq!(value(&params, "state"), None);
        assert_eq!(value(&params, "code"), Some(&b"x"[..]));
        assert_eq!(value(&params, "missing"), None);
    }

    #[test]
    fn splices_and_removes_pairs() {
        let input = b"a=1&state=abc&b=2";
        let params = parse(input);
        let state = find(&params, "state").unwrap();
        assert_eq!(
            splice(input, state.span.clone(), b"state=H"),
            b"a=1&state=H&b=2"
        );
        assert_eq!(remove(input, state.span.clone()), b"a=1&b=2");
        let last = b"a=1&state=x";
        let span = find(&parse(last), "state").unwrap().span.clone();
        assert_eq!(remove(last, span), b"a=1");
        let only = b"state=x";
        let span = find(&parse(only), "state").unwrap().span.clone();
        assert_eq!(remove(only, span), b"");
    }

    fn encode(value: &str) -> String {
        form_urlencoded::byte_serialize(value.as_bytes()).collect()
    }

    #[test]
    fn decodes_what_form_encoding_encodes() {
        let encoded = format!("s={}", encode("x y+z%&é"));
        assert_eq!(
            value(&parse(encoded.as_bytes()), "s"),
            Some("x y+z%&é".as_bytes())
        );
    }

    #[test]
    fn values_are_borrowed_unless_decoded_and_empty_input_allocates_nothing() {
        assert_eq!(parse(b"").capacity(), 0);
        let mut params = parse(b"a=plain&b=x%20y&c=&d=p+q");
        assert!(matches!(
            take(&mut params, "a"),
            Some(Cow::Borrowed(b"plain"))
        ));
        assert!(matches!(take(&mut params, "b"), Some(Cow::Owned(v)) if v == b"x y"));
        assert!(take(&mut params, "c").is_none(), "an empty value is absent");
        assert!(matches!(take(&mut params, "d"), Some(Cow::Owned(v)) if v == b"p q"));
        assert!(take(&mut params, "a").is_none(), "taken once");
        assert!(matches!(
            text(Some(Cow::Borrowed(b"ok"))),
            Ok(Some(Cow::Borrowed("ok")))
        ));
        assert!(matches!(
            text(Some(Cow::Owned(b"ok".to_vec()))),
            Ok(Some(Cow::Owned(_)))
        ));
        assert!(text(Some(Cow::Borrowed(&[0xff][..]))).is_err());
        assert!(text(Some(Cow::Owned(vec![0xff]))).is_err());
    }

    #[test]
    fn a_name_is_read_as_sent_only_when_it_was_sent_plain() {
        let input = b"client_id=a&Client_ID=b&client%5Fid=c&client[id=d&c+d=e&\xc3\xa9=f";
        let params = parse(input);
        let plain: Vec<bool> = params.iter().map(Param::sent_plain).collect();
        assert_eq!(plain, [true, false, false, false, false, false]);
        assert!(matches!(
            raw_name(input, &params[0]),
            Cow::Borrowed(b"client_id")
        ));
        assert_eq!(&*raw_name(input, &params[1]), b"Client_ID");
        assert_eq!(&*raw_name(input, &params[2]), b"client_id");
        assert!(name_has_unclosed_bracket(input, &params[3]));
        assert!(!name_has_unclosed_bracket(input, &params[0]));
    }

    proptest::proptest! {
        /// The shortcuts for a name sent plain give what finding and decoding the name as
        /// sent gives, for any input.
        #[test]
        fn names_sent_plain_read_as_decoding_them_would(
            input in proptest::collection::vec(
                proptest::sample::select(b"aZ_-=&%+[]5F2B0\xc3".to_vec()),
                0..48,
            ),
        ) {
            for param in parse(&input) {
                let sent = sent_name(&input, &param);
                proptest::prop_assert_eq!(&*raw_name(&input, &param), &*decode(sent));
                let full = sent.iter().any(|&b| b == b'[' || b == b'%')
                    && has_unclosed_bracket(&decode(sent));
                proptest::prop_assert_eq!(name_has_unclosed_bracket(&input, &param), full);
            }
        }
    }
}
