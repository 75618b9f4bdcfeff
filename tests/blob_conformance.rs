//! ZODB's and ZEO's own blob test suites run by real ClientStorage clients
//! through zeoraid, each storage a test opens behind a fresh zeoraid
//! mirroring to 2 fresh ZEO servers with blob directories: clients that
//! stream blobs (`shared_blob_dir=False`), and clients that share
//! zeoraid's `[server] blob_dir` (`shared_blob_dir=True`). After each test,
//! with everything stopped, the backends' FileStorages must hold the
//! identical history and their blob directories the identical blob files
//! (SHA-256), no backend may have been degraded, and in shared mode
//! zeoraid's blob directory must hold exactly the backends' committed blob
//! files and no leftover upload or spool file. The work is done by
//! `tests/python/blob_conformance.py` (see its docstring: what runs, what
//! is left out and why).

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
/// doctests and BlobUndoTests), streamed.
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

/// `storage_reusable_suite('ClientStorageSharedBlobs', …)` (the same 20
/// tests) with shared-blob-dir clients whose blob directory is zeoraid's
/// `[server] blob_dir`.
#[test]
fn zodb_blob_suite_shared_blob_dir_through_zeoraid() {
    SCRIPT.run(&["zodb-shared"], SCRIPT_DEADLINE);
}

/// ZEO's shared-mode blob tests (BlobWritableCacheTests' CommonBlobTests
/// methods) and IExternalGC.test with a shared-blob-dir client (the pack
/// must take the packed-away blob out of zeoraid's blob directory).
#[test]
fn zeo_blob_tests_shared_blob_dir_through_zeoraid() {
    SCRIPT.run(&["zeo-shared"], SCRIPT_DEADLINE);
}
