//! One client connection: handshake, register, and the dispatch of every
//! ZEO 5 server method.
//!
//! Reads are forwarded to a backend without waiting: the reply handler
//! queues the answer on the client's outgoing queue straight from the
//! backend connection's reader, so a client can pipeline loads and sees
//! replies and invalidations in the order the backend produced them.
//! Transactional messages go, in order, to the session's transaction
//! worker.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::forward::{Read, Transform};
use super::transaction::{ReplyTo, TransactionWorker, TxnCommand};
use super::{send_reply, status, validate, FrontendSettings};
use crate::backend::CallError;
use crate::protocol::framing::{frame_reader, FrameReader, FrameWriter};
use crate::protocol::{Encoding, Message, MessageKind, Outgoing, Tid, Value, ZeoError};
use crate::raid::{BlobChunks, Changes, ClientId, Raid, RecoveryOptions, BLOB_CHUNK};

/// Messages queued for one client. Replies wait for room (backpressure on
/// that client alone); broadcasts that find it full disconnect the client.
const OUTBOUND_QUEUE: usize = 1024;

/// How long a client the RAID cannot serve waits before it is refused.
const REFUSAL_PAUSE: Duration = Duration::from_secs(1);

/// The close reason of a refused client (logged quietly: the RAID's state
/// change was logged loudly already).
const REFUSED: &str = "the RAID cannot serve clients: refused";

/// Transactional messages queued for the worker.
const TXN_QUEUE: usize = 256;

/// Why a session ends early; logged once.
type Close = String;

/// Serves one accepted connection until it closes.
pub async fn run(
    stream: TcpStream,
    id: ClientId,
    core: Arc<Raid>,
    settings: Arc<FrontendSettings>,
    shutdown: CancellationToken,
) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "cannot set TCP_NODELAY");
    }
    let (read_half, write_half) = stream.into_split();
    let mut reader = frame_reader(read_half, settings.max_frame_size);
    let mut writer = FrameWriter::new(write_half, settings.max_frame_size);
    let timeout = settings.timeouts.handshake();

    writer.push_raw(settings.announce.handshake());
    if writer.flush(timeout).await.is_err() {
        return;
    }
    let first = match tokio::time::timeout(timeout, reader.next()).await {
        Ok(Some(Ok(frame))) => frame,
        Ok(Some(Err(error))) => {
            // An oversized frame is worth a warning; a reset is a client
            // that went away (ClientStorage drops surplus connections).
            if error.kind() == std::io::ErrorKind::InvalidData {
                warn!(%error, "bad handshake frame; closing");
            } else {
                debug!(%error, "connection lost during the handshake");
            }
            return;
        }
        Ok(None) => return,
        Err(_) => {
            debug!("no handshake within {timeout:?}; closing");
            return;
        }
    };
    if &first[..] == b"ruok" {
        writer.push_raw(status::ruok_json(&core).as_bytes());
        let _ = writer.flush(timeout).await;
        return;
    }
    let encoding = match &first[..] {
        [letter, b'5'] => Encoding::from_letter(*letter),
        _ => None,
    };
    let Some(encoding) = encoding else {
        warn!(handshake = %String::from_utf8_lossy(&first[..first.len().min(32)]), "bad handshake: zeoraid speaks ZEO protocol 5 (M5 or Z5); closing");
        return;
    };
    let close = CancellationToken::new();
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let writer_task = tokio::spawn(write_loop(
        writer,
        encoding,
        queue,
        close.clone(),
        settings.timeouts.call(),
    ));
    core.stats().connections.fetch_add(1, Ordering::Relaxed);
    debug!(?encoding, "client connected");

    let (holds_lock_tx, holds_lock) = watch::channel(false);
    let mut session = Session {
        id,
        management_only: false,
        encoding,
        core: core.clone(),
        settings,
        outbound,
        close: close.clone(),
        registered: false,
        read_only: false,
        label: None,
        iterators: Arc::new(Mutex::new(Iterators::default())),
        txn: None,
        holds_lock_tx: Some(holds_lock_tx),
    };
    let reason = session.serve(&mut reader, holds_lock, shutdown).await;
    match reason.as_str() {
        "client disconnected" | "session closed" | REFUSED => {
            debug!(%reason, "client connection ended")
        }
        _ => info!(%reason, "client connection closed"),
    }
    session.end().await;
    drop(session);
    // Wake the writer so it sees the close and ends; it drops whatever it
    // still held queued.
    close.cancel();
    let _ = writer_task.await;
    core.stats().connections.fetch_sub(1, Ordering::Relaxed);
}

/// Writes queued messages in batches until the session closes.
async fn write_loop(
    mut writer: FrameWriter<OwnedWriteHalf>,
    encoding: Encoding,
    mut queue: mpsc::Receiver<Outgoing>,
    close: CancellationToken,
    write_timeout: Duration,
) {
    loop {
        let message = tokio::select! {
            biased;
            message = queue.recv() => message,
            _ = close.cancelled() => None,
        };
        let Some(message) = message else { break };
        let mut result = writer.push(encoding, &message);
        while result.is_ok() && !writer.wants_flush() {
            match queue.try_recv() {
                Ok(message) => result = writer.push(encoding, &message),
                Err(_) => break,
            }
        }
        if let Err(error) = result {
            warn!(%error, "cannot send to client; closing");
            break;
        }
        if let Err(error) = writer.flush(write_timeout).await {
            debug!(%error, "write to client failed; closing");
            break;
        }
    }
    close.cancel();
    writer.shutdown().await;
}

/// Client-visible iterator ids mapped to the backend and the backend's id:
/// an iterator lives on the backend it started on, and backend ids are per
/// backend connection, shared by all clients, so clients must not see or
/// guess each other's.
#[derive(Default)]
struct Iterators {
    next_id: i64,
    to_backend: HashMap<i64, (usize, Value)>,
}

impl Iterators {
    fn add(&mut self, member: usize, backend_id: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.to_backend.insert(id, (member, backend_id));
        id
    }
}

struct Session {
    id: ClientId,
    /// Registered while the RAID could not serve clients: only status and
    /// management calls are answered.
    management_only: bool,
    /// The encoding the client chose at the handshake.
    encoding: Encoding,
    core: Arc<Raid>,
    settings: Arc<FrontendSettings>,
    outbound: mpsc::Sender<Outgoing>,
    close: CancellationToken,
    registered: bool,
    read_only: bool,
    /// Set by `set_client_label`, for the logs.
    label: Option<String>,
    iterators: Arc<Mutex<Iterators>>,
    /// The transaction worker's queue, started at register for writable
    /// sessions.
    txn: Option<mpsc::Sender<TxnCommand>>,
    holds_lock_tx: Option<watch::Sender<bool>>,
}

impl Session {
    async fn serve<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        mut holds_lock: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Close {
        let mut draining = false;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.close.cancelled() => return "session closed".into(),
                _ = shutdown.cancelled(), if !draining => {
                    // Let a commit that holds the lock finish first.
                    draining = true;
                    if !*holds_lock.borrow() {
                        return "zeoraid is shutting down".into();
                    }
                    continue;
                }
                _ = holds_lock.changed(), if draining => {
                    if !*holds_lock.borrow() {
                        return "zeoraid is shutting down (commit finished)".into();
                    }
                    continue;
                }
                frame = reader.next() => frame,
            };
            let frame = match frame {
                None => return "client disconnected".into(),
                Some(Err(error)) => return format!("unreadable frame: {error}"),
                Some(Ok(frame)) => frame.freeze(),
            };
            let message = match self.encoding.decode(&frame) {
                Ok(message) => message,
                Err(error) => return format!("undecodable frame: {error}"),
            };
            if message.is_heartbeat() {
                continue;
            }
            if let Err(reason) = self.handle(message).await {
                return reason;
            }
        }
    }

    async fn handle(&mut self, message: Message) -> Result<(), Close> {
        let Message {
            msgid,
            kind,
            name,
            args,
        } = message;
        let wanted = match kind {
            MessageKind::Call => true,
            MessageKind::OneWay => false,
            MessageKind::Reply | MessageKind::ErrorReply => {
                return Err(format!("client sent a reply ({})", msgid.summary()));
            }
        };
        let args = match args.into_seq() {
            Ok(args) => args,
            Err(other) => {
                return Err(format!(
                    "{name}: arguments are {}, not a sequence",
                    other.summary()
                ))
            }
        };
        if !self.registered && name != "register" {
            // ZEO closes such connections without a reply.
            return Err(format!("{name} called before register"));
        }
        self.dispatch(&name, args, ReplyTo { msgid, wanted }).await
    }

    /// Answers a request now. An error in a one-way message closes the
    /// connection, as ZEO does: there is no other way to report it.
    async fn respond(
        &self,
        name: &str,
        reply: ReplyTo,
        result: Result<Value, ZeoError>,
    ) -> Result<(), Close> {
        match result {
            Err(error) if !reply.wanted => Err(format!("error in one-way {name}: {error}")),
            result => {
                send_reply(&self.outbound, reply, result).await;
                Ok(())
            }
        }
    }

    async fn dispatch(
        &mut self,
        name: &str,
        args: Vec<Value>,
        reply: ReplyTo,
    ) -> Result<(), Close> {
        // Argument checks first: bad input is answered here and never
        // reaches a backend.
        let args = match check_arguments(name, args) {
            Ok(args) => args,
            Err(error) => return self.respond(name, reply, Err(error)).await,
        };
        match name {
            "register" => {
                if self.registered {
                    return Err("register called twice".into());
                }
                let read_only = args.get(1).is_some_and(Value::is_truthy);
                if !self.core.accepts_clients() {
                    if !read_only {
                        // A ZEO client retries at once: the pause keeps a
                        // refused client from reconnecting in a tight loop.
                        tokio::time::sleep(REFUSAL_PAUSE).await;
                        return Err(REFUSED.to_owned());
                    }
                    // Read-only registrations are let in for monitoring:
                    // `zeoraid status` must be able to say "failed".
                    self.management_only = true;
                }
                let result = self.register(&args);
                self.respond(name, reply, result).await
            }
            method if self.management_only && !MANAGEMENT_ONLY_METHODS.contains(&method) => {
                let error = ZeoError::storage(format!(
                    "the RAID is {}: no backend can serve {method}",
                    self.core.status().as_str()
                ));
                self.respond(name, reply, Err(error)).await
            }
            "get_info" => {
                let storage = self.core.storage_name().to_owned();
                self.forward(reply, name, args, move |info| own_info(info, &storage))
                    .await
            }
            "lastTransaction" => {
                let tid = self.core.last_tid().to_value();
                self.respond(name, reply, Ok(tid)).await
            }
            "getInvalidations" => {
                let tid = Tid::from_value(&args[0]).expect("checked");
                match self.core.changes_since(tid) {
                    Changes::Known(latest, oids) => {
                        let answer = Value::Tuple(vec![latest.to_value(), Value::List(oids)]);
                        self.respond(name, reply, Ok(answer)).await
                    }
                    // Older than zeoraid's history: the client must drop its
                    // cache, as with a ZEO server. (A backend's own queue
                    // cannot be trusted: a recovered backend's lacks oids.)
                    Changes::Unknown => self.respond(name, reply, Ok(Value::None)).await,
                }
            }
            "ping" => self.respond(name, reply, Ok(Value::None)).await,
            "set_client_label" => {
                self.label = args[0].as_str().map(str::to_owned);
                debug!(label = ?self.label, "client label set");
                self.respond(name, reply, Ok(Value::None)).await
            }
            "server_status" => {
                let status = status::server_status(&self.core);
                self.respond(name, reply, Ok(status)).await
            }
            "loadBefore" | "loadSerial" => {
                self.core.stats().loads.fetch_add(1, Ordering::Relaxed);
                self.forward(reply, name, args, |v| v).await
            }
            // A pickle ZEO server answers these with lists, a msgpack one
            // with arrays that decode as tuples: one form, whichever
            // backend answered.
            "history" | "undoLog" | "undoInfo" => {
                self.forward(reply, name, args, |v| match v {
                    Value::Tuple(items) => Value::List(items),
                    other => other,
                })
                .await
            }
            "getTid" | "record_iternext" => self.forward(reply, name, args, |v| v).await,
            "new_oids" => {
                let result = self
                    .writable()
                    .and_then(|()| self.core.new_oids(args.first().and_then(Value::as_int)));
                self.respond(name, reply, result).await
            }
            "raid_status" => {
                let status = Value::str(self.core.status().as_str());
                self.respond(name, reply, Ok(status)).await
            }
            "raid_details" => {
                let details = self
                    .core
                    .details()
                    .into_iter()
                    .map(|(name, text)| (Value::Str(name), Value::Str(text)))
                    .collect();
                self.respond(name, reply, Ok(Value::Dict(details))).await
            }
            "raid_disable" => {
                let result = match args[0].as_str() {
                    Some(backend) => {
                        info!(backend, "operator disables backend");
                        self.core.disable(backend).map(Value::Str)
                    }
                    None => Err(ZeoError::type_error(
                        "raid_disable: the backend name must be a string",
                    )),
                };
                self.respond(name, reply, result).await
            }
            "raid_recover" => {
                let result = match (args[0].as_str(), recovery_options(args.get(1))) {
                    (Some(backend), Ok(options)) => {
                        info!(backend, ?options, "operator starts a recovery");
                        self.core.recover(backend, options).map(Value::Str)
                    }
                    (None, _) => Err(ZeoError::type_error(
                        "raid_recover: the backend name must be a string",
                    )),
                    (_, Err(error)) => Err(error),
                };
                self.respond(name, reply, result).await
            }
            "raid_recovery" => {
                let progress = self
                    .core
                    .last_recovery()
                    .map_or(Value::None, |progress| progress.to_value());
                self.respond(name, reply, Ok(progress)).await
            }
            "new_oid" => {
                let error =
                    ZeoError::attribute_error("'ZEOStorage' object has no attribute 'new_oid'");
                self.respond(name, reply, Err(error)).await
            }
            "pack" => {
                let slot = match self.core.start_pack() {
                    Ok(slot) => slot,
                    Err(error) => {
                        warn!(%error, "pack refused");
                        return self.respond(name, reply, Err(error)).await;
                    }
                };
                // Packs run for minutes: the session goes on meanwhile.
                let core = self.core.clone();
                let outbound = self.outbound.clone();
                let timeout = self.settings.timeouts.pack();
                // pack(t, wait=0) is answered at once, as ZEO does.
                let wait = args.get(1).is_none_or(Value::is_truthy);
                let reply = if wait {
                    reply
                } else {
                    send_reply(&self.outbound, reply, Ok(Value::None)).await;
                    ReplyTo {
                        msgid: Value::None,
                        wanted: false,
                    }
                };
                tokio::spawn(async move {
                    let result = core.pack(args, timeout).await;
                    drop(slot);
                    if let Err(error) = &result {
                        warn!(%error, "pack failed");
                    }
                    send_reply(&outbound, reply, result).await;
                });
                Ok(())
            }
            "iterator_start" => {
                let iterators = self.iterators.clone();
                let transform: Transform = Box::new(move |member, backend_id| {
                    Value::Int(iterators.lock().add(member, backend_id))
                });
                self.forward_with(reply, name, args, self.settings.timeouts.call(), transform)
                    .await
            }
            "iterator_next" | "iterator_record_next" | "iterator_record_start" => {
                self.iterator_call(name, args, reply).await
            }
            "iterator_gc" => {
                self.iterator_gc(&args[0]).await;
                self.respond(name, reply, Ok(Value::None)).await
            }
            "tpc_begin"
            | "storea"
            | "deleteObject"
            | "checkCurrentSerialInTransaction"
            | "restorea"
            | "undoa"
            | "storeBlobStart"
            | "storeBlobChunk"
            | "storeBlobEnd"
            | "storeBlobShared"
            | "vote"
            | "tpc_finish"
            | "tpc_abort" => {
                if let Err(error) = self.writable() {
                    return self.respond(name, reply, Err(error)).await;
                }
                let command = match name {
                    "storeBlobShared" => self.shared_blob_command(args)?,
                    _ => transaction_command(name, args, reply),
                };
                let queue = self.txn.as_ref().expect("writable sessions have a worker");
                if queue.send(command).await.is_err() {
                    return Err("transaction worker ended".into());
                }
                Ok(())
            }
            "sendBlob" => {
                self.send_blob(args, reply);
                Ok(())
            }
            other => {
                let error = ZeoError::attribute_error(format!("zeoraid has no method {other:?}"));
                self.respond(name, reply, Err(error)).await
            }
        }
    }

    fn register(&mut self, args: &[Value]) -> Result<Value, ZeoError> {
        let storage = args[0].as_str().unwrap_or_default();
        if storage != self.core.storage_name() {
            return Err(ZeoError::value_error(format!("unknown storage: {storage}")));
        }
        self.read_only = args.get(1).is_some_and(Value::is_truthy);
        if !self.read_only && self.core.is_read_only() {
            // Clients with read_only_fallback then register read-only.
            return Err(ZeoError::read_only());
        }
        if !self.read_only {
            let (commands, queue) = mpsc::channel(TXN_QUEUE);
            let worker = TransactionWorker::new(
                self.core.clone(),
                self.id,
                self.outbound.clone(),
                self.close.clone(),
                self.holds_lock_tx.take().expect("register runs once"),
                &self.settings,
            );
            tokio::spawn(worker.run(queue));
            self.txn = Some(commands);
        }
        self.registered = true;
        let last_tid = self
            .core
            .subscribe(self.id, self.outbound.clone(), self.close.clone());
        Ok(last_tid.to_value())
    }

    fn writable(&self) -> Result<(), ZeoError> {
        if self.read_only {
            Err(ZeoError::read_only())
        } else {
            Ok(())
        }
    }

    async fn iterator_call(
        &mut self,
        name: &str,
        mut args: Vec<Value>,
        reply: ReplyTo,
    ) -> Result<(), Close> {
        let client_id = args[0].as_int().expect("checked");
        let pinned = self.iterators.lock().to_backend.get(&client_id).cloned();
        let Some((member, backend_id)) = pinned else {
            return self
                .respond(name, reply, Err(ZeoError::key_error(Value::Int(client_id))))
                .await;
        };
        if !self.core.is_optimal(member) {
            let backend = self.core.backend(member).name().to_owned();
            let error = ZeoError::storage(format!(
                "{name}: the iterator's backend {backend} was degraded; start a new iterator"
            ));
            return self.respond(name, reply, Err(error)).await;
        }
        args[0] = backend_id;
        let iterators = self.iterators.clone();
        let transform: Box<dyn FnOnce(Value) -> Value + Send> = if name == "iterator_record_start" {
            Box::new(move |riid| Value::Int(iterators.lock().add(member, riid)))
        } else {
            Box::new(move |item| {
                if item == Value::None {
                    // The backend forgot the exhausted iterator.
                    iterators.lock().to_backend.remove(&client_id);
                }
                item
            })
        };
        let Ok(permit) = self.outbound.clone().reserve_owned().await else {
            return Err("client queue closed".into());
        };
        let ReplyTo { msgid, wanted } = reply;
        let handler = Box::new(move |result: Result<Value, CallError>| {
            if wanted {
                let message = match result {
                    Ok(value) => Message::reply(msgid, transform(value)),
                    Err(error) => error.into_zeo_error().into_reply(msgid),
                };
                permit.send(Outgoing::Owned(message));
            }
        });
        let timeout = self.settings.timeouts.call();
        self.core
            .backend(member)
            .call_with(name, args, timeout, handler)
            .await;
        Ok(())
    }

    /// `storeBlobShared(oid, serial, data, filename, txn)` as a worker
    /// command. A bad file name closes the connection, as with ZEO; a
    /// zeoraid without a shared blob directory fails the transaction at
    /// vote, saying why (ZEO would close the connection).
    fn shared_blob_command(&self, mut args: Vec<Value>) -> Result<TxnCommand, String> {
        let txn_id = args.pop().and_then(|id| id.as_int()).expect("checked");
        let name = args.pop().expect("arity checked");
        let oid = Tid::from_value(&args[0]).expect("checked");
        let file = match self.core.shared_blob_dir() {
            None => Err(
                "storeBlobShared: zeoraid shares no blob directory with its \
                 clients ([server] blob_dir); use shared-blob-dir false"
                    .to_owned(),
            ),
            Some(dir) => {
                let name = name
                    .as_str()
                    .ok_or("storeBlobShared: the file name is not a str")?;
                Ok(dir.client_file(oid.0, name)?)
            }
        };
        Ok(TxnCommand::BlobShared { txn_id, args, file })
    }

    /// `sendBlob(oid, serial)`: the blob file, from zeoraid's blob cache
    /// (filled from a backend), goes to the client as ZEO sends it
    /// (`receiveBlobStart`, chunks, `receiveBlobStop`), then the reply.
    /// Runs beside the session: a large blob does not hold up its calls.
    fn send_blob(&self, args: Vec<Value>, reply: ReplyTo) {
        let core = self.core.clone();
        let outbound = self.outbound.clone();
        tokio::spawn(async move {
            let [oid, serial] = <[Value; 2]>::try_from(args).expect("arity checked");
            let result = match core.blob_for_client(&oid, &serial).await {
                Ok(file) => stream_blob(&outbound, &oid, &serial, file)
                    .await
                    .map(|()| Value::None),
                Err(error) => Err(error),
            };
            send_reply(&outbound, reply, result).await;
        });
    }

    async fn iterator_gc(&mut self, ids: &Value) {
        let dropped: Vec<(usize, Value)> = {
            let mut iterators = self.iterators.lock();
            ids.as_seq()
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_int)
                .filter_map(|id| iterators.to_backend.remove(&id))
                .collect()
        };
        self.gc_backend_iterators(dropped).await;
    }

    /// Tells each backend which of its iterators this client dropped.
    async fn gc_backend_iterators(&self, dropped: Vec<(usize, Value)>) {
        for member in 0..self.core.backend_count() {
            let ids: Vec<Value> = dropped
                .iter()
                .filter(|(m, _)| *m == member)
                .map(|(_, id)| id.clone())
                .collect();
            if !ids.is_empty() && self.core.is_optimal(member) {
                let _ = self
                    .core
                    .backend(member)
                    .one_way("iterator_gc", vec![Value::List(ids)])
                    .await;
            }
        }
    }

    /// Forwards a read to an optimal backend with the default call timeout.
    async fn forward(
        &self,
        reply: ReplyTo,
        method: &str,
        args: Vec<Value>,
        transform: impl FnOnce(Value) -> Value + Send + 'static,
    ) -> Result<(), Close> {
        let timeout = self.settings.timeouts.call();
        self.forward_with(
            reply,
            method,
            args,
            timeout,
            Box::new(move |_, value| transform(value)),
        )
        .await
    }

    /// Forwards a read (see `forward::Read`): the reply, passed through
    /// `transform`, is queued for the client straight from the backend
    /// connection's reader.
    async fn forward_with(
        &self,
        reply: ReplyTo,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
        transform: Transform,
    ) -> Result<(), Close> {
        // Reserving room first bounds the replies in flight by the queue
        // size, and lets the handler queue without ever blocking the
        // backend's reader.
        let Ok(permit) = self.outbound.clone().reserve_owned().await else {
            return Err("client queue closed".into());
        };
        let ReplyTo { msgid, wanted } = reply;
        Read {
            core: self.core.clone(),
            method: method.to_owned(),
            args,
            timeout,
            msgid,
            wanted,
            permit,
            transform,
            attempts: 0,
        }
        .send()
        .await;
        Ok(())
    }

    /// Releases what the session holds: its transaction (the worker aborts
    /// it when its queue closes), its place in the fan-out, its iterators.
    async fn end(&mut self) {
        self.core.unsubscribe(self.id);
        self.txn = None;
        let leftover: Vec<(usize, Value)> = self
            .iterators
            .lock()
            .to_backend
            .drain()
            .map(|(_, pinned)| pinned)
            .collect();
        self.gc_backend_iterators(leftover).await;
    }
}

/// Checks a request's arguments before anything reaches a backend: the
/// count (a one-way message with the wrong count would make the backend
/// drop the shared connection), the values zeoraid itself interprets
/// (storage name, tids it looks up, iterator and transaction ids), and
/// that every value is plain data. Everything else passes through as the
/// client sent it, and the backend judges it as ZEO would: ZODB's own
/// tests pass str descriptions and None serials, for example.
fn check_arguments(name: &str, args: Vec<Value>) -> Result<Vec<Value>, ZeoError> {
    use validate::{arity, id8, int, plain_data};
    let (min, max) = match name {
        "get_info" | "lastTransaction" | "ping" | "server_status" | "new_oid"
        | "storeBlobStart" | "raid_status" | "raid_details" | "raid_recovery" => (0, 0),
        "register" | "history" | "pack" | "raid_recover" => (1, 2),
        "getInvalidations"
        | "getTid"
        | "set_client_label"
        | "iterator_next"
        | "iterator_record_next"
        | "iterator_gc"
        | "vote"
        | "tpc_finish"
        | "tpc_abort"
        | "storeBlobChunk" => (1, 1),
        "loadBefore" | "loadSerial" | "iterator_record_start" | "undoa" | "sendBlob" => (2, 2),
        "record_iternext" | "new_oids" => (0, 1),
        "undoLog" | "undoInfo" => (0, 3),
        "iterator_start" => (0, 2),
        "tpc_begin" => (1, 6),
        "deleteObject" | "checkCurrentSerialInTransaction" => (3, 3),
        "storea" | "storeBlobEnd" => (4, 4),
        "restorea" | "storeBlobShared" => (5, 5),
        _ => (0, usize::MAX),
    };
    arity(name, &args, min, max)?;
    let args = args
        .into_iter()
        .map(|arg| plain_data(name, arg))
        .collect::<Result<Vec<_>, _>>()?;
    match name {
        "register" => validate::str(name, "storage", &args[0]),
        "getInvalidations" => id8(name, "tid", &args[0]),
        "iterator_next" | "iterator_record_next" | "iterator_record_start" => {
            int(name, "iterator id", &args[0]).map(drop)
        }
        "iterator_gc" => {
            let ids = args[0]
                .as_seq()
                .ok_or_else(|| ZeoError::type_error("iterator_gc: expects a list of ids"))?;
            ids.iter()
                .try_for_each(|id| int(name, "iterator id", id).map(drop))
        }
        "tpc_begin" | "vote" | "tpc_finish" | "tpc_abort" => {
            int(name, "txn id", &args[0]).map(drop)
        }
        "storeBlobChunk" => args[0]
            .as_bytes()
            .map(drop)
            .ok_or_else(|| ZeoError::type_error("storeBlobChunk: the chunk must be bytes")),
        "sendBlob" => id8(name, "oid", &args[0]).and_then(|()| id8(name, "serial", &args[1])),
        "storea"
        | "deleteObject"
        | "checkCurrentSerialInTransaction"
        | "restorea"
        | "undoa"
        | "storeBlobEnd" => int(name, "txn id", args.last().expect("arity checked")).map(drop),
        "storeBlobShared" => {
            id8(name, "oid", &args[0]).and_then(|()| int(name, "txn id", &args[4]).map(drop))
        }
        _ => Ok(()),
    }?;
    Ok(args)
}

/// `raid_recover`'s options dict: `full_verify`, `transactions_per_second`,
/// `bytes_per_second` (limits: 0 for none; absent for the configured one).
fn recovery_options(options: Option<&Value>) -> Result<RecoveryOptions, ZeoError> {
    let mut parsed = RecoveryOptions::default();
    let items = match options {
        None | Some(Value::None) => return Ok(parsed),
        Some(Value::Dict(items)) => items,
        Some(other) => {
            return Err(ZeoError::type_error(format!(
                "raid_recover: options must be a dict, not {}",
                other.summary()
            )))
        }
    };
    for (key, value) in items {
        let limit = || {
            value
                .as_int()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    ZeoError::value_error(format!(
                        "raid_recover: {} must be a number >= 0, not {}",
                        key.summary(),
                        value.summary()
                    ))
                })
        };
        match key.as_str() {
            Some("full_verify") => parsed.full_verify = value.is_truthy(),
            Some("transactions_per_second") => parsed.transactions_per_second = Some(limit()?),
            Some("bytes_per_second") => parsed.bytes_per_second = Some(limit()?),
            _ => {
                return Err(ZeoError::value_error(format!(
                    "raid_recover: unknown option {}",
                    key.summary()
                )))
            }
        }
    }
    Ok(parsed)
}

/// Turns a checked transactional message into a worker command.
fn transaction_command(name: &str, mut args: Vec<Value>, reply: ReplyTo) -> TxnCommand {
    let txn_id = |value: &Value| value.as_int().expect("checked");
    match name {
        "tpc_begin" => {
            let mut fields = args.into_iter();
            let txn_id = fields.next().as_ref().map(txn_id).expect("checked");
            let mut next = |default: Value| fields.next().unwrap_or(default);
            TxnCommand::Begin {
                txn_id,
                user: next(Value::bytes(Vec::new())),
                description: next(Value::bytes(Vec::new())),
                extension: next(Value::Dict(vec![])),
                tid: next(Value::None),
                status: next(Value::str(" ")),
            }
        }
        "storeBlobStart" => TxnCommand::BlobStart,
        "storeBlobChunk" => TxnCommand::BlobChunk(args[0].as_bytes().cloned().expect("checked")),
        "storeBlobEnd" => {
            let txn_id = txn_id(&args.pop().expect("checked"));
            TxnCommand::BlobEnd { txn_id, args }
        }
        "vote" => TxnCommand::Vote {
            txn_id: txn_id(&args[0]),
            reply,
        },
        "tpc_finish" => TxnCommand::Finish {
            txn_id: txn_id(&args[0]),
            reply,
        },
        "tpc_abort" => TxnCommand::Abort {
            txn_id: txn_id(&args[0]),
            reply,
        },
        _ => {
            let txn_id = txn_id(&args.pop().expect("checked"));
            let method = match name {
                "storea" => "storea",
                "deleteObject" => "deleteObject",
                "checkCurrentSerialInTransaction" => "checkCurrentSerialInTransaction",
                "restorea" => "restorea",
                _ => "undoa",
            };
            TxnCommand::Op {
                txn_id,
                method,
                args,
            }
        }
    }
}

/// Chunks of one blob stream queued for its client at most: the rest of
/// the queue stays free for everything else (an invalidation that finds
/// the queue full disconnects the client).
const STREAM_WINDOW: usize = 32;

/// Sends a blob file to a client as a ZEO server does.
async fn stream_blob(
    outbound: &mpsc::Sender<Outgoing>,
    oid: &Value,
    serial: &Value,
    file: std::fs::File,
) -> Result<(), ZeoError> {
    let unreadable = |e: std::io::Error| ZeoError::storage(format!("cannot read the blob: {e}"));
    let mut chunks = BlobChunks::new(tokio::fs::File::from_std(file));
    let message = |name: &str, mut args: Vec<Value>| {
        let mut all = vec![oid.clone(), serial.clone()];
        all.append(&mut args);
        Message::one_way(name, all)
    };
    // A client gone meanwhile: its session ends, nothing to do here.
    let _ = outbound
        .send(Outgoing::Owned(message("receiveBlobStart", vec![])))
        .await;
    let window = Arc::new(tokio::sync::Semaphore::new(STREAM_WINDOW));
    loop {
        let chunk = chunks.next().await.map_err(unreadable)?;
        let last = chunk.len() < BLOB_CHUNK;
        if !chunk.is_empty() {
            let turn = window.clone().acquire_owned().await.expect("never closed");
            let chunk = message("receiveBlobChunk", vec![Value::Bytes(chunk)]);
            if outbound.send(Outgoing::Paced(chunk, turn)).await.is_err() {
                return Ok(());
            }
        }
        if last {
            break;
        }
    }
    let _ = outbound
        .send(Outgoing::Owned(message("receiveBlobStop", vec![])))
        .await;
    Ok(())
}

/// zeoraid's management methods, callable over the ZEO protocol.
const EXTENSION_METHODS: [&str; 5] = [
    "raid_status",
    "raid_details",
    "raid_disable",
    "raid_recover",
    "raid_recovery",
];

/// What a session registered while the RAID cannot serve may call.
const MANAGEMENT_ONLY_METHODS: [&str; 8] = [
    "raid_status",
    "raid_details",
    "raid_disable",
    // Recovery is how a RAID below min_optimal gets back to serving.
    "raid_recover",
    "raid_recovery",
    "ping",
    "server_status",
    "lastTransaction",
];

/// The backend's `get_info`, made zeoraid's: its storage name, its
/// extension methods (listed as older ZEO servers did), and its blob
/// support as it is (zeoraid relays streamed blob stores and loads) but
/// for restoring blobs, which ZEO does not carry.
fn own_info(info: Value, storage: &str) -> Value {
    let Value::Dict(items) = info else {
        return info;
    };
    let extension_methods = Value::Dict(
        EXTENSION_METHODS
            .iter()
            .map(|name| (Value::str(*name), Value::None))
            .collect(),
    );
    let items = items
        .into_iter()
        .filter(|(key, _)| key.as_str() != Some("extensionMethods"))
        .map(|(key, value)| match key.as_str() {
            Some("name") => (key, Value::Str(format!("zeoraid:{storage}"))),
            Some("interfaces") => {
                let kept = value
                    .into_seq()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|pair| {
                        let name = pair.as_seq().and_then(|p| p.get(1)).and_then(Value::as_str);
                        name != Some("IBlobStorageRestoreable")
                    })
                    .collect();
                (key, Value::Tuple(kept))
            }
            _ => (key, value),
        })
        .chain([(Value::str("extensionMethods"), extension_methods)])
        .collect();
    Value::Dict(items)
}
