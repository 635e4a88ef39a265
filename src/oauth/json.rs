//! Reading a JSON object as its list of members, in order, duplicates kept, so that the layer
//! can refuse a repeated member instead of silently reading one copy.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// The members of a JSON object.
pub(crate) struct Members<'de, V>(pub(crate) Vec<(Cow<'de, str>, V)>);

struct MembersVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for MembersVisitor<V> {
    type Value = Members<'de, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(member) = map.next_entry::<Cow<'de, str>, V>()? {
            members.push(member);
        }
        Ok(Members(members))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Members<'de, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor(PhantomData))
    }
}

/// Parses `input` as one JSON object.
pub(crate) fn members<'de, V: Deserialize<'de>>(
    input: &'de str,
) -> Result<Vec<(Cow<'de, str>, V)>, serde_json::Error> {
    serde_json::from_str::<Members<'de, V>>(input).map(|m| m.0)
}
