//! ZODB's and ZEO's own blob test suites run by real ClientStorage clients
//! (streamed blobs, `shared_blob_dir=False`) through zeoraid, each storage
//! a test opens behind a fresh zeoraid mirroring to 2 fresh ZEO servers
//! with blob directories. After each test, with everything stopped, the
//! backends' FileStorages must hold the identical history and their blob
//! directories the identical blob files (SHA-256), and no backend may have
//! been degraded. The work is done by `tests/python/blob_conformance.py`
//! (see its docstring: what runs, what is left out and why, and the known
//! zeoraid failures it tolerates only in their exact known form).

mod support;

use support::scenario::Script;

const SCRIPT: Script = Script {
    file: "blob_conformance.py",
    label: "blobconf",
    zeoraid: env!("CARGO_BIN_EXE_zeoraid"),
};

/// The script's own deadline for one suite, seconds.
const SCRIPT_DEADLINE: u64 = 120;

/// `ZODB.tests.testblob.storage_reusable_suite` (20 tests: the blob
/// connection, import/export and transaction doctests, testblob's module
/// doctests and BlobUndoTests).
#[test]
fn zodb_blob_suite_through_zeoraid() {
    SCRIPT.run(&["zodb"], SCRIPT_DEADLINE);
}

/// ZEO's blob tests: BlobAdaptedFileStorageTests' blob methods,
/// zeo_blob_cache.test, gracefully_handle_abort_while_storing_many_blobs
/// and IExternalGC.test.
#[test]
fn zeo_blob_tests_through_zeoraid() {
    SCRIPT.run(&["zeo"], SCRIPT_DEADLINE);
}
