//! The blob directory zeoraid shares with its clients (`[server]
//! blob_dir`, for ZEO clients configured with `shared-blob-dir true`).
//!
//! Shared clients never ask for a blob: they open
//! `<dir>/<oid path>/<tid>.blob` themselves, so the directory must hold
//! every committed revision, in ZODB's bushy layout. A shared client
//! uploads by moving its file into the oid's directory under a `.tmp` name
//! and sending that name (`storeBlobShared`); zeoraid streams it to the
//! backends from there, and at finish moves it, or the spool file of a
//! streamed upload, to its final name. Spool files of streamed uploads are
//! written to `<dir>/tmp`, on the same file system, so that move is a
//! rename.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures_util::future::join_all;
use tracing::{error, info, warn};

use super::recovery::ServerIterator;
use super::state::SharedBlobsMark;
use super::Raid;
use crate::backend::{Backend, CallError};
use crate::protocol::{Tid, Value};

/// Spool files of blobs being uploaded or fetched start with this.
pub const BLOB_SPOOL_PREFIX: &str = "zeoraid-blob-";

const LAYOUT_MARKER: &str = ".layout";
const LAYOUT: &str = "bushy";

pub struct SharedBlobDir {
    root: PathBuf,
}

impl SharedBlobDir {
    /// Opens `root` as ZODB's `FilesystemHelper.create` does: creates it
    /// and `tmp/` when missing and writes the layout marker into an empty
    /// directory; refuses any layout but bushy.
    pub fn open(root: &Path) -> Result<SharedBlobDir, String> {
        let failed = |e: io::Error| format!("blob_dir {}: {e}", root.display());
        fs::create_dir_all(root.join("tmp")).map_err(failed)?;
        let marker = root.join(LAYOUT_MARKER);
        match fs::read_to_string(&marker) {
            Ok(layout) if layout.trim() == LAYOUT => {}
            Ok(layout) => {
                return Err(format!(
                    "blob_dir {}: its {LAYOUT_MARKER} says {:?}; zeoraid keeps blobs in \
                     ZODB's bushy layout (lawn is deprecated; zeocache marks a ZEO \
                     client's cache, not a shared blob directory)",
                    root.display(),
                    layout.trim()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let other_entries = fs::read_dir(root).map_err(failed)?.flatten().any(|entry| {
                    let name = entry.file_name();
                    name != "tmp" && !name.to_string_lossy().starts_with(LAYOUT_MARKER)
                });
                if other_entries {
                    // ZODB would take it for the old lawn layout.
                    return Err(format!(
                        "blob_dir {}: not empty and without a {LAYOUT_MARKER} marker; \
                         give zeoraid an empty directory or a bushy blob directory",
                        root.display()
                    ));
                }
                // Written whole or not at all: a client that looks now
                // must not find it empty.
                let partial = root.join(".layout.zeoraid-new");
                fs::write(&partial, LAYOUT).map_err(failed)?;
                fs::rename(&partial, &marker).map_err(failed)?;
                info!(dir = %root.display(), "shared blob directory created");
            }
            Err(e) => return Err(failed(e)),
        }
        let mode = fs::metadata(root).map_err(failed)?.permissions().mode();
        if mode & 0o077 != 0 {
            // ZODB warns alike: blobs may hold anything the application keeps.
            warn!(dir = %root.display(), mode = format!("{:o}", mode & 0o777),
                "the shared blob directory is readable by others than its owner");
        }
        remove_leftover_blob_spools(&root.join("tmp"));
        Ok(SharedBlobDir {
            root: root.to_owned(),
        })
    }

    /// A backend's blob directory, which its ZEO server created: it must
    /// be there, in the bushy layout.
    pub fn existing(root: &Path) -> Result<SharedBlobDir, String> {
        match fs::read_to_string(root.join(LAYOUT_MARKER)) {
            Ok(layout) if layout.trim() == LAYOUT => Ok(SharedBlobDir {
                root: root.to_owned(),
            }),
            Ok(layout) => Err(format!(
                "blob_dir {}: layout {:?}, zeoraid writes the bushy layout",
                root.display(),
                layout.trim()
            )),
            Err(e) => Err(format!(
                "blob_dir {}: no readable {LAYOUT_MARKER} ({e}); is it the backend's blob-dir?",
                root.display()
            )),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where zeoraid spools streamed uploads: on this file system.
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The oid's directory: one level per oid byte, `0x00/…/0x01`.
    pub fn oid_dir(&self, oid: u64) -> PathBuf {
        let mut path = self.root.clone();
        for byte in oid.to_be_bytes() {
            path.push(format!("0x{byte:02x}"));
        }
        path
    }

    /// The committed blob file of `oid` at `tid`.
    pub fn blob_path(&self, oid: u64, tid: u64) -> PathBuf {
        self.oid_dir(oid).join(format!("{}.blob", id_repr(tid)))
    }

    /// The file a shared client named in `storeBlobShared`, checked as ZEO
    /// checks it: a plain name ending in `.tmp` or `.tmp` and one more
    /// character, in the oid's directory.
    pub fn client_file(&self, oid: u64, name: &str) -> Result<PathBuf, String> {
        let plain = !name.contains('/') && name != "." && name != "..";
        let without_last = name.char_indices().last().map_or("", |(i, _)| &name[..i]);
        let temporary = name.ends_with(".tmp") || without_last.ends_with(".tmp");
        if !(plain && temporary) {
            return Err(format!("storeBlobShared: bad file name {name:?}"));
        }
        Ok(self.oid_dir(oid).join(name))
    }

    /// Moves a committed blob's file to its final name (a copy when it is
    /// on another file system) and makes it read-only as ZODB does.
    pub fn place(&self, oid: u64, tid: u64, file: tempfile::TempPath) -> io::Result<()> {
        let target = self.blob_path(oid, tid);
        fs::create_dir_all(target.parent().expect("an oid directory"))?;
        if let Err(error) = file.persist(&target) {
            let file = error.path;
            fs::copy(&file, &target)?;
            drop(file);
        }
        set_not_writable(&target)
    }

    /// Whether the committed blob of `oid` at `tid` is there.
    pub fn has(&self, oid: u64, tid: u64) -> bool {
        self.blob_path(oid, tid).exists()
    }

    /// Every oid directory, walked lazily (memory stays bounded however
    /// many there are).
    fn oid_dirs(&self) -> impl Iterator<Item = (u64, PathBuf)> {
        let mut stack = vec![(self.root.clone(), 0u32, 0u64)];
        std::iter::from_fn(move || loop {
            let (path, depth, oid) = stack.pop()?;
            if depth == 8 {
                return Some((oid, path));
            }
            let Ok(entries) = fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let byte = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("0x"))
                    .filter(|hex| hex.len() == 2)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                if let Some(byte) = byte {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((entry.path(), depth + 1, oid << 8 | u64::from(byte)));
                    }
                }
            }
        })
    }
}

/// Blob files of one pack checked with the backend at a time.
const PRUNE_BATCH: usize = 64;

/// The tid of a committed blob file's name, `<tid_repr>.blob`.
fn parse_blob_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".blob")?.strip_prefix("0x")?;
    u64::from_str_radix(hex, 16).ok()
}

impl Raid {
    /// Brings the shared blob directory up to the RAID's last transaction
    /// before clients are served: the blob files of every transaction
    /// after the mark, fetched from a backend where missing (all of them
    /// for a directory new to an existing database; those of the last run
    /// after a crash). Then records the new mark.
    pub(super) async fn fill_shared_blob_dir(&self) -> Result<(), String> {
        let Some(dir) = &self.blob_dir else {
            return Ok(());
        };
        let mark = self.shared.persisted.lock().state.shared_blobs.clone();
        let from = mark
            .filter(|mark| mark.dir == dir.root)
            .map_or(Tid::ZERO, |mark| Tid(mark.complete_to));
        let last = self.last_tid();
        if from < last {
            let source = self
                .optimal_members()
                .into_iter()
                .next()
                .ok_or("no optimal backend to fill the shared blob directory from")?;
            info!(dir = %dir.root.display(), after = %from, "filling the shared blob directory");
            let added = self
                .fill_from(dir, &source.1, from, last)
                .await
                .map_err(|e| {
                    format!(
                        "cannot fill the shared blob directory {} from {}: {e}",
                        dir.root.display(),
                        source.1.name()
                    )
                })?;
            info!(added, "shared blob directory filled");
        }
        self.mark_shared_blobs_complete();
        Ok(())
    }

    async fn fill_from(
        &self,
        dir: &SharedBlobDir,
        source: &Backend,
        from: Tid,
        last: Tid,
    ) -> Result<u64, String> {
        let start = (from != Tid::ZERO).then(|| Tid(from.0 + 1));
        let mut transactions =
            ServerIterator::start(source, start, Some(last), self.commit_timeout()).await?;
        let mut added = 0;
        let result = async {
            while let Some(txn) = transactions.next_txn().await? {
                transactions.start_records(&txn).await?;
                let mut blobs = Vec::new();
                while let Some(record) = transactions.next_record().await? {
                    let oid = Tid::from_value(&record.oid).unwrap_or_default();
                    if record.is_blob() && !dir.has(oid.0, txn.tid.0) {
                        blobs.push(record.oid);
                    }
                }
                for oid in blobs {
                    let id = Tid::from_value(&oid).unwrap_or_default();
                    let file = self
                        .load_blob(
                            &oid,
                            &txn.tid.to_value(),
                            &dir.spool_dir(),
                            BLOB_SPOOL_PREFIX,
                        )
                        .await
                        .map_err(|e| format!("blob {id} of transaction {}: {e}", txn.tid))?;
                    dir.place(id.0, txn.tid.0, file)
                        .map_err(|e| e.to_string())?;
                    added += 1;
                }
            }
            Ok::<_, String>(added)
        }
        .await;
        transactions.close().await;
        result
    }

    /// Records that the shared blob directory holds every blob up to the
    /// last transaction: at start-up once filled, and at a clean shutdown.
    pub fn mark_shared_blobs_complete(&self) {
        let Some(dir) = &self.blob_dir else { return };
        let mut persisted = self.shared.persisted.lock();
        persisted.state.shared_blobs = Some(SharedBlobsMark {
            dir: dir.root.clone(),
            complete_to: self.last_tid().0,
        });
        if let Err(error) = persisted.file.save(&persisted.state) {
            warn!(%error, "cannot record how far the shared blob directory is complete");
        }
    }

    /// After a pack: removes the shared directory's blob files of
    /// revisions the backends no longer hold, as a blob storage's own
    /// pack does, and oid directories left empty. A file is kept unless a
    /// backend says the revision is gone.
    pub(super) async fn prune_shared_blob_dir(&self) {
        let Some(dir) = &self.blob_dir else { return };
        let mut removed = 0;
        let mut batch: Vec<(u64, u64, PathBuf)> = Vec::new();
        for (oid, oid_dir) in dir.oid_dirs() {
            let Ok(entries) = fs::read_dir(&oid_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(tid) = parse_blob_name(&entry.file_name().to_string_lossy()) {
                    batch.push((oid, tid, entry.path()));
                }
            }
            if batch.len() >= PRUNE_BATCH {
                removed += self.prune_batch(std::mem::take(&mut batch)).await;
            }
            // A directory left empty by an earlier batch goes now.
            let _ = fs::remove_dir(&oid_dir);
        }
        removed += self.prune_batch(batch).await;
        if removed > 0 {
            info!(
                removed,
                "pack: blob files removed from the shared blob directory"
            );
        }
    }

    async fn prune_batch(&self, batch: Vec<(u64, u64, PathBuf)>) -> u64 {
        let Some((_, backend)) = self.read_member() else {
            return 0;
        };
        let answers = join_all(batch.iter().map(|(oid, tid, _)| {
            backend.call(
                "loadSerial",
                vec![Tid(*oid).to_value(), Tid(*tid).to_value()],
            )
        }))
        .await;
        let mut removed = 0;
        for ((_, _, path), answer) in batch.iter().zip(answers) {
            if let Err(CallError::Remote(error)) = answer {
                if error.is_pos_key_error() && fs::remove_file(path).is_ok() {
                    removed += 1;
                    if let Some(parent) = path.parent() {
                        let _ = fs::remove_dir(parent);
                    }
                }
            }
        }
        removed
    }

    /// The blob directory shared with clients, if configured.
    pub fn shared_blob_dir(&self) -> Option<&SharedBlobDir> {
        self.blob_dir.as_ref()
    }

    /// Puts a committed transaction's blobs into the shared directory,
    /// before its client hears of the commit: the logged blob files, and
    /// for the oids an undo changed, their new revisions, fetched from a
    /// backend (an oid that is no blob has none). A blob that cannot be
    /// placed is logged; the commit itself is done.
    pub async fn publish_blobs(
        &self,
        tid: Tid,
        blobs: Vec<(Value, tempfile::TempPath)>,
        undone: &[Value],
    ) {
        let Some(dir) = &self.blob_dir else { return };
        for (oid, file) in blobs {
            let Some(oid) = Tid::from_value(&oid) else {
                continue;
            };
            if let Err(error) = dir.place(oid.0, tid.0, file) {
                error!(%oid, %tid, %error, "cannot put a committed blob into the shared blob directory");
            }
        }
        for oid in undone {
            let Some(id) = Tid::from_value(oid) else {
                continue;
            };
            match self
                .load_blob(oid, &tid.to_value(), &dir.spool_dir(), BLOB_SPOOL_PREFIX)
                .await
            {
                Ok(file) => {
                    if let Err(error) = dir.place(id.0, tid.0, file) {
                        error!(oid = %id, %tid, %error, "cannot put an undone blob into the shared blob directory");
                    }
                }
                Err(error) if error.is_pos_key_error() => {}
                Err(error) => {
                    error!(oid = %id, %tid, %error, "cannot fetch an undone blob for the shared blob directory")
                }
            }
        }
    }
}

/// Removes the blob spool files a crash left in `dir` (the transaction
/// spools are anonymous files and vanish with the process).
pub fn remove_leftover_blob_spools(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(BLOB_SPOOL_PREFIX))
        {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(file = %entry.path().display(), "removed a blob spool file left by a crash")
                }
                Err(e) => {
                    warn!(file = %entry.path().display(), error = %e, "cannot remove a leftover blob spool file")
                }
            }
        }
    }
}

/// ZODB's `set_not_writable`: no write bits, and the read bits of the
/// directory, so every reader of the directory can read the blob.
fn set_not_writable(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    let dir_mode = fs::metadata(path.parent().expect("a directory"))?
        .permissions()
        .mode();
    let mode = (mode & !0o222) | (dir_mode & 0o444);
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// ZODB's `oid_repr`/`tid_repr`: `0x` and the hex digits without leading
/// zeros, padded back to an even count.
fn id_repr(id: u64) -> String {
    let digits = format!("{id:x}");
    if digits.len() % 2 == 1 {
        format!("0x0{digits}")
    } else {
        format!("0x{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_zodbs_bushy_layout() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = SharedBlobDir::open(dir.path()).unwrap();
        assert_eq!(id_repr(0), "0x00");
        assert_eq!(id_repr(1), "0x01");
        assert_eq!(id_repr(0x040d55054567e366), "0x040d55054567e366");
        assert_eq!(id_repr(0x1234), "0x1234");
        assert_eq!(
            blobs.blob_path(1, 0x040d55054567e366),
            dir.path()
                .join("0x00/0x00/0x00/0x00/0x00/0x00/0x00/0x01/0x040d55054567e366.blob")
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(".layout")).unwrap(),
            "bushy"
        );
        assert!(dir.path().join("tmp").is_dir());
    }

    #[test]
    fn client_file_names_are_checked_as_zeo_does() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = SharedBlobDir::open(dir.path()).unwrap();
        let ok = blobs.client_file(1, "0x00ia3afwac.tmp-").unwrap();
        assert_eq!(ok, blobs.oid_dir(1).join("0x00ia3afwac.tmp-"));
        assert!(blobs.client_file(1, "x.tmp").is_ok());
        for bad in ["../../etc/passwd.tmp", "a/b.tmp", "x.blob", "x.tmp--", ""] {
            assert!(blobs.client_file(1, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn other_layouts_and_unmarked_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".layout"), "zeocache").unwrap();
        let error = SharedBlobDir::open(dir.path()).err().unwrap();
        assert!(error.contains("\"zeocache\""), "{error}");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("0x01")).unwrap();
        let error = SharedBlobDir::open(dir.path()).err().unwrap();
        assert!(error.contains("without a .layout"), "{error}");
        // Reopening its own directory is fine.
        let dir = tempfile::tempdir().unwrap();
        SharedBlobDir::open(dir.path()).unwrap();
        fs::create_dir(dir.path().join("0x00")).unwrap();
        SharedBlobDir::open(dir.path()).unwrap();
    }

    #[test]
    fn oid_directories_are_walked_with_their_oids() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = SharedBlobDir::open(dir.path()).unwrap();
        for oid in [1, 0x0102, 0x0a00_0000_0000_0001] {
            fs::create_dir_all(blobs.oid_dir(oid)).unwrap();
        }
        let mut found: Vec<(u64, PathBuf)> = blobs.oid_dirs().collect();
        found.sort();
        let expected: Vec<(u64, PathBuf)> = [1, 0x0102, 0x0a00_0000_0000_0001]
            .into_iter()
            .map(|oid| (oid, blobs.oid_dir(oid)))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(
            parse_blob_name("0x040d55054567e366.blob"),
            Some(0x040d55054567e366)
        );
        assert_eq!(parse_blob_name("0x00.blob"), Some(0));
        assert_eq!(parse_blob_name("x.tmp-"), None);
    }

    #[test]
    fn a_placed_blob_is_read_only_at_its_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = SharedBlobDir::open(dir.path()).unwrap();
        let spool = tempfile::NamedTempFile::new_in(blobs.spool_dir()).unwrap();
        fs::write(spool.path(), b"data").unwrap();
        blobs.place(7, 0x0400, spool.into_temp_path()).unwrap();
        let path = blobs.blob_path(7, 0x0400);
        assert_eq!(fs::read(&path).unwrap(), b"data");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o222, 0);
        assert!(blobs.has(7, 0x0400));
        assert_eq!(fs::read_dir(blobs.spool_dir()).unwrap().count(), 0);
    }
}
