//! The backend client against an in-process fake ZEO server that
//! misbehaves on purpose: no call may hang, a silent server is dropped by
//! the liveness ping, and the client reconnects when the server is back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use zeoraid::backend::{Backend, BackendObserver, BackendSettings, CallError};
use zeoraid::protocol::framing::frame_reader;
use zeoraid::protocol::{Encoding, Message, Tid, Value};

/// Records what the backend client reports.
#[derive(Default)]
struct Events {
    connected: AtomicUsize,
    disconnects: Mutex<Vec<String>>,
}

impl BackendObserver for Events {
    fn connected(&self, _backend: &str, _last_tid: Tid) {
        self.connected.fetch_add(1, Ordering::SeqCst);
    }
    fn disconnected(&self, _backend: &str, reason: &str) {
        self.disconnects.lock().push(reason.to_owned());
    }
    fn one_way(&self, _backend: &str, _message: Message) {}
}

/// A fake ZEO server: handshakes in pickle, answers `register` with a tid,
/// answers `ping` only if `answer_pings`, and never answers anything else.
async fn fake_server(listener: TcpListener, answer_pings: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut frames = frame_reader(read, 1 << 20);
            let send = |message: Option<Message>, raw: &[u8]| {
                let mut payload = BytesMut::new();
                match message {
                    Some(message) => Encoding::Pickle.encode(&message, &mut payload),
                    None => payload.extend_from_slice(raw),
                }
                let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&payload);
                frame
            };
            if write.write_all(&send(None, b"Z5")).await.is_err() {
                return;
            }
            let _handshake = frames.next().await;
            while let Some(Ok(frame)) = frames.next().await {
                let message = Encoding::Pickle.decode(&frame.freeze()).unwrap();
                let answer = match message.name.as_str() {
                    "register" => Some(Tid(0x0400).to_value()),
                    "ping" if answer_pings => Some(Value::None),
                    _ => None,
                };
                if let Some(value) = answer {
                    let reply = send(Some(Message::reply(message.msgid, value)), b"");
                    if write.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn settings(port: u16, heartbeat: Duration) -> BackendSettings {
    BackendSettings {
        name: "fake".into(),
        address: format!("127.0.0.1:{port}"),
        storage: "1".into(),
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_millis(300),
        heartbeat_interval: heartbeat,
        max_frame_size: 1 << 20,
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn unanswered_calls_time_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(fake_server(listener, true));
    let events = Arc::new(Events::default());
    let backend = Backend::spawn(settings(port, Duration::from_secs(60)), events.clone());
    wait_until("connected", || backend.is_connected()).await;
    let started = std::time::Instant::now();
    let result = backend
        .call("loadBefore", vec![Value::None, Value::None])
        .await;
    assert!(
        matches!(result, Err(CallError::Timeout { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Answered calls still work on the same connection.
    assert!(matches!(
        backend.call("ping", vec![]).await,
        Ok(Value::None)
    ));
    backend.shutdown();
}

#[tokio::test]
async fn silent_server_is_dropped_by_the_ping_and_reconnected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(fake_server(listener, false));
    let events = Arc::new(Events::default());
    let backend = Backend::spawn(settings(port, Duration::from_millis(200)), events.clone());
    wait_until("connected", || events.connected.load(Ordering::SeqCst) >= 1).await;
    // No ping answer within the call timeout: the link is dropped and the
    // client reconnects on its own.
    wait_until("dropped for the missing ping", || {
        events.disconnects.lock().iter().any(|r| r.contains("ping"))
    })
    .await;
    wait_until("reconnected", || {
        events.connected.load(Ordering::SeqCst) >= 2
    })
    .await;
    backend.shutdown();
}

#[tokio::test]
async fn unreachable_server_fails_calls_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let events = Arc::new(Events::default());
    let backend = Backend::spawn(settings(port, Duration::from_secs(60)), events.clone());
    wait_until("the failure is reported", || {
        !events.disconnects.lock().is_empty()
    })
    .await;
    let result = backend.call("ping", vec![]).await;
    assert!(
        matches!(result, Err(CallError::Disconnected { .. })),
        "{result:?}"
    );
    backend.shutdown();
}
