//! The operation model: the requests the fuzzer sends, and the spellings of paths and
//! parameter names it picks from.

use arbitrary::Arbitrary;

use crate::EXEMPT;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Client {
    App,
    Exempt,
    Other,
    Missing,
}

impl Client {
    pub fn id(self) -> Option<&'static str> {
        match self {
            Client::App => Some("app"),
            Client::Exempt => Some(EXEMPT),
            Client::Other => Some("other"),
            Client::Missing => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Challenge {
    S256(u8),
    Plain(u8),
    MethodOnly,
    None,
    Raw(String, Option<String>),
}

#[derive(Arbitrary, Debug)]
pub enum Verifier {
    /// The verifier of the flow that issued the code.
    Own,
    Pair(u8),
    None,
    Raw(String),
}

/// Where a request for an endpoint is sent.
#[derive(Arbitrary, Debug)]
pub enum Target {
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
pub fn target_path(target: &Target, endpoint: &str) -> Option<(String, Option<&'static str>)> {
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
pub enum Extra {
    /// `SCRIPT_NAME` (gunicorn before 22 cuts it from the front of the path); `/app` if none.
    ScriptName(Option<String>),
    /// `X-Original-URL`, or `X-Rewrite-URL` (IIS rewrites); the endpoint's path if none.
    OriginalUrl { rewrite: bool, url: Option<String> },
    /// A `Cookie` header as sent.
    Cookie(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
pub enum Path {
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
pub enum Field {
    GrantType,
    Code,
    Verifier,
    ClientId,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::GrantType => "grant_type",
            Field::Code => "code",
            Field::Verifier => "code_verifier",
            Field::ClientId => "client_id",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Body,
    Query,
    Cookie,
}

/// A parameter of a token request moved (or copied) elsewhere, its name spelt as some server
/// reads it ([`spell`]).
#[derive(Arbitrary, Debug)]
pub struct Move {
    pub field: Field,
    pub place: Place,
    pub spelling: u8,
    /// Whether the parameter also stays where it was.
    pub keep: bool,
}

/// How many spellings [`spell`] knows.
const SPELLINGS: u8 = 22;

/// A pair `name=value` as one of the spellings some reading in `READINGS` takes for `name`.
pub fn spell(name: &str, value: &str, spelling: u8) -> String {
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
pub enum Op {
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
