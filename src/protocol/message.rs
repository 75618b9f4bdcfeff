//! ZEO 5 messages: `(msgid, flags, name, args)` and the two encodings.

use std::ops::Deref;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{msgpack, pickle, DecodeError, Value};

/// The method name every reply carries.
pub const REPLY: &str = ".reply";

/// Flag value of an error reply.
const ERROR_FLAG: i64 = 2;

/// How a message's values are encoded, fixed per connection by the
/// handshake: `M5` is msgpack, `Z5` is pickle protocol 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Msgpack,
    Pickle,
}

impl Encoding {
    /// The handshake frame naming this encoding and protocol 5.
    pub fn handshake(self) -> &'static [u8] {
        match self {
            Encoding::Msgpack => b"M5",
            Encoding::Pickle => b"Z5",
        }
    }

    /// Parses a handshake frame's encoding letter; the version is checked
    /// separately.
    pub fn from_letter(letter: u8) -> Option<Encoding> {
        match letter {
            b'M' => Some(Encoding::Msgpack),
            b'Z' => Some(Encoding::Pickle),
            _ => None,
        }
    }

    /// Appends one encoded message (without the length prefix).
    pub fn encode(self, message: &Message, out: &mut BytesMut) {
        let flags = message.kind.flags();
        match self {
            Encoding::Msgpack => {
                out.put_u8(0x94); // fixarray of 4
                msgpack::encode_value(&message.msgid, out);
                msgpack::encode_value(&flags, out);
                msgpack::encode_str(&message.name, out);
                msgpack::encode_value(&message.args, out);
            }
            Encoding::Pickle => {
                out.put_slice(&[0x80, 3, b'(']); // PROTO 3, MARK
                pickle::encode_value(&message.msgid, out);
                pickle::encode_value(&flags, out);
                pickle::encode_str(&message.name, out);
                pickle::encode_value(&message.args, out);
                out.put_slice(b"t."); // TUPLE, STOP
            }
        }
    }

    /// Decodes one frame into a message.
    pub fn decode(self, frame: &Bytes) -> Result<Message, DecodeError> {
        let value = match self {
            Encoding::Msgpack => msgpack::decode(frame)?,
            Encoding::Pickle => pickle::decode(frame)?,
        };
        Message::from_value(value)
    }
}

/// What a message is, derived from its flags and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A request that expects a reply.
    Call,
    /// A request or notification that gets no reply.
    OneWay,
    /// A normal reply (`.reply`, flag 0). The client heartbeat is a reply
    /// with msgid -1.
    Reply,
    /// An error reply (`.reply`, flag 2) whose value is
    /// `(class_name, payload)`.
    ErrorReply,
}

impl MessageKind {
    /// The flags value as ZEO writes it: booleans in requests, integers in
    /// replies, `True` in server one-way messages.
    fn flags(self) -> Value {
        match self {
            MessageKind::Call => Value::Bool(false),
            MessageKind::OneWay => Value::Bool(true),
            MessageKind::Reply => Value::Int(0),
            MessageKind::ErrorReply => Value::Int(ERROR_FLAG),
        }
    }
}

/// One ZEO message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Chosen by the caller and echoed unchanged in the reply: an int, or
    /// the `(oid, tid)` pair ClientStorage uses for `loadBefore`.
    pub msgid: Value,
    pub kind: MessageKind,
    /// Method name; `.reply` for replies.
    pub name: String,
    /// Argument sequence of a request, or the value of a reply.
    pub args: Value,
}

impl Message {
    pub fn call(msgid: i64, name: &str, args: Vec<Value>) -> Message {
        Message {
            msgid: Value::Int(msgid),
            kind: MessageKind::Call,
            name: name.to_owned(),
            args: Value::Tuple(args),
        }
    }

    /// A one-way message; ZEO uses msgid 0 for them.
    pub fn one_way(name: &str, args: Vec<Value>) -> Message {
        Message {
            msgid: Value::Int(0),
            kind: MessageKind::OneWay,
            name: name.to_owned(),
            args: Value::Tuple(args),
        }
    }

    pub fn reply(msgid: Value, value: Value) -> Message {
        Message {
            msgid,
            kind: MessageKind::Reply,
            name: REPLY.to_owned(),
            args: value,
        }
    }

    pub fn error_reply(msgid: Value, class_name: &str, payload: Value) -> Message {
        Message {
            msgid,
            kind: MessageKind::ErrorReply,
            name: REPLY.to_owned(),
            args: Value::Tuple(vec![Value::str(class_name), payload]),
        }
    }

    /// The heartbeat ClientStorage sends every 60 s: `(-1, 0, '.reply', None)`.
    pub fn heartbeat() -> Message {
        Message::reply(Value::Int(-1), Value::None)
    }

    pub fn is_heartbeat(&self) -> bool {
        self.msgid == Value::Int(-1)
    }

    fn from_value(value: Value) -> Result<Message, DecodeError> {
        let [msgid, flags, name, args]: [Value; 4] = value
            .into_seq()
            .ok()
            .and_then(|items| items.try_into().ok())
            .ok_or(DecodeError::NotAMessage)?;
        let Value::Str(name) = name else {
            return Err(DecodeError::NotAMessage);
        };
        let kind = if name == REPLY {
            if flags.as_int() == Some(ERROR_FLAG) {
                MessageKind::ErrorReply
            } else {
                MessageKind::Reply
            }
        } else if flags.is_truthy() {
            MessageKind::OneWay
        } else {
            MessageKind::Call
        };
        Ok(Message {
            msgid,
            kind,
            name,
            args,
        })
    }
}

/// A message queued for a connection's writer: its own, or one shared by
/// every connection it is broadcast to (invalidations, `info`), or one of
/// a stream that may have only so many messages queued at once (the permit
/// is given back once the writer has taken the message).
#[derive(Debug)]
pub enum Outgoing {
    Owned(Message),
    Shared(Arc<Message>),
    Paced(Message, tokio::sync::OwnedSemaphorePermit),
}

impl Deref for Outgoing {
    type Target = Message;

    fn deref(&self) -> &Message {
        match self {
            Outgoing::Owned(message) | Outgoing::Paced(message, _) => message,
            Outgoing::Shared(message) => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(encoding: Encoding, message: &Message) -> Message {
        let mut out = BytesMut::new();
        encoding.encode(message, &mut out);
        encoding.decode(&out.freeze()).expect("decodes")
    }

    #[test]
    fn messages_round_trip_in_both_encodings() {
        let oid = Value::bytes(&[0u8, 0, 0, 0, 0, 0, 0, 1][..]);
        let messages = [
            Message::heartbeat(),
            Message::call(1, "register", vec![Value::str("1"), Value::Bool(false)]),
            Message::one_way("storea", vec![oid.clone(), Value::bytes(&b"DATA"[..])]),
            Message::reply(
                Value::Tuple(vec![oid.clone(), oid.clone()]),
                Value::Tuple(vec![Value::bytes(&b"x"[..]), oid, Value::None]),
            ),
            Message::error_reply(Value::Int(7), "builtins.KeyError", Value::Tuple(vec![])),
        ];
        for encoding in [Encoding::Msgpack, Encoding::Pickle] {
            for message in &messages {
                let back = round_trip(encoding, message);
                assert_eq!(back.kind, message.kind, "{encoding:?} {message:?}");
                assert_eq!(back.name, message.name);
                assert_eq!(back.msgid, message.msgid);
            }
        }
    }

    #[test]
    fn heartbeat_matches_zeo_bytes() {
        let mut out = BytesMut::new();
        Encoding::Msgpack.encode(&Message::heartbeat(), &mut out);
        assert_eq!(&out[..], b"\x94\xff\x00\xa6.reply\xc0");
        let mut out = BytesMut::new();
        Encoding::Pickle.encode(&Message::heartbeat(), &mut out);
        assert_eq!(
            &out[..],
            b"\x80\x03(J\xff\xff\xff\xffK\x00X\x06\x00\x00\x00.replyNt."
        );
    }

    #[test]
    fn flags_decide_the_kind() {
        let decode = |flags: Value, name: &str| {
            let value = Value::Tuple(vec![Value::Int(1), flags, Value::str(name), Value::None]);
            Message::from_value(value).unwrap().kind
        };
        assert_eq!(decode(Value::Bool(false), "ping"), MessageKind::Call);
        assert_eq!(decode(Value::Bool(true), "storea"), MessageKind::OneWay);
        assert_eq!(decode(Value::Int(1), "storea"), MessageKind::OneWay);
        assert_eq!(decode(Value::Int(0), REPLY), MessageKind::Reply);
        assert_eq!(decode(Value::Int(2), REPLY), MessageKind::ErrorReply);
    }

    #[test]
    fn non_messages_are_refused() {
        for value in [
            Value::None,
            Value::Tuple(vec![Value::Int(1)]),
            Value::Tuple(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(5),
                Value::None,
            ]),
        ] {
            assert_eq!(Message::from_value(value), Err(DecodeError::NotAMessage));
        }
    }
}
