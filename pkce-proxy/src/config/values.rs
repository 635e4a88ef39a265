//! How settings are written in the file, in variables and on the command line: durations
//! as `10m`, sizes with a unit, addresses as `IP:PORT`, and `""` for a setting that is off.
//!
//! A value that does not read is an error message starting with the value, quoted; the
//! caller puts the flag's name in front (`cli::value_error`).

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tower_pkce::Mode;

/// `upstream`: only shown as given when it carries no credentials (it is refused then anyway).
pub(super) mod uri {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(uri: &Uri, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(uri)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("{:?}: not a URL", redacted(&text))))
    }

    /// A URL that may carry a password is never echoed.
    pub(crate) fn redacted(text: &str) -> &str {
        if text.contains('@') {
            "[redacted]"
        } else {
            text
        }
    }
}

/// `IP:PORT`.
pub(super) mod addr {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub(crate) fn parse<E: serde::de::Error>(text: &str) -> Result<SocketAddr, E> {
        text.parse()
            .map_err(|_| E::custom(format!("{text:?}: expected IP:PORT, e.g. 127.0.0.1:8080")))
    }
}

/// `IP:PORT`, or `""` for off.
pub(super) mod optional_addr {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            Ok(None)
        } else {
            super::addr::parse(&text).map(Some)
        }
    }
}

/// A text (a path, a file name), or `""` for none.
pub(super) mod optional {
    use super::*;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => value.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: From<String>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(d)?;
        Ok((!text.is_empty()).then(|| T::from(text)))
    }
}

/// `enforce` or `report`, in any case.
pub(super) mod mode {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let text = String::deserialize(d)?;
        text.to_ascii_lowercase()
            .parse()
            .map_err(|_| D::Error::custom(format!("{text:?}: expected enforce or report")))
    }
}

/// A duration such as `30s`, `10m` or `1h 30m` (its range is `Config::validate`'s to check).
pub(super) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map_err(|e| D::Error::custom(format!("{text:?}: {e} (expected e.g. 30s, 10m, 1h)")))
    }
}

/// A size: a number of bytes, or a text with a unit (`64KiB`).
pub(super) mod size {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub(crate) fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        n.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(n) => {
                usize::try_from(n).map_err(|_| D::Error::custom(format!("{n}: too large")))
            }
            Size::Text(text) => parse(&text).map_err(D::Error::custom),
        }
    }

    /// Bytes, or a number with `KiB`/`MiB` (or `K`/`M`, also binary).
    pub(crate) fn parse(text: &str) -> Result<usize, String> {
        let bad = || format!("{text:?}: expected bytes or a size such as 64KiB or 1MiB");
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: usize = digits.parse().map_err(|_| bad())?;
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).ok_or_else(bad)
    }
}

/// A list whose items are trimmed (a comma-separated variable may have spaces).
pub(super) fn trimmed<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    Ok(items.into_iter().map(|i| i.trim().to_owned()).collect())
}
