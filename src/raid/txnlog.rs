//! A client's logged transaction: the write operations between tpc_begin
//! and vote, kept until the transaction ends.
//!
//! Small transactions stay in memory. Once the logged data passes the
//! spool threshold, further operations go to an anonymous temporary file
//! (already unlinked, so nothing is left behind even after a crash), and
//! memory stays bounded whatever the transaction's size. A replay reads the
//! log from the start with positional reads, so the replays to several
//! backends run in parallel over one file.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{msgpack, Value};

/// The logged write methods; a spooled operation records its index here.
const METHODS: [&str; 6] = [
    "storea",
    "deleteObject",
    "checkCurrentSerialInTransaction",
    "restorea",
    "undoa",
    "storeBlobEnd",
];

/// How much of the spool file one read brings in.
const READ_CHUNK: usize = 1024 * 1024;

pub struct TxnLog {
    memory: Vec<(&'static str, Vec<Value>)>,
    memory_bytes: usize,
    /// Above this many bytes of record data, operations are spooled.
    threshold: usize,
    spool_dir: PathBuf,
    spool: Option<Spool>,
    /// Oids of the `storea` operations, in order: what the commit
    /// invalidates.
    stored_oids: Vec<Value>,
    /// The oids and files of the logged blob stores; the files are
    /// removed with the log unless taken.
    blobs: Vec<(Value, tempfile::TempPath)>,
}

struct Spool {
    file: Arc<File>,
    /// Bytes written so far.
    length: u64,
    buffer: BytesMut,
}

impl TxnLog {
    pub fn new(threshold: usize, spool_dir: PathBuf) -> TxnLog {
        TxnLog {
            memory: Vec::new(),
            memory_bytes: 0,
            threshold,
            spool_dir,
            spool: None,
            stored_oids: Vec::new(),
            blobs: Vec::new(),
        }
    }

    /// Logs a blob store: `storeBlobEnd`'s oid, serial and data, and the
    /// blob's file, which the log owns from now on. A replay finds the
    /// file's path as the operation's last argument.
    pub fn push_blob(&mut self, mut args: Vec<Value>, file: tempfile::TempPath) -> io::Result<()> {
        let path = file
            .to_str()
            .ok_or_else(|| io::Error::other("blob spool path is not UTF-8"))?
            .to_owned();
        let oid = args.first().cloned().unwrap_or(Value::None);
        self.blobs.push((oid, file));
        args.push(Value::Str(path));
        self.push("storeBlobEnd", args)
    }

    /// The logged blob stores' oids and files, for a commit that keeps
    /// the files.
    pub fn take_blobs(&mut self) -> Vec<(Value, tempfile::TempPath)> {
        std::mem::take(&mut self.blobs)
    }

    /// Logs one operation; `method` must be one of the logged methods.
    pub fn push(&mut self, method: &'static str, args: Vec<Value>) -> io::Result<()> {
        if method == "storea" {
            if let Some(oid) = args.first() {
                self.stored_oids.push(oid.clone());
            }
        }
        let size: usize = args
            .iter()
            .map(|a| a.as_bytes().map_or(16, |b| b.len()))
            .sum();
        if self.spool.is_none() && self.memory_bytes + size <= self.threshold {
            self.memory_bytes += size;
            self.memory.push((method, args));
            return Ok(());
        }
        let spool = match &mut self.spool {
            Some(spool) => spool,
            None => self.spool.insert(Spool {
                file: Arc::new(tempfile::tempfile_in(&self.spool_dir)?),
                length: 0,
                buffer: BytesMut::new(),
            }),
        };
        let index = METHODS
            .iter()
            .position(|m| *m == method)
            .expect("only logged methods are pushed");
        spool.buffer.clear();
        spool.buffer.put_u32(0);
        spool.buffer.put_u8(index as u8);
        msgpack::encode_value(&Value::Tuple(args), &mut spool.buffer);
        let length = (spool.buffer.len() - 4) as u32;
        spool.buffer[..4].copy_from_slice(&length.to_be_bytes());
        (&*spool.file).write_all(&spool.buffer)?;
        spool.length += spool.buffer.len() as u64;
        Ok(())
    }

    pub fn stored_oids(&self) -> &[Value] {
        &self.stored_oids
    }

    /// Bytes logged (record data, about): what the commit writes.
    pub fn size(&self) -> u64 {
        self.memory_bytes as u64 + self.spool.as_ref().map_or(0, |spool| spool.length)
    }

    pub fn is_spooled(&self) -> bool {
        self.spool.is_some()
    }

    /// A reader over the whole log, from the first operation.
    pub fn reader(&self) -> LogReader<'_> {
        LogReader {
            log: self,
            next_in_memory: 0,
            offset: 0,
            chunk: Bytes::new(),
        }
    }
}

/// Reads a log's operations in order.
pub struct LogReader<'a> {
    log: &'a TxnLog,
    next_in_memory: usize,
    /// Spool offset of `chunk`'s end.
    offset: u64,
    /// Read but not yet decoded spool bytes.
    chunk: Bytes,
}

impl LogReader<'_> {
    pub async fn next(&mut self) -> io::Result<Option<(&'static str, Vec<Value>)>> {
        if let Some((method, args)) = self.log.memory.get(self.next_in_memory) {
            self.next_in_memory += 1;
            return Ok(Some((method, args.clone())));
        }
        let Some(spool) = &self.log.spool else {
            return Ok(None);
        };
        if self.chunk.len() < 4 && !self.fill(spool, 4).await? {
            return Ok(None);
        }
        let length = u32::from_be_bytes(self.chunk[..4].try_into().expect("4 bytes")) as usize;
        if self.chunk.len() < 4 + length && !self.fill(spool, 4 + length).await? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file ends inside an operation",
            ));
        }
        let record = self.chunk.split_to(4 + length).slice(4..);
        let method = METHODS
            .get(usize::from(record[0]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad spooled method"))?;
        let args = msgpack::decode(&record.slice(1..))
            .ok()
            .and_then(|value| value.into_seq().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "undecodable spooled operation")
            })?;
        Ok(Some((method, args)))
    }

    /// Reads more of the spool until `chunk` holds `wanted` bytes; false at
    /// the end of the spool.
    async fn fill(&mut self, spool: &Spool, wanted: usize) -> io::Result<bool> {
        while self.chunk.len() < wanted {
            if self.offset >= spool.length {
                return Ok(false);
            }
            let size = READ_CHUNK
                .max(wanted - self.chunk.len())
                .min((spool.length - self.offset) as usize);
            let file = spool.file.clone();
            let offset = self.offset;
            // Positional reads share the file between parallel replays; the
            // blocking read runs off the async threads.
            let data = tokio::task::spawn_blocking(move || {
                let mut data = vec![0u8; size];
                file.read_exact_at(&mut data, offset).map(|()| data)
            })
            .await
            .map_err(io::Error::other)??;
            self.offset += size as u64;
            let mut joined = BytesMut::with_capacity(self.chunk.len() + size);
            joined.extend_from_slice(&self.chunk);
            joined.extend_from_slice(&data);
            self.chunk = joined.freeze();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(n: u8, size: usize) -> Vec<Value> {
        vec![
            Value::bytes(vec![0, 0, 0, 0, 0, 0, 0, n]),
            Value::None,
            Value::bytes(vec![n; size]),
        ]
    }

    async fn read_all(log: &TxnLog) -> Vec<(&'static str, Vec<Value>)> {
        let mut reader = log.reader();
        let mut ops = Vec::new();
        while let Some(op) = reader.next().await.unwrap() {
            ops.push(op);
        }
        ops
    }

    #[tokio::test]
    async fn small_transactions_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TxnLog::new(1024, dir.path().to_owned());
        log.push("storea", store(1, 100)).unwrap();
        log.push(
            "deleteObject",
            vec![Value::bytes(vec![0u8; 8]), Value::None],
        )
        .unwrap();
        assert!(!log.is_spooled());
        let ops = read_all(&log).await;
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0], ("storea", store(1, 100)));
        assert_eq!(log.stored_oids().len(), 1);
    }

    #[tokio::test]
    async fn large_transactions_spool_and_replay_in_order_repeatedly() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TxnLog::new(10_000, dir.path().to_owned());
        for n in 0..50u8 {
            log.push("storea", store(n, 3000 + usize::from(n) * 1000))
                .unwrap();
        }
        log.push("undoa", vec![Value::bytes(&b"BA1T2ujHbt0="[..])])
            .unwrap();
        assert!(log.is_spooled());
        // Nothing visible in the spool directory: the file is anonymous.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Two replays, as for two backends, interleaved.
        let mut first = log.reader();
        let mut second = log.reader();
        for n in 0..50u8 {
            let expected = ("storea", store(n, 3000 + usize::from(n) * 1000));
            assert_eq!(first.next().await.unwrap().unwrap(), expected);
            assert_eq!(second.next().await.unwrap().unwrap(), expected);
        }
        assert_eq!(first.next().await.unwrap().unwrap().0, "undoa");
        assert!(first.next().await.unwrap().is_none());
        assert_eq!(read_all(&log).await.len(), 51);
        assert_eq!(log.stored_oids().len(), 50);
    }
}
