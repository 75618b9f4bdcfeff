//! How counts and sizes read in what operators see: `raid_details`, the
//! log, and the management commands' output.

/// `1 transaction`, `5000 transactions`.
pub fn transactions(count: u64) -> String {
    if count == 1 {
        "1 transaction".to_owned()
    } else {
        format!("{count} transactions")
    }
}

/// A byte count: `512 B`, `3.4 MiB`.
pub fn byte_size(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_read_well() {
        assert_eq!(transactions(1), "1 transaction");
        assert_eq!(transactions(0), "0 transactions");
        assert_eq!(byte_size(512.0), "512 B");
        assert_eq!(byte_size(3.5 * 1024.0 * 1024.0), "3.5 MiB");
    }
}
