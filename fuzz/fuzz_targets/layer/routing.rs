//! Routing: the readings of a path.

use std::collections::{HashMap, VecDeque};

use http::HeaderMap;

use crate::{AUTHORIZE, TOKEN};

/// How many spellings of one path the router model follows, breadth first.
const PATH_STATES: usize = 384;

/// `%XX` and `%uXXXX` escapes decoded once (`+` is kept), the bytes then read as UTF-8.
fn decode_once(s: &str) -> String {
    let raw = s.as_bytes();
    let hex = |digits: &[u8]| -> Option<u32> {
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            if matches!(raw.get(i + 1), Some(b'u' | b'U')) {
                if let Some(unit) = raw.get(i + 2..i + 6).and_then(hex) {
                    let c = char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER);
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    i += 6;
                    continue;
                }
            } else if let Some(byte) = raw.get(i + 1..i + 3).and_then(hex) {
                out.push(byte as u8);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unicode case folding as Python, JavaScript and Java routers compare: uppercased, then
/// lowercased (`ı` is `i`, `ſ` is `s`, the Kelvin sign is `k`).
fn fold_case(s: &str) -> String {
    s.to_uppercase().to_lowercase()
}

/// The part of Unicode compatibility normalization (NFKC) that makes ASCII: full-width forms,
/// the Kelvin sign, the long `s`, the ideographic space and one-dot leaders.
fn compatibility(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{212A}' => 'K',
            '\u{017F}' => 's',
            '\u{3000}' => ' ',
            '\u{2024}' | '\u{FE52}' => '.',
            c => c,
        })
        .collect()
}

/// Every segment's `;` parameters dropped (servlet containers).
fn drop_params(s: &str) -> String {
    s.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// Dot segments resolved (RFC 3986, 5.2.4).
fn remove_dots(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    let last = parts.len() - 1;
    for (i, segment) in parts.iter().enumerate() {
        if i == 0 {
            if !segment.is_empty() && *segment != "." && *segment != ".." {
                out.push(segment);
            }
            continue;
        }
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

fn collapse_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Cut at a NUL (C servers), and at a `?` or `#` (servers that decode the whole target before
/// they split it).
fn cut(s: &str) -> String {
    s.split(['\0', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every segment trimmed of whitespace and controls (Spring), trailing dots and spaces dropped
/// from the last (IIS).
fn trim_segments(s: &str) -> String {
    let mut segments: Vec<&str> = s
        .split('/')
        .map(|segment| {
            segment.trim_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control())
        })
        .collect();
    if let Some(last) = segments.last_mut() {
        *last = last.trim_end_matches([' ', '.']);
    }
    segments.join("/")
}

/// The spellings of a path one step of some router's reading away, each with that step.
fn steps(s: &str, script_names: &[String]) -> Vec<(&'static str, String)> {
    let mut next = vec![
        ("decoded", decode_once(s)),
        ("case-folded", fold_case(s)),
        ("NFKC", compatibility(s)),
        ("`;` parameters dropped", drop_params(s)),
        ("dot segments resolved", remove_dots(s)),
        ("`\\` read as `/`", s.replace('\\', "/")),
        ("slashes collapsed", collapse_slashes(s)),
        ("cut at NUL, `?` or `#`", cut(s)),
        ("segments trimmed", trim_segments(s)),
    ];
    // gunicorn before 22: `PATH_INFO = path.split(SCRIPT_NAME, 1)[1]`.
    for name in script_names {
        if let Some((_, rest)) = s.split_once(name.as_str()) {
            let rest = if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            };
            next.push(("SCRIPT_NAME cut", rest));
        }
    }
    next
}

/// Whether a router that reads the path as `s` runs `endpoint`: the path itself, or the path
/// with a PATH_INFO suffix (`/token/x`) or an extension (`/token.php`, `/token.php/x`).
fn routes_to(s: &str, endpoint: &str) -> bool {
    s.strip_prefix(endpoint)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '.']))
}

/// How a path was read: where it came from and each step, ending with the spelling.
fn trail(parents: &HashMap<String, (Option<String>, &'static str)>, s: &str) -> String {
    let mut steps = Vec::new();
    let mut at = Some(s.to_owned());
    while let Some(here) = at {
        let Some((parent, how)) = parents.get(&here) else {
            break;
        };
        steps.push(format!("{how} {here:?}"));
        at = parent.clone();
    }
    steps.reverse();
    steps.join(", ")
}

/// For the token and the authorize endpoint, a reading of the request's path (or of a routing
/// header) that some router runs it for, if any, described step by step.
pub fn route(path: &str, headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let script_names: Vec<String> = headers
        .get_all("script_name")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    let mut queue: VecDeque<String> = VecDeque::new();
    // Every spelling reached, with the one it came from and how.
    let mut parents: HashMap<String, (Option<String>, &'static str)> = HashMap::new();
    let mut starts = vec![("the path", path.to_owned())];
    for (name, label) in [
        ("x-original-url", "the X-Original-URL header"),
        ("x-rewrite-url", "the X-Rewrite-URL header"),
    ] {
        for value in headers.get_all(name) {
            if let Ok(url) = value.to_str() {
                let url = url.split(['?', '#']).next().unwrap_or_default().to_owned();
                starts.push((label, url));
            }
        }
    }
    for (label, start) in starts {
        if !parents.contains_key(&start) {
            parents.insert(start.clone(), (None, label));
            queue.push_back(start);
        }
    }
    let (mut token, mut authorize) = (None, None);
    while let Some(s) = queue.pop_front() {
        if token.is_none() && routes_to(&s, TOKEN) {
            token = Some(trail(&parents, &s));
        }
        if authorize.is_none() && routes_to(&s, AUTHORIZE) {
            authorize = Some(trail(&parents, &s));
        }
        if token.is_some() && authorize.is_some() {
            break;
        }
        for (how, next) in steps(&s, &script_names) {
            if parents.len() >= PATH_STATES {
                break;
            }
            if !parents.contains_key(&next) {
                parents.insert(next.clone(), (Some(s.clone()), how));
                queue.push_back(next);
            }
        }
    }
    (token, authorize)
}
