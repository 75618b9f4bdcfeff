//! Runs one subcommand of a scenario script of `tests/python/`
//! (`raid_scenarios.py`, `recovery_scenarios.py`) and asserts it passed.
//!
//! Scenarios run one at a time (each starts several runzeo servers, a
//! zeoraid and clients; the machines this runs on have two cores), each
//! under two deadlines: the script's own (`--deadline`, after which it
//! prints thread stacks and the logs and kills everything it started) and,
//! `GRACE` behind it, this module's, which kills the script's whole process
//! group. A failure shows the script's output: the reason, zeoraid's log,
//! its state file and the backends' logs.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The scenarios are CPU-heavy: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Room after the script's deadline to print its diagnostics and clean up,
/// before the process group is killed.
const GRACE: Duration = Duration::from_secs(30);

/// A scenario script.
pub struct Script<'a> {
    /// Its file name in `tests/python/`.
    pub file: &'a str,
    /// The word its success line starts with: `LABEL scenario NAME: ok`.
    pub label: &'a str,
    /// The zeoraid binary the scenarios run.
    pub zeoraid: &'a str,
}

/// What one run of the script gave.
struct Run {
    /// Its exit status; None if it had to be killed.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Script<'_> {
    /// Runs `FILE <args> --deadline <deadline>` (seconds) and asserts it
    /// ends with `LABEL scenario NAME: ok`.
    pub fn run(&self, args: &[&str], deadline: u64) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let name = args[0];
        let run = self.run_script(args, deadline);
        let last = super::last_line(&run.stdout);
        let ok = run.status.is_some_and(|s| s.success())
            && last.starts_with(&format!("{} scenario {name}: ok", self.label));
        if !ok {
            panic!(
                "{} scenario `{}` failed after {:.1?} ({})\n\
                 --- stdout:\n{}\n--- stderr (reason, zeoraid log, state, backend logs):\n{}",
                self.label,
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

    /// Runs the script in its own process group, killing the group `GRACE`
    /// after the deadline.
    fn run_script(&self, args: &[&str], deadline: u64) -> Run {
        let python = super::python();
        let script = super::python_dir().join(self.file);
        let dir = tempfile::Builder::new()
            .prefix(&format!("zeoraid-{}-test-", self.label))
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
            .env("ZEORAID_BIN", self.zeoraid)
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
        Run {
            status,
            stdout: read_lossy(&stdout_path),
            stderr: read_lossy(&stderr_path),
            elapsed,
        }
    }
}

/// Sends `signal` to every process of the group `pgid` (the script and
/// everything it started: zeoraid, runzeo, multiprocessing children).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn read_lossy(path: &Path) -> String {
    fs::read(path).map_or_else(
        |e| format!("({e})"),
        |b| String::from_utf8_lossy(&b).into_owned(),
    )
}
