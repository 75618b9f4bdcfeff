//! A minimal synchronous ZEO client speaking raw frames, for tests and
//! benchmarks that need to see or shape the wire traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use zeoraid::protocol::{Encoding, Message, MessageKind, Value};

/// The 8 zero bytes: the serial of a new object.
pub const Z64: [u8; 8] = [0; 8];

/// A minimal synchronous ZEO client speaking raw frames.
pub struct RawClient {
    pub stream: TcpStream,
    pub encoding: Encoding,
    pub next_msgid: i64,
}

impl RawClient {
    /// Connects and reads the server's handshake; sends nothing.
    pub fn connect(port: u16) -> (RawClient, Vec<u8>) {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = RawClient {
            stream,
            encoding: Encoding::Msgpack,
            next_msgid: 1,
        };
        let announced = client.read_frame().expect("handshake frame");
        (client, announced)
    }

    /// Connects, answers the handshake in `encoding` and registers.
    pub fn registered(port: u16, encoding: Encoding) -> RawClient {
        let (mut client, announced) = RawClient::connect(port);
        assert!(announced == b"M5" || announced == b"Z5", "{announced:?}");
        client.encoding = encoding;
        client.send_raw(encoding.handshake());
        let tid = client.call("register", vec![Value::str("1"), Value::Bool(false)]);
        assert!(
            matches!(tid, Ok(Value::Bytes(ref b)) if b.len() == 8),
            "{tid:?}"
        );
        client
    }

    pub fn send_raw(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).expect("write");
    }

    pub fn send(&mut self, message: &Message) {
        let mut payload = BytesMut::new();
        self.encoding.encode(message, &mut payload);
        self.send_raw(&payload);
    }

    pub fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).ok()?;
        let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut payload).ok()?;
        Some(payload)
    }

    /// Reads messages until the reply to `msgid`, skipping one-way ones.
    pub fn reply(&mut self, msgid: i64) -> Result<Value, (String, Value)> {
        loop {
            let frame = self
                .read_frame()
                .expect("connection closed while waiting for a reply");
            let message = self.encoding.decode(&Bytes::from(frame)).expect("decodes");
            if message.msgid != Value::Int(msgid) || message.kind == MessageKind::OneWay {
                continue;
            }
            return match message.kind {
                MessageKind::ErrorReply => {
                    let mut parts = message.args.into_seq().unwrap().into_iter();
                    let class = parts.next().unwrap().as_str().unwrap().to_owned();
                    Err((class, parts.next().unwrap()))
                }
                _ => Ok(message.args),
            };
        }
    }

    pub fn call(&mut self, method: &str, args: Vec<Value>) -> Result<Value, (String, Value)> {
        let msgid = self.next_msgid;
        self.next_msgid += 1;
        self.send(&Message::call(msgid, method, args));
        self.reply(msgid)
    }

    pub fn one_way(&mut self, method: &str, args: Vec<Value>) {
        self.send(&Message::one_way(method, args));
    }

    /// True once the server has closed the connection.
    pub fn is_closed_by_server(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn new_oid(&mut self) -> Value {
        let oids = self.call("new_oids", vec![]).expect("new_oids");
        oids.as_seq().unwrap()[0].clone()
    }

    /// Begins a transaction storing `data` under a new oid and votes.
    pub fn begin_and_vote(&mut self, txn: i64, data: &[u8]) -> Value {
        let oid = self.new_oid();
        self.one_way(
            "tpc_begin",
            vec![
                Value::Int(txn),
                Value::bytes(&b"robustness"[..]),
                Value::bytes(&b""[..]),
                Value::Dict(vec![]),
                Value::None,
                Value::str(" "),
            ],
        );
        self.one_way(
            "storea",
            vec![
                oid.clone(),
                Value::bytes(&Z64[..]),
                Value::bytes(data.to_vec()),
                Value::Int(txn),
            ],
        );
        self.call("vote", vec![Value::Int(txn)]).expect("vote");
        oid
    }

    /// Commits one new object; returns (oid, tid).
    pub fn commit(&mut self, txn: i64, data: &[u8]) -> (Value, Value) {
        let oid = self.begin_and_vote(txn, data);
        let tid = self
            .call("tpc_finish", vec![Value::Int(txn)])
            .expect("tpc_finish");
        (oid, tid)
    }

    pub fn load(&mut self, oid: &Value) -> Value {
        let maxtid = Value::bytes(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
        self.call("loadBefore", vec![oid.clone(), maxtid])
            .expect("loadBefore")
    }
}
