//! The invalidation history: the oids changed by recent transactions, to
//! answer `getInvalidations` from clients that reconnect.

use std::collections::{HashSet, VecDeque};

use crate::protocol::{Tid, Value};

/// What zeoraid knows about the transactions after `start`.
pub struct InvalidationHistory {
    /// Every transaction committed after this tid is in `entries` (or was
    /// evicted, in which case `start` moved up past it).
    start: Tid,
    entries: VecDeque<(Tid, Vec<Value>)>,
    capacity: usize,
}

/// The answer to `getInvalidations(tid)`.
#[derive(Debug, PartialEq)]
pub enum Changes {
    /// `(latest_tid, oids changed after the asked tid)`.
    Known(Tid, Vec<Value>),
    /// The tid is older than the history: ask a backend, whose own queue
    /// may reach further back.
    Unknown,
}

impl InvalidationHistory {
    /// A history that knows nothing before `start`.
    pub fn new(start: Tid, capacity: usize) -> InvalidationHistory {
        InvalidationHistory {
            start,
            entries: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
        }
    }

    pub fn last_tid(&self) -> Tid {
        self.entries.back().map_or(self.start, |(tid, _)| *tid)
    }

    /// Records a committed transaction; tids must increase.
    pub fn push(&mut self, tid: Tid, oids: Vec<Value>) {
        debug_assert!(tid > self.last_tid());
        if self.entries.len() == self.capacity {
            if let Some((evicted, _)) = self.entries.pop_front() {
                self.start = evicted;
            }
        }
        self.entries.push_back((tid, oids));
    }

    /// Forgets everything: transactions up to `tid` happened without
    /// zeoraid knowing what they changed.
    pub fn reset(&mut self, tid: Tid) {
        self.entries.clear();
        self.start = tid;
    }

    pub fn changes_since(&self, tid: Tid) -> Changes {
        if tid < self.start {
            return Changes::Unknown;
        }
        let mut seen = HashSet::new();
        let oids = self
            .entries
            .iter()
            .filter(|(committed, _)| *committed > tid)
            .flat_map(|(_, oids)| oids)
            .filter(|oid| match oid.as_bytes() {
                Some(bytes) => seen.insert(bytes.clone()),
                None => false,
            })
            .cloned()
            .collect();
        Changes::Known(self.last_tid(), oids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Value {
        Value::bytes(vec![0, 0, 0, 0, 0, 0, 0, n])
    }

    #[test]
    fn answers_from_the_history_and_deduplicates() {
        let mut history = InvalidationHistory::new(Tid(10), 3);
        history.push(Tid(11), vec![oid(1), oid(2)]);
        history.push(Tid(12), vec![oid(2), oid(3)]);
        assert_eq!(
            history.changes_since(Tid(10)),
            Changes::Known(Tid(12), vec![oid(1), oid(2), oid(3)])
        );
        assert_eq!(
            history.changes_since(Tid(11)),
            Changes::Known(Tid(12), vec![oid(2), oid(3)])
        );
        assert_eq!(
            history.changes_since(Tid(12)),
            Changes::Known(Tid(12), vec![])
        );
        assert_eq!(history.changes_since(Tid(9)), Changes::Unknown);
    }

    #[test]
    fn eviction_moves_the_start() {
        let mut history = InvalidationHistory::new(Tid(10), 2);
        for tid in 11..=14 {
            history.push(Tid(tid), vec![oid(tid as u8)]);
        }
        assert_eq!(history.changes_since(Tid(11)), Changes::Unknown);
        assert_eq!(
            history.changes_since(Tid(12)),
            Changes::Known(Tid(14), vec![oid(13), oid(14)])
        );
        assert_eq!(history.last_tid(), Tid(14));
    }

    #[test]
    fn reset_forgets_everything() {
        let mut history = InvalidationHistory::new(Tid(10), 5);
        history.push(Tid(11), vec![oid(1)]);
        history.reset(Tid(20));
        assert_eq!(history.changes_since(Tid(11)), Changes::Unknown);
        assert_eq!(
            history.changes_since(Tid(20)),
            Changes::Known(Tid(20), vec![])
        );
    }
}
