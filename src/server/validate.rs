//! Checks of client arguments before they reach a backend.
//!
//! A ZEO server closes the connection on a bad one-way message and on a
//! frame it cannot decode. Behind zeoraid that connection is shared by all
//! clients, so one client's bad input must be caught here, answered to
//! that client alone, and never forwarded.

use crate::protocol::{Value, ZeoError};

/// Checks the argument count.
pub fn arity(method: &str, args: &[Value], min: usize, max: usize) -> Result<(), ZeoError> {
    if args.len() < min || args.len() > max {
        let expected = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(ZeoError::type_error(format!(
            "{method}() takes {expected} arguments ({} given)",
            args.len()
        )));
    }
    Ok(())
}

/// An oid or tid: an 8-byte string.
pub fn id8(method: &str, what: &str, value: &Value) -> Result<(), ZeoError> {
    match value.as_bytes() {
        Some(bytes) if bytes.len() == 8 => Ok(()),
        _ => Err(ZeoError::type_error(format!(
            "{method}: {what} must be an 8-byte string, not {}",
            value.summary()
        ))),
    }
}

pub fn int(method: &str, what: &str, value: &Value) -> Result<i64, ZeoError> {
    match value {
        Value::Int(i) => Ok(*i),
        other => Err(ZeoError::type_error(format!(
            "{method}: {what} must be an integer, not {}",
            other.summary()
        ))),
    }
}

pub fn str(method: &str, what: &str, value: &Value) -> Result<(), ZeoError> {
    match value {
        Value::Str(_) => Ok(()),
        other => Err(ZeoError::type_error(format!(
            "{method}: {what} must be a string, not {}",
            other.summary()
        ))),
    }
}

/// Makes a client value plain data, or refuses it.
///
/// Pickle clients may send a few builtin types as calls, e.g. a dict
/// subclass arrives as `builtins.dict(pairs)`; ZEO's server unpickles those
/// into plain values, and so does this: dict, list, tuple, set and
/// frozenset calls become the plain value. Any other pickled object is
/// refused (a backend would refuse most globals by dropping the shared
/// connection), and so are dict keys msgpack servers refuse.
pub fn plain_data(method: &str, value: Value) -> Result<Value, ZeoError> {
    let refuse = || {
        ZeoError::type_error(format!(
            "{method}: arguments may not contain pickled objects"
        ))
    };
    Ok(match value {
        Value::Tuple(items) => Value::Tuple(plain_items(method, items)?),
        Value::List(items) => Value::List(plain_items(method, items)?),
        Value::Dict(items) => Value::Dict(plain_pairs(method, items)?),
        Value::Global { .. } => return Err(refuse()),
        Value::Reduce(call) => {
            let (callable, args) = *call;
            let Value::Global { module, name } = callable else {
                return Err(refuse());
            };
            if module != "builtins" && module != "__builtin__" {
                return Err(refuse());
            }
            let mut args = args.into_seq().map_err(|_| refuse())?;
            let items = match args.len() {
                0 => Vec::new(),
                1 => args.pop().expect("one").into_seq().map_err(|_| refuse())?,
                _ => return Err(refuse()),
            };
            match name.as_str() {
                "dict" => {
                    let pairs = items
                        .into_iter()
                        .map(|pair| match pair.into_seq() {
                            Ok(kv) if kv.len() == 2 => {
                                let mut kv = kv.into_iter();
                                Ok((kv.next().expect("two"), kv.next().expect("two")))
                            }
                            _ => Err(refuse()),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Value::Dict(plain_pairs(method, pairs)?)
                }
                "tuple" => Value::Tuple(plain_items(method, items)?),
                "list" | "set" | "frozenset" => Value::List(plain_items(method, items)?),
                _ => return Err(refuse()),
            }
        }
        other => other,
    })
}

fn plain_items(method: &str, items: Vec<Value>) -> Result<Vec<Value>, ZeoError> {
    items
        .into_iter()
        .map(|item| plain_data(method, item))
        .collect()
}

fn plain_pairs(method: &str, pairs: Vec<(Value, Value)>) -> Result<Vec<(Value, Value)>, ZeoError> {
    pairs
        .into_iter()
        .map(|(key, item)| {
            if !matches!(key, Value::Str(_) | Value::Bytes(_)) {
                return Err(ZeoError::type_error(format!(
                    "{method}: dict keys must be strings, not {}",
                    key.summary()
                )));
            }
            Ok((key, plain_data(method, item)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(module: &str, name: &str, args: Vec<Value>) -> Value {
        Value::Reduce(Box::new((
            Value::Global {
                module: module.into(),
                name: name.into(),
            },
            Value::Tuple(args),
        )))
    }

    #[test]
    fn builtin_containers_become_plain_values() {
        let pairs = Value::Tuple(vec![Value::Tuple(vec![Value::str("foo"), Value::Int(1)])]);
        let ext = Value::Dict(vec![(
            Value::str("x"),
            call("builtins", "dict", vec![pairs]),
        )]);
        let plain = plain_data("tpc_begin", ext).unwrap();
        assert_eq!(
            plain,
            Value::Dict(vec![(
                Value::str("x"),
                Value::Dict(vec![(Value::str("foo"), Value::Int(1))])
            )])
        );
        assert_eq!(
            plain_data("m", call("builtins", "set", vec![])).unwrap(),
            Value::List(vec![])
        );
    }

    #[test]
    fn other_objects_and_odd_keys_are_refused() {
        assert!(plain_data("m", call("os", "system", vec![Value::str("true")])).is_err());
        assert!(plain_data("m", call("builtins", "eval", vec![Value::str("1")])).is_err());
        assert!(plain_data(
            "m",
            Value::Global {
                module: "builtins".into(),
                name: "dict".into()
            }
        )
        .is_err());
        assert!(plain_data("m", Value::Dict(vec![(Value::Int(1), Value::None)])).is_err());
        assert!(plain_data(
            "m",
            Value::List(vec![Value::Int(1), Value::bytes(&b"x"[..])])
        )
        .is_ok());
    }
}
