//! The pickle encoding ("Z5", section 9.3 of the protocol reference).
//!
//! Encoding produces exactly what ZEO's own pickler writes: protocol 3 in
//! "fast" mode (no memo opcodes), byte for byte as CPython's C pickler.
//!
//! Decoding is a stack machine like Python's unpickler. It accepts the
//! opcodes of protocols 0 to 4 that plain data and ZEO's error payloads
//! use: ZEO's server decodes with a general unpickler, so a client may send
//! memo opcodes (PUT/GET), protocol 4 framing or Python 2 strings. Object
//! construction (BUILD, NEWOBJ, INST, OBJ, persistent ids, extension codes)
//! is refused. Globals and REDUCE are kept as data ([`Value::Global`],
//! [`Value::Reduce`]), never resolved or called.
//!
//! Memo references are kept as references while the pickle is read, so
//! that a container mutated after it was memoized (EMPTY_LIST, PUT, then
//! APPENDS, which is how Python pickles every list) is seen complete by a
//! later GET, as in Python. They are turned into copies once STOP is
//! reached (byte strings are shared, not copied), within a budget that
//! stops a small pickle from expanding into a huge value. Python sets and
//! frozensets (EMPTY_SET, ADDITEMS, FROZENSET) decode to [`Value::List`],
//! in pickle order and without deduplication.
//!
//! Hostile input yields a [`DecodeError`], never a panic, and nothing is
//! allocated for a declared length before the bytes are there. Nesting is
//! limited to [`MAX_NESTING`] and nothing here recurses while decoding.
//! Error offsets are those of the opcode at fault.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::{DecodeError, Value, MAX_NESTING};

/// Opcodes, named as in Python's `pickletools`.
mod op {
    // Protocol 0 and 1.
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    // Protocol 2.
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    // Protocol 3.
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    // Protocol 4.
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// Items per MARK ... APPENDS / SETITEMS batch, as in CPython's pickler.
const BATCH_SIZE: usize = 1000;

/// The highest pickle protocol a PROTO opcode may announce (Python 3.8+).
const HIGHEST_PROTOCOL: u8 = 5;

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Appends the opcodes of one value (no PROTO header, no STOP).
///
/// Recursive: values come from the decoders, which refuse anything nested
/// deeper than [`MAX_NESTING`], or from zeoraid itself.
pub fn encode_value(value: &Value, out: &mut BytesMut) {
    match value {
        Value::None => out.put_u8(op::NONE),
        Value::Bool(true) => out.put_u8(op::NEWTRUE),
        Value::Bool(false) => out.put_u8(op::NEWFALSE),
        Value::Int(i) => encode_int(*i, out),
        Value::Float(f) => {
            out.put_u8(op::BINFLOAT);
            out.put_f64(*f); // big-endian
        }
        Value::Bytes(data) => encode_bytes(data, out),
        Value::Str(text) => encode_str(text, out),
        Value::Tuple(items) => encode_tuple(items, out),
        Value::List(items) => encode_list(items, out),
        Value::Dict(pairs) => encode_dict(pairs, out),
        Value::Global { module, name } => {
            // Both names end at a newline on the wire; the decoders refuse
            // names containing one, so a decoded global re-encodes safely.
            debug_assert!(!module.contains('\n') && !name.contains('\n'));
            out.put_u8(op::GLOBAL);
            out.put_slice(module.as_bytes());
            out.put_u8(b'\n');
            out.put_slice(name.as_bytes());
            out.put_u8(b'\n');
        }
        Value::Reduce(call) => {
            let (callable, args) = &**call;
            encode_value(callable, out);
            encode_value(args, out);
            out.put_u8(op::REDUCE);
        }
    }
}

/// A whole pickle: PROTO 3, the value, STOP.
pub fn encode(value: &Value, out: &mut BytesMut) {
    out.put_slice(&[op::PROTO, 3]);
    encode_value(value, out);
    out.put_u8(op::STOP);
}

fn encode_int(i: i64, out: &mut BytesMut) {
    if let Ok(small) = u8::try_from(i) {
        out.put_u8(op::BININT1);
        out.put_u8(small);
    } else if let Ok(small) = u16::try_from(i) {
        out.put_u8(op::BININT2);
        out.put_u16_le(small);
    } else if let Ok(small) = i32::try_from(i) {
        out.put_u8(op::BININT);
        out.put_i32_le(small);
    } else {
        // LONG1: the shortest little-endian two's complement form, as
        // Python's encode_long: the value's significant bits plus a sign bit.
        let significant = if i < 0 {
            64 - i.leading_ones()
        } else {
            64 - i.leading_zeros()
        };
        let len = (significant as usize + 1).div_ceil(8);
        out.put_u8(op::LONG1);
        out.put_u8(len as u8); // at most 8
        out.put_slice(&i.to_le_bytes()[..len]);
    }
}

fn encode_bytes(data: &[u8], out: &mut BytesMut) {
    if let Ok(len) = u8::try_from(data.len()) {
        out.put_u8(op::SHORT_BINBYTES);
        out.put_u8(len);
    } else {
        put_len(data.len(), op::BINBYTES, op::BINBYTES8, out);
    }
    out.put_slice(data);
}

/// Appends one text string (also a message's method name, without
/// building a `Value` for it).
pub fn encode_str(text: &str, out: &mut BytesMut) {
    // Protocol 3 has no short form for text.
    put_len(text.len(), op::BINUNICODE, op::BINUNICODE8, out);
    out.put_slice(text.as_bytes());
}

/// Writes `op32` with a 4-byte length. ZEO frames cannot hold 4 GiB, but
/// rather than truncating such a length the protocol 4 form `op64` with an
/// 8-byte length is used, which every Python 3.4+ unpickler reads.
fn put_len(len: usize, op32: u8, op64: u8, out: &mut BytesMut) {
    match u32::try_from(len) {
        Ok(len) => {
            out.put_u8(op32);
            out.put_u32_le(len);
        }
        Err(_) => {
            out.put_u8(op64);
            out.put_u64_le(len as u64);
        }
    }
}

fn encode_tuple(items: &[Value], out: &mut BytesMut) {
    match items.len() {
        0 => out.put_u8(op::EMPTY_TUPLE),
        1..=3 => {
            items.iter().for_each(|item| encode_value(item, out));
            out.put_u8([op::TUPLE1, op::TUPLE2, op::TUPLE3][items.len() - 1]);
        }
        _ => {
            out.put_u8(op::MARK);
            items.iter().for_each(|item| encode_value(item, out));
            out.put_u8(op::TUPLE);
        }
    }
}

fn encode_list(items: &[Value], out: &mut BytesMut) {
    out.put_u8(op::EMPTY_LIST);
    if let [item] = items {
        encode_value(item, out);
        out.put_u8(op::APPEND);
        return;
    }
    // Empty lists write no batch at all.
    for batch in items.chunks(BATCH_SIZE) {
        out.put_u8(op::MARK);
        batch.iter().for_each(|item| encode_value(item, out));
        out.put_u8(op::APPENDS);
    }
}

fn encode_dict(pairs: &[(Value, Value)], out: &mut BytesMut) {
    out.put_u8(op::EMPTY_DICT);
    match pairs {
        [] => {}
        [(key, value)] => {
            encode_value(key, out);
            encode_value(value, out);
            out.put_u8(op::SETITEM);
        }
        _ => {
            for batch in pairs.chunks(BATCH_SIZE) {
                out.put_u8(op::MARK);
                for (key, value) in batch {
                    encode_value(key, out);
                    encode_value(value, out);
                }
                out.put_u8(op::SETITEMS);
            }
            // CPython's C pickler starts another batch whenever the previous
            // one was full, so a dict of a multiple of 1000 items ends with
            // an empty MARK SETITEMS. (Its list code does not do this.)
            if pairs.len().is_multiple_of(BATCH_SIZE) {
                out.put_slice(&[op::MARK, op::SETITEMS]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes one whole pickle (must end with STOP, no trailing bytes).
/// Byte strings are zero-copy slices of `frame`, except Python 2 `STRING`
/// literals that contain escapes.
pub fn decode(frame: &Bytes) -> Result<Value, DecodeError> {
    let mut decoder = Decoder {
        frame,
        pos: 0,
        op_at: 0,
        op: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Vec::new(),
    };
    let top = decoder.run()?;
    let resolver = Resolver {
        arena: &decoder.arena,
        copy_budget: COPY_BUDGET_BASE
            .saturating_add(frame.len().saturating_mul(COPY_BUDGET_FACTOR)),
        tasks: Vec::new(),
        done: Vec::new(),
    };
    resolver.resolve(top)
}

/// Memo references (GET, DUP) are resolved into copies, so a small hostile
/// pickle could reference a large value many times, or build a chain of
/// lists each holding two references to the previous one (exponential
/// growth). The copies made for one frame may take at most this many bytes
/// plus `COPY_BUDGET_FACTOR` times the frame length (counted as one
/// `Value` per copied node plus copied text).
const COPY_BUDGET_BASE: usize = 16 << 20;
const COPY_BUDGET_FACTOR: usize = 4;

/// A value under construction. Containers may hold references to memo
/// entries, resolved into plain [`Value`]s when STOP is reached.
enum Obj {
    /// None, bool, int, float, bytes, str or a global.
    Scalar(Value),
    Tuple(Vec<Obj>),
    List(Vec<Obj>),
    /// A set or frozenset; becomes a list.
    Set {
        items: Vec<Obj>,
        frozen: bool,
    },
    Dict(Vec<(Obj, Obj)>),
    Reduce(Box<(Obj, Obj)>),
    /// The object in arena slot `slot`. `copy` is false for the one place
    /// where the object was created (PUT moves it into the arena and leaves
    /// this in its place) and true for every GET or DUP of it.
    Ref {
        slot: usize,
        copy: bool,
    },
}

impl Obj {
    fn type_name(&self) -> &'static str {
        match self {
            Obj::Scalar(value) => match value {
                Value::None => "None",
                Value::Bool(_) => "bool",
                Value::Int(_) => "int",
                Value::Float(_) => "float",
                Value::Bytes(_) => "bytes",
                Value::Str(_) => "str",
                Value::Global { .. } => "global",
                // Containers are never scalars, but the names are right.
                Value::Tuple(_) => "tuple",
                Value::List(_) => "list",
                Value::Dict(_) => "dict",
                Value::Reduce(_) => "reduce",
            },
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Set { frozen: false, .. } => "set",
            Obj::Set { frozen: true, .. } => "frozenset",
            Obj::Dict(_) => "dict",
            Obj::Reduce(_) => "reduce",
            Obj::Ref { .. } => "memo reference",
        }
    }
}

/// An object with its container nesting depth (0 for a scalar, 1 for a
/// container of scalars). Depths are checked whenever a container is built
/// or grown, so no structure deeper than [`MAX_NESTING`] is ever built and
/// dropping one cannot overflow the stack. A reference counts with the
/// depth its target had when the reference was taken: the real depth, which
/// may still grow, is checked again when references are resolved.
struct Built {
    obj: Obj,
    depth: usize,
}

impl Built {
    fn scalar(value: Value) -> Built {
        Built {
            obj: Obj::Scalar(value),
            depth: 0,
        }
    }
}

/// The depth of a container holding `items`.
fn container_depth<'b>(items: impl IntoIterator<Item = &'b Built>) -> Result<usize, DecodeError> {
    let depth = 1 + items.into_iter().map(|b| b.depth).max().unwrap_or(0);
    if depth > MAX_NESTING {
        return Err(DecodeError::TooDeep);
    }
    Ok(depth)
}

fn malformed(detail: impl Into<String>) -> DecodeError {
    DecodeError::Malformed {
        codec: "pickle",
        detail: detail.into(),
    }
}

struct Decoder<'a> {
    frame: &'a Bytes,
    pos: usize,
    /// Offset and code of the opcode being executed (for error messages).
    op_at: usize,
    op: u8,
    stack: Vec<Built>,
    /// Stack lengths at each open MARK. Values below the innermost mark are
    /// out of reach until it is closed, as in CPython's unpickler.
    marks: Vec<usize>,
    /// Memo key → arena slot.
    memo: HashMap<u64, usize>,
    /// Objects that are memoized or duplicated, referenced by [`Obj::Ref`].
    arena: Vec<Built>,
}

impl<'a> Decoder<'a> {
    /// Runs the opcodes up to STOP and returns the single value left.
    fn run(&mut self) -> Result<Obj, DecodeError> {
        loop {
            self.op_at = self.pos;
            self.op = self.u8()?; // input without STOP ends here as Truncated
            if self.op == op::STOP {
                break;
            }
            self.step()?;
        }
        if !self.marks.is_empty() {
            return Err(malformed("STOP inside an unclosed MARK"));
        }
        let top = match (self.stack.pop(), self.stack.len()) {
            (None, _) => return Err(malformed("STOP with an empty stack")),
            (Some(top), 0) => top.obj,
            (Some(_), below) => {
                return Err(malformed(format!(
                    "STOP with {} values on the stack instead of 1",
                    below + 1
                )))
            }
        };
        let trailing = self.frame.len() - self.pos;
        if trailing > 0 {
            return Err(DecodeError::TrailingBytes(trailing));
        }
        Ok(top)
    }

    /// Executes the opcode in `self.op`.
    fn step(&mut self) -> Result<(), DecodeError> {
        match self.op {
            op::PROTO => {
                let proto = self.u8()?;
                if proto > HIGHEST_PROTOCOL {
                    return Err(malformed(format!("unsupported pickle protocol {proto}")));
                }
            }
            op::FRAME => {
                // Protocol 4 framing only helps buffered readers; the whole
                // pickle is in memory already.
                self.take(8)?;
            }

            // Stack and mark manipulation.
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                if self.marks.last() == Some(&self.stack.len()) {
                    // POP right after MARK drops the mark (as CPython does).
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let slot = self.top_to_arena()?;
                let depth = self.arena[slot].depth;
                self.stack.push(Built {
                    obj: Obj::Ref { slot, copy: true },
                    depth,
                });
            }

            // Scalars.
            op::NONE => self.stack.push(Built::scalar(Value::None)),
            op::NEWTRUE => self.stack.push(Built::scalar(Value::Bool(true))),
            op::NEWFALSE => self.stack.push(Built::scalar(Value::Bool(false))),
            op::BININT1 => {
                let i = self.u8()?;
                self.push_int(i64::from(i));
            }
            op::BININT2 => {
                let i = u16::from_le_bytes(self.array()?);
                self.push_int(i64::from(i));
            }
            op::BININT => {
                let i = i32::from_le_bytes(self.array()?);
                self.push_int(i64::from(i));
            }
            op::LONG1 => {
                let len = usize::from(self.u8()?);
                let data = self.take(len)?;
                self.push_int(self.int_from_le(data)?);
            }
            op::LONG4 => {
                let len = self.len_i32()?;
                let data = self.take(len)?;
                self.push_int(self.int_from_le(data)?);
            }
            op::INT => {
                let line = self.line()?;
                // Protocols 0 and 1 write booleans as INT "01" and "00".
                let value = match line {
                    b"01" => Value::Bool(true),
                    b"00" => Value::Bool(false),
                    _ => Value::Int(self.parse_int(line)?),
                };
                self.stack.push(Built::scalar(value));
            }
            op::LONG => {
                let line = self.line()?;
                // Python 2 and protocol 0 write a trailing "L".
                let digits = line.strip_suffix(b"L").unwrap_or(line);
                let i = self.parse_int(digits)?;
                self.push_int(i);
            }
            op::BINFLOAT => {
                let f = f64::from_be_bytes(self.array()?);
                self.stack.push(Built::scalar(Value::Float(f)));
            }
            op::FLOAT => {
                let line = self.line()?;
                let f = std::str::from_utf8(line)
                    .ok()
                    .and_then(|text| text.parse::<f64>().ok())
                    .ok_or_else(|| {
                        malformed(format!("bad FLOAT literal at offset {}", self.op_at))
                    })?;
                self.stack.push(Built::scalar(Value::Float(f)));
            }
            op::SHORT_BINUNICODE => {
                let len = usize::from(self.u8()?);
                self.push_text(len)?;
            }
            op::BINUNICODE => {
                let len = self.len_u32()?;
                self.push_text(len)?;
            }
            op::BINUNICODE8 => {
                let len = self.len_u64()?;
                self.push_text(len)?;
            }
            op::UNICODE => {
                let line = self.line()?;
                let text = self.raw_unicode_escape(line)?;
                self.stack.push(Built::scalar(Value::Str(text)));
            }
            // Python 3 bytes, and Python 2 str (which ZEO treats as bytes).
            op::SHORT_BINBYTES | op::SHORT_BINSTRING => {
                let len = usize::from(self.u8()?);
                self.push_bytes(len)?;
            }
            op::BINBYTES => {
                let len = self.len_u32()?;
                self.push_bytes(len)?;
            }
            op::BINSTRING => {
                let len = self.len_i32()?;
                self.push_bytes(len)?;
            }
            op::BINBYTES8 => {
                let len = self.len_u64()?;
                self.push_bytes(len)?;
            }
            op::STRING => {
                let start = self.pos;
                let line = self.line()?;
                let data = self.string_literal(start, line)?;
                self.stack.push(Built::scalar(Value::Bytes(data)));
            }

            // Globals and calls, kept as data.
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let module = self.utf8(module)?.to_owned();
                let name = self.utf8(name)?.to_owned();
                self.push_global(module, name)?;
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(module), Some(name)) = (self.text_of(&module), self.text_of(&name))
                else {
                    return Err(malformed(format!(
                        "STACK_GLOBAL at offset {} needs two str, got {} and {}",
                        self.op_at,
                        self.target_name(&module),
                        self.target_name(&name)
                    )));
                };
                let (module, name) = (module.to_owned(), name.to_owned());
                self.push_global(module, name)?;
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let depth = container_depth([&callable, &args])?;
                self.stack.push(Built {
                    obj: Obj::Reduce(Box::new((callable.obj, args.obj))),
                    depth,
                });
            }

            // Tuples.
            op::EMPTY_TUPLE => self.push_empty(Obj::Tuple(Vec::new())),
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let items = self.pop_n(usize::from(self.op - op::TUPLE1) + 1)?;
                self.push_seq(Obj::Tuple, items)?;
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_seq(Obj::Tuple, items)?;
            }

            // Lists, dicts and sets.
            op::EMPTY_LIST => self.push_empty(Obj::List(Vec::new())),
            op::LIST => {
                let items = self.pop_mark()?;
                self.push_seq(Obj::List, items)?;
            }
            op::EMPTY_DICT => self.push_empty(Obj::Dict(Vec::new())),
            op::DICT => {
                let items = self.pop_mark()?;
                self.check_pairs(&items)?;
                let depth = container_depth(&items)?;
                let pairs = pair_up(items.into_iter().map(|b| b.obj)).collect();
                self.stack.push(Built {
                    obj: Obj::Dict(pairs),
                    depth,
                });
            }
            op::EMPTY_SET => self.push_empty(Obj::Set {
                items: Vec::new(),
                frozen: false,
            }),
            op::FROZENSET => {
                let items = self.pop_mark()?;
                self.push_seq(
                    |items| Obj::Set {
                        items,
                        frozen: true,
                    },
                    items,
                )?;
            }
            op::APPEND => {
                let item = self.pop()?;
                self.grow(vec![item])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.grow(items)?;
            }
            op::SETITEM => {
                let items = self.pop_n(2)?;
                self.grow(items)?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.grow(items)?;
            }
            op::ADDITEMS => {
                let items = self.pop_mark()?;
                self.grow(items)?;
            }

            // The memo.
            op::BINPUT => {
                let key = self.u8()?;
                self.put(u64::from(key))?;
            }
            op::LONG_BINPUT => {
                let key = u32::from_le_bytes(self.array()?);
                self.put(u64::from(key))?;
            }
            op::PUT => {
                let line = self.line()?;
                let key = self.memo_key(line)?;
                self.put(key)?;
            }
            op::MEMOIZE => self.put(self.memo.len() as u64)?,
            op::BINGET => {
                let key = self.u8()?;
                self.get(u64::from(key))?;
            }
            op::LONG_BINGET => {
                let key = u32::from_le_bytes(self.array()?);
                self.get(u64::from(key))?;
            }
            op::GET => {
                let line = self.line()?;
                let key = self.memo_key(line)?;
                self.get(key)?;
            }

            // Everything else builds arbitrary objects (BUILD, NEWOBJ, INST,
            // OBJ, PERSID, EXT*), uses out-of-band buffers (protocol 5) or
            // is not an opcode at all.
            code => {
                return Err(DecodeError::UnsupportedCode {
                    codec: "pickle",
                    code,
                    offset: self.op_at,
                })
            }
        }
        Ok(())
    }

    // -- Reading the input -------------------------------------------------

    /// The next `n` bytes. The length is checked against the input before
    /// anything is allocated for it.
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let frame: &'a [u8] = self.frame;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= frame.len())
            .ok_or(DecodeError::Truncated)?;
        let data = &frame[self.pos..end];
        self.pos = end;
        Ok(data)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn len_u32(&mut self) -> Result<usize, DecodeError> {
        let len = u32::from_le_bytes(self.array()?);
        // A length beyond the address space cannot be in the input.
        usize::try_from(len).map_err(|_| DecodeError::Truncated)
    }

    fn len_u64(&mut self) -> Result<usize, DecodeError> {
        let len = u64::from_le_bytes(self.array()?);
        usize::try_from(len).map_err(|_| DecodeError::Truncated)
    }

    /// The signed 4-byte length of BINSTRING and LONG4.
    fn len_i32(&mut self) -> Result<usize, DecodeError> {
        let len = i32::from_le_bytes(self.array()?);
        usize::try_from(len).map_err(|_| {
            malformed(format!(
                "{} at offset {} has a negative length",
                op_name(self.op),
                self.op_at
            ))
        })
    }

    /// The bytes up to the next newline, which is consumed.
    fn line(&mut self) -> Result<&'a [u8], DecodeError> {
        let rest = &self.frame[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(DecodeError::Truncated)?;
        let line = self.take(len)?;
        self.pos += 1; // the newline
        Ok(line)
    }

    fn utf8(&self, data: &'a [u8]) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(data).map_err(|_| DecodeError::InvalidUtf8 { offset: self.op_at })
    }

    // -- Scalars -------------------------------------------------------------

    fn push_int(&mut self, i: i64) {
        self.stack.push(Built::scalar(Value::Int(i)));
    }

    /// Pushes the next `len` bytes as a zero-copy slice of the frame.
    fn push_bytes(&mut self, len: usize) -> Result<(), DecodeError> {
        let start = self.pos;
        self.take(len)?;
        let data = self.frame.slice(start..self.pos);
        self.stack.push(Built::scalar(Value::Bytes(data)));
        Ok(())
    }

    /// Pushes the next `len` bytes as UTF-8 text.
    fn push_text(&mut self, len: usize) -> Result<(), DecodeError> {
        let data = self.take(len)?;
        let text = self.utf8(data)?.to_owned();
        self.stack.push(Built::scalar(Value::Str(text)));
        Ok(())
    }

    /// A little-endian two's complement integer (LONG1, LONG4).
    fn int_from_le(&self, data: &[u8]) -> Result<i64, DecodeError> {
        let Some(&last) = data.last() else {
            return Ok(0); // LONG1 with no bytes is 0
        };
        let fill = if last & 0x80 == 0 { 0x00 } else { 0xff };
        let mut buf = [fill; 8];
        if data.len() > 8 {
            // Longer than 8 bytes fits i64 only if the extra bytes merely
            // extend the sign of the low 8.
            let (low, high) = data.split_at(8);
            if high.iter().any(|&b| b != fill) || (low[7] ^ fill) & 0x80 != 0 {
                return Err(DecodeError::IntegerOutOfRange { offset: self.op_at });
            }
            buf.copy_from_slice(low);
        } else {
            buf[..data.len()].copy_from_slice(data);
        }
        Ok(i64::from_le_bytes(buf))
    }

    /// A decimal integer in text form (INT, LONG). Python would also accept
    /// other bases and underscores, which no pickler writes.
    fn parse_int(&self, text: &[u8]) -> Result<i64, DecodeError> {
        let bad = || malformed(format!("bad integer literal at offset {}", self.op_at));
        let text = std::str::from_utf8(text).map_err(|_| bad())?;
        text.parse::<i64>().map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                DecodeError::IntegerOutOfRange { offset: self.op_at }
            }
            _ => bad(),
        })
    }

    /// Decodes Python's raw-unicode-escape (UNICODE): bytes are Latin-1
    /// characters, except `\uXXXX` and `\UXXXXXXXX` after an odd number of
    /// backslashes.
    fn raw_unicode_escape(&self, line: &[u8]) -> Result<String, DecodeError> {
        let mut text = String::with_capacity(line.len());
        let mut i = 0;
        while let Some(&b) = line.get(i) {
            if b != b'\\' {
                text.push(char::from(b));
                i += 1;
                continue;
            }
            let run = line[i..].iter().take_while(|&&c| c == b'\\').count();
            let after = i + run;
            let digits = match line.get(after) {
                Some(b'u') if run % 2 == 1 => 4,
                Some(b'U') if run % 2 == 1 => 8,
                _ => 0,
            };
            if digits == 0 {
                text.extend(std::iter::repeat_n('\\', run));
                i = after;
                continue;
            }
            text.extend(std::iter::repeat_n('\\', run - 1));
            let hex = line
                .get(after + 1..after + 1 + digits)
                .and_then(parse_hex)
                .ok_or_else(|| {
                    malformed(format!(
                        "bad \\u escape in UNICODE at offset {}",
                        self.op_at
                    ))
                })?;
            if hex > u32::from(char::MAX) {
                return Err(malformed(format!(
                    "\\U escape beyond U+10FFFF in UNICODE at offset {}",
                    self.op_at
                )));
            }
            // Python allows lone surrogates in a str; UTF-8 cannot hold them.
            let ch = char::from_u32(hex).ok_or(DecodeError::InvalidUtf8 { offset: self.op_at })?;
            text.push(ch);
            i = after + 1 + digits;
        }
        Ok(text)
    }

    /// Decodes a Python 2 STRING literal: quoted, with Python's string
    /// escapes. `start` is the offset of `line` in the frame; without
    /// escapes the result is a slice of the frame.
    fn string_literal(&self, start: usize, line: &[u8]) -> Result<Bytes, DecodeError> {
        let bad = |what: &str| malformed(format!("{what} in STRING at offset {}", self.op_at));
        let inner = match line {
            [quote @ (b'\'' | b'"'), inner @ .., last] if last == quote => inner,
            _ => return Err(bad("missing quotes")),
        };
        if !inner.contains(&b'\\') {
            return Ok(self.frame.slice(start + 1..start + 1 + inner.len()));
        }
        let mut out = Vec::with_capacity(inner.len());
        let mut rest = inner;
        while let Some((&b, tail)) = rest.split_first() {
            rest = tail;
            if b != b'\\' {
                out.push(b);
                continue;
            }
            let Some((&esc, tail)) = rest.split_first() else {
                return Err(bad("trailing backslash"));
            };
            rest = tail;
            match esc {
                b'\\' | b'\'' | b'"' => out.push(esc),
                b'a' => out.push(0x07),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(0x0b),
                b'x' => {
                    let hex = rest
                        .get(..2)
                        .and_then(parse_hex)
                        .ok_or_else(|| bad("bad \\x escape"))?;
                    out.push(hex as u8); // two hex digits
                    rest = &rest[2..];
                }
                b'0'..=b'7' => {
                    // Up to three octal digits; Python keeps the low 8 bits.
                    let mut value = u32::from(esc - b'0');
                    for _ in 0..2 {
                        match rest.split_first() {
                            Some((&d @ b'0'..=b'7', tail)) => {
                                value = value * 8 + u32::from(d - b'0');
                                rest = tail;
                            }
                            _ => break,
                        }
                    }
                    out.push((value & 0xff) as u8);
                }
                // Unknown escapes stay as written.
                _ => out.extend_from_slice(&[b'\\', esc]),
            }
        }
        Ok(Bytes::from(out))
    }

    // -- Globals -------------------------------------------------------------

    fn push_global(&mut self, module: String, name: String) -> Result<(), DecodeError> {
        // Names are written newline-terminated by GLOBAL, which is how they
        // are re-encoded: refuse anything that could not be.
        let fine = |s: &str| !s.is_empty() && !s.contains('\n');
        if !fine(&module) || !fine(&name) {
            return Err(malformed(format!(
                "bad global name (empty or with a newline) at offset {}",
                self.op_at
            )));
        }
        self.stack
            .push(Built::scalar(Value::Global { module, name }));
        Ok(())
    }

    /// The object a stack entry stands for, following a memo reference.
    fn target_of<'s>(&'s self, built: &'s Built) -> &'s Obj {
        match built.obj {
            Obj::Ref { slot, .. } => &self.arena[slot].obj,
            ref obj => obj,
        }
    }

    fn target_name(&self, built: &Built) -> &'static str {
        self.target_of(built).type_name()
    }

    fn text_of<'s>(&'s self, built: &'s Built) -> Option<&'s str> {
        match self.target_of(built) {
            Obj::Scalar(Value::Str(text)) => Some(text),
            _ => None,
        }
    }

    // -- The stack -----------------------------------------------------------

    /// Stack positions below this belong to an open MARK.
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn underflow(&self) -> DecodeError {
        malformed(format!(
            "stack underflow at {} (offset {})",
            op_name(self.op),
            self.op_at
        ))
    }

    fn pop(&mut self) -> Result<Built, DecodeError> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    /// The top `n` values, bottom first.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Built>, DecodeError> {
        if self.stack.len() - self.fence() < n {
            return Err(self.underflow());
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// The values above the innermost MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Built>, DecodeError> {
        let mark = self.marks.pop().ok_or_else(|| {
            malformed(format!(
                "{} at offset {} without a MARK",
                op_name(self.op),
                self.op_at
            ))
        })?;
        Ok(self.stack.split_off(mark))
    }

    fn push_empty(&mut self, container: Obj) {
        self.stack.push(Built {
            obj: container,
            depth: 1,
        });
    }

    /// Pushes a tuple, list or frozenset of `items`.
    fn push_seq(
        &mut self,
        make: impl FnOnce(Vec<Obj>) -> Obj,
        items: Vec<Built>,
    ) -> Result<(), DecodeError> {
        let depth = container_depth(&items)?;
        let obj = make(items.into_iter().map(|b| b.obj).collect());
        self.stack.push(Built { obj, depth });
        Ok(())
    }

    /// Checks that DICT or SETITEM(S) got whole key-value pairs.
    fn check_pairs(&self, items: &[Built]) -> Result<(), DecodeError> {
        if !items.len().is_multiple_of(2) {
            return Err(malformed(format!(
                "odd number of items for {} at offset {}",
                op_name(self.op),
                self.op_at
            )));
        }
        Ok(())
    }

    /// Adds `items` to the list (APPEND, APPENDS), dict (SETITEM, SETITEMS)
    /// or set (ADDITEMS) on top of the stack; through a memo reference if it
    /// is one, so that every reference sees the change.
    fn grow(&mut self, items: Vec<Built>) -> Result<(), DecodeError> {
        let depth = container_depth(&items)?;
        let (op, op_at) = (self.op, self.op_at);
        if matches!(op, op::SETITEM | op::SETITEMS) {
            self.check_pairs(&items)?;
        }
        let objs = items.into_iter().map(|b| b.obj);
        let target = self.top_target()?;
        match (&mut target.obj, op) {
            (Obj::List(list), op::APPEND | op::APPENDS) => list.extend(objs),
            (
                Obj::Set {
                    items,
                    frozen: false,
                },
                op::ADDITEMS,
            ) => items.extend(objs),
            (Obj::Dict(dict), op::SETITEM | op::SETITEMS) => dict.extend(pair_up(objs)),
            (other, _) => return Err(wrong_target(op, op_at, other)),
        }
        target.depth = target.depth.max(depth);
        Ok(())
    }

    /// The object on top of the stack, for mutation.
    fn top_target(&mut self) -> Result<&mut Built, DecodeError> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        let top = self.stack.len() - 1;
        if let Obj::Ref { slot, .. } = self.stack[top].obj {
            return Ok(&mut self.arena[slot]);
        }
        Ok(&mut self.stack[top])
    }

    // -- The memo ------------------------------------------------------------

    /// Moves the top of the stack into the arena, leaving a reference in its
    /// place, and returns its slot. A reference stays as it is.
    fn top_to_arena(&mut self) -> Result<usize, DecodeError> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        let slot = self.arena.len();
        let Some(top) = self.stack.last_mut() else {
            return Err(self.underflow());
        };
        if let Obj::Ref { slot, .. } = top.obj {
            return Ok(slot);
        }
        let depth = top.depth;
        let obj = std::mem::replace(&mut top.obj, Obj::Ref { slot, copy: false });
        self.arena.push(Built { obj, depth });
        Ok(slot)
    }

    fn put(&mut self, key: u64) -> Result<(), DecodeError> {
        let slot = self.top_to_arena()?;
        self.memo.insert(key, slot);
        Ok(())
    }

    fn get(&mut self, key: u64) -> Result<(), DecodeError> {
        let slot = *self.memo.get(&key).ok_or_else(|| {
            malformed(format!(
                "{} at offset {} of memo key {key}, which was never stored",
                op_name(self.op),
                self.op_at
            ))
        })?;
        let depth = self.arena[slot].depth;
        self.stack.push(Built {
            obj: Obj::Ref { slot, copy: true },
            depth,
        });
        Ok(())
    }

    /// The decimal memo key of PUT and GET.
    fn memo_key(&self, line: &[u8]) -> Result<u64, DecodeError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                malformed(format!(
                    "bad memo key for {} at offset {}",
                    op_name(self.op),
                    self.op_at
                ))
            })
    }
}

/// Groups `key, value, key, value, ...` into pairs (an odd last is dropped;
/// callers check the count first).
fn pair_up<T>(mut items: impl Iterator<Item = T>) -> impl Iterator<Item = (T, T)> {
    std::iter::from_fn(move || Some((items.next()?, items.next()?)))
}

fn wrong_target(op: u8, op_at: usize, target: &Obj) -> DecodeError {
    malformed(format!(
        "{} at offset {op_at} onto a {}",
        op_name(op),
        target.type_name()
    ))
}

/// Parses hex digits (and nothing else: no sign, unlike from_str_radix).
fn parse_hex(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, &d| {
        let digit = char::from(d).to_digit(16)?;
        Some(value << 4 | digit)
    })
}

/// Names of the opcodes that can fail on the stack, for error messages.
fn op_name(code: u8) -> &'static str {
    match code {
        op::POP_MARK => "POP_MARK",
        op::DUP => "DUP",
        op::REDUCE => "REDUCE",
        op::STACK_GLOBAL => "STACK_GLOBAL",
        op::TUPLE => "TUPLE",
        op::TUPLE1 => "TUPLE1",
        op::TUPLE2 => "TUPLE2",
        op::TUPLE3 => "TUPLE3",
        op::LIST => "LIST",
        op::DICT => "DICT",
        op::FROZENSET => "FROZENSET",
        op::APPEND => "APPEND",
        op::APPENDS => "APPENDS",
        op::SETITEM => "SETITEM",
        op::SETITEMS => "SETITEMS",
        op::ADDITEMS => "ADDITEMS",
        op::POP => "POP",
        op::PUT => "PUT",
        op::BINPUT => "BINPUT",
        op::LONG_BINPUT => "LONG_BINPUT",
        op::MEMOIZE => "MEMOIZE",
        op::GET => "GET",
        op::BINGET => "BINGET",
        op::LONG_BINGET => "LONG_BINGET",
        op::BINSTRING => "BINSTRING",
        op::LONG4 => "LONG4",
        _ => "opcode",
    }
}

/// Work items of the [`Resolver`].
enum Task<'a> {
    /// Resolve an object moved out of the decoder, inside `usize` containers.
    Owned(Obj, usize),
    /// Resolve an arena object by cloning it; the flag says it is a copy.
    Borrowed(&'a Obj, usize, bool),
    /// Gather the last `n` resolved values into a container.
    Tuple(usize),
    List(usize),
    /// `n` pairs, i.e. `2 * n` values.
    Dict(usize),
    Reduce,
}

/// Turns the decoded object into a [`Value`], copying memo references.
///
/// Works with explicit stacks rather than recursion, so resolving a
/// [`MAX_NESTING`] deep value takes no more machine stack than a flat one.
/// Copies are charged to a budget before anything is allocated for them: a
/// memo reference's original place is free (each object has exactly one,
/// so those costs are bounded by the input), every GET or DUP of it is not.
/// A reference cycle (a list appended to itself) nests without end and
/// fails with [`DecodeError::TooDeep`].
struct Resolver<'a> {
    arena: &'a [Built],
    /// Bytes the copies may still take (see [`COPY_BUDGET_BASE`]).
    copy_budget: usize,
    tasks: Vec<Task<'a>>,
    done: Vec<Value>,
}

impl<'a> Resolver<'a> {
    fn resolve(mut self, top: Obj) -> Result<Value, DecodeError> {
        self.tasks.push(Task::Owned(top, 0));
        while let Some(task) = self.tasks.pop() {
            self.run(task)?;
        }
        // Every task leaves exactly one value for its parent.
        self.done.pop().ok_or_else(lost_values)
    }

    /// The last `n` resolved values, in order.
    fn gather(&mut self, n: usize) -> Result<Vec<Value>, DecodeError> {
        let start = self.done.len().checked_sub(n).ok_or_else(lost_values)?;
        Ok(self.done.split_off(start))
    }

    fn run(&mut self, task: Task<'a>) -> Result<(), DecodeError> {
        let arena = self.arena;
        match task {
            Task::Owned(obj, outer) => match obj {
                Obj::Scalar(value) => self.done.push(value),
                Obj::Tuple(items) => self.expand_owned(Task::Tuple(items.len()), items, outer)?,
                Obj::List(items) | Obj::Set { items, .. } => {
                    self.expand_owned(Task::List(items.len()), items, outer)?
                }
                Obj::Dict(pairs) => {
                    let level = enter(outer)?;
                    self.tasks.push(Task::Dict(pairs.len()));
                    for (key, value) in pairs.into_iter().rev() {
                        self.tasks.push(Task::Owned(value, level));
                        self.tasks.push(Task::Owned(key, level));
                    }
                }
                Obj::Reduce(call) => {
                    let level = enter(outer)?;
                    let (callable, args) = *call;
                    self.tasks.push(Task::Reduce);
                    self.tasks.push(Task::Owned(args, level));
                    self.tasks.push(Task::Owned(callable, level));
                }
                Obj::Ref { slot, copy } => {
                    self.tasks
                        .push(Task::Borrowed(&arena[slot].obj, outer, copy))
                }
            },
            Task::Borrowed(obj, outer, copying) => self.borrowed(obj, outer, copying)?,
            Task::Tuple(n) => {
                let items = self.gather(n)?;
                self.done.push(Value::Tuple(items));
            }
            Task::List(n) => {
                let items = self.gather(n)?;
                self.done.push(Value::List(items));
            }
            Task::Dict(n) => {
                let items = self.gather(2 * n)?;
                self.done
                    .push(Value::Dict(pair_up(items.into_iter()).collect()));
            }
            Task::Reduce => {
                let call = pair_up(self.gather(2)?.into_iter())
                    .next()
                    .ok_or_else(lost_values)?;
                self.done.push(Value::Reduce(Box::new(call)));
            }
        }
        Ok(())
    }

    /// Schedules an owned container's items, then `gather`.
    fn expand_owned(
        &mut self,
        gather: Task<'a>,
        items: Vec<Obj>,
        outer: usize,
    ) -> Result<(), DecodeError> {
        let level = enter(outer)?;
        self.tasks.push(gather);
        self.tasks
            .extend(items.into_iter().rev().map(|item| Task::Owned(item, level)));
        Ok(())
    }

    /// Like `Task::Owned`, but cloning; copies are charged first.
    fn borrowed(&mut self, obj: &'a Obj, outer: usize, copying: bool) -> Result<(), DecodeError> {
        if copying {
            self.charge(copy_cost(obj))?;
        }
        match obj {
            Obj::Scalar(value) => self.done.push(value.clone()),
            Obj::Tuple(items) => {
                self.expand_borrowed(Task::Tuple(items.len()), items, outer, copying)?
            }
            Obj::List(items) | Obj::Set { items, .. } => {
                self.expand_borrowed(Task::List(items.len()), items, outer, copying)?
            }
            Obj::Dict(pairs) => {
                let level = enter(outer)?;
                self.tasks.push(Task::Dict(pairs.len()));
                for (key, value) in pairs.iter().rev() {
                    self.tasks.push(Task::Borrowed(value, level, copying));
                    self.tasks.push(Task::Borrowed(key, level, copying));
                }
            }
            Obj::Reduce(call) => {
                let level = enter(outer)?;
                let (callable, args) = &**call;
                self.tasks.push(Task::Reduce);
                self.tasks.push(Task::Borrowed(args, level, copying));
                self.tasks.push(Task::Borrowed(callable, level, copying));
            }
            Obj::Ref { slot, copy } => {
                let target = &self.arena[*slot].obj;
                self.tasks
                    .push(Task::Borrowed(target, outer, copying || *copy));
            }
        }
        Ok(())
    }

    fn expand_borrowed(
        &mut self,
        gather: Task<'a>,
        items: &'a [Obj],
        outer: usize,
        copying: bool,
    ) -> Result<(), DecodeError> {
        let level = enter(outer)?;
        self.tasks.push(gather);
        self.tasks.extend(
            items
                .iter()
                .rev()
                .map(|item| Task::Borrowed(item, level, copying)),
        );
        Ok(())
    }

    fn charge(&mut self, cost: usize) -> Result<(), DecodeError> {
        self.copy_budget = self.copy_budget.checked_sub(cost).ok_or_else(|| {
            malformed("memo references (GET, DUP) copy more data than the frame size allows")
        })?;
        Ok(())
    }
}

/// What a copy of `obj` allocates besides its own slot in its parent:
/// copied text, or the slots of a container's items. Byte strings are
/// shared, not copied.
fn copy_cost(obj: &Obj) -> usize {
    let slot = std::mem::size_of::<Value>();
    match obj {
        Obj::Scalar(Value::Str(text)) => text.len(),
        Obj::Scalar(Value::Global { module, name }) => module.len() + name.len(),
        Obj::Scalar(_) | Obj::Ref { .. } => 0,
        Obj::Tuple(items) | Obj::List(items) | Obj::Set { items, .. } => slot * items.len(),
        Obj::Dict(pairs) => 2 * slot * pairs.len(),
        Obj::Reduce(_) => 2 * slot,
    }
}

/// Cannot happen (every task leaves one value), but the decoder must not
/// panic even if it did.
fn lost_values() -> DecodeError {
    malformed("internal error: the resolver lost values")
}

/// The nesting level of a container inside `outer` others.
fn enter(outer: usize) -> Result<usize, DecodeError> {
    let level = outer + 1;
    if level > MAX_NESTING {
        return Err(DecodeError::TooDeep);
    }
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from hex, ignoring whitespace.
    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn enc(value: &Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(value, &mut out);
        out.to_vec()
    }

    fn dec(data: &[u8]) -> Result<Value, DecodeError> {
        decode(&Bytes::copy_from_slice(data))
    }

    /// Decodes `data` (a whole pickle) and expects a Malformed error whose
    /// detail contains `needle`.
    fn assert_malformed(data: &[u8], needle: &str) {
        match dec(data) {
            Err(DecodeError::Malformed { codec, detail }) => {
                assert_eq!(codec, "pickle");
                assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
            }
            other => panic!("expected Malformed({needle:?}), got {other:?}"),
        }
    }

    fn int(i: i64) -> Value {
        Value::Int(i)
    }

    fn b(data: &[u8]) -> Value {
        Value::Bytes(Bytes::copy_from_slice(data))
    }

    fn s(text: &str) -> Value {
        Value::str(text)
    }

    fn tuple(items: impl Into<Vec<Value>>) -> Value {
        Value::Tuple(items.into())
    }

    fn list(items: impl Into<Vec<Value>>) -> Value {
        Value::List(items.into())
    }

    fn dict(pairs: impl Into<Vec<(Value, Value)>>) -> Value {
        Value::Dict(pairs.into())
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

    /// `depth` lists nested in one another around a None, as a value.
    fn nested_lists(depth: usize) -> Value {
        (0..depth).fold(Value::None, |inner, _| list([inner]))
    }

    const OID1: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
    const Z64: [u8; 8] = [0; 8];
    const TID: [u8; 8] = [0x04, 0x0d, 0x53, 0xda, 0xe1, 0xd4, 0xba, 0x88];

    // -- Encoding ------------------------------------------------------------

    /// Written by `pickle.Pickler(f, 3)` with `fast = True` (Python 3.11).
    #[test]
    fn encodes_like_python_fast_pickler() {
        let cases = [
            (int(0), "80034b002e"),
            (int(255), "80034bff2e"),
            (int(256), "80034d00012e"),
            (int(65535), "80034dffff2e"),
            (int(65536), "80034a000001002e"),
            (int(-1), "80034affffffff2e"),
            (int(i32::MIN.into()), "80034a000000802e"),
            (int(i32::MAX.into()), "80034affffff7f2e"),
            (int(i64::from(i32::MAX) + 1), "80038a0500000080002e"),
            (int(i64::from(i32::MIN) - 1), "80038a05ffffff7fff2e"),
            (int(i64::MIN), "80038a0800000000000000802e"),
            (int(i64::MAX), "80038a08ffffffffffffff7f2e"),
            (int(-128), "80034a80ffffff2e"),
            (int(1 << 40), "80038a060000000000012e"),
            (Value::Float(3.5), "800347400c0000000000002e"),
            (Value::Float(-0.0), "80034780000000000000002e"),
            (Value::Float(f64::INFINITY), "8003477ff00000000000002e"),
            (b(b""), "800343002e"),
            (b(b"ab"), "8003430261622e"),
            (s(""), "800358000000002e"),
            (
                s("h\u{e9}llo\u{20ac}"),
                "8003580900000068c3a96c6c6fe282ac2e",
            ),
            (tuple([]), "8003292e"),
            (tuple([int(1)]), "80034b01852e"),
            (tuple([int(1), int(2)]), "80034b014b02862e"),
            (tuple([int(1), int(2), int(3)]), "80034b014b024b03872e"),
            (
                tuple([int(1), int(2), int(3), int(4)]),
                "8003284b014b024b034b04742e",
            ),
            (list([]), "80035d2e"),
            (list([int(1)]), "80035d4b01612e"),
            (list([int(1), int(2)]), "80035d284b014b02652e"),
            (dict([]), "80037d2e"),
            (dict([(s("a"), int(1))]), "80037d5801000000614b01732e"),
            (
                dict([(s("a"), int(1)), (s("b"), int(2))]),
                "80037d285801000000614b015801000000624b02752e",
            ),
            (Value::None, "80034e2e"),
            (Value::Bool(true), "8003882e"),
            (Value::Bool(false), "8003892e"),
            (
                // ([], {'k': [(), (None,)]}, [[1]], b'xxx')
                tuple([
                    list([]),
                    dict([(s("k"), list([tuple([]), tuple([Value::None])]))]),
                    list([list([int(1)])]),
                    b(b"xxx"),
                ]),
                "8003285d7d58010000006b5d28294e8565735d5d4b0161614303787878742e",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(enc(&value), hex(expected), "encoding {value:?}");
            assert_eq!(dec(&hex(expected)), Ok(value));
        }
    }

    #[test]
    fn encode_value_writes_no_header() {
        let mut out = BytesMut::new();
        encode_value(&tuple([int(1), Value::None]), &mut out);
        assert_eq!(&out[..], &hex("4b014e86")[..]);
    }

    #[test]
    fn bytes_and_text_length_forms() {
        let short = vec![7u8; 255];
        let long = vec![7u8; 256];
        assert_eq!(enc(&b(&short))[..4], hex("800343ff")[..]);
        assert_eq!(enc(&b(&long))[..7], hex("80034200010000")[..]);
        // Protocol 3 has no SHORT_BINUNICODE: every str is BINUNICODE.
        assert_eq!(enc(&s("x"))[..7], hex("80035801000000")[..]);
        let text = "\u{e9}".repeat(200);
        assert_eq!(enc(&s(&text))[..7], hex("80035890010000")[..]);
        for value in [b(&short), b(&long), s(&text)] {
            assert_eq!(dec(&enc(&value)), Ok(value));
        }
    }

    /// Batches as CPython's C pickler writes them (checked against Python
    /// 3.11 for these sizes): a list of one item uses APPEND; other lists
    /// use MARK ... APPENDS per 1000 items; dicts likewise, plus an empty
    /// last batch when the item count is a multiple of 1000.
    #[test]
    fn list_and_dict_batches() {
        fn ints(range: std::ops::Range<i64>) -> Vec<u8> {
            let mut out = BytesMut::new();
            range.for_each(|i| encode_value(&int(i), &mut out));
            out.to_vec()
        }
        fn pairs(range: std::ops::Range<i64>) -> Vec<u8> {
            let mut out = BytesMut::new();
            range.for_each(|i| {
                encode_value(&int(i), &mut out);
                encode_value(&int(i), &mut out);
            });
            out.to_vec()
        }
        let frame =
            |body: Vec<Vec<u8>>| [vec![op::PROTO, 3], body.concat(), vec![op::STOP]].concat();
        let (mark, appends, setitems) = (vec![op::MARK], vec![op::APPENDS], vec![op::SETITEMS]);

        let cases = [
            (
                1000,
                frame(vec![
                    vec![op::EMPTY_LIST],
                    mark.clone(),
                    ints(0..1000),
                    appends.clone(),
                ]),
            ),
            (
                1001,
                frame(vec![
                    vec![op::EMPTY_LIST],
                    mark.clone(),
                    ints(0..1000),
                    appends.clone(),
                    mark.clone(),
                    ints(1000..1001),
                    appends.clone(),
                ]),
            ),
        ];
        for (n, expected) in cases {
            let value = list((0..n).map(int).collect::<Vec<_>>());
            assert_eq!(enc(&value), expected, "list of {n}");
            assert_eq!(dec(&expected), Ok(value));
        }

        let cases = [
            (
                1000,
                frame(vec![
                    vec![op::EMPTY_DICT],
                    mark.clone(),
                    pairs(0..1000),
                    setitems.clone(),
                    mark.clone(),
                    setitems.clone(),
                ]),
            ),
            (
                1001,
                frame(vec![
                    vec![op::EMPTY_DICT],
                    mark.clone(),
                    pairs(0..1000),
                    setitems.clone(),
                    mark.clone(),
                    pairs(1000..1001),
                    setitems.clone(),
                ]),
            ),
        ];
        for (n, expected) in cases {
            let value = dict((0..n).map(|i| (int(i), int(i))).collect::<Vec<_>>());
            assert_eq!(enc(&value), expected, "dict of {n}");
            assert_eq!(dec(&expected), Ok(value));
        }
    }

    #[test]
    fn round_trips_int_boundaries() {
        let boundaries = [
            0,
            1,
            255,
            256,
            65535,
            65536,
            -1,
            -128,
            -129,
            -256,
            -32768,
            -32769,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            1 << 47,
            -(1 << 47),
            i64::MIN,
            i64::MAX,
        ];
        for i in boundaries {
            assert_eq!(dec(&enc(&int(i))), Ok(int(i)), "{i}");
        }
    }

    #[test]
    fn round_trips_every_variant() {
        let value = tuple([
            Value::None,
            Value::Bool(true),
            Value::Bool(false),
            int(-5),
            Value::Float(-1.25e300),
            b(&OID1),
            s("caf\u{e9} \u{1f600}"),
            tuple([]),
            tuple([tuple([tuple([list([])])])]),
            list([dict([]), list([int(1), s("two"), b(b"3")])]),
            dict([
                (s("k"), list([tuple([int(1), int(2)])])),
                (b(b"bk"), dict([(int(7), Value::None)])),
                (tuple([int(1), int(2)]), Value::Float(0.5)),
            ]),
            global("ZODB.POSException", "_recon"),
            reduce(
                global("builtins", "set"),
                tuple([list([int(1), reduce(global("m", "f"), tuple([]))])]),
            ),
        ]);
        assert_eq!(dec(&enc(&value)), Ok(value));

        match dec(&enc(&Value::Float(f64::NAN))) {
            Ok(Value::Float(f)) => assert!(f.is_nan()),
            other => panic!("{other:?}"),
        }
    }

    // -- Section 9.5 of the protocol reference -------------------------------

    fn check_both_ways(value: Value, wire: &str) {
        assert_eq!(enc(&value), hex(wire));
        assert_eq!(dec(&hex(wire)), Ok(value));
    }

    #[test]
    fn spec_heartbeat() {
        check_both_ways(
            tuple([int(-1), int(0), s(".reply"), Value::None]),
            "80 03 28 4a ff ff ff ff 4b 00 58 06 00 00 00 2e 72 65 70 6c 79 4e 74 2e",
        );
    }

    #[test]
    fn spec_register_call() {
        check_both_ways(
            tuple([
                int(1),
                Value::Bool(false),
                s("register"),
                tuple([s("1"), Value::Bool(false)]),
            ]),
            "80 03 28 4b 01 89 58 08 00 00 00 72 65 67 69 73 74 65 72 58 01 00 00 00 31 89 86 74 2e",
        );
    }

    #[test]
    fn spec_one_way_storea() {
        check_both_ways(
            tuple([
                int(0),
                Value::Bool(true),
                s("storea"),
                tuple([b(&OID1), b(&Z64), b(b"DATA"), int(140250773104720)]),
            ]),
            "80 03 28 4b 00 88 58 06 00 00 00 73 74 6f 72 65 61 28 43 08 00 00 00 00 00 00 00 01
             43 08 00 00 00 00 00 00 00 00 43 04 44 41 54 41 8a 06 50 a8 82 ad 8e 7f 74 74 2e",
        );
    }

    #[test]
    fn spec_load_before_reply() {
        check_both_ways(
            tuple([
                tuple([b(&OID1), b(&TID)]),
                int(0),
                s(".reply"),
                tuple([b(b"DATA"), b(&TID), Value::None]),
            ]),
            "80 03 28 43 08 00 00 00 00 00 00 00 01 43 08 04 0d 53 da e1 d4 ba 88 86 4b 00 58 06 00
             00 00 2e 72 65 70 6c 79 43 04 44 41 54 41 43 08 04 0d 53 da e1 d4 ba 88 4e 87 74 2e",
        );
    }

    /// A MultipleUndoErrors error reply as ZEO's server pickles it: the
    /// nested exception is `_recon(UndoError, state)` (GLOBAL, GLOBAL, state
    /// dict, TUPLE2, REDUCE). Written by Python's fast pickler.
    #[test]
    fn multiple_undo_errors_payload() {
        let wire = hex(
            "8003284b1b4b0258060000002e7265706c7958240000005a4f44422e504f53457863657074696f6e2e4d75
             6c7469706c65556e646f4572726f72737d2858070000005f726561736f6e4308000000000000000058050000
             005f657272735d43080000000000000000635a4f44422e504f53457863657074696f6e0a5f7265636f6e0a63
             5a4f44422e504f53457863657074696f6e0a556e646f4572726f720a7d2858070000005f726561736f6e580a
             00000043616e277420756e646f58040000005f6f69644308000000000000000075865286617586742e",
        );
        let error = reduce(
            global("ZODB.POSException", "_recon"),
            tuple([
                global("ZODB.POSException", "UndoError"),
                dict([(s("_reason"), s("Can't undo")), (s("_oid"), b(&Z64))]),
            ]),
        );
        let value = tuple([
            int(27),
            int(2),
            s(".reply"),
            tuple([
                s("ZODB.POSException.MultipleUndoErrors"),
                dict([
                    (s("_reason"), b(&Z64)),
                    (s("_errs"), list([tuple([b(&Z64), error])])),
                ]),
            ]),
        ]);
        assert_eq!(dec(&wire), Ok(value.clone()));
        assert_eq!(enc(&value), wire);
    }

    #[test]
    fn byte_strings_are_zero_copy() {
        let mut data = hex("800328430800000000000000014204010000");
        data.extend([0xab; 260]);
        data.extend(hex("55024142 71 00 68 00 74 2e")); // SHORT_BINSTRING, BINPUT, BINGET
        let frame = Bytes::from(data);
        let range = frame.as_ptr_range();
        let Ok(Value::Tuple(items)) = decode(&frame) else {
            panic!("not a tuple");
        };
        assert_eq!(items.len(), 4);
        for item in &items {
            let data = item.as_bytes().expect("bytes");
            let inside = data.as_ptr_range();
            assert!(range.start <= inside.start && inside.end <= range.end);
        }
        assert_eq!(items[1].as_bytes().map(Bytes::len), Some(260));
        // The memo copy shares the original's memory.
        assert_eq!(
            items[2].as_bytes().map(|b| b.as_ptr()),
            items[3].as_bytes().map(|b| b.as_ptr())
        );
    }

    // -- Other picklers --------------------------------------------------------

    /// `pickle.dumps({'a': v, 'b': v, 'c': [v, v]}, 3)` with `v = b'xyz'`:
    /// the ordinary (non-fast) pickler memoizes everything.
    #[test]
    fn decodes_memo_references() {
        let wire = hex(
            "80037d7100285801000000617101430378797a71025801000000627103680258010000006371045d710528
             6802680265752e",
        );
        let v = b(b"xyz");
        assert_eq!(
            dec(&wire),
            Ok(dict([
                (s("a"), v.clone()),
                (s("b"), v.clone()),
                (s("c"), list([v.clone(), v])),
            ]))
        );
    }

    /// A memoized list is filled after its PUT (`l = [1]; (l, l)`), and one
    /// mutated through a GET (APPEND onto the reference): every reference
    /// sees the whole list, as in Python.
    #[test]
    fn memo_references_see_later_changes() {
        let wire = hex("80035d71004b016168008671012e");
        assert_eq!(dec(&wire), Ok(tuple([list([int(1)]), list([int(1)])])));
        let wire = hex("80035d7100 6800 4b01 61 86 2e");
        assert_eq!(dec(&wire), Ok(tuple([list([int(1)]), list([int(1)])])));
        // DUP, then APPEND onto the duplicate.
        let wire = hex("80035d 32 4b01 61 86 2e");
        assert_eq!(dec(&wire), Ok(tuple([list([int(1)]), list([int(1)])])));
        // LONG_BINPUT / LONG_BINGET, text PUT / GET.
        let wire = hex("8003 4e 72ffffff00 6affffff00 86 70310a 67310a 86 2e");
        let pair = tuple([Value::None, Value::None]);
        assert_eq!(dec(&wire), Ok(tuple([pair.clone(), pair])));
    }

    fn p4_example() -> Value {
        tuple([
            int(1),
            s("h\u{e9}llo"),
            b(b"by"),
            Value::None,
            Value::Bool(true),
            Value::Float(3.5),
            list([int(1), int(2)]),
            dict([(s("k"), s("v"))]),
            int(1 << 40),
        ])
    }

    /// `pickle.dumps(x, 4)`: FRAME, SHORT_BINUNICODE, MEMOIZE.
    #[test]
    fn decodes_protocol_4() {
        let wire = hex(
            "8004953a00000000000000284b018c0668c3a96c6c6f9443026279944e8847400c0000000000005d9428
             4b014b02657d948c016b948c017694738a0600000000000174942e",
        );
        assert_eq!(dec(&wire), Ok(p4_example()));
    }

    /// `pickle.dumps((pickle.dumps, 'x'), 4)`: STACK_GLOBAL of memoized str.
    #[test]
    fn decodes_stack_global() {
        let wire =
            hex("8004951b000000000000008c075f7069636b6c65948c0564756d70739493948c01789486942e");
        assert_eq!(dec(&wire), Ok(tuple([global("_pickle", "dumps"), s("x")])));
    }

    /// `pickle.dumps(x, 2)`: Python 3 bytes become `_codecs.encode(...)`.
    #[test]
    fn decodes_protocol_2() {
        let wire = hex(
            "8002284b01580600000068c3a96c6c6f7100635f636f646563730a656e636f64650a7101580200000062
             79710258060000006c6174696e3171038671045271054e8847400c0000000000005d7106284b014b0265
             7d710758010000006b71085801000000767109738a0600000000000174710a2e",
        );
        let Ok(Value::Tuple(mut items)) = dec(&wire) else {
            panic!("not a tuple");
        };
        let latin1 = reduce(global("_codecs", "encode"), tuple([s("by"), s("latin1")]));
        assert_eq!(std::mem::replace(&mut items[2], latin1.clone()), latin1);
        let Value::Tuple(expected) = p4_example() else {
            unreachable!()
        };
        assert_eq!(items[..2], expected[..2]);
        assert_eq!(items[3..], expected[3..]);
    }

    fn text_protocol_example() -> Value {
        tuple([
            int(1),
            Value::Bool(true),
            Value::Bool(false),
            s("h\u{e9}llo\u{20ac}\\\n"),
            Value::Float(3.5),
            int(-7),
            int(1 << 60),
            list([int(1), int(2)]),
            dict([(s("k"), s("v"))]),
            Value::None,
        ])
    }

    /// `pickle.dumps(y, 0)`: INT (with "01"/"00" booleans), UNICODE with
    /// escapes, PUT, FLOAT, LONG, LIST, DICT.
    #[test]
    fn decodes_protocol_0() {
        let wire = hex(
            "2849310a4930310a4930300a5668e96c6c6f5c75323061635c75303035635c75303030610a70300a4633
             2e350a492d370a4c313135323932313530343630363834363937364c0a286c70310a49310a6149320a61
             286470320a566b0a70330a56760a70340a734e7470350a2e",
        );
        assert_eq!(dec(&wire), Ok(text_protocol_example()));
    }

    /// `pickle.dumps(y, 1)`.
    #[test]
    fn decodes_protocol_1() {
        let wire = hex(
            "284b014930310a4930300a580b00000068c3a96c6c6fe282ac5c0a710047400c0000000000004af9ffff
             ff4c313135323932313530343630363834363937364c0a5d7101284b014b02657d710258010000006b71
             035801000000767104734e7471052e",
        );
        assert_eq!(dec(&wire), Ok(text_protocol_example()));
    }

    /// A Python 2 pickle: str as SHORT_BINSTRING, BINSTRING and STRING,
    /// booleans as INT 01/00, LONG with its "L", memo by PUT/GET text and
    /// BINPUT/BINGET. Python 3 reads it (encoding='bytes') as
    /// `(b'abc', True, False, b'defg', b'hi\n\x00', 123, 5, b'abc', b'hi\n\x00')`.
    #[test]
    fn decodes_python_2_strings() {
        let wire =
            b"\x80\x02(U\x03abcq\x00I01\nI00\nT\x04\x00\x00\x00defgS'hi\\n\\x00'\np1\nL123L\nK\x05h\x00g1\ntq\x02.";
        assert_eq!(
            dec(wire),
            Ok(tuple([
                b(b"abc"),
                Value::Bool(true),
                Value::Bool(false),
                b(b"defg"),
                b(b"hi\n\x00"),
                int(123),
                int(5),
                b(b"abc"),
                b(b"hi\n\x00"),
            ]))
        );
    }

    /// STRING escapes as Python's `codecs.escape_decode`, and quoting.
    #[test]
    fn decodes_string_escapes() {
        let wire = b"S\"\\101\\x41\\q\\n\\\\\\'\\777\\a\\b\\f\\r\\t\\v\\\"\"\n.";
        assert_eq!(dec(wire), Ok(b(b"AA\\q\n\\'\xff\x07\x08\x0c\r\t\x0b\"")));
        assert_eq!(dec(b"S''\n."), Ok(b(b"")));
        assert_eq!(dec(b"S'plain'\n."), Ok(b(b"plain")));
    }

    /// UNICODE is raw-unicode-escape: Latin-1 bytes, and \u / \U escapes
    /// only after an odd number of backslashes.
    #[test]
    fn decodes_raw_unicode_escape() {
        let cases: [(&[u8], &str); 6] = [
            (b"V\xe9t\xe9\n.", "\u{e9}t\u{e9}"),
            (b"Va\\u0041\n.", "aA"),
            (b"Va\\\\u0041\n.", "a\\\\u0041"),
            (b"V\\\\\\u0041\n.", "\\\\A"),
            (b"V\\U0001f600\\x41\\\n.", "\u{1f600}\\x41\\"),
            (b"V\n.", ""),
        ];
        for (wire, text) in cases {
            assert_eq!(dec(wire), Ok(s(text)), "{wire:?}");
        }
    }

    #[test]
    fn decodes_sets_as_lists() {
        // EMPTY_SET, MARK 1 2 ADDITEMS; MARK 3 FROZENSET
        let wire = hex("8004 8f 28 4b01 4b02 90 28 4b03 91 86 2e");
        assert_eq!(
            dec(&wire),
            Ok(tuple([list([int(1), int(2)]), list([int(3)])]))
        );
    }

    #[test]
    fn decodes_stack_operations() {
        // MARK N POP_MARK, N N POP, MARK POP (drops the mark), LIST DICT
        let wire = hex("8002 28 4e 31 4e 4e 30 28 30 28 6c 28 64 87 2e");
        assert_eq!(dec(&wire), Ok(tuple([Value::None, list([]), dict([])])));
    }

    #[test]
    fn decodes_wide_and_odd_integers() {
        let cases: [(&[u8], i64); 8] = [
            (b"\x8a\x00.", 0),
            (b"\x8a\x01\xff.", -1),
            // LONG1 longer than 8 bytes that still fits i64.
            (b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff.", -1),
            (b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\xff.", i64::MIN),
            (b"\x8b\x02\x00\x00\x00\x00\x01.", 256),
            (b"I-9223372036854775808\n.", i64::MIN),
            (b"L9223372036854775807\n.", i64::MAX),
            (b"I007\n.", 7),
        ];
        for (wire, i) in cases {
            assert_eq!(dec(wire), Ok(int(i)), "{wire:?}");
        }
        assert_eq!(dec(b"F-1e+100\n."), Ok(Value::Float(-1e100)));
        assert_eq!(dec(b"Finf\n."), Ok(Value::Float(f64::INFINITY)));
        // BINBYTES8, BINUNICODE8
        assert_eq!(dec(b"\x8e\x01\0\0\0\0\0\0\0x."), Ok(b(b"x")));
        assert_eq!(dec(b"\x8d\x01\0\0\0\0\0\0\0x."), Ok(s("x")));
    }

    // -- Nesting -------------------------------------------------------------

    /// `depth` EMPTY_LISTs, each appended to the one below, as a pickle.
    fn nested_list_pickle(depth: usize) -> Vec<u8> {
        let mut data = vec![op::PROTO, 3];
        data.extend(std::iter::repeat_n(op::EMPTY_LIST, depth));
        data.extend(std::iter::repeat_n(op::APPEND, depth - 1));
        data.push(op::STOP);
        data
    }

    /// Encoding, decoding and dropping a MAX_NESTING deep value fit in a
    /// small thread stack, even in debug builds. (The derived PartialEq,
    /// which only tests use, recurses with large frames: it runs outside.)
    #[test]
    fn max_nesting_is_accepted_and_handled_on_a_small_stack() {
        let worker = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let wire = enc(&nested_lists(MAX_NESTING));
                let decoded = dec(&wire).expect("MAX_NESTING levels are allowed");
                assert_eq!(enc(&decoded), wire);
                drop(decoded);
                assert!(dec(&nested_list_pickle(MAX_NESTING)).is_ok());
                // A deeper value (built by hand) is refused, not overflowed.
                let too_deep = enc(&nested_lists(MAX_NESTING + 1));
                assert_eq!(dec(&too_deep), Err(DecodeError::TooDeep));
                wire
            })
            .expect("spawn");
        let wire = worker.join().expect("no stack overflow");
        assert_eq!(dec(&wire), Ok(nested_lists(MAX_NESTING)));
    }

    #[test]
    fn too_deep_is_refused() {
        /// A pickle nesting `depth` containers, each built by `shape`.
        type Shape = fn(usize) -> Vec<u8>;
        fn chain(depth: usize, shape: Shape) -> Vec<u8> {
            [vec![op::PROTO, 4], shape(depth), vec![op::STOP]].concat()
        }
        let shapes: [(&str, Shape); 5] = [
            ("lists", |d| {
                [vec![op::EMPTY_LIST; d], vec![op::APPEND; d - 1]].concat()
            }),
            ("tuples", |d| [vec![op::NONE], vec![op::TUPLE1; d]].concat()),
            ("marks", |d| {
                [vec![op::MARK; d], vec![op::TUPLE; d]].concat()
            }),
            // d dicts, each but the last followed by a None key; SETITEM
            // then puts each dict into the one below as a value.
            ("dicts", |d| {
                let mut data = [op::EMPTY_DICT, op::NONE].repeat(d);
                data.pop();
                data.extend(vec![op::SETITEM; d - 1]);
                data
            }),
            ("reduces", |d| {
                [vec![op::NONE], [op::NONE, op::REDUCE].repeat(d)].concat()
            }),
        ];
        for (name, shape) in shapes {
            assert!(dec(&chain(MAX_NESTING, shape)).is_ok(), "{name}");
            let too_deep = chain(MAX_NESTING + 1, shape);
            assert_eq!(dec(&too_deep), Err(DecodeError::TooDeep), "{name}");
        }
        // Far deeper input is refused as early, without exhausting anything.
        assert_eq!(
            dec(&nested_list_pickle(1_000_000)),
            Err(DecodeError::TooDeep)
        );
    }

    #[test]
    fn deep_nesting_through_memo_references_is_refused() {
        // A list appended to itself: Python builds a cycle.
        assert_eq!(
            dec(&hex("80035d710068006185 2e")),
            Err(DecodeError::TooDeep)
        );
        // A list memoized while shallow, deepened through another reference.
        let mut data = hex("8003 5d 7100 6800");
        data.extend(std::iter::repeat_n(op::EMPTY_LIST, MAX_NESTING));
        data.extend(std::iter::repeat_n(op::APPEND, MAX_NESTING));
        data.extend(hex("86 2e")); // (l, l): l is now MAX_NESTING + 1 deep
        assert_eq!(dec(&data), Err(DecodeError::TooDeep));
    }

    #[test]
    fn memo_expansion_is_bounded() {
        // l0 = []; l(n) = [l(n-1), l(n-1)], by memo: 2^40 list nodes.
        let mut data = hex("8003 5d 7100");
        for n in 1..=40u8 {
            data.extend([op::POP, op::EMPTY_LIST, op::MARK, op::BINGET, n - 1]);
            data.extend([op::BINGET, n - 1, op::APPENDS, op::BINPUT, n]);
        }
        data.push(op::STOP);
        assert_malformed(&data, "copy more data");

        // A list holding itself and 50,000 other items: each level of the
        // endless copy is charged before its items are scheduled, so the
        // budget runs out long before MAX_NESTING levels of 50,000 items
        // are queued.
        let mut data = hex("8003 5d 7100 28 6800");
        data.extend([op::NONE].repeat(50_000));
        data.extend([op::APPENDS, op::STOP]);
        assert_malformed(&data, "copy more data");

        // The same with DUP: 2^60 tuples.
        let mut data = vec![op::NONE];
        for _ in 0..60 {
            data.extend([op::DUP, op::TUPLE2]);
        }
        data.push(op::STOP);
        assert_malformed(&data, "copy more data");
    }

    // -- Malformed input -----------------------------------------------------

    #[test]
    fn every_truncation_is_an_error() {
        let wires = [
            enc(&p4_example()),
            enc(&text_protocol_example()),
            hex(
                "8004953a00000000000000284b018c0668c3a96c6c6f9443026279944e8847400c0000000000005d94
                 284b014b02657d948c016b948c017694738a0600000000000174942e",
            ),
            b"(I1\nS'ab'\nV\\u0041\nF1.5\nL12L\ncm\nf\np0\ng0\nt.".to_vec(),
        ];
        for wire in wires {
            assert!(dec(&wire).is_ok());
            for len in 0..wire.len() {
                assert!(dec(&wire[..len]).is_err(), "{:?}", &wire[..len]);
            }
        }
        assert_eq!(dec(b""), Err(DecodeError::Truncated));
        assert_eq!(dec(&hex("8003 43 08 0000")), Err(DecodeError::Truncated));
        assert_eq!(dec(&hex("8003 4a ffff")), Err(DecodeError::Truncated));
        assert_eq!(
            dec(&hex("8003 58 ffffffff 41")),
            Err(DecodeError::Truncated)
        );
        assert_eq!(dec(&hex("8003 8a 05 0102")), Err(DecodeError::Truncated));
        assert_eq!(dec(b"I12"), Err(DecodeError::Truncated));
        assert_eq!(dec(b"cmodule\nname"), Err(DecodeError::Truncated));
        assert_eq!(dec(&hex("8004 95 0100")), Err(DecodeError::Truncated));
    }

    #[test]
    fn huge_declared_lengths_are_not_allocated() {
        for wire in [
            hex("8004 8e ffffffffffffff7f 00"), // BINBYTES8, 2^63 - 1 bytes
            hex("8004 8e ffffffffffffffff 00"),
            hex("8004 8d ffffffffffffff7f 00"), // BINUNICODE8
            hex("8003 42 ffffffff 00"),         // BINBYTES
            hex("8002 8b ffffff7f 00"),         // LONG4
            hex("8002 54 ffffff7f 00"),         // BINSTRING
        ] {
            assert_eq!(dec(&wire), Err(DecodeError::Truncated), "{wire:?}");
        }
    }

    #[test]
    fn no_stop_is_truncated() {
        assert_eq!(dec(&hex("8003 4e")), Err(DecodeError::Truncated));
        assert_eq!(dec(&hex("8003 28 4e 74")), Err(DecodeError::Truncated));
    }

    #[test]
    fn unsupported_opcodes() {
        let cases: [(&[u8], u8, usize); 5] = [
            (&[0x80, 3, 0xff, b'.'], 0xff, 2),
            (b"N}b.", b'b', 2),              // BUILD
            (b"P1\n.", b'P', 0),             // PERSID
            (b"\x80\x02\x82\x01.", 0x82, 2), // EXT1
            (b"\x80\x05\x97.", 0x97, 2),     // NEXT_BUFFER
        ];
        for (wire, code, offset) in cases {
            assert_eq!(
                dec(wire),
                Err(DecodeError::UnsupportedCode {
                    codec: "pickle",
                    code,
                    offset
                })
            );
        }
    }

    #[test]
    fn stack_underflow() {
        assert_malformed(&hex("8003 61 2e"), "stack underflow at APPEND (offset 2)");
        assert_malformed(&hex("8003 4e 86 2e"), "stack underflow at TUPLE2");
        assert_malformed(&hex("8003 30 2e"), "stack underflow at POP");
        assert_malformed(&hex("8003 32 2e"), "stack underflow at DUP");
        assert_malformed(&hex("8003 4e 52 2e"), "stack underflow at REDUCE");
        assert_malformed(&hex("8003 4e 73 2e"), "stack underflow at SETITEM");
        assert_malformed(&hex("8003 71 00 2e"), "stack underflow at BINPUT");
        assert_malformed(&hex("8004 94 2e"), "stack underflow at MEMOIZE");
        assert_malformed(
            &hex("8004 8c 01 41 93 2e"),
            "stack underflow at STACK_GLOBAL",
        );
        // Values below an open MARK are out of reach.
        assert_malformed(&hex("8003 5d 28 4b01 61 2e"), "stack underflow at APPEND");
        assert_malformed(&hex("8003 5d 28 28 65 2e"), "stack underflow at APPENDS");
        assert_malformed(&hex("8003 4e 28 85 2e"), "stack underflow at TUPLE1");
    }

    #[test]
    fn missing_mark() {
        assert_malformed(&hex("8003 4e 74 2e"), "TUPLE at offset 3 without a MARK");
        assert_malformed(
            &hex("8003 5d 4e 65 2e"),
            "APPENDS at offset 4 without a MARK",
        );
        assert_malformed(
            &hex("8003 7d 4e 4e 75 2e"),
            "SETITEMS at offset 5 without a MARK",
        );
        assert_malformed(&hex("8003 6c 2e"), "LIST at offset 2 without a MARK");
        assert_malformed(&hex("8003 64 2e"), "DICT at offset 2 without a MARK");
        assert_malformed(&hex("8003 31 2e"), "POP_MARK at offset 2 without a MARK");
        assert_malformed(&hex("8004 91 2e"), "FROZENSET at offset 2 without a MARK");
        assert_malformed(&hex("8004 8f 90 2e"), "ADDITEMS at offset 3 without a MARK");
    }

    #[test]
    fn growing_the_wrong_container() {
        assert_malformed(&hex("8003 29 4e 61 2e"), "APPEND at offset 4 onto a tuple");
        assert_malformed(&hex("8003 7d 4e 61 2e"), "APPEND at offset 4 onto a dict");
        assert_malformed(
            &hex("8003 4e 28 4e 65 2e"),
            "APPENDS at offset 5 onto a None",
        );
        assert_malformed(
            &hex("8003 5d 4e 4e 73 2e"),
            "SETITEM at offset 5 onto a list",
        );
        assert_malformed(
            &hex("8003 29 28 4e 4e 75 2e"),
            "SETITEMS at offset 6 onto a tuple",
        );
        assert_malformed(
            &hex("8004 5d 28 4e 90 2e"),
            "ADDITEMS at offset 5 onto a list",
        );
        assert_malformed(
            &hex("8004 28 91 28 4e 90 2e"),
            "ADDITEMS at offset 6 onto a frozenset",
        );
        assert_malformed(&hex("8004 8f 4e 61 2e"), "APPEND at offset 4 onto a set");
        // Through a memo reference too.
        assert_malformed(
            &hex("8003 29 7100 30 6800 4e 61 2e"),
            "APPEND at offset 9 onto a tuple",
        );
    }

    #[test]
    fn odd_dict_items() {
        assert_malformed(
            &hex("8003 7d 28 4e 75 2e"),
            "odd number of items for SETITEMS at offset 5",
        );
        assert_malformed(
            &hex("8003 28 4e 4e 4e 64 2e"),
            "odd number of items for DICT at offset 6",
        );
    }

    #[test]
    fn get_of_an_unknown_memo_key() {
        assert_malformed(&hex("8003 6801 2e"), "BINGET at offset 2 of memo key 1");
        assert_malformed(
            &hex("8003 6a01000100 2e"),
            "LONG_BINGET at offset 2 of memo key 65537",
        );
        assert_malformed(b"g7\n.", "GET at offset 0 of memo key 7");
        assert_malformed(b"Np-1\n.", "bad memo key for PUT at offset 1");
        assert_malformed(b"g\n.", "bad memo key for GET at offset 0");
    }

    #[test]
    fn invalid_utf8() {
        let cases: [&[u8]; 5] = [
            b"\x80\x03X\x02\x00\x00\x00\xc3\x28.",
            b"\x80\x04\x8c\x01\xff.",
            b"\x80\x03N\x8d\x01\x00\x00\x00\x00\x00\x00\x00\xff.",
            b"\x80\x03c\xffmodule\nname\n.",
            b"\x80\x03V\\ud800\n.", // a lone surrogate
        ];
        let offsets = [2, 2, 3, 2, 2];
        for (wire, offset) in cases.into_iter().zip(offsets) {
            assert_eq!(
                dec(wire),
                Err(DecodeError::InvalidUtf8 { offset }),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            dec(&hex("8003 4e 2e 0000")),
            Err(DecodeError::TrailingBytes(2))
        );
        assert_eq!(
            dec(&hex("8003 4e 2e 2e")),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn wrong_stack_at_stop() {
        assert_malformed(&hex("8003 2e"), "STOP with an empty stack");
        assert_malformed(&hex("8003 4e 4e 2e"), "STOP with 2 values on the stack");
        assert_malformed(&hex("8003 28 4e 2e"), "STOP inside an unclosed MARK");
        assert_malformed(&hex("8003 4e 28 2e"), "STOP inside an unclosed MARK");
    }

    #[test]
    fn integer_out_of_range() {
        let cases: [&[u8]; 6] = [
            b"\x80\x03\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", // 2^64
            b"\x80\x03\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.", // 2^63
            b"\x80\x03\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\xff.", // -2^63 - 1
            b"\x80\x03\x8b\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
            b"\x80\x03L1180591620717411303424L\n.", // 2^70
            b"\x80\x03I-9223372036854775809\n.",
        ];
        for wire in cases {
            assert_eq!(
                dec(wire),
                Err(DecodeError::IntegerOutOfRange { offset: 2 }),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn bad_lengths_and_literals() {
        assert_malformed(
            &hex("8002 54 ffffffff 2e"),
            "BINSTRING at offset 2 has a negative length",
        );
        assert_malformed(
            &hex("8002 8b feffffff 2e"),
            "LONG4 at offset 2 has a negative length",
        );
        assert_malformed(&hex("8006 4e 2e"), "unsupported pickle protocol 6");
        assert_malformed(b"I12x\n.", "bad integer literal at offset 0");
        assert_malformed(b"I\n.", "bad integer literal");
        assert_malformed(b"L\n.", "bad integer literal");
        assert_malformed(b"Fx\n.", "bad FLOAT literal at offset 0");
        assert_malformed(b"S'abc\n.", "missing quotes in STRING");
        assert_malformed(b"Sabc\n.", "missing quotes in STRING");
        assert_malformed(b"S'\n.", "missing quotes in STRING");
        assert_malformed(b"S'a\\'\n.", "trailing backslash in STRING");
        assert_malformed(b"S'\\x4'\n.", "bad \\x escape in STRING");
        assert_malformed(b"V\\u004\n.", "bad \\u escape in UNICODE");
        assert_malformed(b"V\\u+041\n.", "bad \\u escape in UNICODE");
        assert_malformed(b"V\\U00110000\n.", "beyond U+10FFFF");
    }

    #[test]
    fn bad_globals() {
        // STACK_GLOBAL needs two str.
        assert_malformed(
            &hex("8004 8c0141 4b01 93 2e"),
            "STACK_GLOBAL at offset 7 needs two str, got str and int",
        );
        assert_malformed(&hex("8004 4e 8c0141 93 2e"), "got None and str");
        // Names that GLOBAL could not carry.
        assert_malformed(&hex("8004 8c0141 8c02410a 93 2e"), "bad global name");
        assert_malformed(&hex("8004 8c0141 8c00 93 2e"), "bad global name");
        assert_malformed(b"c\nname\n.", "bad global name");
        assert_malformed(b"cmodule\n\n.", "bad global name");
    }

    /// Random corruptions of valid pickles never panic.
    #[test]
    fn corrupted_input_never_panics() {
        let seeds = [
            enc(&p4_example()),
            enc(&text_protocol_example()),
            hex("80035d71004b016168008671012e"),
            b"\x80\x02(U\x03abcq\x00I01\nI00\nT\x04\x00\x00\x00defgS'hi\\n\\x00'\np1\nL123L\nK\x05h\x00g1\ntq\x02."
                .to_vec(),
            hex("8004951b000000000000008c075f7069636b6c65948c0564756d70739493948c01789486942e"),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut data = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % data.len() as u64) as usize;
                match next() % 3 {
                    0 => data[at] = next() as u8,
                    1 => {
                        data.remove(at);
                    }
                    _ => data.insert(at, next() as u8),
                }
                if data.is_empty() {
                    break;
                }
            }
            let _ = dec(&data);
        }
    }
}
