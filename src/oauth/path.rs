//! Endpoint matching that reads a request path as leniently as the laxest common router, so that
//! `/Token`, `/token/`, `//token`, `/%74oken`, `/x/../token` and `/token;jsessionid=1` all count
//! as the token endpoint. Matching too much only means inspecting more; matching too little
//! would let a request reach the upstream's handler unchecked.

use std::borrow::Cow;

/// Whether `path` could need more than a case-insensitive comparison.
fn is_irregular(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().any(|&b| matches!(b, b'%' | b';' | b'\\'))
        || path.contains("//")
        || path.contains("/.")
        || (bytes.len() > 1 && bytes.last() == Some(&b'/'))
        || bytes.first() != Some(&b'/')
}

/// The canonical form of a path: percent-decoded, `\` read as `/`, matrix parameters
/// (`;...`) dropped from every segment, empty and `.` segments removed, `..` resolved,
/// no trailing slash, ASCII-lowercased.
pub(crate) fn normalize(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let slashed: Cow<'_, str> = if decoded.contains('\\') {
        Cow::Owned(decoded.replace('\\', "/"))
    } else {
        decoded
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in slashed.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
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

/// Whether the request path `path` names the endpoint whose [`normalize`]d path is `target`.
/// Allocation-free unless the path is irregular.
pub(crate) fn matches(path: &str, target: &str) -> bool {
    if is_irregular(path) {
        normalize(path) == target
    } else {
        path.eq_ignore_ascii_case(target)
    }
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
}
