//! Blob directories zeoraid shares with backends (`[[backend]] blob_dir`):
//! instead of streaming a blob over the ZEO connection, zeoraid puts the
//! spooled file into the backend's own blob directory, under a `.tmp-`
//! name in the oid's directory, and sends `storeBlobShared` naming it; the
//! backend moves it into place at vote, as it does for its shared clients.
//! On the spool's file system the file is hard-linked (no data is copied;
//! committed blob files are never written again, so sharing the data
//! blocks is safe there, where the backends share the disk anyway),
//! elsewhere copied.
//!
//! A copy the backend did not take (it failed, or the transaction ended
//! before its vote) is removed once the backend's vote is over. So that a
//! zeoraid crash leaves none behind either, every name is journaled in the
//! state directory before the file is created; start-up removes the
//! journaled names that still exist.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::{info, warn};

use super::blob_dir::{SharedBlobDir, BLOB_SPOOL_PREFIX};

const JOURNAL: &str = "backend-blob-copies";

pub struct BackendBlobCopies {
    journal_path: PathBuf,
    journal: Mutex<Journal>,
    next_name: AtomicU64,
}

struct Journal {
    file: Option<File>,
    /// Copies not yet removed or taken; the journal is emptied at zero.
    outstanding: usize,
}

impl BackendBlobCopies {
    /// Removes the copies a crash left (named in the journal) and starts
    /// an empty journal.
    pub fn open(state_dir: &Path) -> io::Result<BackendBlobCopies> {
        let journal_path = state_dir.join(JOURNAL);
        match fs::read_to_string(&journal_path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.is_empty()) {
                    match fs::remove_file(line) {
                        Ok(()) => info!(file = line, "removed a blob copy left by a crash"),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            warn!(file = line, error = %e, "cannot remove a leftover blob copy")
                        }
                    }
                }
                fs::remove_file(&journal_path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(BackendBlobCopies {
            journal_path,
            journal: Mutex::new(Journal {
                file: None,
                outstanding: 0,
            }),
            next_name: AtomicU64::new(0),
        })
    }

    /// Links or copies `source` into `dir` for the blob of `oid`; the
    /// returned copy removes the file when dropped unless the backend has
    /// taken it.
    pub async fn copy(
        &self,
        dir: &SharedBlobDir,
        oid: u64,
        source: &Path,
    ) -> io::Result<BlobCopy<'_>> {
        let oid_dir = dir.oid_dir(oid);
        fs::create_dir_all(&oid_dir)?;
        let (name, path) = loop {
            let n = self.next_name.fetch_add(1, Ordering::Relaxed);
            let name = format!("{BLOB_SPOOL_PREFIX}{}-{n}.tmp-", std::process::id());
            let path = oid_dir.join(&name);
            if !path.exists() {
                break (name, path);
            }
        };
        self.journal(&path)?;
        let copy = BlobCopy {
            copies: self,
            path,
            name,
        };
        if fs::hard_link(source, &copy.path).is_err() {
            tokio::fs::copy(source, &copy.path).await?;
        }
        Ok(copy)
    }

    fn journal(&self, path: &Path) -> io::Result<()> {
        let mut journal = self.journal.lock();
        if journal.file.is_none() {
            journal.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.journal_path)?,
            );
        }
        let line = format!("{}\n", path.display());
        journal
            .file
            .as_mut()
            .expect("opened above")
            .write_all(line.as_bytes())?;
        journal.outstanding += 1;
        Ok(())
    }

    fn forget(&self, path: &Path) {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(file = %path.display(), error = %e, "cannot remove a blob copy");
            }
        }
        let mut journal = self.journal.lock();
        journal.outstanding -= 1;
        if journal.outstanding == 0 {
            journal.file = None;
            let _ = fs::remove_file(&self.journal_path);
        }
    }
}

/// A blob file copied into a backend's blob directory.
pub struct BlobCopy<'a> {
    copies: &'a BackendBlobCopies,
    path: PathBuf,
    name: String,
}

impl BlobCopy<'_> {
    /// The name `storeBlobShared` gives the backend.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for BlobCopy<'_> {
    fn drop(&mut self) {
        self.copies.forget(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_are_removed_when_dropped_and_after_a_crash() {
        let state = tempfile::tempdir().unwrap();
        let blobs = tempfile::tempdir().unwrap();
        fs::write(blobs.path().join(".layout"), "bushy").unwrap();
        let dir = SharedBlobDir::existing(blobs.path()).unwrap();
        let source = state.path().join("source");
        fs::write(&source, b"blob").unwrap();
        let copies = BackendBlobCopies::open(state.path()).unwrap();
        let copy = copies.copy(&dir, 5, &source).await.unwrap();
        let path = dir.oid_dir(5).join(copy.name());
        assert!(copy.name().ends_with(".tmp-"));
        assert_eq!(fs::read(&path).unwrap(), b"blob");
        assert!(state.path().join(JOURNAL).exists());
        drop(copy);
        assert!(!path.exists());
        assert!(!state.path().join(JOURNAL).exists());

        // A copy taken by the backend (moved away) is simply forgotten.
        let copy = copies.copy(&dir, 5, &source).await.unwrap();
        fs::rename(dir.oid_dir(5).join(copy.name()), blobs.path().join("taken")).unwrap();
        drop(copy);
        assert!(blobs.path().join("taken").exists());

        // A crash: the journal names a copy still there.
        let copy = copies.copy(&dir, 6, &source).await.unwrap();
        let path = dir.oid_dir(6).join(copy.name());
        std::mem::forget(copy);
        drop(copies);
        BackendBlobCopies::open(state.path()).unwrap();
        assert!(!path.exists());
        assert!(!state.path().join(JOURNAL).exists());
    }
}
