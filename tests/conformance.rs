//! ZODB's storage conformance tests (ZEO's FileStorageTests + ZODB's
//! HistoryStorage, ~107 tests) run by real ClientStorage clients through
//! zeoraid, each test with fresh backend ZEO servers and a fresh zeoraid.
//! The work is done by `tests/python/conformance.py`; see its docstring.
//!
//! With one backend zeoraid is a transparent proxy; with two and three
//! (`conformance_two_backends`, `conformance_three_backends`) it mirrors
//! every commit, and after each test the backends' Data.fs files are read
//! directly (not through ZEO) and must hold the identical history
//! (transactions and records, field by field, and the last tid); a backend
//! degraded during a test fails it too.
//!
//! The configurations run one at a time (they are timing-sensitive and the
//! machine has 2 cores). `conformance_direct_control` (ignored by default)
//! runs the same tests without zeoraid: if it fails, the rig or the machine
//! is at fault, not zeoraid. `conformance_mixed_backends` (ignored by
//! default) mirrors to backends of both encodings.

mod support;

use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn conformance(args: &[&str]) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = support::run_python(
        "conformance.py",
        args,
        &[("ZEORAID_BIN", env!("CARGO_BIN_EXE_zeoraid"))],
    );
    println!("{output}");
    support::assert_summary(&output, "conformance");
}

#[test]
fn conformance_front_msgpack_backend_pickle() {
    conformance(&[
        "--frontend-encoding",
        "msgpack",
        "--backend-encoding",
        "pickle",
    ]);
}

#[test]
fn conformance_front_pickle_backend_pickle() {
    conformance(&[
        "--frontend-encoding",
        "pickle",
        "--backend-encoding",
        "pickle",
    ]);
}

#[test]
fn conformance_front_msgpack_backend_msgpack() {
    conformance(&[
        "--frontend-encoding",
        "msgpack",
        "--backend-encoding",
        "msgpack",
    ]);
}

/// Mirroring to two backends; their histories are compared after each test.
#[test]
fn conformance_two_backends() {
    conformance(&[
        "--backends",
        "2",
        "--frontend-encoding",
        "msgpack",
        "--backend-encoding",
        "pickle",
    ]);
}

/// Mirroring to three backends of both encodings (a and c msgpack, b
/// pickle) behind a pickle front end: the backends' answers must agree
/// across encodings, and their histories are compared after each test.
#[test]
fn conformance_three_mixed_backends() {
    conformance(&[
        "--backends",
        "3",
        "--mixed",
        "--frontend-encoding",
        "pickle",
        "--backend-encoding",
        "msgpack",
    ]);
}

/// The control run: the same tests straight against ZEO, no zeoraid.
#[test]
#[ignore = "control run without zeoraid (~30 s): cargo test --test conformance -- --ignored"]
fn conformance_direct_control() {
    conformance(&["--direct", "--backend-encoding", "pickle"]);
}
