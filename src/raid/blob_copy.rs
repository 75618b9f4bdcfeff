//! Recovery of transactions that hold blob records.
//!
//! ZEO has no call to restore a blob: a blob reaches a backend only the
//! way clients send it, `storeBlobStart`, chunks and `storeBlobEnd(oid,
//! serial, data)`, where `serial` is the object's current serial there.
//! And a ZEO server writes a transaction's blob stores after its other
//! records: a client's blob store is a `storea` of the record (written in
//! order) plus the blob (written at the end, as a second record of the
//! oid). So a transaction's trailing run of blob records whose oids
//! appeared earlier in it are its blob stores; everything else is
//! restored. From the first blob record on, a transaction's records are
//! held (spooled like a client's transaction) until its end decides which
//! is which; replayed in that split, the target's records come out in the
//! source's order. A blob record with no earlier record of its oid (a
//! history not written through ZEO) is stored as a blob too, after the
//! restores. Blob stores carry no `data_txn`: an undone blob revision is
//! copied as its data.

use std::collections::HashSet;
use std::path::PathBuf;

use bytes::Bytes;

use super::txnlog::TxnLog;

/// Held records of a transaction spool to a file above this many bytes.
const HELD_IN_MEMORY: usize = 8 << 20;

/// A transaction's records from its first blob record on.
pub(super) struct HeldRecords {
    log: TxnLog,
    entries: Vec<Entry>,
}

struct Entry {
    oid: Bytes,
    blob: bool,
}

/// What to do with each held record, in order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CopyAs {
    Restore,
    StoreBlob,
}

impl HeldRecords {
    pub(super) fn new(spool_dir: PathBuf) -> HeldRecords {
        HeldRecords {
            log: TxnLog::new(HELD_IN_MEMORY, spool_dir),
            entries: Vec::new(),
        }
    }

    /// Holds a record: `restorea`'s oid, serial, data and data_txn.
    pub(super) fn hold(
        &mut self,
        oid: Bytes,
        blob: bool,
        args: Vec<crate::protocol::Value>,
    ) -> std::io::Result<()> {
        self.entries.push(Entry { oid, blob });
        self.log.push("restorea", args)
    }

    pub(super) fn log(&self) -> &TxnLog {
        &self.log
    }

    /// How each held record is copied, given the oids of the records of
    /// the transaction sent before the first blob record.
    pub(super) fn plan(&self, earlier: &HashSet<Bytes>) -> Vec<CopyAs> {
        let entries = &self.entries;
        let tail_start = (0..entries.len())
            .rev()
            .take_while(|&start| is_blob_store_tail(entries, start, earlier))
            .last()
            .unwrap_or(entries.len());
        let tail: HashSet<&Bytes> = entries[tail_start..].iter().map(|e| &e.oid).collect();
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                if index >= tail_start || (entry.blob && !tail.contains(&entry.oid)) {
                    CopyAs::StoreBlob
                } else {
                    CopyAs::Restore
                }
            })
            .collect()
    }
}

/// Whether `entries[start..]` can be a transaction's blob stores: blob
/// records of distinct oids, each recorded earlier in the transaction.
fn is_blob_store_tail(entries: &[Entry], start: usize, earlier: &HashSet<Bytes>) -> bool {
    let mut seen = HashSet::new();
    entries[start..].iter().all(|entry| {
        entry.blob
            && seen.insert(&entry.oid)
            && (earlier.contains(&entry.oid) || entries[..start].iter().any(|e| e.oid == entry.oid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CopyAs::{Restore, StoreBlob};

    fn held(records: &[(u8, bool)]) -> HeldRecords {
        let mut held = HeldRecords::new(std::env::temp_dir());
        for &(oid, blob) in records {
            held.hold(Bytes::from(vec![oid]), blob, vec![]).unwrap();
        }
        held
    }

    fn oids(list: &[u8]) -> HashSet<Bytes> {
        list.iter().map(|&o| Bytes::from(vec![o])).collect()
    }

    #[test]
    fn zeo_written_blob_stores_are_the_trailing_repeats() {
        // root (sent before), then the storea copies 5 4 3 2, then the
        // blob stores 2 3 4 5, as a ZEO server writes them.
        let records = [
            (5, true),
            (4, true),
            (3, true),
            (2, true),
            (2, true),
            (3, true),
            (4, true),
            (5, true),
        ];
        let plan = held(&records).plan(&oids(&[0]));
        assert_eq!(
            plan,
            [Restore, Restore, Restore, Restore, StoreBlob, StoreBlob, StoreBlob, StoreBlob]
        );
    }

    #[test]
    fn plain_records_between_copies_and_stores_are_restored_in_place() {
        let records = [(7, true), (8, false), (7, true)];
        assert_eq!(
            held(&records).plan(&oids(&[])),
            [Restore, Restore, StoreBlob]
        );
    }

    #[test]
    fn a_lone_blob_record_is_stored_as_a_blob() {
        let records = [(7, true), (8, false)];
        assert_eq!(held(&records).plan(&oids(&[])), [StoreBlob, Restore]);
        // Its copy sent before the hold began makes it a blob store.
        assert_eq!(held(&[(7, true)]).plan(&oids(&[7])), [StoreBlob]);
    }
}
