//! Transaction ids: 8-byte big-endian timestamps.

use std::fmt;

use bytes::Bytes;

use super::Value;

/// A ZODB transaction id (also the serial of the records it wrote).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tid(pub u64);

impl Tid {
    pub const ZERO: Tid = Tid(0);

    pub fn from_bytes(data: &[u8]) -> Option<Tid> {
        Some(Tid(u64::from_be_bytes(data.try_into().ok()?)))
    }

    /// A tid from a message value, which must be an 8-byte string.
    pub fn from_value(value: &Value) -> Option<Tid> {
        Tid::from_bytes(value.as_bytes()?)
    }

    /// The tid FileStorage would choose at `unix_nanos`: ZODB's TimeStamp,
    /// minutes since 1900 (months of 31 days) in the high 32 bits, the
    /// fraction of the minute in units of 60/2^32 s in the low 32 bits.
    pub fn from_unix_nanos(unix_nanos: u128) -> Tid {
        let secs = (unix_nanos / 1_000_000_000) as i64;
        let nanos = (unix_nanos % 1_000_000_000) as u64;
        let civil = UtcTime::from_unix(secs);
        let minutes = ((((civil.year - 1900) * 12 + civil.month - 1) * 31 + civil.day - 1) * 24
            + civil.hour)
            * 60
            + civil.minute;
        // Seconds within the minute, scaled to 2^32 per 60 s.
        let within = (civil.second as u128 * 1_000_000_000 + nanos as u128) << 32;
        let low = (within / 60_000_000_000) as u64;
        Tid(((minutes as u64) << 32) | low.min(u32::MAX as u64))
    }

    /// The next tid after `self` that is not earlier than `now`: how
    /// FileStorage picks a new tid ("now, or last + 1").
    pub fn next_after(self, now: Tid) -> Tid {
        now.max(Tid(self.0 + 1))
    }

    pub fn to_value(self) -> Value {
        Value::Bytes(Bytes::copy_from_slice(&self.0.to_be_bytes()))
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A UTC calendar time.
#[derive(Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    /// 0 = Sunday.
    pub weekday: i64,
}

impl UtcTime {
    /// The civil UTC time of a Unix time (Howard Hinnant's algorithm).
    pub fn from_unix(secs: i64) -> UtcTime {
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        UtcTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: in_day / 3600,
            minute: in_day % 3600 / 60,
            second: in_day % 60,
            weekday: (days + 4).rem_euclid(7),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_based_tids_match_zodb() {
        // persistent.TimeStamp.TimeStamp(2026, 11, 28, 22, 18, 52.0).raw()
        let tid = Tid::from_unix_nanos(1_795_904_332 * 1_000_000_000);
        assert_eq!(tid.0 >> 32, 0x040d_53da);
        assert_eq!(tid, Tid(0x040d_53da_dddd_dddd));
        assert_eq!(Tid(5).next_after(Tid(3)), Tid(6));
        assert_eq!(Tid(5).next_after(Tid(9)), Tid(9));
    }

    #[test]
    fn round_trips_through_values() {
        let tid = Tid(0x040d_53da_dd46_ac33);
        assert_eq!(Tid::from_value(&tid.to_value()), Some(tid));
        assert_eq!(tid.to_string(), "040d53dadd46ac33");
        assert_eq!(Tid::from_value(&Value::bytes(&b"short"[..])), None);
        assert_eq!(Tid::from_value(&Value::None), None);
    }
}
