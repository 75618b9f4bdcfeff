//! Reads forwarded to one optimal backend, with fail-over.
//!
//! The reply is queued for the client straight from the backend
//! connection's reader (a permit reserved beforehand guarantees room), so
//! a client sees replies and invalidations in the order the backend
//! produced them. A backend that fails the read (timeout, disconnect) or
//! was degraded while the read was in flight is degraded, and the read is
//! sent to the next optimal backend before the client sees any error.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::OwnedPermit;

use crate::backend::CallError;
use crate::protocol::{Message, Outgoing, Value, ZeoError};
use crate::raid::Raid;

/// Turns a backend's reply into the client's (e.g. renumbers iterator ids).
pub type Transform = Box<dyn FnOnce(usize, Value) -> Value + Send>;

/// A read on its way to a backend.
pub struct Read {
    pub core: Arc<Raid>,
    pub method: String,
    pub args: Vec<Value>,
    pub timeout: Duration,
    pub msgid: Value,
    /// False when the client sent the call one-way: nothing is queued.
    pub wanted: bool,
    pub permit: OwnedPermit<Outgoing>,
    pub transform: Transform,
    /// Backends tried so far; each is tried once.
    pub attempts: usize,
}

impl Read {
    /// Sends the read to the next optimal backend; fails over from the
    /// reply handler (which runs on the backend's reader) in a task.
    pub async fn send(self) {
        let Some((index, backend)) = self.core.read_member() else {
            self.answer(Err(ZeoError::storage("no optimal backend to read from")));
            return;
        };
        let args = self.args.clone();
        let method = self.method.clone();
        let timeout = self.timeout;
        backend
            .call_with(
                &method,
                args,
                timeout,
                Box::new(move |result| self.on_reply(index, result)),
            )
            .await;
    }

    fn on_reply(mut self, index: usize, result: Result<Value, CallError>) {
        let failure = match &result {
            Err(error @ (CallError::Timeout { .. } | CallError::Disconnected { .. })) => {
                Some(format!("{} failed: {error}", self.method))
            }
            // A backend degraded meanwhile may be stale: never serve it.
            // (Already degraded: nothing to record, just fail over.)
            _ if !self.core.is_optimal(index) => Some(String::new()),
            _ => None,
        };
        let Some(reason) = failure else {
            let transform = std::mem::replace(&mut self.transform, Box::new(|_, v| v));
            let answer = result
                .map(|value| transform(index, value))
                .map_err(CallError::into_zeo_error);
            self.answer(answer);
            return;
        };
        if !reason.is_empty() {
            self.core.degrade(index, &reason);
        }
        self.attempts += 1;
        if self.attempts >= self.core.backend_count() {
            let error = ZeoError::storage(format!("{}: every backend failed", self.method));
            self.answer(Err(error));
            return;
        }
        tokio::spawn(self.send());
    }

    fn answer(self, result: Result<Value, ZeoError>) {
        if !self.wanted {
            return;
        }
        let message = match result {
            Ok(value) => Message::reply(self.msgid, value),
            Err(error) => error.into_reply(self.msgid),
        };
        self.permit.send(Outgoing::Owned(message));
    }
}
