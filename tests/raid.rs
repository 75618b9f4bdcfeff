//! RAID-1 behaviour with real `runzeo` backends and real ZODB clients
//! (ZODB.DB over ClientStorage pointed at zeoraid): backends killed, hung,
//! restarted; zeoraid restarted; stale survivors; conflicts; fail modes.
//!
//! Each test runs one subcommand of `tests/python/raid_scenarios.py` (see
//! its docstring for what each checks). They run one at a time (each
//! starts two or three runzeo servers, a zeoraid and several clients; the
//! machines this runs on have two cores), each under a deadline: the
//! script's own (`--deadline`, after which it prints thread stacks and the
//! logs and kills everything it started) and, behind it, this file's, which
//! kills the script's whole process group. A failure shows the script's
//! output: the reason, zeoraid's log, its state file and the backends' logs.

mod support;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The scenarios are CPU-heavy: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The script's own deadline for one scenario, seconds.
const SCRIPT_DEADLINE: u64 = 90;

/// This file's deadline for one scenario (the script's plus room to print
/// its diagnostics and clean up).
const HARD_DEADLINE: Duration = Duration::from_secs(SCRIPT_DEADLINE + 30);

/// Sends `signal` to every process of the group `pgid` (the script and
/// everything it started: zeoraid, runzeo, multiprocessing children).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `raid_scenarios.py <args>` in its own process group; returns its
/// exit status (None if it had to be killed), stdout, stderr and run time.
fn run_script(args: &[&str]) -> (Option<ExitStatus>, String, String, Duration) {
    let python = support::python();
    let script = support::python_dir().join("raid_scenarios.py");
    let dir = tempfile::Builder::new()
        .prefix("zeoraid-raid-test-")
        .tempdir()
        .expect("temp dir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let deadline = SCRIPT_DEADLINE.to_string();
    let mut command = Command::new(&python);
    command
        .arg("-u")
        .arg(&script)
        .args(args)
        .args(["--deadline", &deadline])
        .current_dir(dir.path())
        .env("ZEORAID_BIN", env!("CARGO_BIN_EXE_zeoraid"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("ZEO_MSGPACK")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .process_group(0);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let pgid = child.id();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= HARD_DEADLINE => {
                // SIGTERM lets the script stop what it started; then
                // SIGKILL for whatever is left of the group.
                signal_group(pgid, "-TERM");
                let grace = Instant::now() + Duration::from_secs(5);
                while Instant::now() < grace {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                signal_group(pgid, "-KILL");
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for the scenario script: {e}"),
        }
    };
    let elapsed = started.elapsed();
    if !status.is_some_and(|s| s.success()) {
        // Leave nothing behind a failed or killed script.
        signal_group(pgid, "-KILL");
    }
    let read = |path| {
        fs::read(path).map_or_else(
            |e| format!("({e})"),
            |b| String::from_utf8_lossy(&b).into_owned(),
        )
    };
    (status, read(&stdout_path), read(&stderr_path), elapsed)
}

/// Runs one scenario and asserts it ends with `raid scenario NAME: ok`.
fn scenario(args: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = args[0];
    let (status, stdout, stderr, elapsed) = run_script(args);
    let last = support::last_line(&stdout);
    let ok = status.is_some_and(|s| s.success())
        && last.starts_with(&format!("raid scenario {name}: ok"));
    if !ok {
        panic!(
            "raid scenario `{}` failed after {elapsed:.1?} ({})\n\
             --- stdout:\n{stdout}\n--- stderr (reason, zeoraid log, state, backend logs):\n{stderr}",
            args.join(" "),
            match status {
                None => format!("killed after the {HARD_DEADLINE:?} deadline"),
                Some(status) => status.to_string(),
            }
        );
    }
    println!("{stdout}(ran {elapsed:.1?})");
}

/// Scenario 1: kill -9 of one of two backends while four clients commit and load.
#[test]
fn kill9_one_of_two_backends_under_load() {
    scenario(&["kill-one", "--backends", "2"]);
}

/// Scenario 1: kill -9 of one of three backends while four clients commit and load.
#[test]
fn kill9_one_of_three_backends_under_load() {
    scenario(&["kill-one", "--backends", "3"]);
}

/// Scenario 2: A SIGSTOPped backend is degraded within the timeouts and stays
/// degraded after SIGCONT.
#[test]
fn hung_backend_is_degraded_and_stays_degraded_after_sigcont() {
    scenario(&["hang"]);
}

/// Scenario 3: A restart of zeoraid keeps a degraded (but reachable) backend
/// degraded, with its original reason.
#[test]
fn restart_keeps_a_reachable_degraded_backend_degraded() {
    scenario(&["restart-degraded"]);
}

/// Scenario 3: Graceful restarts with every backend optimal record nothing as
/// degraded.
#[test]
fn graceful_restarts_keep_optimal_backends_optimal() {
    scenario(&["restart-cycles", "--cycles", "15"]);
}

/// Scenario 3: Start-up with a backend down (port closed; black hole) serves within
/// the connect timeout and reports it unreachable at start-up.
#[test]
fn start_up_with_a_backend_down_is_bounded_by_the_connect_timeout() {
    scenario(&["startup-down"]);
}

/// Scenario 4: Only a stale backend reachable: zeoraid does not serve it.
#[test]
fn stale_survivor_alone_is_not_served() {
    scenario(&["stale-survivor"]);
}

/// Scenario 4: ... and once the current backend is back, zeoraid serves it again.
#[test]
fn current_backend_back_after_a_refused_start_is_served() {
    scenario(&["stale-survivor", "--then-current-returns"]);
}

/// Scenario 5: Racing commits on one object: a real ConflictError for the loser.
#[test]
fn racing_commits_get_a_real_conflict_error() {
    scenario(&["conflict"]);
}

/// Scenario 5: Client-side conflict resolution (BTrees.Length) through two backends.
#[test]
fn client_side_conflict_resolution_through_two_backends() {
    scenario(&["conflict-resolution"]);
}

/// Scenario 6: fail_mode "close", every backend killed: clients disconnected, new
/// ones refused.
#[test]
fn fail_mode_close_disconnects_and_refuses_clients() {
    scenario(&["fail-close"]);
}

/// Scenario 6: fail_mode "read-only", min_optimal 2, one backend killed: commits get
/// ReadOnlyError, loads work.
#[test]
fn fail_mode_read_only_refuses_commits_and_serves_loads() {
    scenario(&["fail-read-only"]);
}
