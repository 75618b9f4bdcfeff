//! A client's transaction, from tpc_begin to tpc_finish or tpc_abort.
//!
//! Each session has one transaction worker: a task that receives the
//! session's transactional messages in order. tpc_begin and the write
//! operations are only logged (ZEO does the same); at vote the worker takes
//! the commit lock and the RAID core replays the log on every optimal
//! backend (`raid::commit`); the lock is held until finish or abort.
//! Holding the lock only from vote on keeps other clients' commits
//! flowing while this one is still collecting its stores.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::Write;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{send_reply, FrontendSettings};
use crate::protocol::{Message, Outgoing, Value, ZeoError};
use crate::raid::txnlog::TxnLog;
use crate::raid::{self, ClientId, Raid, VoteOutcome, BLOB_SPOOL_PREFIX};

/// Where a call's reply goes.
pub struct ReplyTo {
    pub msgid: Value,
    /// False when the client sent the call as a one-way message.
    pub wanted: bool,
}

/// A transactional message, validated by the session.
pub enum TxnCommand {
    Begin {
        txn_id: i64,
        user: Value,
        description: Value,
        extension: Value,
        tid: Value,
        status: Value,
    },
    /// A logged write operation (`storea`, `deleteObject`, ...).
    Op {
        txn_id: i64,
        method: &'static str,
        /// The arguments without the trailing txn id.
        args: Vec<Value>,
    },
    /// `storeBlobStart`: a blob upload begins (it names no transaction).
    BlobStart,
    /// `storeBlobChunk`: more of the blob being uploaded.
    BlobChunk(Bytes),
    /// `storeBlobEnd`: the upload is the blob of this store.
    BlobEnd {
        txn_id: i64,
        /// oid, serial, data.
        args: Vec<Value>,
    },
    /// `storeBlobShared`: the blob of this store is a shared client's
    /// file in zeoraid's shared blob directory, or why it cannot be used.
    BlobShared {
        txn_id: i64,
        /// oid, serial, data.
        args: Vec<Value>,
        file: Result<PathBuf, String>,
    },
    Vote {
        reply: ReplyTo,
        txn_id: i64,
    },
    Finish {
        reply: ReplyTo,
        txn_id: i64,
    },
    Abort {
        reply: ReplyTo,
        txn_id: i64,
    },
}

struct Transaction {
    id: i64,
    /// tpc_begin's user, description, extension, tid and status.
    begin: [Value; 5],
    log: TxnLog,
    voted: Option<Voted>,
    /// Why the transaction cannot commit, found before vote by a one-way
    /// message that cannot answer; vote answers it.
    failure: Option<ZeoError>,
}

/// A transaction that passed vote on the backends and holds the lock.
struct Voted {
    _lock: OwnedMutexGuard<()>,
    raid: raid::Voted,
    /// Oids to invalidate in other clients when it commits.
    invalidated: Vec<Value>,
    /// The oids undo changed (a tail of `invalidated`): their blobs, if
    /// any, are new revisions the backends made.
    undone: Vec<Value>,
    /// When the lock is taken away from a client that neither finishes
    /// nor aborts.
    deadline: Instant,
}

pub struct TransactionWorker {
    core: Arc<Raid>,
    client: ClientId,
    outbound: mpsc::Sender<Outgoing>,
    /// Cancelled to close the session (and set when the session closes).
    close: CancellationToken,
    /// Tells the session whether the commit lock is held, so a graceful
    /// shutdown can wait for the commit to end.
    holds_lock: watch::Sender<bool>,
    transaction_timeout: Duration,
    /// Logged data above this many bytes is spooled to a temporary file.
    spool_threshold: usize,
    spool_dir: PathBuf,
    blob_spool_dir: PathBuf,
    txn: Option<Transaction>,
    /// The blob being uploaded, spooled to a file until its storeBlobEnd.
    blob_upload: Option<tempfile::NamedTempFile>,
}

impl TransactionWorker {
    pub fn new(
        core: Arc<Raid>,
        client: ClientId,
        outbound: mpsc::Sender<Outgoing>,
        close: CancellationToken,
        holds_lock: watch::Sender<bool>,
        settings: &FrontendSettings,
    ) -> TransactionWorker {
        TransactionWorker {
            core,
            client,
            outbound,
            close,
            holds_lock,
            transaction_timeout: settings.timeouts.transaction(),
            spool_threshold: settings.spool_threshold,
            spool_dir: settings.spool_dir.clone(),
            blob_spool_dir: settings.blob_spool_dir.clone(),
            txn: None,
            blob_upload: None,
        }
    }

    /// Runs until the session ends; a transaction still open then is
    /// aborted.
    pub async fn run(mut self, mut commands: mpsc::Receiver<TxnCommand>) {
        loop {
            let deadline = self.voted().map(|v| v.deadline);
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    warn!(client = self.client, timeout = ?self.transaction_timeout,
                        "client held the commit lock too long; aborting its transaction and disconnecting it");
                    break;
                }
                _ = self.close.cancelled(), if self.voted().is_none() => break,
            };
            let Some(command) = command else { break };
            if let Err(reason) = self.execute(command).await {
                warn!(client = self.client, %reason, "closing client connection");
                break;
            }
        }
        self.close.cancel();
        self.end_transaction(true).await;
    }

    fn voted(&self) -> Option<&Voted> {
        self.txn.as_ref().and_then(|t| t.voted.as_ref())
    }

    /// Executes one command. An error closes the session: ZEO's answer to
    /// a bad one-way message.
    async fn execute(&mut self, command: TxnCommand) -> Result<(), String> {
        match command {
            TxnCommand::Begin {
                txn_id,
                user,
                description,
                extension,
                tid,
                status,
            } => match &self.txn {
                Some(txn) if txn.id == txn_id => Ok(()),
                Some(txn) => Err(format!(
                    "tpc_begin of transaction {txn_id} while transaction {} is active (multiple simultaneous tpc_begin requests)",
                    txn.id
                )),
                None => {
                    self.core.stats().active_txns.fetch_add(1, Ordering::Relaxed);
                    self.txn = Some(Transaction {
                        id: txn_id,
                        begin: [user, description, extension, tid, status],
                        log: TxnLog::new(self.spool_threshold, self.spool_dir.clone()),
                        voted: None,
                        failure: None,
                    });
                    Ok(())
                }
            },
            TxnCommand::Op {
                txn_id,
                method,
                args,
            } => match &mut self.txn {
                Some(txn) if txn.id == txn_id && txn.voted.is_none() => {
                    if method == "storea" {
                        self.core.stats().stores.fetch_add(1, Ordering::Relaxed);
                    }
                    txn.log
                        .push(method, args)
                        .map_err(|error| format!("cannot spool the transaction: {error}"))
                }
                Some(txn) if txn.id == txn_id => Err(format!("{method} after vote")),
                _ => Err(format!("{method} for transaction {txn_id}, which is not active")),
            },
            TxnCommand::BlobStart => {
                let file = tempfile::Builder::new()
                    .prefix(BLOB_SPOOL_PREFIX)
                    .tempfile_in(&self.blob_spool_dir)
                    .map_err(|error| format!("cannot spool a blob: {error}"))?;
                self.blob_upload = Some(file);
                Ok(())
            }
            TxnCommand::BlobChunk(chunk) => {
                let file = self
                    .blob_upload
                    .as_mut()
                    .ok_or("storeBlobChunk without storeBlobStart")?;
                file.write_all(&chunk)
                    .map_err(|error| format!("cannot spool a blob: {error}"))
            }
            TxnCommand::BlobEnd { txn_id, args } => {
                let file = self
                    .blob_upload
                    .take()
                    .ok_or("storeBlobEnd without storeBlobStart")?;
                match &mut self.txn {
                    Some(txn) if txn.id == txn_id && txn.voted.is_none() => txn
                        .log
                        .push_blob(args, file.into_temp_path())
                        .map_err(|error| format!("cannot spool the transaction: {error}")),
                    _ => Err(format!(
                        "storeBlobEnd for transaction {txn_id}, which is not active"
                    )),
                }
            }
            TxnCommand::BlobShared {
                txn_id,
                args,
                file,
            } => match &mut self.txn {
                Some(txn) if txn.id == txn_id && txn.voted.is_none() => match file {
                    Ok(path) if path.is_file() => tempfile::TempPath::try_from_path(path)
                        .and_then(|file| txn.log.push_blob(args, file))
                        .map_err(|error| format!("cannot spool the transaction: {error}")),
                    Ok(path) => {
                        txn.failure.get_or_insert(ZeoError::storage(format!(
                            "storeBlobShared: no file {} in zeoraid's blob_dir; is the \
                             client's blob-dir the same directory?",
                            path.display()
                        )));
                        Ok(())
                    }
                    Err(reason) => {
                        txn.failure.get_or_insert(ZeoError::storage(reason));
                        Ok(())
                    }
                },
                _ => {
                    if let Ok(path) = file {
                        let _ = std::fs::remove_file(path);
                    }
                    Err(format!(
                        "storeBlobShared for transaction {txn_id}, which is not active"
                    ))
                }
            },
            TxnCommand::Vote { reply, txn_id } => {
                let result = self.vote(txn_id).await?;
                send_reply(&self.outbound, reply, result).await;
                Ok(())
            }
            TxnCommand::Finish { reply, txn_id } => {
                let result = self.finish(txn_id).await?;
                send_reply(&self.outbound, reply, result).await;
                Ok(())
            }
            TxnCommand::Abort { reply, txn_id } => {
                if self.txn.as_ref().is_some_and(|t| t.id == txn_id) {
                    self.end_transaction(true).await;
                }
                send_reply(&self.outbound, reply, Ok(Value::None)).await;
                Ok(())
            }
        }
    }

    async fn vote(&mut self, txn_id: i64) -> Result<Result<Value, ZeoError>, String> {
        let current = match &self.txn {
            None => {
                return Ok(Err(ZeoError::storage_transaction(vec![
                    Value::None,
                    Value::Int(txn_id),
                ])))
            }
            Some(txn) if txn.id != txn_id => {
                return Ok(Err(ZeoError::storage_transaction(vec![
                    Value::Int(txn.id),
                    Value::Int(txn_id),
                ])))
            }
            Some(txn) if txn.voted.is_some() => {
                return Ok(Err(ZeoError::storage_transaction(vec![Value::str(
                    "Already voting (locked)",
                )])))
            }
            Some(txn) if txn.failure.is_some() => {
                let failure = self.txn.as_mut().and_then(|t| t.failure.take());
                self.end_transaction(false).await;
                return Ok(Err(failure.expect("checked")));
            }
            Some(txn) => txn.id,
        };
        let stats = self.core.stats();
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        let lock = tokio::select! {
            lock = self.core.lock_commits() => Some(lock),
            _ = self.close.cancelled() => None,
        };
        stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let Some(lock) = lock else {
            return Err("client went away while waiting for the commit lock".to_owned());
        };
        stats.lock_time_ms.store(unix_millis(), Ordering::Relaxed);
        let txn = self.txn.as_mut().expect("checked above");
        debug_assert_eq!(txn.id, current);
        match self.core.vote(&txn.begin, &txn.log).await {
            VoteOutcome::Voted(voted, reply) => {
                let (invalidated, resolved) =
                    invalidated_oids(txn.log.stored_oids(), reply.as_seq().unwrap_or_default());
                let undone = invalidated[txn.log.stored_oids().len()..].to_vec();
                stats
                    .conflicts_resolved
                    .fetch_add(resolved, Ordering::Relaxed);
                txn.voted = Some(Voted {
                    _lock: lock,
                    raid: voted,
                    invalidated,
                    undone,
                    deadline: Instant::now() + self.transaction_timeout,
                });
                self.holds_lock.send_replace(true);
                Ok(Ok(reply))
            }
            VoteOutcome::Conflicts(reply) => {
                // The client resolves them and votes again with its
                // extended log; the backend transactions were aborted.
                drop(lock);
                self.release_lock();
                Ok(Ok(reply))
            }
            VoteOutcome::Failed(error) => {
                // ZEO discards a transaction whose vote failed.
                if error.is_conflict() {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                debug!(client = self.client, %error, "vote failed");
                drop(lock);
                self.release_lock();
                self.end_transaction(false).await;
                Ok(Err(error))
            }
        }
    }

    async fn finish(&mut self, txn_id: i64) -> Result<Result<Value, ZeoError>, String> {
        let Some(txn) = self.txn.as_mut().filter(|t| t.id == txn_id) else {
            // ZEO answers None for a transaction it does not know.
            return Ok(Ok(Value::None));
        };
        let Some(voted) = txn.voted.take() else {
            return Ok(Err(ZeoError::storage_transaction(vec![Value::str(
                "tpc_finish called before vote",
            )])));
        };
        let size = txn.log.size();
        let tid = match self.core.finish(voted.raid).await {
            Ok(tid) => tid,
            Err(reason) => {
                // Whether the transaction committed is unknown: the client
                // sees a disconnect, as when a ZEO server goes away.
                drop(voted._lock);
                self.release_lock();
                self.end_transaction(false).await;
                return Err(format!("tpc_finish failed on every backend: {reason}"));
            }
        };
        // Shared clients read committed blobs from the shared directory as
        // soon as they hear of the commit.
        let blobs = txn.log.take_blobs();
        self.core.publish_blobs(tid, blobs, &voted.undone).await;
        self.core
            .committed(self.client, tid, voted.invalidated, size);
        drop(voted._lock);
        self.release_lock();
        self.end_transaction(false).await;
        if let Some(info) = self.core.last_info() {
            let _ = self
                .outbound
                .send(Outgoing::Owned(Message::one_way("info", vec![info])))
                .await;
        }
        Ok(Ok(tid.to_value()))
    }

    /// Forgets the transaction; with `abort_backend`, a voted one is first
    /// aborted on the backend. The commit lock is released either way.
    async fn end_transaction(&mut self, abort_backend: bool) {
        let Some(txn) = self.txn.take() else { return };
        self.core
            .stats()
            .active_txns
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(voted) = txn.voted {
            if abort_backend {
                self.core.stats().aborts.fetch_add(1, Ordering::Relaxed);
                self.core.abort(voted.raid).await;
            }
            drop(voted._lock);
            self.release_lock();
        }
    }

    fn release_lock(&self) {
        self.core.stats().lock_time_ms.store(0, Ordering::Relaxed);
        self.holds_lock.send_replace(false);
    }
}

/// The oids a commit invalidates, as ZEO lists them: every stored oid in
/// log order (duplicates included), then the oids undo touched, which vote
/// reports alongside the oids resolved by conflict resolution. Also returns
/// how many of vote's oids were stored ones: the conflicts the backends
/// resolved.
fn invalidated_oids(stored: &[Value], vote_reply: &[Value]) -> (Vec<Value>, u64) {
    let mut oids = stored.to_vec();
    let stored: HashSet<&Bytes> = stored.iter().filter_map(Value::as_bytes).collect();
    let (resolved, undone): (Vec<&Value>, Vec<&Value>) = vote_reply
        .iter()
        .filter(|oid| oid.as_bytes().is_some())
        .partition(|oid| oid.as_bytes().is_some_and(|b| stored.contains(b)));
    oids.extend(undone.into_iter().cloned());
    (oids, resolved.len() as u64)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Value {
        Value::bytes(vec![0, 0, 0, 0, 0, 0, 0, n])
    }

    #[test]
    fn invalidations_list_stores_then_undone_oids() {
        let stored = vec![oid(1), oid(2)];
        // Vote reports oid 2 (resolved) and oid 3 (undone).
        let (oids, resolved) = invalidated_oids(&stored, &[oid(2), oid(3)]);
        assert_eq!(oids, vec![oid(1), oid(2), oid(3)]);
        assert_eq!(resolved, 1);
    }
}
