//! End-to-end scenarios with real ZODB clients through zeoraid, run by
//! `tests/python/scenarios.py` (see its docstring), in both front-end
//! encodings; plus checks of the rig itself (`tests/support`).

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use support::{ZeoServer, ZeoraidProcess};

fn scenario(name: &str, frontend: &str) {
    let output = support::run_python(
        "scenarios.py",
        &[
            name,
            "--frontend-encoding",
            frontend,
            "--backend-encoding",
            "pickle",
        ],
        &[("ZEORAID_BIN", env!("CARGO_BIN_EXE_zeoraid"))],
    );
    println!("{output}");
    let last = support::last_line(&output);
    assert!(
        last.starts_with(&format!("scenario {name} ")) && last.contains(": ok"),
        "unexpected output:\n{output}"
    );
}

#[test]
fn invalidation_front_msgpack() {
    scenario("invalidation", "msgpack");
}

#[test]
fn invalidation_front_pickle() {
    scenario("invalidation", "pickle");
}

#[test]
fn reconnect_front_msgpack() {
    scenario("reconnect", "msgpack");
}

#[test]
fn reconnect_front_pickle() {
    scenario("reconnect", "pickle");
}

/// The first frame a server sends: its protocol, "Z5" or "M5".
fn handshake(port: u16) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = [0u8; 6];
    stream
        .read_exact(&mut frame)
        .expect("read the handshake frame");
    assert_eq!(&frame[..4], &[0, 0, 0, 2], "handshake frame length");
    frame[4..].to_vec()
}

/// The rig's ZEO servers: both encodings, stop/restart on the same port,
/// kill -9 and restart.
#[test]
fn rig_zeo_server_lifecycle() {
    let mut pickle = ZeoServer::start(false);
    let mut msgpack = ZeoServer::start(true);
    assert_eq!(handshake(pickle.port()), b"Z5", "{}", pickle.log());
    assert_eq!(handshake(msgpack.port()), b"M5", "{}", msgpack.log());

    let port = pickle.port();
    pickle.stop();
    assert!(!support::port_accepts(port));
    pickle.restart();
    assert_eq!(pickle.port(), port);
    assert_eq!(handshake(port), b"Z5");
    assert!(pickle.data_fs().is_file());

    msgpack.kill9();
    assert!(!msgpack.is_running());
    msgpack.restart();
    assert_eq!(handshake(msgpack.port()), b"M5", "{}", msgpack.log());
}

/// zeoraid started by the rig announces the configured encoding.
#[test]
fn rig_zeoraid_announces_configured_encoding() {
    let backend = ZeoServer::start(false);
    for (encoding, expected) in [("msgpack", b"M5"), ("pickle", b"Z5")] {
        let mut zeoraid =
            ZeoraidProcess::start(env!("CARGO_BIN_EXE_zeoraid"), &backend, encoding, &[]);
        assert_eq!(
            &handshake(zeoraid.port())[..],
            expected,
            "{}",
            zeoraid.log()
        );
        assert!(zeoraid.is_running(), "{}", zeoraid.log());
        zeoraid.kill();
        assert!(!zeoraid.is_running());
    }
}
