//! Blobs through zeoraid with real `runzeo`-style ZEO servers (blob
//! directories) and real ZODB clients: streamed stores mirrored to every
//! backend, loads relayed from a backend, spool files cleaned up, blob
//! files copied by recovery. Each test
//! runs one subcommand of `tests/python/blob_scenarios.py` (see its
//! docstring), one at a time and under deadlines (see `support::scenario`).

mod support;

use support::scenario::Script;

const SCRIPT: Script = Script {
    file: "blob_scenarios.py",
    label: "blob",
    zeoraid: env!("CARGO_BIN_EXE_zeoraid"),
};

/// The script's own deadline for one scenario, seconds.
const SCRIPT_DEADLINE: u64 = 90;

/// Blobs of 0 B to 5 MB and new revisions stored through zeoraid land
/// byte for byte on both backends (one pickle, one msgpack) and load back
/// through another client; an aborted upload leaves no spool file.
#[test]
fn blobs_are_mirrored_and_loaded_back() {
    SCRIPT.run(&["store_and_load"], SCRIPT_DEADLINE);
}

/// A blob spool file a crash left behind is removed at start-up.
#[test]
fn leftover_blob_spools_are_removed_at_start_up() {
    SCRIPT.run(&["leftovers"], SCRIPT_DEADLINE);
}

/// A backend that lost its storage and blob dir is recovered with every
/// transaction and blob file; every revision then loads from it alone.
#[test]
fn recovery_onto_an_empty_backend_copies_every_blob_file() {
    SCRIPT.run(&["recover_empty"], SCRIPT_DEADLINE);
}

/// A 1 GiB blob through zeoraid with its peak RSS under 200 MiB; backends
/// streaming it for longer than the call timeout stay optimal.
#[test]
fn a_1_gib_blob_goes_through_in_bounded_memory() {
    SCRIPT.run(&["large"], 240);
}
