//! `server_status` and the `ruok` probe's JSON.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, UNIX_EPOCH};

use crate::protocol::tid::UtcTime;
use crate::protocol::Value;
use crate::raid::{Raid, Stats};

/// The counters ZEO's `server_status` reports, with the same keys, and
/// zeoraid's blob cache figures.
pub fn server_status(core: &Raid) -> Value {
    let stats = core.stats();
    let cache = core.blob_cache_figures();
    let int = |counter: &AtomicU64| Value::Int(Stats::get(counter) as i64);
    let lock_ms = Stats::get(&stats.lock_time_ms);
    let lock_time = if lock_ms == 0 {
        Value::None
    } else {
        Value::Float(lock_ms as f64 / 1000.0)
    };
    let entries = [
        ("connections", int(&stats.connections)),
        ("loads", int(&stats.loads)),
        ("stores", int(&stats.stores)),
        ("commits", int(&stats.commits)),
        ("aborts", int(&stats.aborts)),
        ("active_txns", int(&stats.active_txns)),
        ("conflicts", int(&stats.conflicts)),
        ("conflicts_resolved", int(&stats.conflicts_resolved)),
        ("waiting", int(&stats.waiting)),
        ("lock_time", lock_time),
        ("start", Value::str(ctime(stats.started))),
        // zeoraid's own transaction timeout is always running.
        ("timeout-thread-is-alive", Value::Bool(true)),
        ("last-transaction", Value::str(core.last_tid().to_string())),
        // zeoraid's own: its cache of blob files for clients' loads.
        ("blob-cache-files", Value::Int(cache.files as i64)),
        ("blob-cache-bytes", Value::Int(cache.bytes as i64)),
        ("blob-cache-hits", Value::Int(cache.hits as i64)),
        ("blob-cache-fetches", Value::Int(cache.fetches as i64)),
    ];
    Value::Dict(
        entries
            .into_iter()
            .map(|(key, value)| (Value::str(key), value))
            .collect(),
    )
}

/// `{storage_name: status}` as JSON, the answer to a `ruok` probe.
pub fn ruok_json(core: &Raid) -> String {
    let status = to_json(&server_status(core));
    serde_json::json!({ core.storage_name(): status }).to_string()
}

fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Value::None => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => Json::from(*f),
        Value::Str(s) => Json::from(s.as_str()),
        Value::Dict(items) => Json::Object(
            items
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), to_json(v)))
                .collect(),
        ),
        other => Json::from(other.summary()),
    }
}

/// The time in C's `ctime` format, as ZEO reports its start time (UTC).
fn ctime(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let t = UtcTime::from_unix(secs as i64);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[t.weekday as usize],
        MONTHS[(t.month - 1) as usize],
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_formats_like_c() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_904_332);
        assert_eq!(ctime(t), "Sat Nov 28 22:18:52 2026");
        assert_eq!(ctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
    }
}
