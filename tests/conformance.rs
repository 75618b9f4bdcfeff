//! ZODB's storage conformance tests (ZEO's FileStorageTests + ZODB's
//! HistoryStorage, ~107 tests) run by real ClientStorage clients through
//! zeoraid, each test with a fresh backend ZEO server and a fresh zeoraid.
//! The work is done by `tests/python/conformance.py`; see its docstring.
//!
//! The configurations run one at a time (they are timing-sensitive and the
//! machine has 2 cores). `conformance_direct_control` (ignored by default)
//! runs the same tests without zeoraid: if it fails, the rig or the machine
//! is at fault, not zeoraid.

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

/// The control run: the same tests straight against ZEO, no zeoraid.
#[test]
#[ignore = "control run without zeoraid (~30 s): cargo test --test conformance -- --ignored"]
fn conformance_direct_control() {
    conformance(&["--direct", "--backend-encoding", "pickle"]);
}
