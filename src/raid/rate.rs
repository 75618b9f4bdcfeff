//! The recovery's rate limit: transactions and bytes per second, each a
//! token bucket, plus credit from live commits.
//!
//! A recovery copies a transaction, pays for it, and waits while either
//! balance is negative. Each commit clients make meanwhile adds the credit
//! of one transaction of its size: the copy rate is then always the limit
//! plus the commit rate, so the backend being recovered catches up however
//! busy the RAID is.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Limits per second; 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub transactions_per_second: u64,
    pub bytes_per_second: u64,
}

pub struct RateLimiter {
    limits: Limits,
    buckets: Mutex<Buckets>,
    /// Wakes a waiting recovery when credit arrives.
    credited: Notify,
}

struct Buckets {
    transactions: f64,
    bytes: f64,
    refilled: Instant,
}

/// How much unspent allowance may pile up: a second's worth, so a pause
/// (a slow source, a wait for the commit lock) is not followed by a burst.
const BURST: Duration = Duration::from_secs(1);

/// The longest single sleep while waiting, so that credit is noticed soon
/// even when its notification races with the wait.
const MAX_NAP: Duration = Duration::from_millis(100);

impl RateLimiter {
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            buckets: Mutex::new(Buckets {
                transactions: 0.0,
                bytes: 0.0,
                refilled: Instant::now(),
            }),
            credited: Notify::new(),
        }
    }

    /// Pays for one copied transaction of `bytes` record bytes, then waits
    /// until the allowance is no longer overdrawn.
    pub async fn pay(&self, bytes: u64) {
        self.buckets.lock().spend(1.0, bytes as f64);
        loop {
            let wait = {
                let mut buckets = self.buckets.lock();
                buckets.refill(self.limits, Instant::now());
                buckets.wait_needed(self.limits)
            };
            let Some(wait) = wait else { return };
            let credited = self.credited.notified();
            tokio::select! {
                _ = credited => {}
                _ = tokio::time::sleep(wait.min(MAX_NAP)) => {}
            }
        }
    }

    /// A live commit of `bytes` happened: allow one more transaction.
    pub fn credit(&self, bytes: u64) {
        self.buckets.lock().earn(1.0, bytes as f64);
        self.credited.notify_waiters();
    }
}

impl Buckets {
    fn spend(&mut self, transactions: f64, bytes: f64) {
        self.transactions -= transactions;
        self.bytes -= bytes;
    }

    fn earn(&mut self, transactions: f64, bytes: f64) {
        self.transactions += transactions;
        self.bytes += bytes;
    }

    fn refill(&mut self, limits: Limits, now: Instant) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let refill = |balance: &mut f64, rate: u64| {
            if rate > 0 {
                let cap = rate as f64 * BURST.as_secs_f64();
                // Credit above the cap is kept; only the refill is capped.
                if *balance < cap {
                    *balance = (*balance + rate as f64 * elapsed).min(cap);
                }
            }
        };
        refill(&mut self.transactions, limits.transactions_per_second);
        refill(&mut self.bytes, limits.bytes_per_second);
    }

    /// How long until neither limited balance is negative; None if now.
    fn wait_needed(&self, limits: Limits) -> Option<Duration> {
        let wait = |balance: f64, rate: u64| {
            if rate == 0 || balance >= 0.0 {
                0.0
            } else {
                -balance / rate as f64
            }
        };
        let seconds = wait(self.transactions, limits.transactions_per_second)
            .max(wait(self.bytes, limits.bytes_per_second));
        (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn copies_no_faster_than_the_transaction_limit() {
        let limiter = RateLimiter::new(Limits {
            transactions_per_second: 50,
            bytes_per_second: 0,
        });
        let start = Instant::now();
        for _ in 0..100 {
            limiter.pay(1000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&elapsed), "took {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn copies_no_faster_than_the_byte_limit() {
        let limiter = RateLimiter::new(Limits {
            transactions_per_second: 0,
            bytes_per_second: 1_000_000,
        });
        let start = Instant::now();
        for _ in 0..30 {
            limiter.pay(100_000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((2.9..3.2).contains(&elapsed), "took {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_never_waits() {
        let limiter = RateLimiter::new(Limits {
            transactions_per_second: 0,
            bytes_per_second: 0,
        });
        let start = Instant::now();
        for _ in 0..10_000 {
            limiter.pay(1 << 20).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn live_commits_earn_extra_transactions() {
        let limiter = std::sync::Arc::new(RateLimiter::new(Limits {
            transactions_per_second: 10,
            bytes_per_second: 0,
        }));
        // 40 commits in the first two seconds: 20 allowed by the limit
        // plus 40 credited make 60 copies in about two seconds.
        let crediting = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    limiter.credit(100);
                }
            })
        };
        let start = Instant::now();
        for _ in 0..60 {
            limiter.pay(100).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        crediting.await.unwrap();
        assert!((1.8..2.3).contains(&elapsed), "took {elapsed} s");
    }
}
