//! Counters reported by `server_status` and the `ruok` probe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Server-wide counters, named as ZEO's `server_status` names them.
pub struct Stats {
    pub started: SystemTime,
    pub connections: AtomicU64,
    pub loads: AtomicU64,
    pub stores: AtomicU64,
    pub commits: AtomicU64,
    pub aborts: AtomicU64,
    pub active_txns: AtomicU64,
    pub conflicts: AtomicU64,
    pub conflicts_resolved: AtomicU64,
    /// Sessions waiting for the commit lock.
    pub waiting: AtomicU64,
    /// Unix time at which the commit lock was taken, in ms; 0 when free.
    pub lock_time_ms: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            started: SystemTime::now(),
            connections: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            active_txns: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            conflicts_resolved: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            lock_time_ms: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
