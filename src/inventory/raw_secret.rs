//! A secret reference as written under `secrets:` (`{env: NAME}` or `{file: PATH}`),
//! read by hand so that a value written inline is refused without being echoed: serde's
//! own message would quote it ("invalid type: string \"S3cr3t\", expected struct ...").

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, Visitor};

pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

const EXPECTED: &str = "a reference, `{env: NAME}` (an environment variable) or `{file: PATH}` \
                        (a file holding the value): a secret's value is never written in the \
                        inventory";

impl<'de> serde::Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Reference)
    }
}

/// A serde_yaml message made fit to show: no internal type name ("expected struct
/// RawHost"), and under `secrets` no value ("invalid type: string \"S3cr3t\"" becomes
/// "invalid type: string").
pub fn without_internals(msg: &str) -> String {
    let mut msg = msg.to_string();
    if let Some(i) = msg.find("expected struct ") {
        msg.replace_range(i.., "expected a mapping");
    }
    if msg.starts_with("secrets") {
        if let Some(start) = msg.find("invalid type: ") {
            let kind = start + "invalid type: ".len();
            let end = msg[kind..]
                .find(", expected")
                .map_or(msg.len(), |e| kind + e);
            let word = msg[kind..end]
                .split([' ', '`', '"'])
                .next()
                .unwrap_or("")
                .to_string();
            msg.replace_range(kind..end, &word);
        }
    }
    msg
}

struct Reference;

/// A key of the reference; an unknown one is refused where it is written.
enum Field {
    Env,
    File,
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`env` or `file`")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                match key {
                    "env" => Ok(Field::Env),
                    "file" => Ok(Field::File),
                    other => Err(E::unknown_field(other, &["env", "file"])),
                }
            }
        }
        d.deserialize_identifier(Key)
    }
}

/// Every non-mapping form gets the same message, with no part of what was written.
fn not_a_reference<E: de::Error>() -> Result<RawSecret, E> {
    Err(E::custom(format_args!("expected {EXPECTED}")))
}

impl<'de> Visitor<'de> for Reference {
    type Value = RawSecret;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
        let mut secret = RawSecret {
            env: None,
            file: None,
        };
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Env => secret.env = Some(map.next_value()?),
                Field::File => secret.file = Some(map.next_value()?),
            }
        }
        Ok(secret)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawSecret, E> {
        not_a_reference()
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
        not_a_reference()
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<RawSecret, A::Error> {
        not_a_reference()
    }
}
