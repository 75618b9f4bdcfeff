//! Shared rig of zeoraid's integration tests: a provisioned Python venv with
//! ZEO/ZODB, real `runzeo` servers, zeoraid processes and the Python test
//! scripts under `tests/python/`.
//!
//! Used by every integration test as `mod support;` and by examples through
//! `#[path = "../tests/support/mod.rs"] mod support;`. It therefore never
//! names `env!("CARGO_BIN_EXE_zeoraid")` (only integration tests have it):
//! the zeoraid binary is a parameter wherever it is needed.
//!
//! * [`python`] provisions, once per machine and requirements file, a venv
//!   from `tests/python/requirements.txt` under
//!   `<target dir>/zeoraid-pyenv/<hash>/`, and returns its interpreter.
//! * [`ZeoServer`]: `runzeo` serving a FileStorage in its own temp dir.
//! * [`ZeoraidProcess`]: `zeoraid serve --config` with a generated config.
//! * [`run_python`]: runs a script of `tests/python/` with the venv;
//!   [`scenario::Script`] runs one scenario of a scenario script.
//!
//! Every child process is killed when its owner is dropped (also while a
//! failing test unwinds).
#![allow(dead_code)]

pub mod raw_client;
pub mod scenario;

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a zeoraid or ZEO server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Default limit of one [`run_python`] run; env `ZEORAID_PYTHON_TIMEOUT`
/// (seconds) overrides it.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The package root (where Cargo.toml is).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/python/`.
pub fn python_dir() -> PathBuf {
    manifest_dir().join("tests").join("python")
}

/// Cargo's target dir: env `CARGO_TARGET_DIR` (relative to the package root
/// if relative) or `<package root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                manifest_dir().join(dir)
            }
        }
        _ => manifest_dir().join("target"),
    }
}

// ---------------------------------------------------------------------------
// Python venv

/// FNV-1a, 64 bits: stable across Rust versions (std's hashers are not
/// promised to be), enough to tell requirements files apart.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in data {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The venv directory for the current requirements.txt.
pub fn venv_dir() -> PathBuf {
    let requirements = python_dir().join("requirements.txt");
    let contents = fs::read(&requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    let hash = format!("{:016x}", fnv1a64(&contents));
    target_dir().join("zeoraid-pyenv").join(&hash[..12])
}

/// Written into the venv only after a complete, successful install.
const MARKER: &str = "zeoraid-provisioned";

/// The venv's python, provisioning the venv first if needed.
///
/// Once per machine (and per requirements.txt content): `python3 -m venv`
/// with the `python3` found on PATH, then `pip install -r requirements.txt`,
/// then an import check; a marker file is written only after all succeeded.
/// An exclusive lock on `<hash>.lock` beside the venv serializes test
/// binaries (and threads) that provision at the same time; a venv without
/// marker (an interrupted install) is removed and made again. Panics naming
/// the command that failed, with its output.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(provision_venv).clone()
}

/// `<venv>/bin/<name>`, e.g. `runzeo`.
pub fn venv_bin(name: &str) -> PathBuf {
    python()
        .parent()
        .expect("venv python has a parent dir")
        .join(name)
}

fn provision_venv() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let marker = venv.join(MARKER);
    if marker.is_file() && python.is_file() {
        return python;
    }
    let root = venv.parent().expect("venv dir has a parent").to_owned();
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    let lock_path = root.join(format!(
        "{}.lock",
        venv.file_name().unwrap().to_string_lossy()
    ));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Someone else may have finished while we waited for the lock.
    if marker.is_file() && python.is_file() {
        return python;
    }
    if venv.exists() {
        fs::remove_dir_all(&venv)
            .unwrap_or_else(|e| panic!("cannot remove incomplete venv {}: {e}", venv.display()));
    }
    let requirements = python_dir().join("requirements.txt");
    let started = Instant::now();
    eprintln!(
        "zeoraid tests: provisioning the Python venv {} from {} (once per machine)",
        venv.display(),
        requirements.display()
    );
    run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    run_checked(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
    );
    run_checked(Command::new(&python).args([
        "-c",
        "import ZEO, ZODB, msgpack, ZEO.tests.testZEO, ZODB.tests.HistoryStorage",
    ]));
    let contents = fs::read(&requirements).expect("requirements.txt readable");
    fs::write(venv.join("requirements.txt"), &contents).expect("copy requirements.txt");
    fs::write(
        &marker,
        format!("provisioned in {:.1?}\n", started.elapsed()),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", marker.display()));
    eprintln!("zeoraid tests: venv ready after {:.1?}", started.elapsed());
    drop(lock);
    python
}

/// Runs `command` to completion; panics with the command line and its
/// output unless it exits 0.
fn run_checked(command: &mut Command) -> Output {
    let line = command_line(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    if !output.status.success() {
        panic!(
            "`{line}` failed ({})\n--- stdout:\n{}\n--- stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

fn command_line(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

// ---------------------------------------------------------------------------
// Ports

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Whether 127.0.0.1:`port` accepts a TCP connection now.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Polls until 127.0.0.1:`port` accepts TCP connections; false after
/// `timeout`.
#[must_use]
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_for_port_or_exit(port, timeout, || false)
}

/// As [`wait_for_port`], giving up early once `exited()` says so.
fn wait_for_port_or_exit(port: u16, timeout: Duration, mut exited: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        if port_accepts(port) {
            return true;
        }
        if exited() || Instant::now() >= deadline {
            return false;
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Processes

/// Sends SIGTERM (through kill(1): std has no signal API), waits up to
/// `grace`, then SIGKILL. Returns the exit status.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if sent {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    child.wait().ok()
}

fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temp dir")
}

/// The quoted TOML string for `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// ZEO server (runzeo)

/// Options of a [`ZeoServer`].
#[derive(Clone, Debug)]
pub struct ZeoServerConfig {
    /// `msgpack true` in the `<zeo>` section: the server announces M5.
    pub msgpack: bool,
    /// The storage name clients register with.
    pub storage: String,
    /// Extra lines for the `<zeo>` section, e.g. `"transaction-timeout 5"`.
    pub extra_zeo: Vec<String>,
}

impl Default for ZeoServerConfig {
    fn default() -> ZeoServerConfig {
        ZeoServerConfig {
            msgpack: false,
            storage: "1".to_owned(),
            extra_zeo: Vec::new(),
        }
    }
}

/// A real ZEO server: `<venv>/bin/runzeo -C zeo.conf`, serving a
/// FileStorage (`Data.fs`) in its own temp dir on 127.0.0.1 at a free port.
/// Its event log is `zeo.log` and its stdout/stderr `runzeo.out` in that
/// dir. Dropping it kills the server and removes the dir.
pub struct ZeoServer {
    config: ZeoServerConfig,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl ZeoServer {
    /// A server with storage "1", pickle (Z5) or, with `msgpack`, M5.
    pub fn start(msgpack: bool) -> ZeoServer {
        ZeoServer::start_with(ZeoServerConfig {
            msgpack,
            ..ZeoServerConfig::default()
        })
    }

    /// A pickle (Z5) server, storage "1".
    pub fn pickle() -> ZeoServer {
        ZeoServer::start(false)
    }

    /// A msgpack (M5) server, storage "1".
    pub fn msgpack() -> ZeoServer {
        ZeoServer::start(true)
    }

    pub fn start_with(config: ZeoServerConfig) -> ZeoServer {
        let dir = tempdir("zeo-server-");
        let mut server = ZeoServer {
            config,
            port: 0,
            child: None,
            dir,
        };
        // A port taken by someone else between free_port() and runzeo's
        // bind makes runzeo exit: try another.
        for attempt in 0..3 {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(message) if attempt < 2 && message.contains("Address already in use") => {
                    continue
                }
                Err(message) => panic!("{message}"),
            }
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn storage(&self) -> &str {
        &self.config.storage
    }

    pub fn is_msgpack(&self) -> bool {
        self.config.msgpack
    }

    /// The server's directory (zeo.conf, Data.fs, zeo.log, runzeo.out).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_fs(&self) -> PathBuf {
        self.dir().join("Data.fs")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The event log and runzeo's own output.
    pub fn log(&self) -> String {
        format!(
            "--- {}:\n{}--- {}:\n{}",
            self.dir().join("zeo.log").display(),
            read_lossy(&self.dir().join("zeo.log")),
            self.dir().join("runzeo.out").display(),
            read_lossy(&self.dir().join("runzeo.out"))
        )
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Graceful stop: SIGTERM (runzeo closes the storage), SIGKILL after
    /// 10 s. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Hard stop: SIGKILL, no chance to close anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts the server again (stopping it first if it runs) on the same
    /// port with the same Data.fs.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(message) = self.spawn_and_wait() {
            panic!("{message}");
        }
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir();
        let mut text = String::from("<zeo>\n");
        let _ = writeln!(text, "  address 127.0.0.1:{}", self.port);
        if self.config.msgpack {
            text.push_str("  msgpack true\n");
        }
        for line in &self.config.extra_zeo {
            let _ = writeln!(text, "  {line}");
        }
        text.push_str("</zeo>\n\n");
        let _ = writeln!(
            text,
            "<filestorage {}>\n  path {}\n</filestorage>\n",
            self.config.storage,
            dir.join("Data.fs").display()
        );
        let _ = writeln!(
            text,
            "<eventlog>\n  level INFO\n  <logfile>\n    path {}\n  </logfile>\n</eventlog>",
            dir.join("zeo.log").display()
        );
        let path = dir.join("zeo.conf");
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let config = self.write_config();
        let runzeo = venv_bin("runzeo");
        let out = append_file(&self.dir().join("runzeo.out"));
        let err = out.try_clone().expect("dup runzeo.out");
        let mut child = Command::new(&runzeo)
            .arg("-C")
            .arg(&config)
            .current_dir(self.dir())
            // runzeo falls back to ZEO_MSGPACK when the config says nothing.
            .env_remove("ZEO_MSGPACK")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", runzeo.display()));
        let port = self.port;
        let ready = wait_for_port_or_exit(port, START_TIMEOUT, || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if ready {
            self.child = Some(child);
            return Ok(());
        }
        let status = kill_and_reap(&mut child);
        Err(format!(
            "runzeo ({}) did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:?} \
             (exit status: {status:?})\n--- {}:\n{}{}",
            if self.config.msgpack {
                "msgpack"
            } else {
                "pickle"
            },
            config.display(),
            read_lossy(&config),
            self.log()
        ))
    }
}

impl Drop for ZeoServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// zeoraid

/// What [`ZeoraidProcess`] writes into zeoraid's TOML config.
#[derive(Clone, Debug)]
pub struct ZeoraidConfig {
    /// The front end's port; 0 picks a free one.
    pub listen_port: u16,
    /// The storage name clients register with.
    pub storage: String,
    /// What the front end announces: "msgpack" (M5) or "pickle" (Z5).
    pub encoding: String,
    /// `[[backend]]` entries: (name, port on 127.0.0.1, storage).
    pub backends: Vec<(String, u16, String)>,
    /// `[timeouts]` entries (seconds); the table is left out when empty.
    pub timeouts: Vec<(String, f64)>,
    /// Raw TOML lines written right after the `[server]` keys, before any
    /// other table: more `[server]` keys, or whole tables of their own
    /// (then do not also set `timeouts`, or `[timeouts]` appears twice).
    pub extra_server: Vec<String>,
    /// More keys for a `[[backend]]` entry: (backend name, raw TOML line).
    pub backend_extra: Vec<(String, String)>,
}

impl Default for ZeoraidConfig {
    fn default() -> ZeoraidConfig {
        ZeoraidConfig {
            listen_port: 0,
            storage: "1".to_owned(),
            encoding: "msgpack".to_owned(),
            backends: Vec::new(),
            timeouts: Vec::new(),
            extra_server: Vec::new(),
            backend_extra: Vec::new(),
        }
    }
}

impl ZeoraidConfig {
    /// Front end `encoding`, one backend per server (named a, b, c, ...).
    pub fn new(encoding: &str, backends: &[&ZeoServer]) -> ZeoraidConfig {
        ZeoraidConfig {
            encoding: encoding.to_owned(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, server)| {
                    (
                        ((b'a' + i as u8) as char).to_string(),
                        server.port(),
                        server.storage().to_owned(),
                    )
                })
                .collect(),
            ..ZeoraidConfig::default()
        }
    }

    /// The TOML text, listening on `port` with state in `state_dir`.
    pub fn to_toml(&self, port: u16, state_dir: &Path) -> String {
        let mut text = String::from("[server]\n");
        let _ = writeln!(text, "listen = {}", toml_str(&format!("127.0.0.1:{port}")));
        let _ = writeln!(text, "storage = {}", toml_str(&self.storage));
        let _ = writeln!(
            text,
            "state_dir = {}",
            toml_str(&state_dir.to_string_lossy())
        );
        let _ = writeln!(text, "encoding = {}", toml_str(&self.encoding));
        for line in &self.extra_server {
            let _ = writeln!(text, "{line}");
        }
        if !self.timeouts.is_empty() {
            text.push_str("\n[timeouts]\n");
            for (key, seconds) in &self.timeouts {
                let _ = writeln!(text, "{key} = {seconds:?}");
            }
        }
        for (name, port, storage) in &self.backends {
            let _ = write!(
                text,
                "\n[[backend]]\nname = {}\naddress = {}\nstorage = {}\n",
                toml_str(name),
                toml_str(&format!("127.0.0.1:{port}")),
                toml_str(storage)
            );
            for (_, line) in self.backend_extra.iter().filter(|(n, _)| n == name) {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }
}

/// A zeoraid process: `BINARY serve --config zeoraid.toml`, config, state
/// dir (`state/`) and log (`zeoraid.log`, its stderr and stdout) in its own
/// temp dir. RUST_LOG=info unless RUST_LOG is set. Dropping it kills the
/// process and removes the dir.
pub struct ZeoraidProcess {
    binary: PathBuf,
    config: ZeoraidConfig,
    port: u16,
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

impl ZeoraidProcess {
    /// zeoraid in front of one `backend` (named "a"), front end announcing
    /// `encoding`; `extra_server` as in [`ZeoraidConfig::extra_server`].
    pub fn start(
        binary: impl AsRef<Path>,
        backend: &ZeoServer,
        encoding: &str,
        extra_server: &[&str],
    ) -> ZeoraidProcess {
        let mut config = ZeoraidConfig::new(encoding, &[backend]);
        config.extra_server = extra_server.iter().map(|s| s.to_string()).collect();
        ZeoraidProcess::start_with(binary, config)
    }

    /// zeoraid with a config of your own making.
    pub fn start_with(binary: impl AsRef<Path>, config: ZeoraidConfig) -> ZeoraidProcess {
        let binary = binary.as_ref().to_owned();
        let mut process = ZeoraidProcess {
            binary,
            port: config.listen_port,
            config,
            child: Mutex::new(None),
            dir: tempdir("zeoraid-"),
        };
        let attempts = if process.config.listen_port == 0 {
            3
        } else {
            1
        };
        for attempt in 1..=attempts {
            if process.config.listen_port == 0 {
                process.port = free_port();
            }
            match process.spawn_and_wait() {
                Ok(()) => return process,
                Err(message) if attempt < attempts && message.to_lowercase().contains("in use") => {
                    continue
                }
                Err(message) => panic!("{message}"),
            }
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn config(&self) -> &ZeoraidConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("zeoraid.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("zeoraid.log")
    }

    /// Everything zeoraid has logged so far (all runs of this process
    /// object, see [`ZeoraidProcess::restart`]).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL. Returns the exit status (None if not running).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        child.and_then(|mut c| kill_and_reap(&mut c))
    }

    /// Graceful stop: SIGTERM, SIGKILL after `grace`. Returns the exit
    /// status (None if not running).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        child.and_then(|mut c| terminate(&mut c, grace))
    }

    /// Starts zeoraid again with the same config, port and state dir
    /// (killing it first if it runs).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(message) = self.spawn_and_wait() {
            panic!("{message}");
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let state_dir = self.state_dir();
        fs::create_dir_all(&state_dir).expect("create state dir");
        let config_path = self.config_path();
        let text = self.config.to_toml(self.port, &state_dir);
        fs::write(&config_path, &text).expect("write zeoraid.toml");
        let log = append_file(&self.log_path());
        let log2 = log.try_clone().expect("dup zeoraid.log");
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        let ready = wait_for_port_or_exit(self.port, START_TIMEOUT, || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if ready {
            *self.child.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
            return Ok(());
        }
        let status = kill_and_reap(&mut child);
        Err(format!(
            "zeoraid ({}) did not accept connections on 127.0.0.1:{} within {START_TIMEOUT:?} \
             (exit status: {status:?})\n--- {}:\n{text}--- {}:\n{}",
            self.binary.display(),
            self.port,
            config_path.display(),
            self.log_path().display(),
            self.log()
        ))
    }
}

impl Drop for ZeoraidProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Python scripts

/// Runs `tests/python/<script> <args>` with the venv's python, in a fresh
/// temp dir as cwd, with `envs` added to the environment. Returns its
/// stdout; panics with the command, stdout and stderr when it exits
/// non-zero or runs longer than [`PYTHON_TIMEOUT`] (env
/// `ZEORAID_PYTHON_TIMEOUT`, seconds). With env `ZEORAID_TEST_STREAM` set,
/// its output is also echoed to stderr as it comes (use with
/// `cargo test -- --nocapture`).
pub fn run_python(script: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let python = python();
    let script_path = python_dir().join(script);
    assert!(
        script_path.is_file(),
        "no such script: {}",
        script_path.display()
    );
    let cwd = tempdir("zeoraid-py-");
    let timeout = std::env::var("ZEORAID_PYTHON_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(PYTHON_TIMEOUT);
    let stream = std::env::var_os("ZEORAID_TEST_STREAM").is_some();

    let mut command = Command::new(&python);
    command
        .arg("-u")
        .arg(&script_path)
        .args(args)
        .current_dir(cwd.path())
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("ZEO_MSGPACK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let line = format!(
        "{}{}",
        envs.iter()
            .map(|(k, v)| format!("{k}={v} "))
            .collect::<String>(),
        command_line(&command)
    );
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    let stdout = Collector::start(child.stdout.take().unwrap(), stream);
    let stderr = Collector::start(child.stderr.take().unwrap(), stream);

    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                timed_out = true;
                // SIGTERM first: the scripts then stop the zeoraid and ZEO
                // processes they started.
                break terminate(&mut child, Duration::from_secs(10));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    };
    let stdout = stdout.finish(Duration::from_secs(5));
    let stderr = stderr.finish(Duration::from_secs(5));
    if timed_out || !status.is_some_and(|s| s.success()) {
        panic!(
            "`{line}` {} after {:.1?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            if timed_out {
                format!("timed out ({timeout:?})")
            } else {
                format!(
                    "failed ({})",
                    status.map_or("no status".into(), |s| s.to_string())
                )
            },
            started.elapsed()
        );
    }
    stdout
}

/// Output read from a child's pipe by a thread (so that neither pipe fills
/// up), available even if the pipe never reaches EOF.
struct Collector {
    buffer: Arc<Mutex<Vec<u8>>>,
    thread: thread::JoinHandle<()>,
}

impl Collector {
    fn start(pipe: impl Read + Send + 'static, echo: bool) -> Collector {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let thread = thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if echo {
                            let _ = io::stderr().write_all(&line);
                        }
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&line);
                    }
                }
            }
        });
        Collector { buffer, thread }
    }

    /// What was read, once the pipe is at EOF or `grace` has passed: a
    /// grandchild that outlives the child (a forked server) may keep the
    /// pipe open.
    fn finish(self, grace: Duration) -> String {
        let deadline = Instant::now() + grace;
        while !self.thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let bytes = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The last non-empty line of `output`.
pub fn last_line(output: &str) -> &str {
    output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// Runs a benchmark's Python driver, `python script args...`, and returns
/// its last stdout line as JSON; panics with its output if it fails.
pub fn run_json_script(python: &Path, script: &Path, args: &[String]) -> serde_json::Value {
    let name = script.file_name().map_or_else(
        || script.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("ZEO_MSGPACK")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "{name} {} failed ({})\n--- stdout:\n{stdout}\n--- stderr:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = last_line(&stdout);
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{name} {}: {e}: {line:?}", args.join(" ")))
}

/// Asserts that `output` ends with `<word>: N passed, 0 failed[, N
/// skipped]` with N > 0, and returns (passed, skipped).
pub fn assert_summary(output: &str, word: &str) -> (u32, u32) {
    let last = last_line(output);
    let counts = last
        .strip_prefix(word)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no `{word}: ...` summary line at the end:\n{output}"));
    let mut passed = None;
    let mut failed = None;
    let mut skipped = 0;
    for part in counts.split(", ") {
        let (n, what) = part.split_once(' ').unwrap_or(("", ""));
        let n: u32 = n
            .parse()
            .unwrap_or_else(|_| panic!("bad summary line: {last}"));
        match what {
            "passed" => passed = Some(n),
            "failed" => failed = Some(n),
            "skipped" => skipped = n,
            _ => panic!("bad summary line: {last}"),
        }
    }
    let (passed, failed) = (passed.unwrap_or(0), failed.unwrap_or(u32::MAX));
    assert!(failed == 0 && passed > 0, "{last}\n{output}");
    (passed, skipped)
}
