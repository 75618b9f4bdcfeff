//! The msgpack encoding of ZEO messages ("M5").
//!
//! ZEO encodes with `msgpack.packb(message, use_bin_type=True)` and decodes
//! with `msgpack.unpackb(raw=False, use_list=False)` (protocol reference,
//! sections 9.2 and 9.5). This module reproduces both byte for byte on
//! [`Value`]:
//!
//! * encoding picks the same (smallest) forms as Python's msgpack, so a
//!   message re-encoded by zeoraid is identical to what ZEO would send;
//! * decoding turns every array into a tuple and every text string into
//!   `str`, and accepts any map key type (a superset of what ZEO accepts).
//!
//! The decoder works on a whole frame and hands out byte strings as slices
//! of it, so object records are never copied. It is iterative: a hostile
//! frame can neither overflow the stack nor make it allocate more than the
//! frame could possibly hold.

use std::io::Write;
use std::ops::Range;

use bytes::buf::Writer;
use bytes::{BufMut, Bytes, BytesMut};
use rmp::{encode, Marker};

use super::{DecodeError, Value, MAX_NESTING};

const CODEC: &str = "msgpack";

/// Appends one value.
///
/// Values map as in ZEO: `None` → nil, bools, ints in the smallest form,
/// floats as float64, bytes → bin, str → str, tuples *and* lists → array,
/// dicts → map. The two pickle-only variants cannot be expressed in
/// msgpack and are converted the way ZEO's msgpack encoder converts the
/// Python objects they stand for:
///
/// * [`Value::Global`] → the text `"module.name"`;
/// * [`Value::Reduce`] is how the pickle encoding carries an exception
///   object nested in an error payload, while ZEO's msgpack encoder turns
///   such an object into the pair `(class_name, payload)` (section 4). So:
///   - `REDUCE(ZODB.POSException._recon, (cls, state))` (an exception with
///     an attribute dict) → `["cls.module.cls.name", state]`;
///   - `REDUCE(any other global, args)` (an exception class called with
///     its args) → `["module.name", args]`, which also covers a `_recon`
///     call whose args are not a `(global, state)` pair;
///   - anything else → `[callable, args]`, so nothing is lost.
///
/// # Panics
///
/// If a byte string, text or container has more than `u32::MAX` bytes or
/// items. msgpack cannot express that (Python's msgpack raises
/// `ValueError`), and no ZEO frame, whose length is a 4-byte field, could
/// carry it.
pub fn encode_value(value: &Value, out: &mut BytesMut) {
    write_value(value, &mut (&mut *out).writer());
}

/// Appends one text string (a message's method name, without building a
/// `Value` for it).
pub fn encode_str(text: &str, out: &mut BytesMut) {
    write_str(text, &mut (&mut *out).writer());
}

/// rmp writes through `std::io::Write`; this adapter appends to the buffer.
type Sink<'a> = Writer<&'a mut BytesMut>;

/// Unwraps the result of an rmp write into a [`Sink`]. Appending to a
/// `BytesMut` grows it as needed and never fails, so an error here would be
/// a bug in `bytes` or `rmp`, not something a caller could handle.
fn written<T, E: std::fmt::Debug>(result: Result<T, E>) {
    result.expect("writing msgpack into memory cannot fail");
}

/// A length as msgpack stores it (at most 32 bits; see the panic note on
/// [`encode_value`]).
fn wire_len(len: usize) -> u32 {
    u32::try_from(len).expect("msgpack cannot encode more than u32::MAX bytes or items")
}

fn write_value(value: &Value, w: &mut Sink<'_>) {
    match value {
        Value::None => written(encode::write_nil(w)),
        Value::Bool(b) => written(encode::write_bool(w, *b)),
        // write_sint chooses exactly Python's forms: positive fixint or
        // uint8/16/32/64 for non-negative values (a txn id around 2^47 is
        // `cf ...`, 200 is `cc c8`), negative fixint or int8/16/32/64 below.
        Value::Int(i) => written(encode::write_sint(w, *i)),
        Value::Float(f) => written(encode::write_f64(w, *f)),
        // write_bin/write_str would cast the length with `as u32`; checking
        // it here turns an impossible size into a panic, not a corrupt frame.
        Value::Bytes(data) => write_bin(data, w),
        Value::Str(text) => write_str(text, w),
        Value::Tuple(items) | Value::List(items) => write_array(items, w),
        Value::Dict(entries) => {
            written(encode::write_map_len(w, wire_len(entries.len())));
            for (key, item) in entries {
                write_value(key, w);
                write_value(item, w);
            }
        }
        Value::Global { module, name } => write_str(&format!("{module}.{name}"), w),
        Value::Reduce(call) => write_reduce(&call.0, &call.1, w),
    }
}

fn write_bin(data: &[u8], w: &mut Sink<'_>) {
    written(encode::write_bin_len(w, wire_len(data.len())));
    written(w.write_all(data));
}

fn write_str(text: &str, w: &mut Sink<'_>) {
    written(encode::write_str_len(w, wire_len(text.len())));
    written(w.write_all(text.as_bytes()));
}

fn write_array(items: &[Value], w: &mut Sink<'_>) {
    written(encode::write_array_len(w, wire_len(items.len())));
    for item in items {
        write_value(item, w);
    }
}

/// Writes a pickled call as the `(class_name, payload)` pair ZEO's msgpack
/// encoder makes of an exception object (see [`encode_value`]). A global
/// encodes as its dotted name, so only the `_recon` case needs unpacking.
fn write_reduce(callable: &Value, args: &Value, w: &mut Sink<'_>) {
    let (first, second) = match (callable, args.as_seq()) {
        (Value::Global { module, name }, Some([class @ Value::Global { .. }, state]))
            if module == "ZODB.POSException" && name == "_recon" =>
        {
            (class, state)
        }
        _ => (callable, args),
    };
    written(encode::write_array_len(w, 2));
    write_value(first, w);
    write_value(second, w);
}

/// Decodes exactly one value filling the whole frame (no trailing bytes).
///
/// Arrays become [`Value::Tuple`] (`use_list=False`), text strings
/// [`Value::Str`], byte strings [`Value::Bytes`] slices of `frame` (never
/// copied); map keys may be of any type. Extension types, the reserved code
/// `0xc1`, integers above `i64::MAX` and containers nested more than
/// [`MAX_NESTING`] deep are refused. Error offsets are those of the first
/// byte of the offending value.
pub fn decode(frame: &Bytes) -> Result<Value, DecodeError> {
    let mut reader = Reader { frame, pos: 0 };
    // Containers whose items are still being read, innermost last.
    let mut open: Vec<OpenContainer> = Vec::new();
    // Items (map keys and values counted separately) that the open
    // containers still expect. Each takes at least one byte, so a header
    // claiming more items than the bytes left can hold is refused before
    // anything is allocated for it.
    let mut owed: usize = 0;

    let value = 'items: loop {
        // The value starting here is one of the owed items (an open
        // container always expects at least one more).
        if !open.is_empty() {
            owed -= 1;
        }
        let mut value = match read_header(&mut reader)? {
            Header::Value(value) => value,
            Header::Array(_) | Header::Map(_) if open.len() == MAX_NESTING => {
                return Err(DecodeError::TooDeep);
            }
            Header::Array(0) => Value::Tuple(Vec::new()),
            Header::Map(0) => Value::Dict(Vec::new()),
            Header::Array(len) => {
                owed = reader.reserve(owed, len)?;
                open.push(OpenContainer::Array {
                    items: Vec::with_capacity(len),
                    len,
                });
                continue;
            }
            Header::Map(len) => {
                owed = reader.reserve(owed, len.saturating_mul(2))?;
                open.push(OpenContainer::Map {
                    entries: Vec::with_capacity(len),
                    len,
                    key: None,
                });
                continue;
            }
        };
        // Hand the finished value to the innermost open container; every
        // container it completes is itself a finished value for the next.
        loop {
            let Some(container) = open.last_mut() else {
                break 'items value;
            };
            match container.add(value) {
                Some(complete) => {
                    open.pop();
                    value = complete;
                }
                None => continue 'items,
            }
        }
    };

    match reader.remaining() {
        0 => Ok(value),
        extra => Err(DecodeError::TrailingBytes(extra)),
    }
}

/// What the bytes at the read position start: a complete scalar, or the
/// header of a container whose items follow.
enum Header {
    Value(Value),
    Array(usize),
    Map(usize),
}

/// A container being decoded.
enum OpenContainer {
    Array {
        items: Vec<Value>,
        len: usize,
    },
    Map {
        entries: Vec<(Value, Value)>,
        len: usize,
        /// The key read before the value that completes the entry.
        key: Option<Value>,
    },
}

impl OpenContainer {
    /// Adds the next item; returns the container as a value once it has
    /// all of its items.
    fn add(&mut self, item: Value) -> Option<Value> {
        match self {
            OpenContainer::Array { items, len } => {
                items.push(item);
                (items.len() == *len).then(|| Value::Tuple(std::mem::take(items)))
            }
            OpenContainer::Map { entries, len, key } => match key.take() {
                None => {
                    *key = Some(item);
                    None
                }
                Some(key) => {
                    entries.push((key, item));
                    (entries.len() == *len).then(|| Value::Dict(std::mem::take(entries)))
                }
            },
        }
    }
}

/// Reads one value's leading byte and, for scalars, its payload.
fn read_header(reader: &mut Reader<'_>) -> Result<Header, DecodeError> {
    let start = reader.pos;
    let [code] = reader.read::<1>()?;
    let value = match Marker::from_u8(code) {
        Marker::Null => Value::None,
        Marker::False => Value::Bool(false),
        Marker::True => Value::Bool(true),
        Marker::FixPos(n) => Value::Int(n.into()),
        Marker::FixNeg(n) => Value::Int(n.into()),
        Marker::U8 => Value::Int(u8::from_be_bytes(reader.read()?).into()),
        Marker::U16 => Value::Int(u16::from_be_bytes(reader.read()?).into()),
        Marker::U32 => Value::Int(u32::from_be_bytes(reader.read()?).into()),
        Marker::U64 => {
            let n = u64::from_be_bytes(reader.read()?);
            Value::Int(
                i64::try_from(n).map_err(|_| DecodeError::IntegerOutOfRange { offset: start })?,
            )
        }
        Marker::I8 => Value::Int(i8::from_be_bytes(reader.read()?).into()),
        Marker::I16 => Value::Int(i16::from_be_bytes(reader.read()?).into()),
        Marker::I32 => Value::Int(i32::from_be_bytes(reader.read()?).into()),
        Marker::I64 => Value::Int(i64::from_be_bytes(reader.read()?)),
        Marker::F32 => Value::Float(f32::from_be_bytes(reader.read()?).into()),
        Marker::F64 => Value::Float(f64::from_be_bytes(reader.read()?)),
        Marker::Bin8 => {
            let len = reader.len8()?;
            Value::Bytes(reader.slice(len)?)
        }
        Marker::Bin16 => {
            let len = reader.len16()?;
            Value::Bytes(reader.slice(len)?)
        }
        Marker::Bin32 => {
            let len = reader.len32()?;
            Value::Bytes(reader.slice(len)?)
        }
        Marker::FixStr(len) => reader.text(len.into(), start)?,
        Marker::Str8 => {
            let len = reader.len8()?;
            reader.text(len, start)?
        }
        Marker::Str16 => {
            let len = reader.len16()?;
            reader.text(len, start)?
        }
        Marker::Str32 => {
            let len = reader.len32()?;
            reader.text(len, start)?
        }
        Marker::FixArray(len) => return Ok(Header::Array(len.into())),
        Marker::Array16 => return Ok(Header::Array(reader.len16()?)),
        Marker::Array32 => return Ok(Header::Array(reader.len32()?)),
        Marker::FixMap(len) => return Ok(Header::Map(len.into())),
        Marker::Map16 => return Ok(Header::Map(reader.len16()?)),
        Marker::Map32 => return Ok(Header::Map(reader.len32()?)),
        // ZEO never sends extension types (section 9.2); 0xc1 is never used.
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32
        | Marker::Reserved => {
            return Err(DecodeError::UnsupportedCode {
                codec: CODEC,
                code,
                offset: start,
            })
        }
    };
    Ok(Header::Value(value))
}

/// A bounds-checked cursor over the frame.
struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.frame.len() - self.pos
    }

    /// The next `N` bytes (big-endian number payloads, lengths).
    fn read<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = *self.frame[self.pos..]
            .first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.pos += N;
        Ok(bytes)
    }

    fn len8(&mut self) -> Result<usize, DecodeError> {
        Ok(u8::from_be_bytes(self.read()?).into())
    }

    fn len16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_be_bytes(self.read()?).into())
    }

    fn len32(&mut self) -> Result<usize, DecodeError> {
        // Saturating only matters on 16-bit targets, where such a length
        // cannot fit in the frame anyway and so reports Truncated.
        Ok(usize::try_from(u32::from_be_bytes(self.read()?)).unwrap_or(usize::MAX))
    }

    /// Skips the next `len` bytes, returning their position in the frame.
    fn take(&mut self, len: usize) -> Result<Range<usize>, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(start..self.pos)
    }

    /// The next `len` bytes as a zero-copy slice of the frame.
    fn slice(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let range = self.take(len)?;
        Ok(self.frame.slice(range))
    }

    /// The next `len` bytes as text; `start` is the offset of the value.
    fn text(&mut self, len: usize, start: usize) -> Result<Value, DecodeError> {
        let range = self.take(len)?;
        let text = std::str::from_utf8(&self.frame[range])
            .map_err(|_| DecodeError::InvalidUtf8 { offset: start })?;
        Ok(Value::Str(text.to_owned()))
    }

    /// Checks that the rest of the frame can hold `items` more items on top
    /// of the `owed` ones, and returns the new total owed.
    fn reserve(&self, owed: usize, items: usize) -> Result<usize, DecodeError> {
        let total = owed.saturating_add(items);
        if total > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses space-separated hex bytes, as the protocol reference writes them.
    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).expect("test vector is hex"))
            .collect()
    }

    fn encode(value: &Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_value(value, &mut out);
        out.to_vec()
    }

    fn dec(data: &[u8]) -> Result<Value, DecodeError> {
        decode(&Bytes::copy_from_slice(data))
    }

    fn round_trip(value: &Value) {
        assert_eq!(dec(&encode(value)).as_ref(), Ok(value), "{value:?}");
    }

    fn tuple(items: impl IntoIterator<Item = Value>) -> Value {
        Value::Tuple(items.into_iter().collect())
    }

    fn global(module: &str, name: &str) -> Value {
        Value::Global {
            module: module.into(),
            name: name.into(),
        }
    }

    fn reduce(callable: Value, args: Value) -> Value {
        Value::Reduce(Box::new((callable, args)))
    }

    /// `depth` one-element arrays nested in one another around a nil.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut data = vec![0x91; depth];
        data.push(0xc0);
        data
    }

    const OID1: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
    const TID: [u8; 8] = [0x04, 0x0d, 0x53, 0xda, 0xe1, 0xd4, 0xba, 0x88];

    #[test]
    fn ints_use_the_forms_python_msgpack_uses() {
        // Expected bytes from Python's msgpack.packb.
        let cases: &[(i64, &str)] = &[
            (0, "00"),
            (127, "7f"),
            (128, "cc 80"),
            (200, "cc c8"),
            (255, "cc ff"),
            (256, "cd 01 00"),
            (65535, "cd ff ff"),
            (65536, "ce 00 01 00 00"),
            (u32::MAX.into(), "ce ff ff ff ff"),
            (i64::from(u32::MAX) + 1, "cf 00 00 00 01 00 00 00 00"),
            (140250773104720, "cf 00 00 7f 8e ad 82 a8 50"),
            (i64::MAX, "cf 7f ff ff ff ff ff ff ff"),
            (-1, "ff"),
            (-32, "e0"),
            (-33, "d0 df"),
            (-128, "d0 80"),
            (-129, "d1 ff 7f"),
            (i16::MIN.into(), "d1 80 00"),
            (i64::from(i16::MIN) - 1, "d2 ff ff 7f ff"),
            (i32::MIN.into(), "d2 80 00 00 00"),
            (i64::from(i32::MIN) - 1, "d3 ff ff ff ff 7f ff ff ff"),
            (i64::MIN, "d3 80 00 00 00 00 00 00 00"),
        ];
        for &(int, bytes) in cases {
            assert_eq!(encode(&Value::Int(int)), hex(bytes), "{int}");
            assert_eq!(dec(&hex(bytes)), Ok(Value::Int(int)), "{int}");
        }
        for int in [i16::MAX.into(), i32::MAX.into(), i64::from(i16::MAX) + 1] {
            round_trip(&Value::Int(int));
        }
    }

    #[test]
    fn scalars_round_trip() {
        assert_eq!(encode(&Value::None), [0xc0]);
        assert_eq!(encode(&Value::Bool(false)), [0xc2]);
        assert_eq!(encode(&Value::Bool(true)), [0xc3]);
        assert_eq!(
            encode(&Value::Float(1.5)),
            hex("cb 3f f8 00 00 00 00 00 00")
        );
        for value in [
            Value::None,
            Value::Bool(false),
            Value::Bool(true),
            Value::Float(1.5),
            Value::Float(-0.25),
            Value::Float(f64::INFINITY),
            Value::bytes(&b""[..]),
            Value::bytes(&b"\x00\xff data"[..]),
            Value::str(""),
            Value::str("héllo ✓"),
        ] {
            round_trip(&value);
        }
    }

    #[test]
    fn float32_is_widened() {
        assert_eq!(dec(&hex("ca 3f c0 00 00")), Ok(Value::Float(1.5)));
    }

    #[test]
    fn containers_round_trip() {
        let value = tuple([
            tuple([]),
            Value::Dict(vec![]),
            Value::Dict(vec![
                (Value::str("oid"), Value::bytes(&OID1[..])),
                (Value::Int(1), Value::None),
                (tuple([Value::Int(2)]), tuple([tuple([Value::Bool(true)])])),
                (Value::bytes(&b"k"[..]), Value::Float(2.0)),
            ]),
            tuple((0..20).map(Value::Int)),
        ]);
        round_trip(&value);
        // Mixed types, cross-checked against Python's msgpack.
        let mixed = tuple([
            Value::Float(1.5),
            Value::Float(-0.25),
            Value::str("héllo ✓"),
            Value::Dict(vec![(Value::Int(1), Value::None)]),
            tuple([]),
        ]);
        let bytes = hex("95 cb 3f f8 00 00 00 00 00 00 cb bf d0 00 00 00 00 00 00 \
             aa 68 c3 a9 6c 6c 6f 20 e2 9c 93 81 01 c0 90");
        assert_eq!(encode(&mixed), bytes);
        assert_eq!(dec(&bytes), Ok(mixed));
    }

    #[test]
    fn lists_decode_as_tuples() {
        let list = Value::List(vec![Value::Int(1), Value::List(vec![])]);
        assert_eq!(encode(&list), hex("92 01 90"));
        assert_eq!(dec(&encode(&list)), Ok(tuple([Value::Int(1), tuple([])])));
    }

    #[test]
    fn container_length_boundaries() {
        let cases: &[(usize, &str)] = &[
            (15, "9f"),
            (16, "dc 00 10"),
            (65535, "dc ff ff"),
            (65536, "dd 00 01 00 00"),
        ];
        for &(len, header) in cases {
            let value = tuple(std::iter::repeat_n(Value::None, len));
            let bytes = encode(&value);
            assert!(bytes.starts_with(&hex(header)), "{len}");
            assert_eq!(bytes.len(), hex(header).len() + len);
            assert_eq!(dec(&bytes), Ok(value));
        }
        let cases: &[(i64, &str)] = &[(15, "8f"), (16, "de 00 10"), (65536, "df 00 01 00 00")];
        for &(len, header) in cases {
            let value = Value::Dict((0..len).map(|i| (Value::Int(i), Value::None)).collect());
            let bytes = encode(&value);
            assert!(bytes.starts_with(&hex(header)), "{len}");
            assert_eq!(dec(&bytes), Ok(value));
        }
    }

    #[test]
    fn str_and_bin_length_boundaries() {
        let strs: &[(usize, &str)] = &[
            (0, "a0"),
            (31, "bf"),
            (32, "d9 20"),
            (255, "d9 ff"),
            (256, "da 01 00"),
            (65535, "da ff ff"),
            (65536, "db 00 01 00 00"),
        ];
        for &(len, header) in strs {
            let value = Value::str("x".repeat(len));
            let bytes = encode(&value);
            assert_eq!(bytes[..bytes.len() - len], hex(header), "str {len}");
            assert_eq!(dec(&bytes), Ok(value), "str {len}");
        }
        let bins: &[(usize, &str)] = &[
            (0, "c4 00"),
            (255, "c4 ff"),
            (256, "c5 01 00"),
            (65535, "c5 ff ff"),
            (65536, "c6 00 01 00 00"),
        ];
        for &(len, header) in bins {
            let value = Value::bytes(vec![0xab; len]);
            let bytes = encode(&value);
            assert_eq!(bytes[..bytes.len() - len], hex(header), "bin {len}");
            assert_eq!(dec(&bytes), Ok(value), "bin {len}");
        }
    }

    /// Encodes the message and checks it against the reference's bytes,
    /// then decodes those bytes back into the message.
    fn check_message(message: Value, bytes: &str) {
        assert_eq!(encode(&message), hex(bytes));
        assert_eq!(dec(&hex(bytes)), Ok(message));
    }

    #[test]
    fn reference_heartbeat() {
        check_message(
            tuple([
                Value::Int(-1),
                Value::Int(0),
                Value::str(".reply"),
                Value::None,
            ]),
            "94 ff 00 a6 2e 72 65 70 6c 79 c0",
        );
    }

    #[test]
    fn reference_register_call() {
        check_message(
            tuple([
                Value::Int(1),
                Value::Bool(false),
                Value::str("register"),
                tuple([Value::str("1"), Value::Bool(false)]),
            ]),
            "94 01 c2 a8 72 65 67 69 73 74 65 72 92 a1 31 c2",
        );
    }

    #[test]
    fn reference_one_way_storea() {
        check_message(
            tuple([
                Value::Int(0),
                Value::Bool(true),
                Value::str("storea"),
                tuple([
                    Value::bytes(&OID1[..]),
                    Value::bytes(&[0u8; 8][..]),
                    Value::bytes(&b"DATA"[..]),
                    Value::Int(140250773104720),
                ]),
            ]),
            "94 00 c3 a6 73 74 6f 72 65 61 94 c4 08 00 00 00 00 00 00 00 01 \
             c4 08 00 00 00 00 00 00 00 00 c4 04 44 41 54 41 cf 00 00 7f 8e ad 82 a8 50",
        );
    }

    #[test]
    fn reference_load_before_reply() {
        check_message(
            tuple([
                tuple([Value::bytes(&OID1[..]), Value::bytes(&TID[..])]),
                Value::Int(0),
                Value::str(".reply"),
                tuple([
                    Value::bytes(&b"DATA"[..]),
                    Value::bytes(&TID[..]),
                    Value::None,
                ]),
            ]),
            "94 92 c4 08 00 00 00 00 00 00 00 01 c4 08 04 0d 53 da e1 d4 ba 88 \
             00 a6 2e 72 65 70 6c 79 93 c4 04 44 41 54 41 c4 08 04 0d 53 da e1 d4 ba 88 c0",
        );
    }

    /// An error reply as ZEO sends it (bytes from Python's msgpack).
    const CONFLICT_REPLY: &str = "94 07 02 a6 2e 72 65 70 6c 79 92 bf 5a 4f 44 42 2e 50 4f 53 \
        45 78 63 65 70 74 69 6f 6e 2e 43 6f 6e 66 6c 69 63 74 45 72 72 6f 72 84 a7 6d 65 73 73 \
        61 67 65 b7 64 61 74 61 62 61 73 65 20 63 6f 6e 66 6c 69 63 74 20 65 72 72 6f 72 a3 6f \
        69 64 c4 08 00 00 00 00 00 00 00 01 aa 63 6c 61 73 73 5f 6e 61 6d 65 b4 42 54 72 65 65 \
        73 2e 4c 65 6e 67 74 68 2e 4c 65 6e 67 74 68 a7 73 65 72 69 61 6c 73 92 c4 08 04 0d 53 \
        da e1 d4 ba 88 c4 08 04 0d 53 da de fa ea 44";

    fn conflict_reply() -> Value {
        let payload = Value::Dict(vec![
            (Value::str("message"), Value::str("database conflict error")),
            (Value::str("oid"), Value::bytes(&OID1[..])),
            (Value::str("class_name"), Value::str("BTrees.Length.Length")),
            (
                Value::str("serials"),
                tuple([
                    Value::bytes(&TID[..]),
                    Value::bytes(hex("04 0d 53 da de fa ea 44")),
                ]),
            ),
        ]);
        tuple([
            Value::Int(7),
            Value::Int(2),
            Value::str(".reply"),
            tuple([Value::str("ZODB.POSException.ConflictError"), payload]),
        ])
    }

    #[test]
    fn error_reply_matches_python() {
        check_message(conflict_reply(), CONFLICT_REPLY);
    }

    #[test]
    fn global_encodes_as_dotted_name() {
        assert_eq!(
            encode(&global("builtins", "KeyError")),
            encode(&Value::str("builtins.KeyError"))
        );
    }

    #[test]
    fn recon_reduce_becomes_class_name_and_state() {
        let state = Value::Dict(vec![(Value::str("_reason"), Value::str("undo failed"))]);
        let exception = reduce(
            global("ZODB.POSException", "_recon"),
            tuple([global("ZODB.POSException", "UndoError"), state.clone()]),
        );
        assert_eq!(
            encode(&exception),
            encode(&tuple([
                Value::str("ZODB.POSException.UndoError"),
                state.clone()
            ]))
        );
        // The args may also arrive as a list.
        let from_list = reduce(
            global("ZODB.POSException", "_recon"),
            Value::List(vec![
                global("ZODB.POSException", "UndoError"),
                state.clone(),
            ]),
        );
        assert_eq!(encode(&from_list), encode(&exception));
        // Nested inside a MultipleUndoErrors payload, as the pickle side has it.
        let payload = Value::Dict(vec![(
            Value::str("_errs"),
            Value::List(vec![tuple([Value::bytes(&OID1[..]), exception])]),
        )]);
        assert_eq!(
            dec(&encode(&payload)),
            Ok(Value::Dict(vec![(
                Value::str("_errs"),
                tuple([tuple([
                    Value::bytes(&OID1[..]),
                    tuple([Value::str("ZODB.POSException.UndoError"), state]),
                ])]),
            )]))
        );
    }

    #[test]
    fn exception_class_reduce_becomes_class_name_and_args() {
        let args = tuple([Value::bytes(&OID1[..])]);
        let exception = reduce(global("builtins", "KeyError"), args.clone());
        assert_eq!(
            encode(&exception),
            encode(&tuple([Value::str("builtins.KeyError"), args]))
        );
        // A `_recon` call that is not (class, state) keeps its args.
        let odd = tuple([Value::str("not a class"), Value::None]);
        assert_eq!(
            encode(&reduce(global("ZODB.POSException", "_recon"), odd.clone())),
            encode(&tuple([Value::str("ZODB.POSException._recon"), odd]))
        );
    }

    #[test]
    fn other_reduce_becomes_callable_and_args() {
        let callable = Value::str("not a global");
        let args = tuple([Value::Int(1)]);
        assert_eq!(
            encode(&reduce(callable.clone(), args.clone())),
            encode(&tuple([callable, args]))
        );
    }

    #[test]
    fn byte_strings_are_slices_of_the_frame() {
        let frame = Bytes::from(hex(CONFLICT_REPLY));
        let frame_range = frame.as_ptr_range();
        let message = decode(&frame).expect("valid message");
        let payload = &message.as_seq().expect("message is a tuple")[3]
            .as_seq()
            .expect("error pair")[1];
        let oid = payload
            .dict_get("oid")
            .and_then(Value::as_bytes)
            .expect("oid");
        assert_eq!(oid[..], OID1);
        let oid_range = oid.as_ptr_range();
        assert!(frame_range.start <= oid_range.start && oid_range.end <= frame_range.end);
    }

    #[test]
    fn deepest_allowed_nesting_round_trips() {
        let bytes = nested_arrays(MAX_NESTING);
        let value = dec(&bytes).expect("MAX_NESTING levels are allowed");
        assert_eq!(encode(&value), bytes);
    }

    #[test]
    fn truncated_at_every_position() {
        let mut message = encode(&tuple([
            conflict_reply(),
            Value::Float(0.5),
            Value::Int(i64::MIN),
            Value::Int(65536),
            Value::str("x".repeat(300)),
            Value::bytes(vec![1; 300]),
            tuple(std::iter::repeat_n(Value::Bool(true), 20)),
            Value::Dict((0..20).map(|i| (Value::Int(i), Value::None)).collect()),
        ]));
        message.extend_from_slice(&hex("ca 3f c0 00 00"));
        message[0] += 1; // the float32 is one more item of the outer array
        assert!(dec(&message).is_ok());
        for end in 0..message.len() {
            assert_eq!(
                dec(&message[..end]),
                Err(DecodeError::Truncated),
                "cut at {end}"
            );
        }
    }

    #[test]
    fn huge_claimed_lengths_fail_fast() {
        for bytes in [
            "c6 ff ff ff ff 00 01",
            "db ff ff ff ff 61 62",
            "dd ff ff ff ff c0 c0 c0 c0 c0",
            "df ff ff ff ff c0 c0 c0 c0 c0",
            "c5 01 00 00",
            "d9 05 61 62",
            "dc 00 03 c0 c0",
            "82 c0 c0 c0",
        ] {
            assert_eq!(dec(&hex(bytes)), Err(DecodeError::Truncated), "{bytes}");
        }
    }

    #[test]
    fn nested_claims_are_checked_together() {
        // Every array32 claims as many items as there are bytes after its
        // header, which alone would fit; taken together they cannot. Without
        // counting what the outer arrays still expect, each level would
        // reserve room for a million values (gigabytes in all).
        let levels = 200;
        let filler = 1 << 20;
        let mut frame = Vec::new();
        for level in 0..levels {
            frame.push(0xdd);
            let after = (levels - level - 1) * 5 + filler;
            frame.extend_from_slice(&u32::try_from(after).expect("fits").to_be_bytes());
        }
        frame.resize(frame.len() + filler, 0xc0);
        assert_eq!(dec(&frame), Err(DecodeError::Truncated));
    }

    #[test]
    fn ext_types_are_refused() {
        for code in [0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8] {
            let mut frame = vec![0x92, 0xc0, code];
            frame.extend_from_slice(&[1; 20]);
            assert_eq!(
                dec(&frame),
                Err(DecodeError::UnsupportedCode {
                    codec: "msgpack",
                    code,
                    offset: 2
                })
            );
        }
    }

    #[test]
    fn reserved_code_is_refused() {
        assert_eq!(
            dec(&[0xc1]),
            Err(DecodeError::UnsupportedCode {
                codec: "msgpack",
                code: 0xc1,
                offset: 0
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(dec(&hex("c0 c0 c0")), Err(DecodeError::TrailingBytes(2)));
        assert_eq!(dec(&hex("91 01 02")), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(dec(&[]), Err(DecodeError::Truncated));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            dec(&hex("92 c0 a2 ff fe")),
            Err(DecodeError::InvalidUtf8 { offset: 2 })
        );
        // A character cut in half.
        assert_eq!(
            dec(&hex("d9 01 c3")),
            Err(DecodeError::InvalidUtf8 { offset: 0 })
        );
    }

    #[test]
    fn too_deep_nesting_is_refused() {
        assert_eq!(
            dec(&nested_arrays(MAX_NESTING + 1)),
            Err(DecodeError::TooDeep)
        );
        // Empty containers count too.
        let mut frame = vec![0x91; MAX_NESTING];
        frame.push(0x80);
        assert_eq!(dec(&frame), Err(DecodeError::TooDeep));
        // Maps nest the same way, through keys or values.
        // (Each map but the innermost gets its value after the inner one.)
        let mut through_keys = vec![0x81; MAX_NESTING + 1];
        through_keys.resize(through_keys.len() + MAX_NESTING + 2, 0xc0);
        assert_eq!(dec(&through_keys), Err(DecodeError::TooDeep));
        let mut through_values = [0x81, 0xc0].repeat(MAX_NESTING + 1);
        through_values.push(0xc0);
        assert_eq!(dec(&through_values), Err(DecodeError::TooDeep));
        // One level less is fine.
        through_keys.drain(..1);
        through_keys.pop();
        assert!(dec(&through_keys).is_ok());
        through_values.drain(..2);
        assert!(dec(&through_values).is_ok());
        // A hostile frame far deeper than any stack could recurse.
        assert_eq!(dec(&nested_arrays(1_000_000)), Err(DecodeError::TooDeep));
    }

    #[test]
    fn uint64_above_i64_max_is_refused() {
        assert_eq!(
            dec(&hex("92 c0 cf 80 00 00 00 00 00 00 00")),
            Err(DecodeError::IntegerOutOfRange { offset: 2 })
        );
        assert_eq!(
            dec(&hex("cf ff ff ff ff ff ff ff ff")),
            Err(DecodeError::IntegerOutOfRange { offset: 0 })
        );
    }

    #[test]
    fn map_keys_of_any_type_are_accepted() {
        assert_eq!(
            dec(&hex("82 01 c0 91 c3 a1 61")),
            Ok(Value::Dict(vec![
                (Value::Int(1), Value::None),
                (tuple([Value::Bool(true)]), Value::str("a")),
            ]))
        );
    }
}
