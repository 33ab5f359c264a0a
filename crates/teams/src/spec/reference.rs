//! Keeps `docs/team-spec.md` true to the document types: a serde
//! `Deserializer` that reads nothing walks [`TeamDoc`] as serde itself sees
//! it — each struct hands over its field names, each enum its values — and
//! the test compares what it found with the reference table's rows. A field
//! added to a `*Doc` type without a row, a row left for a field that is gone,
//! or an enum value the row does not name fails the test.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Deserialize;
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::doc::TeamDoc;

/// What a walk found: each field's path (`agents[].replay[].say`) and, for
/// an enum field, the values it takes.
#[derive(Default)]
struct Walk {
    fields: BTreeMap<String, &'static [&'static str]>,
    /// Struct types already listed: a type met again at another path (a
    /// nested team's `crew`) is the same type, documented once.
    seen: HashSet<&'static str>,
}

/// Deserializes a value at `path` out of nothing, noting the fields it meets.
struct Walker<'a> {
    walk: &'a mut Walk,
    path: String,
    /// False under a struct type already listed.
    record: bool,
}

impl Walker<'_> {
    fn child(&mut self, path: String, record: bool) -> Walker<'_> {
        Walker {
            walk: self.walk,
            path,
            record,
        }
    }

    fn unsupported<T>(&self, what: &str) -> Result<T, Error> {
        Err(de::Error::custom(format!(
            "`{}` is {what}, which the reference walker does not know: teach it",
            self.path
        )))
    }
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        self.unsupported("a self-describing value")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let path = format!("{}[]", self.path);
        let record = self.record;
        visitor.visit_seq(One(Some(self.child(path, record))))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // A free-form map (a tool call's `args`): no fields of its own.
        visitor.visit_map(NoEntries)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let record = self.record && self.walk.seen.insert(name);
        if record {
            for field in fields {
                let path = join(&self.path, field);
                self.walk.fields.insert(path, &[]);
            }
        }
        visitor.visit_map(Fields {
            walker: self,
            fields,
            next: 0,
            record,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if self.record {
            self.walk.fields.insert(self.path.clone(), variants);
        }
        let first: StrDeserializer<'_, Error> = variants[0].into_deserializer();
        visitor.visit_enum(first)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u128 f32 char bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct identifier ignored_any
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// A struct's fields, every one present.
struct Fields<'a> {
    walker: Walker<'a>,
    fields: &'static [&'static str],
    next: usize,
    record: bool,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        let key: StrDeserializer<'_, Error> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let path = join(&self.walker.path, self.fields[self.next]);
        self.next += 1;
        let record = self.record;
        seed.deserialize(self.walker.child(path, record))
    }
}

/// A list of one element.
struct One<'a>(Option<Walker<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|w| seed.deserialize(w)).transpose()
    }
}

/// An empty map.
struct NoEntries;

impl<'de> MapAccess<'de> for NoEntries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _: K) -> Result<Option<K::Value>, Error> {
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("an empty map has no values"))
    }
}

/// Every field path of a team spec, with its enum values.
fn spec_fields() -> BTreeMap<String, &'static [&'static str]> {
    let mut walk = Walk::default();
    let walker = Walker {
        walk: &mut walk,
        path: String::new(),
        record: true,
    };
    TeamDoc::deserialize(walker).expect("the walker reads every document type");
    walk.fields
}

/// The reference: each table row that opens with a field path in backticks,
/// keyed by the path.
fn documented() -> BTreeMap<String, String> {
    let text = include_str!("../../../../docs/team-spec.md");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `")?;
            let (path, _) = rest.split_once('`')?;
            Some((path.to_owned(), line.to_owned()))
        })
        .collect()
}

#[test]
fn the_walk_finds_the_fields_serde_reads() {
    let fields = spec_fields();
    // A few paths known from the types, so the walk itself is checked.
    for path in [
        "name",
        "agents[].replay_latency",
        "agents[].replay[].tool.args",
        "crew.tasks[].context",
        "group_chat.termination.any[].timeout",
        "group_chat.termination.all",
        "teams[].crew",
        "budget.max_wall_time",
    ] {
        assert!(fields.contains_key(path), "{path} not walked: {fields:?}");
    }
    assert_eq!(
        fields["group_chat.manager"],
        ["round_robin", "selector", "swarm"]
    );
    // A struct met twice is listed once, where it first appears.
    assert!(!fields.contains_key("teams[].crew.tasks"));
}

#[test]
fn every_spec_field_is_in_the_reference() {
    let fields = spec_fields();
    let documented = documented();
    let missing: Vec<&String> = fields
        .keys()
        .filter(|f| !documented.contains_key(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/team-spec.md has no row for {missing:?}"
    );
    let stale: Vec<&String> = documented
        .keys()
        .filter(|f| !fields.contains_key(*f))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/team-spec.md documents fields no spec has: {stale:?}"
    );
    for (path, values) in &fields {
        let row = &documented[path];
        let unnamed: BTreeSet<&&str> = values
            .iter()
            .filter(|v| !row.contains(&format!("`{v}`")))
            .collect();
        assert!(
            unnamed.is_empty(),
            "the row for {path} does not name the values {unnamed:?}"
        );
    }
}
