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

/// A history with undos of blob revisions, and an undo of such an undo
/// (re-creating an undone blob), is recovered onto an empty backend:
/// every revision loads from it alone, the blob files are identical.
#[test]
fn recovery_copies_undone_blob_revisions() {
    SCRIPT.run(&["recover_undone"], SCRIPT_DEADLINE);
}

/// With the target's blob directory shared, recovery copies blob records
/// exactly: record order and undo back-pointers as on the source.
#[test]
fn recovery_through_the_targets_blob_directory_is_exact() {
    SCRIPT.run(&["recover_exact"], SCRIPT_DEADLINE);
}

/// A 1 GiB blob through zeoraid with its peak RSS under 200 MiB; backends
/// streaming it for longer than the call timeout stay optimal.
#[test]
fn a_1_gib_blob_goes_through_in_bounded_memory() {
    SCRIPT.run(&["large"], 240);
}

/// kill -9 of a backend while zeoraid replays a 300 MB blob to it at vote:
/// the commit succeeds on the other, which then serves the blob; the
/// killed one is degraded and no spool file is left.
#[test]
fn a_backend_killed_mid_upload_is_degraded_and_the_commit_goes_through() {
    SCRIPT.run(&["kill_mid_upload"], SCRIPT_DEADLINE);
}

/// kill -9 of the backend zeoraid is fetching a 300 MB blob from into its
/// blob cache: the load completes from the other with the right bytes; the
/// killed one is degraded and no part file is left.
#[test]
fn a_backend_killed_mid_download_is_degraded_and_the_load_completes() {
    SCRIPT.run(&["kill_mid_download"], SCRIPT_DEADLINE);
}

/// 150 blob transactions (committed, aborted at every stage, conflicting)
/// and their loads leave no temporary file in zeoraid; kill -9 of zeoraid
/// mid-upload and mid-download leaves none after a restart, with both
/// backends optimal and identical.
#[test]
fn blob_traffic_and_crashes_leave_no_temporary_files() {
    SCRIPT.run(&["temp_files"], 120);
}

/// Eight clients loading one blob at the same moment fetch it from a
/// backend once; a pack empties zeoraid's blob cache.
#[test]
fn concurrent_loads_of_a_blob_fetch_it_once() {
    SCRIPT.run(&["cache"], SCRIPT_DEADLINE);
}

/// A backend whose storage keeps no blobs beside one that does is
/// degraded at start-up with that reason, and cannot be recovered so.
#[test]
fn a_backend_without_blob_support_is_degraded_at_start_up() {
    SCRIPT.run(&["mixed_support"], SCRIPT_DEADLINE);
}

/// The directory shared with shared-blob-dir clients is filled at
/// start-up, kept complete by commits (and after a crash), and pruned by
/// a pack; it always equals a backend's blob directory.
#[test]
fn shared_blob_directory_is_filled_kept_and_pruned() {
    SCRIPT.run(&["shared_dir"], SCRIPT_DEADLINE);
}

/// Blobs copied into a backend's own blob directory land exactly as
/// streamed ones do on the other; no copy is left behind, even by a crash.
#[test]
fn backend_blob_directories() {
    SCRIPT.run(&["backend_dirs"], SCRIPT_DEADLINE);
}

/// A client reading a large blob slowly while others commit keeps its
/// connection: the stream leaves room in its queue for invalidations.
#[test]
fn a_slow_blob_reader_is_not_disconnected() {
    SCRIPT.run(&["slow_reader"], SCRIPT_DEADLINE);
}

/// A backend that cannot store a blob the others store answers vote
/// differently: it is degraded and the commit goes through.
#[test]
fn a_backend_failing_a_blob_store_is_degraded() {
    SCRIPT.run(&["vote_differs"], SCRIPT_DEADLINE);
}
