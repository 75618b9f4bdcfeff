//! The backend client: one ZEO client connection to one real ZEO server.
//!
//! A [`Backend`] owns a background task that connects (with a timeout),
//! does the handshake in whatever encoding the server announces, registers
//! with the configured storage, and then keeps the connection alive with a
//! periodic `ping`. When the connection is lost every call in flight fails
//! with [`CallError::Disconnected`], the owner is told through
//! [`BackendObserver::disconnected`], and the task reconnects with
//! exponential backoff.
//!
//! Calls are pipelined: many can be in flight at once and replies are
//! matched by msgid. Every call has a deadline. A reply handler runs inline
//! in the task that reads the connection, in the order the server sent the
//! replies; the front end relies on this to keep a client's load replies and
//! invalidations in the order the backend produced them.

mod link;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::protocol::{Message, Tid, Value, ZeoError};
use link::Link;

/// Connection settings of one backend.
#[derive(Clone, Debug)]
pub struct BackendSettings {
    pub name: String,
    /// `host:port` of the ZEO server.
    pub address: String,
    /// Storage name to register with.
    pub storage: String,
    pub connect_timeout: Duration,
    /// Default deadline of a call, and of a ping.
    pub call_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_frame_size: usize,
}

/// Receives what a backend connection reports. Methods are called from the
/// connection's reader task and must not block.
pub trait BackendObserver: Send + Sync + 'static {
    /// A connection is up and registered; `last_tid` is the storage's.
    fn connected(&self, backend: &str, last_tid: Tid);
    /// The connection was lost (or could not be registered).
    fn disconnected(&self, backend: &str, reason: &str);
    /// A one-way message from the server: `invalidateTransaction`, `info`,
    /// `receiveBlob*`. Called in stream order.
    fn one_way(&self, backend: &str, message: Message);
}

/// Why a backend call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error reply; it is the caller's to pass
    /// on (a ConflictError, POSKeyError, ...).
    #[error("{0}")]
    Remote(ZeoError),
    #[error("backend {backend}: no reply to {method} within {after:?}")]
    Timeout {
        backend: String,
        method: String,
        after: Duration,
    },
    #[error("backend {backend}: {reason}")]
    Disconnected { backend: String, reason: String },
}

impl CallError {
    /// The error as a client sees it: the backend's own error, or a
    /// StorageError describing the failure.
    pub fn into_zeo_error(self) -> ZeoError {
        match self {
            CallError::Remote(error) => error,
            other => ZeoError::storage(other.to_string()),
        }
    }
}

/// What to do with a call's outcome; runs on the connection's reader task.
pub type ReplyHandler = Box<dyn FnOnce(Result<Value, CallError>) + Send>;

/// A handle on one backend; cheap to clone.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
}

/// The reply to a call sent with [`Backend::send_call`].
pub struct PendingReply {
    receiver: oneshot::Receiver<Result<Value, CallError>>,
    backend: String,
}

impl PendingReply {
    /// Waits for the reply (the call's timeout bounds the wait).
    pub async fn reply(self) -> Result<Value, CallError> {
        self.receiver.await.unwrap_or_else(|_| {
            Err(CallError::Disconnected {
                backend: self.backend,
                reason: "not connected".to_owned(),
            })
        })
    }
}

struct Shared {
    settings: BackendSettings,
    observer: Arc<dyn BackendObserver>,
    /// The live, registered connection, if any.
    link: Mutex<Option<Arc<Link>>>,
    /// Ends the reconnect loop for good.
    shutdown: CancellationToken,
}

impl Backend {
    /// Starts connecting in the background.
    pub fn spawn(settings: BackendSettings, observer: Arc<dyn BackendObserver>) -> Backend {
        let shared = Arc::new(Shared {
            settings,
            observer,
            link: Mutex::new(None),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(run(shared.clone()));
        Backend { shared }
    }

    pub fn name(&self) -> &str {
        &self.shared.settings.name
    }

    pub fn settings(&self) -> &BackendSettings {
        &self.shared.settings
    }

    pub fn is_connected(&self) -> bool {
        self.current_link().is_some()
    }

    fn current_link(&self) -> Option<Arc<Link>> {
        self.shared
            .link
            .lock()
            .clone()
            .filter(|link| !link.is_closed())
    }

    fn not_connected(&self) -> CallError {
        CallError::Disconnected {
            backend: self.name().to_owned(),
            reason: "not connected".to_owned(),
        }
    }

    /// Sends a call; `handler` receives the outcome, inline on the reader
    /// task, exactly once. Waits only while the connection's send queue is
    /// full.
    pub async fn call_with(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
        handler: ReplyHandler,
    ) {
        match self.current_link() {
            Some(link) => link.call(method, args, timeout, handler).await,
            None => handler(Err(self.not_connected())),
        }
    }

    /// Calls a method and waits for its reply, within `timeout`.
    pub async fn call_timeout(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.send_call(method, args, timeout).await.reply().await
    }

    /// Sends a call without waiting for its reply, so that more messages
    /// can follow it on the wire (pipelining); the reply is awaited later.
    pub async fn send_call(
        &self,
        method: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> PendingReply {
        let (sender, receiver) = oneshot::channel();
        let handler: ReplyHandler = Box::new(move |result| {
            let _ = sender.send(result);
        });
        self.call_with(method, args, timeout, handler).await;
        PendingReply {
            receiver,
            backend: self.name().to_owned(),
        }
    }

    /// Calls a method with the default call timeout.
    pub async fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, CallError> {
        self.call_timeout(method, args, self.shared.settings.call_timeout)
            .await
    }

    /// Sends a one-way message. Success means it was queued on a live
    /// connection; ZEO reports errors in one-way messages by closing the
    /// connection.
    pub async fn one_way(&self, method: &str, args: Vec<Value>) -> Result<(), CallError> {
        let link = self.current_link().ok_or_else(|| self.not_connected())?;
        link.one_way(method, args).await
    }

    /// Drops the current connection (it will be re-established), e.g.
    /// after an operation whose outcome on the server is unknown.
    pub fn reset(&self, reason: &str) {
        if let Some(link) = self.current_link() {
            link.close(reason);
        }
    }

    /// Closes the connection and stops reconnecting.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        if let Some(link) = self.current_link() {
            link.close("zeoraid is shutting down");
        }
    }
}

/// The reconnect loop.
async fn run(shared: Arc<Shared>) {
    let settings = &shared.settings;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u32;
    while !shared.shutdown.is_cancelled() {
        match link::connect(settings, shared.observer.clone()).await {
            Ok((link, last_tid)) => {
                failures = 0;
                backoff.reset();
                info!(backend = %settings.name, address = %settings.address, encoding = ?link.encoding(), %last_tid, "backend connected");
                *shared.link.lock() = Some(link.clone());
                shared.observer.connected(&settings.name, last_tid);
                let reason = tokio::select! {
                    reason = link.closed() => reason,
                    _ = shared.shutdown.cancelled() => {
                        link.close("zeoraid is shutting down");
                        link.closed().await
                    }
                };
                shared.link.lock().take();
                warn!(backend = %settings.name, %reason, "backend disconnected");
                shared.observer.disconnected(&settings.name, &reason);
            }
            Err(reason) => {
                // Log the first failure of a streak loudly, then quietly,
                // so an unreachable backend does not flood the log.
                if failures == 0 {
                    warn!(backend = %settings.name, address = %settings.address, %reason, "cannot connect to backend; retrying");
                    shared.observer.disconnected(&settings.name, &reason);
                } else {
                    tracing::debug!(backend = %settings.name, %reason, "backend connect failed");
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
}

/// Exponential backoff with jitter, so many zeoraids (or many backends)
/// do not reconnect in lockstep.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        // Up to 25% jitter from the clock's low bits: good enough to spread
        // retries, and no random number generator is needed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            backoff.next();
        }
        let capped = backoff.next();
        assert!(capped >= Duration::from_secs(1) && capped <= Duration::from_millis(1250));
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(125));
    }
}
