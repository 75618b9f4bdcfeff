//! The dynamic value model shared by both wire encodings.
//!
//! ZEO messages carry Python values. Both codecs (msgpack and pickle) decode
//! into [`Value`] and encode from it, so the rest of zeoraid never sees an
//! encoding. Byte strings are [`Bytes`] slices of the received frame: object
//! records pass from a backend reply to a client reply without being copied
//! until they are encoded into the outgoing frame.

use bytes::Bytes;

/// A Python value as it travels in a ZEO message.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Python int. ZEO's integers (msgids, txn ids around 2^47, sizes) fit;
    /// a larger one is a decode error for that frame.
    Int(i64),
    Float(f64),
    Bytes(Bytes),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Python dict, in wire order.
    Dict(Vec<(Value, Value)>),
    /// A pickled reference to a module attribute (pickle `GLOBAL`). Only
    /// occurs inside error payloads (`ZODB.POSException._recon`, exception
    /// classes) and in exotic client values such as `ZopeUndo.Prefix`.
    Global {
        module: String,
        name: String,
    },
    /// A pickled call `callable(*args)` (pickle `REDUCE`): how the pickle
    /// encoding carries exception objects nested in error payloads.
    Reduce(Box<(Value, Value)>),
}

impl Value {
    pub fn bytes(data: impl Into<Bytes>) -> Value {
        Value::Bytes(data.into())
    }

    pub fn str(text: impl Into<String>) -> Value {
        Value::Str(text.into())
    }

    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The items of a tuple or list (ZEO treats them alike; msgpack cannot
    /// tell them apart).
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(items) | Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// Consumes a tuple or list into its items.
    pub fn into_seq(self) -> Result<Vec<Value>, Value> {
        match self {
            Value::Tuple(items) | Value::List(items) => Ok(items),
            other => Err(other),
        }
    }

    /// Looks a string key up in a dict.
    pub fn dict_get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python truthiness, as ZEO applies it to message flags.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Bytes(b) => !b.is_empty(),
            Value::Str(s) => !s.is_empty(),
            Value::Tuple(v) | Value::List(v) => !v.is_empty(),
            Value::Dict(v) => !v.is_empty(),
            Value::Global { .. } | Value::Reduce(_) => true,
        }
    }

    /// A short human-readable rendering for logs: byte strings of 8 bytes
    /// (oids, tids) as hex, longer ones by length only.
    pub fn summary(&self) -> String {
        match self {
            Value::Bytes(b) if b.len() == 8 => format!("0x{}", hex(b)),
            Value::Bytes(b) => format!("<{} bytes>", b.len()),
            Value::Str(s) if s.len() > 80 => format!("{:?}...", &s[..s.floor_char_boundary(80)]),
            Value::Tuple(v) | Value::List(v) if v.len() > 4 => format!("[{} items]", v.len()),
            Value::Tuple(v) | Value::List(v) => {
                let items: Vec<String> = v.iter().map(Value::summary).collect();
                format!("({})", items.join(", "))
            }
            Value::Dict(v) => format!("{{{} keys}}", v.len()),
            other => format!("{other:?}"),
        }
    }
}

/// Lower-case hex of a byte string (tids and oids in logs and status output).
pub fn hex(data: &[u8]) -> String {
    use std::fmt::Write;
    data.iter()
        .fold(String::with_capacity(data.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Value {
        Value::Bytes(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::None, Into::into)
    }
}
