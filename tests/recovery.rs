//! Online recovery with real `runzeo` backends and real ZODB clients
//! (ZODB.DB over ClientStorage pointed at zeoraid): a degraded backend is
//! recovered with `raid_recover` while clients commit, from an empty
//! storage, refused when diverged, rate-limited, refused while another
//! recovery or a pack runs, with its target or source killed mid-copy, and
//! resumed after a restart of zeoraid.
//!
//! Each test runs one subcommand of `tests/python/recovery_scenarios.py`
//! (see its docstring for what each checks; the backends' FileStorages are
//! compared record by record at the end). They run one at a time (each
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

/// The script's own deadline for a scenario, seconds, unless it says
/// otherwise.
const SCRIPT_DEADLINE: u64 = 90;

/// Room after the script's deadline to print its diagnostics and clean up,
/// before this file kills its process group.
const GRACE: Duration = Duration::from_secs(30);

/// Sends `signal` to every process of the group `pgid` (the script and
/// everything it started: zeoraid, runzeo, multiprocessing children).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What one run of the script gave.
struct Run {
    /// Its exit status; None if it had to be killed.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `recovery_scenarios.py <args> --deadline <deadline>` in its own
/// process group, killing the group `GRACE` after the deadline.
fn run_script(args: &[&str], deadline: u64) -> Run {
    let python = support::python();
    let script = support::python_dir().join("recovery_scenarios.py");
    let dir = tempfile::Builder::new()
        .prefix("zeoraid-recovery-test-")
        .tempdir()
        .expect("temp dir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let deadline_arg = deadline.to_string();
    let hard_deadline = Duration::from_secs(deadline) + GRACE;
    let mut command = Command::new(&python);
    command
        .arg("-u")
        .arg(&script)
        .args(args)
        .args(["--deadline", &deadline_arg])
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
            Ok(None) if started.elapsed() >= hard_deadline => {
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
    Run {
        status,
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
        elapsed,
    }
}

/// Runs one scenario with the script's deadline `deadline` (seconds) and
/// asserts it ends with `recovery scenario NAME: ok`.
fn scenario_with_deadline(args: &[&str], deadline: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = args[0];
    let run = run_script(args, deadline);
    let last = support::last_line(&run.stdout);
    let ok = run.status.is_some_and(|s| s.success())
        && last.starts_with(&format!("recovery scenario {name}: ok"));
    if !ok {
        panic!(
            "recovery scenario `{}` failed after {:.1?} ({})\n\
             --- stdout:\n{}\n--- stderr (reason, zeoraid log, state, backend logs):\n{}",
            args.join(" "),
            run.elapsed,
            match run.status {
                None => format!(
                    "killed after the {:?} deadline",
                    Duration::from_secs(deadline) + GRACE
                ),
                Some(status) => status.to_string(),
            },
            run.stdout,
            run.stderr
        );
    }
    println!("{}(ran {:.1?})", run.stdout, run.elapsed);
}

fn scenario(args: &[&str]) {
    scenario_with_deadline(args, SCRIPT_DEADLINE);
}

/// Scenario 1: b killed, 2000 transactions without it, then recovered
/// while three clients commit: 1 transaction verified, only the missing
/// part copied, a and b identical record by record.
#[test]
fn incremental_recovery_under_load() {
    scenario_with_deadline(&["incremental_under_load"], 150);
}

/// Scenario 2: an empty b is degraded at start-up and gets all of a's
/// history (0 verified, every transaction copied).
#[test]
fn recovery_of_an_empty_target_copies_everything() {
    scenario(&["empty_target"]);
}

/// Scenario 3: a b with a transaction of its own is refused (naming the
/// tid), not written to, and stays degraded; emptied, it is recovered.
#[test]
fn diverged_target_is_refused_and_left_untouched() {
    scenario(&["diverged_refused"]);
}

/// Scenario 3: full_verify compares every transaction: it passes an exact
/// prefix and refuses a prefix with an earlier transaction changed, which
/// the incremental check (newest transaction only) does not see.
#[test]
fn full_verify_finds_an_earlier_difference() {
    scenario(&["diverged_refused", "--full-verify"]);
}

/// Scenario 4: `[recovery] transactions_per_second` bounds the copy rate.
#[test]
fn rate_limit_from_the_config_bounds_the_copy() {
    scenario(&["rate_limit"]);
}

/// Scenario 4: a recovery limited below the clients' commit rate still
/// finishes (live commits earn it credit).
#[test]
fn rate_limited_recovery_finishes_under_a_heavier_load() {
    scenario(&["rate_limit", "--under-load"]);
}

/// Scenario 5: a second recovery, a recovery of an optimal or unknown
/// backend, and a pack are refused while a recovery runs.
#[test]
fn second_recovery_and_pack_are_refused_while_recovering() {
    scenario(&["refusals"]);
}

/// Scenario 6: the target killed mid-copy: the recovery fails, the clients
/// go on; restarted, the target is recovered.
#[test]
fn target_killed_mid_copy_fails_the_recovery_then_recovers() {
    scenario(&["kill_target"]);
}

/// Scenario 7: the source killed mid-copy: the recovery goes on from the
/// other optimal backend.
#[test]
fn source_killed_mid_copy_recovery_goes_on_from_another() {
    scenario(&["kill_source", "--backends", "3"]);
}

/// Scenario 7: the only source killed mid-copy: the recovery fails and
/// zeoraid reports failed.
#[test]
fn only_source_killed_mid_copy_fails_the_recovery() {
    scenario(&["kill_source", "--backends", "2"]);
}

/// Scenario 8: zeoraid restarted mid-copy: the target stays degraded and a
/// new recovery resumes after its newest transaction, copying nothing
/// twice.
#[test]
fn recovery_resumes_after_a_zeoraid_restart() {
    scenario(&["restart_resume"]);
}

#[test]
fn blob_record_stops_the_recovery_until_blobs_are_supported() {
    scenario(&["blob_refused"]);
}
