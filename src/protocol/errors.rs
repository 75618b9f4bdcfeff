//! Errors as ZEO sends them to clients: `(class_name, payload)`.
//!
//! ClientStorage rebuilds the classes it knows (ConflictError, POSKeyError,
//! ReadOnlyError, StorageTransactionError, KeyError, ...) as real
//! exceptions; anything else arrives as `ZEO.Exceptions.ServerException`.

use super::{Message, Value};

/// An error reply's content.
#[derive(Clone, Debug, PartialEq)]
pub struct ZeoError {
    /// `module.ClassName` of the Python exception.
    pub class_name: String,
    /// The exception's attribute dict, or its args sequence.
    pub payload: Value,
}

impl ZeoError {
    pub fn new(class_name: &str, payload: Value) -> ZeoError {
        ZeoError {
            class_name: class_name.to_owned(),
            payload,
        }
    }

    /// An exception whose payload is its args tuple.
    pub fn with_args(class_name: &str, args: Vec<Value>) -> ZeoError {
        ZeoError::new(class_name, Value::Tuple(args))
    }

    /// An exception with a single message argument.
    pub fn message(class_name: &str, message: impl Into<String>) -> ZeoError {
        ZeoError::with_args(class_name, vec![Value::Str(message.into())])
    }

    /// `ConflictError` with the dict keys ClientStorage reads.
    pub fn conflict(message: &str, oid: Value, serials: Value) -> ZeoError {
        ZeoError::new(
            "ZODB.POSException.ConflictError",
            Value::Dict(vec![
                (Value::str("message"), Value::str(message)),
                (Value::str("oid"), oid),
                (Value::str("class_name"), Value::None),
                (Value::str("serials"), serials),
            ]),
        )
    }

    pub fn pos_key(oid: Value) -> ZeoError {
        ZeoError::with_args("ZODB.POSException.POSKeyError", vec![oid])
    }

    pub fn read_only() -> ZeoError {
        ZeoError::with_args("ZODB.POSException.ReadOnlyError", vec![])
    }

    pub fn storage_transaction(args: Vec<Value>) -> ZeoError {
        ZeoError::with_args("ZODB.POSException.StorageTransactionError", args)
    }

    /// A storage failure that is zeoraid's or a backend's, not the
    /// client's: e.g. a backend that timed out.
    pub fn storage(message: impl Into<String>) -> ZeoError {
        ZeoError::message("ZODB.POSException.StorageError", message)
    }

    pub fn key_error(key: Value) -> ZeoError {
        ZeoError::with_args("builtins.KeyError", vec![key])
    }

    pub fn value_error(message: impl Into<String>) -> ZeoError {
        ZeoError::message("builtins.ValueError", message)
    }

    pub fn attribute_error(message: impl Into<String>) -> ZeoError {
        ZeoError::message("builtins.AttributeError", message)
    }

    pub fn type_error(message: impl Into<String>) -> ZeoError {
        ZeoError::message("builtins.TypeError", message)
    }

    /// Reads an error reply's value back into a `ZeoError`.
    pub fn from_reply_value(value: Value) -> ZeoError {
        match value.into_seq() {
            Ok(items) if items.len() == 2 => {
                let mut items = items.into_iter();
                let class = items.next().unwrap_or(Value::None);
                let payload = items.next().unwrap_or(Value::None);
                match class {
                    Value::Str(class_name) => ZeoError {
                        class_name,
                        payload,
                    },
                    other => ZeoError::storage(format!(
                        "malformed error reply with class {}",
                        other.summary()
                    )),
                }
            }
            Ok(items) => {
                ZeoError::storage(format!("malformed error reply of {} items", items.len()))
            }
            Err(other) => ZeoError::storage(format!("malformed error reply {}", other.summary())),
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.class_name.ends_with("ConflictError")
    }

    pub fn is_pos_key_error(&self) -> bool {
        self.class_name.ends_with("POSKeyError")
    }

    pub fn into_reply(self, msgid: Value) -> Message {
        Message::error_reply(msgid, &self.class_name, self.payload)
    }
}

impl std::fmt::Display for ZeoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.class_name, self.payload.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_values_round_trip() {
        let error = ZeoError::conflict("database conflict error", Value::None, Value::None);
        let reply = error.clone().into_reply(Value::Int(3));
        assert_eq!(ZeoError::from_reply_value(reply.args), error);
        assert!(error.is_conflict());
    }

    #[test]
    fn malformed_error_replies_become_storage_errors() {
        let error = ZeoError::from_reply_value(Value::Int(5));
        assert_eq!(error.class_name, "ZODB.POSException.StorageError");
        let error = ZeoError::from_reply_value(Value::Tuple(vec![Value::Int(1), Value::None]));
        assert_eq!(error.class_name, "ZODB.POSException.StorageError");
    }
}
