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

    pub fn to_value(self) -> Value {
        Value::Bytes(Bytes::copy_from_slice(&self.0.to_be_bytes()))
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_values() {
        let tid = Tid(0x040d_53da_dd46_ac33);
        assert_eq!(Tid::from_value(&tid.to_value()), Some(tid));
        assert_eq!(tid.to_string(), "040d53dadd46ac33");
        assert_eq!(Tid::from_value(&Value::bytes(&b"short"[..])), None);
        assert_eq!(Tid::from_value(&Value::None), None);
    }
}
