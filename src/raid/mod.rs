//! The RAID core: N backends behind one storage, and the state all client
//! sessions share.
//!
//! Every backend is `optimal` (in service) or `degraded` (out of service,
//! with a reason, until an operator recovers it). Commits go to every
//! optimal backend (see `commit`); reads go to one optimal backend, in turn.
//! A backend that fails, hangs, disconnects, answers differently from the
//! others, or shows a transaction zeoraid did not commit is degraded, and
//! the degraded set is persisted before any commit that skipped it is
//! confirmed (see `state`). The core also owns the invalidation fan-out and
//! history, the oid allocator and the tid clock.

mod backend_blob_dirs;
mod blob_cache;
mod blob_copy;
mod blob_dir;
mod blobs;
mod commit;
pub mod invalidations;
mod oids;
mod rate;
mod recovery;
mod state;
mod stats;
pub mod txnlog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendObserver, BackendSettings};
use crate::config::{Config, FailMode, RecoverySettings};
use crate::protocol::{Message, Outgoing, Tid, Value, ZeoError};
pub use blob_cache::CacheFigures;
pub use blob_dir::{remove_leftover_blob_spools, SharedBlobDir, BLOB_SPOOL_PREFIX};
pub use blobs::{BlobChunks, BLOB_CHUNK};
pub use commit::{VoteOutcome, Voted};
pub use invalidations::Changes;
use invalidations::InvalidationHistory;
use oids::OidAllocator;
use recovery::Maintenance;
pub use recovery::{MaintenanceSlot, RecoveryOptions, RecoveryProgress};
use state::{DegradedRecord, PersistentState, StateFile};
pub use stats::Stats;

/// Identifies one client session for the fan-out.
pub type ClientId = u64;

/// A backend's place in the RAID.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    Optimal,
    /// Out of service until recovered; never read from or written to.
    Degraded {
        reason: String,
        since: u64,
    },
}

/// The state of the RAID as a whole, as `raid_status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaidStatus {
    /// Every backend optimal.
    Optimal,
    /// Some optimal, some not.
    Degraded,
    /// Some optimal, and a degraded one being recovered.
    Recovering,
    /// No backend optimal.
    Failed,
}

impl RaidStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RaidStatus::Optimal => "optimal",
            RaidStatus::Degraded => "degraded",
            RaidStatus::Recovering => "recovering",
            RaidStatus::Failed => "failed",
        }
    }
}

/// A connected client, as the fan-out sees it.
struct Subscriber {
    outbound: mpsc::Sender<Outgoing>,
    /// Closes the client's session (a client that cannot keep up, or fail
    /// mode "close").
    close: CancellationToken,
}

/// What one backend is known to be.
struct MemberState {
    health: Health,
    connected: bool,
    /// The storage's last tid when it (re)connected, then the last tid
    /// committed to it through zeoraid.
    last_tid: Option<Tid>,
    /// Why the last connection attempt failed or the connection dropped.
    last_error: Option<String>,
}

/// Everything under the core lock, so that registering a client, reading
/// the last tid, fanning out a commit and changing health are atomic
/// together.
struct Inner {
    history: InvalidationHistory,
    subscribers: HashMap<ClientId, Subscriber>,
    members: Vec<MemberState>,
    /// The most recent `info` dict (`length`, `size`) from a backend.
    last_info: Option<Value>,
    oids: OidAllocator,
}

/// The persisted state and its file; its lock is taken before the core
/// lock whenever both are needed.
struct Persisted {
    state: PersistentState,
    file: StateFile,
    /// Set when the file could not be written: commits are refused, since
    /// a degraded backend could no longer be remembered across a restart.
    broken: Option<String>,
}

impl Persisted {
    /// Records a backend as degraded and saves the state.
    fn record_degraded(&mut self, name: &str, reason: &str, since: u64) -> std::io::Result<()> {
        self.state.degraded.insert(
            name.to_owned(),
            DegradedRecord {
                reason: reason.to_owned(),
                since,
            },
        );
        self.file.save(&self.state)
    }
}

/// The part of the core that backend observers reach.
struct Shared {
    names: Vec<String>,
    inner: Mutex<Inner>,
    persisted: Mutex<Persisted>,
    /// Set once start-up has decided every backend's health; before that,
    /// connects and disconnects are only recorded.
    started: AtomicBool,
    /// Set when zeoraid shuts down: the backend connections it closes then
    /// are not failures.
    stopping: AtomicBool,
    /// Wakes start-up when a backend reports.
    reported: Notify,
    /// Set while a tpc_finish is in flight: the `info` backends send then
    /// belongs to the committer, not to every client.
    finishing: AtomicBool,
    min_optimal: usize,
    fail_mode: FailMode,
    stats: Stats,
    blobs: blobs::BlobDownloads,
}

pub struct Raid {
    storage_name: String,
    backends: Vec<Backend>,
    /// A second connection per backend for blob downloads: a ZEO server
    /// streaming a blob answers nothing else on that connection.
    download_links: Vec<Backend>,
    shared: Arc<Shared>,
    /// Serialises transactions from vote to finish/abort: commits reach
    /// every backend in the same order, and the tid clock is read under it.
    commit_lock: Arc<tokio::sync::Mutex<()>>,
    /// Transaction ids used on backend connections.
    next_backend_txn: AtomicI64,
    /// Round-robin position for reads.
    read_cursor: AtomicUsize,
    read_only: bool,
    commit_timeout: Duration,
    recovery_settings: RecoverySettings,
    /// Where blob files fetched for recoveries are spooled.
    spool_dir: std::path::PathBuf,
    /// Blob files fetched for clients' loads.
    blob_cache: blob_cache::BlobCache,
    /// The blob directory shared with clients, if any.
    blob_dir: Option<SharedBlobDir>,
    /// Each backend's blob directory, where zeoraid may write to it.
    backend_blob_dirs: Vec<Option<SharedBlobDir>>,
    blob_copies: backend_blob_dirs::BackendBlobCopies,
    /// A running recovery or pack (they exclude each other).
    maintenance: Arc<Mutex<Maintenance>>,
    /// The current or last recovery, for `raid_recovery`.
    last_recovery: Mutex<Option<Arc<RecoveryProgress>>>,
}

impl Raid {
    /// Opens every backend in parallel and decides their health: backends
    /// recorded as degraded stay degraded; backends unreachable within the
    /// connect timeout, or behind the newest, are degraded. Fails when no
    /// backend can be optimal.
    pub async fn start(config: &Config) -> Result<Arc<Raid>, String> {
        let file = StateFile::new(&config.server.state_dir);
        let persisted_state = file
            .load()
            .map_err(|e| format!("cannot read the RAID state: {e}"))?;
        let cache_dir = config.blob_cache.dir(&config.server.state_dir);
        let blob_cache = blob_cache::BlobCache::open(&cache_dir, config.blob_cache.size)
            .map_err(|e| format!("cannot open the blob cache {}: {e}", cache_dir.display()))?;
        let blob_dir = match &config.server.blob_dir {
            Some(dir) => Some(SharedBlobDir::open(dir)?),
            None => None,
        };
        let blob_copies = backend_blob_dirs::BackendBlobCopies::open(&config.server.state_dir)
            .map_err(|e| format!("cannot clean up blob copies: {e}"))?;
        // An unusable backend blob directory degrades its backend below.
        let (backend_blob_dirs, unusable_blob_dirs): (Vec<_>, Vec<_>) = config
            .backends
            .iter()
            .map(
                |b| match b.blob_dir.as_deref().map(SharedBlobDir::existing) {
                    None => (None, None),
                    Some(Ok(dir)) => (Some(dir), None),
                    Some(Err(reason)) => (None, Some(reason)),
                },
            )
            .unzip();
        let names: Vec<String> = config.backends.iter().map(|b| b.name.clone()).collect();
        let shared = Arc::new(Shared {
            names: names.clone(),
            inner: Mutex::new(Inner {
                history: InvalidationHistory::new(Tid::ZERO, config.server.invalidation_queue_size),
                subscribers: HashMap::new(),
                members: names
                    .iter()
                    .map(|_| MemberState {
                        health: Health::Optimal,
                        connected: false,
                        last_tid: None,
                        last_error: None,
                    })
                    .collect(),
                last_info: None,
                oids: OidAllocator::new(persisted_state.oids_reserved, 0),
            }),
            persisted: Mutex::new(Persisted {
                state: persisted_state,
                file,
                broken: None,
            }),
            started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            reported: Notify::new(),
            finishing: AtomicBool::new(false),
            min_optimal: config.server.min_optimal,
            fail_mode: config.server.fail_mode,
            stats: Stats::default(),
            blobs: blobs::BlobDownloads::new(config.backends.len()),
        });
        let timeouts = &config.timeouts;
        let settings: Vec<BackendSettings> = config
            .backends
            .iter()
            .map(|backend| BackendSettings {
                name: backend.name.clone(),
                address: backend.address.clone(),
                storage: backend.storage.clone(),
                connect_timeout: timeouts.connect(),
                call_timeout: timeouts.call(),
                heartbeat_interval: timeouts.heartbeat(),
                max_frame_size: config.server.max_frame_size,
            })
            .collect();
        let backends: Vec<Backend> = settings
            .iter()
            .enumerate()
            .map(|(index, settings)| {
                let observer = Arc::new(Observer {
                    shared: Arc::downgrade(&shared),
                    index,
                });
                Backend::spawn(settings.clone(), observer)
            })
            .collect();
        let download_links = settings
            .into_iter()
            .enumerate()
            .map(|(index, mut settings)| {
                settings.name = format!("{} (blob downloads)", settings.name);
                let observer =
                    Arc::new(blobs::DownloadObserver::new(Arc::downgrade(&shared), index));
                Backend::spawn(settings, observer)
            })
            .collect();
        let raid = Arc::new(Raid {
            storage_name: config.server.storage.clone(),
            backends,
            download_links,
            shared,
            commit_lock: Arc::new(tokio::sync::Mutex::new(())),
            next_backend_txn: AtomicI64::new(1),
            read_cursor: AtomicUsize::new(0),
            read_only: config.server.read_only,
            commit_timeout: timeouts.commit(),
            recovery_settings: config.recovery.clone(),
            spool_dir: config.server.state_dir.clone(),
            blob_cache,
            blob_dir,
            backend_blob_dirs,
            blob_copies,
            maintenance: Arc::new(Mutex::new(Maintenance::Idle)),
            last_recovery: Mutex::new(None),
        });
        raid.wait_for_backends(timeouts.connect() + Duration::from_millis(500))
            .await;
        if let Err(reason) = raid.decide_initial_health().await {
            raid.shutdown();
            return Err(reason);
        }
        for (index, reason) in unusable_blob_dirs.iter().enumerate() {
            if let Some(reason) = reason {
                if raid.is_optimal(index) {
                    raid.degrade(index, reason);
                }
            }
        }
        raid.check_blob_support().await;
        if let Err(reason) = raid.fill_shared_blob_dir().await {
            raid.shutdown();
            return Err(reason);
        }
        Ok(raid)
    }

    /// Waits until every backend has connected or failed once, at most
    /// `timeout`: one unreachable backend never delays start-up longer.
    async fn wait_for_backends(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.reported.notified();
            let all_reported = self
                .shared
                .inner
                .lock()
                .members
                .iter()
                .all(|m| m.connected || m.last_error.is_some());
            if all_reported {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    async fn decide_initial_health(&self) -> Result<(), String> {
        let shared = &self.shared;
        let now = unix_now();
        let newest = {
            let mut persisted = shared.persisted.lock();
            let mut inner = shared.inner.lock();
            for (index, member) in inner.members.iter_mut().enumerate() {
                let name = &shared.names[index];
                if let Some(record) = persisted.state.degraded.get(name) {
                    member.health = Health::Degraded {
                        reason: record.reason.clone(),
                        since: record.since,
                    };
                } else if !member.connected {
                    let reason = format!(
                        "unreachable at start-up: {}",
                        member.last_error.as_deref().unwrap_or("no answer")
                    );
                    member.health = Health::Degraded { reason, since: now };
                }
            }
            let newest = inner
                .members
                .iter()
                .filter(|m| m.health == Health::Optimal)
                .filter_map(|m| m.last_tid)
                .max();
            if let Some(newest) = newest {
                for member in inner.members.iter_mut() {
                    if member.health == Health::Optimal && member.last_tid < Some(newest) {
                        let reason = format!(
                            "missing transactions: last tid {}, newest {newest}",
                            member.last_tid.unwrap_or_default()
                        );
                        member.health = Health::Degraded { reason, since: now };
                    }
                }
            }
            // Record the verdicts before serving anything; a start-up that
            // cannot serve records nothing, so that the backends it could
            // not reach are judged afresh next time.
            if newest.is_some() {
                for (index, member) in inner.members.iter().enumerate() {
                    if let Health::Degraded { reason, since } = &member.health {
                        persisted.state.degraded.insert(
                            shared.names[index].clone(),
                            DegradedRecord {
                                reason: reason.clone(),
                                since: *since,
                            },
                        );
                    }
                }
                persisted.file.save(&persisted.state).map_err(|e| {
                    format!("cannot write {}: {e}", persisted.file.path().display())
                })?;
            }
            if let Some(newest) = newest {
                inner.history.reset(newest);
            }
            shared.started.store(true, Ordering::SeqCst);
            newest
        };
        for (index, name) in shared.names.iter().enumerate() {
            let inner = shared.inner.lock();
            match &inner.members[index].health {
                Health::Optimal => info!(backend = %name, "backend optimal"),
                Health::Degraded { reason, .. } => {
                    warn!(backend = %name, %reason, "backend degraded")
                }
            }
        }
        if newest.is_none() {
            return Err(format!(
                "no backend can be used: {}",
                self.details()
                    .iter()
                    .map(|(name, text)| format!("{name} {text}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        // Start the oid counter above every optimal backend's own.
        let mut backend_next = 0;
        for (_, backend) in self.optimal_members() {
            if let Ok(reply) = backend.call("new_oids", vec![Value::Int(1)]).await {
                let first = reply
                    .as_seq()
                    .and_then(|oids| oids.first())
                    .and_then(Tid::from_value);
                // The probe's oid is unused on the backend: the next to hand out.
                backend_next = backend_next.max(first.map_or(0, |oid| oid.0));
            }
        }
        let persisted = shared.persisted.lock().state.oids_reserved;
        shared.inner.lock().oids = OidAllocator::new(persisted, backend_next);
        Ok(())
    }

    pub fn storage_name(&self) -> &str {
        &self.storage_name
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn commit_timeout(&self) -> Duration {
        self.commit_timeout
    }

    fn optimal_count(&self) -> usize {
        self.shared.optimal_count()
    }

    pub fn status(&self) -> RaidStatus {
        let optimal = self.optimal_count();
        if optimal == self.backends.len() {
            RaidStatus::Optimal
        } else if optimal == 0 {
            RaidStatus::Failed
        } else if self.running_recovery().is_some() {
            RaidStatus::Recovering
        } else {
            RaidStatus::Degraded
        }
    }

    /// Each backend's name and state text, `optimal`, `recovering:
    /// progress` or `degraded: reason (since time)`.
    pub fn details(&self) -> Vec<(String, String)> {
        let recovering = self
            .running_recovery()
            .and_then(|(target, _)| Some((target, self.last_recovery()?.describe())));
        let inner = self.shared.inner.lock();
        self.shared
            .names
            .iter()
            .zip(&inner.members)
            .enumerate()
            .map(|(index, (name, member))| {
                let text = match &member.health {
                    Health::Optimal => "optimal".to_owned(),
                    Health::Degraded { .. }
                        if recovering.as_ref().is_some_and(|(t, _)| *t == index) =>
                    {
                        let (_, progress) = recovering.as_ref().expect("checked");
                        format!("recovering: {progress}")
                    }
                    Health::Degraded { reason, since } => {
                        format!("degraded: {reason} (since {})", iso_time(*since))
                    }
                };
                (name.clone(), text)
            })
            .collect()
    }

    /// Whether new clients are served: some backend is optimal, and fail
    /// mode "close" is not in force.
    pub fn accepts_clients(&self) -> bool {
        let optimal = self.optimal_count();
        optimal > 0
            && (optimal >= self.shared.min_optimal || self.shared.fail_mode == FailMode::ReadOnly)
    }

    pub fn is_optimal(&self, index: usize) -> bool {
        self.shared.inner.lock().members[index].health == Health::Optimal
    }

    pub fn backend(&self, index: usize) -> &Backend {
        &self.backends[index]
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub(crate) fn optimal_members(&self) -> Vec<(usize, Backend)> {
        let inner = self.shared.inner.lock();
        inner
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.health == Health::Optimal)
            .map(|(index, _)| (index, self.backends[index].clone()))
            .collect()
    }

    /// The backend for the next read: optimal backends in turn, so read
    /// load is shared.
    pub fn read_member(&self) -> Option<(usize, Backend)> {
        // On every read: pick under the lock without collecting the
        // optimal backends into a list.
        let inner = self.shared.inner.lock();
        let is_optimal = |m: &MemberState| m.health == Health::Optimal;
        let count = inner.members.iter().filter(|m| is_optimal(m)).count();
        if count == 0 {
            return None;
        }
        let turn = self.read_cursor.fetch_add(1, Ordering::Relaxed) % count;
        let (index, _) = inner
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| is_optimal(m))
            .nth(turn)?;
        Some((index, self.backends[index].clone()))
    }

    /// The backends a commit goes to, or why there is none to go to.
    pub fn write_members(&self) -> Result<Vec<(usize, Backend)>, ZeoError> {
        if let Some(reason) = &self.shared.persisted.lock().broken {
            return Err(ZeoError::storage(format!(
                "commits are refused: the RAID state cannot be saved: {reason}"
            )));
        }
        let members = self.optimal_members();
        if members.len() < self.shared.min_optimal {
            return Err(match self.shared.fail_mode {
                FailMode::ReadOnly => ZeoError::read_only(),
                FailMode::Close => ZeoError::storage(format!(
                    "{} of {} backends optimal, {} needed for a commit",
                    members.len(),
                    self.backends.len(),
                    self.shared.min_optimal
                )),
            });
        }
        Ok(members)
    }

    /// Takes a backend out of service; see [`Shared::degrade`].
    pub fn degrade(&self, index: usize, reason: &str) {
        self.shared.degrade(index, reason);
    }

    fn backend_index(&self, name: &str) -> Result<usize, ZeoError> {
        self.shared
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| ZeoError::value_error(format!("no backend named {name:?}")))
    }

    /// Degrades a backend at an operator's request.
    pub fn disable(&self, name: &str) -> Result<String, ZeoError> {
        let index = self.backend_index(name)?;
        if self
            .running_recovery()
            .is_some_and(|(target, _)| target == index)
        {
            return Err(ZeoError::value_error(format!(
                "{name} is being recovered; it stays degraded until the recovery ends"
            )));
        }
        if !self.is_optimal(index) {
            return Ok(format!("{name} is already degraded"));
        }
        if self.optimal_count() == 1 {
            return Err(ZeoError::value_error(format!(
                "refusing to disable {name}: it is the last optimal backend"
            )));
        }
        self.degrade(index, "disabled by operator");
        Ok(format!("{name} disabled"))
    }

    pub fn last_tid(&self) -> Tid {
        self.shared.inner.lock().history.last_tid()
    }

    /// The tid for the next commit: time-based like FileStorage's, and
    /// later than every tid any backend has. Called under the commit lock.
    fn next_tid(&self) -> Tid {
        let inner = self.shared.inner.lock();
        let newest = inner
            .members
            .iter()
            .filter_map(|m| m.last_tid)
            .chain([inner.history.last_tid()])
            .max()
            .unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        newest.next_after(Tid::from_unix_nanos(now))
    }

    /// Hands out `new_oids(n)`, persisting a reservation first when needed.
    pub fn new_oids(&self, requested: Option<i64>) -> Result<Value, ZeoError> {
        let count = OidAllocator::count(requested);
        let mut persisted = self.shared.persisted.lock();
        let mut inner = self.shared.inner.lock();
        if let Some(reservation) = inner.oids.needs_reservation(count) {
            persisted.state.oids_reserved = reservation;
            persisted.file.save(&persisted.state).map_err(|e| {
                ZeoError::storage(format!("cannot persist the oid reservation: {e}"))
            })?;
            inner.oids.reserved(reservation);
        }
        let oids = inner
            .oids
            .allocate(count)
            .into_iter()
            .map(|oid| Tid(oid).to_value())
            .collect();
        Ok(Value::List(oids))
    }

    /// Adds a client to the fan-out; returns the last tid, read atomically
    /// with the registration so no invalidation is missed.
    pub fn subscribe(
        &self,
        id: ClientId,
        outbound: mpsc::Sender<Outgoing>,
        close: CancellationToken,
    ) -> Tid {
        let mut inner = self.shared.inner.lock();
        inner.subscribers.insert(id, Subscriber { outbound, close });
        inner.history.last_tid()
    }

    pub fn unsubscribe(&self, id: ClientId) {
        self.shared.inner.lock().subscribers.remove(&id);
    }

    pub fn changes_since(&self, tid: Tid) -> Changes {
        self.shared.inner.lock().history.changes_since(tid)
    }

    pub async fn lock_commits(&self) -> OwnedMutexGuard<()> {
        self.commit_lock.clone().lock_owned().await
    }

    fn next_backend_txn(&self) -> i64 {
        self.next_backend_txn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn last_info(&self) -> Option<Value> {
        self.shared.inner.lock().last_info.clone()
    }

    /// Records a transaction of `size` bytes committed through zeoraid and
    /// tells every other client. Called under the commit lock, so tids
    /// arrive in order.
    pub fn committed(&self, committer: ClientId, tid: Tid, oids: Vec<Value>, size: u64) {
        self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Some((_, limiter)) = self.running_recovery() {
            // The recovery has one more transaction to copy: it may.
            limiter.credit(size);
        }
        let mut inner = self.shared.inner.lock();
        let message = Arc::new(Message::one_way(
            "invalidateTransaction",
            vec![tid.to_value(), Value::List(oids.clone())],
        ));
        inner.history.push(tid, oids);
        fan_out(&inner, &message, Some(committer));
    }

    pub fn disconnect_all_clients(&self) {
        self.shared.disconnect_all_clients();
    }

    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for backend in self.backends.iter().chain(&self.download_links) {
            backend.shutdown();
        }
    }
}

impl Shared {
    fn optimal_count(&self) -> usize {
        self.inner
            .lock()
            .members
            .iter()
            .filter(|m| m.health == Health::Optimal)
            .count()
    }

    /// Takes a backend out of service. The degraded set is written to disk
    /// first and only then changed in memory, so no commit can skip the
    /// backend before the skip is recorded.
    fn degrade(&self, index: usize, reason: &str) {
        let name = &self.names[index];
        let since = unix_now();
        let mut persisted = self.persisted.lock();
        if self.inner.lock().members[index].health != Health::Optimal {
            return;
        }
        if let Err(e) = persisted.record_degraded(name, reason, since) {
            error!(error = %e, "cannot save the RAID state; refusing commits from now on");
            persisted.broken = Some(e.to_string());
        }
        let optimal = {
            let mut inner = self.inner.lock();
            inner.members[index].health = Health::Degraded {
                reason: reason.to_owned(),
                since,
            };
            inner
                .members
                .iter()
                .filter(|m| m.health == Health::Optimal)
                .count()
        };
        drop(persisted);
        warn!(backend = %name, %reason, optimal, "backend degraded");
        if optimal == 0 || (optimal < self.min_optimal && self.fail_mode == FailMode::Close) {
            error!(
                optimal,
                min_optimal = self.min_optimal,
                "RAID cannot serve clients; disconnecting them"
            );
            self.disconnect_all_clients();
        }
    }

    /// Returns a recovered backend to service: recorded on disk first, then
    /// in memory. Called under the commit lock, with `last_tid` the RAID's
    /// last transaction, which the backend now holds.
    fn mark_recovered(&self, index: usize, last_tid: Tid) -> Result<(), String> {
        let name = &self.names[index];
        let mut persisted = self.persisted.lock();
        let record = persisted.state.degraded.remove(name);
        if let Err(e) = persisted.file.save(&persisted.state) {
            if let Some(record) = record {
                persisted.state.degraded.insert(name.clone(), record);
            }
            return Err(format!("cannot save the RAID state: {e}"));
        }
        let mut inner = self.inner.lock();
        let member = &mut inner.members[index];
        member.health = Health::Optimal;
        member.last_tid = Some(last_tid);
        Ok(())
    }

    /// Replaces a degraded backend's reason (a failed recovery says why).
    fn set_degraded_reason(&self, index: usize, reason: &str) {
        let name = &self.names[index];
        let since = unix_now();
        let mut persisted = self.persisted.lock();
        let mut inner = self.inner.lock();
        let member = &mut inner.members[index];
        if member.health == Health::Optimal {
            return;
        }
        member.health = Health::Degraded {
            reason: reason.to_owned(),
            since,
        };
        drop(inner);
        if let Err(e) = persisted.record_degraded(name, reason, since) {
            error!(error = %e, "cannot save the RAID state");
        }
    }

    /// Returns a backend to service when it is safe without recovery: no
    /// backend was optimal (so nothing was committed since it left) and it
    /// is back with exactly the last tid zeoraid committed.
    fn readmit_if_current(&self, index: usize, last_tid: Tid) {
        let mut persisted = self.persisted.lock();
        {
            let inner = self.inner.lock();
            let none_optimal = inner.members.iter().all(|m| m.health != Health::Optimal);
            if !none_optimal
                || last_tid != inner.history.last_tid()
                || inner.members[index].health == Health::Optimal
            {
                return;
            }
        }
        let name = &self.names[index];
        persisted.state.degraded.remove(name);
        if let Err(e) = persisted.file.save(&persisted.state) {
            error!(error = %e, "cannot save the RAID state");
            return;
        }
        self.inner.lock().members[index].health = Health::Optimal;
        info!(backend = %name, %last_tid, "backend is back with every committed transaction; optimal again");
    }

    fn disconnect_all_clients(&self) {
        for subscriber in self.inner.lock().subscribers.values() {
            subscriber.close.cancel();
        }
    }
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

/// Receives one backend's events.
struct Observer {
    shared: Weak<Shared>,
    index: usize,
}

impl BackendObserver for Observer {
    fn connected(&self, backend: &str, last_tid: Tid) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        {
            let mut inner = shared.inner.lock();
            let member = &mut inner.members[self.index];
            member.connected = true;
            member.last_tid = Some(last_tid);
        }
        shared.reported.notify_waiters();
        if shared.started.load(Ordering::SeqCst) {
            shared.readmit_if_current(self.index, last_tid);
            if shared.inner.lock().members[self.index].health != Health::Optimal {
                info!(backend, %last_tid, "backend is reachable again; it stays degraded until it is recovered");
            }
        }
    }

    fn disconnected(&self, _backend: &str, reason: &str) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        {
            let mut inner = shared.inner.lock();
            let member = &mut inner.members[self.index];
            member.connected = false;
            member.last_error = Some(reason.to_owned());
        }
        shared.reported.notify_waiters();
        if shared.started.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) {
            shared.degrade(self.index, &format!("disconnected: {reason}"));
        }
    }

    fn one_way(&self, backend: &str, message: Message) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        match message.name.as_str() {
            "invalidateTransaction" => {
                // zeoraid's connection commits its own transactions, so a
                // backend only sends this for someone else's commit.
                let tid = message
                    .args
                    .as_seq()
                    .and_then(|args| args.first())
                    .and_then(Tid::from_value)
                    .unwrap_or_default();
                error!(backend, %tid, "a transaction zeoraid did not commit appeared on the backend");
                shared.degrade(
                    self.index,
                    &format!("transaction {tid} was committed on it by another client"),
                );
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
                let mut inner = shared.inner.lock();
                // A degraded backend's size (one being recovered, say) is
                // not the RAID's.
                if inner.members[self.index].health != Health::Optimal {
                    return;
                }
                inner.last_info = Some(info.clone());
                // Outside a commit (after a pack) every client is told.
                if !shared.finishing.load(Ordering::SeqCst) {
                    let message = Arc::new(Message::one_way("info", vec![info]));
                    fan_out(&inner, &message, None);
                }
            }
            // A download while the download connection is down.
            "receiveBlobStart" | "receiveBlobChunk" | "receiveBlobStop" => {
                shared.blobs.message(self.index, &message)
            }
            other => warn!(
                backend,
                message = other,
                "unexpected message from backend ignored"
            ),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-11-29T00:31:02Z`.
fn iso_time(unix: u64) -> String {
    let t = crate::protocol::tid::UtcTime::from_unix(unix as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}
