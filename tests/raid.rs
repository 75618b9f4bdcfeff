//! RAID-1 behaviour with real `runzeo` backends and real ZODB clients
//! (ZODB.DB over ClientStorage pointed at zeoraid): backends killed, hung,
//! restarted; zeoraid restarted; stale survivors; conflicts; fail modes.
//!
//! Each test runs one subcommand of `tests/python/raid_scenarios.py` (see
//! its docstring for what each checks), one at a time and under deadlines
//! (see `support::scenario`).

mod support;

use support::scenario::Script;

const SCRIPT: Script = Script {
    file: "raid_scenarios.py",
    label: "raid",
    zeoraid: env!("CARGO_BIN_EXE_zeoraid"),
};

/// The script's own deadline for one scenario, seconds.
const SCRIPT_DEADLINE: u64 = 90;

fn scenario(args: &[&str]) {
    SCRIPT.run(args, SCRIPT_DEADLINE);
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
