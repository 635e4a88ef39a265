//! Where flows are kept: `memory`, or a Redis URL whose password is never shown.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// Where pending flows and code bindings are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// In this process ([`MemoryStore`](tower_pkce::MemoryStore)); flows do not survive a restart
    /// and are not shared between replicas.
    Memory,
    /// A Redis or Valkey server shared by every replica (`RedisStore`, cargo feature
    /// `redis`).
    Redis(RedisUrl),
}

/// A `redis://`, `rediss://` or `redis+unix://` URL. It may carry a password (in its user
/// information, or in a `pass`/`password` query parameter), so its `Debug` and `Display` show
/// `***` in its place, and a URL that does not parse is shown as its scheme only.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks the scheme, and refuses `#insecure` (a TLS connection that does not verify the
    /// server); the rest is checked when the store is built.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
        let candidate = Self(url.to_owned());
        if !SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Err(ConfigError::new(format!(
                "invalid --store {candidate}: expected memory or a redis://, rediss:// or \
                 redis+unix:// URL"
            )));
        }
        if url::Url::parse(url).is_ok_and(|u| u.fragment().is_some()) {
            return Err(ConfigError::new(format!(
                "invalid --store {candidate}: a #fragment (such as #insecure, which turns off \
                 certificate checks) is not accepted"
            )));
        }
        Ok(candidate)
    }

    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            // Never the raw text: a password with a `/` or `#` in it is what breaks parsing.
            let scheme = self.0.split_once("://").map_or("", |(s, _)| s);
            let scheme = if scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                scheme
            } else {
                ""
            };
            return write!(f, "{scheme}://<URL that does not parse>");
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        // A password with unencoded `@`, `/` or `?` spills into the path or the query: show
        // a path only when it is a database number (or a socket path for `redis+unix`), and
        // query values only for the settings known to be harmless.
        let unix = url.scheme().ends_with("unix");
        if !unix
            && !url
                .path()
                .trim_start_matches('/')
                .chars()
                .all(|c| c.is_ascii_digit())
        {
            url.set_path("/***");
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let harmless = ["db", "protocol"].iter().any(|s| k.eq_ignore_ascii_case(s));
                    let v = if harmless {
                        v.into_owned()
                    } else {
                        "***".into()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        if url.fragment().is_some() {
            url.set_fragment(Some("***"));
        }
        f.write_str(url.as_str())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

impl fmt::Display for StoreSpec {
    /// `memory`, or the Redis URL with its password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(url) => url.fmt(f),
        }
    }
}

/// Written as its `Display`, so a Redis password is `***` in `--print-config`: a printed
/// configuration read back keeps that placeholder, not the password.
impl Serialize for StoreSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StoreSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "memory" => Ok(Self::Memory),
            url => RedisUrl::new(url)
                .map(Self::Redis)
                .map_err(serde::de::Error::custom),
        }
    }
}
