//! The ZEO front end: the listener, one session per client connection,
//! and the graceful shutdown.

mod forward;
mod session;
mod status;
mod transaction;
mod validate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use crate::config::{Config, Timeouts};
use crate::protocol::{Encoding, Message, Outgoing, Value, ZeoError};
use crate::raid::Raid;
pub use transaction::ReplyTo;

/// What every session needs to know from the configuration.
pub struct FrontendSettings {
    /// The encoding announced at the handshake.
    pub announce: Encoding,
    pub max_frame_size: usize,
    pub timeouts: Timeouts,
    /// Transactions logging more record data than this are spooled to
    /// anonymous temporary files in `spool_dir`.
    pub spool_threshold: usize,
    pub spool_dir: std::path::PathBuf,
    /// Where blob uploads are spooled.
    pub blob_spool_dir: std::path::PathBuf,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    /// The RAID could not start: no usable backend, or its state, blob
    /// cache or blob directory unusable.
    #[error("{0}")]
    Raid(String),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// Starts the RAID, then listens on `[server] listen` until `shutdown` is
/// cancelled, then closes connections gracefully: commits that hold the
/// lock may finish within the shutdown timeout. The port opens only once
/// zeoraid can serve (its blob directory ready, its backends judged).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.server.state_dir).map_err(|source| StartError::StateDir {
        path: config.server.state_dir.display().to_string(),
        source,
    })?;
    crate::raid::remove_leftover_blob_spools(&config.server.state_dir);
    let timeouts = config.timeouts.clone();
    let core = Raid::start(&config).await.map_err(StartError::Raid)?;
    let listener = match TcpListener::bind(&config.server.listen).await {
        Ok(listener) => listener,
        Err(source) => {
            core.shutdown();
            return Err(StartError::Listen {
                address: config.server.listen.clone(),
                source,
            });
        }
    };
    // Streamed uploads are spooled where their files end up at finish.
    let blob_spool_dir = core
        .shared_blob_dir()
        .map_or_else(|| config.server.state_dir.clone(), |dir| dir.spool_dir());

    let frontend = Arc::new(FrontendSettings {
        announce: config.server.encoding,
        max_frame_size: config.server.max_frame_size,
        timeouts: timeouts.clone(),
        spool_threshold: config.server.spool_threshold,
        spool_dir: config.server.state_dir.clone(),
        blob_spool_dir,
    });
    info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        storage = %config.server.storage, "zeoraid serving");
    let sessions = accept_loop(
        listener,
        core.clone(),
        frontend,
        config.server.max_connections,
        shutdown.clone(),
    )
    .await;

    info!("shutting down: waiting for sessions to end");
    sessions.close();
    let mut ended = tokio::time::timeout(timeouts.shutdown(), sessions.wait())
        .await
        .is_ok();
    if !ended {
        warn!(timeout = ?timeouts.shutdown(), "sessions still open after the shutdown timeout; closing them");
        core.disconnect_all_clients();
        ended = tokio::time::timeout(Duration::from_secs(5), sessions.wait())
            .await
            .is_ok();
    }
    if ended {
        // Every commit has put its blobs into the shared directory.
        core.mark_shared_blobs_complete();
    }
    core.shutdown();
    info!("zeoraid stopped");
    Ok(())
}

/// Accepts connections until shutdown; returns the tracker of the
/// sessions still running.
async fn accept_loop(
    listener: TcpListener,
    core: Arc<Raid>,
    settings: Arc<FrontendSettings>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> TaskTracker {
    let sessions = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(max_connections));
    let next_id = AtomicU64::new(1);
    loop {
        // The permit is taken before accepting: over the limit, new
        // clients wait in the listen backlog.
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let session =
                    session::run(stream, id, core.clone(), settings.clone(), shutdown.clone());
                let span = tracing::info_span!("client", %peer, id);
                sessions.spawn(
                    async move {
                        session.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(err) => {
                // Out of file descriptors and the like: pause rather than
                // spin; the server keeps running.
                error!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    sessions
}

/// Sends a reply, unless the client sent the call as one-way.
async fn send_reply(
    outbound: &mpsc::Sender<Outgoing>,
    reply: ReplyTo,
    result: Result<Value, ZeoError>,
) {
    if !reply.wanted {
        return;
    }
    let message = match result {
        Ok(value) => Message::reply(reply.msgid, value),
        Err(error) => error.into_reply(reply.msgid),
    };
    let _ = outbound.send(Outgoing::Owned(message)).await;
}
