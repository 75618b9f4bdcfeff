//! zeoraid's cache of blob files for clients' loads (`sendBlob`).
//!
//! A blob revision `(oid, serial)` never changes, so a file fetched from
//! one optimal backend can serve every later load of it. Files are kept up
//! to a configured number of bytes; the least recently used go first.
//! Eviction may unlink a file a client is being sent: the open handle
//! keeps its data until the stream ends. A fetch writes a part file in the
//! cache directory and renames it into place, so the cache never holds a
//! partial blob; part files a crash left are removed at start-up, finished
//! files are kept and indexed.
//!
//! Loads of the same revision at the same time fetch it once: the first
//! takes the revision's gate and fetches, the others wait on the gate and
//! then find the file.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::protocol::Value;

/// Part files (fetches in progress) start with this.
pub const PART_PREFIX: &str = ".part-";
const SUFFIX: &str = ".blob";

/// One blob revision: the oid and serial, 8 bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey {
    oid: u64,
    serial: u64,
}

impl BlobKey {
    /// The key of a `sendBlob(oid, serial)`; None unless both are 8 bytes.
    pub fn new(oid: &Value, serial: &Value) -> Option<BlobKey> {
        let id = |value: &Value| -> Option<u64> {
            Some(u64::from_be_bytes(
                value.as_bytes()?.as_ref().try_into().ok()?,
            ))
        };
        Some(BlobKey {
            oid: id(oid)?,
            serial: id(serial)?,
        })
    }

    pub fn oid(&self) -> u64 {
        self.oid
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// `<last oid byte>/<oid>-<serial>.blob`: 256 buckets keep
    /// directories small.
    fn relative_path(&self) -> PathBuf {
        PathBuf::from(format!("{:02x}", self.oid & 0xff))
            .join(format!("{:016x}-{:016x}{SUFFIX}", self.oid, self.serial))
    }

    fn from_file_name(name: &str) -> Option<BlobKey> {
        let (oid, serial) = name.strip_suffix(SUFFIX)?.split_once('-')?;
        if oid.len() != 16 || serial.len() != 16 {
            return None;
        }
        Some(BlobKey {
            oid: u64::from_str_radix(oid, 16).ok()?,
            serial: u64::from_str_radix(serial, 16).ok()?,
        })
    }
}

struct Entry {
    size: u64,
    last_use: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<BlobKey, Entry>,
    /// `last_use` → key, oldest first.
    by_use: BTreeMap<u64, BlobKey>,
    clock: u64,
    bytes: u64,
    /// Bumped by `clear`: a fetch begun before it is not kept.
    generation: u64,
    /// One gate per revision being fetched.
    fetching: HashMap<BlobKey, Arc<tokio::sync::Mutex<()>>>,
}

impl Index {
    fn touch(&mut self, key: BlobKey) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.get_mut(&key) {
            self.by_use.remove(&entry.last_use);
            entry.last_use = clock;
            self.by_use.insert(clock, key);
        }
    }

    fn insert(&mut self, key: BlobKey, size: u64) {
        self.remove(&key);
        self.clock += 1;
        self.entries.insert(
            key,
            Entry {
                size,
                last_use: self.clock,
            },
        );
        self.by_use.insert(self.clock, key);
        self.bytes += size;
    }

    fn remove(&mut self, key: &BlobKey) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                self.by_use.remove(&entry.last_use);
                self.bytes -= entry.size;
                true
            }
            None => false,
        }
    }

    /// The least recently used keys to drop to get down to `capacity`.
    fn over(&self, capacity: u64) -> Vec<BlobKey> {
        let mut bytes = self.bytes;
        self.by_use
            .values()
            .take_while(|key| {
                let over = bytes > capacity;
                bytes -= self.entries[key].size;
                over
            })
            .copied()
            .collect()
    }
}

/// What `server_status` reports about the cache.
pub struct CacheFigures {
    pub files: u64,
    pub bytes: u64,
    pub hits: u64,
    pub fetches: u64,
}

pub struct BlobCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    fetches: AtomicU64,
}

impl BlobCache {
    /// Opens the cache in `dir` (created if missing): removes part files a
    /// crash left, indexes the finished files (oldest modified as least
    /// recently used) and evicts down to `capacity`.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<BlobCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for bucket in std::fs::read_dir(dir)? {
            let bucket = bucket?;
            let name = bucket.file_name();
            if name.to_string_lossy().starts_with(PART_PREFIX) {
                std::fs::remove_file(bucket.path())?;
                continue;
            }
            if !bucket.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(bucket.path())? {
                let file = file?;
                let Some(key) = BlobKey::from_file_name(&file.file_name().to_string_lossy()) else {
                    continue;
                };
                let metadata = file.metadata()?;
                found.push((metadata.modified()?, key, metadata.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, key, size) in found {
            index.insert(key, size);
        }
        let cache = BlobCache {
            dir: dir.to_owned(),
            capacity,
            index: Mutex::new(index),
            hits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        };
        cache.evict();
        let figures = cache.figures();
        info!(
            dir = %dir.display(),
            files = figures.files,
            bytes = figures.bytes,
            capacity,
            "blob cache opened"
        );
        Ok(cache)
    }

    /// Where part files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached file of `key`, opened, or None. Opened under the index
    /// lock so that eviction cannot remove it in between.
    pub fn open_cached(&self, key: BlobKey) -> Option<File> {
        let mut index = self.index.lock();
        if !index.entries.contains_key(&key) {
            return None;
        }
        match File::open(self.dir.join(key.relative_path())) {
            Ok(file) => {
                index.touch(key);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(file)
            }
            Err(error) => {
                // Removed behind zeoraid's back: forget it, fetch again.
                warn!(?key, %error, "cached blob file cannot be opened");
                index.remove(&key);
                None
            }
        }
    }

    /// The gate every fetch of `key` holds.
    pub fn gate(&self, key: BlobKey) -> Arc<tokio::sync::Mutex<()>> {
        self.index.lock().fetching.entry(key).or_default().clone()
    }

    /// Drops the gate once its fetch is over (those still waiting hold it).
    pub fn release_gate(&self, key: BlobKey, gate: &Arc<tokio::sync::Mutex<()>>) {
        let mut index = self.index.lock();
        if index
            .fetching
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, gate))
        {
            index.fetching.remove(&key);
        }
    }

    /// Stamps a fetch about to begin, for `insert`.
    pub fn generation(&self) -> u64 {
        self.index.lock().generation
    }

    /// Moves a finished fetch into the cache and opens it. A fetch begun
    /// before a `clear` is served but not kept: the pack that cleared the
    /// cache may have removed its revision.
    pub fn insert(
        &self,
        key: BlobKey,
        part: tempfile::TempPath,
        generation: u64,
    ) -> std::io::Result<File> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(key.relative_path());
        let size = std::fs::metadata(&part)?.len();
        let mut index = self.index.lock();
        if index.generation != generation {
            return File::open(&part);
        }
        std::fs::create_dir_all(path.parent().expect("a bucket"))?;
        part.persist(&path).map_err(|e| e.error)?;
        let file = File::open(&path)?;
        index.insert(key, size);
        drop(index);
        self.evict();
        Ok(file)
    }

    /// Drops every file: after a pack, revisions may be gone from the
    /// backends, and a load must say so as a ZEO server would.
    pub fn clear(&self) {
        let mut index = self.index.lock();
        index.generation += 1;
        let keys: Vec<BlobKey> = index.entries.keys().copied().collect();
        for key in keys {
            index.remove(&key);
            self.remove_file(key);
        }
    }

    fn evict(&self) {
        let mut index = self.index.lock();
        for key in index.over(self.capacity) {
            index.remove(&key);
            self.remove_file(key);
        }
    }

    fn remove_file(&self, key: BlobKey) {
        let path = self.dir.join(key.relative_path());
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), %error, "cannot remove a cached blob file");
            }
        }
    }

    pub fn figures(&self) -> CacheFigures {
        let index = self.index.lock();
        CacheFigures {
            files: index.entries.len() as u64,
            bytes: index.bytes,
            hits: self.hits.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn key(oid: u64, serial: u64) -> BlobKey {
        BlobKey { oid, serial }
    }

    fn fetched(cache: &BlobCache, key: BlobKey, content: &[u8]) -> File {
        let mut part = tempfile::Builder::new()
            .prefix(PART_PREFIX)
            .tempfile_in(cache.dir())
            .unwrap();
        part.write_all(content).unwrap();
        let generation = cache.generation();
        cache
            .insert(key, part.into_temp_path(), generation)
            .unwrap()
    }

    fn content(mut file: File) -> Vec<u8> {
        let mut data = Vec::new();
        file.read_to_end(&mut data).unwrap();
        data
    }

    #[test]
    fn keys_come_from_8_byte_ids_and_back_from_file_names() {
        let oid = Value::Bytes(bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 1, 2]));
        let serial = Value::Bytes(bytes::Bytes::from_static(&[3, 0, 0, 0, 0, 0, 0, 4]));
        let key = BlobKey::new(&oid, &serial).unwrap();
        assert_eq!(
            key,
            BlobKey {
                oid: 0x102,
                serial: 0x0300_0000_0000_0004
            }
        );
        let path = key.relative_path();
        assert_eq!(path, Path::new("02/0000000000000102-0300000000000004.blob"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(BlobKey::from_file_name(name), Some(key));
        assert_eq!(BlobKey::new(&oid, &Value::None), None);
        assert_eq!(BlobKey::from_file_name("x-y.blob"), None);
    }

    #[test]
    fn least_recently_used_files_are_evicted_past_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 25).unwrap();
        fetched(&cache, key(1, 1), &[1; 10]);
        fetched(&cache, key(2, 1), &[2; 10]);
        // Using 1 makes 2 the least recently used.
        assert!(cache.open_cached(key(1, 1)).is_some());
        let third = fetched(&cache, key(3, 1), &[3; 10]);
        assert!(cache.open_cached(key(2, 1)).is_none());
        assert_eq!(content(cache.open_cached(key(1, 1)).unwrap()), vec![1; 10]);
        assert_eq!(content(third), vec![3; 10]);
        let figures = cache.figures();
        assert_eq!((figures.files, figures.bytes), (2, 20));
        assert_eq!((figures.hits, figures.fetches), (2, 3));
        assert!(!dir.path().join(key(2, 1).relative_path()).exists());
    }

    #[test]
    fn a_blob_larger_than_the_cache_is_still_served_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 5).unwrap();
        let file = fetched(&cache, key(1, 1), &[7; 10]);
        assert!(cache.open_cached(key(1, 1)).is_none());
        assert_eq!(content(file), vec![7; 10]);
        assert_eq!(cache.figures().bytes, 0);
    }

    #[test]
    fn reopening_keeps_finished_files_and_removes_parts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = BlobCache::open(dir.path(), 100).unwrap();
            fetched(&cache, key(1, 1), b"one");
            fetched(&cache, key(1, 2), b"two");
        }
        std::fs::write(dir.path().join(format!("{PART_PREFIX}crashed")), b"x").unwrap();
        let cache = BlobCache::open(dir.path(), 100).unwrap();
        assert_eq!(content(cache.open_cached(key(1, 2)).unwrap()), b"two");
        assert_eq!(cache.figures().files, 2);
        assert!(!dir.path().join(format!("{PART_PREFIX}crashed")).exists());
        cache.clear();
        assert!(cache.open_cached(key(1, 1)).is_none());
        assert!(!dir.path().join(key(1, 1).relative_path()).exists());
    }

    #[test]
    fn a_fetch_begun_before_a_clear_is_served_but_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 100).unwrap();
        let before = cache.generation();
        let mut part = tempfile::Builder::new()
            .prefix(PART_PREFIX)
            .tempfile_in(cache.dir())
            .unwrap();
        part.write_all(b"old").unwrap();
        cache.clear();
        let file = cache
            .insert(key(1, 1), part.into_temp_path(), before)
            .unwrap();
        assert_eq!(content(file), b"old");
        assert!(cache.open_cached(key(1, 1)).is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_removed_behind_the_cache_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 100).unwrap();
        fetched(&cache, key(1, 1), b"one");
        std::fs::remove_file(dir.path().join(key(1, 1).relative_path())).unwrap();
        assert!(cache.open_cached(key(1, 1)).is_none());
        assert_eq!(cache.figures().files, 0);
    }
}
