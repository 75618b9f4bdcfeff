//! Object ids handed out by zeoraid itself.
//!
//! Backend oid counters are independent, kept in memory and reset to the
//! highest stored oid when a backend restarts, and clients keep unused oids
//! across reconnects: asking whichever backend happens to answer could hand
//! out an oid twice. So zeoraid allocates oids from one counter of its own
//! and persists a reservation ahead of it: every oid handed out is below the
//! persisted reservation, and after a restart the counter starts at the
//! reservation (or above every backend's counter, if higher).

/// How many oids one persisted reservation covers.
pub const RESERVATION: u64 = 10_000;

/// ZEO's cap on `new_oids`.
const MAX_PER_CALL: i64 = 100;

pub struct OidAllocator {
    /// The next oid to hand out.
    next: u64,
    /// Every oid below this has been persisted as reserved.
    reserved: u64,
}

impl OidAllocator {
    /// Starts above both the persisted reservation and every backend's own
    /// counter.
    pub fn new(persisted_reservation: u64, backend_next: u64) -> OidAllocator {
        let next = persisted_reservation.max(backend_next).max(1);
        OidAllocator {
            next,
            reserved: next,
        }
    }

    /// How many oids a `new_oids(n)` call gets: ZEO caps at 100, and n ≤ 0
    /// gives 1.
    pub fn count(requested: Option<i64>) -> u64 {
        requested.unwrap_or(MAX_PER_CALL).clamp(1, MAX_PER_CALL) as u64
    }

    /// The reservation to persist before `count` more oids can be handed
    /// out, if the current one does not cover them.
    pub fn needs_reservation(&self, count: u64) -> Option<u64> {
        (self.next + count > self.reserved).then(|| self.next + count + RESERVATION)
    }

    /// Records a persisted reservation.
    pub fn reserved(&mut self, reservation: u64) {
        self.reserved = self.reserved.max(reservation);
    }

    /// Hands out `count` oids; the caller has persisted a reservation that
    /// covers them.
    pub fn allocate(&mut self, count: u64) -> Vec<u64> {
        assert!(
            self.next + count <= self.reserved,
            "oids handed out beyond the persisted reservation"
        );
        let oids = (self.next..self.next + count).collect();
        self.next += count;
        oids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_above_persisted_and_backend_counters() {
        assert_eq!(OidAllocator::new(500, 20).next, 500);
        assert_eq!(OidAllocator::new(500, 900).next, 900);
        assert_eq!(OidAllocator::new(0, 0).next, 1);
    }

    #[test]
    fn hands_out_only_below_a_persisted_reservation() {
        let mut oids = OidAllocator::new(0, 7);
        let reservation = oids.needs_reservation(100).expect("nothing reserved yet");
        assert_eq!(reservation, 7 + 100 + RESERVATION);
        oids.reserved(reservation);
        assert_eq!(oids.allocate(100), (7..107).collect::<Vec<_>>());
        assert_eq!(oids.needs_reservation(100), None);
        // A restart from the persisted reservation never repeats an oid.
        let restarted = OidAllocator::new(reservation, 7);
        assert!(restarted.next >= 107);
    }

    #[test]
    fn count_follows_zeo() {
        assert_eq!(OidAllocator::count(None), 100);
        assert_eq!(OidAllocator::count(Some(500)), 100);
        assert_eq!(OidAllocator::count(Some(0)), 1);
        assert_eq!(OidAllocator::count(Some(-3)), 1);
        assert_eq!(OidAllocator::count(Some(7)), 7);
    }
}
