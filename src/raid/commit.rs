//! The commit path: a client's logged transaction, replayed on every
//! optimal backend in parallel under one tid, with the answers compared.
//!
//! At vote every optimal backend gets `tpc_begin` with the tid zeoraid
//! chose, the logged operations, and `vote`. The answers are grouped: the
//! largest group of identical answers (ties: the group of the first
//! backend in configuration order) is the RAID's answer, and every backend
//! outside it, or that failed, timed out or disconnected, is degraded. An
//! error all remaining backends agree on (a ConflictError, say) goes to the
//! client exactly as a ZEO server sends it. At finish every voted backend
//! must report the chosen tid; one that does not is degraded.

use futures_util::future::join_all;
use tracing::debug;

use super::backend_blob_dirs::BackendBlobCopies;
use super::blob_dir::SharedBlobDir;
use super::blobs::{BlobChunks, BLOB_CHUNK};
use super::txnlog::TxnLog;
use super::Raid;
use crate::backend::{Backend, CallError, PendingReply};
use crate::protocol::{Tid, Value, ZeoError};

/// A transaction voted on the backends that agreed; their backend
/// transactions are open until finish or abort.
pub struct Voted {
    pub tid: Tid,
    voters: Vec<Voter>,
}

struct Voter {
    index: usize,
    backend: Backend,
    backend_txn: i64,
}

pub enum VoteOutcome {
    /// The backends voted; the value is vote's reply for the client.
    Voted(Voted, Value),
    /// Conflicts for the client to resolve (backends running with
    /// client-conflict-resolution); the backend transactions are aborted.
    Conflicts(Value),
    /// The transaction failed; nothing is left open.
    Failed(ZeoError),
}

impl Raid {
    /// Votes a logged transaction on every optimal backend. `begin` holds
    /// tpc_begin's user, description, extension, tid and status. Called
    /// under the commit lock.
    pub async fn vote(&self, begin: &[Value; 5], log: &TxnLog) -> VoteOutcome {
        let members = match self.write_members() {
            Ok(members) => members,
            Err(error) => return VoteOutcome::Failed(error),
        };
        let tid = match Tid::from_value(&begin[3]) {
            // An explicit tid (copyTransactionsFrom, restores) is kept,
            // but never one that would put a backend's history out of order.
            Some(requested) if requested <= self.last_tid() => {
                return VoteOutcome::Failed(ZeoError::storage_transaction(vec![Value::Str(
                    format!(
                        "tid {requested} is not later than the last transaction {}",
                        self.last_tid()
                    ),
                )]))
            }
            Some(requested) => requested,
            None => self.next_tid(),
        };
        let voters: Vec<Voter> = members
            .into_iter()
            .map(|(index, backend)| Voter {
                index,
                backend,
                backend_txn: self.next_backend_txn(),
            })
            .collect();
        let timeout = self.commit_timeout();
        let answers = join_all(voters.iter().map(|voter| {
            let blob_dir = self.backend_blob_dirs[voter.index]
                .as_ref()
                .map(|dir| (dir, &self.blob_copies));
            replay(voter, begin, tid, log, blob_dir, timeout)
        }))
        .await;

        // Backends that did not answer are out; the rest are grouped.
        let mut answered: Vec<(Voter, Result<Value, CallError>)> = Vec::new();
        for (voter, answer) in voters.into_iter().zip(answers) {
            match answer {
                Err(error @ (CallError::Timeout { .. } | CallError::Disconnected { .. })) => {
                    self.degrade(voter.index, &format!("vote failed: {error}"));
                    voter.backend.reset("vote failed");
                }
                answer => answered.push((voter, answer)),
            }
        }
        let Some(winner) = majority(&answered) else {
            return VoteOutcome::Failed(ZeoError::storage("no backend could vote the transaction"));
        };
        let outcome = answered[winner].1.clone();
        let mut agreed = Vec::new();
        for (voter, answer) in answered {
            if same_answer(&answer, &outcome) {
                agreed.push(voter);
            } else {
                self.degrade(
                    voter.index,
                    &format!(
                        "answered vote differently: {} instead of {}",
                        describe(&answer),
                        describe(&outcome)
                    ),
                );
                if answer.is_ok() {
                    abort_backend(&voter).await;
                }
            }
        }
        let voted = Voted {
            tid,
            voters: agreed,
        };
        match outcome {
            Ok(reply)
                if reply
                    .as_seq()
                    .is_some_and(|e| e.iter().any(|e| matches!(e, Value::Dict(_)))) =>
            {
                self.abort(voted).await;
                VoteOutcome::Conflicts(reply)
            }
            Ok(reply) => {
                if voted.voters.len() < self.shared.min_optimal {
                    self.abort(voted).await;
                    return VoteOutcome::Failed(ZeoError::storage(
                        "too few backends voted the transaction",
                    ));
                }
                VoteOutcome::Voted(voted, reply)
            }
            // The backends discarded their transactions (as ZEO does).
            Err(error) => VoteOutcome::Failed(error.into_zeo_error()),
        }
    }

    /// Finishes a voted transaction on its backends; returns the tid, or
    /// why not one backend confirmed it (then its outcome is unknown).
    pub async fn finish(&self, voted: Voted) -> Result<Tid, String> {
        let timeout = self.commit_timeout();
        self.shared
            .finishing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let answers = join_all(voted.voters.iter().map(|voter| {
            voter
                .backend
                .call_timeout("tpc_finish", vec![Value::Int(voter.backend_txn)], timeout)
        }))
        .await;
        self.shared
            .finishing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut confirmed = 0;
        let mut failures = Vec::new();
        for (voter, answer) in voted.voters.iter().zip(answers) {
            match answer.as_ref().map(Tid::from_value) {
                Ok(Some(tid)) if tid == voted.tid => {
                    confirmed += 1;
                    self.shared.inner.lock().members[voter.index].last_tid = Some(tid);
                }
                _ => {
                    let reason = match answer {
                        Ok(value) => format!(
                            "tpc_finish returned {} instead of {}",
                            value.summary(),
                            voted.tid
                        ),
                        Err(error) => format!("tpc_finish failed: {error}"),
                    };
                    // Recorded before the commit is confirmed to anyone.
                    self.degrade(voter.index, &reason);
                    voter.backend.reset(&reason);
                    failures.push(reason);
                }
            }
        }
        if confirmed == 0 {
            return Err(failures.join("; "));
        }
        Ok(voted.tid)
    }

    /// Packs every optimal backend with the same pack time, holding the
    /// commit lock until every pack is done. FileStorage packs what its file
    /// holds when the packer starts and treats later transactions as
    /// references from the future: a commit landing during the pack would
    /// fall before that point on one backend and after it on another, and
    /// the packed histories would differ. Correctness first: commits wait
    /// for the pack. A backend whose pack fails while others succeed would
    /// keep history the others dropped: it is degraded.
    pub async fn pack(
        &self,
        args: Vec<Value>,
        timeout: std::time::Duration,
    ) -> Result<Value, ZeoError> {
        let commits = self.lock_commits().await;
        // Always wait for the backends' packs, whatever the client asked:
        // the lock must cover them.
        let args = vec![args.first().cloned().unwrap_or(Value::None), Value::Int(1)];
        let members = self.optimal_members();
        let answers = join_all(
            members
                .iter()
                .map(|(_, backend)| backend.call_timeout("pack", args.clone(), timeout)),
        )
        .await;
        if answers.iter().all(Result::is_err) {
            let first = answers.into_iter().next().and_then(Result::err);
            return Err(first.map_or_else(
                || ZeoError::storage("no optimal backend to pack"),
                CallError::into_zeo_error,
            ));
        }
        for ((index, _), answer) in members.iter().zip(&answers) {
            if let Err(error) = answer {
                self.degrade(
                    *index,
                    &format!("pack failed while the others packed: {error}"),
                );
            }
        }
        drop(commits);
        // Packed-away revisions must not be served from the cache, nor be
        // found by shared clients. (New commits meanwhile are current
        // revisions, which the pruning keeps.)
        self.blob_cache.clear();
        self.prune_shared_blob_dir().await;
        Ok(Value::None)
    }

    /// Aborts a voted transaction on its backends.
    pub async fn abort(&self, voted: Voted) {
        join_all(voted.voters.iter().map(abort_backend)).await;
    }
}

/// Sends the logged transaction to one backend and votes. Blobs are put
/// into the backend's blob directory when zeoraid shares it, else
/// streamed.
async fn replay(
    voter: &Voter,
    begin: &[Value; 5],
    tid: Tid,
    log: &TxnLog,
    blob_dir: Option<(&SharedBlobDir, &BackendBlobCopies)>,
    timeout: std::time::Duration,
) -> Result<Value, CallError> {
    let backend = &voter.backend;
    let txn = Value::Int(voter.backend_txn);
    let [user, description, extension, _, status] = begin;
    let begin_args = vec![
        txn.clone(),
        user.clone(),
        description.clone(),
        extension.clone(),
        tid.to_value(),
        status.clone(),
    ];
    backend.one_way("tpc_begin", begin_args).await?;
    // Copies the backend has not taken are removed after its vote.
    let mut copies = Vec::new();
    let mut ops = log.reader();
    loop {
        let op = ops.next().await.map_err(|error| CallError::Disconnected {
            backend: backend.name().to_owned(),
            reason: format!("cannot read the spooled transaction: {error}"),
        })?;
        let Some((method, mut args)) = op else { break };
        if method == "storeBlobEnd" {
            // The log holds the blob's file path where ZEO has the txn id.
            let path = args.pop().unwrap_or(Value::None);
            let path = path.as_str().unwrap_or_default();
            if let Some((dir, blob_copies)) = blob_dir {
                let oid = args.first().and_then(Tid::from_value).unwrap_or_default();
                let copy = blob_copies
                    .copy(dir, oid.0, std::path::Path::new(path))
                    .await
                    .map_err(|error| CallError::Disconnected {
                        backend: backend.name().to_owned(),
                        reason: format!("cannot put a blob into its blob_dir: {error}"),
                    })?;
                args.extend([Value::str(copy.name()), txn.clone()]);
                copies.push(copy);
                backend.one_way("storeBlobShared", args).await?;
                continue;
            }
            send_blob_file(backend, path).await?;
        }
        args.push(txn.clone());
        backend.one_way(method, args).await?;
    }
    backend.call_timeout("vote", vec![txn], timeout).await
}

/// A `ping` follows every this many chunks (about 7.5 MB), and the next
/// one is sent only once the one before is answered: at most two windows
/// of a blob are ahead of what the backend has taken, whatever its size.
const BLOB_WINDOW: usize = 128;

/// Streams a spooled blob file to a backend: `storeBlobStart`, then
/// `storeBlobChunk`s; the caller sends `storeBlobEnd`. Each replay reads
/// the file on its own, so memory stays at a few windows per backend.
pub(super) async fn send_blob_file(backend: &Backend, path: &str) -> Result<(), CallError> {
    let unreadable = |error: std::io::Error| CallError::Disconnected {
        backend: backend.name().to_owned(),
        reason: format!("cannot read the spooled blob {path}: {error}"),
    };
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut chunks = BlobChunks::new(file);
    backend.one_way("storeBlobStart", vec![]).await?;
    let mut in_window = 0;
    let mut window_end: Option<PendingReply> = None;
    loop {
        let chunk = chunks.next().await.map_err(unreadable)?;
        let last = chunk.len() < BLOB_CHUNK;
        if !chunk.is_empty() {
            backend
                .one_way("storeBlobChunk", vec![Value::Bytes(chunk)])
                .await?;
            in_window += 1;
        }
        if in_window == BLOB_WINDOW {
            in_window = 0;
            if let Some(previous) = window_end.take() {
                previous.reply().await?;
            }
            let timeout = backend.settings().call_timeout;
            window_end = Some(backend.send_call("ping", vec![], timeout).await);
        }
        if last {
            if let Some(previous) = window_end {
                previous.reply().await?;
            }
            return Ok(());
        }
    }
}

/// Aborts one backend's transaction; a backend that cannot abort is
/// disconnected, which aborts it (and degrades it).
async fn abort_backend(voter: &Voter) {
    let answer = voter
        .backend
        .call("tpc_abort", vec![Value::Int(voter.backend_txn)])
        .await;
    if let Err(error) = answer {
        debug!(backend = voter.backend.name(), %error, "tpc_abort failed");
        voter.backend.reset(&format!("tpc_abort failed: {error}"));
    }
}

/// The index of the answer shared by the most backends; ties go to the
/// group that holds the earliest backend.
fn majority<T>(answers: &[(T, Result<Value, CallError>)]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, (_, answer)) in answers.iter().enumerate() {
        let count = answers
            .iter()
            .filter(|(_, other)| same_answer(answer, other))
            .count();
        if best.is_none_or(|(_, best_count)| count > best_count) {
            best = Some((i, count));
        }
    }
    best.map(|(i, _)| i)
}

fn same_answer(a: &Result<Value, CallError>, b: &Result<Value, CallError>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => same_value(a, b),
        (Err(CallError::Remote(a)), Err(CallError::Remote(b))) => {
            a.class_name == b.class_name && same_value(&a.payload, &b.payload)
        }
        _ => false,
    }
}

/// Equality as a client sees it: lists and tuples alike (msgpack backends
/// cannot tell them apart), and exceptions nested in error payloads alike
/// whether pickled (`_recon(cls, state)`) or sent as msgpack pairs.
pub(super) fn same_value(a: &Value, b: &Value) -> bool {
    if let (Some((class_a, state_a)), Some((class_b, state_b))) =
        (nested_exception(a), nested_exception(b))
    {
        return class_a == class_b && same_state(state_a, state_b);
    }
    match (a.as_seq(), b.as_seq()) {
        (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b)),
        (None, None) => match (a, b) {
            (Value::Dict(a), Value::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
            }
            _ => a == b,
        },
        _ => false,
    }
}

/// An exception nested in an error payload: `(class name, state dict)`.
/// The pickle form is `_recon(cls, state)`; the msgpack form the pair
/// `("module.Class", state)`.
fn nested_exception(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Reduce(call) => {
            let (Value::Global { name, .. }, args) = &**call else {
                return None;
            };
            let args = args.as_seq()?;
            match (name.as_str(), args) {
                ("_recon", [Value::Global { module, name }, state @ Value::Dict(_)]) => {
                    Some((format!("{module}.{name}"), state))
                }
                _ => None,
            }
        }
        Value::Tuple(items) | Value::List(items) => match items.as_slice() {
            [Value::Str(class), state @ Value::Dict(_)]
                if class.contains('.') && class.ends_with("Error") =>
            {
                Some((class.clone(), state))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Exception states compared without `args`, which only the pickle form
/// carries.
fn same_state(a: &Value, b: &Value) -> bool {
    let entries = |v: &'_ Value| -> Vec<(Value, Value)> {
        match v {
            Value::Dict(items) => items
                .iter()
                .filter(|(k, _)| k.as_str() != Some("args"))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    };
    same_value(&Value::Dict(entries(a)), &Value::Dict(entries(b)))
}

fn describe(answer: &Result<Value, CallError>) -> String {
    match answer {
        Ok(value) => value.summary(),
        Err(error) => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: Value) -> ((), Result<Value, CallError>) {
        ((), Ok(value))
    }

    fn conflict() -> ((), Result<Value, CallError>) {
        (
            (),
            Err(CallError::Remote(ZeoError::conflict(
                "database conflict error",
                Value::None,
                Value::None,
            ))),
        )
    }

    #[test]
    fn the_largest_group_wins_and_ties_go_to_the_first() {
        let empty = || ok(Value::List(vec![]));
        assert_eq!(majority(&[empty(), conflict(), conflict()]), Some(1));
        assert_eq!(majority(&[conflict(), empty()]), Some(0));
        assert_eq!(
            majority(&[empty(), ok(Value::Tuple(vec![])), conflict()]),
            Some(0)
        );
        assert_eq!(majority::<()>(&[]), None);
    }

    #[test]
    fn nested_exceptions_compare_alike_in_both_encodings() {
        let state = |with_args: bool| {
            let mut items = vec![
                (Value::str("_reason"), Value::str("Can't undo")),
                (Value::str("_oid"), Value::bytes(vec![0u8; 8])),
            ];
            if with_args {
                items.push((Value::str("args"), Value::Tuple(vec![])));
            }
            Value::Dict(items)
        };
        let global = |module: &str, name: &str| Value::Global {
            module: module.into(),
            name: name.into(),
        };
        let pickled = Value::Reduce(Box::new((
            global("ZODB.POSException", "_recon"),
            Value::Tuple(vec![global("ZODB.POSException", "UndoError"), state(true)]),
        )));
        let msgpacked = Value::Tuple(vec![
            Value::str("ZODB.POSException.UndoError"),
            state(false),
        ]);
        assert!(same_value(&pickled, &msgpacked));
        let other = Value::Tuple(vec![
            Value::str("ZODB.POSException.POSKeyError"),
            state(false),
        ]);
        assert!(!same_value(&pickled, &other));
    }

    #[test]
    fn lists_and_tuples_are_the_same_answer() {
        let oid = Value::bytes(vec![0u8; 8]);
        assert!(same_value(
            &Value::List(vec![oid.clone()]),
            &Value::Tuple(vec![oid.clone()])
        ));
        assert!(!same_value(&Value::List(vec![oid]), &Value::List(vec![])));
        assert!(same_answer(&conflict().1, &conflict().1));
        assert!(!same_answer(&conflict().1, &ok(Value::None).1));
    }
}
