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

/// Plain data only: no pickled objects (a backend refuses most globals by
/// closing the connection), and dict keys that both encodings carry
/// (msgpack servers refuse other map keys).
pub fn plain_data(method: &str, value: &Value) -> Result<(), ZeoError> {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Global { .. } | Value::Reduce(_) => {
                return Err(ZeoError::type_error(format!(
                    "{method}: arguments may not contain pickled objects"
                )));
            }
            Value::Tuple(items) | Value::List(items) => stack.extend(items),
            Value::Dict(items) => {
                for (key, item) in items {
                    if !matches!(key, Value::Str(_) | Value::Bytes(_)) {
                        return Err(ZeoError::type_error(format!(
                            "{method}: dict keys must be strings, not {}",
                            key.summary()
                        )));
                    }
                    stack.push(item);
                }
            }
            _ => {}
        }
    }
    Ok(())
}
