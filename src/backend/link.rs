//! One live connection to a backend: handshake, register, the reader and
//! writer tasks, pending calls and their deadlines, the liveness ping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{BackendObserver, BackendSettings, CallError, ReplyHandler};
use crate::protocol::framing::{frame_reader, FrameReader, FrameWriter};
use crate::protocol::{Encoding, Message, MessageKind, Tid, Value, ZeoError};

/// Messages queued for the writer task. Bounded, so a backend that stops
/// reading pushes back on the callers instead of growing memory.
const SEND_QUEUE: usize = 1024;

/// How often expired calls are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

pub(super) struct Link {
    backend: String,
    encoding: Encoding,
    outgoing: mpsc::Sender<Message>,
    pending: Mutex<HashMap<i64, Pending>>,
    next_msgid: AtomicI64,
    closed: CancellationToken,
    /// Why the link closed; the first reason wins.
    close_reason: Mutex<Option<String>>,
    /// When the last frame came in.
    last_frame: Mutex<Instant>,
}

struct Pending {
    method: String,
    deadline: Instant,
    timeout: Duration,
    handler: ReplyHandler,
}

/// Calls that wait, without failing, while the backend keeps sending: a
/// ZEO server streaming a blob answers nothing else until the blob's end,
/// so a ping sent meanwhile (or the `sendBlob` itself) only times out once
/// the connection has been silent for the call's timeout.
fn waits_while_data_flows(method: &str) -> bool {
    matches!(method, "ping" | "sendBlob")
}

/// Connects, handshakes and registers, all within the connect timeout.
pub(super) async fn connect(
    settings: &BackendSettings,
    observer: Arc<dyn BackendObserver>,
) -> Result<(Arc<Link>, Tid), String> {
    let timeout = settings.connect_timeout;
    let (link, register) = tokio::time::timeout(timeout, open(settings, observer))
        .await
        .map_err(|_| format!("connect/handshake timed out after {timeout:?}"))??;
    let reply = link
        .call_and_wait(
            "register",
            vec![Value::str(settings.storage.as_str()), Value::Bool(false)],
            register,
        )
        .await;
    match reply {
        Ok(value) => match Tid::from_value(&value) {
            Some(tid) => Ok((link, tid)),
            None => {
                let reason = format!("register returned {} instead of a tid", value.summary());
                link.close(&reason);
                Err(reason)
            }
        },
        Err(error) => {
            let reason = format!("register failed: {error}");
            link.close(&reason);
            Err(reason)
        }
    }
}

/// TCP connect and handshake; returns the running link and the time left
/// for `register`.
async fn open(
    settings: &BackendSettings,
    observer: Arc<dyn BackendObserver>,
) -> Result<(Arc<Link>, Duration), String> {
    let started = Instant::now();
    let stream = TcpStream::connect(&settings.address)
        .await
        .map_err(|e| format!("connect to {}: {e}", settings.address))?;
    // Without TCP_NODELAY the small one-way messages of a commit wait for
    // delayed ACKs: a 15 ms commit becomes 90 ms.
    stream
        .set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let (read_half, write_half) = stream.into_split();
    let mut reader = frame_reader(read_half, settings.max_frame_size);
    let announced = reader
        .next()
        .await
        .ok_or("connection closed before the handshake")?
        .map_err(|e| format!("reading the handshake: {e}"))?;
    let encoding = match &announced[..] {
        [letter, b'5'] => Encoding::from_letter(*letter),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "server announced protocol {:?}; zeoraid speaks ZEO protocol 5 (M5 or Z5)",
            String::from_utf8_lossy(&announced)
        )
    })?;
    let mut writer = FrameWriter::new(write_half, settings.max_frame_size);
    writer.push_raw(encoding.handshake());
    writer
        .flush(settings.connect_timeout)
        .await
        .map_err(|e| format!("sending the handshake: {e}"))?;

    let (outgoing, queue) = mpsc::channel(SEND_QUEUE);
    let link = Arc::new(Link {
        backend: settings.name.clone(),
        encoding,
        outgoing,
        pending: Mutex::new(HashMap::new()),
        next_msgid: AtomicI64::new(1),
        closed: CancellationToken::new(),
        close_reason: Mutex::new(None),
        last_frame: Mutex::new(Instant::now()),
    });
    tokio::spawn(write_loop(
        link.clone(),
        writer,
        queue,
        settings.call_timeout,
    ));
    tokio::spawn(read_loop(link.clone(), reader, observer, settings.clone()));
    let left = settings.connect_timeout.saturating_sub(started.elapsed());
    Ok((link, left.max(Duration::from_millis(1))))
}

impl Link {
    pub(super) fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the link; pending calls fail with `reason`.
    pub(super) fn close(&self, reason: &str) {
        self.close_reason
            .lock()
            .get_or_insert_with(|| reason.to_owned());
        self.closed.cancel();
        self.fail_all_pending();
    }

    /// Waits until the link is closed and returns why.
    pub(super) async fn closed(&self) -> String {
        self.closed.cancelled().await;
        self.reason()
    }

    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned())
    }

    fn disconnected(&self) -> CallError {
        CallError::Disconnected {
            backend: self.backend.clone(),
            reason: self.reason(),
        }
    }

    fn fail_all_pending(&self) {
        let drained: Vec<Pending> = self.pending.lock().drain().map(|(_, p)| p).collect();
        for pending in drained {
            (pending.handler)(Err(self.disconnected()));
        }
    }

    pub(super) async fn call(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
        handler: ReplyHandler,
    ) {
        let msgid = self.next_msgid.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(
            msgid,
            Pending {
                method: method.to_owned(),
                deadline: Instant::now() + timeout,
                timeout,
                handler,
            },
        );
        // A close that ran before the insert did not see this entry.
        if self.is_closed() {
            self.fail(msgid);
            return;
        }
        if self
            .outgoing
            .send(Message::call(msgid, method, args))
            .await
            .is_err()
        {
            self.fail(msgid);
        }
    }

    /// Fails one pending call, if it is still pending.
    fn fail(&self, msgid: i64) {
        let pending = self.pending.lock().remove(&msgid);
        if let Some(pending) = pending {
            (pending.handler)(Err(self.disconnected()));
        }
    }

    async fn call_and_wait(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let handler: ReplyHandler = Box::new(move |result| {
            let _ = sender.send(result);
        });
        self.call(method, args, timeout, handler).await;
        receiver.await.unwrap_or_else(|_| Err(self.disconnected()))
    }

    pub(super) async fn one_way(&self, method: &str, args: Vec<Value>) -> Result<(), CallError> {
        if self.is_closed() {
            return Err(self.disconnected());
        }
        self.outgoing
            .send(Message::one_way(method, args))
            .await
            .map_err(|_| self.disconnected())
    }

    /// Delivers a reply to its pending call.
    fn complete(&self, message: Message) {
        let Some(msgid) = message.msgid.as_int() else {
            debug!(backend = %self.backend, msgid = %message.msgid.summary(), "reply with a foreign msgid ignored");
            return;
        };
        let pending = self.pending.lock().remove(&msgid);
        match pending {
            Some(pending) => {
                let result = match message.kind {
                    MessageKind::ErrorReply => {
                        Err(CallError::Remote(ZeoError::from_reply_value(message.args)))
                    }
                    _ => Ok(message.args),
                };
                (pending.handler)(result);
            }
            // A reply to a call that already timed out.
            None => debug!(backend = %self.backend, msgid, "late reply ignored"),
        }
    }

    /// Fails every call whose deadline has passed.
    fn expire(&self, now: Instant) {
        let last_frame = *self.last_frame.lock();
        let expired: Vec<Pending> = {
            let mut pending = self.pending.lock();
            let ids: Vec<i64> = pending
                .iter()
                .filter(|(_, p)| {
                    p.deadline <= now
                        && !(waits_while_data_flows(&p.method) && last_frame + p.timeout > now)
                })
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for pending in expired {
            (pending.handler)(Err(CallError::Timeout {
                backend: self.backend.clone(),
                method: pending.method,
                after: pending.timeout,
            }));
        }
    }
}

async fn write_loop(
    link: Arc<Link>,
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut queue: mpsc::Receiver<Message>,
    write_timeout: Duration,
) {
    loop {
        let message = tokio::select! {
            message = queue.recv() => message,
            _ = link.closed.cancelled() => None,
        };
        let Some(message) = message else { break };
        let mut result = writer.push(link.encoding, &message);
        // Batch whatever else is already queued into the same write.
        while result.is_ok() && !writer.wants_flush() {
            match queue.try_recv() {
                Ok(message) => result = writer.push(link.encoding, &message),
                Err(_) => break,
            }
        }
        if let Err(error) = result {
            link.close(&format!("cannot send to backend: {error}"));
            break;
        }
        if let Err(error) = writer.flush(write_timeout).await {
            link.close(&format!("write failed: {error}"));
            break;
        }
    }
    writer.shutdown().await;
}

async fn read_loop(
    link: Arc<Link>,
    mut reader: FrameReader<OwnedReadHalf>,
    observer: Arc<dyn BackendObserver>,
    settings: BackendSettings,
) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + settings.heartbeat_interval,
        settings.heartbeat_interval,
    );
    loop {
        tokio::select! {
            frame = reader.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => {
                        *link.last_frame.lock() = Instant::now();
                        frame.freeze()
                    }
                    Some(Err(error)) => {
                        link.close(&format!("read failed: {error}"));
                        break;
                    }
                    None => {
                        link.close("backend closed the connection");
                        break;
                    }
                };
                let message = match link.encoding.decode(&frame) {
                    Ok(message) => message,
                    Err(error) => {
                        link.close(&format!("undecodable frame from backend: {error}"));
                        break;
                    }
                };
                match message.kind {
                    MessageKind::Reply | MessageKind::ErrorReply if message.is_heartbeat() => {}
                    MessageKind::Reply | MessageKind::ErrorReply => link.complete(message),
                    MessageKind::OneWay => observer.one_way(&settings.name, message),
                    MessageKind::Call => {
                        debug!(backend = %settings.name, method = %message.name, "backend sent a call; ignored");
                    }
                }
            }
            now = sweep.tick() => link.expire(now),
            _ = heartbeat.tick() => {
                // A ping that gets no reply in time means the backend hangs:
                // drop the connection so its calls fail instead of waiting.
                let pinger = link.clone();
                let handler: ReplyHandler = Box::new(move |result| {
                    if let Err(CallError::Timeout { after, .. }) = result {
                        pinger.close(&format!("no answer to ping within {after:?}"));
                    }
                });
                let link = link.clone();
                let timeout = settings.call_timeout;
                tokio::spawn(async move { link.call("ping", vec![], timeout, handler).await });
            }
            _ = link.closed.cancelled() => break,
        }
    }
}
