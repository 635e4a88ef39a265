//! Endpoint matching that reads a request path as leniently as the laxest common router, so that
//! `/Token`, `/token/`, `//token`, `/%74oken`, `/x/../token` and `/token;jsessionid=1` all count
//! as the token endpoint, and so do `/token.json` (a format suffix, as Rails and older Spring
//! read it) and `/token.` (IIS drops trailing dots and spaces). Paths are decoded up to three
//! times (servers that decode twice read `/%2574oken` as `/token`), cut at a NUL (as C
//! servers do), and every segment is trimmed of whitespace and control characters (Spring
//! trims `/token%0a`). Matching too much only means inspecting more; matching too little
//! would let a request reach the upstream's handler unchecked.
//!
//! A path that is not an endpoint's but that some server could still route to one is a
//! *lookalike*, refused: one that goes on past the endpoint's path (`/token/x`, or
//! `/token.php/x`, which PHP's PATH_INFO runs as `/token.php`), and one whose decoded
//! non-ASCII characters fold onto an endpoint's path (`/to%E2%84%AAen`: the Kelvin sign
//! lowercases to `k` in Python, JavaScript and Java; full-width letters are ASCII letters
//! under Unicode compatibility normalization). `%uXXXX` escapes (IIS, ASP.NET) are decoded
//! like `%XX` ones.

use std::borrow::Cow;

/// Whether `path` could need more than a case-insensitive comparison. One pass.
fn is_irregular(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut previous = 0u8;
    for &b in bytes {
        if matches!(b, b'%' | b';' | b'\\')
            || !b.is_ascii()
            || (previous == b'/' && matches!(b, b'/' | b'.'))
        {
            return true;
        }
        previous = b;
    }
    (bytes.len() > 1 && previous == b'/') || bytes.first() != Some(&b'/')
}

/// The last segment without a `.suffix` (a segment that starts with `.` is kept whole).
fn strip_suffix(path: &str) -> &str {
    let start = path.rfind('/').map_or(0, |i| i + 1);
    match path.get(start..).and_then(|segment| segment.find('.')) {
        Some(dot) if dot > 0 => path.get(..start + dot).unwrap_or(path),
        _ => path,
    }
}

/// The canonical form of a path: percent-decoded, `\` read as `/`, matrix parameters
/// (`;...`) dropped from every segment, empty and `.` segments removed, `..` resolved,
/// no trailing slash, trailing spaces and a `.suffix` dropped from the last segment,
/// ASCII-lowercased.
pub(crate) fn normalize(path: &str) -> String {
    read(path, true).0
}

/// Percent-decoding rounds a path gets: one that still decodes after them is taken as a
/// trick (no client encodes a path this many times), a lookalike of every endpoint.
const MAX_PATH_DECODES: usize = 8;

/// [`normalize`], with `..` segments resolved or kept (a prefix router that does not resolve
/// them runs `/token` for `/token/../x`), and whether the path still decodes further after
/// [`MAX_PATH_DECODES`] rounds.
fn read(path: &str, resolve_dots: bool) -> (String, bool) {
    let mut decoded: Cow<'_, str> = Cow::Borrowed(path);
    let mut rounds = 0;
    while decoded.contains('%') && rounds < MAX_PATH_DECODES {
        let wide = decode_percent_u(&decoded);
        let again = percent_encoding::percent_decode_str(&wide).decode_utf8_lossy();
        if again == decoded {
            break;
        }
        decoded = Cow::Owned(again.into_owned());
        rounds += 1;
    }
    let too_deep = rounds == MAX_PATH_DECODES && {
        let wide = decode_percent_u(&decoded);
        percent_encoding::percent_decode_str(&wide).decode_utf8_lossy() != decoded
    };
    // Cut at a decoded NUL (C servers stop there) and at a decoded `?` or `#` (servers that
    // decode the whole target before splitting off the query read `/token%3Fx` as `/token`).
    if let Some(cut) = decoded.find(['\0', '?', '#']) {
        decoded = Cow::Owned(decoded.get(..cut).unwrap_or_default().to_owned());
    }
    let slashed: Cow<'_, str> = if decoded.contains('\\') {
        Cow::Owned(decoded.replace('\\', "/"))
    } else {
        decoded
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in slashed.split('/') {
        let segment = segment
            .split(';')
            .next()
            .unwrap_or_default()
            .trim_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
        match segment {
            "" | "." => {}
            ".." if resolve_dots => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    if let Some(last) = segments.last_mut() {
        *last = strip_suffix(last.trim_end_matches([' ', '.']));
        if last.is_empty() {
            segments.pop();
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out.make_ascii_lowercase();
    (out, too_deep)
}

/// Decodes `%uXXXX` escapes (IIS and ASP.NET read `/%u0074oken` as `/token`); an escape that
/// is not four hex digits of a scalar value is kept as it is.
pub(crate) fn decode_percent_u(path: &str) -> Cow<'_, str> {
    if !path.contains("%u") && !path.contains("%U") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(rest.get(..at).unwrap_or_default());
        let tail = rest.get(at..).unwrap_or_default();
        let decoded = tail
            .get(1..6)
            .filter(|e| e.starts_with(['u', 'U']))
            .and_then(|e| u32::from_str_radix(e.get(1..)?, 16).ok())
            .and_then(char::from_u32);
        match decoded {
            Some(c) => {
                out.push(c);
                rest = tail.get(6..).unwrap_or_default();
            }
            None => {
                out.push('%');
                rest = tail.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The ASCII reading some server could give a normalized path with non-ASCII characters:
/// each character under Unicode compatibility normalization (NFKC: full-width `ｔ` is `t`)
/// and case mapping (the Kelvin sign `K` lowercases to `k`, `ſ` uppercases to `S`), with
/// combining marks left out (`İ` lowercases to `i` and a dot above).
pub(crate) fn ascii_reading(path: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization as _;
    let mut out = String::with_capacity(path.len());
    for c in path.nfkc() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if is_combining_mark(c) {
        } else if let Some(a) = c.to_lowercase().find(char::is_ascii) {
            out.push(a.to_ascii_lowercase());
        } else if let Some(a) = c.to_uppercase().find(char::is_ascii) {
            out.push(a.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a (lowercase, or normalized) `path` goes on past the endpoint path `target`:
/// `target` then `/`, or `target` then a `.suffix` and then `/`.
fn extends(path: &str, target: &str) -> bool {
    let Some(rest) = path
        .get(..target.len())
        .filter(|head| head.eq_ignore_ascii_case(target))
        .and_then(|_| path.get(target.len()..))
    else {
        return false;
    };
    target != "/" && (rest.starts_with('/') || (rest.starts_with('.') && rest.contains('/')))
}

/// An endpoint's path: as the operator wrote it (where requests for it are forwarded) and
/// [`normalize`]d (what request paths are matched against).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointPath {
    written: Box<str>,
    normalized: Box<str>,
}

/// What a written path cannot hold as it is: controls, space, and what would end the path.
const PATH_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

impl EndpointPath {
    pub(crate) fn new(path: &str) -> Self {
        let slash = if path.starts_with('/') { "" } else { "/" };
        let escaped = percent_encoding::utf8_percent_encode(path, PATH_ESCAPE);
        Self {
            written: format!("{slash}{escaped}").into(),
            normalized: normalize(path).into(),
        }
    }

    /// The path as written, made a valid URI path: where requests are forwarded.
    pub(crate) fn written(&self) -> &str {
        &self.written
    }

    /// The normalized path, which requests are matched against.
    pub(crate) fn normalized(&self) -> &str {
        &self.normalized
    }
}

/// A request path made ready to be compared with several endpoints: the irregularity check,
/// and the normalization an irregular path needs, are done once.
pub(crate) enum Prepared<'a> {
    /// A regular path, without its `.suffix`: compared case-insensitively.
    Regular(&'a str),
    /// An irregular path, [`normalize`]d; and read again without resolving `..`, when it has
    /// such a segment.
    Normalized {
        path: String,
        unresolved: Option<String>,
        too_deep: bool,
    },
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(path: &'a str) -> Self {
        if !is_irregular(path) {
            return Self::Regular(strip_suffix(path));
        }
        let (normalized, too_deep) = read(path, true);
        let (kept, _) = read(path, false);
        Self::Normalized {
            unresolved: (kept != normalized).then_some(kept),
            path: normalized,
            too_deep,
        }
    }

    /// Whether the path names the endpoint whose [`normalize`]d path is `target`. A path
    /// with non-ASCII characters names none (it may be a [lookalike](Self::looks_like)).
    pub(crate) fn is(&self, target: &str) -> bool {
        match self {
            Self::Regular(path) => path.eq_ignore_ascii_case(target),
            Self::Normalized { path, .. } => path == target,
        }
    }

    /// Whether the path, not being the endpoint whose normalized path is `target`, could
    /// still be routed to it by some server: it goes on past it (`/token/x`, `/token.php/x`,
    /// `/token/../x` to a router that does not resolve `..`), its non-ASCII characters fold
    /// onto it, or it decodes further than any path is read.
    pub(crate) fn looks_like(&self, target: &str) -> bool {
        match self {
            // The `.suffix` a regular path was stripped of is only in its last segment, so
            // the whole path is where a suffix and more segments follow the endpoint's.
            Self::Regular(path) => extends(path, target),
            Self::Normalized {
                path,
                unresolved,
                too_deep,
            } => {
                *too_deep
                    || [Some(path), unresolved.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(|path| folds_onto(path, target))
            }
        }
    }
}

/// Whether a normalized `path` goes on past `target`, or its non-ASCII characters fold onto
/// it.
fn folds_onto(path: &str, target: &str) -> bool {
    if path.is_ascii() {
        return extends(path, target);
    }
    let ascii = ascii_reading(path);
    // A folded last segment may carry a suffix again (`/to\u{212A}en.php`).
    ascii == target || extends(&ascii, target) || strip_suffix(&ascii) == target
}

/// Whether the request path `path` names the endpoint whose [`normalize`]d path is `target`.
/// Allocation-free unless the path is irregular.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn matches(path: &str, target: &str) -> bool {
    Prepared::new(path).is(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_what_lenient_routers_route() {
        let yes = [
            "/token",
            "/Token",
            "/TOKEN",
            "/token/",
            "//token",
            "///token//",
            "/%74oken",
            "/%54OKEN",
            "/./token",
            "/x/../token",
            "/x/%2e%2e/token",
            "/token;jsessionid=abc",
            "/token/.",
            "\\token",
            "/%2Ftoken",
            "/../token",
            "/token.json",
            "/token.",
            "/token%20",
            "/token.%20",
            "/Token.JSON/",
            "/token%09",
            "/token%0a",
            "/token%0d%0a",
            "/%20token",
            "/token%00",
            "/token%00.html",
            "/token%2500",
            "/%2574oken",
            "/%252574oken",
        ];
        for path in yes {
            assert!(matches(path, "/token"), "{path:?} should match /token");
        }
        let no = [
            "/tokens",
            "/token/x",
            "/to ken",
            "/",
            "/x/token",
            "/authorize",
            "token2",
        ];
        for path in no {
            assert!(!matches(path, "/token"), "{path:?} should not match /token");
        }
    }

    #[test]
    fn lookalikes_are_found() {
        let looks = |path: &str, target: &str| {
            let prepared = Prepared::new(path);
            !prepared.is(target) && prepared.looks_like(target)
        };
        for path in [
            "/token/x",
            "/Token/x",
            "/token.php/x",
            "/token//x",
            "/%74oken/x",
            "/to%E2%84%AAen",
            "/to%E2%84%AAen/x",
            "/to%E2%84%AAen.php",
            "/%EF%BD%94oken",
            "/TO%E2%84%AAEN",
            "/%C5%BFcope",
        ] {
            let target = if path.contains("cope") {
                "/scope"
            } else {
                "/token"
            };
            assert!(looks(path, target), "{path:?} should look like {target}");
        }
        for path in [
            "/token",
            "/tokens",
            "/tokens/x",
            "/x/token",
            "/tok%C3%A9n",
            "/",
        ] {
            assert!(
                !looks(path, "/token"),
                "{path:?} should not look like /token"
            );
        }
        assert!(!Prepared::new("/x").looks_like("/"));
    }

    #[test]
    fn percent_u_escapes_are_decoded() {
        for path in [
            "/%u0074oken",
            "/%U0074OKEN",
            "/%2574%u006Fken",
            "/t%u006Fken%u002F",
        ] {
            assert!(matches(path, "/token"), "{path:?} should match /token");
        }
        assert_eq!(decode_percent_u("/%u00"), "/%u00");
        assert_eq!(
            decode_percent_u("/%uD800x"),
            "/%uD800x",
            "a surrogate is no char"
        );
        assert_eq!(decode_percent_u("%u0041%"), "A%");
    }

    #[test]
    fn endpoint_paths_keep_their_spelling_for_forwarding() {
        let path = EndpointPath::new("/o/Token/");
        assert_eq!(
            (path.written(), path.normalized()),
            ("/o/Token/", "/o/token")
        );
        let path = EndpointPath::new("token.php");
        assert_eq!(
            (path.written(), path.normalized()),
            ("/token.php", "/token")
        );
        assert_eq!(EndpointPath::new("/a b?c").written(), "/a%20b%3Fc");
    }

    #[test]
    fn normalizes() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("/OAuth2//Authorize/", "/oauth2/authorize"),
            ("/a/b/../c", "/a/c"),
            ("/a;x=1/b;y", "/a/b"),
            ("/%7Euser", "/~user"),
            ("/a/token.json", "/a/token"),
            (
                "/.well-known/openid-configuration",
                "/.well-known/openid-configuration",
            ),
            ("/a/b.", "/a/b"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input), expected, "{input:?}");
        }
    }

    #[test]
    fn regular_paths_take_the_fast_path() {
        assert!(!is_irregular("/api/v1/users"));
        assert!(is_irregular("/a//b"));
        assert!(is_irregular("/a/"));
        assert!(!is_irregular("/"));
        assert!(!is_irregular("/static/app.js"));
    }

    #[test]
    fn a_decoded_query_or_fragment_mark_ends_the_path() {
        // A server that decodes the whole target before splitting off the query routes these
        // to the token endpoint (found in review).
        for path in [
            "/token%3F",
            "/token%3fx=1",
            "/Token%3Fx",
            "/token%23",
            "/token%253F",
        ] {
            assert!(matches(path, "/token"), "{path}");
        }
    }
}
