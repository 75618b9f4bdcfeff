//! The ZEO 5 wire protocol: values, the two encodings, messages, framing
//! and the handshake. Nothing outside this module touches wire bytes.

pub mod errors;
pub mod framing;
pub mod message;
pub mod msgpack;
pub mod pickle;
pub mod tid;
pub mod value;

pub use errors::ZeoError;
pub use message::{Encoding, Message, MessageKind, Outgoing};
pub use tid::Tid;
pub use value::Value;

/// Nesting depth at which a decoder gives up. ZEO's real messages nest
/// four or five levels deep; the limit keeps a hostile frame from blowing
/// the stack in recursive code (encoding, drop).
pub const MAX_NESTING: usize = 256;

/// Why a frame could not be decoded. Any of these closes the connection
/// that sent the frame and nothing else.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("frame ends in the middle of a value")]
    Truncated,
    #[error("unsupported {codec} code 0x{code:02x} at offset {offset}")]
    UnsupportedCode {
        codec: &'static str,
        code: u8,
        offset: usize,
    },
    #[error("integer out of range at offset {offset}")]
    IntegerOutOfRange { offset: usize },
    #[error("invalid UTF-8 in a text string at offset {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("values nested deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("malformed {codec} data: {detail}")]
    Malformed { codec: &'static str, detail: String },
    #[error("message is not a 4-element sequence (msgid, flags, name, args)")]
    NotAMessage,
}
