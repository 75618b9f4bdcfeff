//! The RAID core: the state that all client sessions share.
//!
//! In this release the core fronts exactly one backend (a transparent
//! proxy); the mirroring of N backends builds on the same seams: the
//! commit lock that serialises transactions from vote to finish, the
//! choice of a backend for reads and writes, the invalidation fan-out and
//! history, and the reaction to a backend's connects and disconnects.

pub mod invalidations;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendObserver, BackendSettings, CallError};
use crate::protocol::{Message, Outgoing, Tid, Value};
pub use invalidations::Changes;
use invalidations::InvalidationHistory;
pub use stats::Stats;

/// Identifies one client session for the fan-out.
pub type ClientId = u64;

/// Whether clients can be served.
#[derive(Clone, Debug, PartialEq)]
pub enum Availability {
    /// Not yet connected to the backend, or reconnecting.
    Unavailable(String),
    Available,
    /// The backend came back with transactions zeoraid has not seen (up
    /// to this tid); clients wait until zeoraid has invalidated them.
    CatchingUp(Tid),
    /// The backend cannot be used until an operator acts.
    Failed(String),
}

/// A connected client, as the fan-out sees it.
struct Subscriber {
    outbound: mpsc::Sender<Outgoing>,
    /// Closes the client's session (used for a client that cannot keep up).
    close: CancellationToken,
}

/// What the core tracks under one lock, so that registering a client,
/// reading the last tid and fanning out a commit are atomic together.
struct Inner {
    history: InvalidationHistory,
    subscribers: HashMap<ClientId, Subscriber>,
    /// The backend's most recent `info` dict (`length`, `size`).
    last_info: Option<Value>,
    /// The backend's last tid was read once: later connects must agree.
    known_tid: bool,
}

pub struct Raid {
    storage_name: String,
    backend: Backend,
    state: Arc<CoreState>,
    /// Serialises transactions from vote to finish/abort: the backend
    /// connection carries one transaction at a time, and commits must reach
    /// the backends in one order.
    commit_lock: Arc<tokio::sync::Mutex<()>>,
    /// Transaction ids used on backend connections.
    next_backend_txn: AtomicI64,
}

struct CoreState {
    inner: Mutex<Inner>,
    availability: watch::Sender<Availability>,
    /// Set while a tpc_finish is in flight: the `info` the backend sends
    /// then belongs to the committer, not to every client.
    finishing: AtomicBool,
    stats: Stats,
}

impl Raid {
    /// Creates the core and starts connecting to the backend.
    pub fn start(
        storage_name: &str,
        settings: BackendSettings,
        invalidation_queue_size: usize,
    ) -> Arc<Raid> {
        let (availability, _) = watch::channel(Availability::Unavailable(
            "connecting to the backend".into(),
        ));
        let state = Arc::new(CoreState {
            inner: Mutex::new(Inner {
                history: InvalidationHistory::new(Tid::ZERO, invalidation_queue_size),
                subscribers: HashMap::new(),
                last_info: None,
                known_tid: false,
            }),
            availability,
            finishing: AtomicBool::new(false),
            stats: Stats::default(),
        });
        let observer = Arc::new(Observer {
            state: Arc::downgrade(&state),
        });
        let backend = Backend::spawn(settings, observer);
        let raid = Arc::new(Raid {
            storage_name: storage_name.to_owned(),
            backend,
            state,
            commit_lock: Arc::new(tokio::sync::Mutex::new(())),
            next_backend_txn: AtomicI64::new(1),
        });
        raid.clone().watch_backend_reconnects();
        raid
    }

    pub fn storage_name(&self) -> &str {
        &self.storage_name
    }

    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    pub fn availability(&self) -> watch::Receiver<Availability> {
        self.state.availability.subscribe()
    }

    pub fn is_available(&self) -> bool {
        *self.state.availability.borrow() == Availability::Available
    }

    /// The backend that serves reads, if clients can be served.
    pub fn read_backend(&self) -> Option<&Backend> {
        self.is_available().then_some(&self.backend)
    }

    /// The backend that takes commits, if clients can be served.
    pub fn write_backend(&self) -> Option<&Backend> {
        self.read_backend()
    }

    pub fn last_tid(&self) -> Tid {
        self.state.inner.lock().history.last_tid()
    }

    /// Adds a client to the fan-out; returns its id and the last tid, read
    /// atomically with the registration so no invalidation is missed.
    pub fn subscribe(
        &self,
        id: ClientId,
        outbound: mpsc::Sender<Outgoing>,
        close: CancellationToken,
    ) -> Tid {
        let mut inner = self.state.inner.lock();
        inner.subscribers.insert(id, Subscriber { outbound, close });
        inner.history.last_tid()
    }

    pub fn unsubscribe(&self, id: ClientId) {
        self.state.inner.lock().subscribers.remove(&id);
    }

    pub fn changes_since(&self, tid: Tid) -> Changes {
        self.state.inner.lock().history.changes_since(tid)
    }

    pub async fn lock_commits(&self) -> OwnedMutexGuard<()> {
        self.commit_lock.clone().lock_owned().await
    }

    pub fn next_backend_txn(&self) -> i64 {
        self.next_backend_txn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn set_finishing(&self, finishing: bool) {
        self.state.finishing.store(finishing, Ordering::SeqCst);
    }

    pub fn last_info(&self) -> Option<Value> {
        self.state.inner.lock().last_info.clone()
    }

    /// Records a transaction committed through zeoraid and tells every
    /// other client. Called under the commit lock, so tids arrive in order.
    pub fn committed(&self, committer: ClientId, tid: Tid, oids: Vec<Value>) {
        self.state.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.state
            .publish(tid, oids, Some(committer), "committed through zeoraid");
    }

    /// Stops serving clients: every session is closed.
    pub fn disconnect_all_clients(&self) {
        self.state.disconnect_all_clients();
    }

    pub fn shutdown(&self) {
        self.backend.shutdown();
    }

    /// After a backend reconnect whose last tid is ahead of ours, learns
    /// what changed meanwhile before clients are served again.
    fn watch_backend_reconnects(self: Arc<Self>) {
        let mut availability = self.availability();
        tokio::spawn(async move {
            while availability.changed().await.is_ok() {
                let state = availability.borrow_and_update().clone();
                if let Availability::CatchingUp(backend_tid) = state {
                    self.catch_up(backend_tid).await;
                }
            }
        });
    }

    /// The backend was written to while zeoraid was not looking (or its
    /// restart lost our view): ask it what changed since our last tid.
    async fn catch_up(&self, backend_tid: Tid) {
        let known = self.last_tid();
        let reply = self
            .backend
            .call("getInvalidations", vec![known.to_value()])
            .await;
        let state = &self.state;
        match reply {
            Ok(Value::None) => {
                warn!(%known, %backend_tid, "backend has transactions zeoraid did not see and cannot list them; clients must drop their caches");
                let mut inner = state.inner.lock();
                inner.history.reset(backend_tid);
                drop(inner);
                state.set_availability(Availability::Available);
            }
            Ok(value) => {
                let (tid, oids) = match value.into_seq() {
                    Ok(items) if items.len() == 2 => {
                        let mut items = items.into_iter();
                        let tid = items.next().as_ref().and_then(Tid::from_value);
                        let oids = items.next().and_then(|v| v.into_seq().ok());
                        (tid, oids)
                    }
                    _ => (None, None),
                };
                match (tid, oids) {
                    (Some(tid), Some(oids)) if tid >= known => {
                        warn!(%known, %tid, count = oids.len(), "backend has transactions zeoraid did not commit; invalidating them");
                        state.publish(tid, oids, None, "found on the backend after a reconnect");
                        state.set_availability(Availability::Available);
                    }
                    _ => self.backend.reset("malformed getInvalidations reply"),
                }
            }
            Err(error) => {
                warn!(%error, "cannot ask the backend what changed; reconnecting");
                self.backend.reset("getInvalidations failed");
            }
        }
    }
}

impl CoreState {
    fn set_availability(&self, availability: Availability) {
        self.availability.send_replace(availability);
    }

    /// Adds a transaction to the history and sends its invalidation to
    /// every client except `skip`.
    fn publish(&self, tid: Tid, oids: Vec<Value>, skip: Option<ClientId>, origin: &str) {
        let mut inner = self.inner.lock();
        if tid <= inner.history.last_tid() {
            // Already known (our own commit echoed back); nothing to tell.
            return;
        }
        let message = Arc::new(Message::one_way(
            "invalidateTransaction",
            vec![tid.to_value(), Value::List(oids.clone())],
        ));
        inner.history.push(tid, oids);
        tracing::debug!(%tid, origin, "invalidating");
        Self::fan_out(&inner, &message, skip);
    }

    /// Queues a message for clients. A client whose queue is full is not
    /// reading: it is disconnected (it will reconnect and verify its cache)
    /// rather than letting it hold up everyone or grow memory.
    fn fan_out(inner: &Inner, message: &Arc<Message>, skip: Option<ClientId>) {
        for (id, subscriber) in &inner.subscribers {
            if Some(*id) == skip {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = subscriber
                .outbound
                .try_send(Outgoing::Shared(message.clone()))
            {
                warn!(
                    client = id,
                    "client is not reading its messages; disconnecting it"
                );
                subscriber.close.cancel();
            }
        }
    }

    fn disconnect_all_clients(&self) {
        for subscriber in self.inner.lock().subscribers.values() {
            subscriber.close.cancel();
        }
    }
}

/// Receives the backend's events.
struct Observer {
    state: std::sync::Weak<CoreState>,
}

impl BackendObserver for Observer {
    fn connected(&self, backend: &str, last_tid: Tid) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut inner = state.inner.lock();
        if !inner.known_tid {
            inner.known_tid = true;
            inner.history.reset(last_tid);
            drop(inner);
            state.set_availability(Availability::Available);
            return;
        }
        let known = inner.history.last_tid();
        drop(inner);
        if last_tid == known {
            info!(backend, "backend is back and up to date");
            state.set_availability(Availability::Available);
        } else if last_tid > known {
            state.set_availability(Availability::CatchingUp(last_tid));
        } else {
            let reason = format!(
                "backend {backend}'s last transaction {last_tid} is older than {known}, the last one zeoraid knows: its storage went back in time; refusing to use it"
            );
            error!("{reason}");
            state.set_availability(Availability::Failed(reason));
        }
    }

    fn disconnected(&self, backend: &str, reason: &str) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if matches!(*state.availability.borrow(), Availability::Failed(_)) {
            return;
        }
        state.set_availability(Availability::Unavailable(format!(
            "backend {backend} is unreachable: {reason}"
        )));
        // With the only backend gone, clients get what a ZEO server going
        // away gives them: a disconnect, and a reconnect when it is back.
        state.disconnect_all_clients();
    }

    fn one_way(&self, backend: &str, message: Message) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        match message.name.as_str() {
            "invalidateTransaction" => {
                // Another writer committed to the backend directly.
                let mut args = message.args.into_seq().unwrap_or_default().into_iter();
                let tid = args.next().as_ref().and_then(Tid::from_value);
                let oids = args.next().and_then(|v| v.into_seq().ok());
                match (tid, oids) {
                    (Some(tid), Some(oids)) => {
                        warn!(backend, %tid, "transaction committed on the backend by another client");
                        state.publish(tid, oids, None, "foreign commit on the backend");
                    }
                    _ => warn!(backend, "malformed invalidateTransaction ignored"),
                }
            }
            "info" => {
                let Some(info) = message
                    .args
                    .into_seq()
                    .ok()
                    .and_then(|a| a.into_iter().next())
                else {
                    return;
                };
                let mut inner = state.inner.lock();
                inner.last_info = Some(info.clone());
                // Outside a commit (after a pack) every client is told.
                if !state.finishing.load(Ordering::SeqCst) {
                    let message = Arc::new(Message::one_way("info", vec![info]));
                    CoreState::fan_out(&inner, &message, None);
                }
            }
            other => warn!(
                backend,
                message = other,
                "unexpected message from backend ignored"
            ),
        }
    }
}

impl From<CallError> for crate::protocol::ZeoError {
    fn from(error: CallError) -> Self {
        error.into_zeo_error()
    }
}
