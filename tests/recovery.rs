//! Online recovery with real `runzeo` backends and real ZODB clients
//! (ZODB.DB over ClientStorage pointed at zeoraid): a degraded backend is
//! recovered with `raid_recover` while clients commit, from an empty
//! storage, refused when diverged, rate-limited, refused while another
//! recovery or a pack runs, with its target or source killed mid-copy, and
//! resumed after a restart of zeoraid.
//!
//! Each test runs one subcommand of `tests/python/recovery_scenarios.py`
//! (see its docstring for what each checks; the backends' FileStorages are
//! compared record by record at the end), one at a time and under
//! deadlines (see `support::scenario`).

mod support;

use support::scenario::Script;

const SCRIPT: Script = Script {
    file: "recovery_scenarios.py",
    label: "recovery",
    zeoraid: env!("CARGO_BIN_EXE_zeoraid"),
};

/// The script's own deadline for a scenario, seconds, unless it says
/// otherwise.
const SCRIPT_DEADLINE: u64 = 90;

fn scenario_with_deadline(args: &[&str], deadline: u64) {
    SCRIPT.run(args, deadline);
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
fn blob_record_without_its_file_on_the_source_stops_the_recovery() {
    scenario(&["blob_refused"]);
}

/// A target whose FileStorage cut off a torn transaction but reports it as
/// its last is verified in full and recovered from where it really ends.
#[test]
fn torn_target_is_verified_in_full_and_recovered() {
    scenario(&["torn_target"]);
}
