//! Endpoint matching that reads a request path as leniently as the laxest common router, so that
//! `/Token`, `/token/`, `//token`, `/%74oken`, `/x/../token` and `/token;jsessionid=1` all count
//! as the token endpoint, and so do `/token.json` (a format suffix, as Rails and older Spring
//! read it) and `/token.` (IIS drops trailing dots and spaces). Paths are decoded up to three
//! times (servers that decode twice read `/%2574oken` as `/token`), cut at a NUL (as C
//! servers do), and every segment is trimmed of whitespace and control characters (Spring
//! trims `/token%0a`). Matching too much only means inspecting more; matching too little
//! would let a request reach the upstream's handler unchecked.

use std::borrow::Cow;

/// Whether `path` could need more than a case-insensitive comparison. One pass.
fn is_irregular(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut previous = 0u8;
    for &b in bytes {
        if matches!(b, b'%' | b';' | b'\\') || (previous == b'/' && matches!(b, b'/' | b'.')) {
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
    let mut decoded: Cow<'_, str> = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    for _ in 0..2 {
        if !decoded.contains('%') {
            break;
        }
        let again = percent_encoding::percent_decode_str(&decoded)
            .decode_utf8_lossy()
            .into_owned();
        decoded = Cow::Owned(again);
    }
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
            ".." => {
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
    out
}

/// A request path made ready to be compared with several endpoints: the irregularity check,
/// and the normalization an irregular path needs, are done once.
pub(crate) enum Prepared<'a> {
    /// A regular path, without its `.suffix`: compared case-insensitively.
    Regular(&'a str),
    /// An irregular path, [`normalize`]d.
    Normalized(String),
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(path: &'a str) -> Self {
        if is_irregular(path) {
            Self::Normalized(normalize(path))
        } else {
            Self::Regular(strip_suffix(path))
        }
    }

    /// Whether the path names the endpoint whose [`normalize`]d path is `target`.
    pub(crate) fn is(&self, target: &str) -> bool {
        match self {
            Self::Regular(path) => path.eq_ignore_ascii_case(target),
            Self::Normalized(path) => path == target,
        }
    }
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
