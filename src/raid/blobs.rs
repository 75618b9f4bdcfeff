//! Blob loads: a client's `sendBlob` served from zeoraid's blob cache,
//! filled from one optimal backend.
//!
//! A ZEO server answers `sendBlob(oid, serial)` on the connection that
//! asked with one-way `receiveBlobStart`, `receiveBlobChunk`s and
//! `receiveBlobStop` messages, then the call's reply, and answers nothing
//! else on that connection meanwhile. So downloads go over a connection of
//! their own per backend, which carries nothing else. The messages name
//! only the blob, so that connection carries one download at a time; the
//! chunks are written to a spool file as they arrive (on the connection's
//! reader, in stream order) and the session streams the finished file to
//! its client at the client's pace. A download that fails mid-transfer
//! starts over on another optimal backend; a backend that sends a broken
//! stream is degraded (a dead one is degraded by its main connection).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Weak;

use futures_util::future::join_all;
use parking_lot::Mutex;
use tracing::{debug, warn};

use super::blob_cache::{BlobKey, PART_PREFIX};
use super::{Raid, Shared};
use crate::backend::{Backend, BackendObserver, CallError};
use crate::protocol::{Message, Tid, Value, ZeoError};

/// One backend connection's download slot.
pub(super) struct BlobDownloads {
    per_backend: Vec<Slot>,
}

struct Slot {
    /// Held for a whole download: one at a time per connection.
    turn: tokio::sync::Mutex<()>,
    current: Mutex<Option<Download>>,
}

struct Download {
    oid: Value,
    serial: Value,
    file: File,
    stopped: bool,
    /// A chunk for this blob that could not be written, or arrived after
    /// the stop.
    failed: Option<String>,
}

impl BlobDownloads {
    pub(super) fn new(backends: usize) -> BlobDownloads {
        BlobDownloads {
            per_backend: (0..backends)
                .map(|_| Slot {
                    turn: tokio::sync::Mutex::new(()),
                    current: Mutex::new(None),
                })
                .collect(),
        }
    }

    /// Takes a backend's `receiveBlob*` message.
    pub(super) fn message(&self, backend: usize, message: &Message) {
        let args = message.args.as_seq().unwrap_or_default();
        let mut current = self.per_backend[backend].current.lock();
        let Some(download) = current
            .as_mut()
            .filter(|d| args.len() >= 2 && d.oid == args[0] && d.serial == args[1])
        else {
            warn!(
                backend,
                message = %message.name,
                "blob message for no download in progress ignored"
            );
            return;
        };
        match message.name.as_str() {
            "receiveBlobStart" => {}
            "receiveBlobChunk" => {
                let written = match args.get(2).and_then(Value::as_bytes) {
                    _ if download.stopped => Err("a chunk after the stop".to_owned()),
                    Some(chunk) => download.file.write_all(chunk).map_err(|e| e.to_string()),
                    None => Err("a chunk that is not bytes".to_owned()),
                };
                if let Err(error) = written {
                    download.failed.get_or_insert(error);
                }
            }
            _ => download.stopped = true,
        }
    }
}

/// Receives a download connection's events: blob streams. Its
/// invalidations (every commit through the main connection) and its
/// connection state are not the backend's health.
pub(super) struct DownloadObserver {
    shared: Weak<Shared>,
    index: usize,
}

impl DownloadObserver {
    pub(super) fn new(shared: Weak<Shared>, index: usize) -> DownloadObserver {
        DownloadObserver { shared, index }
    }
}

impl BackendObserver for DownloadObserver {
    fn connected(&self, _backend: &str, _last_tid: Tid) {}

    fn disconnected(&self, backend: &str, reason: &str) {
        debug!(backend, reason, "blob download connection lost");
    }

    fn one_way(&self, _backend: &str, message: Message) {
        if message.name.starts_with("receiveBlob") {
            if let Some(shared) = self.shared.upgrade() {
                shared.blobs.message(self.index, &message);
            }
        }
    }
}

impl Raid {
    /// Blobs need every backend: once one optimal backend's storage keeps
    /// blobs, one whose storage does not is degraded at start-up, with that
    /// reason, rather than at the first blob commit.
    pub(super) async fn check_blob_support(&self) {
        let members = self.optimal_members();
        let answers = join_all(members.iter().map(|(_, backend)| blob_support(backend))).await;
        if !answers.iter().any(|answer| matches!(answer, Ok(true))) {
            return;
        }
        for ((index, _), answer) in members.iter().zip(answers) {
            match answer {
                Ok(true) => {}
                Ok(false) => self.degrade(*index, NO_BLOB_SUPPORT),
                Err(error) => self.degrade(*index, &format!("get_info failed: {error}")),
            }
        }
    }

    /// The blob file of `oid` at `serial` for a client's `sendBlob`,
    /// opened: from the cache, or fetched into it from a backend (once for
    /// loads of the same revision at the same time).
    pub async fn blob_for_client(&self, oid: &Value, serial: &Value) -> Result<File, ZeoError> {
        let cache = &self.blob_cache;
        let key = BlobKey::new(oid, serial)
            .ok_or_else(|| ZeoError::type_error("sendBlob: oid and serial must be 8 bytes"))?;
        if let Some(dir) = &self.blob_dir {
            if let Ok(file) = File::open(dir.blob_path(key.oid(), key.serial())) {
                return Ok(file);
            }
        }
        if let Some(file) = cache.open_cached(key) {
            return Ok(file);
        }
        let gate = cache.gate(key);
        let fetched = async {
            let _turn = gate.lock().await;
            if let Some(file) = cache.open_cached(key) {
                return Ok(file);
            }
            let generation = cache.generation();
            let part = self
                .load_blob(oid, serial, cache.dir(), PART_PREFIX)
                .await?;
            cache
                .insert(key, part, generation)
                .map_err(|e| ZeoError::storage(format!("cannot cache the blob: {e}")))
        }
        .await;
        cache.release_gate(key, &gate);
        fetched
    }

    /// What the blob cache holds and did.
    pub fn blob_cache_figures(&self) -> super::CacheFigures {
        self.blob_cache.figures()
    }

    /// Fetches the blob file of `oid` at `serial` into a new spool file in
    /// `dir`, from an optimal backend; an error all backends would give
    /// (POSKeyError for a blob that does not exist) is the client's.
    pub async fn load_blob(
        &self,
        oid: &Value,
        serial: &Value,
        dir: &Path,
        file_prefix: &str,
    ) -> Result<tempfile::TempPath, ZeoError> {
        let mut last_failure = None;
        for _ in 0..self.backend_count() {
            let Some((index, _)) = self.read_member() else {
                break;
            };
            // Until the download connection is up (after the backend came
            // back, say), the main one carries the download.
            let backend = match &self.download_links[index] {
                link if link.is_connected() => link,
                _ => &self.backends[index],
            };
            let slot = &self.shared.blobs.per_backend[index];
            let _turn = slot.turn.lock().await;
            debug!(
                backend = %backend.name(),
                oid = %Tid::from_value(oid).unwrap_or_default(),
                serial = %Tid::from_value(serial).unwrap_or_default(),
                "fetching a blob"
            );
            let spool = tempfile::Builder::new()
                .prefix(file_prefix)
                .tempfile_in(dir)
                .map_err(|e| ZeoError::storage(format!("cannot spool a blob: {e}")))?;
            let file = spool
                .reopen()
                .map_err(|e| ZeoError::storage(format!("cannot spool a blob: {e}")))?;
            *slot.current.lock() = Some(Download {
                oid: oid.clone(),
                serial: serial.clone(),
                file,
                stopped: false,
                failed: None,
            });
            let reply = backend
                .call_timeout(
                    "sendBlob",
                    vec![oid.clone(), serial.clone()],
                    self.commit_timeout(),
                )
                .await;
            let download = slot.current.lock().take().expect("set above");
            match reply {
                Ok(_) if download.stopped && download.failed.is_none() => {
                    return Ok(spool.into_temp_path())
                }
                Ok(_) => {
                    let reason = download
                        .failed
                        .unwrap_or_else(|| "sendBlob returned before the blob's end".into());
                    last_failure = Some(format!("{}: {reason}", backend.name()));
                    if reason.starts_with("sendBlob") {
                        self.degrade(index, &format!("sent an incomplete blob: {reason}"));
                    } else {
                        // Our side could not write it: not the backend's fault.
                        break;
                    }
                }
                Err(CallError::Remote(error)) => return Err(error),
                Err(error) => {
                    // The download connection failed, which says nothing
                    // sure about the backend (its main connection would
                    // find it dead): try another. A stalled stream may yet
                    // resume; start that connection afresh.
                    if matches!(error, CallError::Timeout { .. }) {
                        backend.reset("sendBlob timed out");
                    }
                    last_failure = Some(error.to_string());
                }
            }
        }
        Err(ZeoError::storage(format!(
            "cannot load the blob: {}",
            last_failure.unwrap_or_else(|| "no optimal backend".into())
        )))
    }
}

pub(super) const NO_BLOB_SUPPORT: &str = "no blob support: its storage keeps no blobs \
     (get_info lists no IBlobStorage) while the other backends' do; give it a blob-dir";

/// Whether a backend's storage keeps blobs: its `get_info` lists
/// `IBlobStorage`.
pub(super) async fn blob_support(backend: &Backend) -> Result<bool, CallError> {
    let info = backend.call("get_info", vec![]).await?;
    let interfaces = info
        .dict_get("interfaces")
        .and_then(Value::as_seq)
        .unwrap_or_default();
    Ok(interfaces.iter().any(|pair| {
        pair.as_seq().and_then(|p| p.get(1)).and_then(Value::as_str) == Some("IBlobStorage")
    }))
}

/// ZEO's blob chunk size, used both ways: 59,000 bytes (larger chunks cost
/// a Python ZEO server more, measured with benches/blobs.rs).
pub const BLOB_CHUNK: usize = 59_000;

/// Chunks read from the file per read: one read (one hop to tokio's
/// blocking pool) serves many chunks, each a slice of it, not a copy.
const CHUNKS_PER_READ: usize = 17;

/// A blob file read as ZEO chunks.
pub struct BlobChunks {
    file: tokio::fs::File,
    block: bytes::Bytes,
    at_end: bool,
}

impl BlobChunks {
    pub fn new(file: tokio::fs::File) -> BlobChunks {
        BlobChunks {
            file,
            block: bytes::Bytes::new(),
            at_end: false,
        }
    }

    /// The next chunk of [`BLOB_CHUNK`] bytes; shorter only at the end,
    /// so a short chunk is the last; empty past the end.
    pub async fn next(&mut self) -> std::io::Result<bytes::Bytes> {
        use tokio::io::AsyncReadExt;
        if self.block.is_empty() && !self.at_end {
            let size = BLOB_CHUNK * CHUNKS_PER_READ;
            let mut block = bytes::BytesMut::with_capacity(size);
            while block.len() < size {
                if self.file.read_buf(&mut block).await? == 0 {
                    self.at_end = true;
                    break;
                }
            }
            self.block = block.freeze();
        }
        let size = BLOB_CHUNK.min(self.block.len());
        Ok(self.block.split_to(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_comes_back_in_zeo_chunks_short_only_at_the_end() {
        for size in [
            0,
            1,
            BLOB_CHUNK,
            BLOB_CHUNK * CHUNKS_PER_READ + 5,
            3 * BLOB_CHUNK * CHUNKS_PER_READ,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &data).unwrap();
            let mut chunks = BlobChunks::new(tokio::fs::File::open(file.path()).await.unwrap());
            let mut back = Vec::new();
            loop {
                let chunk = chunks.next().await.unwrap();
                back.extend_from_slice(&chunk);
                if chunk.len() < BLOB_CHUNK {
                    break;
                }
                assert_eq!(chunk.len(), BLOB_CHUNK);
            }
            assert_eq!(back, data, "a file of {size} bytes");
            assert!(chunks.next().await.unwrap().is_empty());
        }
    }
}
