//! Online recovery: copying the history a degraded backend misses from an
//! optimal one, while clients keep committing, then returning it to
//! service.
//!
//! One recovery runs at a time (see [`Maintenance`]), in four steps:
//!
//! 1. Verify. The target's newest transaction must be the source's
//!    transaction of the same tid, records included (with `full_verify`
//!    every transaction of the target is compared). A target whose history
//!    differs is never written to: the operator gives it an empty storage.
//! 2. Copy. The source's server-side iterator is read in one pass from the
//!    first missing tid; a reader task streams transactions to a writer
//!    task that replays them on the target (`tpc_begin` with the source's
//!    tid, status and metadata, one `restorea` per record keeping its
//!    `data_txn` back-pointer, `vote`, `tpc_finish`), pipelined so that
//!    the source is read while the target writes. The rate limit applies
//!    here; live commits earn it credit (see `rate`).
//! 3. Catch up. Passes repeat, each from where the last ended, until one
//!    finds only a few new transactions.
//! 4. Finish. Under the commit lock the last transactions are copied and
//!    the target is returned to service; no commit can fall between the
//!    copy and the switch.
//!
//! A failing source is degraded and the recovery goes on from another
//! optimal backend; a failing target ends the recovery and stays degraded
//! with the reason. Nothing here is persisted: a target's history is its
//! own progress record, so a recovery interrupted by a restart resumes
//! after the target's newest transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::blob_copy::{CopyAs, HeldRecords};
use super::blob_dir::SharedBlobDir;
use super::blobs::{blob_support, NO_BLOB_SUPPORT};
use super::commit::{same_value, send_blob_file};
use super::rate::{Limits, RateLimiter};
use super::Raid;
use crate::backend::{Backend, CallError, PendingReply};
use crate::display::{byte_size, transactions};
use crate::protocol::{Tid, Value, ZeoError};

/// A catch-up pass that copied at most this many transactions is followed
/// by the final pass under the commit lock (which holds up commits while
/// it copies).
const FINAL_PASS_THRESHOLD: u64 = 100;

/// Blob files fetched for a copy are spooled under this prefix (removed
/// at start-up if a crash leaves them, with the clients' blob spools).
const BLOB_COPY_PREFIX: &str = "zeoraid-blob-copy-";

/// Catch-up passes in a row that did not shrink before the final pass
/// is run anyway.
const STALLED_PASSES_BEFORE_FINAL: u32 = 3;

/// Transactions, records and ends of transactions in flight between the
/// reader and the writer.
const PIPELINE_ITEMS: usize = 1024;

/// Record bytes in flight between the reader and the writer: memory stays
/// bounded whatever the transaction sizes.
const PIPELINE_BYTES: usize = 32 << 20;

/// What runs besides commits; a recovery and a pack exclude each other.
pub(super) enum Maintenance {
    Idle,
    /// Packs running (a second pack queues on the commit lock).
    Packing(usize),
    Recovering {
        target: usize,
        limiter: Arc<RateLimiter>,
    },
}

/// Holds the maintenance slot; frees it when dropped.
pub struct MaintenanceSlot {
    slot: Arc<Mutex<Maintenance>>,
}

impl MaintenanceSlot {
    pub(super) fn new(slot: Arc<Mutex<Maintenance>>) -> MaintenanceSlot {
        MaintenanceSlot { slot }
    }
}

impl Drop for MaintenanceSlot {
    fn drop(&mut self) {
        let mut slot = self.slot.lock();
        *slot = match *slot {
            Maintenance::Packing(packs) if packs > 1 => Maintenance::Packing(packs - 1),
            _ => Maintenance::Idle,
        };
    }
}

/// How an operator asked for a recovery; limits not given come from the
/// configuration.
#[derive(Clone, Debug, Default)]
pub struct RecoveryOptions {
    pub full_verify: bool,
    pub transactions_per_second: Option<u64>,
    pub bytes_per_second: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Verifying,
    Copying,
    Finishing,
    Done,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Verifying => "verifying",
            Phase::Copying => "copying",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

/// A recovery's progress, as `raid_recovery` and `raid_details` show it.
pub struct RecoveryProgress {
    target: String,
    full_verify: bool,
    limits: Limits,
    started: SystemTime,
    state: Mutex<ProgressState>,
}

struct ProgressState {
    source: String,
    phase: Phase,
    verified: u64,
    copied: u64,
    bytes: u64,
    /// The newest transaction the target holds (verified or copied).
    reached: Tid,
    finished: Option<SystemTime>,
    error: Option<String>,
    /// Taken once a second, for the rates and the estimate.
    samples: VecDeque<Sample>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    copied: u64,
    bytes: u64,
    /// The storages' sizes (bytes).
    source_size: Option<u64>,
    target_size: Option<u64>,
}

/// The rate is measured over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl RecoveryProgress {
    fn new(target: &str, source: &str, full_verify: bool, limits: Limits) -> RecoveryProgress {
        RecoveryProgress {
            target: target.to_owned(),
            full_verify,
            limits,
            started: SystemTime::now(),
            state: Mutex::new(ProgressState {
                source: source.to_owned(),
                phase: Phase::Verifying,
                verified: 0,
                copied: 0,
                bytes: 0,
                reached: Tid::ZERO,
                finished: None,
                error: None,
                samples: VecDeque::new(),
            }),
        }
    }

    fn set_source(&self, source: &str) {
        self.state.lock().source = source.to_owned();
    }

    fn set_phase(&self, phase: Phase) {
        self.state.lock().phase = phase;
    }

    fn verified(&self, tid: Tid) {
        let mut state = self.state.lock();
        state.verified += 1;
        state.reached = tid;
    }

    fn copied(&self, tid: Tid, bytes: u64) {
        let mut state = self.state.lock();
        state.copied += 1;
        state.bytes += bytes;
        state.reached = tid;
    }

    /// Records the counters and the storages' sizes now.
    fn sample(&self, source_size: Option<u64>, target_size: Option<u64>) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let sample = Sample {
            at: now,
            copied: state.copied,
            bytes: state.bytes,
            source_size,
            target_size,
        };
        state.samples.push_back(sample);
        while state.samples.len() > 2 && now.duration_since(state.samples[1].at) >= RATE_WINDOW {
            state.samples.pop_front();
        }
    }

    fn end(&self, phase: Phase, error: Option<String>) {
        let mut state = self.state.lock();
        state.phase = phase;
        state.error = error;
        state.finished = Some(SystemTime::now());
    }

    /// (transactions/s, bytes/s, seconds left) over the recent window.
    fn rates(state: &ProgressState) -> (f64, f64, Option<f64>) {
        let (Some(first), Some(last)) = (state.samples.front(), state.samples.back()) else {
            return (0.0, 0.0, None);
        };
        let seconds = last.at.duration_since(first.at).as_secs_f64();
        if seconds < 0.5 || state.finished.is_some() {
            return (0.0, 0.0, None);
        }
        let txn_rate = (last.copied - first.copied) as f64 / seconds;
        let byte_rate = (last.bytes - first.bytes) as f64 / seconds;
        // The target's storage grows towards the source's, which grows
        // with the live commits: how fast the gap closed lately tells how
        // long the rest takes (unknown while it does not close).
        let eta = match (
            first.source_size,
            last.source_size,
            first.target_size,
            last.target_size,
        ) {
            (Some(source_then), Some(source_now), Some(target_then), Some(target_now))
                if state.phase == Phase::Copying =>
            {
                let gap_then = source_then as f64 - target_then as f64;
                let gap_now = source_now as f64 - target_now as f64;
                let closing = (gap_then - gap_now) / seconds;
                (closing > 0.0).then(|| gap_now.max(0.0) / closing)
            }
            _ => None,
        };
        (txn_rate, byte_rate, eta)
    }

    /// The `raid_recovery` dict.
    pub fn to_value(&self) -> Value {
        let state = self.state.lock();
        let (txn_rate, byte_rate, eta) = RecoveryProgress::rates(&state);
        let running = state.finished.is_none();
        let entry = |key: &str, value: Value| (Value::str(key), value);
        Value::Dict(vec![
            entry("backend", Value::str(&self.target)),
            entry("source", Value::str(&state.source)),
            entry(
                "state",
                Value::str(match state.phase {
                    _ if running => "running",
                    Phase::Done => "done",
                    _ => "failed",
                }),
            ),
            entry("phase", Value::str(state.phase.as_str())),
            entry("full_verify", Value::Bool(self.full_verify)),
            entry("transactions_verified", Value::Int(state.verified as i64)),
            entry("transactions_copied", Value::Int(state.copied as i64)),
            entry("bytes_copied", Value::Int(state.bytes as i64)),
            entry("tid", Value::Str(state.reached.to_string())),
            entry("transactions_per_second", Value::Float(txn_rate)),
            entry("bytes_per_second", Value::Float(byte_rate)),
            entry("eta_seconds", eta.map_or(Value::None, Value::Float)),
            entry(
                "limits",
                Value::Dict(vec![
                    entry(
                        "transactions_per_second",
                        Value::Int(self.limits.transactions_per_second as i64),
                    ),
                    entry(
                        "bytes_per_second",
                        Value::Int(self.limits.bytes_per_second as i64),
                    ),
                ]),
            ),
            entry("started", Value::Float(unix_seconds(self.started))),
            entry(
                "finished",
                state
                    .finished
                    .map_or(Value::None, |t| Value::Float(unix_seconds(t))),
            ),
            entry(
                "error",
                state.error.as_ref().map_or(Value::None, Value::str),
            ),
        ])
    }

    /// One line for `raid_details` and the log.
    pub fn describe(&self) -> String {
        let state = self.state.lock();
        let (txn_rate, byte_rate, eta) = RecoveryProgress::rates(&state);
        let mut text = format!(
            "{} from {}, {} verified, {} ({}) copied, at {}",
            state.phase.as_str(),
            state.source,
            transactions(state.verified),
            transactions(state.copied),
            byte_size(state.bytes as f64),
            state.reached
        );
        if txn_rate > 0.0 {
            text.push_str(&format!(
                ", {txn_rate:.0} transactions/s ({}/s)",
                byte_size(byte_rate)
            ));
        }
        if let Some(eta) = eta {
            text.push_str(&format!(", about {} left", duration_text(eta)));
        }
        text
    }
}

/// Why a recovery step stopped.
enum Failure {
    /// The source failed or answered nonsense: degrade it, go on with
    /// another.
    Source(String),
    /// Anything else ends the recovery.
    Fatal(String),
}

impl Raid {
    /// Starts recovering the degraded backend `name` in the background.
    pub fn recover(
        self: &Arc<Self>,
        name: &str,
        options: RecoveryOptions,
    ) -> Result<String, ZeoError> {
        let target = self.backend_index(name)?;
        if self.is_optimal(target) {
            return Err(ZeoError::value_error(format!(
                "{name} is optimal; only a degraded backend can be recovered"
            )));
        }
        if !self.backends[target].is_connected() {
            let reason = self.shared.inner.lock().members[target].last_error.clone();
            return Err(ZeoError::value_error(format!(
                "{name} is not reachable ({}); start its ZEO server, then recover it",
                reason.as_deref().unwrap_or("not connected")
            )));
        }
        let source = self
            .pick_source()
            .ok_or_else(|| ZeoError::value_error("no optimal backend to copy from".to_owned()))?;
        let settings = &self.recovery_settings;
        let limits = Limits {
            transactions_per_second: options
                .transactions_per_second
                .unwrap_or(settings.transactions_per_second),
            bytes_per_second: options
                .bytes_per_second
                .unwrap_or(settings.bytes_per_second),
        };
        let limiter = Arc::new(RateLimiter::new(limits));
        let slot = {
            let mut maintenance = self.maintenance.lock();
            match &*maintenance {
                Maintenance::Recovering { target, .. } => {
                    return Err(ZeoError::value_error(format!(
                        "recovery of {} is already running",
                        self.shared.names[*target]
                    )))
                }
                Maintenance::Packing(_) => {
                    return Err(ZeoError::value_error(
                        "a pack is running; recover when it is done".to_owned(),
                    ))
                }
                Maintenance::Idle => {}
            }
            *maintenance = Maintenance::Recovering {
                target,
                limiter: limiter.clone(),
            };
            MaintenanceSlot::new(self.maintenance.clone())
        };
        let source_name = self.shared.names[source].clone();
        let progress = Arc::new(RecoveryProgress::new(
            name,
            &source_name,
            options.full_verify,
            limits,
        ));
        *self.last_recovery.lock() = Some(progress.clone());
        info!(
            backend = name,
            source = %source_name,
            full_verify = options.full_verify,
            transactions_per_second = limits.transactions_per_second,
            bytes_per_second = limits.bytes_per_second,
            "recovery started"
        );
        tokio::spawn(run(self.clone(), target, progress, limiter, slot));
        Ok(format!("recovery of {name} started from {source_name}"))
    }

    /// The current or last recovery since zeoraid started.
    pub fn last_recovery(&self) -> Option<Arc<RecoveryProgress>> {
        self.last_recovery.lock().clone()
    }

    /// Takes the maintenance slot for a pack, unless a recovery holds it.
    pub fn start_pack(&self) -> Result<MaintenanceSlot, ZeoError> {
        let mut maintenance = self.maintenance.lock();
        let packs = match &*maintenance {
            Maintenance::Recovering { target, .. } => {
                return Err(ZeoError::storage(format!(
                    "pack refused: backend {} is being recovered; pack when the recovery is done",
                    self.shared.names[*target]
                )))
            }
            Maintenance::Packing(packs) => *packs,
            Maintenance::Idle => 0,
        };
        *maintenance = Maintenance::Packing(packs + 1);
        Ok(MaintenanceSlot::new(self.maintenance.clone()))
    }

    /// The running recovery's target and rate limiter.
    pub(super) fn running_recovery(&self) -> Option<(usize, Arc<RateLimiter>)> {
        match &*self.maintenance.lock() {
            Maintenance::Recovering { target, limiter } => Some((*target, limiter.clone())),
            _ => None,
        }
    }

    /// The first optimal, connected backend.
    fn pick_source(&self) -> Option<usize> {
        self.optimal_members()
            .into_iter()
            .find(|(_, backend)| backend.is_connected())
            .map(|(index, _)| index)
    }
}

/// The recovery task.
async fn run(
    raid: Arc<Raid>,
    target: usize,
    progress: Arc<RecoveryProgress>,
    limiter: Arc<RateLimiter>,
    slot: MaintenanceSlot,
) {
    let watching = CancellationToken::new();
    tokio::spawn(watch(
        raid.clone(),
        target,
        progress.clone(),
        watching.clone(),
    ));
    let outcome = recover(&raid, target, &progress, &limiter).await;
    watching.cancel();
    let name = &raid.shared.names[target];
    match outcome {
        Ok(tid) => {
            drop(slot);
            progress.end(Phase::Done, None);
            info!(backend = %name, %tid, progress = %progress.describe(), "recovery done; backend optimal");
        }
        Err(reason) => {
            let reason = if raid
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                format!("interrupted by zeoraid's shutdown; recover it again to resume ({reason})")
            } else {
                reason
            };
            error!(backend = %name, %reason, "recovery failed; backend stays degraded");
            // Status and details agree before raid_recovery says failed.
            raid.shared
                .set_degraded_reason(target, &format!("recovery failed: {reason}"));
            drop(slot);
            progress.end(Phase::Failed, Some(reason));
        }
    }
}

/// Samples the progress once a second (with both storages' sizes, for
/// the estimate) and logs it every `progress_interval`.
async fn watch(
    raid: Arc<Raid>,
    target: usize,
    progress: Arc<RecoveryProgress>,
    stop: CancellationToken,
) {
    let every = raid.recovery_settings.progress_interval();
    let mut logged = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let source = {
            let name = progress.state.lock().source.clone();
            raid.shared.names.iter().position(|n| *n == name)
        };
        let (source_size, target_size) = tokio::join!(
            async {
                match source {
                    Some(source) => storage_size(&raid.backends[source]).await,
                    None => None,
                }
            },
            storage_size(&raid.backends[target])
        );
        progress.sample(source_size, target_size);
        // Ticks come a second apart: log on the one nearest to `every`.
        if logged.elapsed() + Duration::from_millis(500) >= every {
            logged = Instant::now();
            info!(backend = %progress.target, progress = %progress.describe(), "recovering");
        }
    }
}

/// A target must keep blobs when the source does: nothing else could
/// hold the blob files the copy brings.
async fn check_blob_support(raid: &Raid, source: usize, target: usize) -> Result<(), String> {
    let support = |index: usize| async move {
        blob_support(&raid.backends[index])
            .await
            .map_err(|e| format!("get_info on {} failed: {e}", raid.shared.names[index]))
    };
    if support(source).await? && !support(target).await? {
        return Err(NO_BLOB_SUPPORT.to_owned());
    }
    Ok(())
}

/// A backend storage's size in bytes, from `get_info`.
async fn storage_size(backend: &Backend) -> Option<u64> {
    let info = backend.call("get_info", vec![]).await.ok()?;
    info.dict_get("size")?
        .as_int()
        .and_then(|n| u64::try_from(n).ok())
}

/// Verifies, copies and catches up; returns the tid the target was
/// returned to service at.
async fn recover(
    raid: &Raid,
    target: usize,
    progress: &RecoveryProgress,
    limiter: &RateLimiter,
) -> Result<Tid, String> {
    let mut source = raid
        .pick_source()
        .ok_or("no optimal backend left to copy from")?;
    check_blob_support(raid, source, target).await?;
    let mut reached = loop {
        progress.set_source(&raid.shared.names[source]);
        match verify(raid, source, target, progress).await {
            Ok(tid) => break tid,
            Err(Failure::Source(reason)) => source = replace_source(raid, source, &reason)?,
            Err(Failure::Fatal(reason)) => return Err(reason),
        }
    };
    progress.set_phase(Phase::Copying);
    // Passes that copy no fewer transactions than the one before: the live
    // commits outpace the copy's top speed (the rate limit always yields
    // to them). Then the final pass under the commit lock, which holds
    // commits back, is the only way to finish.
    let mut previous_pass = u64::MAX;
    let mut stalled_passes = 0;
    loop {
        let copied = complete_pass(
            raid,
            &mut source,
            target,
            &mut reached,
            Some(limiter),
            progress,
        )
        .await?;
        if copied <= FINAL_PASS_THRESHOLD {
            break;
        }
        stalled_passes = if copied >= previous_pass {
            stalled_passes + 1
        } else {
            0
        };
        previous_pass = copied;
        if stalled_passes >= STALLED_PASSES_BEFORE_FINAL {
            warn!(
                backend = %raid.shared.names[target],
                backlog = copied,
                "commits outpace the recovery; finishing with commits held back"
            );
            break;
        }
    }
    progress.set_phase(Phase::Finishing);
    let _commits = raid.lock_commits().await;
    complete_pass(raid, &mut source, target, &mut reached, None, progress).await?;
    let last = raid.last_tid();
    let target_backend = &raid.backends[target];
    let target_last = last_transaction(target_backend)
        .await
        .map_err(|e| format!("{}: lastTransaction failed: {e}", target_backend.name()))?;
    if reached != last || target_last != last {
        return Err(format!(
            "after the copy {} ends at {target_last} but the RAID's last transaction is {last}",
            target_backend.name()
        ));
    }
    raid.shared.mark_recovered(target, last)?;
    Ok(last)
}

/// Copies from `reached` to the RAID's last tid, from `source` or, when
/// it fails or is degraded meanwhile, from another optimal backend;
/// returns how many transactions were copied.
async fn complete_pass(
    raid: &Raid,
    source: &mut usize,
    target: usize,
    reached: &mut Tid,
    limiter: Option<&RateLimiter>,
    progress: &RecoveryProgress,
) -> Result<u64, String> {
    let mut copied = 0;
    loop {
        if !raid.is_optimal(*source) {
            *source = raid
                .pick_source()
                .ok_or("no optimal backend left to copy from")?;
        }
        progress.set_source(&raid.shared.names[*source]);
        match copy_pass(raid, *source, target, reached, limiter, progress).await {
            Ok(pass) => {
                copied += pass.copied;
                if pass.complete {
                    return Ok(copied);
                }
            }
            Err(Failure::Source(reason)) => *source = replace_source(raid, *source, &reason)?,
            Err(Failure::Fatal(reason)) => return Err(reason),
        }
    }
}

/// Degrades a failed source and picks another.
fn replace_source(raid: &Raid, failed: usize, reason: &str) -> Result<usize, String> {
    let name = &raid.shared.names[failed];
    if raid
        .shared
        .stopping
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        // Its connection was closed by the shutdown: not its fault.
        return Err(format!("interrupted by zeoraid's shutdown ({reason})"));
    }
    if raid.optimal_count() == 1 && raid.is_optimal(failed) {
        // Degrading the last optimal backend for a failed read would stop
        // the RAID; a backend that is really gone is degraded anyway.
        return Err(format!(
            "the source {name} failed ({reason}) and no other optimal backend can be copied from"
        ));
    }
    warn!(backend = %name, %reason, "recovery source failed");
    raid.degrade(failed, &format!("failed as recovery source: {reason}"));
    raid.pick_source().ok_or_else(|| {
        format!("the source {name} failed ({reason}) and no optimal backend is left to copy from")
    })
}

async fn last_transaction(backend: &Backend) -> Result<Tid, CallError> {
    let reply = backend.call("lastTransaction", vec![]).await?;
    Tid::from_value(&reply).ok_or_else(|| {
        CallError::Remote(ZeoError::storage(format!(
            "lastTransaction returned {}",
            reply.summary()
        )))
    })
}

/// Checks that the target's history is a prefix of the source's; returns
/// the target's newest tid (zero for an empty storage).
async fn verify(
    raid: &Raid,
    source: usize,
    target: usize,
    progress: &RecoveryProgress,
) -> Result<Tid, Failure> {
    let target_backend = &raid.backends[target];
    let target_last = last_transaction(target_backend).await.map_err(|e| {
        Failure::Fatal(format!(
            "{}: lastTransaction failed: {e}",
            target_backend.name()
        ))
    })?;
    if target_last == Tid::ZERO {
        return Ok(Tid::ZERO);
    }
    if !progress.full_verify {
        if let Some(tid) = compare_range(
            raid,
            source,
            target,
            Some(target_last),
            target_last,
            progress,
        )
        .await?
        {
            return Ok(tid);
        }
        // FileStorage that cut a torn transaction off at start-up (a kill
        // mid-write) still reports that transaction as its last: where
        // the target really ends is only found from the start.
        warn!(
            backend = target_backend.name(),
            last = %target_last,
            "the backend does not hold the transaction it reports as its last; verifying its whole history"
        );
    }
    let matched = compare_range(raid, source, target, None, target_last, progress).await?;
    Ok(matched.unwrap_or(Tid::ZERO))
}

/// Compares both histories from `start` (or the beginning) to `stop`;
/// returns the last tid they share, or None if the target holds nothing
/// in the range.
async fn compare_range(
    raid: &Raid,
    source: usize,
    target: usize,
    start: Option<Tid>,
    stop: Tid,
    progress: &RecoveryProgress,
) -> Result<Option<Tid>, Failure> {
    let source_backend = &raid.backends[source];
    let target_backend = &raid.backends[target];
    let timeout = raid.commit_timeout();
    let mut theirs = ServerIterator::start(source_backend, start, Some(stop), timeout)
        .await
        .map_err(|e| Failure::Source(e.to_string()))?;
    let mut ours = ServerIterator::start(target_backend, start, Some(stop), timeout)
        .await
        .map_err(|e| Failure::Fatal(format!("{}: {e}", target_backend.name())))?;
    let outcome = compare(&mut theirs, &mut ours, progress).await;
    theirs.close().await;
    ours.close().await;
    match outcome {
        Ok(matched) => Ok(matched),
        Err(Mismatch::Source(e)) => Err(Failure::Source(e)),
        Err(Mismatch::Target(e)) => Err(Failure::Fatal(format!("{}: {e}", target_backend.name()))),
        Err(Mismatch::Differs(tid, what)) => {
            let (s, t) = (source_backend.name(), target_backend.name());
            Err(Failure::Fatal(format!(
                "{t}'s history differs from {s}'s at tid {tid}: {what}; \
                 give {t} an empty storage and recover it again"
            )))
        }
    }
}

/// What differs when the target holds a transaction the source lacks;
/// a pack while the target was degraded is the innocent cause.
const NOT_IN_SOURCE: &str =
    "the source has no such transaction (a pack since the target was degraded removes some)";

enum Mismatch {
    Source(String),
    Target(String),
    Differs(Tid, String),
}

/// Walks both iterators in step, transaction by transaction and record
/// by record; returns the last tid both hold. A target that ends first
/// holds a prefix of the source's history: that is no difference.
async fn compare(
    theirs: &mut ServerIterator<'_>,
    ours: &mut ServerIterator<'_>,
    progress: &RecoveryProgress,
) -> Result<Option<Tid>, Mismatch> {
    let mut matched = None;
    loop {
        let source_txn = theirs.next_txn().await.map_err(Mismatch::Source)?;
        let target_txn = ours.next_txn().await.map_err(Mismatch::Target)?;
        let (source_txn, target_txn) = match (source_txn, target_txn) {
            (None, None) | (Some(_), None) => return Ok(matched),
            (None, Some(t)) => return Err(Mismatch::Differs(t.tid, NOT_IN_SOURCE.into())),
            (Some(s), Some(t)) => (s, t),
        };
        if source_txn.tid != target_txn.tid {
            let tid = source_txn.tid.min(target_txn.tid);
            let what = if tid == target_txn.tid {
                NOT_IN_SOURCE
            } else {
                "the target lacks this transaction"
            };
            return Err(Mismatch::Differs(tid, what.into()));
        }
        let tid = source_txn.tid;
        if let Some(field) = source_txn.differing_field(&target_txn) {
            return Err(Mismatch::Differs(tid, format!("the {field} differs")));
        }
        theirs
            .start_records(&source_txn)
            .await
            .map_err(Mismatch::Source)?;
        ours.start_records(&target_txn)
            .await
            .map_err(Mismatch::Target)?;
        loop {
            let source_record = theirs.next_record().await.map_err(Mismatch::Source)?;
            let target_record = ours.next_record().await.map_err(Mismatch::Target)?;
            match (source_record, target_record) {
                (None, None) => break,
                (Some(s), Some(t)) => {
                    if let Some(field) = s.differing_field(&t) {
                        return Err(Mismatch::Differs(
                            tid,
                            format!("the {field} of the record of oid {} differs", s.oid_text()),
                        ));
                    }
                }
                _ => {
                    return Err(Mismatch::Differs(
                        tid,
                        "the transactions hold different numbers of records".into(),
                    ))
                }
            }
        }
        progress.verified(tid);
        matched = Some(tid);
    }
}

/// A transaction's header as `iterator_next` returns it.
pub(super) struct TxnHeader {
    pub(super) tid: Tid,
    /// The tid as the backend sent it, for `iterator_record_start`.
    tid_value: Value,
    status: Value,
    user: Value,
    description: Value,
    extension: Value,
}

impl TxnHeader {
    fn parse(reply: Value) -> Result<TxnHeader, String> {
        let malformed = |reply: &Value| format!("iterator_next returned {}", reply.summary());
        let fields = reply.into_seq().map_err(|r| malformed(&r))?;
        let Ok([tid_value, status, user, description, extension]) = <[Value; 5]>::try_from(fields)
        else {
            return Err("iterator_next returned a malformed transaction".into());
        };
        let tid = Tid::from_value(&tid_value).ok_or_else(|| malformed(&tid_value))?;
        Ok(TxnHeader {
            tid,
            tid_value,
            status,
            user,
            description,
            extension,
        })
    }

    fn differing_field(&self, other: &TxnHeader) -> Option<&'static str> {
        [
            ("status", &self.status, &other.status),
            ("user", &self.user, &other.user),
            ("description", &self.description, &other.description),
            ("extension", &self.extension, &other.extension),
        ]
        .into_iter()
        .find(|(_, a, b)| !same_value(a, b))
        .map(|(field, _, _)| field)
    }
}

/// A data record as `iterator_record_next` returns it.
pub(super) struct Record {
    pub(super) oid: Value,
    pub(super) serial: Value,
    /// None for a record that undid an object's creation.
    data: Value,
    /// The transaction whose data this record repeats (undo), or None.
    data_txn: Value,
}

impl Record {
    fn parse(reply: Value) -> Result<Record, String> {
        let fields = reply
            .into_seq()
            .map_err(|r| format!("iterator_record_next returned {}", r.summary()))?;
        let Ok([oid, serial, data, data_txn]) = <[Value; 4]>::try_from(fields) else {
            return Err("iterator_record_next returned a malformed record".into());
        };
        Ok(Record {
            oid,
            serial,
            data,
            data_txn,
        })
    }

    fn size(&self) -> usize {
        self.data.as_bytes().map_or(0, |d| d.len())
    }

    fn oid_text(&self) -> String {
        Tid::from_value(&self.oid).map_or_else(|| self.oid.summary(), |oid| oid.to_string())
    }

    fn differing_field(&self, other: &Record) -> Option<&'static str> {
        [
            ("oid", &self.oid, &other.oid),
            ("serial", &self.serial, &other.serial),
            ("data", &self.data, &other.data),
            ("data_txn", &self.data_txn, &other.data_txn),
        ]
        .into_iter()
        .find(|(_, a, b)| !same_value(a, b))
        .map(|(field, _, _)| field)
    }

    /// Whether the record is a ZODB blob (`ZODB.blob.Blob` pickled as its
    /// class, which is how ZODB itself tells): its file is not in the
    /// record, so copying the record alone would lose it.
    pub(super) fn is_blob(&self) -> bool {
        let Some(data) = self.data.as_bytes() else {
            return false;
        };
        let head = &data[..data.len().min(64)];
        let contains = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
        // GLOBAL (protocols 0-3) or SHORT_BINUNICODE pairs (protocol 4).
        contains(b"ZODB.blob\nBlob\n")
            || (contains(b"\x8c\x09ZODB.blob") && contains(b"\x8c\x04Blob"))
    }
}

/// One server-side transaction iterator on a backend, with its current
/// record iterator.
pub(super) struct ServerIterator<'a> {
    backend: &'a Backend,
    timeout: Duration,
    id: Value,
    records: Option<Value>,
    /// Ids the server still holds (for `iterator_gc` when stopping early).
    open: Vec<Value>,
}

impl<'a> ServerIterator<'a> {
    /// `iterator_start(start, stop)`; the server may take a while to find
    /// `start` in a large storage, hence `timeout`.
    pub(super) async fn start(
        backend: &'a Backend,
        start: Option<Tid>,
        stop: Option<Tid>,
        timeout: Duration,
    ) -> Result<ServerIterator<'a>, String> {
        let bound = |tid: Option<Tid>| tid.map_or(Value::None, Tid::to_value);
        let id = backend
            .call_timeout("iterator_start", vec![bound(start), bound(stop)], timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ServerIterator {
            backend,
            timeout,
            open: vec![id.clone()],
            id,
            records: None,
        })
    }

    async fn call(&self, method: &str, args: Vec<Value>) -> Result<Value, String> {
        self.backend
            .call_timeout(method, args, self.timeout)
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) async fn next_txn(&mut self) -> Result<Option<TxnHeader>, String> {
        let reply = self.call("iterator_next", vec![self.id.clone()]).await?;
        if reply == Value::None {
            // The server dropped the iterator at its end.
            self.open.retain(|id| *id != self.id);
            return Ok(None);
        }
        TxnHeader::parse(reply).map(Some)
    }

    pub(super) async fn start_records(&mut self, txn: &TxnHeader) -> Result<(), String> {
        let id = self
            .call(
                "iterator_record_start",
                vec![self.id.clone(), txn.tid_value.clone()],
            )
            .await?;
        self.open.push(id.clone());
        self.records = Some(id);
        Ok(())
    }

    pub(super) async fn next_record(&mut self) -> Result<Option<Record>, String> {
        let id = self.records.clone().ok_or("no record iterator")?;
        let reply = self.call("iterator_record_next", vec![id.clone()]).await?;
        if reply == Value::None {
            self.open.retain(|open| *open != id);
            self.records = None;
            return Ok(None);
        }
        Record::parse(reply).map(Some)
    }

    /// Frees what the server still holds for this iterator.
    pub(super) async fn close(self) {
        if !self.open.is_empty() {
            let _ = self
                .backend
                .one_way("iterator_gc", vec![Value::List(self.open)])
                .await;
        }
    }
}

/// What the reader hands the writer.
enum Item {
    Begin(TxnHeader),
    /// A record, holding its share of the byte budget until written.
    Record(Record, OwnedSemaphorePermit),
    End,
}

/// Copies the source's transactions after `reached` onto the target,
/// advancing `reached` as the target confirms them; returns how many were
/// copied.
async fn copy_pass(
    raid: &Raid,
    source: usize,
    target: usize,
    reached: &mut Tid,
    limiter: Option<&RateLimiter>,
    progress: &RecoveryProgress,
) -> Result<Pass, Failure> {
    let (items, received) = mpsc::channel(PIPELINE_ITEMS);
    let budget = Arc::new(Semaphore::new(PIPELINE_BYTES));
    let start = (*reached != Tid::ZERO).then(|| Tid(reached.0 + 1));
    // Only what zeoraid has committed: anything later on the source is in
    // flight, or someone else's (which degrades the source).
    let stop = raid.last_tid();
    let reader = read_source(
        &raid.backends[source],
        start,
        stop,
        raid.commit_timeout(),
        items,
        budget,
    );
    let mut writer = TargetWriter {
        raid,
        source,
        target: &raid.backends[target],
        target_blob_dir: raid.backend_blob_dirs[target].as_ref(),
        reached,
        copied: 0,
        source_lost: false,
        progress,
    };
    let (read, written) = tokio::join!(reader, writer.write(received, limiter));
    written.map_err(Failure::Fatal)?;
    if !writer.source_lost {
        read.map_err(Failure::Source)?;
    }
    Ok(Pass {
        copied: writer.copied,
        complete: !writer.source_lost,
    })
}

/// What a copy pass did.
struct Pass {
    copied: u64,
    /// False if the source was degraded meanwhile and the pass stopped.
    complete: bool,
}

/// Streams the source's transactions from `start` (or the beginning) to
/// `stop`. Stops quietly when the writer hangs up.
async fn read_source(
    source: &Backend,
    start: Option<Tid>,
    stop: Tid,
    timeout: Duration,
    items: mpsc::Sender<Item>,
    budget: Arc<Semaphore>,
) -> Result<(), String> {
    let mut iterator = ServerIterator::start(source, start, Some(stop), timeout)
        .await
        .map_err(|e| format!("{}: {e}", source.name()))?;
    let outcome = async {
        while let Some(txn) = iterator.next_txn().await? {
            iterator.start_records(&txn).await?;
            if items.send(Item::Begin(txn)).await.is_err() {
                return Ok(());
            }
            while let Some(record) = iterator.next_record().await? {
                let share = record.size().clamp(1, PIPELINE_BYTES) as u32;
                let permit = budget
                    .clone()
                    .acquire_many_owned(share)
                    .await
                    .expect("the budget is never closed");
                if items.send(Item::Record(record, permit)).await.is_err() {
                    return Ok(());
                }
            }
            if items.send(Item::End).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
    .await
    .map_err(|e: String| format!("{}: {e}", source.name()));
    iterator.close().await;
    outcome
}

/// Replays transactions on the target.
struct TargetWriter<'a> {
    raid: &'a Raid,
    source: usize,
    target: &'a Backend,
    /// The target's blob directory, when zeoraid shares it: then blob
    /// records are copied exactly (see `copy_held_exactly`).
    target_blob_dir: Option<&'a SharedBlobDir>,
    reached: &'a mut Tid,
    copied: u64,
    /// Set when the source was degraded during the pass: what it serves
    /// from then on is not copied.
    source_lost: bool,
    progress: &'a RecoveryProgress,
}

/// A transaction sent to the target and being finished.
struct Finishing {
    reply: PendingReply,
    tid: Tid,
    bytes: u64,
}

impl TargetWriter<'_> {
    async fn write(
        &mut self,
        mut items: mpsc::Receiver<Item>,
        limiter: Option<&RateLimiter>,
    ) -> Result<(), String> {
        let name = self.target.name().to_owned();
        // The target transaction open (begun, not yet finished): id, tid,
        // record bytes.
        let mut open: Option<(i64, Tid, u64)> = None;
        let mut finishing: Option<Finishing> = None;
        // The open transaction's records from its first blob record on,
        // and the oids of those sent before it.
        let mut held: Option<HeldRecords> = None;
        let mut sent_oids: HashSet<Bytes> = HashSet::new();
        let outcome = async {
            while let Some(item) = items.recv().await {
                match item {
                    Item::Begin(txn) => {
                        // A foreign commit degrades the source before zeoraid
                        // commits anything after it (the backend's invalidation
                        // precedes its next vote reply): checked here, such a
                        // transaction is never copied.
                        if !self.raid.is_optimal(self.source) {
                            self.source_lost = true;
                            break;
                        }
                        let last = finishing.as_ref().map_or(*self.reached, |f| f.tid);
                        if txn.tid <= last {
                            // Never write a backend's history out of order.
                            return Err(format!(
                                "the source returned transaction {} after {last}",
                                txn.tid
                            ));
                        }
                        let id = self.raid.next_backend_txn();
                        self.send(
                            "tpc_begin",
                            vec![
                                Value::Int(id),
                                txn.user,
                                txn.description,
                                txn.extension,
                                txn.tid_value,
                                txn.status,
                            ],
                        )
                        .await?;
                        open = Some((id, txn.tid, 0));
                    }
                    Item::Record(record, _permit) => {
                        let (id, _, bytes) =
                            open.as_mut().ok_or("a record outside a transaction")?;
                        *bytes += record.size() as u64;
                        let blob = record.is_blob();
                        let oid = record.oid.as_bytes().cloned().unwrap_or_default();
                        let args = vec![record.oid, record.serial, record.data, record.data_txn];
                        if held.is_none() && !blob {
                            sent_oids.insert(oid);
                            self.restore(args, *id).await?;
                        } else {
                            held.get_or_insert_with(|| {
                                HeldRecords::new(self.raid.spool_dir.clone())
                            })
                            .hold(oid, blob, args)
                            .map_err(|e| format!("cannot hold a transaction's records: {e}"))?;
                        }
                    }
                    Item::End => {
                        if let Some(records) = held.take() {
                            let (id, tid, bytes) =
                                open.as_mut().ok_or("an end outside a transaction")?;
                            *bytes += self.copy_held(&records, &sent_oids, *id, *tid).await?;
                        }
                        sent_oids.clear();
                        // Stays open (aborted on failure) until its vote passed.
                        let (id, tid, bytes) = open.ok_or("an end outside a transaction")?;
                        let timeout = self.raid.commit_timeout();
                        let vote = self
                            .target
                            .send_call("vote", vec![Value::Int(id)], timeout)
                            .await;
                        // The previous transaction's finish is ahead of this
                        // vote on the wire.
                        if let Some(previous) = finishing.take() {
                            self.confirm(previous).await?;
                        }
                        let voted = vote.reply().await.map_err(|e| format!("vote: {e}"))?;
                        if voted
                            .as_seq()
                            .is_some_and(|v| v.iter().any(|e| matches!(e, Value::Dict(_))))
                        {
                            return Err(format!(
                                "vote of {tid} reported conflicts: {}",
                                voted.summary()
                            ));
                        }
                        open = None;
                        let reply = self
                            .target
                            .send_call("tpc_finish", vec![Value::Int(id)], timeout)
                            .await;
                        finishing = Some(Finishing { reply, tid, bytes });
                        if let Some(limiter) = limiter {
                            limiter.pay(bytes).await;
                        }
                    }
                }
            }
            if let Some(previous) = finishing.take() {
                self.confirm(previous).await?;
            }
            Ok(())
        }
        .await;
        if let Some(previous) = finishing.take() {
            // Sent before the failure: count it if the target confirms it.
            let _ = self.confirm(previous).await;
        }
        if let Some((id, _, _)) = open {
            // A transaction the pass could not complete: abort it, or drop
            // the connection (which aborts it) if even that fails.
            if let Err(e) = self.target.call("tpc_abort", vec![Value::Int(id)]).await {
                self.target
                    .reset(&format!("tpc_abort after a failed copy: {e}"));
            }
        }
        outcome.map_err(|e| format!("{name}: {e}"))
    }

    async fn restore(&self, mut args: Vec<Value>, txn: i64) -> Result<(), String> {
        args.push(Value::Int(txn));
        self.send("restorea", args).await
    }

    /// Copies a transaction's held records (see `blob_copy`): restores in
    /// place, then the blob stores, each with its file fetched from an
    /// optimal backend; returns the blob bytes sent.
    async fn copy_held(
        &self,
        records: &HeldRecords,
        sent_oids: &HashSet<Bytes>,
        txn: i64,
        tid: Tid,
    ) -> Result<u64, String> {
        if let Some(dir) = self.target_blob_dir {
            return self.copy_held_exactly(records, dir, txn, tid).await;
        }
        let plan = records.plan(sent_oids);
        let mut blob_stores = Vec::new();
        let mut reader = records.log().reader();
        for copy in &plan {
            let (_, args) = reader
                .next()
                .await
                .map_err(|e| format!("cannot read held records: {e}"))?
                .ok_or("held records end early")?;
            match copy {
                CopyAs::Restore => self.restore(args, txn).await?,
                CopyAs::StoreBlob => blob_stores.push(args),
            }
        }
        // A ZEO server writes a transaction's blob stores in the reverse
        // order of their storeBlobEnd: reversed here, they land in order.
        let mut bytes = 0;
        for args in blob_stores.into_iter().rev() {
            let [oid, serial, data, _data_txn] = <[Value; 4]>::try_from(args)
                .map_err(|_| "a held record with the wrong arguments".to_owned())?;
            let cannot = |e: String| {
                format!(
                    "cannot copy the blob of oid {} in transaction {tid}: {e}",
                    Tid::from_value(&oid).unwrap_or_default()
                )
            };
            let current = self.current_serial(&oid, tid).await.map_err(cannot)?;
            let file = self
                .raid
                .load_blob(&oid, &serial, &self.raid.spool_dir, BLOB_COPY_PREFIX)
                .await
                .map_err(|e| cannot(e.to_string()))?;
            bytes += std::fs::metadata(&file).map_or(0, |m| m.len());
            let path = file
                .to_str()
                .ok_or_else(|| cannot("spool path is not UTF-8".into()))?;
            send_blob_file(self.target, path)
                .await
                .map_err(|e| cannot(e.to_string()))?;
            self.send("storeBlobEnd", vec![oid, current, data, Value::Int(txn)])
                .await?;
        }
        Ok(bytes)
    }

    /// With the target's blob directory shared: every held record restored
    /// as it is (order, `data_txn`), and each blob record's file, fetched
    /// from an optimal backend, put in place there before the vote, as
    /// ZODB's own `restoreBlob` does; returns the blob bytes. (A transaction
    /// that then fails leaves its files behind, unreferenced, as a ZEO
    /// server dying between vote and finish does.)
    async fn copy_held_exactly(
        &self,
        records: &HeldRecords,
        dir: &SharedBlobDir,
        txn: i64,
        tid: Tid,
    ) -> Result<u64, String> {
        let mut reader = records.log().reader();
        let mut placed = HashSet::new();
        let mut bytes = 0;
        while let Some((_, args)) = reader
            .next()
            .await
            .map_err(|e| format!("cannot read held records: {e}"))?
        {
            let record = <[Value; 4]>::try_from(args.clone())
                .map(|[oid, serial, data, data_txn]| Record {
                    oid,
                    serial,
                    data,
                    data_txn,
                })
                .map_err(|_| "a held record with the wrong arguments".to_owned())?;
            self.restore(args, txn).await?;
            let oid = Tid::from_value(&record.oid).unwrap_or_default();
            if !record.is_blob() || !placed.insert(oid) {
                continue;
            }
            let cannot =
                |e: String| format!("cannot copy the blob of oid {oid} in transaction {tid}: {e}");
            let file = self
                .raid
                .load_blob(
                    &record.oid,
                    &record.serial,
                    &self.raid.spool_dir,
                    BLOB_COPY_PREFIX,
                )
                .await
                .map_err(|e| cannot(e.to_string()))?;
            bytes += std::fs::metadata(&file).map_or(0, |m| m.len());
            dir.place(oid.0, tid.0, file)
                .map_err(|e| cannot(e.to_string()))?;
        }
        Ok(bytes)
    }

    /// The object's serial on the target before `tid` (zero for a new
    /// object): what a store there must name.
    async fn current_serial(&self, oid: &Value, tid: Tid) -> Result<Value, String> {
        match self
            .target
            .call("loadBefore", vec![oid.clone(), tid.to_value()])
            .await
        {
            Ok(reply) => reply
                .as_seq()
                .and_then(|r| r.get(1))
                .cloned()
                .ok_or_else(|| format!("loadBefore returned {}", reply.summary())),
            // No data before `tid`: a new object, or one whose current
            // record undid its creation (which the store must still name).
            Err(CallError::Remote(error)) if error.is_pos_key_error() => {
                self.last_record_tid(oid).await
            }
            Err(error) => Err(format!("loadBefore: {error}")),
        }
    }

    /// The tid of the object's newest record on the target, data or not
    /// (`history`), zero for an object it does not have.
    async fn last_record_tid(&self, oid: &Value) -> Result<Value, String> {
        match self
            .target
            .call("history", vec![oid.clone(), Value::Int(1)])
            .await
        {
            Ok(reply) => reply
                .as_seq()
                .and_then(|entries| entries.first())
                .and_then(|entry| entry.dict_get("tid"))
                .cloned()
                .ok_or_else(|| format!("history returned {}", reply.summary())),
            Err(CallError::Remote(error)) if error.is_pos_key_error() => Ok(Tid::ZERO.to_value()),
            Err(error) => Err(format!("history: {error}")),
        }
    }

    async fn send(&self, method: &str, args: Vec<Value>) -> Result<(), String> {
        self.target
            .one_way(method, args)
            .await
            .map_err(|e| format!("{method}: {e}"))
    }

    /// Waits for a tpc_finish and records the transaction as copied.
    async fn confirm(&mut self, finishing: Finishing) -> Result<(), String> {
        let reply = finishing
            .reply
            .reply()
            .await
            .map_err(|e| format!("tpc_finish: {e}"))?;
        if Tid::from_value(&reply) != Some(finishing.tid) {
            return Err(format!(
                "tpc_finish returned {} instead of {}",
                reply.summary(),
                finishing.tid
            ));
        }
        *self.reached = finishing.tid;
        self.copied += 1;
        self.progress.copied(finishing.tid, finishing.bytes);
        Ok(())
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn duration_text(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..=99 => format!("{} s", seconds.max(1)),
        100..=5999 => format!("{} min", seconds.div_ceil(60)),
        _ => format!("{:.1} h", seconds as f64 / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &[u8]) -> Record {
        Record {
            oid: Tid(1).to_value(),
            serial: Tid(2).to_value(),
            data: Value::bytes(data.to_vec()),
            data_txn: Value::None,
        }
    }

    #[test]
    fn blob_records_are_recognised_by_their_class() {
        assert!(record(b"\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.").is_blob());
        assert!(
            record(b"\x80\x04\x95\x15\x00\x8c\x09ZODB.blob\x94\x8c\x04Blob\x94\x93.N.").is_blob()
        );
        assert!(!record(b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.}.").is_blob());
        assert!(!Record {
            data: Value::None,
            ..record(b"")
        }
        .is_blob());
    }

    #[test]
    fn records_compare_across_encodings() {
        let a = record(b"data");
        let mut b = record(b"data");
        assert_eq!(a.differing_field(&b), None);
        b.data_txn = Tid(5).to_value();
        assert_eq!(a.differing_field(&b), Some("data_txn"));
    }

    #[test]
    fn the_estimate_follows_the_target_storage_growth() {
        let progress = RecoveryProgress::new(
            "b",
            "a",
            false,
            Limits {
                transactions_per_second: 0,
                bytes_per_second: 0,
            },
        );
        progress.set_phase(Phase::Copying);
        {
            let mut state = progress.state.lock();
            let now = Instant::now();
            let sample = |seconds_ago: u64, copied: u64, source: u64, target: u64| Sample {
                at: now - Duration::from_secs(seconds_ago),
                copied,
                bytes: copied * 100,
                source_size: Some(source),
                target_size: Some(target),
            };
            state.samples = VecDeque::from([
                sample(4, 0, 12_000_000, 1_000_000),
                sample(0, 200, 13_000_000, 4_000_000),
            ]);
            state.copied = 200;
        }
        // The gap closed from 11 MB to 9 MB in 4 s.
        let (rate, byte_rate, eta) = RecoveryProgress::rates(&progress.state.lock());
        assert_eq!((rate, byte_rate), (50.0, 5000.0));
        assert_eq!(eta, Some(18.0));
        let text = progress.describe();
        assert!(
            text.contains("copying from a") && text.contains("about 18 s left"),
            "{text}"
        );
        // A gap that widens gives no estimate.
        progress.state.lock().samples[1].source_size = Some(20_000_000);
        assert_eq!(RecoveryProgress::rates(&progress.state.lock()).2, None);
    }

    #[test]
    fn overlapping_packs_keep_recoveries_out_until_the_last_ends() {
        let slot = Arc::new(Mutex::new(Maintenance::Packing(2)));
        let first = MaintenanceSlot::new(slot.clone());
        let second = MaintenanceSlot::new(slot.clone());
        drop(first);
        assert!(matches!(*slot.lock(), Maintenance::Packing(1)));
        drop(second);
        assert!(matches!(*slot.lock(), Maintenance::Idle));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_text(42.0), "42 s");
        assert_eq!(duration_text(600.0), "10 min");
        assert_eq!(duration_text(7200.0), "2.0 h");
    }
}
