//! What a request may hold, as data the agent checks requests against
//! (src/agent/foobar_agent/check.py): the [`Shape`] of each wire type, and the [`wire!`] macro that
//! declares a protocol struct and its shape from one field list.
//!
//! A shape is JSON: `"str"`, `"int"`, `"num"`, `"bool"`, `"any"`; `["opt", S]` (absent,
//! null or S); `["list", S]`; `["map", S]` (string keys); `["enum", "a", "b"]`;
//! `["either", S1, S2]`; `["tagged", FIELD, {VALUE: OBJECT}]` (an object whose FIELD
//! names which object shape the rest has); an object `{FIELD: S}` lists every field
//! (others are refused; a field of shape `["opt", _]` may be left out).

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A type's shape on the wire.
pub trait Shape {
    fn shape() -> Value;
}

/// Declares a struct of the agent protocol and its [`Shape`] from the same fields (named
/// as on the wire: no `rename`). Derives Debug, Clone, Serialize and Deserialize; more
/// derives and serde attributes go before `pub struct`.
macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub struct $name { $( $(#[$fm])* pub $f: $t, )* }

        impl $crate::protocol::shape::Shape for $name {
            #[allow(unused_mut)]
            fn shape() -> serde_json::Value {
                let mut m = serde_json::Map::new();
                $( m.insert(
                    stringify!($f).to_string(),
                    <$t as $crate::protocol::shape::Shape>::shape(),
                ); )*
                serde_json::Value::Object(m)
            }
        }
    };
}

/// Declares an answer struct of the agent protocol (fields named as on the wire; the
/// agent's `ok` is not one of them): derives Debug, Clone, Default, Serialize and
/// Deserialize; a field the answer leaves out takes its default.
macro_rules! answer {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name { $( $(#[$fm])* pub $f: $t, )* }
    };
}

macro_rules! leaf {
    ($s:literal: $($t:ty),*) => {
        $(impl Shape for $t {
            fn shape() -> Value {
                json!($s)
            }
        })*
    };
}

leaf!("str": String, str, crate::plan::Service, crate::plan::ServiceAction, crate::diff::FileChangeKind, crate::boot::BootAction);
leaf!("int": u16, u32, u64, i64, usize);
leaf!("num": f64);
leaf!("bool": bool);
leaf!("any": Value);

impl<T: Shape + ?Sized> Shape for &T {
    fn shape() -> Value {
        T::shape()
    }
}

impl<T: Shape> Shape for Option<T> {
    fn shape() -> Value {
        json!(["opt", T::shape()])
    }
}

impl<T: Shape> Shape for Vec<T> {
    fn shape() -> Value {
        json!(["list", T::shape()])
    }
}

impl<T: Shape> Shape for BTreeMap<String, T> {
    fn shape() -> Value {
        json!(["map", T::shape()])
    }
}

/// `["enum", ...]` of the names a unit-only enum serializes to.
pub fn names(values: &[&str]) -> Value {
    let mut v = vec![json!("enum")];
    v.extend(values.iter().map(|s| json!(s)));
    Value::Array(v)
}

/// `["tagged", tag, {value: shape}]`.
pub fn tagged(tag: &str, variants: &[(&str, Value)]) -> Value {
    let m: serde_json::Map<String, Value> = variants
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!(["tagged", tag, m])
}
