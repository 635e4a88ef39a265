//! The whole layer, driven by arbitrary sequences of requests in front of an in-process legacy
//! server that knows nothing of PKCE. The legacy server itself checks the invariants, reading
//! requests as leniently as a careless server would (DESIGN.md, "Forward only what was
//! verified"):
//!
//! - it routes a request to its token (or authorize) endpoint when any lenient router would:
//!   the path percent-decoded again and again (`%uXXXX` too), in any case (Unicode's: the
//!   Kelvin sign is `k`), full-width letters read as ASCII, `;` parameters dropped, dot
//!   segments resolved, `\` read as `/`, repeated slashes collapsed, cut at a NUL, `?` or `#`,
//!   segments trimmed, a PATH_INFO suffix after the endpoint's path (`/token/x`,
//!   `/token.php/x`), a `SCRIPT_NAME` header cut from the front (gunicorn before 22), or the
//!   path taken from `X-Original-URL` or `X-Rewrite-URL`;
//! - it reads a token request from the query string, the body (as a form, and as JSON where it
//!   is JSON) and the `Cookie` header (PHP's `$_REQUEST`, ASP.NET's `Request[]`), any of them
//!   alone or together in that order, under every reading of `tower_pkce::fuzzing::READINGS`
//!   (and this target's own: any case with a `[...]` suffix dropped), taking the first or the
//!   last copy of each name;
//! - under each of these readings it never redeems a code whose authorization request carried
//!   a challenge unless the `code_verifier` that same reading finds matches it (S256), never
//!   redeems a code of a client that is not exempt without one, and never redeems a code twice;
//!
//! and the client checks that a redirect carrying a code brings back exactly the `state` it
//! sent. A panic anywhere, and a 500 from the layer, are crashes too.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use tower::{Layer as _, ServiceExt as _};
use tower_pkce::fuzzing::{Reading, READINGS};
use tower_pkce::{MemoryStore, PkceLayer};

const REDIRECT: &str = "https://app.example/cb";
const EXEMPT: &str = "conf";
const TOKEN: &str = "/token";
const AUTHORIZE: &str = "/authorize";

/// Verifiers the client picks from, by index.
fn verifier(i: u8) -> String {
    format!(
        "{:0>43}",
        format!("v{i}-verifier-for-the-layer-fuzz-target")
    )
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Client {
    App,
    Exempt,
    Other,
    Missing,
}

impl Client {
    fn id(self) -> Option<&'static str> {
        match self {
            Client::App => Some("app"),
            Client::Exempt => Some(EXEMPT),
            Client::Other => Some("other"),
            Client::Missing => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Challenge {
    S256(u8),
    Plain(u8),
    MethodOnly,
    None,
    Raw(String, Option<String>),
}

#[derive(Arbitrary, Debug)]
enum Verifier {
    /// The verifier of the flow that issued the code.
    Own,
    Pair(u8),
    None,
    Raw(String),
}

/// Where a request for an endpoint is sent.
#[derive(Arbitrary, Debug)]
enum Target {
    /// The endpoint's own path.
    Canonical,
    /// One of the endpoint's [`tricks`], by index.
    Trick(u8),
    /// Anything starting with `/`.
    Raw(String),
}

/// Spellings of an endpoint's path (`/token`, or `/authorize`) that some router reads as it,
/// each with the `SCRIPT_NAME` header that goes with it, if any.
fn tricks(endpoint: &str) -> Vec<(String, Option<&'static str>)> {
    let name = endpoint.trim_start_matches('/');
    let (first, rest) = name.split_at(1);
    let first = first.as_bytes()[0];
    // The name with its first non-ASCII lookalike: the Kelvin sign for `k`, a dotless `ı`
    // for `i`, a long `ſ` for `s`; or else a full-width first letter.
    // A full-width first letter: U+FF41 (`ａ`) and on, EF BD 81 in UTF-8.
    let fullwidth = format!("%EF%BD%{:02X}{rest}", 0x81 + u32::from(first - b'a'));
    let folding = if name.contains('k') {
        name.replacen('k', "%E2%84%AA", 1)
    } else if name.contains('i') {
        name.replacen('i', "%C4%B1", 1)
    } else if name.contains('s') {
        name.replacen('s', "%C5%BF", 1)
    } else {
        fullwidth.clone()
    };
    let upper = name.to_ascii_uppercase();
    let plain: Vec<String> = vec![
        format!("/{name}/x"),
        format!("/{name}.php/x"),
        format!("/{name}.php"),
        format!("/{name}/"),
        format!("/{name}.json"),
        format!("/{upper}"),
        format!("/%u{:04x}{rest}", first),
        format!("/%U{:04X}{rest}", first),
        format!("/%{:02x}{rest}", first),
        format!("/%25{:02x}{rest}", first),
        format!("/%2525{:02x}{rest}", first),
        format!("/%252525{:02x}{rest}", first),
        format!("/%25u{:04x}{rest}", first),
        format!("/{folding}"),
        format!("/{folding}/x"),
        format!("/{}", folding.to_ascii_uppercase()),
        format!("/{fullwidth}"),
        format!("/{name};x=1"),
        format!("/{name};x=1/y"),
        format!("/{name}%3Bx=1"),
        format!("//{name}"),
        format!("/x/../{name}"),
        format!("/x/%2e%2e/{name}"),
        format!("/{name}/../x"),
        format!("/./{name}"),
        format!("/{name}%2Fx"),
        format!("/{name}%3Fx"),
        format!("/{name}%23x"),
        format!("/{name}%00.html"),
        format!("/{name}%20"),
        format!("/{name}.%20"),
        format!("/%5C{name}"),
        format!("/{name}%5Cx"),
        format!("/app/{name}"),
        format!("/app/{name}/x"),
    ];
    plain
        .into_iter()
        .map(|path| {
            let script = path.starts_with("/app/").then_some("/app");
            (path, script)
        })
        .collect()
}

/// The path `target` names for `endpoint`, and the `SCRIPT_NAME` that goes with it.
fn target_path(target: &Target, endpoint: &str) -> Option<(String, Option<&'static str>)> {
    match target {
        Target::Canonical => Some((endpoint.to_owned(), None)),
        Target::Trick(i) => {
            let all = tricks(endpoint);
            let at = usize::from(*i) % all.len();
            all.into_iter().nth(at)
        }
        Target::Raw(p) if p.starts_with('/') => Some((p.clone(), None)),
        Target::Raw(_) => None,
    }
}

/// A header a careless stack reads parameters or a route from.
#[derive(Arbitrary, Debug)]
enum Extra {
    /// `SCRIPT_NAME` (gunicorn before 22 cuts it from the front of the path); `/app` if none.
    ScriptName(Option<String>),
    /// `X-Original-URL`, or `X-Rewrite-URL` (IIS rewrites); the endpoint's path if none.
    OriginalUrl { rewrite: bool, url: Option<String> },
    /// A `Cookie` header as sent.
    Cookie(Vec<u8>),
}

fn add_extras(request: &mut Request<Full<Bytes>>, extras: &[Extra], endpoint: &str) {
    for extra in extras {
        let (name, value): (&str, Vec<u8>) = match extra {
            Extra::ScriptName(v) => (
                "script_name",
                v.as_deref().unwrap_or("/app").as_bytes().to_vec(),
            ),
            Extra::OriginalUrl { rewrite, url } => (
                if *rewrite {
                    "x-rewrite-url"
                } else {
                    "x-original-url"
                },
                url.as_deref().unwrap_or(endpoint).as_bytes().to_vec(),
            ),
            Extra::Cookie(c) => ("cookie", c.clone()),
        };
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            request
                .headers_mut()
                .append(http::HeaderName::from_static(name), value);
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Path {
    Authorize,
    Token,
    Metadata,
    Resource,
    /// One of the [`tricks`] for the token endpoint.
    TokenTrick(u8),
    /// One of the [`tricks`] for the authorize endpoint.
    AuthorizeTrick(u8),
    Raw(String),
}

/// A parameter of a token request.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    GrantType,
    Code,
    Verifier,
    ClientId,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::GrantType => "grant_type",
            Field::Code => "code",
            Field::Verifier => "code_verifier",
            Field::ClientId => "client_id",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Body,
    Query,
    Cookie,
}

/// A parameter of a token request moved (or copied) elsewhere, its name spelt as some server
/// reads it ([`spell`]).
#[derive(Arbitrary, Debug)]
struct Move {
    field: Field,
    place: Place,
    spelling: u8,
    /// Whether the parameter also stays where it was.
    keep: bool,
}

/// How many spellings [`spell`] knows.
const SPELLINGS: u8 = 22;

/// A pair `name=value` as one of the spellings some reading in `READINGS` takes for `name`.
fn spell(name: &str, value: &str, spelling: u8) -> String {
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let first = name.as_bytes()[0];
    let rest = &name[1..];
    let camel = {
        let mut out = String::new();
        let mut up = false;
        for c in name.chars() {
            if c == '_' {
                up = true;
            } else if up {
                out.push(c.to_ascii_uppercase());
                up = false;
            } else {
                out.push(c);
            }
        }
        out
    };
    let name = match spelling % SPELLINGS {
        0 => name.to_owned(),
        1 => name.to_ascii_uppercase(),
        2 => format!("{name}[]"),
        3 => format!("[{name}]"),
        4 => format!("{name}[0]"),
        5 => format!("%5B{name}%5D"),
        6 => format!("%{first:02X}{rest}"),
        7 => format!("%u{first:04x}{rest}"),
        8 => format!("{name}%00x"),
        9 => format!("+{name}"),
        10 => name.replace('_', "."),
        11 => name.replace('_', "+"),
        12 => camel,
        13 => name.replace('_', "-").to_ascii_uppercase(),
        14 if name.contains('i') => name.replacen('i', "%C4%B1", 1),
        14 => format!("{}{rest}", char::from(first).to_ascii_uppercase()),
        15 => return format!("x=%26{name}%3D{value}"),
        16 => return format!("x=%2526{name}%253D{value}"),
        17 => return format!("x=1;{name}={value}"),
        18 => return format!("x=%26%25u{first:04x}{rest}%3D{value}"),
        19 => name.replacen('_', "[", 1),
        20 => format!("{name}[x"),
        _ => format!("%{:02X}{rest}", first.to_ascii_uppercase()),
    };
    format!("{name}={value}")
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A client's authorization request; the code from its redirect is remembered.
    Authorize {
        client: Client,
        challenge: Challenge,
        state: Option<String>,
        post: bool,
        extra: Vec<u8>,
        target: Target,
        headers: Vec<Extra>,
    },
    /// A token request for a remembered code.
    Token {
        code: u8,
        verifier: Verifier,
        client: Client,
        basic: bool,
        json: bool,
        extra: Vec<u8>,
        target: Target,
        moves: Vec<Move>,
        query: Vec<u8>,
        headers: Vec<Extra>,
    },
    /// Anything at all.
    Raw {
        path: Path,
        post: bool,
        query: Vec<u8>,
        body: Vec<u8>,
        content_type: Option<String>,
        headers: Vec<Extra>,
    },
}

/// What the legacy server issued a code for, as it read the authorization request.
struct Issued {
    client: Option<String>,
    challenge: Option<String>,
    method: Option<String>,
}

/// One lenient server's way of reading a token request: which reading, which body, which
/// sources, which copy of each name, and where the client comes from. It redeems a code at
/// most once.
type ServerKey = (usize, usize, u8, [u8; 3]);

#[derive(Default)]
struct Legacy {
    next: u64,
    issued: HashMap<String, Issued>,
    redeemed: HashSet<(ServerKey, String)>,
}

/// Every value whose name a lenient server reads as `name`: decoded, any case, a `[...]`
/// suffix dropped.
fn lenient(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().split('[').next() == Some(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn one(pairs: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<String> = lenient(pairs, name)
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect();
    let mut distinct = values.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() <= 1,
        "the upstream could read {name} as any of {values:?}"
    );
    distinct.pop()
}

fn form(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect()
}

/// This target's own reading, as [`lenient`]: names in ASCII case, a `[...]` suffix dropped.
fn lenient_reading(form: &[u8]) -> Vec<(String, Vec<u8>)> {
    form_urlencoded::parse(form)
        .map(|(n, v)| {
            let name = n.to_ascii_lowercase();
            let name = name.split('[').next().unwrap_or_default().to_owned();
            (name, v.into_owned().into_bytes())
        })
        .collect()
}

/// The readings of a token request's parameters: the library's table and this target's own.
fn readings() -> Vec<(&'static str, Reading)> {
    let mut all: Vec<(&'static str, Reading)> = READINGS.to_vec();
    all.push((
        "names in ASCII case with a `[...]` suffix dropped (this target's own)",
        lenient_reading,
    ));
    all
}

/// How `reading` spells a parameter's name: as it reads a form of that one name.
fn key(reading: Reading, name: &str) -> String {
    reading(format!("{name}=x").as_bytes())
        .into_iter()
        .next()
        .map(|(n, _)| n)
        .unwrap_or_default()
}

/// A JSON object's members as a form, for the readings (a server that binds JSON names as it
/// binds form names); `None` if the body is no JSON object.
fn json_as_form(bytes: &[u8]) -> Option<Vec<u8>> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(bytes) else {
        return None;
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => form.append_pair(&k, &s),
            other => form.append_pair(&k, &other.to_string()),
        };
    }
    Some(form.finish().into_bytes())
}

/// The `Cookie` headers as a form: PHP splits them at `;` and drops the spaces before a name,
/// then reads the pairs as it reads a query string.
fn cookies_as_form(headers: &HeaderMap) -> Vec<u8> {
    let mut form = Vec::new();
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let start = pair
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(pair.len());
            if start < pair.len() {
                if !form.is_empty() {
                    form.push(b'&');
                }
                form.extend_from_slice(&pair[start..]);
            }
        }
    }
    form
}

// ---------------------------------------------------------------------------------------------
// Routing: the readings of a path

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
fn route(path: &str, headers: &HeaderMap) -> (Option<String>, Option<String>) {
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

// ---------------------------------------------------------------------------------------------
// The legacy server

fn reply(
    status: StatusCode,
    location: Option<String>,
    body: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    if let Some(location) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

const SOURCES: [&str; 3] = ["query", "body", "cookies"];

/// The first or the last copy, an empty one being absent (RFC 6749 §3.1).
fn pick<'a>(copies: &[&'a [u8]], last: bool) -> Option<&'a [u8]> {
    let copy = if last { copies.last() } else { copies.first() };
    copy.copied().filter(|v| !v.is_empty())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The token endpoint under every reading: asserts the invariants for each code some reading
/// redeems, and records it redeemed for that reading. Whether any reading redeemed a code.
fn token_endpoint(
    legacy: &mut Legacy,
    route: &str,
    query: &[u8],
    body: &[u8],
    headers: &HeaderMap,
) -> bool {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|c| STANDARD.decode(c).ok())
        .and_then(|c| String::from_utf8(c).ok())
        .and_then(|c| c.split_once(':').map(|(user, _)| user.to_owned()));
    let json = json_as_form(body);
    let cookies = cookies_as_form(headers);
    let mut hashes: HashMap<Vec<u8>, String> = HashMap::new();
    let mut redeemed_any = false;
    for (r, (label, reading)) in readings().into_iter().enumerate() {
        let (code_key, verifier_key, client_key) = (
            key(reading, "code"),
            key(reading, "code_verifier"),
            key(reading, "client_id"),
        );
        let q = reading(query);
        let c = reading(&cookies);
        let mut bodies = vec![("a form", reading(body))];
        if let Some(json) = &json {
            bodies.push(("JSON", reading(json)));
        }
        for (b, (body_as, body_pairs)) in bodies.iter().enumerate() {
            let parts: [&[(String, Vec<u8>)]; 3] = [&q, body_pairs, &c];
            for mask in 1u8..8 {
                // A source with nothing in it adds no server of its own.
                if (0..3).any(|i| mask & (1 << i) != 0 && parts[i].is_empty()) && mask != 2 {
                    continue;
                }
                let copies = |key: &str| -> Vec<&[u8]> {
                    (0..3)
                        .filter(|i| mask & (1 << i) != 0)
                        .flat_map(|i| parts[i].iter())
                        .filter(|(n, _)| n == key)
                        .map(|(_, v)| v.as_slice())
                        .collect()
                };
                let (codes, verifiers, ids) = (
                    copies(&code_key),
                    copies(&verifier_key),
                    copies(&client_key),
                );
                if codes.is_empty() {
                    continue;
                }
                for code_last in [false, true] {
                    let Some(code) = pick(&codes, code_last).map(lossy) else {
                        continue;
                    };
                    let Some(issued) = legacy.issued.get(&code) else {
                        continue;
                    };
                    for verifier_last in [false, true] {
                        // The client: Basic's user first or the parameter's first or last.
                        for client_from in 0u8..4 {
                            let id = pick(&ids, client_from % 2 == 1).map(lossy);
                            let client = if client_from < 2 {
                                basic.clone().or(id)
                            } else {
                                id.or_else(|| basic.clone())
                            };
                            // Like any server, the legacy one redeems a code only for the
                            // client it was issued to.
                            if client.is_none() || client != issued.client {
                                continue;
                            }
                            let verifier = pick(&verifiers, verifier_last);
                            let sources: Vec<&str> = (0..3)
                                .filter(|i| mask & (1 << i) != 0)
                                .map(|i| SOURCES[i])
                                .collect();
                            let server = || {
                                format!(
                                    "reading {label:?}, the body as {body_as}, from {sources:?}, \
                                     the {} code and the {} verifier; routed to the token endpoint from {route}",
                                    if code_last { "last" } else { "first" },
                                    if verifier_last { "last" } else { "first" },
                                )
                            };
                            match (&issued.challenge, issued.client.as_deref()) {
                                (Some(challenge), _) => {
                                    assert_eq!(
                                        issued.method.as_deref(),
                                        Some("S256"),
                                        "a plain or unnamed method got through"
                                    );
                                    let verifier = verifier.unwrap_or_else(|| {
                                        panic!("{code} redeemed without a verifier: {}", server())
                                    });
                                    let hash = hashes
                                        .entry(verifier.to_vec())
                                        .or_insert_with(|| s256(&lossy(verifier)));
                                    assert_eq!(
                                        hash,
                                        challenge,
                                        "{code} redeemed with the wrong verifier {:?}: {}",
                                        lossy(verifier),
                                        server()
                                    );
                                }
                                (None, Some(EXEMPT)) => {}
                                (None, client) => panic!(
                                    "{code} of {client:?} was issued and redeemed without PKCE: {}",
                                    server()
                                ),
                            }
                            let key: ServerKey = (
                                r,
                                b,
                                mask,
                                [u8::from(code_last), u8::from(verifier_last), client_from],
                            );
                            assert!(
                                legacy.redeemed.insert((key, code.clone())),
                                "{code} redeemed twice: {}",
                                server()
                            );
                            redeemed_any = true;
                        }
                    }
                }
            }
        }
    }
    redeemed_any
}

async fn legacy(
    state: Arc<Mutex<Legacy>>,
    req: Request<tower_pkce::PkceBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let (token, authorize) = route(parts.uri.path(), &parts.headers);
    let mut legacy = state.lock().unwrap();
    let mut redeemed = false;
    if let Some(route) = &token {
        redeemed = token_endpoint(&mut legacy, route, query, &body, &parts.headers);
    }
    if authorize.is_some() {
        let mut pairs = form(query);
        pairs.extend(form(&body));
        let client = one(&pairs, "client_id");
        let redirect = one(&pairs, "redirect_uri").unwrap_or_else(|| REDIRECT.to_owned());
        legacy.next += 1;
        let code = format!("code{}", legacy.next);
        legacy.issued.insert(
            code.clone(),
            Issued {
                client,
                challenge: one(&pairs, "code_challenge"),
                method: one(&pairs, "code_challenge_method"),
            },
        );
        let mut location = format!("{redirect}?code={code}");
        if let Some(state) = lenient(&pairs, "state").first() {
            location.push_str("&state=");
            location.extend(form_urlencoded::byte_serialize(state.as_bytes()));
        }
        return Ok(reply(StatusCode::FOUND, Some(location), ""));
    }
    if token.is_some() {
        return Ok(if redeemed {
            reply(
                StatusCode::OK,
                None,
                r#"{"access_token":"t","token_type":"Bearer"}"#,
            )
        } else {
            reply(
                StatusCode::BAD_REQUEST,
                None,
                r#"{"error":"invalid_grant"}"#,
            )
        });
    }
    if parts
        .uri
        .path()
        .to_ascii_lowercase()
        .contains(".well-known")
    {
        return Ok(reply(
            StatusCode::OK,
            None,
            r#"{"issuer":"https://as.example","authorization_endpoint":"https://as.example/authorize","token_endpoint":"https://as.example/token"}"#,
        ));
    }
    Ok(reply(StatusCode::OK, None, "resource"))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A code the client saw, with the verifier of the flow it came from.
struct Seen {
    code: String,
    verifier: Option<String>,
}

fn params_of(location: &str) -> Vec<(String, String)> {
    let after = location.split_once(['?', '#']).map_or("", |(_, rest)| rest);
    form(after.replace('#', "&").as_bytes())
}

fn build(
    method: &Method,
    path: &str,
    query: &[u8],
    body: Vec<u8>,
    content_type: Option<&str>,
) -> Option<Request<Full<Bytes>>> {
    let mut uri = path.to_owned();
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(std::str::from_utf8(query).ok()?);
    }
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    if let Some(content_type) = content_type {
        builder = builder.header(CONTENT_TYPE, content_type);
    }
    builder.body(Full::new(Bytes::from(body))).ok()
}

/// Adds the `SCRIPT_NAME` a trick path goes with.
fn add_script_name(request: &mut Request<Full<Bytes>>, script: Option<&'static str>) {
    if let Some(script) = script {
        request
            .headers_mut()
            .append("script_name", HeaderValue::from_static(script));
    }
}

fn join(pairs: &[String], separator: &str) -> Vec<u8> {
    pairs.join(separator).into_bytes()
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > 64 {
        return;
    }
    let state = Arc::new(Mutex::new(Legacy::default()));
    let inner = {
        let state = state.clone();
        tower::service_fn(move |req| legacy(state.clone(), req))
    };
    let layer = PkceLayer::new()
        .exempt_client(EXEMPT)
        .client_redirect_uris("app", [REDIRECT])
        .max_failed_attempts(3)
        .unwrap_or_else(|e| panic!("3 attempts: {e}"))
        .with_store(MemoryStore::with_capacity(1024));
    let svc = layer.layer(inner);
    let mut seen: Vec<Seen> = Vec::new();

    runtime().block_on(async {
        for op in ops {
            match op {
                Op::Authorize {
                    client,
                    challenge,
                    state: client_state,
                    post,
                    extra,
                    target,
                    headers,
                } => {
                    let Some((path, script)) = target_path(&target, AUTHORIZE) else {
                        continue;
                    };
                    let mut fields: Vec<(&str, String)> = vec![("response_type", "code".into())];
                    if let Some(id) = client.id() {
                        fields.push(("client_id", id.into()));
                    }
                    fields.push(("redirect_uri", REDIRECT.into()));
                    let mut own = None;
                    match challenge {
                        Challenge::S256(i) => {
                            let v = verifier(i);
                            fields.push(("code_challenge", s256(&v)));
                            fields.push(("code_challenge_method", "S256".into()));
                            own = Some(v);
                        }
                        Challenge::Plain(i) => {
                            let v = verifier(i);
                            fields.push(("code_challenge", v.clone()));
                            fields.push(("code_challenge_method", "plain".into()));
                            own = Some(v);
                        }
                        Challenge::MethodOnly => {
                            fields.push(("code_challenge_method", "S256".into()))
                        }
                        Challenge::None => {}
                        Challenge::Raw(c, m) => {
                            fields.push(("code_challenge", c));
                            if let Some(m) = m {
                                fields.push(("code_challenge_method", m));
                            }
                        }
                    }
                    if let Some(s) = &client_state {
                        fields.push(("state", s.clone()));
                    }
                    let mut encoded = form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(fields.iter().map(|(n, v)| (*n, v.as_str())))
                        .finish()
                        .into_bytes();
                    if !extra.is_empty() {
                        encoded.push(b'&');
                        encoded.extend_from_slice(&extra);
                    }
                    let request = if post {
                        build(
                            &Method::POST,
                            &path,
                            b"",
                            encoded,
                            Some("application/x-www-form-urlencoded"),
                        )
                    } else {
                        build(&Method::GET, &path, &encoded, Vec::new(), None)
                    };
                    let Some(mut request) = request else { continue };
                    add_script_name(&mut request, script);
                    add_extras(&mut request, &headers, AUTHORIZE);
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                    let Some(location) = response
                        .headers()
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                    else {
                        continue;
                    };
                    let back = params_of(location);
                    let Some(code) = lenient(&back, "code").into_iter().next() else {
                        continue;
                    };
                    // The client's state, and only it, comes back with a code. (Extra bytes
                    // may have carried a state of their own, which the layer refuses.)
                    let states = lenient(&back, "state");
                    match &client_state {
                        Some(s) => assert_eq!(states, vec![s.clone()], "state not restored"),
                        None if extra.is_empty() => assert!(states.is_empty(), "a state appeared"),
                        None => {}
                    }
                    seen.push(Seen {
                        code,
                        verifier: own,
                    });
                }
                Op::Token {
                    code,
                    verifier: which,
                    client,
                    basic,
                    json,
                    extra,
                    target,
                    moves,
                    query,
                    headers,
                } => {
                    let Some(flow) = seen.get(usize::from(code) % seen.len().max(1)) else {
                        continue;
                    };
                    let Some((path, script)) = target_path(&target, TOKEN) else {
                        continue;
                    };
                    let verifier = match which {
                        Verifier::Own => flow.verifier.clone(),
                        Verifier::Pair(i) => Some(verifier(i)),
                        Verifier::None => None,
                        Verifier::Raw(v) => Some(v),
                    };
                    let mut fields: Vec<(&str, String)> = vec![
                        ("grant_type", "authorization_code".into()),
                        ("code", flow.code.clone()),
                        ("redirect_uri", REDIRECT.into()),
                    ];
                    if let (Some(id), false) = (client.id(), basic) {
                        fields.push(("client_id", id.into()));
                    }
                    if let Some(v) = verifier {
                        fields.push(("code_verifier", v));
                    }
                    // Parameters moved or copied elsewhere, their names respelt.
                    let (mut in_body, mut in_query, mut in_cookie) =
                        (Vec::new(), Vec::new(), Vec::new());
                    let mut removed: Vec<&str> = Vec::new();
                    for m in moves.iter().take(8) {
                        let name = m.field.name();
                        let Some((_, value)) = fields.iter().find(|(n, _)| *n == name) else {
                            continue;
                        };
                        let pair = spell(name, value, m.spelling);
                        match m.place {
                            Place::Body => in_body.push(pair),
                            Place::Query => in_query.push(pair),
                            Place::Cookie => in_cookie.push(pair),
                        }
                        if !m.keep {
                            removed.push(name);
                        }
                    }
                    fields.retain(|(n, _)| !removed.contains(n));
                    let (body, content_type) = if json {
                        let mut map: serde_json::Map<String, serde_json::Value> = fields
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.clone().into()))
                            .collect();
                        for pair in &in_body {
                            if let Some((n, v)) = form_urlencoded::parse(pair.as_bytes()).next() {
                                map.insert(n.into_owned(), v.into_owned().into());
                            }
                        }
                        let mut body = serde_json::to_vec(&map).unwrap();
                        body.extend_from_slice(&extra);
                        (body, "application/json")
                    } else {
                        let mut body = form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(fields.iter().map(|(n, v)| (*n, v.as_str())))
                            .finish()
                            .into_bytes();
                        for pair in &in_body {
                            if !body.is_empty() {
                                body.push(b'&');
                            }
                            body.extend_from_slice(pair.as_bytes());
                        }
                        if !extra.is_empty() {
                            body.push(b'&');
                            body.extend_from_slice(&extra);
                        }
                        (body, "application/x-www-form-urlencoded")
                    };
                    let mut full_query = query;
                    for pair in &in_query {
                        if !full_query.is_empty() {
                            full_query.push(b'&');
                        }
                        full_query.extend_from_slice(pair.as_bytes());
                    }
                    let Some(mut request) =
                        build(&Method::POST, &path, &full_query, body, Some(content_type))
                    else {
                        continue;
                    };
                    if let (Some(id), true) = (client.id(), basic) {
                        let credentials = STANDARD.encode(format!("{id}:secret"));
                        if let Ok(value) = format!("Basic {credentials}").parse() {
                            request.headers_mut().insert(AUTHORIZATION, value);
                        }
                    }
                    if !in_cookie.is_empty() {
                        if let Ok(value) = HeaderValue::from_bytes(&join(&in_cookie, "; ")) {
                            request.headers_mut().append(COOKIE, value);
                        }
                    }
                    add_script_name(&mut request, script);
                    add_extras(&mut request, &headers, TOKEN);
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                }
                Op::Raw {
                    path,
                    post,
                    query,
                    body,
                    content_type,
                    headers,
                } => {
                    let (path, script) = match &path {
                        Path::Authorize => (AUTHORIZE.to_owned(), None),
                        Path::Token => (TOKEN.to_owned(), None),
                        Path::Metadata => ("/.well-known/openid-configuration".to_owned(), None),
                        Path::Resource => ("/resource".to_owned(), None),
                        Path::TokenTrick(i) => {
                            let Some(t) = target_path(&Target::Trick(*i), TOKEN) else {
                                continue;
                            };
                            t
                        }
                        Path::AuthorizeTrick(i) => {
                            let Some(t) = target_path(&Target::Trick(*i), AUTHORIZE) else {
                                continue;
                            };
                            t
                        }
                        Path::Raw(p) if p.starts_with('/') => (p.clone(), None),
                        Path::Raw(_) => continue,
                    };
                    let method = if post { Method::POST } else { Method::GET };
                    let Some(mut request) =
                        build(&method, &path, &query, body, content_type.as_deref())
                    else {
                        continue;
                    };
                    add_script_name(&mut request, script);
                    add_extras(&mut request, &headers, TOKEN);
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                    if let Some(location) = response
                        .headers()
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                    {
                        let back = params_of(location);
                        if let Some(code) = lenient(&back, "code").into_iter().next() {
                            seen.push(Seen {
                                code,
                                verifier: None,
                            });
                        }
                    }
                    let _ = response.into_body().collect().await;
                }
            }
        }
    });
});
