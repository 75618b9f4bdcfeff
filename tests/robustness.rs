//! Bad input and vanishing clients against a zeoraid in front of a real
//! ZEO server: each attack closes the attacker's connection only; the
//! process keeps running and an already connected client keeps working.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use zeoraid::protocol::{Encoding, Message, MessageKind, Value};

use support::raw_client::{RawClient, Z64};
use support::{ZeoServer, ZeoraidProcess};

struct Rig {
    _backend: ZeoServer,
    zeoraid: ZeoraidProcess,
    /// A client connected before the attacks, that must keep working.
    bystander: RawClient,
    bystander_oid: Value,
}

impl Rig {
    fn start() -> Rig {
        let backend = ZeoServer::start(false);
        let zeoraid =
            ZeoraidProcess::start(env!("CARGO_BIN_EXE_zeoraid"), &backend, "msgpack", &[]);
        let mut bystander = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
        let (bystander_oid, _) = bystander.commit(1, b"bystander");
        Rig {
            _backend: backend,
            zeoraid,
            bystander,
            bystander_oid,
        }
    }

    fn port(&self) -> u16 {
        self.zeoraid.port()
    }

    /// The server is alive, the bystander still works and new clients are
    /// served.
    fn assert_unaffected(&mut self) {
        assert!(
            self.zeoraid.is_running(),
            "zeoraid died:\n{}",
            self.zeoraid.log()
        );
        assert_eq!(self.bystander.call("ping", vec![]), Ok(Value::None));
        let loaded = self.bystander.load(&self.bystander_oid.clone());
        assert_eq!(loaded.as_seq().unwrap()[0], Value::bytes(&b"bystander"[..]));
        let mut newcomer = RawClient::registered(self.port(), Encoding::Pickle);
        assert_eq!(newcomer.call("ping", vec![]), Ok(Value::None));
    }
}

#[test]
fn ruok_probe_answers_json_and_closes() {
    let mut rig = Rig::start();
    let (mut probe, announced) = RawClient::connect(rig.port());
    assert_eq!(announced, b"M5");
    probe.send_raw(b"ruok");
    let answer = probe.read_frame().expect("ruok answer");
    let json: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
    let status = &json["1"];
    assert!(status["connections"].as_i64().unwrap() >= 1, "{json}");
    assert_eq!(
        status["last-transaction"].as_str().unwrap().len(),
        16,
        "{json}"
    );
    assert!(probe.is_closed_by_server());
    rig.assert_unaffected();
}

#[test]
fn garbage_is_refused_per_connection() {
    let mut rig = Rig::start();
    // Garbage instead of a handshake.
    let (mut client, _) = RawClient::connect(rig.port());
    client
        .stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(client.is_closed_by_server());
    // A wrong protocol version.
    let (mut client, _) = RawClient::connect(rig.port());
    client.send_raw(b"Z4");
    assert!(client.is_closed_by_server());
    // Undecodable frames after a good handshake, in both encodings.
    for (encoding, garbage) in [
        (Encoding::Msgpack, &b"\xc1\xc1\xc1"[..]),
        (Encoding::Pickle, &b"\x80\x03(\xff\xfe"[..]),
        (Encoding::Msgpack, &b"\x94\x01"[..]),
    ] {
        let mut client = RawClient::registered(rig.port(), encoding);
        client.send_raw(garbage);
        assert!(client.is_closed_by_server());
    }
    rig.assert_unaffected();
}

#[test]
fn huge_length_prefix_closes_only_that_connection() {
    let mut rig = Rig::start();
    let mut client = RawClient::registered(rig.port(), Encoding::Msgpack);
    client
        .stream
        .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .unwrap();
    assert!(client.is_closed_by_server());
    let (mut client, _) = RawClient::connect(rig.port());
    client.stream.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(client.is_closed_by_server());
    rig.assert_unaffected();
}

#[test]
fn protocol_misuse_gets_errors_or_closes_that_client() {
    let mut rig = Rig::start();
    // get_info names zeoraid's storage and its extension methods.
    let mut client = RawClient::registered(rig.port(), Encoding::Msgpack);
    let info = client.call("get_info", vec![]).unwrap();
    assert_eq!(info.dict_get("name"), Some(&Value::str("zeoraid:1")));
    let methods = info.dict_get("extensionMethods").unwrap();
    assert!(methods.dict_get("raid_status").is_some(), "{methods:?}");
    // Unknown methods: an error reply, and the connection stays usable.
    let error = client.call("no_such_method", vec![]).unwrap_err();
    assert_eq!(error.0, "builtins.AttributeError");
    assert_eq!(client.call("ping", vec![]), Ok(Value::None));
    // Bad arguments to a call: an error reply naming the problem.
    let error = client
        .call("loadBefore", vec![Value::bytes(&b"abc"[..])])
        .unwrap_err();
    assert_eq!(error.0, "builtins.TypeError");
    let error = client
        .call("getInvalidations", vec![Value::None])
        .unwrap_err();
    assert_eq!(error.0, "builtins.TypeError");
    // A call before register: closed, as ZEO does.
    let (mut early, _) = RawClient::connect(rig.port());
    early.send_raw(b"M5");
    early.send(&Message::call(1, "get_info", vec![]));
    assert!(early.is_closed_by_server());
    // A bad one-way message must never reach the shared backend
    // connection (the backend would drop it): only this client is closed.
    let mut bad = RawClient::registered(rig.port(), Encoding::Pickle);
    bad.one_way("tpc_begin", vec![Value::Int(5)]);
    bad.one_way("storea", vec![Value::bytes(&b"short"[..]), Value::Int(5)]);
    assert!(bad.is_closed_by_server());
    // Values the backend judges are passed on, and its verdict comes back
    // as a real error reply: a stale serial is a ConflictError at vote.
    let mut odd = RawClient::registered(rig.port(), Encoding::Msgpack);
    odd.one_way("tpc_begin", vec![Value::Int(9)]);
    let stale = vec![
        rig.bystander_oid.clone(),
        Value::bytes(&Z64[..]),
        Value::bytes(&b"x"[..]),
        Value::Int(9),
    ];
    odd.one_way("storea", stale);
    let (class, payload) = odd.call("vote", vec![Value::Int(9)]).unwrap_err();
    assert_eq!(class, "ZODB.POSException.ConflictError");
    assert_eq!(payload.dict_get("oid"), Some(&rig.bystander_oid));
    assert_eq!(odd.call("tpc_abort", vec![Value::Int(9)]), Ok(Value::None));
    assert_eq!(odd.call("ping", vec![]), Ok(Value::None));
    let mut bad = RawClient::registered(rig.port(), Encoding::Pickle);
    bad.one_way(
        "tpc_begin",
        vec![
            Value::Int(6),
            Value::bytes(&b""[..]),
            Value::bytes(&b""[..]),
            Value::Dict(vec![(
                Value::str("x"),
                Value::Reduce(Box::new((
                    Value::Global {
                        module: "os".into(),
                        name: "system".into(),
                    },
                    Value::Tuple(vec![]),
                ))),
            )]),
            Value::None,
            Value::str(" "),
        ],
    );
    assert!(bad.is_closed_by_server());
    rig.assert_unaffected();
}

#[test]
fn client_vanishing_mid_transaction_releases_the_commit_lock() {
    let mut rig = Rig::start();
    // Vanish after vote, holding the commit lock.
    let mut voter = RawClient::registered(rig.port(), Encoding::Msgpack);
    voter.begin_and_vote(77, b"never committed");
    drop(voter);
    // Vanish before vote.
    let mut beginner = RawClient::registered(rig.port(), Encoding::Pickle);
    beginner.one_way(
        "tpc_begin",
        vec![
            Value::Int(78),
            Value::bytes(&b""[..]),
            Value::bytes(&b""[..]),
            Value::Dict(vec![]),
            Value::None,
            Value::str(" "),
        ],
    );
    drop(beginner);
    // The next commit gets the lock promptly.
    let started = Instant::now();
    let (oid, tid) = rig.bystander.commit(2, b"after the vanished clients");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "commit waited {:?}",
        started.elapsed()
    );
    let loaded = rig.bystander.load(&oid);
    assert_eq!(loaded.as_seq().unwrap()[1], tid);
    rig.assert_unaffected();
}

#[test]
fn commit_lock_holder_that_hangs_is_timed_out() {
    let backend = ZeoServer::start(true);
    let zeoraid = ZeoraidProcess::start(
        env!("CARGO_BIN_EXE_zeoraid"),
        &backend,
        "msgpack",
        &["[timeouts]", "transaction = 1"],
    );
    let mut holder = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    holder.begin_and_vote(1, b"held too long");
    let mut other = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let started = Instant::now();
    other.commit(2, b"waits for the timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(holder.is_closed_by_server());
}

/// Pings and returns the one-way messages that arrived before the reply.
fn one_ways_before_ping(client: &mut RawClient) -> Vec<Message> {
    let msgid = client.next_msgid;
    client.next_msgid += 1;
    client.send(&Message::call(msgid, "ping", vec![]));
    let mut one_ways = Vec::new();
    loop {
        let frame = client.read_frame().expect("reply");
        let message = client.encoding.decode(&Bytes::from(frame)).unwrap();
        if message.kind == MessageKind::OneWay {
            one_ways.push(message);
        } else if message.msgid == Value::Int(msgid) {
            return one_ways;
        }
    }
}

/// The args of the invalidations that arrived before a ping's reply.
fn invalidations_before_ping(client: &mut RawClient) -> Vec<Value> {
    one_ways_before_ping(client)
        .into_iter()
        .filter(|message| message.name == "invalidateTransaction")
        .map(|message| message.args)
        .collect()
}

#[test]
fn invalidations_reach_every_other_client_once() {
    let mut rig = Rig::start();
    let mut observer = RawClient::registered(rig.port(), Encoding::Pickle);
    one_ways_before_ping(&mut rig.bystander);
    let (oid, tid) = rig.bystander.commit(3, b"watched");
    // The committer gets `info`, not its own invalidation.
    assert!(invalidations_before_ping(&mut rig.bystander).is_empty());
    // Another client gets exactly one invalidateTransaction, naming the oid.
    let invalidations = invalidations_before_ping(&mut observer);
    assert_eq!(invalidations.len(), 1, "{invalidations:?}");
    let args = invalidations[0].as_seq().unwrap();
    assert_eq!(args[0], tid);
    assert_eq!(args[1].as_seq().unwrap(), &[oid]);
    // A client reconnecting with the previous tid learns the oid too.
    let before = Value::bytes(
        (u64::from_be_bytes(tid.as_bytes().unwrap()[..].try_into().unwrap()) - 1)
            .to_be_bytes()
            .to_vec(),
    );
    let changes = observer.call("getInvalidations", vec![before]).unwrap();
    assert_eq!(changes.as_seq().unwrap()[0], tid);
}

#[test]
fn sigterm_lets_a_voted_commit_finish_then_exits() {
    let backend = ZeoServer::start(false);
    let mut zeoraid =
        ZeoraidProcess::start(env!("CARGO_BIN_EXE_zeoraid"), &backend, "msgpack", &[]);
    let mut committer = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let mut idle = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let oid = committer.begin_and_vote(1, b"finished during shutdown");
    let pid = zeoraid.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The idle client is let go; the commit holding the lock may finish.
    assert!(idle.is_closed_by_server());
    let tid = committer
        .call("tpc_finish", vec![Value::Int(1)])
        .expect("tpc_finish during shutdown");
    assert!(committer.is_closed_by_server());
    let status = zeoraid.stop(Duration::from_secs(10)).expect("exit status");
    assert!(status.success(), "{status:?}\n{}", zeoraid.log());
    // The commit is on the backend.
    let mut direct = RawClient::registered(backend.port(), Encoding::Pickle);
    let loaded = direct.load(&oid);
    assert_eq!(loaded.as_seq().unwrap()[1], tid);
}

#[test]
fn bad_configuration_stops_start_up_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:8100\"\nstate_dir = \"x\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nstorage = \"1\"\n", "storage"),
        ("[server]\nlisten = \"127.0.0.1:8100\"\nstorage = \"1\"\nstate_dir = \"x\"\n[[backend]]\nname = \"a\"\naddress = \"nowhere\"\nstorage = \"1\"\n", "backend[0].address"),
        ("[server]\nlisten = \"127.0.0.1:8100\"\nstorage = \"1\"\nstate_dir = \"x\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nstorage = \"1\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\nstorage = \"1\"\n", "duplicate backend name"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_zeoraid"))
            .args(["serve", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("bad{i}.toml")) && stderr.contains(key),
            "{stderr}"
        );
    }
}

#[test]
fn unreachable_backend_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zeoraid.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nstorage = \"1\"\nstate_dir = {:?}\n[timeouts]\nconnect = 1\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:{}\"\nstorage = \"1\"\n",
        support::free_port(),
        dir.path().join("state").display().to_string(),
        support::free_port()
    );
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_zeoraid"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no backend can be used"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn connections_over_the_limit_wait_for_a_free_slot() {
    let backend = ZeoServer::start(false);
    let zeoraid = ZeoraidProcess::start(
        env!("CARGO_BIN_EXE_zeoraid"),
        &backend,
        "msgpack",
        &["max_connections = 2"],
    );
    let first = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let _second = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    // The third connection is accepted by the kernel but not served.
    let mut third = TcpStream::connect(("127.0.0.1", zeoraid.port())).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(third.read(&mut byte).is_err(), "served beyond the limit");
    // Once a slot is free it gets its handshake.
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut handshake = [0u8; 6];
    third.read_exact(&mut handshake).unwrap();
    assert_eq!(&handshake, b"\0\0\0\x02M5");
}

#[test]
fn a_commit_made_on_a_backend_behind_zeoraids_back_degrades_it() {
    let a = ZeoServer::start(false);
    let b = ZeoServer::start(true);
    let zeoraid = ZeoraidProcess::start_with(
        env!("CARGO_BIN_EXE_zeoraid"),
        support::ZeoraidConfig::new("msgpack", &[&a, &b]),
    );
    let mut client = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let (oid, tid) = client.commit(1, b"through zeoraid");
    let mut direct = RawClient::registered(a.port(), Encoding::Pickle);
    direct.commit(1, b"behind zeoraid's back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.call("raid_status", vec![]) != Ok(Value::str("degraded")) {
        assert!(
            Instant::now() < deadline,
            "a was not degraded:\n{}",
            zeoraid.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let details = client.call("raid_details", vec![]).unwrap();
    let a_state = details
        .dict_get("a")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    assert!(
        a_state.starts_with("degraded: transaction") && a_state.contains("another client"),
        "{a_state}"
    );
    assert_eq!(details.dict_get("b"), Some(&Value::str("optimal")));
    // The RAID goes on with b; a is never read again.
    for _ in 0..4 {
        assert_eq!(client.load(&oid).as_seq().unwrap()[1], tid);
    }
    let (oid2, tid2) = client.commit(2, b"after a was degraded");
    assert_eq!(client.load(&oid2).as_seq().unwrap()[1], tid2);
}

#[test]
fn a_lone_backend_that_comes_back_changed_is_refused() {
    let mut backend = ZeoServer::start(false);
    let zeoraid = ZeoraidProcess::start(env!("CARGO_BIN_EXE_zeoraid"), &backend, "msgpack", &[]);
    let mut client = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let (oid, before) = client.commit(1, b"v1");
    drop(client);
    // Change the object in the storage file while the server is down, as
    // an unnoticed restore from an older or newer backup would.
    backend.stop();
    let script = format!(
        "import ZODB.FileStorage, ZODB.Connection\n\
         s = ZODB.FileStorage.FileStorage({:?})\n\
         t = ZODB.Connection.TransactionMetaData()\n\
         s.tpc_begin(t); s.store({:?}, {:?}, b'v2', '', t); s.tpc_vote(t); s.tpc_finish(t); s.close()\n",
        backend.data_fs().display().to_string(),
        BytesLiteral(oid.as_bytes().unwrap()),
        BytesLiteral(before.as_bytes().unwrap()),
    );
    let status = std::process::Command::new(support::python())
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    backend.restart();
    // zeoraid sees it back, but not with the last transaction it
    // committed: it stays degraded and no client is served from it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !zeoraid
        .log()
        .contains("stays degraded until it is recovered")
    {
        assert!(Instant::now() < deadline, "{}", zeoraid.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut refused, _) = RawClient::connect(zeoraid.port());
    refused.send_raw(b"M5");
    refused.send(&Message::call(
        1,
        "register",
        vec![Value::str("1"), Value::Bool(false)],
    ));
    assert!(refused.is_closed_by_server());
    // Monitoring still gets through, read-only, and learns why.
    let (mut monitor, _) = RawClient::connect(zeoraid.port());
    monitor.send_raw(b"M5");
    assert!(monitor
        .call("register", vec![Value::str("1"), Value::Bool(true)])
        .is_ok());
    assert_eq!(
        monitor.call("raid_status", vec![]),
        Ok(Value::str("failed"))
    );
    let details = monitor.call("raid_details", vec![]).unwrap();
    let a = details
        .dict_get("a")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    assert!(a.starts_with("degraded: disconnected"), "{a}");
    let (class, _) = monitor
        .call("loadBefore", vec![oid.clone(), before.clone()])
        .unwrap_err();
    assert_eq!(class, "ZODB.POSException.StorageError");
    assert!(zeoraid.is_running());
}

/// Formats bytes as a Python bytes literal.
struct BytesLiteral<'a>(&'a [u8]);

impl std::fmt::Debug for BytesLiteral<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b'")?;
        for byte in self.0 {
            write!(f, "\\x{byte:02x}")?;
        }
        write!(f, "'")
    }
}

#[test]
fn spooled_transactions_reach_every_backend_intact() {
    let a = ZeoServer::start(false);
    let b = ZeoServer::start(true);
    let mut config = support::ZeoraidConfig::new("pickle", &[&a, &b]);
    config.extra_server = vec!["spool_threshold = 4096".to_owned()];
    let zeoraid = ZeoraidProcess::start_with(env!("CARGO_BIN_EXE_zeoraid"), config);
    let mut client = RawClient::registered(zeoraid.port(), Encoding::Pickle);
    let oids = client.call("new_oids", vec![]).unwrap().as_seq().unwrap()[..20].to_vec();
    client.one_way("tpc_begin", vec![Value::Int(1)]);
    let record = |n: usize| Value::bytes(vec![n as u8; 10_000 + n]);
    for (n, oid) in oids.iter().enumerate() {
        client.one_way(
            "storea",
            vec![
                oid.clone(),
                Value::bytes(&Z64[..]),
                record(n),
                Value::Int(1),
            ],
        );
    }
    client.call("vote", vec![Value::Int(1)]).expect("vote");
    let tid = client
        .call("tpc_finish", vec![Value::Int(1)])
        .expect("tpc_finish");
    for port in [a.port(), b.port()] {
        let mut direct = RawClient::registered(port, Encoding::Msgpack);
        for (n, oid) in oids.iter().enumerate() {
            let loaded = direct.load(oid);
            assert_eq!(loaded.as_seq().unwrap()[0], record(n));
            assert_eq!(loaded.as_seq().unwrap()[1], tid);
        }
    }
    // No spool file is left in the state directory.
    let leftovers: Vec<_> = std::fs::read_dir(zeoraid.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "raid-state.json" && name != "blob-cache")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// How a fake backend misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Votes with an extra (made-up) resolved oid.
    DifferentVote,
    /// Reports another tid at tpc_finish.
    DifferentTid,
}

/// A fake ZEO server, just enough for commits and loads, that can
/// misbehave; runs on its own thread until the process ends.
fn fake_backend(fault: Fault) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve_fake(stream, fault));
        }
    });
    port
}

fn serve_fake(stream: TcpStream, fault: Fault) {
    let mut client = RawClient {
        stream,
        encoding: Encoding::Pickle,
        next_msgid: 1,
    };
    client.send_raw(b"Z5");
    if client.read_frame().is_none() {
        return;
    }
    let mut tid = Value::bytes(&Z64[..]);
    let mut next_oid = 1u64;
    while let Some(frame) = client.read_frame() {
        let Ok(message) = client.encoding.decode(&Bytes::from(frame)) else {
            return;
        };
        let args = message.args.as_seq().unwrap_or_default().to_vec();
        let answer = match message.name.as_str() {
            "register" | "lastTransaction" => tid.clone(),
            "tpc_begin" => {
                tid = args[4].clone();
                continue;
            }
            "vote" if fault == Fault::DifferentVote => {
                Value::List(vec![Value::bytes(vec![0, 0, 0, 0, 0, 0, 0, 99])])
            }
            "vote" => Value::List(vec![]),
            "tpc_finish" if fault == Fault::DifferentTid => Value::bytes(vec![1u8; 8]),
            "tpc_finish" => tid.clone(),
            "new_oids" => {
                next_oid += 100;
                Value::List(vec![Value::bytes(next_oid.to_be_bytes().to_vec())])
            }
            _ if message.kind == MessageKind::OneWay => continue,
            _ => Value::None,
        };
        client.send(&Message::reply(message.msgid, answer));
    }
}

fn state_of(client: &mut RawClient, backend: &str) -> String {
    let details = client.call("raid_details", vec![]).unwrap();
    details
        .dict_get(backend)
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

#[test]
fn backends_that_answer_differently_are_degraded() {
    let mut config = support::ZeoraidConfig::new("msgpack", &[]);
    config.backends = vec![
        ("a".into(), fake_backend(Fault::None), "1".into()),
        ("b".into(), fake_backend(Fault::None), "1".into()),
        ("c".into(), fake_backend(Fault::DifferentVote), "1".into()),
        ("d".into(), fake_backend(Fault::DifferentTid), "1".into()),
    ];
    let zeoraid = ZeoraidProcess::start_with(env!("CARGO_BIN_EXE_zeoraid"), config);
    let mut client = RawClient::registered(zeoraid.port(), Encoding::Msgpack);
    let (_, tid) = client.commit(1, b"seen differently");
    assert_eq!(tid.as_bytes().unwrap().len(), 8);
    assert_ne!(tid, Value::bytes(vec![1u8; 8]), "the odd tid must not win");
    let c = state_of(&mut client, "c");
    assert!(c.starts_with("degraded: answered vote differently"), "{c}");
    let d = state_of(&mut client, "d");
    assert!(d.starts_with("degraded: tpc_finish returned"), "{d}");
    assert_eq!(state_of(&mut client, "a"), "optimal");
    assert_eq!(state_of(&mut client, "b"), "optimal");
    assert_eq!(
        client.call("raid_status", vec![]),
        Ok(Value::str("degraded"))
    );
    // The degraded set is on disk.
    let state = std::fs::read_to_string(zeoraid.state_dir().join("raid-state.json")).unwrap();
    assert!(
        state.contains("\"c\"") && state.contains("\"d\"") && !state.contains("\"a\""),
        "{state}"
    );
}
